"""`nvcf-sidecar dev --restart --config` as the chaos suite runs it, watched through its output.

`DevStack` writes the config (one version, deployed as `sidecars` instances of the function
server and a sidecar each), starts dev in its own session, follows its `[dev]` lines (pids,
restarts, readiness, errors, and those of the instances the platform runs) and, at `stop()`,
reaps every process it ever saw, so that no run leaves an orphan behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from nvcf_platform.devstack.stack_spec import free_port

__all__ = ["DevError", "DevStack", "StackLayout"]

SERVER_SCRIPT: Final = Path(__file__).resolve().with_name("function_server.py")
NATS_NAME: Final = "nats-server"
PLATFORM_NAME: Final = "platform"
_READY_LINE: Final = "[dev] Ctrl-C stops everything."
_API_KEY: Final = "chaos-key"
_POLL_S: Final = 0.05

_PIDS = re.compile(r"^\[dev\] pids: (.*)$")
_RESTARTED = re.compile(r"^\[dev\] restarted (\S+) \(pid (\d+)\)")
_READY_AGAIN = re.compile(r"^\[dev\] (\S+) is ready again")
# The instances the platform runs, as dev shows them (`dev_instances.py`).
_INSTANCE = re.compile(r"^\[dev\] instance (\S+): server pid (\d+), sidecar pid (\d+) ")
_INSTANCE_RESTARTED = re.compile(
    r"^\[dev\] instance (\S+): (server|sidecar) restarted \(pid (\d+)\)"
)
_INSTANCE_READY = re.compile(r"^\[dev\] instance (\S+): ready( again)?$")
_NATS_URL = re.compile(r"^\[dev\] nats-server ready: nats://127\.0\.0\.1:(\d+)")
_NODE_URL = re.compile(r"^\[dev\] (nats-\d+) ready: (nats://127\.0\.0\.1:(\d+))")
_ANY_PID = re.compile(r"\(pid (\d+)\)")  # "started X (pid N)", "nats-server ready: ... (pid N)"


class DevError(Exception):
    """dev did not start, or stopped when it should have gone on."""


@dataclass(frozen=True)
class StackLayout:
    """The one function version under test: `sidecars` instances (a server and a sidecar of
    `concurrency` each); the
    platform's consumer ack wait (`NVCF_PLATFORM_CONSUMER_ACK_WAIT`) sets how soon JetStream
    redelivers the work of a killed sidecar."""

    sidecars: int = 3
    concurrency: int = 4
    ack_wait_s: float = 3.0
    max_restarts: int = 1000
    nats_cluster: int = 1
    """`dev --nats-cluster N`: NATS as N nodes (`nats-1` ...), streams with up to 3 replicas."""


def _stack_pythonpath() -> str:
    """The caller's PYTHONPATH for dev, absolute and without tests/ (whose nvcf_sidecar mirror
    would shadow the package)."""
    tests = Path(__file__).resolve().parents[1]
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    kept = [str(Path(e).resolve()) for e in entries if e and Path(e).resolve() != tests]
    return os.pathsep.join(kept)


def _members_of(groups: set[int], work_dir: Path) -> list[int]:
    """Live (non-zombie) processes whose process group is one of `groups` and whose command line
    or environment names `work_dir`. Every child of dev leads its own group, so this finds them
    and anything they started; the `work_dir` check keeps a reused pid of someone else's out."""
    marker = str(work_dir).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rfind(")") + 2 :].split()
            if fields[0] == "Z" or int(fields[2]) not in groups:
                continue
            if (
                marker in (entry / "cmdline").read_bytes()
                or marker in (entry / "environ").read_bytes()
            ):
                found.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def _parent_and_command(pid: int) -> tuple[int, str]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return -1, ""
    return int(stat[stat.rfind(")") + 2 :].split()[1]), command


