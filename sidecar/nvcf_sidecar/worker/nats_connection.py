"""The sidecar's one NATS connection: NVIDIA's name, timeouts, reconnect policy and auth (§12).

Auth is an nkey (when `NKEY_SEED` is set) or the worker token wrapped for the NVCF auth callout,
re-read on every (re)connect so a refreshed token is used without reconnecting on purpose.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import logging
import random
from collections.abc import Callable
from types import TracebackType
from typing import Any

import nats
import nats.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.client import Server

from nvcf_sidecar.worker.config import ConfigError, WorkerConfig
from nvcf_sidecar.worker.errors import WorkerError

__all__ = [
    "NATS_ACCOUNT",
    "NATS_AUTH_PLUGIN",
    "NatsConnection",
    "NatsUnavailable",
    "nats_auth_token",
    "nkey_public_key",
]

logger = logging.getLogger(__name__)

NATS_ACCOUNT = "Worker"
"""The NVCF account a worker's auth-callout token asks for."""
NATS_AUTH_PLUGIN = "webhook"
"""The auth-callout plugin NVIDIA's worker names in its token."""

PING_INTERVAL_SECONDS = 10
CONNECT_TIMEOUT_SECONDS = 5
MAX_RECONNECTS = 12
_RECONNECT_INITIAL_DELAY = 0.5
_RECONNECT_MULTIPLIER = 1.5
_RECONNECT_MAX_DELAY = 15.0
_LAME_DUCK_MAX_DELAY = 10.0
_CLOSE_FLUSH_TIMEOUT = 5

# Go's encoding/json escapes these even inside strings; do the same so the bytes match NVIDIA's.
_GO_JSON_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)


