"""End-to-end fixtures: the whole local stack (`LocalStack`) around the e2e inference container.

`e2e_function(...)` describes one function served by `servers/e2e_container.py`; `start_stack(...)`
runs a stack for one test (stopped at teardown, log tails printed); `shared_stack` is one stack
per module for the tests that kill nothing. Helpers for async callers come as fixtures too
(`scrape`, `queue_state`), since test modules cannot import this file.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from harness.http import http_request
from harness.ports import LOOPBACK, free_port
from nvcf_platform.devstack.stack import FunctionSpec, LocalStack
from nvcf_sidecar.protocol import consumer_name, request_stream_name

SERVERS = Path(__file__).parent / "servers"
CONTAINER = SERVERS / "e2e_container.py"
REGION = "local"
"""The platform's default region, which names the work-queue streams."""
INVOCATION_PATH = "/invoke"


@dataclass(frozen=True)
class E2EFunction:
    """A function served by the e2e container, and the handles a test needs on it."""

    spec: FunctionSpec
    health_file: Path

    @property
    def function_id(self) -> str:
        return self.spec.function_id

    @property
    def version_id(self) -> str:
        return self.spec.version_id

    @property
    def container_url(self) -> str:
        return f"http://{LOOPBACK}:{self.spec.inference_port}"

    def stats(self) -> dict[str, int]:
        """`{requests, in_flight, max_in_flight, abandoned}` of the container's invocation route."""
        response = http_request("GET", f"{self.container_url}/stats", timeout=5)
        assert response.status == 200, response.body
        stats: dict[str, int] = response.json()
        return stats

    def set_health(self, status: int) -> None:
        """What the container's `/v2/health/ready` answers from now on."""
        self.health_file.write_text(str(status))


def make_function(
    directory: Path, name: str = "echo", *, health: int = 200, **spec: Any
) -> E2EFunction:
    port = free_port()
    health_file = directory / f"{name}-{port}.health"
    health_file.write_text(str(health))
    function = FunctionSpec(
        command=[sys.executable, str(CONTAINER), str(port), str(health_file)],
        inference_port=port,
        name=name,
        default_invocation_path=INVOCATION_PATH,
        **spec,
    )
    return E2EFunction(function, health_file)


GRPC_SERVER = Path(__file__).resolve().parents[2] / "examples" / "byoc" / "grpc_echo" / "server.py"
"""The grpc_echo example: unary, server-streaming (3 answers) and bidi echo, gRPC health."""


def grpc_echo_function(max_request_concurrency: int = 2) -> FunctionSpec:
    """The grpc_echo example as a gRPC function (`/grpc`: its sidecar checks gRPC health)."""
    port = free_port()
    return FunctionSpec(
        command=[sys.executable, str(GRPC_SERVER), "--port", str(port)],
        inference_port=port,
        name="grpc-echo",
        default_invocation_path="/grpc",
        max_request_concurrency=max_request_concurrency,
    )


def _print_logs(stack: LocalStack) -> None:
    """Log tails on stdout, which pytest shows for a failed test."""
    for process in stack.processes():
        sys.stdout.write(
            f"\n----- {process.name} (exit {process.returncode}) -----\n{process.log_tail(30)}\n"
        )


@pytest.fixture
def e2e_function(tmp_path: Path) -> Callable[..., E2EFunction]:
    """Factory: `e2e_function(name="echo", health=200, **FunctionSpec fields) -> E2EFunction`."""

    def make(name: str = "echo", *, health: int = 200, **spec: Any) -> E2EFunction:
        return make_function(tmp_path, name, health=health, **spec)

    return make


@pytest.fixture
def start_stack(tmp_path: Path) -> Iterator[Callable[..., LocalStack]]:
    """Factory: `start_stack(functions, platform_args=(), timeout=60) -> LocalStack`, started.

    Every stack is stopped at teardown (also when the test failed), then its log tails printed.
    """
    stacks: list[LocalStack] = []

    def start(
        functions: Sequence[E2EFunction | FunctionSpec],
        *,
        platform_args: Sequence[str] = (),
        timeout: float = 60.0,
    ) -> LocalStack:
        specs = [f.spec if isinstance(f, E2EFunction) else f for f in functions]
        stack = LocalStack(
            specs, work_dir=tmp_path / f"stack-{len(stacks) + 1}", platform_args=platform_args
        )
        stacks.append(stack)
        stack.start(timeout=timeout)
        return stack

    yield start
    for stack in reversed(stacks):
        stack.stop()
        _print_logs(stack)


@dataclass(frozen=True)
class SharedStack:
    """The module's stack: `echo` (two sidecars, 8 requests each) and `limited` (one sidecar,
    MAX_REQUEST_CONCURRENCY=2)."""

    stack: LocalStack
    echo: E2EFunction
    limited: E2EFunction


@pytest.fixture(scope="module")
def shared_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedStack]:
    """One stack for the tests of a module that do not kill anything."""
    directory = tmp_path_factory.mktemp("shared-stack")
    echo = make_function(directory, "echo", sidecars=2, max_request_concurrency=8)
    limited = make_function(directory, "limited", max_request_concurrency=2)
    stack = LocalStack([echo.spec, limited.spec], work_dir=directory / "stack")
    stack.start(timeout=60)
    try:
        yield SharedStack(stack, echo, limited)
    finally:
        stack.stop()
        _print_logs(stack)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as `{'name{labels}': value}` (comments skipped)."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


@pytest.fixture
def scrape() -> Callable[[str], dict[str, float]]:
    """`scrape(metrics_url)`: a sidecar's metrics as `{'name{labels}': value}`."""

    def read(url: str) -> dict[str, float]:
        response = http_request("GET", url, timeout=5)
        assert response.status == 200, response.body
        return parse_metrics(response.body.decode())

    return read


@pytest.fixture
def queue_state() -> Callable[..., Any]:
    """`await queue_state(stack, version_id, expect=None) -> (messages in the stream, deliveries
    to workers (redeliveries included), acks pending)` of the version's work queue, from NATS.

    With `expect`, polls until the state equals it (sidecars ack just after the caller has its
    answer) and fails with the last state after 10 s.
    """

    async def read_once(stack: LocalStack, version_id: str) -> tuple[int, int, int]:
        client = await nats.connect(stack.nats_url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            js = client.jetstream()
            stream = request_stream_name(REGION, version_id)
            info = await js.stream_info(stream)
            consumer = await js.consumer_info(stream, consumer_name(REGION, version_id))
        finally:
            await client.close()
        assert consumer.delivered is not None
        return info.state.messages, consumer.delivered.consumer_seq, consumer.num_ack_pending or 0

    async def read(
        stack: LocalStack, version_id: str, expect: tuple[int, int, int] | None = None
    ) -> tuple[int, int, int]:
        deadline = time.monotonic() + 10.0
        while True:
            state = await read_once(stack, version_id)
            if expect is None or state == expect:
                return state
            assert time.monotonic() < deadline, f"queue state {state}, expected {expect}"
            await asyncio.sleep(0.05)

    return read


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A caller's client session (no proxies from the environment, 60 s per call at most)."""
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        yield session
