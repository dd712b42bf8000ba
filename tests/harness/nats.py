"""Real nats-server fixtures (JetStream on, loopback, a fresh store per test).

A server starts in a few tens of milliseconds, so every test gets its own; no shared server.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from nvcf_platform.devstack.nats_server import EmbeddedNatsServer

__all__ = ["StartNatsServer", "nats_server", "start_nats_server"]


class StartNatsServer(Protocol):
    """The callable the `start_nats_server` fixture yields."""

    def __call__(self, **options: Any) -> EmbeddedNatsServer: ...


@pytest.fixture
def start_nats_server(tmp_path: Path) -> Iterator[StartNatsServer]:
    """Factory: `start_nats_server(**EmbeddedNatsServer options) -> EmbeddedNatsServer` (started).

    Each server gets its own store under `<tmp_path>/nats-<n>` unless `store_dir` is given. At
    teardown all are closed in reverse order and their log tails printed (shown on failure).
    """
    started: list[EmbeddedNatsServer] = []

    def start(**options: Any) -> EmbeddedNatsServer:
        options.setdefault("store_dir", tmp_path / f"nats-{len(started) + 1}")
        server = EmbeddedNatsServer(**options)
        started.append(server)
        server.start()
        return server

    yield start

    errors: list[BaseException] = []
    for server in reversed(started):
        try:
            server.close()
        except BaseException as error:
            errors.append(error)
        sys.stdout.write(f"\n----- {server!r} -----\n{server.log_tail()}\n")
    if errors:
        raise errors[0]


@pytest.fixture
def nats_server(start_nats_server: StartNatsServer) -> EmbeddedNatsServer:
    """A running nats-server with JetStream for this test; `nats_server.url` to connect."""
    return start_nats_server(server_name="nvcf-test")
