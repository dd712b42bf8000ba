"""The invocation service's aiohttp application: routes, the Authorization gate, 404s, `/health`.

As in NVIDIA's service, every route but `/health` needs an Authorization header (unknown paths
included), and anything unrouted is a 404 problem.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import orjson
from aiohttp import web
from nats.aio.client import Client

from nvcf_sidecar.platform.attach import AttachEndpoints
from nvcf_sidecar.platform.invocation import PexecEndpoint
from nvcf_sidecar.platform.problems import missing_authorization, problem_response

__all__ = ["HEALTH_PATH", "build_application"]

HEALTH_PATH: Final = "/health"
_HEALTHY: Final = orjson.dumps({"status": "OK"})

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _gate(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Require an Authorization header (its value is each route's business); map 404/405."""
    if request.path != HEALTH_PATH and "Authorization" not in request.headers:
        return missing_authorization()
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return problem_response(404)
    except web.HTTPMethodNotAllowed as error:
        return problem_response(405, headers={"Allow": ",".join(sorted(error.allowed_methods))})


def _health_handler(nats: Client) -> _Handler:
    async def health(request: web.Request) -> web.StreamResponse:
        """200 `{"status":"OK"}` while the NATS connection is up, else 503."""
        if not nats.is_connected:
            return problem_response(503, "NATS is not connected")
        return web.Response(body=_HEALTHY, content_type="application/json")

    return health


def build_application(
    pexec: PexecEndpoint, attach: AttachEndpoints, nats: Client
) -> web.Application:
    """The application serving pexec, attach and `/health` (status polls and exec come next)."""
    app = web.Application(middlewares=[_gate])
    pexec.register(app.router)
    attach.register(app.router)
    app.router.add_get(HEALTH_PATH, _health_handler(nats), allow_head=False)
    return app
