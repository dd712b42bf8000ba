"""One pull request on a real nats-server: delivery as messages arrive, its ends, abandon, drain."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from harness.modules import load_module
from nvcf_sidecar.protocol import consumer_name, request_stream_name
from nvcf_sidecar.worker.pull import PullRequest, parse_max_request_batch

SERVERS = Path(__file__).parent / "servers"
shell = load_module(SERVERS / "shell_fake_api.py")
REGION: str = shell.REGION
FVID: str = shell.FUNCTION_VERSION_ID


async def _never_abandoned(msg: Msg) -> None:
    raise AssertionError("nothing is abandoned in this test")


@pytest.mark.nats
async def test_a_pull_delivers_the_batch_as_it_arrives(nats_server: Any) -> None:
    await shell.provision_queue(nats_server.url, REGION)
    ids = await shell.publish_work(nats_server.url, [shell.work_item(), shell.work_item()])
    delivered: list[Msg] = []

    async def deliver(msg: Msg) -> None:
        delivered.append(msg)
        await msg.ack()

    nc = await nats.connect(nats_server.url)
    try:
        async with PullRequest(nc, REGION, FVID, on_abandoned=_never_abandoned) as pull:
            result = await pull.run(2, expires=30.0, heartbeat=1.0, deliver=deliver)
    finally:
        await nc.close()
    assert (result.delivered, result.abandoned, result.max_batch) == (2, False, None)
    assert [msg.subject.rsplit(".", 1)[-1] for msg in delivered] == ids
    await shell.wait_for_state(nats_server.url, (0, 0, 0))


@pytest.mark.nats
async def test_a_pull_that_expires_ends_with_what_it_got(nats_server: Any) -> None:
    await shell.provision_queue(nats_server.url, REGION)
    await shell.publish_work(nats_server.url, [shell.work_item()])
    delivered: list[Msg] = []

    async def deliver(msg: Msg) -> None:
        delivered.append(msg)
        await msg.ack()

    nc = await nats.connect(nats_server.url)
    try:
        async with PullRequest(nc, REGION, FVID, on_abandoned=_never_abandoned) as pull:
            async with asyncio.timeout(5):
                result = await pull.run(3, expires=0.6, heartbeat=0.2, deliver=deliver)
    finally:
        await nc.close()
    assert (result.delivered, result.abandoned) == (1, False)
    assert len(delivered) == 1


@pytest.mark.nats
async def test_a_pull_over_the_servers_batch_limit_reports_the_limit(nats_server: Any) -> None:
    await shell.provision_queue(nats_server.url, REGION, max_batch=2)
    await shell.publish_work(nats_server.url, [shell.work_item() for _ in range(3)])

    async def deliver(msg: Msg) -> None:
        raise AssertionError("the server refuses the whole request")

    nc = await nats.connect(nats_server.url)
    try:
        async with PullRequest(nc, REGION, FVID, on_abandoned=_never_abandoned) as pull:
            result = await pull.run(5, expires=30.0, heartbeat=1.0, deliver=deliver)
    finally:
        await nc.close()
    assert (result.delivered, result.max_batch) == (0, 2)
    assert await shell.queue_state(nats_server.url) == (3, 0, 3)


@pytest.mark.nats
async def test_an_abandoned_pull_hands_back_what_the_server_had_sent(nats_server: Any) -> None:
    await shell.provision_queue(nats_server.url, REGION)
    [first] = await shell.publish_work(nats_server.url, [shell.work_item()])
    delivered: list[str] = []
    handed_back: list[str] = []

    async def hand_back(msg: Msg) -> None:
        handed_back.append(msg.subject.rsplit(".", 1)[-1])
        await msg.nak()

    nc = await nats.connect(nats_server.url)
    try:
        async with PullRequest(nc, REGION, FVID, on_abandoned=hand_back) as pull:

            async def deliver(msg: Msg) -> None:
                delivered.append(msg.subject.rsplit(".", 1)[-1])
                await msg.ack()
                # Abandoned now; a second message reaches the inbox only after that.
                pull.abandon()
                second.extend(await shell.publish_work(nats_server.url, [shell.work_item()]))
                await shell.wait_for_state(nats_server.url, (1, 1, 0))  # sent to this pull

            second: list[str] = []
            result = await pull.run(3, expires=30.0, heartbeat=1.0, deliver=deliver)
            assert (result.delivered, result.abandoned) == (1, True)
        assert delivered == [first]
        assert handed_back == second
        # NAK'ed: the next pull gets it at once, not after the ack wait.
        puller = await nc.jetstream().pull_subscribe_bind(
            consumer_name(REGION, FVID), stream=request_stream_name(REGION, FVID)
        )
        [again] = await puller.fetch(1, timeout=2)
        assert again.subject.rsplit(".", 1)[-1] == second[0]
        assert again.metadata.num_delivered == 2
        await again.ack()
    finally:
        await nc.close()


@pytest.mark.nats
async def test_a_pull_abandoned_before_it_runs_asks_for_nothing(nats_server: Any) -> None:
    await shell.provision_queue(nats_server.url, REGION)
    await shell.publish_work(nats_server.url, [shell.work_item()])
    nc = await nats.connect(nats_server.url)
    try:
        async with PullRequest(nc, REGION, FVID, on_abandoned=_never_abandoned) as pull:
            pull.abandon()
            result = await pull.run(1, expires=30.0, heartbeat=1.0, deliver=_never_abandoned)
    finally:
        await nc.close()
    assert (result.delivered, result.abandoned) == (0, True)
    assert await shell.queue_state(nats_server.url) == (1, 0, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Exceeded MaxRequestBatch of 5", 5),
        ("nats: Exceeded MaxRequestBatch of 128", 128),
        ("Exceeded MaxRequestBatch of invalid", None),
        ("Exceeded MaxWaiting", None),
        ("Exceeded MaxRequestBatch of 0", None),
    ],
)
def test_parse_max_request_batch(text: str, expected: int | None) -> None:
    assert parse_max_request_batch(text) == expected
