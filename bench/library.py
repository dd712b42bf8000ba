"""The in-container library's hot calls, each against the plain code a function would write instead.

Header parsing vs. an upper-casing dict comprehension, progress reports vs. NVIDIA's helper's
`open(..., "w")` + `json.dump`, and outputs vs. a bare `open().write()` with and without fsync.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import multidict

import nvcf_worker
from bench.harness import (
    Case,
    RunSettings,
    SuiteReport,
    filesystem_type,
    machine_info,
    run_cases,
)
from nvcf_worker import InvocationContext, encode_progress
from nvcf_worker.headers import (
    INVOCATION_REGION,
    POLL_SECONDS,
    WORKER_OWNED_HEADERS,
    normalize_headers,
)

__all__ = ["DEFAULT_SETTINGS", "DESCRIPTION", "NVCF_HEADERS", "ORDINARY_HEADERS", "run"]

DESCRIPTION = "nvcf_worker: header parsing, progress reports and output files"
DEFAULT_SETTINGS = RunSettings(budget_s=20.0)

_REQUEST_ID = "6f1c1d2e-52a4-4cf5-9a39-0d1e2b7c8a90"

#: What NVIDIA's worker sends with an invocation that has two assets: the 15 worker-owned headers
#: (literal upper-case names), the caller's region and the shifted poll budget.
NVCF_HEADERS: dict[str, str] = {
    "NVCF-REQID": _REQUEST_ID,
    "NVCF-SUB": "4hQk2c9yXbHnAq1u0Hk0c1Rk7VvZy2xWmW0c5tBq3Ho",
    "NVCF-NCAID": "nca_3ZkPq9w8s7LmX2VbR1tY0uQ4",
    "NVCF-FUNCTION-NAME": "sdxl-turbo",
    "NVCF-FUNCTION-ID": "0f5a8c2e-1b3d-4e6f-8a9b-c1d2e3f4a5b6",
    "NVCF-FUNCTION-VERSION-ID": "7e2b4d6f-8a1c-4e3b-9d5f-a7c9e1b3d5f7",
    "NVCF-ASSET-DIR": f"/var/inf/inputAssets/{_REQUEST_ID}",
    "NVCF-LARGE-OUTPUT-DIR": f"/var/inf/response/{_REQUEST_ID}",
    "NVCF-MAX-RESPONSE-SIZE-BYTES": "5242880",
    "NVCF-NSPECTID": "NSPECT-A1B2-C3D4",
    "NVCF-BACKEND": "GFN",
    "NVCF-INSTANCETYPE": "DGX-CLOUD.GPU.L40_1x",
    "NVCF-REGION": "us-west-2",
    "NVCF-ENV": "prod",
    "NVCF-FUNCTION-ASSET-IDS": (
        "b2c4e6a8-0d1f-4a3c-8e5b-7d9f1b3d5e7a,c3d5f7b9-1e2a-4b4d-9f6c-8e0a2c4e6f8b"
    ),
    "NVCF-INVOCATION-REGION": "us-east-1",
    "Nvcf-Poll-Seconds": "57",
}

#: What else arrives with a forwarded invocation.
ORDINARY_HEADERS: dict[str, str] = {
    "Host": "127.0.0.1:8000",
    "User-Agent": "Go-http-client/1.1",
    "Accept": "application/json",
    "Accept-Encoding": "gzip",
    "Content-Type": "application/json",
    "Content-Length": "1873",
    "Traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "Tracestate": "nvcf=00f067aa0ba902b7",
}

_SMALL_PARTIAL: dict[str, Any] = {"stage": "denoise", "step": 12, "of": 30}
_TARGET_LARGE_PROGRESS_BYTES = 10_000


def _large_partial() -> dict[str, Any]:
    """A partial response (streamed text so far) whose progress document is ~10 KB."""
    words = itertools.cycle(("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog"))
    text = ""
    while True:
        partial = {"text": text, "tokens": len(text.split())}
        if len(encode_progress(_REQUEST_ID, 42, partial)) >= _TARGET_LARGE_PROGRESS_BYTES:
            return partial
        text += next(words) + " "


def _check_headers() -> None:
    names = {name.upper() for name in NVCF_HEADERS}
    expected = WORKER_OWNED_HEADERS | {INVOCATION_REGION, POLL_SECONDS}
    if names != expected:
        raise RuntimeError(f"header set drifted from the library's: {sorted(names ^ expected)}")


def _plain_progress(path: Path, percent: int, partial: Mapping[str, Any]) -> Callable[[], None]:
    """What NVIDIA's `update_progress_file` does: a non-atomic rewrite in place."""
    document = {"id": _REQUEST_ID, "progress": percent, "partialResponse": partial}

    def op() -> None:
        with open(path, "w") as outfile:
            json.dump(document, outfile)

    return op


