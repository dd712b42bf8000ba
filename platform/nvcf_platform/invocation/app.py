"""The invocation service's aiohttp application: routes, the Authorization gate, 404s, `/health`.

As in NVIDIA's service, every route but `/health` needs an Authorization header (unknown paths
included), and anything unrouted is a 404 problem. Routes that need NATS answer 503 at once while
it is down. A request that names a function by header or Host (the gateway form) is served before
any route is looked at.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Final, Protocol

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from nvcf_platform.invocation.drain import CallerDrain
from nvcf_platform.invocation.gateway import FunctionRouting, InvocationGateway, function_routing
from nvcf_platform.invocation.nats_link import NOT_CONNECTED, NatsLink
from nvcf_platform.invocation.problems import (
    missing_authorization,
    problem_response,
    unavailable_response,
)
from nvcf_platform.objects.objects import OBJECTS_PREFIX

__all__ = ["HEALTH_PATH", "METRICS_PATH", "Endpoints", "build_application"]

HEALTH_PATH: Final = "/health"
METRICS_PATH: Final = "/metrics"
"""Prometheus metrics of the control plane: scraped without a bearer, like `/health`."""
_HEALTHY: Final = orjson.dumps({"status": "OK"})
_OPEN_PATHS: Final = frozenset({HEALTH_PATH, METRICS_PATH})

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Endpoints(Protocol):
    """A group of routes (pexec, status, exec, attach, ...) that adds itself to a router."""

    def register(self, router: web.UrlDispatcher) -> None: ...


def _front_door(
    link: NatsLink,
    needing_nats: frozenset[web.AbstractResource],
    drain: CallerDrain | None,
    callers: frozenset[web.AbstractResource],
    gateway: InvocationGateway | None,
) -> Middleware:
    """Every request's checks before its handler, in one middleware (one coroutine frame).

    In order:
    1. A request naming its function by header or Host (the gateway form) goes to `gateway`,
       whatever its path, and gets what a pexec call gets: the plain 401 without an
       Authorization header, 503 at once while NATS is down, the drain's count and refusal.
    2. Any other request but `/health`, `/metrics` and the presigned object URLs (whose
       authorization is in the URL, like S3's) needs an Authorization header; its value is
       each route's business.
    3. `needing_nats` routes answer 503 (with Retry-After) at once while NATS is down.
    4. `callers` routes are counted by `drain` and refused while it drains.
    Unrouted paths are 404 problems, wrong methods 405 problems with `Allow`.
    """

    async def serve_gateway(request: web.Request, routing: FunctionRouting) -> web.StreamResponse:
        assert gateway is not None
        if "Authorization" not in request.headers:
            return missing_authorization()
        if not link.up:
            return unavailable_response(NOT_CONNECTED)

        async def serve(request: web.Request) -> web.StreamResponse:
            return await gateway.serve(request, routing)

        return await (serve(request) if drain is None else drain.admit(request, serve))

    @web.middleware
    async def front_door(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if gateway is not None:
            routing = function_routing(request)
            if routing is not None:
                return await serve_gateway(request, routing)
        path = request.path
        if (
            "Authorization" not in request.headers
            and path not in _OPEN_PATHS
            and not path.startswith(OBJECTS_PREFIX)
        ):
            return missing_authorization()
        resource = request.match_info.route.resource
        if not link.up and resource in needing_nats:
            return unavailable_response(NOT_CONNECTED)
        try:
            if drain is not None and resource in callers:
                return await drain.admit(request, handler)
            return await handler(request)
        except web.HTTPNotFound:
            return problem_response(404)
        except web.HTTPMethodNotAllowed as error:
            allowed = ",".join(sorted(error.allowed_methods))
            return problem_response(405, headers={"Allow": allowed})

    return front_door


def _health_handler(link: NatsLink) -> _Handler:
    async def health(request: web.Request) -> web.StreamResponse:
        """200 `{"status":"OK"}` while the NATS connection is up, else 503."""
        if not link.up:
            return unavailable_response(NOT_CONNECTED)
        return web.Response(body=_HEALTHY, content_type="application/json")

    return health


def build_application(
    nats_endpoints: Iterable[Endpoints],
    local_endpoints: Iterable[Endpoints],
    link: NatsLink,
    drain: CallerDrain | None = None,
    gateway: InvocationGateway | None = None,
) -> web.Application:
    """The application serving every group of endpoints and `/health` (NATS connectivity).

    `nats_endpoints` need NATS (queues, tracking, object store) and are refused with 503 while
    it is down; `local_endpoints` (attach, functions) are served from memory either way. With
    `drain`, the callers' routes among `nats_endpoints` (all but the presigned object URLs,
    which workers use too) are counted and refused while the service drains. With `gateway`,
    requests naming a function by header or Host go to it, whatever their path.
    """
    needing_nats: set[web.AbstractResource] = set()
    app = web.Application()
    for group in nats_endpoints:
        known = set(app.router.resources())
        group.register(app.router)
        needing_nats.update(set(app.router.resources()) - known)
    for group in local_endpoints:
        group.register(app.router)
    app.router.add_get(HEALTH_PATH, _health_handler(link), allow_head=False)
    callers = frozenset(
        resource for resource in needing_nats if not resource.canonical.startswith(OBJECTS_PREFIX)
    )
    app.middlewares.append(_front_door(link, frozenset(needing_nats), drain, callers, gateway))
    return app
