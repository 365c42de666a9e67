"""One HyperbyteDB pod as the proxy sees it: its address, health and counters."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from app.forwarder import Origin, origin_of


class Health(enum.Enum):
    """Routing state of a backend; only ACTIVE is ever routed."""

    UNKNOWN = "unknown"  # discovered, not yet probed
    ACTIVE = "active"  # probe answered 2xx
    DRAINING = "draining"  # probe answered 503 (syncing, joining, draining, leaving or failing)
    DOWN = "down"  # probe failed, timed out, or a forward could not connect


@dataclass(frozen=True, slots=True)
class Transition:
    """A health change, kept for the admin view."""

    at: float  # wall-clock seconds
    old: Health
    new: Health
    reason: str


@dataclass(frozen=True, slots=True)
class Ejection:
    """Why and until when outlier detection keeps a backend out of routing."""

    reason: str  # e.g. "outlier: 5 consecutive 502"
    since: float  # wall-clock seconds
    until: float  # wall-clock seconds, for display; the end itself is a timer


@dataclass(eq=False, slots=True)
class Backend:
    """A backend pod.  Identity is the object: a re-added IP is a new backend.

    The counters are plain attributes mutated on the event loop only, so they
    need no locks.
    """

    address: str  # IP literal, as text, without brackets
    port: int
    scheme: str = "http"  # "https" when BACKEND_TLS is on
    health: Health = Health.UNKNOWN
    excluded: bool = False
    inflight: int = 0
    requests: int = 0
    errors: int = 0
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_probe_at: float | None = None  # wall-clock seconds
    last_probe_latency: float | None = None  # seconds
    last_error: str | None = None
    forward_failures: int = 0  # forwarded requests that failed in a row (outlier detection)
    ejection: Ejection | None = None  # set while outlier detection keeps it out of routing
    ejections: int = 0  # ejections in a row without a quiet spell between them
    last_failure_kind: str | None = None  # what the latest counted forward failure was
    transitions: list[Transition] = field(default_factory=list)
    host_header: str = field(init=False)
    host_header_bytes: bytes = field(init=False)  # as forwarded requests carry it
    base_url: str = field(init=False)
    origin: Origin = field(init=False)

    MAX_TRANSITIONS = 20

    def __post_init__(self) -> None:
        host = f"[{self.address}]" if ipaddress.ip_address(self.address).version == 6 else self.address
        self.host_header = f"{host}:{self.port}"
        self.host_header_bytes = self.host_header.encode("ascii")
        self.origin = origin_of(self.scheme, self.address, self.port)
        self.base_url = self.origin.url

    @property
    def routable(self) -> bool:
        return self.health is Health.ACTIVE and not self.excluded and self.ejection is None

    def record_transition(self, new: Health, reason: str, at: float) -> Transition:
        transition = Transition(at, self.health, new, reason)
        self.health = new
        self.transitions.append(transition)
        del self.transitions[: -self.MAX_TRANSITIONS]
        return transition

    def __repr__(self) -> str:
        return f"Backend({self.host_header}, {self.health.value})"
