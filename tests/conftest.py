"""Fixtures shared by every test; they are defined in the `harness` package.

Processes: `start_process`. NATS: `nats_server`, `start_nats_server`. Triton: `tritonserver`,
`pytriton_server`, `triton_backend_directory`.

Event loop: async tests run on the loop `NVCF_EVENT_LOOP` chooses, as the sidecar and the
platform they start do (`nvcf_sidecar.eventloop`): uvloop when installed, unless
`NVCF_EVENT_LOOP=asyncio` (`make test-asyncio-loop`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest

from harness.nats import nats_server, start_nats_server
from harness.processes import start_process
from harness.triton import pytriton_server, triton_backend_directory, tritonserver
from nvcf_sidecar import eventloop

__all__ = [
    "nats_server",
    "pytest_asyncio_loop_factories",
    "pytriton_server",
    "start_nats_server",
    "start_process",
    "triton_backend_directory",
    "tritonserver",
]


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    factory = eventloop.loop_factory()
    if factory is None:
        return {"asyncio": asyncio.new_event_loop}
    return {"uvloop": factory}
