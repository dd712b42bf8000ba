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
from nvcf_platform.invocation.gateway import InvocationGateway, function_routing
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

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Endpoints(Protocol):
    """A group of routes (pexec, status, exec, attach, ...) that adds itself to a router."""

    def register(self, router: web.UrlDispatcher) -> None: ...


@web.middleware
async def _gate(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Require an Authorization header (its value is each route's business); map 404/405.

    Presigned object URLs carry their authorization in the URL, like S3's."""
    if (
        request.path not in {HEALTH_PATH, METRICS_PATH}
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


def _refuse_while_nats_is_down(
    link: NatsLink, routes: frozenset[web.AbstractResource]
) -> Middleware:
    """A middleware answering 503 (with Retry-After) at once on `routes` while NATS is down."""

    @web.middleware
    async def refuse(request: web.Request, handler: _Handler) -> web.StreamResponse:
        route = request.match_info.route
        if not link.up and route.resource in routes:
            return unavailable_response(NOT_CONNECTED)
        return await handler(request)

    return refuse


def _route_by_function(
    gateway: InvocationGateway, link: NatsLink, drain: CallerDrain | None
) -> Middleware:
    """A middleware serving gateway-form requests itself, before the path router's handler.

    Such a request gets what a pexec call gets from the other middlewares: the plain 401 without
    an Authorization header (on every path), 503 at once while NATS is down, and the drain's
    counting and refusal.
    """

    @web.middleware
    async def route(request: web.Request, handler: _Handler) -> web.StreamResponse:
        routing = function_routing(request)
        if routing is None:
            return await handler(request)
        if "Authorization" not in request.headers:
            return missing_authorization()
        if not link.up:
            return unavailable_response(NOT_CONNECTED)

        async def serve(request: web.Request) -> web.StreamResponse:
            return await gateway.serve(request, routing)

        return await (serve(request) if drain is None else drain.admit(request, serve))

    return route


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
    if gateway is not None:
        app.middlewares.append(_route_by_function(gateway, link, drain))
    app.middlewares.extend([_gate, _refuse_while_nats_is_down(link, frozenset(needing_nats))])
    if drain is not None:
        callers = frozenset(
            resource
            for resource in needing_nats
            if not resource.canonical.startswith(OBJECTS_PREFIX)
        )
        app.middlewares.append(drain.middleware(callers))
    return app
