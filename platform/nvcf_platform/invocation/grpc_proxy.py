"""NVCF's gRPC entry point (reference nvcf-grpc-sessions §1-§5): callers speak h2c to the proxy
port with `authorization`, `function-id` and optionally `function-version-id` metadata; each
client connection becomes one stateful session of the function.

For a new connection the proxy sends its (empty) SETTINGS and reads up to the first request's
HEADERS. It checks the caller's token and the function (refusals are answered as NVIDIA's proxy
answers them: HTTP 200 with `grpc-status` for gRPC callers). Then it mints a one-use worker token
(64 characters, valid 30 s) and publishes a session work item (`statefulConfig`, the dial-back
URL and the token) to the version's queue. It then waits up to 30 s for the worker to dial back
(`CONNECT /v1/proxy` on the tunnel port, `Authorization: Bearer <token>`, `X-Request-ID`).
The caller's bytes so far are replayed into the tunnel, and both are joined until either closes
(`grpc_relay.join_session`). A connection whose first request carries `nvcf-reqid` resumes that
live session instead: its worker is asked for another tunnel (`grpc_sessions.SessionLookup`).

Differences from NVIDIA's proxy, which re-originates every stream: the caller's HTTP/2 goes to
the container as it came, only the container's header blocks are re-encoded (to add
`nvcf-reqid`). So one client connection serves one function (the first request's).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from nvcf_platform.control.registry import FunctionVersion
from nvcf_platform.errors import PlatformError
from nvcf_platform.invocation.exchange import InvocationRefused
from nvcf_platform.invocation.grpc_relay import Tunnel, join_session
from nvcf_platform.invocation.grpc_sessions import SessionLookup
from nvcf_platform.invocation.h2frames import (
    EMPTY_SETTINGS,
    H2Error,
    goaway,
    grpc_refusal,
    read_request_headers,
)
from nvcf_platform.invocation.invocation import CallerIdentity
from nvcf_platform.invocation.workqueue import WorkQueue
from nvcf_platform.listeners import bind_listener, url_host
from nvcf_sidecar.protocol.gen.nvcf_pb2 import WorkerInvokeFunctionRequest

__all__ = ["TOKEN_TTL_SECONDS", "TUNNEL_WAIT_SECONDS", "GrpcProxy", "grpc_code_of"]

_log = logging.getLogger(__name__)

TOKEN_TTL_SECONDS: Final = 30.0
"""A worker token is good for one dial-back within this long (NVIDIA's proxy)."""
TUNNEL_WAIT_SECONDS: Final = 30.0
"""How long a caller's first RPC waits for a worker's tunnel before DEADLINE_EXCEEDED."""
_HEAD_SECONDS: Final = 30.0
_HEAD_LIMIT: Final = 16 * 1024
# gRPC status codes of the refusals (reference §5).
UNAUTHENTICATED: Final = 16
INVALID_ARGUMENT: Final = 3
NOT_FOUND: Final = 5
DEADLINE_EXCEEDED: Final = 4
RESOURCE_EXHAUSTED: Final = 8
PERMISSION_DENIED: Final = 7
UNAVAILABLE: Final = 14
INTERNAL: Final = 13
_BY_HTTP: Final = {
    400: INVALID_ARGUMENT,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: NOT_FOUND,
    429: RESOURCE_EXHAUSTED,
    503: UNAVAILABLE,
}


def grpc_code_of(http_status: int) -> int:
    """The gRPC code NVIDIA's proxy gives an HTTP status of the API (default INTERNAL)."""
    return _BY_HTTP.get(http_status, INTERNAL)


@dataclass
class _Pending:
    """A session waiting for its worker: the token it may dial back with, once."""

    request_id: str
    minted: float
    tunnel: asyncio.Future[Tunnel] = field(default_factory=asyncio.Future)


class GrpcProxy:
    """The client listener and the dial-back listener; `start` binds both, `stop` closes them
    and ends every session."""

    def __init__(
        self,
        *,
        callers: CallerIdentity,
        resolve: Callable[[str, str | None], FunctionVersion],
        queue: WorkQueue,
        region: str,
        tunnel_url: str | None = None,
        sessions: SessionLookup | None = None,
    ) -> None:
        self._callers = callers
        self._resolve = resolve
        self._queue = queue
        self._region = region
        self._tunnel_url = tunnel_url
        self._lookup = sessions
        self._pending: dict[str, _Pending] = {}
        self._sessions: set[asyncio.Task[None]] = set()
        self._clients: asyncio.Server | None = None
        self._tunnels: asyncio.Server | None = None

    @property
    def client_port(self) -> int:
        return self._port(self._clients)

    @property
    def tunnel_port(self) -> int:
        return self._port(self._tunnels)

    @property
    def tunnel_url(self) -> str:
        """Where workers dial back (`proxyURI` of the work items)."""
        if self._tunnel_url is None:
            raise PlatformError("the gRPC proxy is not running")
        return self._tunnel_url

    async def start(self, host: str, client_port: int, tunnel_port: int) -> None:
        clients = bind_listener(host, client_port)
        tunnels = bind_listener(host, tunnel_port)
        self._clients = await asyncio.start_server(self._on_client, sock=clients)
        self._tunnels = await asyncio.start_server(self._on_tunnel, sock=tunnels, limit=_HEAD_LIMIT)
        if self._tunnel_url is None:
            self._tunnel_url = f"http://{url_host(host)}:{self.tunnel_port}/v1/proxy"
        if self._lookup is not None:
            await self._lookup.provision()
        _log.info(
            "gRPC proxy listening",
            extra={"port": self.client_port, "tunnel_url": self._tunnel_url},
        )

    async def stop(self) -> None:
        for server in (self._clients, self._tunnels):
            if server is not None:
                server.close()
        for task in self._sessions:
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        for pending in self._pending.values():
            pending.tunnel.cancel()
        self._pending.clear()

    @staticmethod
    def _port(server: asyncio.Server | None) -> int:
        if server is None or not server.sockets:
            raise PlatformError("the gRPC proxy is not running")
        return int(server.sockets[0].getsockname()[1])

    # -- callers -----------------------------------------------------------------------------

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await self._serve_client(reader, writer)
        except (ConnectionError, OSError) as error:
            _log.debug("gRPC caller connection failed", extra={"error": repr(error)})
        finally:
            self._sessions.discard(task)
            writer.close()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(EMPTY_SETTINGS)  # a client may wait for the server's preface
        try:
            async with asyncio.timeout(_HEAD_SECONDS):
                stream_id, headers, frames = await read_request_headers(reader)
        except (H2Error, asyncio.IncompleteReadError, TimeoutError) as error:
            _log.info("gRPC caller sent no readable request", extra={"error": str(error)})
            return
        grpc = headers.get("content-type", "").split(";")[0].strip().lower() == "application/grpc"

        async def refuse(code: int, http_status: int, message: str) -> None:
            answer = grpc_refusal(
                stream_id, grpc=grpc, code=code, http_status=http_status, message=message
            )
            writer.write(answer + goaway(stream_id))
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
            _log.info("gRPC call refused", extra={"grpc_status": code, "reason": message})

        authorization = headers.get("authorization", "")
        token = authorization[7:].strip() if authorization.startswith("Bearer ") else ""
        if not token:
            await refuse(UNAUTHENTICATED, 401, "no authorization was passed in the metadata")
            return
        if not self._callers.accepts(token):
            await refuse(
                UNAUTHENTICATED, 401, "failed to open stateful work request: invalid token"
            )
            return
        function_id = headers.get("function-id", "").strip()
        if not function_id:
            await refuse(INVALID_ARGUMENT, 400, "no function-id was passed in the metadata")
            return
        version_id = headers.get("function-version-id", "").strip() or None
        resumed = headers.get("nvcf-reqid", "").strip()
        if self._lookup is not None and _is_uuid(resumed):  # a non-UUID counts as absent
            tunnel = await self._resume(str(uuid.UUID(resumed)), function_id, version_id, refuse)
            if tunnel is None:
                return
            _log.info("gRPC session resumed", extra={"request_id": resumed})
            await join_session(frames, reader, writer, tunnel, str(uuid.UUID(resumed)))
            return
        try:
            version = self._resolve(function_id, version_id)
        except InvocationRefused as error:
            status = error.answer.status
            await refuse(
                grpc_code_of(status),
                status,
                f"failed to open stateful work request: {error.reason}",
            )
            return
        request_id = str(uuid.uuid4())
        tunnel = await self._open_session(version, request_id, refuse)
        if tunnel is None:
            return
        _log.info(
            "gRPC session started",
            extra={"request_id": request_id, "function_version_id": version.function_version_id},
        )
        await join_session(frames, reader, writer, tunnel, request_id)
        _log.info("gRPC session ended", extra={"request_id": request_id})

    async def _open_session(
        self,
        version: FunctionVersion,
        request_id: str,
        refuse: Callable[[int, int, str], Awaitable[None]],
    ) -> Tunnel | None:
        """Publish the session's work item and wait for its worker's tunnel (None: refused)."""

        async def publish(item: bytes) -> None:
            await self._queue.publish(version.function_version_id, request_id, item)

        return await self._await_worker(request_id, publish, "the session", refuse)

    async def _await_worker(
        self,
        request_id: str,
        send: Callable[[bytes], Awaitable[None]],
        what: str,
        refuse: Callable[[int, int, str], Awaitable[None]],
    ) -> Tunnel | None:
        """Mint a one-use token, `send` the item that carries it, and wait for the worker's
        tunnel with that token (None: refused, the caller answered)."""
        token = secrets.token_hex(32)
        pending = _Pending(request_id, time.monotonic())
        self._pending[token] = pending
        try:
            try:
                await send(self._session_item(request_id, token))
            except (PlatformError, OSError, TimeoutError) as error:
                await refuse(INTERNAL, 500, f"failed to publish {what}: {error}")
                return None
            try:
                async with asyncio.timeout(TUNNEL_WAIT_SECONDS):
                    return await pending.tunnel
            except TimeoutError:
                await refuse(DEADLINE_EXCEEDED, 504, "failed to establish link to worker")
                return None
        finally:
            self._pending.pop(token, None)

    async def _resume(
        self,
        request_id: str,
        function_id: str,
        version_id: str | None,
        refuse: Callable[[int, int, str], Awaitable[None]],
    ) -> Tunnel | None:
        """Another tunnel into a live session (reference §5, resume): its registration must
        exist and match the caller; the session's worker is asked to dial back again."""
        assert self._lookup is not None
        try:
            found = await self._lookup.find(request_id, function_id, version_id)
        except (PlatformError, OSError, TimeoutError) as error:
            await refuse(INTERNAL, 500, f"failed to look the session up: {error}")
            return None
        if found is None:
            await refuse(NOT_FOUND, 404, f"no existing session found for request id {request_id}")
            return None
        if (
            found.functionId != function_id
            or (version_id is not None and found.functionVersionId != version_id)
            or found.invokerNcaId != self._callers.nca_id
        ):
            await refuse(INTERNAL, 500, "the session belongs to another function or caller")
            return None
        lookup = self._lookup

        async def reconnect(item: bytes) -> None:
            await lookup.ask_reconnect(request_id, item)

        return await self._await_worker(request_id, reconnect, "the reconnect", refuse)

    def _session_item(self, request_id: str, token: str) -> bytes:
        item = WorkerInvokeFunctionRequest(
            requestId=request_id, ncaId=self._callers.nca_id, subject=self._callers.subject
        )
        item.requestTime.GetCurrentTime()
        item.statefulConfig.nvcfRegionOfInvoker = self._region
        config = item.statefulConfig.connectionConfigs.add()
        config.http1Config.proxyURI = self.tunnel_url
        config.http1Config.proxyAuthorizationToken = token
        return item.SerializeToString()

    # -- workers' dial-backs -----------------------------------------------------------------

    async def _on_tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_HEAD_SECONDS):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                fields[name.strip().lower()] = value.strip()
        authorization = fields.get("authorization", "")
        token = authorization[7:] if authorization.startswith("Bearer ") else authorization
        request_id = fields.get("x-request-id", "")
        status, reason = 200, "OK"
        pending = self._pending.get(token) if token else None
        if not token.strip():
            status, reason = 401, "HTTP CONNECT request is missing auth"
        elif not request_id:
            status, reason = 400, "HTTP CONNECT request is missing request id"
        elif not _is_uuid(request_id):
            status, reason = 400, "HTTP CONNECT request has an invalid request id"
        elif (
            pending is None
            or pending.request_id != request_id
            or time.monotonic() - pending.minted > TOKEN_TTL_SECONDS
            or pending.tunnel.done()
        ):
            status, reason = 403, "HTTP CONNECT request is missing valid auth"
        if status != 200 or pending is None:
            body = reason.encode()
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
            writer.close()
            _log.info(
                "worker dial-back refused", extra={"status": status, "request_id": request_id}
            )
            return
        self._pending.pop(token, None)  # one use
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        pending.tunnel.set_result(Tunnel(reader, writer))


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
