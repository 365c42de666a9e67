"""Backends an operator has taken out of rotation.

With one process the set lives in memory.  With several gunicorn workers an
admin call reaches only one of them, so the set is also kept in a small JSON
file that every worker re-reads on each health round: all workers honour an
exclusion within one health interval.  Writers hold an ``flock`` so two
concurrent admin calls cannot lose each other's change.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

log = logging.getLogger("hyperbytedb_proxy.admin")


def shared_exclusions_path(directory: Path | None) -> Path:
    """The file shared by the workers of one gunicorn master (keyed by its pid).

    It sits in the metrics directory when there is one (a per-pod emptyDir in
    Kubernetes), else in the temporary directory.
    """
    parent = directory if directory is not None else Path(tempfile.gettempdir())
    return parent / f"hyperbytedb-proxy-exclusions-{os.getppid()}.json"


class ExclusionStore:
    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._ips: frozenset[str] = frozenset()
        self._seen_mtime: int | None = None

    def __contains__(self, address: str) -> bool:
        return address in self._ips

    @property
    def addresses(self) -> frozenset[str]:
        return self._ips

    def add(self, address: str) -> None:
        self._update(lambda ips: ips | {address})

    @property
    def shared(self) -> bool:
        """Kept in a file for several worker processes."""
        return self._path is not None

    def discard(self, addresses: Iterable[str]) -> None:
        gone = frozenset(addresses)
        self._update(lambda ips: ips - gone)

    def reload(self) -> bool:
        """Pick up other workers' changes; True when the set changed."""
        if self._path is None:
            return False
        try:
            mtime = self._path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self._seen_mtime:
            return False
        before = self._ips
        self._ips = self._read()
        self._seen_mtime = mtime
        return self._ips != before

    def _update(self, change: Callable[[frozenset[str]], frozenset[str]]) -> None:
        if self._path is None:
            self._ips = change(self._ips)
            return
        with self._locked():
            current = self._read()
            self._ips = change(current)
            if self._ips == current:
                return  # nothing to tell the other workers
            tmp = self._path.with_suffix(".tmp")
            tmp.write_text(json.dumps(sorted(self._ips)))
            os.replace(tmp, self._path)
            self._seen_mtime = self._path.stat().st_mtime_ns

    def _read(self) -> frozenset[str]:
        assert self._path is not None
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            return frozenset()
        except (OSError, ValueError) as exc:
            log.warning("cannot read the shared exclusions file", extra={"fields": {"error": str(exc)}})
            return self._ips
        return frozenset(str(ip) for ip in data if isinstance(ip, str))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        assert self._path is not None
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
