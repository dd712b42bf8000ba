"""`PlatformService`: the local invocation service and `nvcf.Worker` stand-in as one async resource.

Owns the NATS connection (`NatsLink`), the function-state prober, the HTTP listener (pexec,
status, exec, attach, assets, functions, queues, health) and the gRPC listener; opened in that
order by `async with`, closed in reverse.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Final

import grpc
from aiohttp import web
from nats.aio.client import Client
from nats.errors import Error as NatsError

from nvcf_platform.control.functions import FunctionEndpoints, FunctionStates
from nvcf_platform.control.registry import Registry
from nvcf_platform.control.routes import ControlEndpoints
from nvcf_platform.control.runtime import ControlRuntime
from nvcf_platform.errors import ConfigError, NatsUnavailable, PlatformError
from nvcf_platform.invocation.app import build_application
from nvcf_platform.invocation.attach import AttachEndpoints
from nvcf_platform.invocation.attach_listener import AttachListener
from nvcf_platform.invocation.background import BackgroundTasks
from nvcf_platform.invocation.drain import CallerDrain
from nvcf_platform.invocation.exchange import WorkerExchange
from nvcf_platform.invocation.exec import ExecEndpoint
from nvcf_platform.invocation.gateway import InvocationGateway
from nvcf_platform.invocation.grpc_proxy import GrpcProxy
from nvcf_platform.invocation.grpc_sessions import SessionLookup
from nvcf_platform.invocation.invocation import CallerIdentity, ObjectLinks, PexecEndpoint
from nvcf_platform.invocation.nats_link import NatsLink
from nvcf_platform.invocation.queues import QueueEndpoints, QueueInspector
from nvcf_platform.invocation.status import StatusEndpoint
from nvcf_platform.invocation.tokens import AttachTokens
from nvcf_platform.invocation.tracking import RequestTracking
from nvcf_platform.invocation.worker_api import WorkerApi
from nvcf_platform.invocation.workqueue import WorkQueue
from nvcf_platform.listeners import bind_listener, bracketed, inherited_listener, url_host
from nvcf_platform.objects.assets import AssetCatalog, AssetEndpoints, InvocationLinks
from nvcf_platform.objects.object_routes import ObjectEndpoints
from nvcf_platform.objects.objects import ObjectStore
from nvcf_platform.objects.presign import UrlSigner, load_or_create_secret
from nvcf_platform.settings import PlatformSettings
from nvcf_sidecar import eventloop
from nvcf_sidecar.protocol import add_worker_servicer

__all__ = ["PlatformService"]

GRPC_STOP_GRACE: Final = 5.0
HANDLER_STOP_GRACE: Final = 5.0
"""Room for callers' answers still being relayed at shutdown (waiting callers get 503 at once)."""
ACCEPTED_LINGER: Final = 0.2
"""After a drain stops accepting: time for requests on connections just accepted to arrive (and
be refused 503) before the shutdown closes every connection."""
BACKGROUND_CLOSE_TIMEOUT: Final = 15.0
"""Room for pending cancel broadcasts and purges (each bounded by 10 s) at shutdown."""
REBIND_ATTEMPTS: Final = 10
"""Tries (a second apart) to re-create streams and buckets after a reconnect."""

_log = logging.getLogger(__name__)


