"""The HTTP client sessions of one sidecar: the inference container, attach, presigned transfers.

All are opened once at start-up by `async with HttpSessions(config)` and shared by every request.
"""

from __future__ import annotations

from types import TracebackType

import aiohttp

from nvcf_sidecar.protocol import MAX_HEAD_BYTES, HTTP1ProtocolConfig
from nvcf_sidecar.worker.attach import AttachClient
from nvcf_sidecar.worker.config import WorkerConfig
from nvcf_sidecar.worker.lean_http import LeanHttpClient

__all__ = ["ATTACH_IDLE_SECONDS", "CONTAINER_IDLE_SECONDS", "HttpSessions"]

ATTACH_IDLE_SECONDS = 300.0
"""Idle keep-alive connections to an IS pod are closed after this long (NVIDIA: 5 min, so the
sidecar gives up a connection before the platform's proxy does and never writes on a dead one)."""

CONTAINER_IDLE_SECONDS = 15.0
"""Idle keep-alive connections to the inference server are closed after this long (aiohttp's
default, which the container session had before the lean client)."""

# The worker sets every header it means to send; aiohttp must not add its own User-Agent, Accept,
# Accept-Encoding (which would invite compression the caller never asked for) or Content-Type.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")

_NO_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=None, sock_read=None)
_TRANSFER_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=30.0, sock_read=300.0)


class HttpSessions:
    """The HTTP clients of one sidecar.

    `container_client` talks to the inference server: a `LeanHttpClient` (connections idle 15 s
    at most), or with `NVCF_CONTAINER_CLIENT=aiohttp` an aiohttp session with no timeout of any
    kind (only cancellation ends a call), no automatic decompression (bytes are relayed as the
    container sent them, so lengths stay true), no connection limit, no cookie jar (a cookie must
    never leak between callers), and heads up to the size the platform accepts. `attach` talks to the platform's attach endpoint:
    HTTP/1.1 keep-alive with connections idle for up to 300 s reused, no timeout (GET attach
    bounds its own wait for a head), no decompression, no cookie jar.

    NVIDIA's attach pool keeps up to 256 idle connections per host and does not cap busy ones;
    aiohttp cannot cap idle connections separately, so neither pool has a cap: a cap on busy
    connections would queue GET attaches behind long-running POSTs and eat their 5 s deadline.

    `attach_client` makes each request's `AttachClient`: in-memory responses are posted through
    a `LeanHttpClient` with the same idle rule (unless `NVCF_ATTACH_CLIENT=aiohttp`).

    `transfer` fetches input assets and uploads large responses over presigned URLs (the object
    store: S3, or the local platform): no overall timeout (objects may be large), 30 s to connect
    and 300 s of silence at most, no decompression, no cookie jar.
    """

    def __init__(self, config: WorkerConfig) -> None:
        self._config = config
        self._container: aiohttp.ClientSession | LeanHttpClient | None = None
        self._attach: aiohttp.ClientSession | None = None
        self._transfer: aiohttp.ClientSession | None = None
        self._lean: LeanHttpClient | None = None

    @property
    def container_client(self) -> aiohttp.ClientSession | LeanHttpClient:
        """What calls the inference container (`forward.open_container` takes either)."""
        if self._container is None:
            raise RuntimeError("HttpSessions is not open; use `async with HttpSessions(config)`")
        return self._container

    @property
    def attach(self) -> aiohttp.ClientSession:
        """The session for GET and POST attach calls to the platform."""
        if self._attach is None:
            raise RuntimeError("HttpSessions is not open; use `async with HttpSessions(config)`")
        return self._attach

    def attach_client(self, config: HTTP1ProtocolConfig) -> AttachClient:
        """The attach calls of one work item or poll, to the IS pod `config` names."""
        return AttachClient(self.attach, config, lean=self._lean)

    @property
    def transfer(self) -> aiohttp.ClientSession:
        """The session for presigned-URL transfers: asset downloads and large-response uploads."""
        if self._transfer is None:
            raise RuntimeError("HttpSessions is not open; use `async with HttpSessions(config)`")
        return self._transfer

    async def __aenter__(self) -> HttpSessions:
        if self._container is not None:
            raise RuntimeError("HttpSessions is already open")
        if self._config.lean_container:
            self._container = LeanHttpClient(idle_seconds=CONTAINER_IDLE_SECONDS)
        else:
            self._container = _relay_session(aiohttp.TCPConnector(limit=0, limit_per_host=0))
        self._attach = _relay_session(
            aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=ATTACH_IDLE_SECONDS)
        )
        if self._config.lean_attach:
            self._lean = LeanHttpClient(idle_seconds=ATTACH_IDLE_SECONDS)
        self._transfer = aiohttp.ClientSession(
            timeout=_TRANSFER_TIMEOUT,
            auto_decompress=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Reverse order of opening; the container session goes last as it was opened first.
        transfer, attach, container = self._transfer, self._attach, self._container
        lean, self._lean = self._lean, None
        self._transfer = self._attach = self._container = None
        try:
            if transfer is not None:
                await transfer.close()
            if lean is not None:
                await lean.close()
            if attach is not None:
                await attach.close()
        finally:
            if container is not None:
                await container.close()


def _relay_session(connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
    """A session that relays bytes as they come: no timeout, no decompression, no headers of
    its own, no cookie jar, heads up to the size the platform accepts."""
    return aiohttp.ClientSession(
        connector=connector,
        timeout=_NO_TIMEOUT,
        auto_decompress=False,
        skip_auto_headers=_NO_AUTO_HEADERS,
        cookie_jar=aiohttp.DummyCookieJar(),
        max_line_size=MAX_HEAD_BYTES,
        max_field_size=MAX_HEAD_BYTES,
    )
