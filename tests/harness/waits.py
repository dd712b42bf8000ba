"""Bounded waits for tests: poll a blocking condition until it holds, failing with what was awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_for(condition: Callable[[], bool], what: str, within: float = 15.0) -> None:
    """Poll `condition` (in a thread: it may do blocking HTTP) every 50 ms; fail naming `what`
    after `within` seconds."""
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
