"""Who may talk to the server: Host/Origin checks, bearer token, safe model names.

A web page in the user's browser can reach a server on 127.0.0.1. Three doors are closed here,
on every route (websocket and A1111 routes included):

- DNS rebinding: a page on `evil.example` whose name re-resolves to 127.0.0.1 sends
  `Host: evil.example`. Only loopback names, IP literals, the configured host and
  `--allowed-hosts` are accepted.
- Cross-origin requests: browsers send `Origin` on every cross-origin POST and websocket
  handshake. Any Origin not in `--allowed-origins` is refused, `Origin: null` (sandboxed
  iframes, file: pages) included. `Sec-Fetch-Site: cross-site` without an allowed Origin too.
  The server's own origin (the web page at `/`: Origin names exactly the accepted `Host`) passes.
- Plain HTML forms: they can POST without any script, with a CORS-"simple" content type. State
  changing requests with such a content type are refused unless they carry a header no form can
  set (`Authorization` or `X-LatentBridge-Client`).

The bearer token is compared in constant time and never logged. The web page's own files
(`PUBLIC_PATHS`: static, no data) load without it, so the page can ask for the token.
"""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web

from .. import model_dirs
from ..protocol import BUILTIN_CONTROLNETS, BUILTIN_IP_ADAPTERS, BUILTIN_MODELS, WS_PATH, ErrorCode, LatentBridgeError
from ..settings import Settings
from .errors import error_response
from .throttle import AuthThrottle, TooManyAttempts

CLIENT_HEADER = "X-LatentBridge-Client"
SIMPLE_CONTENT_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")
LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}
# The web page's static files (server/page.py): they hold no data and need no token, so a token
# server can show the page that asks for one. Host and Origin checks still apply to them.
PUBLIC_PATHS = ("/",)
PUBLIC_PREFIXES = ("/web/",)


class StartupRefused(Exception):
    """The settings are unsafe to serve with (e.g. no token beyond loopback)."""


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_startup(settings: Settings) -> None:
    if not is_loopback(settings.host) and not settings.token:
        raise StartupRefused(
            f"refusing to listen on {settings.host} without a token: anyone on the network could use "
            "this GPU. Pass --token (or LATENTBRIDGE_TOKEN), or listen on 127.0.0.1.")


