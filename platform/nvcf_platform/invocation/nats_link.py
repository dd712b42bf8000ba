"""The platform's one NATS connection and its outages: refuse at once, give waiting callers up later.

Owns connecting (unlimited reconnects), the outage clock started at each disconnect, the re-binding
of streams after a reconnect, and the moment waiting callers stop waiting (outage grace or shutdown).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final

import nats
from nats.aio.client import Client

from nvcf_platform.errors import NatsUnavailable, PlatformError

__all__ = [
    "NATS_CONNECT_TIMEOUT",
    "NOT_CONNECTED",
    "NatsLink",
]

NATS_CONNECT_TIMEOUT: Final = 15.0
"""How long start-up waits for the first NATS connection (later outages reconnect forever)."""
RECONNECT_WAIT: Final = 0.25
"""Pause between two reconnect attempts; attempts never run out. Short: new calls are refused
503 until the link is back, and a restarted nats-server is back within about 0.1 s."""
PING_INTERVAL: Final = 10
"""Seconds between pings, so a server that hangs (not only one that dies) is noticed (NVIDIA's)."""
CLOSE_TIMEOUT: Final = 5.0
NOT_CONNECTED: Final = "NATS is not connected"
"""Detail of the 503 answered at once while the connection is down (as `/health` says it)."""

_log = logging.getLogger(__name__)


class NatsLink:
    """`async with NatsLink(url, outage_grace=10) as link:` the connection, `link.client`.

    `url` is one NATS URL or a cluster's, comma-separated: the client reconnects to any of them.

    While the connection is down, `require()` raises `NatsUnavailable` at once. Callers already
    waiting (for a worker's POST attach) are given up by `on_give_up(reason)` once NATS has been
    down for `outage_grace` seconds in a row, or once `stop_waiting()` was called at shutdown;
    a reconnect within the grace changes nothing for them, and `gave_up` says whether a wait
    that starts now would be given up at once. After every reconnect `on_reconnect` runs (one
    run at a time) to re-create what a restarted server may have lost.
    """

    def __init__(
        self,
        url: str,
        *,
        outage_grace: float,
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
        on_give_up: Callable[[str], None] | None = None,
    ) -> None:
        self._url = url
        self._grace = outage_grace
        self._on_reconnect = on_reconnect
        self._on_give_up = on_give_up
        self._client: Client | None = None
        self._down_since: float | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._give_up_reason: str | None = None
        self._connected = asyncio.Event()
        self._stopped = asyncio.Event()
        self._rebind: asyncio.Task[None] | None = None

    @property
    def client(self) -> Client:
        """The nats-py client (valid inside the `async with` block)."""
        if self._client is None:
            raise PlatformError("the NATS connection is not open")
        return self._client

    @property
    def url(self) -> str:
        return self._url

    @property
    def outage_grace(self) -> float:
        """Seconds NATS may be down before waiting callers are answered 503."""
        return self._grace

    @property
    def up(self) -> bool:
        """Whether the connection is established right now."""
        return self._client is not None and self._client.is_connected

    def down_for(self) -> float:
        """Seconds since the current outage began (0 while connected)."""
        if self._down_since is None:
            return 0.0
        return asyncio.get_running_loop().time() - self._down_since

    def require(self) -> None:
        """Raise `NatsUnavailable` unless the connection is up (no waiting, no retries)."""
        if not self.up:
            raise NatsUnavailable(NOT_CONNECTED)

    @property
    def gave_up(self) -> str | None:
        """Why waiting callers are given up now (outage past its grace, shutdown), else None."""
        return self._give_up_reason

    async def wait_connected(self) -> bool:
        """Whether the connection is (or comes) up; bound it with `asyncio.timeout`. Once
        shutdown began, a connection that is down is not waited for (False at once)."""
        if not self.up and not self._stopped.is_set():
            waits = {
                asyncio.ensure_future(self._connected.wait()),
                asyncio.ensure_future(self._stopped.wait()),
            }
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        return self.up

    def stop_waiting(self) -> None:
        """Shutdown began: every waiting caller gives up now (503), and so does `wait_connected`."""
        self._stopped.set()
        self._cancel_expiry()
        self._give_up("the invocation service is shutting down")

    def _give_up(self, reason: str) -> None:
        self._give_up_reason = reason
        if self._on_give_up is not None:
            self._on_give_up(reason)

    # -- lifetime -------------------------------------------------------------------------------

    async def __aenter__(self) -> NatsLink:
        self._client = await asyncio.wait_for(self._connect(), NATS_CONNECT_TIMEOUT)
        self._connected.set()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_waiting()
        if self._rebind is not None:
            self._rebind.cancel()
            await asyncio.wait({self._rebind})
        client, self._client = self._client, None
        if client is None:
            return
        try:
            # While reconnecting there is nothing to flush: close at once instead of waiting.
            await asyncio.wait_for(client.close(), CLOSE_TIMEOUT)
        except TimeoutError:
            _log.warning("NATS connection did not close in time", extra={"seconds": CLOSE_TIMEOUT})

    async def _connect(self) -> Client:
        # A list, not the comma-separated text: nats-py would take that for one host.
        return await nats.connect(
            [server.strip() for server in self._url.split(",")],
            name="nvcf-platform",
            connect_timeout=5,
            reconnect_time_wait=RECONNECT_WAIT,
            max_reconnect_attempts=-1,
            ping_interval=PING_INTERVAL,
            error_cb=self._error,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
        )

    # -- the outage clock -----------------------------------------------------------------------

    async def _error(self, exception: Exception) -> None:
        _log.warning("NATS error", extra={"error": repr(exception)})

    async def _disconnected(self) -> None:
        client = self._client
        if self._stopped.is_set() or client is None or client.is_closed:
            return  # our own close is no news
        if self._down_since is not None:
            return
        loop = asyncio.get_running_loop()
        self._down_since = loop.time()
        self._connected.clear()
        self._expiry = loop.call_later(self._grace, self._outage_expired)
        _log.warning(
            "NATS disconnected; new requests are refused with 503 while it is down",
            extra={"nats_url": self._url, "outage_grace": self._grace},
        )

    def _outage_expired(self) -> None:
        self._expiry = None
        self._give_up(f"NATS has been unreachable for {self._grace:g} s")
        _log.error(
            "NATS still down after the outage grace; waiting callers are answered 503",
            extra={"nats_url": self._url, "outage_grace": self._grace},
        )

    async def _reconnected(self) -> None:
        down_for = self.down_for()
        self._down_since = None
        self._cancel_expiry()
        if not self._stopped.is_set():
            self._give_up_reason = None
        self._connected.set()
        _log.info("NATS reconnected", extra={"nats_url": self._url, "down_for": f"{down_for:.3f}"})
        if self._on_reconnect is not None and not self._stopped.is_set():
            if self._rebind is not None and not self._rebind.done():
                self._rebind.cancel()
            self._rebind = asyncio.get_running_loop().create_task(
                self._run_rebind(self._on_reconnect), name="nats-rebind"
            )

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    async def _run_rebind(self, rebind: Callable[[], Awaitable[None]]) -> None:
        try:
            await rebind()
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("re-creating streams after the reconnect failed")
