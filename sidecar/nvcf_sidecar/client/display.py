"""What `nvcf-sidecar invoke` shows on stderr: status lines, and a progress bar while it polls.

stdout carries only the function's answer, so it can be piped; everything else goes through
`InvokeDisplay`, which prints plain lines when stderr is not a terminal.
"""

from __future__ import annotations

from types import TracebackType
from typing import Final

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

__all__ = ["PREFIX", "InvokeDisplay", "PollProgress", "summarize"]

PREFIX: Final = "[invoke] "
_PARTIAL_CHARS: Final = 120
_BAR_PARTIAL_CHARS: Final = 60


def summarize(body: bytes, limit: int = _PARTIAL_CHARS) -> str:
    """A body in one short line: compact JSON when it parses, else its text; `…` when cut."""
    try:
        text = orjson.dumps(orjson.loads(body)).decode()
    except orjson.JSONDecodeError:
        text = " ".join(body.decode("utf-8", "replace").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class InvokeDisplay:
    """Status lines on a rich console (stderr by default), never interpreted as markup."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(
            stderr=True, markup=False, highlight=False, emoji=False, soft_wrap=True
        )

    def say(self, text: str) -> None:
        """One status line, `[invoke] text`."""
        self.console.print(f"{PREFIX}{text}", markup=False, highlight=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        self.say(f"warning: {text}")

    def error(self, text: str) -> None:
        self.say(f"error: {text}")

    def progress(self, request_id: str) -> PollProgress:
        """The display of one request's status polls (a context manager)."""
        return PollProgress(self, request_id)


class PollProgress:
    """A bar with the percent complete and the latest partial response, while a request is polled.

    Each change of percent or partial response is also printed as a line, so a log of stderr (or
    a terminal's scroll-back) keeps the history; the bar itself is drawn only on a terminal.
    """

    def __init__(self, display: InvokeDisplay, request_id: str) -> None:
        self._display = display
        self._request_id = request_id
        console = display.console
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[partial]}", markup=False),
            console=console,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
            disable=not console.is_terminal,
        )
        self._task: TaskID | None = None
        self._last: tuple[int | None, str] = (None, "")

    def __enter__(self) -> PollProgress:
        self._progress.start()
        self._task = self._progress.add_task(
            f"request {self._request_id[:8]}", total=None, partial="waiting"
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove the bar (idempotent); later lines print below where it was."""
        self._progress.stop()

    def update(self, percent: int | None, partial: bytes) -> None:
        """Show one 202: its `NVCF-PERCENT-COMPLETE` (None when absent) and partial body."""
        summary = summarize(partial) if partial else ""
        if (percent, summary) == self._last or (percent is None and not summary):
            return
        self._last = (percent, summary)
        shown = "in progress" + (f" {percent}%" if percent is not None else "")
        self._display.say(shown + (f": {summary}" if summary else ""))
        if self._task is not None:
            bar_text = summarize(partial, _BAR_PARTIAL_CHARS) if partial else ""
            if percent is None:
                self._progress.update(self._task, partial=bar_text)
            else:
                self._progress.update(self._task, total=100, completed=percent, partial=bar_text)
