"""EmbeddedNatsServer against the real nats-server binary: start-up, JetStream, shutdown."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from harness.http import http_request
from harness.nats import StartNatsServer
from harness.ports import free_ports
from nvcf_platform.devstack.nats_server import (
    DEFAULT_MAX_PAYLOAD,
    EmbeddedNatsServer,
    NatsServerError,
)

pytestmark = pytest.mark.nats


async def connect(server: EmbeddedNatsServer) -> Client:
    return await nats.connect(server.url, connect_timeout=2, allow_reconnect=False)


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


async def test_jetstream_stream_publish_fetch_and_ack(nats_server: EmbeddedNatsServer) -> None:
    nc = await connect(nats_server)
    try:
        js = nc.jetstream()
        await js.add_stream(name="REQUESTS", subjects=["rq.>"])
        ack = await js.publish("rq.region.fvid.req-1", b"payload", timeout=5)
        assert (ack.stream, ack.seq) == ("REQUESTS", 1)

        subscription = await js.pull_subscribe("rq.>", durable="workers", stream="REQUESTS")
        messages = await subscription.fetch(1, timeout=5)
        assert [message.data for message in messages] == [b"payload"]
        await messages[0].ack_sync(timeout=5)

        info = await js.consumer_info("REQUESTS", "workers")
        assert info.num_ack_pending == 0
        assert info.num_pending == 0
        assert info.delivered.stream_seq == 1
    finally:
        await nc.close()


async def test_server_accepts_nvcf_sized_payloads(nats_server: EmbeddedNatsServer) -> None:
    nc = await connect(nats_server)
    try:
        assert nc.max_payload == DEFAULT_MAX_PAYLOAD
    finally:
        await nc.close()


def test_server_listens_on_loopback_with_health_endpoint(nats_server: EmbeddedNatsServer) -> None:
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    health = http_request("GET", f"{nats_server.monitor_url}/healthz?js-enabled-only=true")
    assert health.status == 200
    varz = http_request("GET", f"{nats_server.monitor_url}/varz").json()
    assert varz["host"] == "127.0.0.1"
    assert varz["server_name"] == "nvcf-test"
    assert varz["max_payload"] == DEFAULT_MAX_PAYLOAD
    assert (nats_server.store_dir / "jetstream").is_dir()


def test_stop_terminates_the_process_and_frees_the_port(
    start_nats_server: StartNatsServer,
) -> None:
    server = start_nats_server()
    pid, port = server.pid, server.port
    assert pid is not None
    assert accepts_connections(port)

    server.stop()

    assert server.pid is None
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not accepts_connections(port)


async def test_restart_keeps_ports_and_jetstream_data(start_nats_server: StartNatsServer) -> None:
    server = start_nats_server()
    url = server.url
    nc = await connect(server)
    try:
        await nc.jetstream().add_stream(name="KEPT", subjects=["kept.>"])
        await nc.jetstream().publish("kept.one", b"1", timeout=5)
    finally:
        await nc.close()

    server.stop()
    server.start()

    assert server.url == url
    nc = await connect(server)
    try:
        info = await nc.jetstream().stream_info("KEPT")
        assert info.state.messages == 1
    finally:
        await nc.close()


def test_given_ports_are_used(start_nats_server: StartNatsServer) -> None:
    port, monitor_port = free_ports(2)
    server = start_nats_server(port=port, monitor_port=monitor_port)
    assert (server.port, server.monitor_port) == (port, monitor_port)
    assert http_request("GET", f"http://127.0.0.1:{monitor_port}/healthz").status == 200


async def test_two_servers_run_side_by_side(start_nats_server: StartNatsServer) -> None:
    first = start_nats_server(server_name="first")
    second = start_nats_server(server_name="second")
    assert first.port != second.port
    assert first.store_dir != second.store_dir

    for server, name in ((first, "first"), (second, "second")):
        nc = await connect(server)
        try:
            # Same stream name on both: each server has its own JetStream.
            info = await nc.jetstream().add_stream(name="SAME", subjects=["same.>"])
            assert info.config.name == "SAME"
        finally:
            await nc.close()
        varz = http_request("GET", f"{server.monitor_url}/varz").json()
        assert varz["server_name"] == name


def test_context_manager_removes_its_own_temporary_store() -> None:
    server = EmbeddedNatsServer()
    try:
        with server:
            store_dir = server.store_dir
            assert (store_dir / "jetstream").is_dir()
            pid = server.pid
        assert pid is not None
        assert not store_dir.exists()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        server.close()


def test_server_starts_quickly(start_nats_server: StartNatsServer) -> None:
    began = time.monotonic()
    start_nats_server()
    # Typically ~30 ms; the bound only catches a start-up that fell back to polling timeouts.
    assert time.monotonic() - began < 5.0


def test_store_dir_that_is_a_file_is_rejected(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "store"
    not_a_dir.write_text("a file")
    server = EmbeddedNatsServer(store_dir=not_a_dir)
    with pytest.raises(NatsServerError, match=r"store_dir .*store.* is not a directory"):
        server.start()
    assert server.pid is None


def test_store_dir_below_a_file_is_rejected(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    server = EmbeddedNatsServer(store_dir=blocker / "store")
    with pytest.raises(NatsServerError, match="cannot create nats-server store_dir"):
        server.start()
    assert server.pid is None


def test_server_that_exits_at_start_reports_its_log(tmp_path: Path) -> None:
    server = EmbeddedNatsServer(store_dir=tmp_path / "store", extra_args=["--no-such-flag"])
    with pytest.raises(NatsServerError, match="exited with status") as raised:
        server.start()
    assert "no-such-flag" in str(raised.value)
    assert server.pid is None


def test_ports_are_unknown_before_start() -> None:
    server = EmbeddedNatsServer()
    with pytest.raises(NatsServerError, match="not started"):
        _ = server.url
    assert server.pid is None


def test_failed_start_removes_its_own_temporary_store(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args: Any, **kwargs: Any) -> str:
        path = real_mkdtemp(*args, **kwargs)
        created.append(Path(path))
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    server = EmbeddedNatsServer(extra_args=["--no-such-flag"])
    with pytest.raises(NatsServerError, match="no-such-flag"), server:
        pass
    assert len(created) == 1
    assert not created[0].exists()
