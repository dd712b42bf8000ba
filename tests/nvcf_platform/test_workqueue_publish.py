"""A work item's publish reads the stream's acknowledgement itself: stored, a duplicate, no stream
yet, or an answer that is no acknowledgement at all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import StorageType

from nvcf_platform.errors import PublishFailed
from nvcf_platform.invocation.workqueue import WorkQueue
from nvcf_sidecar.protocol import request_stream_name

VERSION_ID = "0f6a3f0e-6d1c-4c3e-9a43-6b7d2a8e5c11"
REGION = "test-region"


@pytest.fixture
async def nc(nats_server: Any) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url, connect_timeout=2, allow_reconnect=False)
    yield client
    await client.close()


def queue_of(nc: NATS, *, deadline: float = 10.0) -> WorkQueue:
    return WorkQueue(
        nc,
        region=REGION,
        max_messages=10,
        ack_wait=5.0,
        storage=StorageType.MEMORY,
        retry_delays=(0.05,),
        deadline=deadline,
    )


async def stored(nc: NATS) -> int:
    info = await nc.jetstream().stream_info(request_stream_name(REGION, VERSION_ID))
    return int(info.state.messages)


async def test_an_item_is_stored_once_and_its_duplicate_counts_as_published(nc: NATS) -> None:
    queue = queue_of(nc)
    await queue.provision(VERSION_ID)

    await queue.publish(VERSION_ID, "req-1", b"item")
    await queue.publish(VERSION_ID, "req-1", b"item")  # one message per subject: it landed before

    assert await stored(nc) == 1


async def test_a_missing_stream_is_created_and_the_item_stored(nc: NATS) -> None:
    await queue_of(nc).publish(VERSION_ID, "req-2", b"item")

    assert await stored(nc) == 1


@pytest.mark.parametrize("answer", [b"<html>not JetStream</html>", b"[]", b'{"ok": true}'])
async def test_an_answer_that_is_no_acknowledgement_fails_by_the_deadline(
    nc: NATS, answer: bytes
) -> None:
    # Something other than a stream answers on the subject: the publish is not taken as stored.
    async def impostor(msg: Msg) -> None:
        await msg.respond(answer)

    await nc.subscribe("rq.>", cb=impostor)

    with pytest.raises(PublishFailed, match="unreadable publish acknowledgement"):
        async with asyncio.timeout(10):
            await queue_of(nc, deadline=0.5).publish(VERSION_ID, "req-3", b"item")
