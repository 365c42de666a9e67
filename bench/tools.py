"""The external programs the benchmark drives, installed with apt when missing."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
# Debian trixie dropped nginx-light (the plain package is as small now): try it first, then nginx.
APT_CHOICES = {"wrk": ("wrk",), "nginx": ("nginx-light", "nginx"), "curl": ("curl",)}
POLICY_RC = Path("/usr/sbin/policy-rc.d")
APT_TIMEOUT_SECS = 600


class ToolError(RuntimeError):
    """A program the benchmark needs is missing and could not be installed."""


def find(name: str) -> str | None:
    """Full path of ``name`` on PATH or in an sbin directory (nginx lives in /usr/sbin)."""
    found = shutil.which(name)
    if found:
        return found
    for directory in SBIN_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def ensure(names: Sequence[str], *, log: Callable[[str], None] = print) -> dict[str, str]:
    """Paths of ``names``; installs the missing ones with apt-get (as root), else raises ToolError."""
    missing = [name for name in names if find(name) is None]
    if missing:
        _apt_install(missing, log)
    paths: dict[str, str] = {}
    for name in names:
        path = find(name)
        if path is None:
            raise ToolError(f"{name} is still missing after apt-get install")
        paths[name] = path
    return paths


def _apt_install(names: Sequence[str], log: Callable[[str], None]) -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        packages = " ".join(APT_CHOICES[name][0] for name in names)
        raise ToolError(
            f"missing {', '.join(names)}; install them first (as root: apt-get install -y {packages})"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log(f"installing {', '.join(names)} with apt-get ...")
    # An installed nginx package starts a system nginx on port 80 unless told not to:
    # policy-rc.d exiting 101 forbids service starts during the install.
    created_policy = False
    if not POLICY_RC.exists():
        POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
        POLICY_RC.chmod(0o755)
        created_policy = True
    try:
        run_bounded(["apt-get", "update"], timeout=APT_TIMEOUT_SECS, env=env, check=True)
        for name in names:
            for package in APT_CHOICES[name]:
                result = run_bounded(
                    ["apt-get", "install", "-y", "--no-install-recommends", package],
                    timeout=APT_TIMEOUT_SECS,
                    env=env,
                )
                if result.returncode == 0:
                    break
            else:
                raise ToolError(f"apt-get could not install any of {', '.join(APT_CHOICES[name])}")
    finally:
        if created_policy:
            POLICY_RC.unlink(missing_ok=True)


def run_bounded(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    check: bool = False,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in its own session; on timeout, Ctrl-C or any error its whole group is killed."""
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=5)
        raise
    result = subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise ToolError(f"{' '.join(argv)} exited {proc.returncode}: {stderr.strip()[-500:]}")
    return result
