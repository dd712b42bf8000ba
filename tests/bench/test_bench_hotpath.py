"""`bench hotpath`: its aims judged on figures (pure logic), the run without wrk, and a quick
run end to end where wrk is installed.

Smoke tests: they prove the suite runs and reports, never how fast anything is.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from harness.bench import run_quick_suite
from harness.modules import load_module

ROOT = Path(__file__).resolve().parents[2]
# By path: `bench` here is tests/bench, which shadows the repository's bench package.
_aims = load_module(ROOT / "bench" / "hotpath_aims.py")
AIMS, evaluate_aims, format_aims = _aims.AIMS, _aims.evaluate_aims, _aims.format_aims
platform_floor, relative_cpu = _aims.platform_floor, _aims.relative_cpu
_work = load_module(ROOT / "bench" / "hotpath_work.py")
_profile = load_module(ROOT / "bench" / "hotpath_profile.py")


def _phase(ok_per_s: float, p50_ms: float = 1.0, **cpu_us: float) -> dict[str, Any]:
    return {"ok_per_s": ok_per_s, "p50_ms": p50_ms, "cpu_us": cpu_us}


def _figures(**changes: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "echo": {"c32": {"stack": _phase(1000, sidecar=180.0, platform=140.0)}},
        "dev": {
            "c1": {"direct": _phase(5000, 0.1), "dev": _phase(900, 0.9)},
            "c32": {
                "direct": _phase(10_000),
                "dev": _phase(1600),
                "localstack": _phase(1650),
            },
        },
        "pytriton": {"direct": _phase(200), "stack": _phase(150)},
        "memory": {"idle_mib": 55.0, "curve_mib": [(10_000, 58.0), (20_000, 58.5), (100_000, 60)]},
    }
    figures.update(changes)
    return figures


def _verdicts(figures: dict[str, Any]) -> dict[str, tuple[float | None, bool | None]]:
    return {aim["aim"]: (aim["measured"], aim["met"]) for aim in evaluate_aims(figures)}


def test_every_aim_is_judged_against_its_bound() -> None:
    verdicts = _verdicts(_figures())
    assert set(verdicts) == set(AIMS)
    assert verdicts["sidecar_cpu_us"] == (180.0, True)
    assert verdicts["platform_cpu_us"] == (140.0, True)
    assert verdicts["dev_throughput_ratio"] == (0.16, True)
    assert verdicts["dev_added_p50_ms"][1] is True  # 0.8 ms
    assert verdicts["dev_vs_localstack"][1] is True  # 0.97
    assert verdicts["pytriton_throughput_ratio"] == (0.75, True)
    assert verdicts["sidecar_idle_rss_mib"] == (55.0, True)
    assert verdicts["sidecar_rss_growth_mib"] == (2.0, True)


def test_aims_missed_and_unmeasured_are_told_apart() -> None:
    figures = _figures(
        memory={"idle_mib": None, "curve_mib": [(10_000, 58.0), (100_000, 70.0)]},
        pytriton={"direct": _phase(0), "stack": _phase(150)},
    )
    figures["echo"]["c32"]["stack"]["cpu_us"] = {"sidecar": 617.0}
    verdicts = _verdicts(figures)
    assert verdicts["sidecar_cpu_us"] == (617.0, False)
    assert verdicts["platform_cpu_us"] == (None, None)
    assert verdicts["sidecar_idle_rss_mib"] == (None, None)
    assert verdicts["sidecar_rss_growth_mib"] == (12.0, False)
    assert verdicts["pytriton_throughput_ratio"] == (0.0, False)  # no direct answers: no ratio
    lines = "\n".join(format_aims(evaluate_aims(figures)))
    assert re.search(r"sidecar_cpu_us +617  \(<= 200\): NOT met", lines)
    assert re.search(r"platform_cpu_us +not measured  \(<= 150\): unknown", lines)


def test_the_platforms_floor_is_two_server_exchanges_and_a_publish() -> None:
    level = {"direct": _phase(20_000, server=45.0), "stack": _phase(1500)}
    assert platform_floor(level, {"jetstream_publish_us": 35.0}) == {
        "aiohttp_server_exchange_us": 45.0,
        "platform_floor_us": 125.0,
    }
    assert platform_floor({"direct": _phase(20_000)}, {"jetstream_publish_us": 35.0}) == {}


def test_the_platforms_own_work_is_added_to_its_floor_and_to_a_bare_one() -> None:
    level = {"direct": _phase(20_000, server=45.0), "stack": _phase(1500)}
    floors = {
        "jetstream_publish_us": 35.0,
        "platform_work_us": 40.0,
        "raw_asyncio_exchange_us": 15.0,
    }
    assert platform_floor(level, floors) == {
        "aiohttp_server_exchange_us": 45.0,
        "platform_floor_us": 125.0,
        "platform_floor_with_work_us": 165.0,
        "platform_bare_floor_us": 105.0,
    }


async def test_the_own_work_of_platform_and_sidecar_runs_their_functions() -> None:
    # The sidecar's runs its progress monitor and request directories for real (inotify).
    assert await _work.platform_work(b'{"x": 1}', 50) > 0
    assert await _work.sidecar_work(b'{"x": 1}', 50) > 0


def test_cpu_relative_to_the_echo_servers_cancels_the_machines_speed() -> None:
    slow = {"stack": _phase(800, sidecar=1000.0, platform=800.0, server=200.0)}
    fast = {"stack": _phase(1600, sidecar=500.0, platform=400.0, server=100.0)}
    assert relative_cpu(slow) == relative_cpu(fast) == {"sidecar": 5.0, "platform": 4.0}
    assert relative_cpu({"stack": _phase(800, sidecar=1000.0)}) == {}


_PERF_REPORT = """\
# Samples: 3K of event 'cpu-clock'
#
 25.80% |libpython3.11.so.1.0      |[.] _PyEval_EvalFrameDefault
 3.67%  |libpython3.11.so.1.0      |[.] _PyObject_Malloc
 2.59%  |libpython3.11.so.1.0      |[.] gc_collect_main
 1.08%  |libpython3.11.so.1.0      |[.] visit_decref
 0.76%  |libpython3.11.so.1.0      |[.] PyObject_GC_UnTrack
 10.00% |[kernel.kallsyms]         |[k] tcp_sendmsg
 4.50%  |libc.so.6                 |[.] __memmove_avx_unaligned_erms
 4.00%  |loop.cpython-311-x86_64-linux-gnu.so |[.] __pyx_f_6uvloop_4loop_Loop__run
 2.40%  |_message.abi3.so          |[.] upb_Decode
 0.20%  |[vdso]                    |[.] __vdso_clock_gettime
 0.10%  |python3.11                |[.] _PyEval_EvalFrameDefault
