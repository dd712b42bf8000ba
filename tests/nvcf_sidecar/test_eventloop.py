"""`NVCF_EVENT_LOOP`: which loop the sidecar and the platform run on (uvloop when installed)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from nvcf_sidecar import eventloop

uvloop = pytest.importorskip("uvloop")  # the dev extras install it (the `fast` extra)


async def _running_loop_name() -> str:
    return eventloop.loop_name(asyncio.get_running_loop())


@pytest.mark.parametrize("value", [None, "", "auto", " AUTO ", "uvloop", "UVLoop"])
def test_uvloop_is_chosen_when_installed_unless_asyncio_is_asked_for(value: str | None) -> None:
    environ = {} if value is None else {"NVCF_EVENT_LOOP": value}
    factory = eventloop.loop_factory(environ)
    assert factory is uvloop.new_event_loop
    assert eventloop.run(_running_loop_name(), factory=factory) == "uvloop"


@pytest.mark.parametrize("value", ["asyncio", " Asyncio"])
def test_asyncio_keeps_asyncios_own_loop(value: str) -> None:
    factory = eventloop.loop_factory({"NVCF_EVENT_LOOP": value})
    assert factory is None
    assert eventloop.run(_running_loop_name(), factory=factory) == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    assert eventloop.loop_factory({}) is None
    assert eventloop.loop_factory({"NVCF_EVENT_LOOP": "auto"}) is None
    with pytest.raises(
        eventloop.EventLoopError, match=r"NVCF_EVENT_LOOP=uvloop, but uvloop is not installed"
    ):
        eventloop.loop_factory({"NVCF_EVENT_LOOP": "uvloop"})


def test_an_unknown_loop_is_an_error_naming_the_variable_and_the_choices() -> None:
    with pytest.raises(
        eventloop.EventLoopError,
        match=r"^NVCF_EVENT_LOOP='trio': expected one of auto, uvloop, asyncio$",
    ):
        eventloop.loop_factory({"NVCF_EVENT_LOOP": "trio"})


def test_run_returns_the_result_and_closes_the_loop() -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> int:
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        return 7

    assert eventloop.run(main(), factory=uvloop.new_event_loop) == 7
    assert loops[0].is_closed()


async def test_async_tests_run_on_the_loop_the_sidecar_would_choose() -> None:
    expected = "asyncio" if eventloop.loop_factory() is None else "uvloop"
    assert eventloop.loop_name(asyncio.get_running_loop()) == expected
