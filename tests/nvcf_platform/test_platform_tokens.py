"""The attach-token table, the response hand-over and body streaming, without any network."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from nvcf_platform.errors import NatsUnavailable, WorkerResponseFailed
from nvcf_platform.invocation.background import BackgroundTasks
from nvcf_platform.invocation.tokens import (
    AttachTokens,
    BodyIncomplete,
    RequestBody,
    WorkerResponse,
    iter_body,
    random_uuid,
)


class Chunks:
    """A ChunkReader over fixed chunks; b"" at the end, or an endless wait if `hang`."""

    def __init__(self, *chunks: bytes, hang: bool = False) -> None:
        self.chunks = list(chunks)
        self.hang = hang
        self.reads = 0

    async def readany(self) -> bytes:
        self.reads += 1
        if self.chunks:
            return self.chunks.pop(0)
        if self.hang:
            await asyncio.Event().wait()
        return b""


def response(reader: Chunks, length: int | None = None) -> WorkerResponse:
    return WorkerResponse(
        status=200, reason="OK", headers=[], content_length=length, first_chunk=b"", reader=reader
    )


async def collect(chunks: object) -> bytes:
    return b"".join([chunk async for chunk in chunks])  # type: ignore[attr-defined]


async def test_tokens_are_uuid4_and_single_use() -> None:
    tokens = AttachTokens()
    slot = tokens.mint_response("req")
    request_token = tokens.mint_request(RequestBody("req", Chunks(), None))
    assert uuid.UUID(slot.token).version == 4
    assert uuid.UUID(request_token).version == 4
    assert len(tokens) == 2
    assert tokens.claim_response(slot.token) is slot
    assert tokens.claim_response(slot.token) is None
    assert tokens.claim_request(request_token) is not None
    assert tokens.claim_request(request_token) is None
    assert tokens.claim_request(slot.token) is None  # kinds never mix
    assert len(tokens) == 0


def test_random_uuids_are_canonical_version_4_text_and_differ() -> None:
    made = [random_uuid() for _ in range(2000)]
    for text in made:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # lower-case hex, hyphens where the canonical form has them
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    assert len(set(made)) == len(made)
    # 122 random bits: every hex digit but the version's and the variant's takes many values.
    fixed = (8, 13, 14, 18, 19, 23)  # the hyphens, the version "4", the variant digit
    assert all(len({text[i] for text in made}) > 8 for i in range(36) if i not in fixed)
    assert {text[19] for text in made} == set("89ab")


async def test_revoke_forgets_unused_tokens() -> None:
    tokens = AttachTokens()
    slot = tokens.mint_response("req")
    tokens.revoke(slot.token)
    tokens.revoke(None)
    assert tokens.claim_response(slot.token) is None


async def test_delivered_response_reaches_the_waiter() -> None:
    slot = AttachTokens().mint_response("req")
    delivered = response(Chunks())
    assert slot.deliver(delivered)
    async with asyncio.timeout(1):
        assert await slot.wait() is delivered
    assert not slot.deliver(response(Chunks()))


async def test_delivery_after_timeout_fails_so_the_post_answers_500() -> None:
    slot = AttachTokens().mint_response("req")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await slot.wait()
    assert not slot.deliver(response(Chunks()))
    assert not slot.fail("late")


async def test_failed_response_raises_in_the_waiter() -> None:
    slot = AttachTokens().mint_response("req")
    assert slot.fail("Incomplete HTTP response")
    with pytest.raises(WorkerResponseFailed, match="Incomplete HTTP response") as raised:
        await slot.wait()
    assert raised.value.detail == "Incomplete HTTP response"


async def test_abandon_releases_a_delivered_but_unrelayed_response() -> None:
    slot = AttachTokens().mint_response("req")
    delivered = response(Chunks())
    slot.deliver(delivered)
    slot.abandon()
    assert delivered.finished.is_set()
    empty = AttachTokens().mint_response("req")
    empty.abandon()
    assert not empty.deliver(response(Chunks()))
    failed = AttachTokens().mint_response("req")
    failed.fail("bad")
    failed.abandon()  # retrieves the exception: no "never retrieved" warning


async def test_body_with_length_stops_at_it_and_leaves_the_rest_unread() -> None:
    reader = Chunks(b"abc", b"defgh", b"never read")
    assert await collect(iter_body(reader, b"01", 7, 1)) == b"01abcde"
    assert reader.reads == 2


async def test_body_without_length_runs_to_the_end() -> None:
    assert await collect(iter_body(Chunks(b"a", b"b"), b"", None, 1)) == b"ab"


async def test_body_shorter_than_its_length_raises() -> None:
    with pytest.raises(BodyIncomplete, match="after 3 of 10 bytes"):
        await collect(iter_body(Chunks(b"abc"), b"", 10, 1))


async def test_body_silent_past_the_idle_timeout_raises() -> None:
    with pytest.raises(TimeoutError):
        await collect(iter_body(Chunks(hang=True), b"", None, 0.05))


async def test_closing_a_request_body_stops_the_get_attach_streaming_it() -> None:
    body = RequestBody("req", Chunks(b"part", hang=True), None)
    got: list[bytes] = []
    first = asyncio.Event()

    async def stream() -> None:
        try:
            async for chunk in body.chunks():
                got.append(chunk)
                first.set()
        finally:
            body.finish()

    streamer = asyncio.create_task(stream())
    await asyncio.wait_for(first.wait(), 5)
    await body.close()
    assert streamer.cancelled()
    assert got == [b"part"]


async def test_background_task_failures_are_logged_and_close_is_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = BackgroundTasks()
    done = asyncio.Event()

    async def fails() -> None:
        raise RuntimeError("boom")

    async def finishes() -> None:
        done.set()

    async def hangs() -> None:
        await asyncio.Event().wait()

    with caplog.at_level(logging.ERROR):
        tasks.spawn(fails(), name="fails")
        tasks.spawn(finishes(), name="finishes")
        tasks.spawn(hangs(), name="hangs")
        await tasks.aclose(grace=0.1)
    assert done.is_set()
    assert len(tasks) == 0
    assert any(record.message == "background task failed" for record in caplog.records)
    tasks.spawn(finishes(), name="refused")  # after close: refused, coroutine closed
    assert len(tasks) == 0


async def test_interrupting_waiters_fails_only_those_still_waiting() -> None:
    tokens = AttachTokens()
    waiting, answered = tokens.mint_response("r1"), tokens.mint_response("r2")
    answer = response(Chunks(b"ok"))
    assert answered.deliver(answer)
    tokens.interrupt_waiting(NatsUnavailable("NATS has been unreachable for 10 s"))
    with pytest.raises(NatsUnavailable, match="unreachable for 10 s"):
        await waiting.wait()
    assert await answered.wait() is answer  # an answer already there wins
    waiting.abandon()  # retrieves nothing more, raises nothing
