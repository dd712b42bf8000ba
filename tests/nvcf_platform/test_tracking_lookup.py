"""Reading a request's tracking record (status polls) against a real JetStream, including a
replica that has not applied the latest write yet."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from nvcf_platform.devstack.nats_server import EmbeddedNatsServer
from nvcf_platform.invocation.tracking import RequestTracking

pytestmark = pytest.mark.nats

FUNCTION_ID = "5b0c7a6e-2f3d-4c1a-9e8b-7d6c5b4a3f21"
VERSION_ID = "8e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b"


class LaggingReplica:
    """The JetStream context as a status poll meets it while a node rejoins: every direct get
    is answered by a replica that does not have the record yet; the leader has it."""

    def __init__(self, js: Any) -> None:
        self._js = js
        self.direct_gets = 0
        self.leader_gets = 0

    async def get_last_msg(self, stream: str, subject: str, direct: bool = False) -> Any:
        if direct:
            self.direct_gets += 1
            raise NotFoundError
        self.leader_gets += 1
        return await self._js.get_last_msg(stream, subject)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._js, name)


@pytest.fixture
async def client(nats_server: EmbeddedNatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_server.url)
    yield nc
    await nc.close()


async def test_a_record_a_lagging_replica_misses_is_read_from_the_leader(client: Client) -> None:
    tracking = RequestTracking(client, region="local")
    await tracking.provision()
    await tracking.record("req-1", FUNCTION_ID, VERSION_ID, request_time_ns=1_000_000_000)
    lagging = LaggingReplica(tracking._js)
    tracking._js = lagging  # type: ignore[assignment]

    record = await tracking.lookup("req-1")

    assert record is not None
    assert (record.functionId, record.functionVersionId) == (FUNCTION_ID, VERSION_ID)
    assert record.requestTime.ToNanoseconds() == 1_000_000_000
    assert (lagging.direct_gets, lagging.leader_gets) == (1, 1)
    assert await tracking.lookup("req-unknown") is None  # absent everywhere: absent
    assert (lagging.direct_gets, lagging.leader_gets) == (2, 2)


async def test_a_record_the_direct_get_finds_costs_one_read(client: Client) -> None:
    tracking = RequestTracking(client, region="local")
    await tracking.provision()
    await tracking.record("req-2", FUNCTION_ID, VERSION_ID)
    reads: list[bool] = []
    real = tracking._js

    class Counting:
        async def get_last_msg(self, stream: str, subject: str, direct: bool = False) -> Any:
            reads.append(direct)
            return await real.get_last_msg(stream, subject, direct=direct)

    tracking._js = Counting()  # type: ignore[assignment]

    record = await tracking.lookup("req-2")
    assert record is not None
    assert record.functionVersionId == VERSION_ID
    assert reads == [True]  # the direct get only

    tracking._js = real
    await tracking.forget("req-2")
    tracking._js = Counting()  # type: ignore[assignment]
    assert await tracking.lookup("req-2") is None
    assert reads == [True, True, False]  # missed by the direct get, then the leader asked
