"""A stand-in inference container for the sidecar's compatibility-mode tests.

Usage: `compat_data_container.py PORT`. An aiohttp app (any method) that records every call
carrying `NVCF-REQID` as `[method, raw target]`:
  /healthz                        200
  /echo                           method, target, raw header list, body length, the asset ids
                                  header and the files of NVCF-ASSET-DIR (name -> text)
  /error?status=&message=         `status` with {"error": message}; without `message` {"oops": 1}
  /sleep?id=&seconds=             {"slept": seconds} after that long; /state/<id> tells whether
                                  it started, finished, and whether the client disconnected
  /sse?n=&delay=                  text/event-stream, n events `data: <i>\\n\\n`, `delay` apart
  /big?size=                      `size` bytes of `pattern_bytes` (exact Content-Length)
  /progress?percent=&seconds=     writes `<NVCF-LARGE-OUTPUT-DIR>/progress` (renamed into place)
                                  with `partialResponse` {"step": percent}, waits, {"done": true}
  /big-progress?seconds=          writes a 300 KB progress file, waits, {"ok": 1}
  /outputs                        writes result.json and sub/data.bin into NVCF-LARGE-OUTPUT-DIR,
                                  answers {"written": [...]}
  /accepted?polls=                202 {"hit": n} for the first `polls` + 1 calls of one request
                                  id (the initial call and `polls` polls), then 200 {"hit": n,
                                  "done": true}: a container that drives polling itself;
                                  with `outputs=1` the final call writes /outputs' files first
  /hits/<reqid>                   the calls recorded for that request id

Tests load this file as a module too: `launch()` starts it as a process.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

PATTERN = bytes(range(256))
OUTPUT_FILES = {"result.json": b'{"answer": 42}', "sub/data.bin": bytes(range(256)) * 8}
BIG_PROGRESS_BYTES = 300_000

_state: dict[str, dict[str, bool]] = {}
_hits: dict[str, list[list[str]]] = {}


def pattern_bytes(size: int) -> bytes:
    """The body /big?size= answers with."""
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


@web.middleware
async def record_hits(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    request_id = request.headers.get("NVCF-REQID")
    if request_id is not None:
        _hits.setdefault(request_id, []).append([request.method, request.raw_path])
    return await handler(request)


def _output_dir(request: web.Request) -> Path:
    return Path(request.headers["NVCF-LARGE-OUTPUT-DIR"])


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_bytes(data)
    os.replace(partial, path)


def _read_files(directory: Path) -> dict[str, str] | None:
    if not directory.is_dir():
        return None
    return {path.name: path.read_text() for path in sorted(directory.iterdir())}


def _write_outputs(directory: Path) -> None:
    for name, data in OUTPUT_FILES.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    asset_dir = Path(request.headers.get("NVCF-ASSET-DIR", "/nonexistent"))
    assets = await asyncio.to_thread(_read_files, asset_dir)
    document: dict[str, Any] = {
        "method": request.method,
        "target": request.raw_path,
        "headers": [
            [name.decode("latin-1"), value.decode("latin-1")] for name, value in request.raw_headers
        ],
        "body_length": len(body),
        "asset_ids": request.headers.get("NVCF-FUNCTION-ASSET-IDS"),
        "assets": assets,
    }
    return web.json_response(document)


async def error(request: web.Request) -> web.Response:
    await request.read()
    status = int(request.query.get("status", "500"))
    message = request.query.get("message")
    document: dict[str, Any] = {"oops": 1} if message is None else {"error": message}
    return web.json_response(document, status=status)


async def sleep(request: web.Request) -> web.Response:
    await request.read()
    state = _state.setdefault(
        request.query["id"], {"started": False, "finished": False, "disconnected": False}
    )
    state["started"] = True
    seconds = float(request.query.get("seconds", "60"))
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        state["disconnected"] = True
        raise
    state["finished"] = True
    return web.json_response({"slept": seconds})


async def state(request: web.Request) -> web.Response:
    return web.json_response(
        _state.get(
            request.match_info["id"], {"started": False, "finished": False, "disconnected": False}
        )
    )


async def hits(request: web.Request) -> web.Response:
    return web.json_response(_hits.get(request.match_info["id"], []))


async def sse(request: web.Request) -> web.StreamResponse:
    count = int(request.query.get("n", "3"))
    delay = float(request.query.get("delay", "0.01"))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for index in range(count):
        await response.write(f"data: {index}\n\n".encode())
        await asyncio.sleep(delay)
    await response.write_eof()
    return response


async def big(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=pattern_bytes(int(request.query["size"])))


async def progress(request: web.Request) -> web.Response:
    await request.read()
    percent = int(request.query.get("percent", "50"))
    document = {
        "id": request.headers["NVCF-REQID"],
        "progress": percent,
        "partialResponse": {"step": percent},
    }
    await asyncio.to_thread(
        _write_atomically, _output_dir(request) / "progress", json.dumps(document).encode()
    )
    await asyncio.sleep(float(request.query.get("seconds", "1")))
    return web.json_response({"done": True})


async def big_progress(request: web.Request) -> web.Response:
    await request.read()
    filler = "x" * BIG_PROGRESS_BYTES
    document = {
        "id": request.headers["NVCF-REQID"],
        "progress": 10,
        "partialResponse": {"filler": filler},
    }
    await asyncio.to_thread(
        _write_atomically, _output_dir(request) / "progress", json.dumps(document).encode()
    )
    await asyncio.sleep(float(request.query.get("seconds", "2")))
    return web.json_response({"ok": 1})


async def outputs(request: web.Request) -> web.Response:
    await request.read()
    await asyncio.to_thread(_write_outputs, _output_dir(request))
    return web.json_response({"written": sorted(OUTPUT_FILES)})


async def accepted(request: web.Request) -> web.Response:
    await request.read()
    polls = int(request.query.get("polls", "2"))
    seen = len(_hits.get(request.headers.get("NVCF-REQID", ""), []))
    if seen <= polls:
        return web.json_response({"hit": seen}, status=202)
    if request.query.get("outputs") == "1":
        if not _output_dir(request).is_dir():  # the sidecar made it; it must still be there
            return web.json_response({"error": "no output directory"}, status=500)
        await asyncio.to_thread(_write_outputs, _output_dir(request))
    return web.json_response({"hit": seen, "done": True})


async def main(port: int) -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[record_hits])
    app.router.add_route("*", "/healthz", healthz)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/error", error)
    app.router.add_route("*", "/sleep", sleep)
    app.router.add_get("/state/{id}", state)
    app.router.add_get("/hits/{id}", hits)
    app.router.add_route("*", "/sse", sse)
    app.router.add_route("*", "/big", big)
    app.router.add_route("*", "/progress", progress)
    app.router.add_route("*", "/big-progress", big_progress)
    app.router.add_route("*", "/outputs", outputs)
    app.router.add_route("*", "/accepted", accepted)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


@dataclass(frozen=True)
class ContainerProcess:
    """A running compatibility-mode test container on `port`."""

    port: int


@contextmanager
def launch(log_path: Path) -> Iterator[ContainerProcess]:
    """Run this server as a child process until the block ends; waits until it answers."""
    from harness.ports import free_port  # the test harness, importable in tests only
    from harness.processes import ManagedProcess

    port = free_port()
    process = ManagedProcess(
        [sys.executable, __file__, str(port)],
        log_path=log_path,
        name="compat_data_container",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    process.start()
    try:
        process.wait_http_ok(f"http://127.0.0.1:{port}/healthz", timeout=30)
        yield ContainerProcess(port)
    finally:
        process.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