class NatsUnavailable(WorkerError):
    """No NATS server accepted the connection (after NVIDIA's 12 attempts)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot connect to NATS at {url}: {reason}")


def nats_auth_token(worker_token: str) -> str:
    """The NATS token NVIDIA's worker sends when it has no nkey.

    base64url without padding of `{"account":"Worker","pluginName":"webhook","payload":<token>}`
    (compact JSON in that key order, escaped like Go's encoding/json).
    """
    document = orjson.dumps(
        {"account": NATS_ACCOUNT, "pluginName": NATS_AUTH_PLUGIN, "payload": worker_token}
    )
    for raw, escaped in _GO_JSON_ESCAPES:
        document = document.replace(raw, escaped)
    return base64.urlsafe_b64encode(document).rstrip(b"=").decode("ascii")


def nkey_public_key(seed: str) -> str:
    """The public key (`U...`) of the nkey seed `seed`; the nkey the server must list.

    Raises ConfigError when the `nkeys` package is missing or `seed` is not an nkey seed (the
    message never quotes the seed: it is a secret).
    """
    try:
        # Imported here because it is needed only with NKEY_SEED; it ships no type hints.
        nkeys: Any = importlib.import_module("nkeys")
    except ModuleNotFoundError:
        raise ConfigError(
            "NKEY_SEED is set but the `nkeys` package is not installed: "
            "pip install nkeys, or unset NKEY_SEED to authenticate with the worker token"
        ) from None
    try:
        key_pair = nkeys.from_seed(bytearray(seed.strip().encode()))
    except Exception as error:  # nkeys, binascii or nacl, depending on how the seed is broken
        raise ConfigError(
            f"NKEY_SEED: not a valid nkey seed ({type(error).__name__}; {len(seed)} characters)"
        ) from None
    try:
        public_key: bytes = key_pair.public_key
        return public_key.decode("ascii")
    finally:
        key_pair.wipe()


def _reconnect_delay(attempt: int) -> float:
    """Exponential backoff like NVIDIA's (0.5 s, x1.5, +-50 % jitter, at most 15 s)."""
    delay = min(_RECONNECT_MAX_DELAY, _RECONNECT_INITIAL_DELAY * _RECONNECT_MULTIPLIER**attempt)
    return min(_RECONNECT_MAX_DELAY, delay * random.uniform(0.5, 1.5))


def _pick_server(servers: list[Server], _info: dict[str, Any]) -> tuple[Server | None, float]:
    server = min(servers, key=lambda candidate: candidate.reconnects)
    return server, _reconnect_delay(server.reconnects)


class NatsConnection:
    """Opens the NATS connection on `async with` and closes it (after a flush) on leaving.

    `token` is called on every (re)connect and returns the current worker token. `on_closed` is
    called once if the connection closes for good while the block is still open (reconnects
    exhausted): the sidecar cannot serve without NATS, so the caller treats that as fatal.
    `on_reconnected` is called after each reconnect (the consumer pulls again at once).
    """

    def __init__(
        self,
        config: WorkerConfig,
        token: Callable[[], str],
        *,
        on_closed: Callable[[], None] | None = None,
        on_reconnected: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        self._token = token
        self._on_closed = on_closed
        self._on_reconnected_hook = on_reconnected
        self._client: NATS | None = None
        self._closing = False
        self._lame_duck: asyncio.Task[None] | None = None

    @property
    def client(self) -> NATS:
        """The connected nats-py client."""
        if self._client is None:
            raise RuntimeError("the NATS connection is not open")
        return self._client

    @property
    def connected(self) -> bool:
        """True while the client is connected (not reconnecting, not closed)."""
        return self._client is not None and self._client.is_connected

    def _auth_options(self) -> tuple[dict[str, Any], dict[str, str]]:
        """nats-py's auth options, and the log fields that say which auth is used.

        With `NKEY_SEED` nats-py signs the server's nonce with the seed and sends no token;
        otherwise the token is the worker token wrapped for the auth callout, recomputed by
        nats-py on every (re)connect.
        """
        seed = self._config.nkey_seed
        if seed is None:
            return {"token": lambda: nats_auth_token(self._token())}, {"auth": "token"}
        public_key = nkey_public_key(seed)
        return {"nkeys_seed_str": seed.strip()}, {"auth": "nkey", "nkey": public_key}

    async def __aenter__(self) -> NatsConnection:
        options, auth_fields = self._auth_options()
        try:
            self._client = await self._connect(options)
        except (TimeoutError, nats.errors.Error, OSError) as error:
            raise NatsUnavailable(
                self._config.nats_url, f"{type(error).__name__}: {error}"
            ) from error
        logger.info(
            "connected to NATS",
            extra={
                "nats_url": self._config.nats_url,
                "connection_name": self._config.nats_connection_name,
                **auth_fields,
            },
        )
        return self

    async def _connect(self, options: dict[str, Any]) -> NATS:
        # A list, not the comma-separated text: nats-py would take that for one host.
        return await nats.connect(
            self._config.nats_servers,
            name=self._config.nats_connection_name,
            ping_interval=PING_INTERVAL_SECONDS,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            max_reconnect_attempts=MAX_RECONNECTS,
            reconnect_to_server_handler=_pick_server,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed_cb,
            lame_duck_mode_cb=self._on_lame_duck,
            **options,
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        if self._lame_duck is not None:
            self._lame_duck.cancel()
            await asyncio.gather(self._lame_duck, return_exceptions=True)
        client = self._client
        if client is None or client.is_closed:
            return
        if client.is_connected:
            try:
                await client.flush(timeout=_CLOSE_FLUSH_TIMEOUT)  # acks and naks sent last
            except Exception as error:
                logger.warning("could not flush NATS before closing", extra={"error": str(error)})
        await client.close()

    async def _on_error(self, error: Exception) -> None:
        logger.warning("NATS error", extra={"error": f"{type(error).__name__}: {error}"})

    async def _on_disconnected(self) -> None:
        if not self._closing:
            logger.warning("disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        url = self._client.connected_url if self._client is not None else None
        logger.info("reconnected to NATS", extra={"server": url.netloc if url else None})
        if self._on_reconnected_hook is not None:
            self._on_reconnected_hook()

    async def _on_closed_cb(self) -> None:
        if self._closing:
            return
        logger.error("NATS connection closed for good (reconnects exhausted)")
        if self._on_closed is not None:
            self._on_closed()

    async def _on_lame_duck(self) -> None:
        # The server is about to shut down; NVIDIA's worker moves away after a random delay so a
        # fleet of workers does not reconnect at the same instant. Sleeping here would block the
        # client's reader, hence a task (one at a time; cancelled on close).
        if self._lame_duck is None or self._lame_duck.done():
            self._lame_duck = asyncio.create_task(self._leave_lame_duck_server())

    async def _leave_lame_duck_server(self) -> None:
        await asyncio.sleep(random.uniform(0, _LAME_DUCK_MAX_DELAY))
        if self._client is not None and self._client.is_connected and not self._closing:
            logger.info("NATS server entered lame-duck mode; reconnecting elsewhere")
            await self._client.force_reconnect()
