"""The dev stack once it is up: children that exit are reported, and restarted within a budget.

With `--restart`, nats-server, the platform, inference servers and sidecars are all restarted.

`StackSupervisor.check()` is one round of watching, called from `nvcf-sidecar dev`'s main loop;
`RestartPolicy` is the budget of `--restart` (N restarts per child within a sliding window).
"""

from __future__ import annotations

import shlex
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from nvcf_platform.devstack.stack import LocalStack, StackError, StackProcess

_PLATFORM = "platform"

__all__ = ["RestartBudget", "RestartPolicy", "StackSupervisor", "describe_child", "describe_exit"]


@dataclass(frozen=True)
class RestartPolicy:
    """Restart an exited nats-server, platform, server or sidecar, at most `max_restarts` times
    within `window` s (each counted on its own)."""

    max_restarts: int = 5
    window: float = 60.0


class RestartBudget:
    """The restarts each child (by name) has used within the policy's sliding window."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._times: dict[str, deque[float]] = {}

    def used(self, name: str, now: float) -> int:
        """Restarts of `name` within the window that ends at `now`."""
        times = self._times.setdefault(name, deque())
        while times and now - times[0] >= self.policy.window:
            times.popleft()
        return len(times)

    def take(self, name: str, now: float) -> int | None:
        """Count a restart of `name` at `now`: how many the window now holds (this one
        included), or None when `max_restarts` are already used (nothing is counted)."""
        if self.used(name, now) >= self.policy.max_restarts:
            return None
        self._times[name].append(now)
        return len(self._times[name])


def describe_exit(code: int) -> str:
    """`exit code 3`, or `signal 9 (SIGKILL)` for a process killed by a signal."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"signal {-code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"signal {-code}"


class StackSupervisor:
    """Watches a started `LocalStack`: a child that exits (nats-server, the platform, an inference
    server or a sidecar; a clean exit too) stops the stack, or with a `RestartPolicy` is restarted
    in its place (nats-server on the same port and store; the platform on the same ports; a server
    or sidecar with the same name, log and health URL) until it exits too often. `say` hears every
    event as a sentence.
    """

    def __init__(
        self,
        stack: LocalStack,
        *,
        restart: RestartPolicy | None,
        say: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stack = stack
        self._say = say
        self._clock = clock
        self._budget = None if restart is None else RestartBudget(restart)
        self._recovering: list[StackProcess] = []

    def check(self) -> int | None:
        """One round: None while the stack should go on, else the exit status to stop with (1)."""
        stack = self._stack
        for spec in stack.functions:  # a server's helpers, found while it still runs
            stack.container(spec.version_id).note_descendants()
        for name, nats in stack.nats_nodes.items():
            if not nats.running:
                return self._nats_exited(name)
        if stack.platform.returncode is not None:
            if self._budget is None:
                return self._fatal(stack.platform, "; stopping the stack")
            return self._platform_exited(self._budget)
        for process in stack.processes():
            code = process.returncode
            if code is None or process is stack.platform:
                continue
            if self._budget is None:
                return self._fatal(process, "; stopping the stack")
            status = self._restart(process, self._budget)
            if status is not None:
                return status
        self._report_recovered()
        return None

    def _nats_exited(self, name: str) -> int | None:
        """One nats-server (alone, or a cluster node) exited: restart it on its port and store;
        a cluster node rejoins and catches up."""
        nats = self._stack.nats_nodes[name]
        how = describe_exit(nats.returncode) if nats.returncode is not None else "an unknown status"
        if self._budget is None:
            self._say(f"error: {name} exited with {how}; its log ends with:\n{nats.log_tail()}")
            return 1
        policy = self._budget.policy
        count = self._budget.take(name, self._clock())
        if count is None:
            self._say(
                f"error: {name} exited with {how}; it was restarted {policy.max_restarts} "
                f"times within {policy.window:g} s, so the stack stops; its log ends with:\n"
                f"{nats.log_tail()}"
            )
            return 1
        self._say(
            f"{name} exited with {how}; restarting it on the same port and store "
            f"({count} of {policy.max_restarts} within {policy.window:g} s)"
        )
        try:
            self._stack.restart_nats(name)
        except StackError as error:
            self._say(f"error: cannot restart {name}: {error}")
            return 1
        self._say(f"restarted {name} (pid {nats.pid}) at {nats.url}")
        self._say(f"{name} is ready again")
        return None

    def _platform_exited(self, budget: RestartBudget) -> int | None:
        """Start the platform again on its ports; callers it held were cut off, new ones are
        refused while it starts (about a second or two)."""
        platform, policy = self._stack.platform, budget.policy
        count = budget.take(_PLATFORM, self._clock())
        if count is None:
            return self._fatal(
                platform,
                f"; it was restarted {policy.max_restarts} times within {policy.window:g} s, "
                "so the stack stops",
            )
        self._say(
            f"platform exited with {describe_exit(platform.returncode or 0)}; restarting it on "
            f"the same ports ({count} of {policy.max_restarts} within {policy.window:g} s)"
        )
        try:
            fresh = self._stack.restart_platform()
        except StackError as error:
            self._say(f"error: cannot restart the platform: {error}")
            return 1
        self._say(
            f"restarted platform (pid {fresh.pid}) at {self._stack.base_url} "
            f"(nvcf.Worker gRPC at {self._stack.grpc_url})"
        )
        self._say("platform is ready again")
        return None

    def _restart(self, process: StackProcess, budget: RestartBudget) -> int | None:
        policy = budget.policy
        count = budget.take(process.name, self._clock())
        if count is None:
            return self._fatal(
                process,
                f"; it was restarted {policy.max_restarts} times within {policy.window:g} s, "
                "so the stack stops",
            )
        self._say(
            f"{self._describe(process)} exited with {describe_exit(process.returncode or 0)}; "
            f"restarting it ({count} of {policy.max_restarts} within {policy.window:g} s)"
        )
        try:
            fresh = self._stack.restart(process)
        except StackError as error:
            self._say(f"error: cannot restart {process.name}: {error}")
            return 1
        self._recovering = [p for p in self._recovering if p.name != fresh.name] + [fresh]
        self._say(f"restarted {fresh.name} (pid {fresh.pid}); waiting for {fresh.health_url}")
        return None

    def _report_recovered(self) -> None:
        still = []
        for process in self._recovering:
            if not process.running:
                continue  # it exited again: the next round restarts it
            if process.is_ready():
                self._say(f"{process.name} is ready again")
            else:
                still.append(process)
        self._recovering = still

    def _fatal(self, process: StackProcess, consequence: str) -> int:
        code = process.returncode
        assert code is not None
        text = f"error: {self._describe(process)} exited with {describe_exit(code)}{consequence}"
        tail = process.log_tail()
        self._say(f"{text}\nits output ended with:\n{tail}" if tail else text)
        return 1

    def _describe(self, process: StackProcess) -> str:
        return describe_child(self._stack, process.name)


def describe_child(stack: LocalStack, name: str) -> str:
    """`name`, with the function and command when it is an inference server of `stack`."""
    for spec in stack.functions:
        try:
            container = stack.container(spec.version_id)
        except StackError:
            continue
        if container.name == name:
            return f"{name} (the server of function {spec.name}: {shlex.join(spec.command)})"
    return name