def _plain_write(path: Path, data: bytes, *, fsync: bool) -> Callable[[], None]:
    if fsync:

        def op() -> None:
            with open(path, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())

    else:

        def op() -> None:
            with open(path, "wb") as stream:
                stream.write(data)

    return op


def _file_size(path: Path, expected: int) -> Callable[[], Mapping[str, Any]]:
    """After timing: prove the timed call wrote what it should (not an error path)."""

    def check() -> Mapping[str, Any]:
        size = path.stat().st_size
        if size != expected:
            raise RuntimeError(f"{path.name} has {size} bytes after the run, expected {expected}")
        return {"file_bytes": size}

    return check


def _build_cases(workdir: Path) -> list[Case]:
    _check_headers()
    headers = {**NVCF_HEADERS, **ORDINARY_HEADERS}
    ci_headers = multidict.CIMultiDict(headers)
    ctx = InvocationContext.for_local_run(workdir, request_id=_REQUEST_ID)
    plain = workdir / "plain"
    plain.mkdir()

    large_partial = _large_partial()
    small_bytes = len(encode_progress(_REQUEST_ID, 42, _SMALL_PARTIAL))
    large_bytes = len(encode_progress(_REQUEST_ID, 42, large_partial))
    progress_file = ctx.output_dir / "progress"

    reporter = ctx.progress_reporter(min_interval=0.5)
    percents = itertools.count()
    update_calls = itertools.count()

    def reporter_update() -> None:
        next(update_calls)
        reporter.update(next(percents) % 100, _SMALL_PARTIAL)  # never 100: that always writes

    def reporter_figures() -> Mapping[str, Any]:
        calls = next(update_calls)
        return {
            "min_interval_s": 0.5,
            "update_calls": calls,
            "file_writes": reporter.writes,
            "document_bytes": small_bytes,
        }

    def progress_written(expected: int) -> Callable[[], Mapping[str, Any]]:
        def check() -> Mapping[str, Any]:
            document = json.loads(progress_file.read_bytes())
            if document["id"] != _REQUEST_ID:
                raise RuntimeError(f"unexpected progress document {document!r:.200}")
            return {"document_bytes": expected}

        return check

    def plain_progress_written() -> Mapping[str, Any]:
        return {"document_bytes": (plain / "progress").stat().st_size}

    def output_case(size: int, label: str, iterations: tuple[int, int, int]) -> list[Case]:
        data = os.urandom(size)
        group = f"output {label}"
        prefix = f"output_{label.replace(' ', '').lower()}"
        target = plain / f"{prefix}.bin"
        name = f"{prefix}.bin"
        plain_iter, fsync_iter, lib_iter = iterations
        return [
            Case(
                key=f"{prefix}.plain",
                group=group,
                label="open().write(), no fsync",
                short="write",
                op=_plain_write(target, data, fsync=False),
                iterations=plain_iter,
                baseline=True,
                details={"payload_bytes": size},
            ),
            Case(
                key=f"{prefix}.plain_fsync",
                group=group,
                label="open().write() + fsync",
                short="write+fsync",
                op=_plain_write(target, data, fsync=True),
                iterations=fsync_iter,
                baseline=True,
                compare_to=(f"{prefix}.plain",),
                warmup=3,
                details={"payload_bytes": size},
            ),
            Case(
                key=f"{prefix}.write_output",
                group=group,
                label="ctx.write_output (.partial, fsync, rename)",
                op=lambda: ctx.write_output(name, data),
                iterations=lib_iter,
                compare_to=(f"{prefix}.plain", f"{prefix}.plain_fsync"),
                warmup=3,
                details={"payload_bytes": size},
                after=_file_size(ctx.output_dir / name, size),
            ),
        ]

    return [
        Case(
            key="headers.upper_dict",
            group="header parse",
            label="{k.upper(): v} over the dict",
            short="upper-dict",
            op=lambda: {k.upper(): v for k, v in headers.items()},
            iterations=20_000,
            baseline=True,
            details={"nvcf_headers": len(NVCF_HEADERS), "other_headers": len(ORDINARY_HEADERS)},
        ),
        Case(
            key="headers.normalize_dict",
            group="header parse",
            label="normalize_headers(dict) alone",
            op=lambda: normalize_headers(headers),
            iterations=20_000,
            compare_to=("headers.upper_dict",),
        ),
        Case(
            key="headers.from_headers_dict",
            group="header parse",
            label="InvocationContext.from_headers(dict)",
            op=lambda: InvocationContext.from_headers(headers),
            iterations=10_000,
            compare_to=("headers.upper_dict",),
        ),
        Case(
            key="headers.from_headers_cimultidict",
            group="header parse",
            label="InvocationContext.from_headers(CIMultiDict)",
            op=lambda: InvocationContext.from_headers(ci_headers),
            iterations=10_000,
            compare_to=("headers.upper_dict",),
            details={"multidict_version": multidict.__version__},
        ),
        Case(
            key="progress_small.json_dump",
            group="progress, small",
            label='open(path, "w") + json.dump (NVIDIA helper)',
            short="json.dump",
            op=_plain_progress(plain / "progress", 42, _SMALL_PARTIAL),
            iterations=500,
            baseline=True,
            after=plain_progress_written,
        ),
        Case(
            key="progress_small.report_progress",
            group="progress, small",
            label="ctx.report_progress (atomic, size-checked)",
            short="report_progress",
            op=lambda: ctx.report_progress(42, _SMALL_PARTIAL),
            iterations=500,
            compare_to=("progress_small.json_dump",),
            after=progress_written(small_bytes),
        ),
        Case(
            key="progress_small.reporter_update",
            group="progress, small",
            label="ProgressReporter.update, coalesced (0.5 s)",
            op=reporter_update,
            iterations=20_000,
            compare_to=("progress_small.json_dump", "progress_small.report_progress"),
            after=reporter_figures,
        ),
        Case(
            key="progress_10kb.json_dump",
            group="progress, ~10 KB",
            label='open(path, "w") + json.dump (NVIDIA helper)',
            short="json.dump",
            op=_plain_progress(plain / "progress", 42, large_partial),
            iterations=400,
            baseline=True,
            after=plain_progress_written,
        ),
        Case(
            key="progress_10kb.report_progress",
            group="progress, ~10 KB",
            label="ctx.report_progress (atomic, size-checked)",
            op=lambda: ctx.report_progress(42, large_partial),
            iterations=400,
            compare_to=("progress_10kb.json_dump",),
            after=progress_written(large_bytes),
        ),
        *output_case(4096, "4 KiB", (500, 200, 100)),
        *output_case(1 << 20, "1 MiB", (100, 50, 40)),
    ]


def run(settings: RunSettings, progress: Callable[[str], None] | None = None) -> SuiteReport:
    """Time every case in a fresh temporary directory (on the default temporary filesystem)."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nvcf-bench-") as tmp:
        workdir = Path(tmp)
        measurements = run_cases(_build_cases(workdir), settings, progress=progress)
        tmp_filesystem = filesystem_type(workdir)
    environment = machine_info(
        nvcf_worker_version=nvcf_worker.__version__,
        tmp_filesystem=tmp_filesystem,
    )
    return SuiteReport(
        suite="library",
        description=DESCRIPTION,
        measurements=measurements,
        settings=settings,
        environment=environment,
        wall_s=time.perf_counter() - started,
    )