def _host_name(host_header: str) -> str:
    """`Host` header → the bare name/address (port and IPv6 brackets removed), lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host


def host_allowed(host_header: str | None, settings: Settings) -> bool:
    if not host_header:
        return False
    name = _host_name(host_header)
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
        return True  # an IP literal is not a DNS name, so it cannot be rebound
    except ValueError:
        pass
    allowed = {h.lower() for h in settings.allowed_hosts}
    allowed.add(settings.host.lower())
    return name in allowed


def _normalise_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def origin_allowed(origin: str, settings: Settings) -> bool:
    origin = _normalise_origin(origin)
    return origin != "null" and origin in {_normalise_origin(o) for o in settings.allowed_origins}


def same_origin(origin: str, host_header: str | None) -> bool:
    """Whether `Origin` is this server's own origin: a page the server itself served. The Host
    header was already accepted (no rebinding), so an Origin naming exactly it is ours."""
    scheme, sep, authority = _normalise_origin(origin).partition("://")
    return bool(sep and host_header) and scheme in ("http", "https") and authority == host_header.strip().lower()


def is_public_path(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def token_ok(presented: str | None, settings: Settings) -> bool:
    if not settings.token:
        return True
    if presented is None:
        return False
    try:
        # Header bytes that are not UTF-8 reach us as surrogate escapes: compare the bytes as sent.
        given = presented.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate from a JSON string: no token has one
        return False
    return hmac.compare_digest(given, settings.token.encode("utf-8"))


async def check_token(presented: str | None, address: str | None, settings: Settings, throttle: AuthThrottle) -> bool:
    """`token_ok`, with backoff for an address that keeps sending wrong tokens (throttle.py).
    Raises TooManyAttempts when that address must wait longer than the longest delay."""
    if not settings.token:
        return True
    if presented is None:
        return False  # no token at all is not a guess
    address = address or "local"
    await throttle.wait_turn(address)
    if token_ok(presented, settings):
        throttle.succeeded(address)
        return True
    throttle.failed(address)
    return False


def bearer(request: web.Request) -> str | None:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _forbidden(message: str) -> web.Response:
    return error_response(LatentBridgeError(message, code=ErrorCode.forbidden))


def _unauthorized(exc: LatentBridgeError) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, TooManyAttempts):
        headers["Retry-After"] = str(exc.retry_after_s)
    return error_response(exc, headers=headers)


def security_middleware(settings: Settings, throttle: AuthThrottle) -> Callable:
    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        if not host_allowed(request.headers.get("Host"), settings):
            return _forbidden("Host header not allowed (DNS rebinding protection); "
                              "add the name with --allowed-hosts if it is yours")
        origin = request.headers.get("Origin")
        if origin is not None and not (same_origin(origin, request.headers.get("Host"))
                                       or origin_allowed(origin, settings)):
            return _forbidden(f"cross-origin request from {origin[:100]!r} refused; "
                              "trust an origin with --allowed-origins")
        if origin is None and request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            return _forbidden("cross-site browser request refused")
        if request.method in STATE_CHANGING:
            ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            has_custom = "Authorization" in request.headers or CLIENT_HEADER in request.headers
            if ctype in SIMPLE_CONTENT_TYPES and not has_custom:
                return _forbidden(f"content type {ctype} needs an {CLIENT_HEADER} or Authorization header "
                                  "(plain HTML forms may not post here)")
        presented = bearer(request)
        if settings.token and not is_public_path(request.path):
            # The websocket may instead send its token in `hello` (checked by the ws handler).
            ws_without_header = request.path == WS_PATH and presented is None
            if not ws_without_header:
                try:
                    ok = await check_token(presented, request.remote, settings, throttle)
                except TooManyAttempts as exc:
                    return _unauthorized(exc)
                if not ok:
                    return _unauthorized(LatentBridgeError("a valid bearer token is required",
                                                           code=ErrorCode.unauthorized))
        return await handler(request)

    return middleware


# ---------------------------------------------------------------------------------------------
# Names a remote client may use


def resolve_model_name(name: str, settings: Settings, loaded: str | None = None) -> str:
    """A model name from a remote client → the name the engine loads (the same name: the engine
    resolves it with the same rule). Built-ins, the configured model and the loaded one pass as
    they are; anything else must be a model inside the model folders (`model_dirs.find`: a remote
    client must not make the server fetch or read arbitrary things). With `--lock-model` only the
    serving model may be named."""
    name = name.strip()
    if name in BUILTIN_MODELS or name == settings.model or (loaded is not None and name == loaded):
        resolved = name
    else:
        model_dirs.find(name, settings)
        resolved = model_dirs.canonical_name(name)
    if settings.lock_model and resolved not in {settings.model, loaded}:
        raise LatentBridgeError(f"this server's model is locked to {loaded or settings.model!r} (--lock-model): "
                                f"requests may not switch it to {resolved!r}", field="model", code=ErrorCode.forbidden)
    return resolved


def resolve_control_name(name: str, settings: Settings, field: str, what: str = "ControlNet") -> str:
    """A ControlNet or IP-Adapter name from a remote client: a built-in, one the server was
    configured with, or one inside the ControlNet folders (the same rule as for models)."""
    name = name.strip()
    configured = {item.partition("=")[2].strip() for item in settings.controlnet_models}
    if name in BUILTIN_CONTROLNETS or name in BUILTIN_IP_ADAPTERS or name in configured or name == settings.ip_adapter:
        return name
    model_dirs.find(name, settings, dirs=settings.controlnet_dirs, field=field, what=what, flag="--controlnet-dirs")
    return model_dirs.canonical_name(name)


def list_controlnets(settings: Settings) -> list[dict[str, str]]:
    """ControlNets and IP-Adapters a client may name: built-in, configured, inside --controlnet-dirs."""
    items = [{"name": n, "kind": "builtin"} for n in BUILTIN_CONTROLNETS + BUILTIN_IP_ADAPTERS]
    items += [{"name": item.partition("=")[2].strip(), "kind": "configured", "type": item.partition("=")[0].strip()}
              for item in settings.controlnet_models if "=" in item]
    items += [{"name": e.name, "kind": e.kind} for e in model_dirs.component_entries(settings.controlnet_dirs)]
    return items


def check_lora_names(names: list[str]) -> None:
    for i, name in enumerate(names):
        path = Path(name)
        if path.is_absolute() or ".." in path.parts or "/" in name or "\\" in name:
            raise LatentBridgeError(f"LoRA {name!r} is not allowed: give a file name inside the LoRA folders",
                                    field=f"loras.{i}.name", code=ErrorCode.invalid_request)
        model_dirs.check_file_name(name, f"loras.{i}.name", "LoRA")


def list_models(settings: Settings) -> list[dict[str, str]]:
    """Models a client may pick: diffusers folders and .safetensors files inside model_dirs (and
    pickle checkpoints when the user allowed them)."""
    return [{"name": e.name, "kind": e.kind, "path": str(e.path)} for e in model_dirs.entries(settings)]
