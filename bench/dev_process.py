"""`nvcf-sidecar dev` run as a user runs it, for a benchmark: started, its pids read, stopped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = ["DevFailed", "DevProcess", "run_dev"]

_DEV_READY: Final = "[dev] Ctrl-C stops everything."
_DEV_START_S: Final = 120.0
_INSTANCE: Final = re.compile(r"^\[dev\] instance (\S+): server pid (\d+), sidecar pid (\d+) ")


class DevFailed(RuntimeError):
    """dev did not become ready."""


@dataclass
class DevProcess:
    """The dev process: its `[dev]` lines, the pids it printed, how many lines it wrote (read
    and dropped by a thread, as a terminal would take them)."""

    process: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    output_lines: int = 0

    def follow(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.output_lines += 1
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("[dev] "):
                self.lines.append(line)
                if line.startswith("[dev] pids: "):
                    for pair in line.removeprefix("[dev] pids: ").split():
                        name, _, pid = pair.partition("=")
                        if pid.isdigit():
                            self.pids[name] = int(pid)
                elif match := _INSTANCE.match(line):  # the platform's instances
                    label = match.group(1)
                    self.pids[f"server-{label}"] = int(match.group(2))
                    self.pids[f"sidecar-{label}"] = int(match.group(3))


@contextmanager
def run_dev(config: Path, work: Path, port: int, api_key: str) -> Iterator[DevProcess]:
    """`nvcf-sidecar dev --config config` on `port`, inside the block once it printed that it is
    ready (`DevFailed` if it exits or takes over 120 s); stopped with Ctrl-C (SIGINT) after,
    its process group killed if that takes over 30 s."""
    command = [sys.executable, "-m", "nvcf_sidecar.cli", "dev", "--config", str(config)]
    command += ["--port", str(port), "--api-key", api_key, "--work-dir", str(work)]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    dev = DevProcess(process)
    reader = threading.Thread(target=dev.follow, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + _DEV_START_S
        # Ready, and its instance's processes known (dev shows them as the platform starts them).
        while _DEV_READY not in dev.lines or not any(n.startswith("sidecar-") for n in dev.pids):
            if process.poll() is not None or time.monotonic() > deadline:
                raise DevFailed("dev did not start: " + " | ".join(dev.lines[-5:]))
            time.sleep(0.05)
        yield dev
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # Ctrl-C: dev stops its children in order
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        reader.join(5)
