"""A mock NVCF worker for the platform tests: `MockWorker`, its handlers `echo` and `PollingJob`.

It plays NVIDIA's worker the way the Rust invocation service's own tests do: it binds the durable
consumer (never creates it), decodes the protobuf, fetches the rest of the body over GET attach and
POSTs an HTTP/1.1-framed response. `PollingJob` answers 202 and later status polls on
`rq_polling.<reqid>` as NVIDIA's worker does in compatibility mode. Loaded with `load_module`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError
from nats.errors import TimeoutError as NatsTimeoutError

from nvcf_sidecar.protocol import (
    H1_CONTENT_TYPE,
    NVCF_PERCENT_COMPLETE,
    NVCF_POLL_SECONDS,
    WorkerInvokeFunctionRequest,
    attach_url,
    bearer,
    consumer_name,
    decode_invoke_request,
    encode_response_head,
    first_http1_config,
    get_attach_accept,
    polling_subject,
    request_stream_name,
)
from nvcf_sidecar.worker.polling import confirm_interest

__all__ = ["Handler", "MockWorker", "PollingJob", "Reply", "echo"]

Reply = tuple[int, list[tuple[str, str]], "bytes | AsyncIterable[bytes]"]
"""What a mock-worker handler returns: status, headers, body (bytes, or chunks streamed)."""
Handler = Callable[[WorkerInvokeFunctionRequest, bytes, "MockWorker"], Awaitable[Reply | None]]
"""(work item, full request body, worker) -> reply, or None when the handler posted itself."""


async def echo(item: WorkerInvokeFunctionRequest, body: bytes, worker: MockWorker) -> Reply:
    """NVIDIA's default mock handler, echoing: 200 text/plain with the request body."""
    return 200, [("Content-Type", "text/plain")], body


