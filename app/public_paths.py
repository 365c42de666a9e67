"""Which request paths the public listener forwards: HyperbyteDB's client API and nothing else.

HyperbyteDB serves its cluster-internal API (drain, Raft, membership, sync)
on the client port.  A proxy aimed at clients must not hand those paths on,
however they are spelled: the check runs on the percent-decoded path with
``.``/``..`` segments resolved and repeated or back slashes collapsed, the
way a backend's router would read it.  The request that is forwarded keeps
the client's exact target; only the decision uses the normalised form.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from urllib.parse import unquote

MAX_DECODE_ROUNDS = 4  # "%2525..." decoded this often is already absurd; refuse beyond it
_SLASHES = re.compile(r"[/\\]+")


def normalise(path: str) -> str | None:
    """The path a backend router would see, or None when it cannot be decided safely.

    ``path`` is ASGI's ``scope["path"]``: already percent-decoded once.  It is
    decoded again until stable, so a double-encoded ``%252F`` cannot smuggle
    a separator past a backend that decodes twice.
    """
    for _ in range(MAX_DECODE_ROUNDS):
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    else:
        return None
    if "\x00" in path:
        return None
    collapsed = _SLASHES.sub("/", path)
    resolved = posixpath.normpath(collapsed) if collapsed else "/"
    if resolved.startswith("//"):  # normpath keeps a leading double slash (POSIX)
        resolved = "/" + resolved.lstrip("/")
    if not resolved.startswith("/"):
        resolved = "/" + resolved
    return resolved


class PublicPaths:
    """A precompiled allow-list: exact paths in a set, prefixes in a tuple."""

    __slots__ = ("_exact", "_prefixes", "allow_all")

    def __init__(self, patterns: Iterable[str]) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        allow_all = False
        for pattern in patterns:
            if pattern == "*":
                allow_all = True
            elif pattern.endswith("*"):
                prefix = pattern[:-1]
                prefixes.append(prefix)
                if prefix.endswith("/") and len(prefix) > 1:
                    exact.add(prefix.rstrip("/"))  # "/api/v1/*" covers "/api/v1" itself
            else:
                exact.add(pattern)
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)
        self.allow_all = allow_all

    def allows(self, path: str) -> bool:
        """True when ``path`` (ASGI's decoded ``scope["path"]``) may be forwarded."""
        if self.allow_all or path in self._exact:
            return True  # the common case: one set lookup
        resolved = normalise(path)
        if resolved is None:
            return False
        return resolved in self._exact or resolved.startswith(self._prefixes)

    def __repr__(self) -> str:
        if self.allow_all:
            return "PublicPaths(*)"
        return f"PublicPaths({sorted(self._exact)}, {list(self._prefixes)})"
