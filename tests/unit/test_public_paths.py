"""The public path allow-list: what is forwarded, what is answered 404 by the proxy itself."""

from __future__ import annotations

import httpx
import pytest

from app.public_paths import PublicPaths, normalise
from app.settings import DEFAULT_PUBLIC_PATHS, SettingsError
from tests.unit.harness import Harness, make_settings

pytestmark = pytest.mark.anyio

DEFAULT = PublicPaths(DEFAULT_PUBLIC_PATHS)


@pytest.mark.parametrize(
    "path",
    [
        "/write",
        "/query",
        "/ping",
        "/health",
        "/health/ready",
        "/api/v1/statements",
        "/api/v1/chdb",
        "/api/v1",
    ],
)
def test_the_client_api_is_public(path: str) -> None:
    assert DEFAULT.allows(path)


# ASGI's scope["path"] is percent-decoded once: "%2F" arrives as "/", "%252F" as "%2F".
@pytest.mark.parametrize(
    "path",
    [
        "/internal/drain",
        "//internal/drain",
        "/write/../internal/drain",
        "/./internal/drain",
        "/api/v1/../../internal/drain",
        "/api/v1/..%2F..%2Finternal/drain",
        "/write/..%2Finternal/drain",
        "/write\\..\\internal\\drain",
        "/../internal/drain",
        "/cluster/raft/change-membership",
        "/metrics",
        "/",
        "/writes",
        "/health/readyz",
        "/api/v2/write",
        "/%252525252e%252525252e/internal",
        "/write\x00",
    ],
)
def test_anything_else_is_not(path: str) -> None:
    assert not DEFAULT.allows(path)


def test_normalise_resolves_like_a_router() -> None:
    assert normalise("//a///b/./c/../d") == "/a/b/d"
    assert normalise("/a%2Fb") == "/a/b"
    assert normalise("/../..") == "/"


def test_star_forwards_everything_and_prefixes_match() -> None:
    assert PublicPaths(["*"]).allows("/internal/drain")
    custom = PublicPaths(["/write", "/custom/*"])
    assert custom.allows("/custom/x/y") and custom.allows("/custom")
    assert not custom.allows("/custom/../internal") and not custom.allows("/customer")


@pytest.mark.parametrize("value", ["write", "/a*b", " , "])
def test_bad_lists_are_refused_at_startup(value: str) -> None:
    with pytest.raises(SettingsError, match="HYPERBYTEDB_PROXY_PUBLIC_PATHS"):
        make_settings(public_paths=value)


async def test_a_private_path_is_404_json_and_reaches_no_backend() -> None:
    h = Harness()
    h.backends.route().mock(return_value=httpx.Response(204))
    async with h.running():
        r = await h.client.post("/internal/drain", content=b"x")
        ok = await h.client.get("/ping")
    assert r.status_code == 404 and "error" in r.json()
    assert ok.status_code == 204
    assert [call.request.extensions["target"] for call in h.backends.calls] == [b"/ping"]
    assert h.state.proxy.outcomes["not_public"] == 1
