"""The web page's routes and its place in the security rules: `/` and `/web/` are public static
files (no token, Host/Origin still checked); the page's own origin may drive the API; other
origins (another local port included) still may not."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from server_helpers import WsClient, tiny_request

from latentbridge.protocol import WS_PATH
from latentbridge.server.page import CONTENT_SECURITY_POLICY, WEB_ROOT
from latentbridge.server.security import same_origin

TOKEN = "correct-horse-battery-staple"


def _host(client) -> str:
    return f"{client.server.host}:{client.server.port}"


async def _raw_get(client, target: str) -> tuple[int, bytes]:
    """GET with the request target exactly as given (an HTTP client library would normalise it)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: {_host(client)}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_index_and_assets_are_served_with_a_strict_policy(client):
    resp = await client.get("/")
    assert resp.status == 200 and resp.content_type == "text/html"
    assert (await resp.text()) == (WEB_ROOT / "index.html").read_text()
    assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY and "connect-src 'self'" in CONTENT_SECURITY_POLICY
    assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["Referrer-Policy"] == "no-referrer"
    script = await client.get("/web/sdk/index.js")
    assert script.status == 200 and script.content_type in ("text/javascript", "application/javascript")
    assert script.headers["X-Content-Type-Options"] == "nosniff"
    # API responses keep their own headers (no page policy on JSON).
    assert "Content-Security-Policy" not in (await client.get("/api/v1/health")).headers
    assert (await client.get("/web/no-such-file.js")).status == 404


async def test_a_token_server_shows_the_page_but_not_the_data(make_client):
    client = await make_client(token=TOKEN)
    assert (await client.get("/")).status == 200
    assert (await client.get("/web/sdk/index.js")).status == 200
    assert (await client.get("/api/v1/health")).status == 401
    assert (await client.get("/api/v1/jobs")).status == 401
    # Dot segments and encodings do not turn the public prefix into an API route without the token,
    # nor reach files outside the page's folder.
    for target in ("/web/../api/v1/jobs", "/web/%2e%2e/api/v1/jobs", "/web/..%2fapi/v1/jobs", "//api/v1/jobs",
                   "/web/../../store.py", "/web/%2e%2e/%2e%2e/settings.py", "/web/..%2f..%2fsettings.py"):
        status, body = await _raw_get(client, target)
        assert status in (400, 401, 403, 404), (target, status)
        assert b'"jobs"' not in body and b"import" not in body, target
    authorised = await client.get("/api/v1/health", headers={"Authorization": f"Bearer {TOKEN}"})
    assert authorised.status == 200


async def test_the_pages_own_origin_may_drive_the_api(client):
    own = f"http://{_host(client)}"
    resp = await client.post("/api/v1/jobs", json={"request": tiny_request()}, headers={"Origin": own})
    assert resp.status == 202, await resp.text()
    ws = WsClient(await client.ws_connect(WS_PATH, headers={"Origin": own}))
    assert (await ws.hello()).type == "hello"
    await ws.ws.close()


async def test_other_origins_stay_refused(client):
    host = _host(client)
    port = client.server.port
    for origin in (f"http://127.0.0.1:{port + 1}", f"http://localhost:{port}", "http://127.0.0.1", "null",
                   f"http://{host}.evil.example", f"ftp://{host}", f"http://{host}/../"):
        resp = await client.post("/api/v1/jobs", json={"request": tiny_request()}, headers={"Origin": origin})
        assert resp.status == 403, origin
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await client.ws_connect(WS_PATH, headers={"Origin": origin})
        assert info.value.status == 403


async def test_rebinding_is_refused_even_with_a_matching_origin(client):
    # A page on evil.example rebound to 127.0.0.1 sends Host and Origin that match each other.
    headers = {"Host": "evil.example:7423", "Origin": "http://evil.example:7423"}
    assert (await client.get("/", headers=headers)).status == 403
    assert (await client.get("/api/v1/jobs", headers=headers)).status == 403


def test_same_origin_rule():
    assert same_origin("http://127.0.0.1:7423", "127.0.0.1:7423")
    assert same_origin("https://GPU-box.lan", "gpu-box.lan")  # behind a TLS proxy; case-insensitive
    assert not same_origin("http://127.0.0.1:7424", "127.0.0.1:7423")
    assert not same_origin("http://127.0.0.1:7423", None)
    assert not same_origin("null", "127.0.0.1:7423")
    assert not same_origin("127.0.0.1:7423", "127.0.0.1:7423")  # no scheme: not an origin


def test_every_page_file_ships_in_the_package():
    """The wheel carries what pyproject's package-data names: a new kind of file must be named too."""
    import tomllib
    from pathlib import PurePosixPath

    def shipped(name: str, pattern: str) -> bool:  # a glob per path part, as setuptools applies it
        return len(PurePosixPath(name).parts) == len(PurePosixPath(pattern).parts) and PurePosixPath(name).match(pattern)

    root = WEB_ROOT.parent
    patterns = tomllib.loads((root.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["latentbridge"]
    files = [p.relative_to(root).as_posix() for p in WEB_ROOT.rglob("*") if p.is_file()]
    assert "web/index.html" in files and "web/sdk/index.js" in files
    assert [f for f in files if not any(shipped(f, pattern) for pattern in patterns)] == []