not a sample line
"""


def test_perf_samples_are_grouped_by_the_code_they_were_in() -> None:
    shares = _profile.group_shares(_PERF_REPORT)
    assert list(shares) == list(_profile.GROUPS)
    assert shares == {
        "interpreter_bytecode": pytest.approx(25.9),  # a statically linked python counts too
        "interpreter_gc": pytest.approx(3.67),  # the collector's symbols, not GC tracking
        "interpreter_other": pytest.approx(4.43),
        "kernel": pytest.approx(10.0),
        "libc": pytest.approx(4.5),
        "event_loop": pytest.approx(4.0),
        "extensions": pytest.approx(2.4),
        "other": pytest.approx(0.2),
    }
    assert _profile.group_shares("# nothing sampled\n") == dict.fromkeys(_profile.GROUPS, 0.0)


def test_the_profile_lines_say_each_process_share_or_why_none() -> None:
    shares = _profile.group_shares(_PERF_REPORT)
    assert _profile.interpreter_share(shares) == pytest.approx(34.0)
    figures = {"shares": shares, "user_us": 563.4, "system_us": 68.3, "interpreter_us": 214.8}
    lines = _profile.profile_lines({"seconds": 10.0, "platform": figures})
    assert " ".join(lines[1].split()) == (
        "platform interpreter 34% = 215 µs (bytecode 26, gc 3.7, rest 4), kernel 10%, libc 4%, "
        "uvloop 4%, other extensions 2%; user 563 + system 68 µs per request"
    )
    assert _profile.profile_lines({"skipped": "perf is not on PATH"}) == [
        "profile (perf): skipped, perf is not on PATH"
    ]
    assert _profile.profile_lines(None) == []


def test_without_perf_the_profile_is_refused_before_any_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    loads: list[float] = []

    def load(seconds: float) -> int:
        loads.append(seconds)
        return 1

    with pytest.raises(_profile.ProfileError, match=r"perf is not on PATH \(apt-get install"):
        _profile.profile_roles(
            {"platform": [os.getpid()]}, 1.0, load, tmp_path, lambda pid: (0.0, 0.0)
        )
    assert loads == []


def _bench(tmp_path: Path, env: dict[str, str], timeout: float) -> tuple[str, dict[str, Any]]:
    # TMPDIR stays the run's: PyTriton's socket paths under pytest's tmp_path would be too long.
    return run_quick_suite("hotpath", tmp_path / "hotpath.json", env=env, timeout=timeout)


def test_without_wrk_the_suite_says_so_and_measures_nothing(tmp_path: Path) -> None:
    stdout, report = _bench(tmp_path, {**os.environ, "PATH": str(tmp_path)}, timeout=60)
    assert "wrk is not on PATH (apt-get install wrk): nothing measured" in stdout
    assert report["suite"] == "hotpath"
    assert report["skipped"].startswith("wrk is not on PATH")
    assert (report["figures"], report["aims"]) == ({}, [])


@pytest.mark.nats
@pytest.mark.triton
@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_a_quick_run_measures_every_phase_and_judges_every_aim(tmp_path: Path) -> None:
    stdout, report = _bench(tmp_path, dict(os.environ), timeout=280)
    figures = report["figures"]
    assert set(figures) == {"echo", "memory", "dev", "pytriton", "loops", "clients", "attach"}
    for level in ("c1", "c32"):
        assert set(figures["echo"][level]) == {"direct", "stack"}
        assert set(figures["dev"][level]) == {"direct", "dev", "localstack"}
        assert figures["echo"][level]["stack"]["status_errors"] == 0
        assert figures["dev"][level]["dev"]["status_errors"] == 0
    assert figures["dev"]["slots"] == 1  # dev's default
    assert figures["pytriton"]["stack"]["status_errors"] == 0
    floors = figures["echo"]["floors"]
    assert floors["aiohttp_client_exchange_us"] > 0
    assert floors["lean_client_exchange_us"] > 0
    assert floors["raw_asyncio_exchange_us"] > 0
    for loop in ("asyncio", "uvloop"):  # the dev extras install uvloop
        assert figures["loops"][loop]["ok_per_s"] > 0
        assert len(figures["loops"][loop]["runs"]) == 2
        assert figures["loops"][loop]["cpu_us"]["sidecar"] > 0
    assert "uvloop / asyncio: throughput" in stdout
    for loop in ("asyncio", "uvloop"):  # each run's sidecar said it ran the loop asked for
        assert {run["sidecar_ran"]["event_loop"] for run in figures["loops"][loop]["runs"]} == {
            loop
        }
    for client in ("aiohttp", "lean"):
        runs = figures["clients"][client]["runs"]
        assert len(runs) == 2
        assert all(run["ok_per_s"] > 0 for run in runs)
        assert {
            (run["sidecar_ran"]["container_client"], run["sidecar_ran"]["attach_client"])
            for run in runs
        } == {(client, client)}
    assert "lean / aiohttp: throughput" in stdout
    for server, lean in (("aiohttp", False), ("lean", True)):
        runs = figures["attach"][server]["runs"]
        assert len(runs) == 2
        assert all(run["ok_per_s"] > 0 for run in runs)
        assert {run["lean_attach"] for run in runs} == {lean}  # the platform ran what was asked
    assert "platform attach servers (the worker-facing routes), echo c32" in stdout
    profile = figures["echo"]["profile"]
    if "skipped" in profile:  # perf missing, or not allowed to sample here
        assert "perf" in profile["skipped"]
        assert f"profile (perf): skipped, {profile['skipped']}" in stdout
    else:
        for role in ("platform", "sidecar", "server"):
            assert sum(profile[role]["shares"].values()) == pytest.approx(100, abs=1.5)
            assert profile[role]["shares"]["interpreter_bytecode"] > 0
            assert profile[role]["user_us"] > 0
            cpu_us = profile[role]["user_us"] + profile[role]["system_us"]
            share = _profile.interpreter_share(profile[role]["shares"])
            assert profile[role]["interpreter_us"] == pytest.approx(share * cpu_us / 100, abs=0.2)
        assert "profile (perf, echo c32)" in stdout
    assert floors["jetstream_publish_us"] > 0
    assert floors["jetstream_consume_us"] > 0
    assert floors["sidecar_floor_us"] == pytest.approx(
        floors["jetstream_consume_us"] + 2 * floors["lean_client_exchange_us"]
    )
    assert "the sidecar's floor (one message, two lean exchanges)" in stdout
    assert floors["sidecar_work_us"] > 0
    assert floors["sidecar_floor_with_work_us"] == pytest.approx(
        floors["sidecar_floor_us"] + floors["sidecar_work_us"]
    )
    assert "the sidecar's own work per request" in stdout
    server = figures["echo"]["c32"]["direct"]["cpu_us"]["server"]
    assert floors["platform_floor_us"] == pytest.approx(2 * server + floors["jetstream_publish_us"])
    assert floors["platform_work_us"] > 0
    assert floors["platform_floor_with_work_us"] == pytest.approx(
        floors["platform_floor_us"] + floors["platform_work_us"]
    )
    assert "the platform's own work per call" in stdout
    assert set(report["relative_cpu"]) == {"sidecar", "platform"}
    assert "CPU per request in units of the echo server's" in stdout
    assert figures["memory"]["requests"] >= 10_000
    assert len(figures["memory"]["curve_mib"]) >= 2  # rounds of about a tenth each
    assert [aim["aim"] for aim in report["aims"]] == list(AIMS)
    assert all(aim["met"] is not None for aim in report["aims"])
    assert "Aims:" in stdout
