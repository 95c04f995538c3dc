"""JSON in and out of every HTTP route: strict both ways.

In: `protocol.loads_json` (NaN/Infinity refused, over-deep nesting a typed error). Out: the
encoder refuses NaN/Infinity too (`allow_nan=False`): `NaN` is not JSON and breaks strict
clients, so a non-finite number in a response is a bug that must fail loudly (a logged 500),
never go out on the wire.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from aiohttp import web

from ..protocol import loads_json

strict_dumps = functools.partial(json.dumps, allow_nan=False)


def json_response(data: Any = None, **kwargs: Any) -> web.Response:
    """`web.json_response` with the strict encoder."""
    return web.json_response(data, dumps=strict_dumps, **kwargs)


async def read_json(request: web.Request, what: str = "request body", field: str | None = "body") -> Any:
    """The request body as strict JSON; `client_max_size` bounds what `read()` accepts."""
    return loads_json(await request.read(), what=what, field=field)