class MockWorker:
    """A minimal NVCF worker: pull from the durable consumer, GET the body rest, POST a reply."""

    def __init__(
        self, nats_url: str, region: str, function_version_id: str, handler: Handler
    ) -> None:
        self.nats_url = nats_url
        self.stream = request_stream_name(region, function_version_id)
        self.consumer = consumer_name(region, function_version_id)
        self.handler = handler
        self.items: list[WorkerInvokeFunctionRequest] = []
        """Every work item received, in order."""
        self.get_attach: dict[str, tuple[int, dict[str, str], bytes]] = {}
        """reqid -> (status, headers, body) of its GET attach."""
        self.post_results: dict[str, list[tuple[int, bytes]]] = {}
        """reqid -> (status, body) of each POST attach."""
        self.polls: list[WorkerInvokeFunctionRequest] = []
        """Every status-poll item received on `rq_polling.<reqid>`, in order."""
        self.errors: list[BaseException] = []
        self.handled = 0
        """Work items whose handling (GET, handler, POST, ack) is over."""
        self._progress = asyncio.Condition()
        self._nc: Client | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> MockWorker:
        self._nc = await nats.connect(self.nats_url, connect_timeout=2, allow_reconnect=False)
        subscription = await self._nc.jetstream().pull_subscribe_bind(
            consumer=self.consumer, stream=self.stream
        )
        self._session = aiohttp.ClientSession()
        self._loop = asyncio.create_task(self._fetch_loop(subscription))
        return self

    async def close(self) -> None:
        if self._loop is not None:
            # A flag, not only a cancel: nats-py's fetch can turn a cancellation that races its
            # own expiry into a timeout, which the loop would take for an empty pull.
            self._stopping = True
            await asyncio.wait({self._loop}, timeout=5)
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await self._loop
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        if self._session is not None:
            await self._session.close()
        if self._nc is not None:
            await self._nc.close()

    async def _fetch_loop(self, subscription: Any) -> None:
        while not self._stopping:
            try:
                messages: list[Msg] = await subscription.fetch(batch=32, timeout=0.5)
            except NatsTimeoutError:
                continue
            except ConnectionClosedError:
                return  # NATS went away (a test killed it): nothing more to fetch
            for message in messages:
                task = asyncio.create_task(self._handle(message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def spawn(self, coroutine: Awaitable[None]) -> None:
        """Run `coroutine` as one of the worker's tasks (cancelled at close, errors recorded)."""

        async def run() -> None:
            try:
                await coroutine
            except BaseException as error:
                if not isinstance(error, asyncio.CancelledError):
                    self.errors.append(error)
                raise

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def subscribe_polls(
        self,
        request_id: str,
        on_poll: Callable[[WorkerInvokeFunctionRequest, Msg], Awaitable[None]],
    ) -> Subscription:
        """Subscribe to `rq_polling.<reqid>`; each poll is decoded, recorded, then `on_poll`-ed."""
        assert self._nc is not None

        async def received(message: Msg) -> None:
            try:
                poll = decode_invoke_request(message.data)
                async with self._progress:
                    self.polls.append(poll)
                    self._progress.notify_all()
                await on_poll(poll, message)
            except BaseException as error:
                self.errors.append(error)
                raise

        subscription = await self._nc.subscribe(polling_subject(request_id), cb=received)
        await confirm_interest(self._nc)  # the server knows the poll subscription before the 202
        return subscription

    async def wait_for(
        self, *, items: int = 0, handled: int = 0, polls: int = 0, within: float = 30
    ) -> None:
        """Until at least `items` work items arrived, `handled` were handled, `polls` arrived."""

        def reached() -> bool:
            return len(self.items) >= items and self.handled >= handled and len(self.polls) >= polls

        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(reached), within)

    async def _advance(self, item: WorkerInvokeFunctionRequest | None = None) -> None:
        async with self._progress:
            if item is None:
                self.handled += 1
            else:
                self.items.append(item)
            self._progress.notify_all()

    async def _handle(self, message: Msg) -> None:
        try:
            item = decode_invoke_request(message.data)
            await self._advance(item)
            body = item.requestBody + await self._rest_of_body(item)
            reply = await self.handler(item, body, self)
            if reply is not None:
                status, headers, content = reply
                await self.post_attach(item, _frame(status, headers, content))
        except BaseException as error:
            self.errors.append(error)
            raise
        finally:
            try:
                await message.ack()
            except ConnectionClosedError:
                pass  # NATS went away (a test killed it): the item is redelivered, or purged
            await self._advance()

    async def _rest_of_body(self, item: WorkerInvokeFunctionRequest) -> bytes:
        config = first_http1_config(item)
        if not config.HasField("requestAuthorizationToken"):
            return b""
        assert self._session is not None
        async with self._session.get(
            attach_url(config.targetURI),
            headers={
                "Authorization": bearer(config.requestAuthorizationToken),
                "Accept": get_attach_accept(item.requestMethod),
            },
        ) as response:
            data = await response.read()
            self.get_attach[item.requestId] = (response.status, dict(response.headers), data)
            return data

    async def post_attach(
        self,
        item: WorkerInvokeFunctionRequest,
        data: bytes | AsyncIterable[bytes],
        *,
        token: str | None = None,
    ) -> tuple[int, bytes]:
        """POST `data` (head + body) to the item's attach URL; returns the platform's answer."""
        assert self._session is not None
        config = first_http1_config(item)
        async with self._session.post(
            attach_url(config.targetURI),
            data=data,
            headers={
                "Authorization": bearer(token or config.responseAuthorizationToken),
                "Content-Type": H1_CONTENT_TYPE,
            },
        ) as response:
            result = (response.status, await response.read())
        self.post_results.setdefault(item.requestId, []).append(result)
        return result

    async def post_reply(
        self,
        item: WorkerInvokeFunctionRequest,
        status: int,
        headers: list[tuple[str, str]],
        content: bytes | AsyncIterable[bytes],
    ) -> tuple[int, bytes]:
        """POST an HTTP/1.1-framed response to the item's attach URL (see `post_attach`)."""
        return await self.post_attach(item, _frame(status, headers, content))


def _frame(
    status: int, headers: list[tuple[str, str]], content: bytes | AsyncIterable[bytes]
) -> bytes | AsyncIterable[bytes]:
    if isinstance(content, bytes):
        return encode_response_head(status, headers, content_length=len(content)) + content

    async def stream() -> AsyncIterator[bytes]:
        yield encode_response_head(status, headers)
        async for chunk in content:
            yield chunk

    return stream()


# --- jobs that outlast the poll (compatibility mode) ---------------------------------------------


def _poll_budget(item: WorkerInvokeFunctionRequest) -> float:
    """The item's NVCF-POLL-SECONDS (first value), default 60: when the worker must answer."""
    values = [kv.value for kv in item.requestHeaders if kv.key == NVCF_POLL_SECONDS]
    return float(values[0]) if values else 60.0


class PollingJob:
    """A handler whose job can outlast the caller's poll duration (NVIDIA's compatibility mode).

    The job finishes `duration` seconds after its item arrives, or when `finish()` is called. The
    worker subscribes to `rq_polling.<reqid>` (unless `subscribe` is False) *before* answering,
    and answers the item with `result` if the job ends within the item's poll budget, else 202
    (with `NVCF-PERCENT-COMPLETE: percent` when given, and `progress_body`). Each poll is
    acknowledged, then (unless `answer_polls` is False) answered over its own attach config
    with `result` once the job is done, or another 202 when the poll's budget runs out first.
    The first `lose_polls` polls get no reply at all, as if lost on the way.
    """

    def __init__(
        self,
        result: Reply,
        *,
        duration: float | None = None,
        percent: str | None = None,
        progress_body: bytes = b"",
        subscribe: bool = True,
        answer_polls: bool = True,
        lose_polls: int = 0,
    ) -> None:
        self.result = result
        self.duration = duration
        self.percent = percent
        self.progress_body = progress_body
        self.subscribe = subscribe
        self.answer_polls = answer_polls
        self.lose_polls = lose_polls
        """How many polls vanish unreplied first, as in a node loss."""
        self.polls_seen = 0
        self.item: WorkerInvokeFunctionRequest | None = None
        self.answers: list[tuple[str, int, tuple[int, bytes]]] = []
        """(requestId, status POSTed, platform's answer to that POST), in order."""
        self._done = asyncio.Event()
        self._subscription: Subscription | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def finish(self) -> None:
        """End the job now: the next poll (or a waiting one) gets the result."""
        self._done.set()

    async def __call__(
        self, item: WorkerInvokeFunctionRequest, body: bytes, worker: MockWorker
    ) -> None:
        self.item = item
        if self.duration is not None:
            asyncio.get_running_loop().call_later(self.duration, self._done.set)
        if self.subscribe:
            await self.subscribe_polls(item.requestId, worker)
        await self._answer(item, worker)

    async def subscribe_polls(self, request_id: str, worker: MockWorker) -> None:
        """Take the polls of `request_id` from now on (as a worker back from a reconnect)."""
        self._subscription = await worker.subscribe_polls(request_id, self._polled(worker))

    def _polled(
        self, worker: MockWorker
    ) -> Callable[[WorkerInvokeFunctionRequest, Msg], Awaitable[None]]:
        async def on_poll(poll: WorkerInvokeFunctionRequest, message: Msg) -> None:
            self.polls_seen += 1
            if self.polls_seen <= self.lose_polls:
                return
            await message.respond(b"")  # "took the poll", before any work, as NVIDIA's worker
            if self.answer_polls:
                worker.spawn(self._answer(poll, worker))

        return on_poll

    async def _answer(self, item: WorkerInvokeFunctionRequest, worker: MockWorker) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), _poll_budget(item))
        if self.done:
            status, headers, content = self.result
            if self._subscription is not None:
                await self._subscription.unsubscribe()
                self._subscription = None
        else:
            status, content = 202, self.progress_body
            headers = [] if self.percent is None else [(NVCF_PERCENT_COMPLETE, self.percent)]
        answer = await worker.post_reply(item, status, headers, content)
        self.answers.append((item.requestId, status, answer))
