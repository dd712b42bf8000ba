"""Binding a region's durable consumer on a real nats-server: look up, provision, never create."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

from harness.modules import load_module
from nvcf_sidecar.protocol import consumer_name, request_stream_name
from nvcf_sidecar.worker.binding import BindFailed, bind_consumer, keepalive_interval_for

SERVERS = Path(__file__).parent / "servers"
shell = load_module(SERVERS / "shell_fake_api.py")
REGION: str = shell.REGION
FVID: str = shell.FUNCTION_VERSION_ID


@pytest.mark.nats
async def test_bind_provisions_a_missing_queue_then_binds(nats_server: Any) -> None:
    provisioned: list[str] = []

    async def provision(region: str) -> None:
        provisioned.append(region)
        await shell.provision_queue(nats_server.url, region)

    nc = await nats.connect(nats_server.url)
    try:
        info = await bind_consumer(nc, REGION, FVID, provision)
        assert info.name == consumer_name(REGION, FVID)
        assert info.stream_name == request_stream_name(REGION, FVID)
        assert provisioned == [REGION]
        await bind_consumer(nc, REGION, FVID, provision)  # exists now: no second provisioning
        assert provisioned == [REGION]
    finally:
        await nc.close()


@pytest.mark.nats
async def test_bind_never_creates_a_stream_or_consumer(nats_server: Any) -> None:
    provisioned: list[str] = []

    async def provision_nothing(region: str) -> None:
        provisioned.append(region)

    nc = await nats.connect(nats_server.url)
    try:
        started = time.monotonic()
        with pytest.raises(BindFailed, match="rq_test-region_"):
            await bind_consumer(nc, REGION, FVID, provision_nothing, max_elapsed=1.5)
        assert time.monotonic() - started < 5
        assert provisioned
        assert set(provisioned) == {REGION}
        js = nc.jetstream()
        assert [stream async for stream in _stream_names(js)] == []

        # A stream without its consumer: still only looked up, never created.
        await shell.provision_queue(nats_server.url, REGION, with_consumer=False)
        with pytest.raises(BindFailed):
            await bind_consumer(nc, REGION, FVID, provision_nothing, max_elapsed=1.0)
        consumers = await js.consumers_info(request_stream_name(REGION, FVID))
        assert consumers == []
    finally:
        await nc.close()


async def _stream_names(js: Any) -> AsyncIterator[str]:
    for info in await js.streams_info():
        yield info.config.name


@pytest.mark.nats
async def test_bind_reports_the_consumers_ack_wait(nats_server: Any) -> None:
    await shell.provision_queue(nats_server.url, REGION, ack_wait=1.5)

    async def no_provisioning(region: str) -> None:
        raise AssertionError("not expected")

    nc = await nats.connect(nats_server.url)
    try:
        info = await bind_consumer(nc, REGION, FVID, no_provisioning)
    finally:
        await nc.close()
    assert info.config.ack_wait == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("configured", "ack_wait", "expected"),
    [
        (10.0, 30.0, 10.0),  # NVIDIA's numbers: a third of the ack wait already
        (10.0, 60.0, 10.0),  # a longer ack wait never lengthens the configured period
        (10.0, 1.5, 0.5),  # a test platform's short ack wait shortens it
        (0.2, 1.5, 0.2),  # a configured period shorter than a third stays
        (10.0, 0.0, 10.0),  # no ack wait known: the configured period
        (10.0, None, 10.0),
    ],
)
def test_the_keepalive_is_at_most_a_third_of_the_ack_wait(
    configured: float, ack_wait: float | None, expected: float
) -> None:
    assert keepalive_interval_for(configured, ack_wait) == pytest.approx(expected)