class DevStack:
    """One `dev` run in `work_dir` (config, `dev.log`, `executions.log`, dev's `--work-dir`)."""

    def __init__(self, work_dir: Path, layout: StackLayout) -> None:
        self.work_dir = work_dir
        self.layout = layout
        self.function_id = str(uuid.uuid4())
        self.api_key = _API_KEY
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.execution_log = work_dir / "executions.log"
        # The instances, as dev names them: each runs a server and a sidecar.
        self.sidecar_names = [f"sidecar-chaos-{n}" for n in range(1, layout.sidecars + 1)]
        self.server_names = [f"server-chaos-{n}" for n in range(1, layout.sidecars + 1)]
        self.lines: list[str] = []  # dev's own [dev] lines, in order
        self._recent: deque[str] = deque(maxlen=60)  # every line, children's too
        self._lock = threading.Lock()
        self._pids: dict[str, int] = {}
        self._ready: set[str] = set()
        self._seen_pids: set[int] = set()
        self._nats_port: int | None = None
        self.nats_nodes: dict[str, str] = {}  # cluster node name -> client URL, from dev's lines
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    # -- start ----------------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Start dev and return once it printed its ready lines; raise `DevError` otherwise."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "chaos.toml"
        config.write_text(self._config_text())
        env = {
            **{name: value for name, value in os.environ.items() if name != "PYTHONPATH"},
            "PYTHONUNBUFFERED": "1",
            "NVCF_PLATFORM_CONSUMER_ACK_WAIT": f"{self.layout.ack_wait_s:g}",
        }
        if path := _stack_pythonpath():
            env["PYTHONPATH"] = path
        command = [sys.executable, "-m", "nvcf_sidecar.cli", "dev", "--restart"]
        command += ["--max-restarts", str(self.layout.max_restarts), "--config", str(config)]
        command += ["--port", str(self.port), "--api-key", self.api_key]
        command += ["--work-dir", str(self.work_dir / "dev"), "--timeout", f"{timeout:g}"]
        if self.layout.nats_cluster > 1:
            command += ["--nats-cluster", str(self.layout.nats_cluster)]
        log = (self.work_dir / "dev.log").open("wb")
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._follow, args=(self._process.stdout, log))
        self._reader.start()
        deadline = time.monotonic() + timeout + 10
        while _READY_LINE not in self.lines:
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise DevError(f"dev did not become ready; its output ends with:\n{self.tail()}")
            time.sleep(_POLL_S)

    def _config_text(self) -> str:
        # Each instance runs its own server on a port of its own (the command's {port}).
        server = [sys.executable, str(SERVER_SCRIPT), "--port", "{port}"]
        server += ["--log", str(self.execution_log)]
        return "\n".join(
            [
                "[[functions]]",
                'name = "chaos"',
                f'id = "{self.function_id}"',
                f"command = {json.dumps(server)}",
                "inference_port = 8000",
                'default_invocation_path = "/invoke"',
                f"sidecars = {self.layout.sidecars}",
                f"min_instances = {self.layout.sidecars}",
                f"max_request_concurrency = {self.layout.concurrency}",
                'sidecar_args = ["--health-check-interval", "0.5s"]',
                "",
            ]
        )

    def _follow(self, stream: IO[bytes] | None, log: IO[bytes]) -> None:
        """Copy dev's output to `dev.log` and track its `[dev]` lines (the reader thread)."""
        assert stream is not None
        with log:
            for raw in stream:
                log.write(raw)
                line = raw.decode(errors="replace").rstrip("\n")
                with self._lock:
                    self._recent.append(line)
                if line.startswith("[dev] "):
                    self._track(line)
            log.flush()

    def _track(self, line: str) -> None:
        with self._lock:
            self.lines.append(line)
            self._seen_pids.update(int(pid) for pid in _ANY_PID.findall(line))
            if match := _PIDS.match(line):
                for name, pid in re.findall(r"(\S+)=(\d+)", match.group(1)):
                    self._pids[name] = int(pid)
                    self._seen_pids.add(int(pid))
                    self._ready.add(name)
            elif match := _RESTARTED.match(line):
                name, pid = match.group(1), int(match.group(2))
                self._pids[name] = pid
                self._seen_pids.add(pid)
                self._ready.discard(name)
            elif match := _READY_AGAIN.match(line):
                self._ready.add(match.group(1))
            elif match := _INSTANCE.match(line):
                label, server, sidecar = match.group(1), int(match.group(2)), int(match.group(3))
                self._pids |= {f"server-{label}": server, f"sidecar-{label}": sidecar}
                self._seen_pids |= {server, sidecar}
            elif match := _INSTANCE_RESTARTED.match(line):
                label, child, pid = match.group(1), match.group(2), int(match.group(3))
                self._pids[f"{child}-{label}"] = pid
                self._seen_pids.add(pid)
                self._ready -= {f"server-{label}", f"sidecar-{label}"}
            elif match := _INSTANCE_READY.match(line):
                self._ready |= {f"server-{match.group(1)}", f"sidecar-{match.group(1)}"}
            elif match := _NATS_URL.match(line):
                self._nats_port = int(match.group(1))
            elif match := _NODE_URL.match(line):
                self.nats_nodes[match.group(1)] = match.group(2)

    # -- state and faults -----------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        """dev's exit status once it exited."""
        return None if self._process is None else self._process.poll()

    def pid(self, name: str) -> int | None:
        with self._lock:
            return self._pids.get(name)

    def is_ready(self, name: str) -> bool:
        """Whether the current process of `name` is known ready: from start-up, or since dev
        said it is ready again (nats-server and the platform: their port answers)."""
        with self._lock:
            if name in self._ready:
                return True
        ports = {NATS_NAME: self._nats_port, PLATFORM_NAME: self.port}
        ports |= {node: int(url.rsplit(":", 1)[1]) for node, url in self.nats_nodes.items()}
        port = ports.get(name)
        return port is not None and self._port_open(port)

    @staticmethod
    def _port_open(port: int) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> int:
        """Send `sig` to the current process of `name` (the process alone, not its group, as a
        crash or an operator would); return its pid."""
        pid = self.pid(name)
        if pid is None:
            raise DevError(f"dev printed no pid for {name}")
        with self._lock:
            self._ready.discard(name)
        os.kill(pid, sig)
        return pid

    def wait_restarted(self, name: str, old_pid: int, timeout: float) -> tuple[int | None, str]:
        """After a kill of `name` (pid `old_pid`): (the new pid, "") once dev restarted it, or
        (None, why not): dev stopped, dev reported the exit as an error, or `timeout` passed.
        A new child of dev running the same program counts too (dev may word it differently)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            seen = len(self.lines)
        while time.monotonic() < deadline:
            pid = self.pid(name)
            if pid is not None and pid != old_pid:
                return pid, ""
            with self._lock:
                news = self.lines[seen:]
            for line in news:
                if line.startswith("[dev] error:") and name in line:
                    return None, line.removeprefix("[dev] ")
            code = self.returncode
            if code is not None:
                return None, f"dev exited with status {code} after {name} was killed"
            found = self._new_child(name, old_pid)
            if found is not None:
                with self._lock:
                    self._pids[name] = found
                    self._seen_pids.add(found)
                return found, ""
            time.sleep(_POLL_S)
        return None, f"dev did not restart {name} within {timeout:g} s"

    def _new_child(self, name: str, old_pid: int) -> int | None:
        """A child of dev, other than `old_pid`, that runs nats-server or the platform."""
        if self._process is None or name not in (NATS_NAME, PLATFORM_NAME):
            return None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == old_pid:
                continue
            parent, command = _parent_and_command(int(entry.name))
            if parent != self._process.pid:
                continue
            words = command.split()
            if name == NATS_NAME and words and Path(words[0]).name.startswith("nats-server"):
                return int(entry.name)
            if name == PLATFORM_NAME and "platform" in words and "--ready-file" in words:
                return int(entry.name)
        return None

    def tail(self, lines: int = 40) -> str:
        """The last `lines` lines of dev's output (its children's included)."""
        with self._lock:
            return "\n".join(list(self._recent)[-lines:])

    # -- stop -----------------------------------------------------------------------------------

    def stop(self, timeout: float = 60.0) -> list[str]:
        """SIGTERM dev (it stops the stack), SIGKILL what is left after `timeout`; then SIGKILL
        the process group of any process seen during the run that still lives. Returns those
        leftovers, described (an empty list: no orphans)."""
        process = self._process
        if process is None:
            return []
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        if self._reader is not None:
            self._reader.join(10)
        with self._lock:
            groups = {*self._seen_pids, process.pid}
        orphans = []
        for pid in _members_of(groups, self.work_dir):
            _, command = _parent_and_command(pid)
            orphans.append(f"pid {pid} ({command[:100]}) outlived dev")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while _members_of(groups, self.work_dir):
            if time.monotonic() > deadline:
                orphans.append("some leftovers survived SIGKILL for 10 s")
                break
            time.sleep(_POLL_S)
        return orphans
