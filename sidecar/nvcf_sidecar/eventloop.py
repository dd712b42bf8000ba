"""Which asyncio event loop the sidecar and the platform run on: uvloop when installed, or asyncio's.

uvloop (the `fast` extra: `pip install 'nvcf-worker[sidecar,fast]'`) moves the loop's own work —
handles, socket reads and writes, timers — into compiled code, which is most of what a request
costs a process that only relays it. `NVCF_EVENT_LOOP` chooses:

- `auto` (the default): uvloop when it can be imported, else asyncio's loop;
- `uvloop`: uvloop, and an error when it is not installed;
- `asyncio`: asyncio's own loop, even when uvloop is installed.

Both loops run the same code and the same tests (`make test-asyncio-loop` runs the process tests
on asyncio's loop while the suite itself runs on uvloop).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final, TypeVar

__all__ = [
    "EVENT_LOOP_VARIABLE",
    "LOOP_NAMES",
    "EventLoopError",
    "LoopFactory",
    "loop_factory",
    "loop_name",
    "run",
]

EVENT_LOOP_VARIABLE: Final = "NVCF_EVENT_LOOP"
LOOP_NAMES: Final = ("auto", "uvloop", "asyncio")

_T = TypeVar("_T")


class EventLoopError(ValueError):
    """`NVCF_EVENT_LOOP` names no loop, or uvloop, which is not installed."""


LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(environ: Mapping[str, str] | None = None) -> LoopFactory | None:
    """The factory of the loop `NVCF_EVENT_LOOP` chooses; None means asyncio's default loop.

    Raises `EventLoopError` for an unknown name, or for `uvloop` when uvloop is not installed.
    """
    env = os.environ if environ is None else environ
    wanted = env.get(EVENT_LOOP_VARIABLE, "").strip().lower() or "auto"
    if wanted not in LOOP_NAMES:
        raise EventLoopError(
            f"{EVENT_LOOP_VARIABLE}={env[EVENT_LOOP_VARIABLE]!r}: "
            f"expected one of {', '.join(LOOP_NAMES)}"
        )
    if wanted == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if wanted == "uvloop":
            raise EventLoopError(
                f"{EVENT_LOOP_VARIABLE}=uvloop, but uvloop is not installed "
                "(pip install 'nvcf-worker[fast]')"
            ) from None
        return None
    factory: LoopFactory = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """`uvloop` or `asyncio`: what a start-up log line says the process runs on."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, _T], *, factory: LoopFactory | None = None) -> _T:
    """`asyncio.run(main)` on the loop of `factory` (asyncio's when None)."""
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
