"""A compiled load generator for `bench sidecar`: `wrk` (when it is on PATH) POSTs the same
request to a URL for a fixed time, so the client's own cost does not hide the stack's.

`run_wrk` runs one phase and returns its figures from a Lua `done` hook: answers, non-2xx/3xx
answers and socket errors, throughput and latency percentiles (wrk's own histogram, µs).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["WrkError", "WrkResult", "run_wrk", "wrk_path"]

_MARK: Final = "NVCF_WRK"
_LINE: Final = re.compile(rf"^{_MARK} (\{{.*\}})$", re.MULTILINE)
_SCRIPT: Final = """
wrk.method = "POST"
wrk.body = {body}
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{mark} {{"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


class WrkError(RuntimeError):
    """wrk did not run or printed no figures."""


@dataclass(frozen=True)
class WrkResult:
    """One wrk phase: counts, requests per second of correct (2xx/3xx) answers, latencies."""

    requests: int
    status_errors: int
    socket_errors: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def ok_per_s(self) -> float:
        answered = self.requests - self.status_errors
        return answered / self.duration_s if self.duration_s > 0 else 0.0


def wrk_path() -> str | None:
    """`wrk` on PATH, or None."""
    return shutil.which("wrk")


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal for ASCII


def run_wrk(
    url: str,
    *,
    body: bytes,
    headers: Mapping[str, str],
    connections: int,
    seconds: float,
    threads: int = 2,
) -> WrkResult:
    """POST `body` with `headers` to `url` over `connections` keep-alive connections for
    `seconds`; WrkError if wrk is missing, fails, or prints no figures."""
    binary = wrk_path()
    if binary is None:
        raise WrkError("wrk is not on PATH")
    lines = [f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()]
    script = _SCRIPT.format(
        body=_lua_string(body.decode("ascii")), headers="\n".join(lines), mark=_MARK
    )
    with tempfile.TemporaryDirectory(prefix="nvcf-bench-wrk-") as tmp:
        path = Path(tmp) / "post.lua"
        path.write_text(script)
        command = [
            binary,
            f"-t{max(1, min(threads, connections))}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "-s",
            str(path),
            url,
        ]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=seconds + 60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise WrkError(f"wrk did not run: {error}") from None
    found = _LINE.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise WrkError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout)[-500:]}")
    figures = json.loads(found.group(1))
    return WrkResult(
        requests=int(figures["requests"]),
        status_errors=int(figures["status_errors"]),
        socket_errors=int(figures["socket_errors"]),
        duration_s=figures["duration_us"] / 1e6,
        p50_ms=figures["p50_us"] / 1000,
        p90_ms=figures["p90_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        max_ms=figures["max_us"] / 1000,
    )
