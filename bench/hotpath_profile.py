"""Where the stack's CPU goes, by the code it runs: `perf` samples of the platform, the sidecar
and the echo server under the echo load, grouped into the CPython interpreter (its bytecode
loop, its garbage collector, the rest: allocation, attribute lookups, calls), the kernel,
libc, the event loop's compiled code (uvloop) and the other compiled extensions (protobuf,
aiohttp's parser, multidict, orjson ...). With it, each process's user and system time from
/proc over the same load.

It answers what the floors cannot: how much of a process's CPU is Python being interpreted,
which compiled code with the same system calls would not spend. It needs `perf` (`apt-get
install linux-perf`) allowed to sample this user's processes; without it the phase says why and
measures nothing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

__all__ = [
    "GROUPS",
    "ROLES",
    "ProfileError",
    "group_shares",
    "interpreter_share",
    "perf_path",
    "profile_lines",
    "profile_roles",
]

ROLES: Final = ("platform", "sidecar", "server")
"""The stack's Python processes, profiled (nats-server is Go)."""
GROUPS: Final = (
    "interpreter_bytecode",
    "interpreter_gc",
    "interpreter_other",
    "kernel",
    "libc",
    "event_loop",
    "extensions",
    "other",
)
_FREQUENCY: Final = 499
_LINE: Final = re.compile(r"\s*([0-9.]+)%\s*\|([^|]*)\|\[(.)\]\s*(.*)")
_GC_SYMBOLS: Final = re.compile(
    r"gc_|visit_|(subtract|update)_refs|move_(unreachable|legacy_finalizers)|deduce_unreachable"
)


class ProfileError(RuntimeError):
    """perf could not record or report (the message says which and why)."""


def perf_path() -> str | None:
    """perf on PATH, or None."""
    return shutil.which("perf")


def _group(dso: str, kind: str, symbol: str) -> str:
    name = Path(dso.strip()).name
    if kind == "k" or name.startswith("[kernel"):
        return "kernel"
    if name.startswith(("libpython", "python")):
        if symbol == "_PyEval_EvalFrameDefault":
            return "interpreter_bytecode"
        if _GC_SYMBOLS.match(symbol):
            return "interpreter_gc"
        return "interpreter_other"
    if name.startswith(("libc.so", "libc-")):
        return "libc"
    if name.startswith("loop.cpython"):  # uvloop's extension module
        return "event_loop"
    if ".so" in name:
        return "extensions"
    return "other"


def group_shares(report: str) -> dict[str, float]:
    """Per cent of a process's samples in each of `GROUPS`, from `perf report --no-children
    --sort dso,sym -t '|'` output (lines `12.34% |dso |[.] symbol`; others ignored)."""
    shares = dict.fromkeys(GROUPS, 0.0)
    for line in report.splitlines():
        match = _LINE.fullmatch(line.rstrip())
        if match is None:
            continue
        percent, dso, kind, symbol = match.groups()
        shares[_group(dso, kind, symbol.strip())] += float(percent)
    return {group: round(value, 2) for group, value in shares.items()}


def profile_roles(
    pids: Mapping[str, Sequence[int]],
    seconds: float,
    load: Callable[[float], int],
    work: Path,
    cpu_split: Callable[[int], tuple[float, float]],
) -> dict[str, Any]:
    """Sample `ROLES`' first pids for `seconds` while `load(seconds)` runs (it returns the
    requests answered); each role's shares by group and its user and system µs per request
    (`cpu_split(pid)`: the process's user and system CPU seconds so far).
    Raises `ProfileError` when perf is missing or fails."""
    perf = perf_path()
    if perf is None:
        raise ProfileError("perf is not on PATH (apt-get install linux-perf)")
    roles = {role: pids[role][0] for role in ROLES if pids.get(role)}
    before = {role: cpu_split(pid) for role, pid in roles.items()}
    recorders = {
        role: subprocess.Popen(
            [
                *(perf, "record", "-q", "-e", "cpu-clock", "-F", str(_FREQUENCY), "-p", str(pid)),
                *("-o", str(work / f"{role}.perf"), "--", "sleep", f"{seconds:.1f}"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for role, pid in roles.items()
    }
    try:
        answered = load(seconds + 1.0)  # covers the recording, which starts first
        after = {role: cpu_split(pid) for role, pid in roles.items()}
    finally:
        errors = {}
        for role, recorder in recorders.items():
            try:
                _, stderr = recorder.communicate(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                recorder.kill()
                _, stderr = recorder.communicate()
            if recorder.returncode != 0:
                errors[role] = stderr.decode(errors="replace").strip()[-300:]
    if errors:
        role, detail = next(iter(errors.items()))
        raise ProfileError(f"perf record failed on the {role}: {detail or 'no message'}")
    figures: dict[str, Any] = {"seconds": seconds, "frequency_hz": _FREQUENCY}
    for role in roles:
        report = subprocess.run(
            [
                *(perf, "report", "-i", str(work / f"{role}.perf"), "--no-children"),
                *("--stdio", "--sort", "dso,sym", "-g", "none", "-t", "|"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if report.returncode != 0:
            raise ProfileError(f"perf report failed on the {role}: {report.stderr.strip()[-300:]}")
        user, system = (
            (end - start) * 1e6 / max(answered, 1)
            for start, end in zip(before[role], after[role], strict=True)
        )
        shares = group_shares(report.stdout)
        figures[role] = {
            "shares": shares,
            "user_us": round(user, 1),
            "system_us": round(system, 1),
            # The interpreter's share of the process's CPU, in µs per request.
            "interpreter_us": round(interpreter_share(shares) * (user + system) / 100, 1),
        }
    return figures


def interpreter_share(shares: Mapping[str, float]) -> float:
    """Per cent of the samples in the CPython interpreter (bytecode, collector and the rest)."""
    return shares["interpreter_bytecode"] + shares["interpreter_gc"] + shares["interpreter_other"]


def profile_lines(profile: Mapping[str, Any] | None) -> list[str]:
    """The report's lines for the profile phase (or why it was skipped)."""
    if profile is None:
        return []
    if "skipped" in profile:
        return [f"profile (perf): skipped, {profile['skipped']}"]
    lines = ["profile (perf, echo c32), share of each process's CPU samples:"]
    for role in ROLES:
        figures = profile.get(role)
        if figures is None:
            continue
        s = figures["shares"]
        lines.append(
            f"  {role:<9} interpreter {interpreter_share(s):.0f}% = "
            f"{figures['interpreter_us']:,.0f} µs (bytecode {s['interpreter_bytecode']:.0f}"
            f", gc {s['interpreter_gc']:.1f}, rest {s['interpreter_other']:.0f}), kernel "
            f"{s['kernel']:.0f}%, libc {s['libc']:.0f}%, uvloop {s['event_loop']:.0f}%, other "
            f"extensions {s['extensions']:.0f}%; user {figures['user_us']:,.0f} + system "
            f"{figures['system_us']:,.0f} µs per request"
        )
    return lines
