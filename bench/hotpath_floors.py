"""What the hot path's building blocks cost in this Python, measured in this process: one
aiohttp client exchange (the sidecar makes two per request: the container call and the POST
attach), the same exchange through the sidecar's lean client (`worker/lean_http.py`, its POST
attach) and on a bare asyncio protocol (what a hand-written client would approach), one
JetStream publish with its ack (the platform makes one per request), and one message taken from
a JetStream pull consumer and acked (the sidecar takes one per request).

The sidecar's floor, the least its required work can cost here, is one message taken and acked
plus two lean client exchanges (the container call and the POST attach).

The platform's and the sidecar's own work per request are timed too (`hotpath_work.py`); the
sidecar's floor with its own work is the two added.

Each figure is CPU time of this process (`time.process_time`) per operation, with
`CONCURRENCY` operations in flight, as in the hot path's own phases.
"""

from __future__ import annotations

import asyncio
import functools
import time
import urllib.parse
from typing import Final

import aiohttp
import nats
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from bench.hotpath_work import platform_work, sidecar_work
from nvcf_sidecar.worker.lean_http import LeanHttpClient

__all__ = ["measure_floors"]

_STREAM: Final = "HOTPATH_FLOOR"


async def _post_all(
    session: aiohttp.ClientSession, url: str, body: bytes, count: int, tasks: int
) -> None:
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with session.post(url, data=body) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"the echo server answered {response.status}")

    await asyncio.gather(*(worker() for _ in range(tasks)))


async def _client_exchanges(url: str, body: bytes, count: int, concurrency: int) -> float:
    """CPU µs per POST + read of the answer through one aiohttp session."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _post_all(session, url, body, concurrency * 4, concurrency)  # connections open
        started = time.process_time()
        await _post_all(session, url, body, count, concurrency)
        return (time.process_time() - started) * 1e6 / count


async def _lean_exchanges(url: str, body: bytes, count: int, concurrency: int) -> float:
    """CPU µs per POST + answer through the sidecar's `LeanHttpClient`."""
    client = LeanHttpClient(idle_seconds=300.0)
    headers = [("Content-Type", "application/json")]

    async def post_all(total: int) -> None:
        left = total

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                answer = await client.request("POST", url, headers, body)
                if answer.status != 200:
                    raise RuntimeError(f"the echo server answered {answer.status}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    try:
        await post_all(concurrency * 4)  # connections open
        started = time.process_time()
        await post_all(count)
        return (time.process_time() - started) * 1e6 / count
    finally:
        await client.close()


class _RawExchanges(asyncio.Protocol):
    """The least an HTTP/1.1 exchange can cost from asyncio: one keep-alive connection, the
    request written in one call, the answer framed by its Content-Length (no parser, no
    headers object): what a hand-written client for the container and attach calls would
    approach."""

    def __init__(self, request: bytes, count: int, done: asyncio.Future[None]) -> None:
        self._request = request
        self._left = count
        self._done = done
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        length = 0
        for line in self._buffer[:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self._buffer) < end + 4 + length:
            return
        self._buffer = self._buffer[end + 4 + length :]
        self._left -= 1
        assert self._transport is not None
        if self._left > 0:
            self._transport.write(self._request)
        elif not self._done.done():
            self._done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_exception(exc or ConnectionError("the echo server closed"))


async def _raw_exchanges(host: str, port: int, body: bytes, count: int, concurrency: int) -> float:
    """CPU µs per exchange of `_RawExchanges`, `concurrency` connections at once."""
    request = (
        f"POST / HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    per_connection = max(1, count // concurrency)
    dones = [loop.create_future() for _ in range(concurrency)]
    started = time.process_time()
    transports = []
    for done in dones:
        transport, _ = await loop.create_connection(
            functools.partial(_RawExchanges, request, per_connection, done), host, port
        )
        transports.append(transport)
    await asyncio.gather(*dones)
    spent = time.process_time() - started
    for transport in transports:
        transport.close()
    return spent * 1e6 / (per_connection * concurrency)


async def _publishes(nats_url: str, payload: bytes, count: int, concurrency: int) -> float:
    """CPU µs per JetStream publish awaited to its ack (a memory stream of its own)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name=_STREAM, subjects=[f"{_STREAM}.>"], storage=StorageType.MEMORY)
        )
        try:
            left = count

            async def publisher() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    await js.publish(f"{_STREAM}.item", payload)

            started = time.process_time()
            await asyncio.gather(*(publisher() for _ in range(concurrency)))
            return (time.process_time() - started) * 1e6 / count
        finally:
            await js.delete_stream(_STREAM)
    finally:
        await nc.close()


async def _consumes(nats_url: str, payload: bytes, count: int, concurrency: int) -> float:
    """CPU µs per message fetched from a pull consumer (`concurrency` at a time, as the
    sidecar's slots ask) and acked; the messages are published before the clock starts."""
    nc = await nats.connect(nats_url)
    stream = f"{_STREAM}_PULL"
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name=stream, subjects=[f"{stream}.>"], storage=StorageType.MEMORY)
        )
        try:
            await asyncio.gather(*(js.publish(f"{stream}.item", payload) for _ in range(count)))
            subscription = await js.pull_subscribe(
                f"{stream}.item",
                durable="floor",
                config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1),
            )
            taken = 0
            started = time.process_time()
            while taken < count:
                messages = await subscription.fetch(min(concurrency, count - taken), timeout=10)
                for message in messages:
                    await message.ack()
                taken += len(messages)
            await nc.flush()
            return (time.process_time() - started) * 1e6 / count
        finally:
            await js.delete_stream(stream)
    finally:
        await nc.close()


def measure_floors(
    echo_url: str, nats_url: str, body: bytes, *, count: int, concurrency: int
) -> dict[str, float]:
    """CPU µs per aiohttp client exchange with the echo server, per lean client exchange, per
    bare asyncio exchange with it, per JetStream publish, per message consumed and acked, of
    the platform's and the sidecar's own work per request, and the sidecar's floor made of
    them, without and with its own work."""
    address = urllib.parse.urlsplit(echo_url)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    figures = {
        "aiohttp_client_exchange_us": asyncio.run(
            _client_exchanges(echo_url, body, count, concurrency)
        ),
        "lean_client_exchange_us": asyncio.run(_lean_exchanges(echo_url, body, count, concurrency)),
        "raw_asyncio_exchange_us": asyncio.run(
            _raw_exchanges(host, port, body, count, concurrency)
        ),
        "jetstream_publish_us": asyncio.run(_publishes(nats_url, body, count, concurrency)),
        "jetstream_consume_us": asyncio.run(_consumes(nats_url, body, count, concurrency)),
        "platform_work_us": asyncio.run(platform_work(body, count)),
        "sidecar_work_us": asyncio.run(sidecar_work(body, count)),
    }
    figures["sidecar_floor_us"] = (
        figures["jetstream_consume_us"] + 2 * figures["lean_client_exchange_us"]
    )
    figures["sidecar_floor_with_work_us"] = figures["sidecar_floor_us"] + figures["sidecar_work_us"]
    return figures