class PlatformService:
    """The platform process in one object: `async with PlatformService(settings) as platform:`.

    On entry it connects to NATS, provisions the queue stream and consumer of every configured
    version and the request-tracking stream, starts the HTTP listener and then the gRPC
    listener; `http_port`, `grpc_port`, `base_url` and `grpc_url` are valid inside the block.
    Ports given as 0 are picked free. Input assets and large responses live in NATS Object Store
    buckets behind presigned URLs; `objects` replaces how work items get their asset references
    and large-response URLs (tests).
    """

    def __init__(
        self,
        settings: PlatformSettings,
        registry: Registry | None = None,
        *,
        objects: ObjectLinks | None = None,
    ) -> None:
        if registry is None:
            if settings.config_path is None:
                raise ConfigError("no function registry: set config_path (--config)")
            registry = Registry.from_toml(settings.config_path)
        self._settings = settings
        self._registry = registry
        self._objects = objects
        self._tokens = AttachTokens()
        self._stack: AsyncExitStack | None = None
        self._link: NatsLink | None = None
        self._drain = CallerDrain()
        self._site: web.SockSite | None = None
        self._queue: WorkQueue | None = None
        self._tracking: RequestTracking | None = None
        self._object_store: ObjectStore | None = None
        self._states: FunctionStates | None = None
        self._control: ControlRuntime | None = None
        self._grpc_proxy: GrpcProxy | None = None
        self._app: web.Application | None = None
        self._http_port = 0
        self._grpc_port = 0
        self._attach_port = 0

    def __repr__(self) -> str:
        return f"<PlatformService http={self._http_port or '-'} grpc={self._grpc_port or '-'}>"

    # -- what is running ------------------------------------------------------------------------

    @property
    def settings(self) -> PlatformSettings:
        return self._settings

    @property
    def registry(self) -> Registry:
        return self._registry

    @property
    def tokens(self) -> AttachTokens:
        """The attach-token table (outstanding tokens; empty when no invocation is in flight)."""
        return self._tokens

    @property
    def nats(self) -> Client:
        """The platform's NATS connection."""
        return self.link.client

    @property
    def link(self) -> NatsLink:
        """The NATS connection with its outage state (`up`, `down_for()`)."""
        if self._link is None:
            raise PlatformError("the platform is not running")
        return self._link

    @property
    def queue(self) -> WorkQueue:
        """Stream provisioning, publish and withdrawal for the platform's region."""
        if self._queue is None:
            raise PlatformError("the platform is not running")
        return self._queue

    @property
    def tracking(self) -> RequestTracking:
        """The request-tracking stream (reqid -> version of requests that answered 202)."""
        if self._tracking is None:
            raise PlatformError("the platform is not running")
        return self._tracking

    @property
    def function_states(self) -> FunctionStates:
        """The status of every configured version (ACTIVE, DEPLOYING, ...) and its prober."""
        if self._states is None:
            raise PlatformError("the platform is not running")
        return self._states

    @property
    def control(self) -> ControlRuntime:
        """The control plane: functions, versions, deployments and their instances."""
        if self._control is None:
            raise PlatformError("the platform is not running")
        return self._control

    @property
    def app(self) -> web.Application:
        """The HTTP application (its router lists every route; tests check the OpenAPI document)."""
        if self._app is None:
            raise PlatformError("the platform is not running")
        return self._app

    @property
    def http_port(self) -> int:
        """The bound HTTP port (pexec, attach, health)."""
        return self._running_port(self._http_port)

    @property
    def grpc_port(self) -> int:
        """The bound port of the `nvcf.Worker` gRPC stand-in."""
        return self._running_port(self._grpc_port)

    @property
    def base_url(self) -> str:
        """Where callers and workers reach the HTTP routes (`targetURI` of work items)."""
        return (
            self._settings.public_url or f"http://{url_host(self._settings.host)}:{self.http_port}"
        )

    @property
    def attach_url(self) -> str:
        """Where workers reach the attach routes: the lean attach listener when it runs
        (`attach_port`), else `base_url`."""
        if self._settings.attach_port is None:
            return self.base_url
        return self._settings.public_attach_url or (
            f"http://{url_host(self._settings.host)}:{self._running_port(self._attach_port)}"
        )

    @property
    def grpc_url(self) -> str:
        """The gRPC stand-in as a worker's `NVCF_FQDN_GRPC` names it (`http://` = plaintext)."""
        return f"http://{url_host(self._settings.host)}:{self.grpc_port}"

    async def drain(self, grace: float) -> bool:
        """Refuse new caller requests (503) and give those in progress up to `grace` s to be
        answered; then leave the `async with` block. True when none was left over."""
        drained = await self._drain.drain(grace)
        if self._site is not None:
            # Stop accepting before the shutdown closes connections: a caller that connected just
            # now still gets the drain's 503 instead of a dropped connection; later ones wait in
            # the socket's backlog when a supervisor keeps it (`--http-fd`), else are refused.
            await self._site.stop()
            await asyncio.sleep(ACCEPTED_LINGER)
        return drained

    def endpoints(self) -> dict[str, Any]:
        """What a ready file or a dev stack needs to reach this platform, JSON-ready."""
        return {
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "base_url": self.base_url,
            "attach_url": self.attach_url,
            "grpc_url": self.grpc_url,
            "nats_url": self._settings.nats_url,
            "region": self._settings.region,
            **(
                {}
                if self._grpc_proxy is None
                else {
                    "grpc_proxy_port": self._grpc_proxy.client_port,
                    "grpc_proxy_address": f"{url_host(self._settings.host)}:"
                    f"{self._grpc_proxy.client_port}",
                }
            ),
        }

    def _versions_of(self, function_id: str) -> list[str]:
        """The version ids of a function ([] for an unknown one)."""
        try:
            function = self._registry.function(function_id)
        except LookupError:
            return []
        return [version.function_version_id for version in function.versions]

    def _running_port(self, port: int) -> int:
        if not port:
            raise PlatformError("the platform is not running")
        return port

    # -- lifetime -------------------------------------------------------------------------------

    async def __aenter__(self) -> PlatformService:
        if self._stack is not None:
            raise PlatformError("the platform is already running")
        stack = AsyncExitStack()
        try:
            await self._start(stack)
        except BaseException:
            await stack.aclose()
            self._reset()
            raise
        self._stack = stack
        loop = eventloop.loop_name(asyncio.get_running_loop())
        _log.info("platform listening", extra={**self.endpoints(), "event_loop": loop})
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.aclose()
        finally:
            self._reset()
        _log.info("platform stopped")

    async def _start(self, stack: AsyncExitStack) -> None:
        settings = self._settings
        link = NatsLink(
            settings.nats_url,
            outage_grace=settings.nats_outage_grace,
            on_reconnect=self._rebind,
            on_give_up=lambda reason: self._tokens.interrupt_waiting(NatsUnavailable(reason)),
        )
        self._link = await stack.enter_async_context(link)
        nc = link.client
        queue = WorkQueue(
            nc,
            region=settings.region,
            max_messages=settings.stream_max_messages,
            ack_wait=settings.consumer_ack_wait,
            storage=settings.storage_type,
            replicas=settings.replicas,
        )
        self._queue = queue
        tracking = RequestTracking(
            nc,
            region=settings.region,
            max_messages=settings.stream_max_messages,
            storage=settings.storage_type,
            replicas=settings.replicas,
        )
        self._tracking = tracking
        # Both ports are bound before either listener serves, so work items never name port 0.
        http_socket = (
            bind_listener(settings.host, settings.port)
            if settings.http_fd is None
            else inherited_listener(settings.http_fd)
        )
        stack.callback(http_socket.close)
        self._http_port = http_socket.getsockname()[1]
        attach_socket = None
        if settings.attach_port is not None:
            attach_socket = bind_listener(settings.host, settings.attach_port)
            stack.callback(attach_socket.close)
            self._attach_port = attach_socket.getsockname()[1]
        secret_file = settings.url_signing_secret_file
        secret = (
            secrets.token_bytes(32) if secret_file is None else load_or_create_secret(secret_file)
        )
        objects = ObjectStore(
            nc, signer=UrlSigner(secret), base_url=self.base_url, replicas=settings.replicas
        )
        self._object_store = objects
        try:
            await self._provision()
        except (NatsError, TimeoutError) as error:
            raise PlatformError(
                f"cannot create the streams and buckets on {settings.nats_url} "
                f"(is JetStream enabled?): {error!r}"
            ) from error
        background = BackgroundTasks()
        # Clean-ups cannot run while NATS is down: they are not waited for then.
        stack.push_async_callback(
            lambda: background.aclose(BACKGROUND_CLOSE_TIMEOUT if link.up else 1.0)
        )
        states = FunctionStates(
            self._registry,
            probe_interval=settings.health_probe_interval,
            deploy_timeout=settings.deploy_timeout,
        )
        self._states = await stack.enter_async_context(states)
        if not settings.api_keys:
            _log.warning("no API keys configured: any bearer token may invoke functions")
        grpc_server = grpc.aio.server()
        catalog = AssetCatalog(objects)
        add_worker_servicer(
            WorkerApi(
                self._registry,
                queue,
                objects,
                nca_id=settings.nca_id,
                on_connect=states.record_connection,
            ),
            grpc_server,
        )
        grpc_address = f"{bracketed(settings.host)}:{settings.grpc_port}"
        try:
            self._grpc_port = grpc_server.add_insecure_port(grpc_address)
        except RuntimeError as error:
            raise PlatformError(f"cannot listen on {grpc_address}: {error}") from None
        if not self._grpc_port:
            raise PlatformError(f"cannot listen on {grpc_address}")

        callers = CallerIdentity(settings.api_keys, settings.nca_id, settings.client_subject)
        exchange = WorkerExchange(
            link=link,
            queue=queue,
            tracking=tracking,
            tokens=self._tokens,
            background=background,
            nca_id=callers.nca_id,
            subject=callers.subject,
            base_url=self.attach_url,
            grpc_url=self.grpc_url,
        )
        links = self._objects if self._objects is not None else InvocationLinks(catalog, objects)
        control = ControlRuntime(settings, self._registry, nc, queue, grpc_url=self.grpc_url)
        self._control = control
        states.follow(control.plane.status_of)
        pexec = PexecEndpoint(
            registry=self._registry,
            callers=callers,
            exchange=exchange,
            objects=links,
            resolve=control.invocation_resolver(),
        )
        status = StatusEndpoint(
            registry=self._registry, callers=callers, exchange=exchange, tracking=tracking
        )
        needing_nats = (
            pexec,
            status,
            ExecEndpoint(pexec=pexec, status=status),
            ObjectEndpoints(objects),
            AssetEndpoints(catalog, callers),
            QueueEndpoints(
                self._registry, callers, states, QueueInspector(nc, region=settings.region)
            ),
        )
        local = (
            AttachEndpoints(self._tokens),
            ControlEndpoints(
                control.plane,
                control.reconciler,
                callers,
                FunctionEndpoints(self._registry, callers, states, region=settings.region),
                control.metrics,
            ),
        )
        gateway = InvocationGateway(pexec)
        app = build_application(needing_nats, local, link, self._drain, gateway=gateway)
        self._app = app
        # Handlers are cancelled when their client disconnects: a caller that leaves while
        # waiting gets its request withdrawn, as NVIDIA's service does.
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=HANDLER_STOP_GRACE
        )
        await control.load()  # the stored versions are known before the first caller is
        try:
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            stack.callback(link.stop_waiting)  # before the cleanup: waiting callers get 503 now
            self._site = web.SockSite(runner, http_socket)
            await self._site.start()
            if attach_socket is not None:
                listener = AttachListener(self._tokens)
                await listener.start(attach_socket)
                # Stops before the HTTP runner's clean-up: exchanges in progress finish first.
                stack.push_async_callback(listener.stop, HANDLER_STOP_GRACE)
            await grpc_server.start()
        except BaseException:
            await grpc_server.stop(None)  # releases the bound port
            raise
        stack.push_async_callback(grpc_server.stop, GRPC_STOP_GRACE)
        if settings.grpc_proxy_port is not None:
            proxy = GrpcProxy(
                callers=callers,
                resolve=control.invocation_resolver(),
                queue=queue,
                region=settings.region,
                tunnel_url=settings.grpc_tunnel_url,
                sessions=SessionLookup(
                    nc,
                    region=settings.region,
                    replicas=settings.replicas,
                    versions_of=self._versions_of,
                ),
            )
            await proxy.start(settings.host, settings.grpc_proxy_port, settings.grpc_tunnel_port)
            stack.push_async_callback(proxy.stop)
            self._grpc_proxy = proxy
        # Last in, first out: instances stop (drained) while HTTP and gRPC still serve them.
        await stack.enter_async_context(control)

    async def _provision(self) -> None:
        """Create every queue stream and consumer, the tracking stream and the object buckets
        unless they exist (idempotent; at start-up and after every reconnect)."""
        queue, tracking, objects = self._queue, self._tracking, self._object_store
        if queue is None or tracking is None or objects is None:
            raise PlatformError("the platform is not running")
        for version in self._registry.versions:
            await queue.provision(version.function_version_id)
        if self._control is not None:
            await self._control.provision()
        await tracking.provision()
        await objects.provision()

    async def _rebind(self) -> None:
        """After a reconnect: re-create what a restarted server may have lost (memory storage);
        workers only bind to streams and consumers that exist."""
        if self._object_store is None:
            return  # still starting: `_start` provisions
        for attempt in range(1, REBIND_ATTEMPTS + 1):
            try:
                await self._provision()
            except (NatsError, TimeoutError, PlatformError) as error:
                _log.warning(
                    "streams not re-created yet after the reconnect",
                    extra={"attempt": attempt, "error": repr(error)},
                )
                await asyncio.sleep(1.0)
                continue
            _log.info("streams and buckets in place after the reconnect")
            return

    def _reset(self) -> None:
        self._link = None
        self._queue = None
        self._tracking = None
        self._object_store = None
        self._states = None
        self._control = None
        self._grpc_proxy = None
        self._app = None
        self._site = None
        self._http_port = 0
        self._grpc_port = 0
        self._attach_port = 0
