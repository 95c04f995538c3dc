"""The web page at `/` (docs/web.md): static files shipped in the package (`latentbridge/web/`),
served from the API's own origin so the Host/Origin rules keep protecting the API.

The page's files hold no data and load without the token (`security.PUBLIC_PATHS`); everything
the page shows comes from the API, with the token the user types into the page."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from .security import PUBLIC_PREFIXES, is_public_path

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
STATIC_PREFIX = PUBLIC_PREFIXES[0].rstrip("/")  # "/web"

# Same origin only: scripts, styles, API calls and the websocket ('self' covers ws:/wss: to the
# same host); images from the API arrive as blob: URLs. No framing (clickjacking), no referrer.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (Last-Modified): an upgraded server serves its new page at once
}


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_ROOT / "index.html", headers={"Content-Type": "text/html; charset=utf-8"})


async def _page_headers(request: web.Request, response: web.StreamResponse) -> None:
    if is_public_path(request.path):
        response.headers.update(PAGE_HEADERS)


def add_page_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_static(STATIC_PREFIX, WEB_ROOT, follow_symlinks=False)
    app.on_response_prepare.append(_page_headers)
