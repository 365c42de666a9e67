"""Backends an operator has taken out of rotation.

With one process the set lives in memory.  With several gunicorn workers an
admin call reaches only one of them, so the set is also kept in a small JSON
file that every worker re-reads on each health round: all workers honour an
exclusion within one health interval.  Writers hold an ``flock`` so two
concurrent admin calls cannot lose each other's change.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from app.backend import Backend
from app.pool import BackendPool

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


class OperatorExclusions:
    """The operator's exclusions applied to the pool: kept in the store, mirrored on each backend.

    Everything that changes an exclusion goes through here (the admin API, a
    peer replica's snapshot, another worker's file change, discovery), so the
    pool and the store never disagree and each change is logged once.
    """

    def __init__(self, store: ExclusionStore, pool: BackendPool) -> None:
        self._store = store
        self._pool = pool

    def __contains__(self, address: str) -> bool:
        return address in self._store

    @property
    def addresses(self) -> frozenset[str]:
        return self._store.addresses

    @property
    def shared(self) -> bool:
        return self._store.shared

    def set_excluded(self, backend: Backend, excluded: bool) -> None:
        if excluded:
            self._store.add(backend.address)
        else:
            self._store.discard([backend.address])
        self._apply(backend, excluded)

    def adopt(self, addresses: Iterable[str]) -> None:
        """Exclude what a peer replica excludes (a backend not discovered yet is excluded on arrival)."""
        for address in addresses:
            backend = self._pool.get(address)
            if backend is not None:
                self.set_excluded(backend, True)
            else:
                self._store.add(address)

    def on_added(self, backends: Sequence[Backend]) -> None:
        for backend in backends:
            if backend.address in self._store:
                self._pool.set_excluded(backend, True)

    def on_removed(self, backends: Sequence[Backend]) -> None:
        # An exclusion names a pod; once its IP leaves DNS it must not
        # silently apply to a future pod that reuses the address.
        self._store.discard(b.address for b in backends)

    def reload(self) -> None:
        """Read the shared file at start: a worker (re)started by gunicorn honours it at once."""
        self._store.reload()

    def sync(self) -> None:
        """Apply exclusions another worker made."""
        if self._store.reload():
            for backend in self._pool.backends():
                self._apply(backend, backend.address in self._store)

    async def run_sync(self, interval: float) -> None:
        """Pick up other workers' changes every ``interval`` seconds."""
        while True:
            await asyncio.sleep(interval)
            self.sync()

    def _apply(self, backend: Backend, excluded: bool) -> None:
        if backend.excluded != excluded:
            self._pool.set_excluded(backend, excluded)
            log.info(
                "backend excluded by operator" if excluded else "backend included by operator",
                extra={"fields": {"backend": backend.host_header}},
            )
