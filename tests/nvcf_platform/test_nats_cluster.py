"""NATS as a 3-node JetStream cluster on loopback: `EmbeddedNatsCluster` elects leaders and takes
node loss; a `LocalStack` on it replicates every stream, consumer and bucket 3 times, and a 202'd
request is still polled to its answer after the leaders of its queue and tracking streams died.

Node loss under continuous load is the chaos suite's `cluster-node-loss` (tests/chaos).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import nats
import orjson
import pytest

from harness.http import http_request
from harness.ports import free_port
from nvcf_platform.devstack.nats_cluster import EmbeddedNatsCluster
from nvcf_platform.devstack.nats_server import NatsServerError
from nvcf_platform.devstack.stack import FunctionSpec, LocalStack
from nvcf_sidecar.protocol import consumer_name, request_stream_name, tracking_stream_name

pytestmark = [pytest.mark.nats, pytest.mark.timeout(90)]

# Echoes its JSON body after sleeping argv[2] seconds: long enough for a 202 and two kills.
SLOW_ECHO = """
import asyncio, sys
from aiohttp import web
async def infer(request):
    await asyncio.sleep(float(sys.argv[2]))
    return web.json_response(await request.json())
app = web.Application()
app.router.add_get("/v2/health/ready", lambda request: web.Response(text="ok"))
app.router.add_post("/infer", infer)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


def test_a_cluster_elects_a_new_meta_leader_when_its_leader_is_killed(tmp_path: Path) -> None:
    cluster = EmbeddedNatsCluster(3, store_dir=tmp_path / "nats")
    with cluster:
        assert cluster.names == ["nats-1", "nats-2", "nats-3"]
        assert len(set(cluster.urls)) == 3
        assert cluster.url == ",".join(cluster.urls)
        leader = cluster.wait_for_meta_leader(10)
        assert leader in cluster.names
        assert cluster.kill_node(leader) is not None
        assert leader not in cluster.running
        deadline = time.monotonic() + 20
        while (now := cluster.meta_leader()) in (None, leader):
            assert time.monotonic() < deadline, "no new meta leader within 20 s"
            time.sleep(0.05)
        cluster.restart_node(leader)
        assert sorted(cluster.running) == cluster.names
        assert cluster.wait_for_meta_leader(10) in cluster.names
        assert now != leader
    assert cluster.running == []


def test_an_unknown_node_is_an_error_naming_the_known_ones(tmp_path: Path) -> None:
    cluster = EmbeddedNatsCluster(3, store_dir=tmp_path / "nats")
    with pytest.raises(NatsServerError, match=r"no node 'nats-9' .*nats-1, nats-2, nats-3"):
        cluster.node("nats-9")
    with pytest.raises(NatsServerError, match="at least 1 node"):
        EmbeddedNatsCluster(0, store_dir=tmp_path / "none")


async def _replicas(urls: list[str], fvid: str) -> dict[str, int]:
    """num_replicas of every stream, consumer and bucket the platform created."""
    nc = await nats.connect(urls, connect_timeout=2)
    try:
        js = nc.jetstream(timeout=5)
        found = {}
        for stream in (
            request_stream_name("local", fvid),
            tracking_stream_name("local"),
            "KV_nvcf_control",
            "OBJ_nvcf_assets",
            "OBJ_nvcf_results",
        ):
            found[stream] = (await js.stream_info(stream)).config.num_replicas or 0
        consumer = await js.consumer_info(
            request_stream_name("local", fvid), consumer_name("local", fvid)
        )
        found["consumer"] = consumer.config.num_replicas or 0
        return found
    finally:
        await nc.close()


def test_a_stack_on_a_cluster_replicates_everything_and_a_polled_request_outlives_leaders(
    tmp_path: Path,
) -> None:
    port = free_port()
    spec = FunctionSpec(
        command=[sys.executable, "-c", SLOW_ECHO, str(port), "45"],  # outlasts both faults
        inference_port=port,
        name="slow",
        default_invocation_path="/infer",
    )
    stack = LocalStack([spec], work_dir=tmp_path / "stack", nats_cluster=3)
    with stack:
        cluster = stack.nats_cluster
        assert cluster is not None
        assert stack.nats_url == cluster.url
        assert list(stack.nats_nodes) == ["nats-1", "nats-2", "nats-3"]
        replicas = asyncio.run(_replicas(cluster.urls, spec.version_id))
        assert replicas == dict.fromkeys(replicas, 3)

        headers = {**stack.auth_headers, "NVCF-POLL-SECONDS": "10"}
        answer = http_request(
            "POST",
            stack.invoke_url(spec.function_id),
            json_body={"id": "x1"},
            headers=headers,
            timeout=30,  # the first answer comes after the 10 s poll budget
        )
        assert answer.status == 202
        reqid = answer.headers["nvcf-reqid"]

        # The caller polls all along, as NVCF's clients do: a worker gives a request up when no
        # poll comes within max(2 x poll seconds, 10 s) of its last 202 (NVIDIA's rule: 20 s
        # here), and an election after a node loss may take 10 s on a loaded machine.
        status_url = f"{stack.base_url}/v2/nvcf/pexec/status/{reqid}"
        answers: list[tuple[float, int, bytes]] = []

        def poll() -> None:
            deadline = time.monotonic() + 120
            for _ in range(500):
                if time.monotonic() > deadline:
                    return
                answer = http_request("GET", status_url, headers=headers, timeout=30)
                answers.append((time.monotonic(), answer.status, answer.body))
                if answer.status not in (202, 500):
                    return

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        # The queue's leader dies while the request runs; once it is back, the tracking
        # stream's leader dies: the status polls read the record from the other replicas.
        queue = request_stream_name("local", spec.version_id)
        killed_at = []
        for stream in (queue, tracking_stream_name("local")):
            leader = cluster.wait_for_stream_leader(stream, 10)
            killed_at.append(time.monotonic())
            cluster.kill_node(leader)
            assert cluster.wait_for_stream_leader(stream, 20, other_than=leader) != leader
            cluster.restart_node(leader)
            # Back means back in the group: killing the next leader before that would leave one
            # node of three, and no majority to elect anything.
            cluster.wait_for_meta_leader(30, every_node=True)
        poller.join(120)
        assert not poller.is_alive()
        statuses = [status for _, status, _ in answers]
        # Every poll found the request, running (202) until its result (200), once; a poll
        # while the tracking stream elects its new leader may fail to read the record (500
        # after 10 s), and the next one reads it again.
        assert statuses[-1] == 200, answers[-1][2][:300]
        assert set(statuses[:-1]) <= {202, 500}, statuses
        for _, status, body in answers:
            if status == 500:
                assert b"failed to read the tracking record" in body, body[:300]
        assert orjson.loads(answers[-1][2]) == {"id": "x1"}
        # Polls were answered as running after each leader's death, the last one's included.
        assert all(
            any(at > killed and status == 202 for at, status, _ in answers) for killed in killed_at
        )
        assert sorted(cluster.running) == cluster.names
