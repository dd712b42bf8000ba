"""The invocation service's aiohttp application: routes, the Authorization gate, 404s, `/health`.

As in NVIDIA's service, every route but `/health` needs an Authorization header (unknown paths
included), and anything unrouted is a 404 problem.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Final, Protocol

import orjson
from aiohttp import web
from nats.aio.client import Client

from nvcf_sidecar.platform.objects import OBJECTS_PREFIX
from nvcf_sidecar.platform.problems import missing_authorization, problem_response

__all__ = ["HEALTH_PATH", "Endpoints", "build_application"]

HEALTH_PATH: Final = "/health"
_HEALTHY: Final = orjson.dumps({"status": "OK"})

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Endpoints(Protocol):
    """A group of routes (pexec, status, exec, attach, ...) that adds itself to a router."""

    def register(self, router: web.UrlDispatcher) -> None: ...


@web.middleware
async def _gate(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Require an Authorization header (its value is each route's business); map 404/405.

    Presigned object URLs carry their authorization in the URL, like S3's."""
    if (
        request.path != HEALTH_PATH
        and not request.path.startswith(OBJECTS_PREFIX)
        and "Authorization" not in request.headers
    ):
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


def build_application(endpoints: Iterable[Endpoints], nats: Client) -> web.Application:
    """The application serving every group of `endpoints` and `/health` (NATS connectivity)."""
    app = web.Application(middlewares=[_gate])
    for group in endpoints:
        group.register(app.router)
    app.router.add_get(HEALTH_PATH, _health_handler(nats), allow_head=False)
    return app
