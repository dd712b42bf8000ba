"""Stateful (gRPC) sessions on the worker side (reference nvcf-grpc-sessions §4).

A work item with `statefulConfig` carries no request: it asks the worker to dial back to the
gRPC proxy (`tunnel.open_tunnel`) and to carry the session's HTTP/2 between that tunnel and the
container (`tunnel.splice`). The session holds the item's concurrency slot; the consumer keeps
the message alive with `+WPI` meanwhile and acks it when `serve` returns, on error too.

While a session lives, the worker registers it in `stateful_session.lookup.<region>.<fvid>.<reqid>`
(every 20 minutes; purged at the end) so that the proxy can resume it, and listens on
`stateful_session.reconnect.<reqid>`: each message there is a new item, with a new token, for
one more tunnel into the same session (no slot of its own). The session ends when its first
tunnel and every reconnect tunnel started meanwhile have closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

from google.protobuf.message import DecodeError
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from nvcf_sidecar.protocol import (
    session_lookup_stream_name,
    session_lookup_subject,
    session_reconnect_subject,
)
from nvcf_sidecar.protocol.gen.nvcf_pb2 import StatefulSessionTracking, WorkerInvokeFunctionRequest
from nvcf_sidecar.worker.config import WorkerConfig
from nvcf_sidecar.worker.metrics import Outcome
from nvcf_sidecar.worker.tunnel import (
    CONTAINER_DIAL_SECONDS,
    ProxyEndpoint,
    Tunnel,
    TunnelError,
    open_tunnel,
    splice,
)

__all__ = ["REGISTRATION_INTERVAL_SECONDS", "StatefulSessions", "proxy_endpoints"]

REGISTRATION_INTERVAL_SECONDS: Final = 20 * 60
"""NVIDIA's worker registers a live session again every 20 minutes (the stream keeps 1 h)."""
_REGISTRATION_RETRY: Final = (1.0, 30.0)
_PURGE_TIMEOUT: Final = 5.0
_STOP_TIMEOUT: Final = 5.0


def proxy_endpoints(request: WorkerInvokeFunctionRequest) -> list[ProxyEndpoint]:
    """The item's HTTP/1 dial-back configs, in order (HTTP/3 ones are left out: not supported)."""
    return [
        ProxyEndpoint(config.http1Config.proxyURI, config.http1Config.proxyAuthorizationToken)
        for config in request.statefulConfig.connectionConfigs
        if config.WhichOneof("config") == "http1Config"
    ]


class StatefulSessions:
    """Serves stateful work items; one per sidecar, shared by its sessions."""

    def __init__(self, config: WorkerConfig, nats: NatsClient, region: Callable[[], str]) -> None:
        self._config = config
        self._nats = nats
        self._region = region

    async def serve(
        self, request: WorkerInvokeFunctionRequest, log: logging.LoggerAdapter[Any]
    ) -> Outcome:
        """Run one session to its end: DELIVERED once it was served (whatever its RPCs
        answered), WORKER_ERROR when no tunnel could be opened."""
        endpoints = proxy_endpoints(request)
        if not endpoints:
            log.error("stateful session: the work item has no HTTP/1 connection config")
            return Outcome.WORKER_ERROR
        request_id = request.requestId
        tunnels: set[asyncio.Task[None]] = set()
        ending = False

        async def on_reconnect(message: Msg) -> None:
            try:
                item = WorkerInvokeFunctionRequest.FromString(message.data)
            except DecodeError as error:
                log.warning("stateful session: a malformed reconnect item: %s", error)
                return
            others = proxy_endpoints(item)
            if ending or not others:
                log.warning("stateful session: a reconnect item that cannot be served")
                return
            log.info("stateful session: reconnect requested; dialing back again")
            tunnels.add(asyncio.create_task(self._dial_and_serve(others, request_id, log)))

        reconnects = await self._nats.subscribe(
            session_reconnect_subject(request_id), cb=on_reconnect
        )
        stopping = asyncio.Event()
        registration = asyncio.create_task(self._register(request, log, stopping))
        try:
            try:
                first = await open_tunnel(endpoints, request_id, log)
            except TunnelError as error:
                log.error("stateful session: no tunnel to the proxy: %s", error)
                return Outcome.WORKER_ERROR
            log.info("stateful session: tunnel open")
            tunnels.add(asyncio.create_task(self._serve_tunnel(first, log)))
            while tunnels:
                done, _ = await asyncio.wait(set(tunnels))
                tunnels.difference_update(done)
            log.info("stateful session ended")
            return Outcome.DELIVERED
        finally:
            ending = True
            stopping.set()
            with contextlib.suppress(Exception):
                await reconnects.unsubscribe()
            registration.cancel()
            for task in tunnels:
                task.cancel()
            # Bounded: nats-py's request can swallow a cancel (the flag ends the loop then).
            await asyncio.wait({registration, *tunnels}, timeout=_STOP_TIMEOUT)
            await self._purge(request_id, log)

    async def _dial_and_serve(
        self, endpoints: list[ProxyEndpoint], request_id: str, log: logging.LoggerAdapter[Any]
    ) -> None:
        try:
            tunnel = await open_tunnel(endpoints, request_id, log)
        except TunnelError as error:
            log.warning("stateful session: reconnect tunnel failed: %s", error)
            return
        await self._serve_tunnel(tunnel, log)

    async def _serve_tunnel(self, tunnel: Tunnel, log: logging.LoggerAdapter[Any]) -> None:
        """One tunnel against a fresh connection to the container, until either closes."""
        host, port = self._config.inference_host, self._config.inference_port
        try:
            async with asyncio.timeout(CONTAINER_DIAL_SECONDS):
                container = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as error:
            log.error(
                "stateful session: cannot reach the container at %s:%d: %r", host, port, error
            )
            tunnel.writer.close()  # the proxy answers its RPCs 502
            return
        sent, received = await splice(tunnel, container)
        log.info(
            "stateful session: tunnel closed",
            extra={"bytes_to_container": sent, "bytes_from_container": received},
        )

    async def _register(
        self,
        request: WorkerInvokeFunctionRequest,
        log: logging.LoggerAdapter[Any],
        stopping: asyncio.Event,
    ) -> None:
        """Publish the session's registration now and every 20 minutes; retried with backoff
        while the lookup stream cannot take it (the proxy creates that stream)."""
        tracking = StatefulSessionTracking(
            functionId=self._config.function_id,
            functionVersionId=self._config.function_version_id,
            invokerNcaId=request.ncaId,
        ).SerializeToString()
        subject = session_lookup_subject(
            self._region(), self._config.function_version_id, request.requestId
        )
        stream = self._nats.jetstream()
        pause, longest = _REGISTRATION_RETRY
        while not stopping.is_set():
            try:
                await stream.publish(subject, tracking, timeout=_PURGE_TIMEOUT)
            except Exception as error:  # retried, never fatal to the session
                log.debug("stateful session: registration not stored: %r", error)
                wait, pause = pause, min(pause * 2, longest)
            else:
                wait, pause = REGISTRATION_INTERVAL_SECONDS, _REGISTRATION_RETRY[0]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await stopping.wait()

    async def _purge(self, request_id: str, log: logging.LoggerAdapter[Any]) -> None:
        region = self._region()
        subject = session_lookup_subject(region, self._config.function_version_id, request_id)
        try:
            async with asyncio.timeout(_PURGE_TIMEOUT):
                await self._nats.jetstream().purge_stream(
                    session_lookup_stream_name(region), subject=subject
                )
        except Exception as error:
            log.debug("stateful session: registration not purged: %r", error)
