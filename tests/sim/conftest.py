"""Fixtures for the simulator's own tests.

The ``sim`` package lives at the repository root but is not installed (it is
not part of the wheel), so the root is put on ``sys.path`` here when pytest was
started without it (``pytest`` rather than ``python -m pytest``).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from sim.node import NodeApp, create_node_app  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    """The proxy runs on asyncio (uvloop), so the simulator is tested there too."""
    return "asyncio"


@pytest.fixture
def node_app() -> NodeApp:
    """A fresh in-memory node that knows a peer (so drains send X-Hyperbytedb-Redirect)."""
    return create_node_app(name="node-t", peer="127.0.0.3:8086")


@pytest.fixture
async def client(node_app: NodeApp) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client wired straight into ``node_app`` (no sockets)."""
    transport = httpx.ASGITransport(app=node_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node.test") as http:
        yield http
