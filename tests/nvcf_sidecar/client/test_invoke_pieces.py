"""`nvcf-sidecar invoke` in pieces: the zip unpacking, the error mapping, the display, and the
answers the local platform never gives, from an in-process aiohttp stand-in of the caller API.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from rich.console import Console

from harness.http import serve_app
from nvcf_sidecar.client.archive import extract_zip, member_path
from nvcf_sidecar.client.caller import asset_content_type
from nvcf_sidecar.client.display import InvokeDisplay, summarize
from nvcf_sidecar.client.errors import (
    CallerError,
    FunctionFailed,
    InvokeTimeout,
    http_error,
    problem_detail,
)

pytestmark = pytest.mark.timeout(60)

FUNCTION_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
REQUEST_ID = "3f1c7f7e-3f0c-4f8c-9a43-6f1b2f0a9d11"


def crafted_zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name), data)  # ZipInfo keeps the name as given
    return buffer.getvalue()


# -- unpacking ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../escape.txt", "a/../../b.txt", "a/..", "/etc/passwd", "C:evil.txt", "a\\..\\b", "", "./"],
)
def test_unsafe_member_names_are_refused(name: str) -> None:
    assert member_path(name) is None


def test_safe_member_names_are_normalised() -> None:
    assert str(member_path("a//./b.txt")) == "a/b.txt"
    assert str(member_path("dir/")) == "dir"
    assert str(member_path("..hidden")) == "..hidden"


def test_extract_writes_safe_entries_and_refuses_escapes(tmp_path: Path) -> None:
    archive = tmp_path / "answer.zip"
    entries = {
        f"{REQUEST_ID}.response": b'{"ok": true}',
        "sub/": b"",
        "sub/data.bin": bytes(range(256)) * 300,
        "../escape.txt": b"outside",
        "sub/../../escape2.txt": b"outside",
        "/abs.txt": b"absolute",
    }
    archive.write_bytes(crafted_zip(entries))
    out = tmp_path / "deep" / "out"
    result = extract_zip(archive, out)
    root = out.resolve()
    assert [p.relative_to(root).as_posix() for p in result.files] == [
        f"{REQUEST_ID}.response",
        "sub/data.bin",
    ]
    assert (out / "sub" / "data.bin").read_bytes() == entries["sub/data.bin"]
    assert result.refused == ("../escape.txt", "sub/../../escape2.txt", "/abs.txt")
    assert not (tmp_path / "deep" / "escape.txt").exists()
    assert not (tmp_path / "escape2.txt").exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        ["answer.zip", f"{REQUEST_ID}.response", "data.bin"]
    )


def test_extract_refuses_paths_through_an_existing_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(outside)
    archive = tmp_path / "answer.zip"
    archive.write_bytes(crafted_zip({"link/planted.txt": b"x", "kept.txt": b"y"}))
    result = extract_zip(archive, out)
    assert result.refused == ("link/planted.txt",)
    assert list(outside.iterdir()) == []
    assert (out / "kept.txt").read_bytes() == b"y"


def test_extract_of_a_non_zip_is_a_function_failure(tmp_path: Path) -> None:
    archive = tmp_path / "answer.zip"
    archive.write_bytes(b"<html>not a zip</html>")
    with pytest.raises(FunctionFailed, match="not a readable zip"):
        extract_zip(archive, tmp_path / "out")


# -- errors and display ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, CallerError),
        (401, CallerError),
        (404, CallerError),
        (413, CallerError),
        (429, CallerError),
        (408, InvokeTimeout),
        (500, FunctionFailed),
        (502, FunctionFailed),
        (503, FunctionFailed),
        (504, InvokeTimeout),
    ],
)
def test_http_status_picks_the_error_and_exit_status(status: int, kind: type[Exception]) -> None:
    error = http_error(status, "Reason", b"")
    assert type(error) is kind
    assert error.exit_status == {CallerError: 3, FunctionFailed: 4, InvokeTimeout: 5}[kind]
    assert str(error) == f"HTTP {status} Reason"


def test_error_message_carries_detail_and_request_id() -> None:
    body = b'{"status":429,"title":"Too Many Requests","detail":"queue\\nfull"}'
    error = http_error(429, "Too Many Requests", body, REQUEST_ID, "download")
    assert str(error) == (
        f"download: HTTP 429 Too Many Requests: queue full (request {REQUEST_ID})"
    )


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"type":"urn:x","title":"Not Found","status":404}', "Not Found"),
        (b'{"error": "model exploded"}', "model exploded"),
        (
            b"Header of type `authorization` was missing\nmore",
            "Header of type `authorization` was missing",
        ),
        (b"", ""),
        (b"[1, 2]", "[1,2]"),
        (b"x" * 1000, "x" * 299 + "…"),
    ],
)
def test_problem_detail(body: bytes, detail: str) -> None:
    assert problem_detail(body) == detail


def test_summarize_is_compact_and_cut() -> None:
    assert summarize(b'{ "a" : [1, 2] }') == '{"a":[1,2]}'
    assert summarize(b"line one\n  line two") == "line one line two"
    assert summarize(b"y" * 200, 10) == "y" * 9 + "…"


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("photo.png", "image/png"),
        ("notes.txt", "text/plain"),
        ("archive.tar.gz", "application/octet-stream"),
        ("weights.unknownext", "application/octet-stream"),
        ("noext", "application/octet-stream"),
    ],
)
def test_asset_content_type(name: str, content_type: str) -> None:
    assert asset_content_type(Path(name)) == content_type


def test_progress_bar_on_a_terminal_shows_percent_and_partial() -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160, markup=False)
    display = InvokeDisplay(console)
    with display.progress(REQUEST_ID) as bar:
        bar.update(40, b'{"stage": "[bold]denoise"}')
        bar.update(40, b'{"stage": "[bold]denoise"}')  # unchanged: no second line
        bar._progress.refresh()
    text = screen.getvalue()
    assert text.count('[invoke] in progress 40%: {"stage":"[bold]denoise"}') == 1
    assert "40%" in text.replace("in progress 40%", "")  # the bar's own percent column


# -- answers from a stand-in of the caller API --------------------------------------------


@pytest.fixture
async def fake_platform() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A caller API whose pexec answer is picked by `X-Fake`; yields (base URL, seen headers)."""
    seen: list[dict[str, str]] = []
    evil = crafted_zip(
        {f"{REQUEST_ID}.response": b"plain text answer\n", "ok.txt": b"ok", "../x.txt": b"x"}
    )

    async def pexec(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers))
        fake = request.headers.get("X-Fake", "")
        if fake == "zip":
            headers = {"nvcf-reqid": REQUEST_ID, "Location": "/files/answer.zip"}
            return web.Response(status=302, headers=headers)
        if fake == "no-reqid":
            return web.json_response({"partial": 1}, status=202)
        status = int(fake)
        problem = {"status": status, "title": "Fake", "detail": f"fake {status}"}
        return web.json_response(problem, status=status, content_type="application/problem+json")

    async def download(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(body=evil, content_type="application/zip")

    app = web.Application()
    app.router.add_post("/v2/nvcf/pexec/functions/{fid}", pexec)
    app.router.add_get("/files/answer.zip", download)
    async with serve_app(app) as base:
        yield base, seen


async def run_cli(*args: str, cwd: Path) -> tuple[int, bytes, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nvcf_sidecar.cli", "invoke", FUNCTION_ID, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=cwd, env=env,
    )  # fmt: skip
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout, stderr.decode()


async def test_unsafe_zip_entries_are_refused_and_exit_4(
    fake_platform: tuple[str, list[dict[str, str]]], tmp_path: Path
) -> None:
    base, seen = fake_platform
    status, stdout, stderr = await run_cli(
        "--url", base, "--api-key", "k", "--header", "X-Fake: zip", cwd=tmp_path
    )
    assert status == 4, stderr
    out = tmp_path / "nvcf-output" / REQUEST_ID
    assert sorted(p.name for p in out.iterdir()) == [f"{REQUEST_ID}.response", "ok.txt"]
    assert not (tmp_path / "nvcf-output" / "x.txt").exists()
    assert stdout == b"plain text answer\n"  # small text body file: printed as is
    assert "warning: refused unsafe zip entry '../x.txt'" in stderr
    assert f"error: 1 unsafe zip entries refused (request {REQUEST_ID})" in stderr
    assert seen[0]["Authorization"] == "Bearer k"
    assert "Authorization" not in seen[1]  # the presigned download gets no bearer


@pytest.mark.parametrize(("fake", "exit_status"), [("504", 5), ("429", 3), ("413", 3), ("503", 4)])
async def test_platform_statuses_map_to_exit_statuses(
    fake_platform: tuple[str, list[dict[str, str]]], tmp_path: Path, fake: str, exit_status: int
) -> None:
    base, _ = fake_platform
    status, stdout, stderr = await run_cli(
        "--url", base, "--header", f"X-Fake: {fake}", cwd=tmp_path
    )
    assert status == exit_status
    assert stdout == b""
    assert f"[invoke] error: HTTP {fake} " in stderr
    assert stderr.rstrip().endswith(f": fake {fake}")


async def test_202_without_request_id_is_a_function_failure(
    fake_platform: tuple[str, list[dict[str, str]]], tmp_path: Path
) -> None:
    base, _ = fake_platform
    status, _, stderr = await run_cli("--url", base, "--header", "X-Fake: no-reqid", cwd=tmp_path)
    assert status == 4
    assert "HTTP 202 without nvcf-reqid" in stderr
