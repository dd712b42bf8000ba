"""Fixtures shared by the data-path tests: the container process and the in-test attach server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.modules import load_module

SERVERS = Path(__file__).parent / "servers"


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The data-path test container (servers/data_path_container.py), one per test module."""
    container_server = load_module(SERVERS / "data_path_container.py")
    with container_server.launch(tmp_path_factory.mktemp("logs") / "container.log") as process:
        yield process


@pytest.fixture
async def attach_server() -> AsyncIterator[Any]:
    """A platform-side attach server in the test's event loop."""
    attach_helpers = load_module(SERVERS / "data_path_attach.py")
    async with attach_helpers.AttachServer() as server:
        yield server
