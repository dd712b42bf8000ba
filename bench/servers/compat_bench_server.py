"""The function of `bench compat`: progress on cue and large output files, behind Triton's route.

`python compat_bench_server.py --port N` answers `GET /v2/health/ready` with 200 and every
invocation (`POST /`) by its `X-Bench-Action` header:

* `ping` (default): `{"pong": <the request's JSON>}`, the plain round trip;
* `progress`: writes progress step 0 at once, then one more step each time the caller sends
  `step` to `POST /bench/gate/<X-Bench-Token>` (partial response `{"step": k}`, percent
  min(k, 99), with `InvocationContext.report_progress`: write, then atomic rename); answers
  `{"steps": n, "before_ns": [...], "after_ns": [...]}` once it sends `finish`, the
  `time.time_ns()` taken just before and just after each step's `report_progress`;
* `large`: writes `X-Bench-Bytes` bytes of a fixed pattern to `<NVCF-LARGE-OUTPUT-DIR>/output.bin`
  with `open_output` (fsync, rename) and answers `{"bytes", "sha256", "write_s", "written_at_ns"}`,
  `written_at_ns` taken once the file is in place, just before answering.

The gate is a side channel that never goes through the stack, so the benchmark chooses when each
progress file appears: after the status poll that must carry it is already waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
from collections.abc import Sequence
from typing import Any, Final

import orjson
from aiohttp import web

from nvcf_worker import InvocationContext

__all__ = ["OUTPUT_NAME", "create_app", "main", "pattern_block"]

HEALTH_PATH: Final = "/v2/health/ready"
GATE_PATH: Final = "/bench/gate/{token}"
OUTPUT_NAME: Final = "output.bin"
_BLOCK_BYTES: Final = 1024 * 1024
_GATE_TIMEOUT_S: Final = 120.0
_COMMANDS: Final = frozenset({"step", "finish"})
_GATES: Final = web.AppKey("gates", dict[str, "asyncio.Queue[str]"])


def pattern_block() -> bytes:
    """1 MiB that does not compress (a zip entry is stored anyway, this keeps it honest)."""
    seed = hashlib.sha256(b"nvcf-worker bench compat").digest()
    return b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(32768))


def _json(document: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(document), status=status, content_type="application/json")


def _gate(app: web.Application, token: str) -> asyncio.Queue[str]:
    return app[_GATES].setdefault(token, asyncio.Queue())


async def gate(request: web.Request) -> web.Response:
    """`step` or `finish` for the progress request of `token` (queued if it has not started)."""
    command = (await request.text()).strip()
    if command not in _COMMANDS:
        return _json({"error": f"command must be one of {sorted(_COMMANDS)}"}, 400)
    _gate(request.app, request.match_info["token"]).put_nowait(command)
    return _json({"queued": command})


async def _progress(request: web.Request, context: InvocationContext) -> web.Response:
    token = request.headers.get("X-Bench-Token", "")
    if not token:
        return _json({"error": "progress needs X-Bench-Token"}, 400)
    commands = _gate(request.app, token)
    before: list[int] = []
    after: list[int] = []
    try:
        while True:
            step = len(before)
            before.append(time.time_ns())
            context.report_progress(min(step, 99), {"step": step})
            after.append(time.time_ns())
            async with asyncio.timeout(_GATE_TIMEOUT_S):
                command = await commands.get()
            if command == "finish":
                break
    except TimeoutError:
        return _json({"error": f"no gate command in {_GATE_TIMEOUT_S:g} s"}, 504)
    finally:
        request.app[_GATES].pop(token, None)
    return _json({"steps": len(before) - 1, "before_ns": before, "after_ns": after})


def _write_output(context: InvocationContext, size: int) -> str:
    block = pattern_block()
    digest = hashlib.sha256()
    with context.open_output(OUTPUT_NAME) as stream:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            stream.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


async def _large(request: web.Request, context: InvocationContext) -> web.Response:
    try:
        size = int(request.headers.get("X-Bench-Bytes", ""))
    except ValueError:
        size = -1
    if size < 1:
        return _json({"error": "large needs X-Bench-Bytes, a positive integer"}, 400)
    started = time.perf_counter()
    sha256 = await asyncio.to_thread(_write_output, context, size)
    write_s = time.perf_counter() - started
    document = {"bytes": size, "sha256": sha256, "write_s": write_s}
    return _json({**document, "written_at_ns": time.time_ns()})


async def invoke(request: web.Request) -> web.Response:
    body = await request.read()
    action = request.headers.get("X-Bench-Action", "ping")
    if action == "ping":
        try:
            return _json({"pong": orjson.loads(body)})
        except orjson.JSONDecodeError as error:
            return _json({"error": f"body is not JSON: {error}"}, 400)
    context = InvocationContext.from_headers(request.headers)
    if action == "progress":
        return await _progress(request, context)
    if action == "large":
        return await _large(request, context)
    return _json({"error": f"unknown X-Bench-Action {action!r}"}, 400)


async def ready(request: web.Request) -> web.Response:
    return web.Response(status=200)


def create_app() -> web.Application:
    app = web.Application()
    app[_GATES] = {}
    app.router.add_get(HEALTH_PATH, ready)
    app.router.add_post(GATE_PATH, gate)
    app.router.add_post("/", invoke)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the function of `python -m bench compat`")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    options = parser.parse_args(argv)
    web.run_app(create_app(), host=options.host, port=options.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
