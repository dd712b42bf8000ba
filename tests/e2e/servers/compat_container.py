"""An inference container for the compatibility-mode end-to-end tests, steered by `X-E2e-Action`.

Usage: `compat_container.py PORT`. `GET /v2/health/ready` is 200; every other path invokes:

* `echo` (default): `{"body": <the JSON request body, or null>}`;
* `progress`: writes `X-E2e-Steps` (3) progress files, one every `X-E2e-Interval-Ms` (800) ms,
  with our library (atomic rename), then answers `{"done": true, "steps": n}`; with
  `X-E2e-Writer: inplace` it writes them the way NVIDIA's helper does (open 'w', dump in place,
  many small writes) and `X-E2e-Rewrites` (1) times per step;
* `big-progress`: writes a 300 KB progress file, waits `X-E2e-Seconds` (2), answers `{"ok": 1}`;
* `sleep`: answers `{"slept": S}` after `X-E2e-Seconds` seconds;
* `error`: answers status `X-E2e-Status` (500) with `{"error": "model exploded"}`;
* `large-body`: answers `X-E2e-Length` bytes of a deterministic pattern (`pattern_bytes`);
* `outputs`: writes `result.json`, `sub/data.bin` (`X-E2e-Length` bytes, 1 MiB default),
  `unfinished.bin.partial`, a symlink to a file outside the directory and a FIFO into
  NVCF-LARGE-OUTPUT-DIR, answers `{"written": [...]}`;
* `nvidia-helpers`: NVIDIA's sample pattern, unmodified: progress via `update_progress_file`
  semantics written in place, an output file written with plain `open()` under the output path,
  then a small JSON answer;
* `assets`: `{"ids": NVCF-FUNCTION-ASSET-IDS, "files": {name: sha256}}` of NVCF-ASSET-DIR;
* `accepted`: answers 202 with `{"left": n}` until `X-E2e-Polls` (3) polls of the same request id
  were seen, then 200 `{"polled": n}` (a container that drives polling itself).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from aiohttp import web

from nvcf_worker import InvocationContext

PATTERN_BLOCK = hashlib.sha256(b"nvcf-worker e2e").digest() * 2048  # 64 KiB


def pattern_bytes(length: int) -> bytes:
    """The deterministic body of `large-body` (tests rebuild it to compare)."""
    whole, rest = divmod(length, len(PATTERN_BLOCK))
    return PATTERN_BLOCK * whole + PATTERN_BLOCK[:rest]


def write_in_place(path: Path, document: dict[str, object]) -> None:
    """What NVIDIA's helper does: truncate and write in place, here in many small pieces."""
    data = json.dumps(document)
    with open(path, "w") as file:
        for start in range(0, len(data), 7):
            file.write(data[start : start + 7])
            file.flush()


def nvidia_sample(request_parameters: dict[str, str]) -> dict[str, str]:
    """A function body in the style of NVIDIA's samples, unmodified: blocking, in-place writes."""
    out_path = request_parameters["NVCF-LARGE-OUTPUT-DIR"]
    request_id = request_parameters["NVCF-REQID"]
    for percent in (25, 50, 75):
        with open(os.path.join(out_path, "progress"), "w") as file:
            json.dump(
                {"id": request_id, "progress": percent, "partialResponse": {"p": percent}}, file
            )
        time.sleep(0.8)
    with open(os.path.join(out_path, "image.png"), "wb") as file:
        file.write(b"\x89PNG\r\n" + bytes(range(256)) * 64)
    return {"status": "done"}


def digests(directory: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
    }


def build_app() -> web.Application:
    seen_polls: dict[str, int] = {}

    async def ready(_request: web.Request) -> web.Response:
        return web.Response(text="ready")

    async def invoke(request: web.Request) -> web.StreamResponse:
        action = request.headers.get("X-E2e-Action", "echo")
        raw = await request.read()
        headers = request.headers
        output = Path(headers.get("NVCF-LARGE-OUTPUT-DIR", "/nonexistent"))
        request_id = headers.get("NVCF-REQID", "")
        seconds = float(headers.get("X-E2e-Seconds", "2"))
        if action == "echo":
            return web.json_response({"body": json.loads(raw) if raw else None})
        if action == "progress":
            steps = int(headers.get("X-E2e-Steps", "3"))
            interval = float(headers.get("X-E2e-Interval-Ms", "800")) / 1000
            inplace = headers.get("X-E2e-Writer") == "inplace"
            rewrites = int(headers.get("X-E2e-Rewrites", "1"))
            context = InvocationContext.from_headers(headers)
            for step in range(1, steps + 1):
                percent = step * 100 // (steps + 1)
                partial = {"step": step, "text": "x" * (step * 100)}
                if inplace:
                    for _ in range(rewrites):
                        document = {
                            "id": request_id,
                            "progress": percent,
                            "partialResponse": partial,
                        }
                        await asyncio.to_thread(write_in_place, output / "progress", document)
                else:
                    context.report_progress(percent, partial)
                await asyncio.sleep(interval)
            return web.json_response({"done": True, "steps": steps})
        if action == "big-progress":
            document = {"id": request_id, "progress": 10, "partialResponse": {"x": "y" * 300_000}}
            (output / "progress").write_text(json.dumps(document))
            await asyncio.sleep(seconds)
            return web.json_response({"ok": 1})
        if action == "sleep":
            await asyncio.sleep(seconds)
            return web.json_response({"slept": seconds})
        if action == "error":
            status = int(headers.get("X-E2e-Status", "500"))
            return web.json_response({"error": "model exploded"}, status=status)
        if action == "large-body":
            length = int(headers.get("X-E2e-Length", str(6 * 1024 * 1024)))
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = length
            await response.prepare(request)
            whole, rest = divmod(length, len(PATTERN_BLOCK))
            for _ in range(whole):
                await response.write(PATTERN_BLOCK)
            await response.write(PATTERN_BLOCK[:rest])
            await response.write_eof()
            return response
        if action == "outputs":
            length = int(headers.get("X-E2e-Length", str(1024 * 1024)))
            outside = output.parent.parent / f"secret-{request_id}.txt"
            outside.write_text("must never be shipped")
            (output / "result.json").write_text(json.dumps({"answer": 42}))
            (output / "sub").mkdir()
            await asyncio.to_thread(
                (output / "sub" / "data.bin").write_bytes, pattern_bytes(length)
            )
            (output / "unfinished.bin.partial").write_bytes(b"half")
            os.symlink(outside, output / "leak.txt")
            os.mkfifo(output / "pipe")
            return web.json_response({"written": ["result.json", "sub/data.bin"]})
        if action == "nvidia-helpers":
            return web.json_response(await asyncio.to_thread(nvidia_sample, dict(headers)))
        if action == "assets":
            directory = Path(headers.get("NVCF-ASSET-DIR", "/nonexistent"))
            files = await asyncio.to_thread(digests, directory)
            return web.json_response(
                {"ids": headers.get("NVCF-FUNCTION-ASSET-IDS"), "files": files}
            )
        if action == "accepted":
            wanted = int(headers.get("X-E2e-Polls", "3"))
            count = seen_polls.get(request_id, -1) + 1
            seen_polls[request_id] = count
            if count < wanted:
                return web.json_response({"left": wanted - count}, status=202)
            return web.json_response({"polled": count, "at": time.time()})
        raise web.HTTPBadRequest(text=f"unknown X-E2e-Action {action!r}")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_route("*", "/{tail:.*}", invoke)
    return app


def main() -> None:
    web.run_app(build_app(), host="127.0.0.1", port=int(sys.argv[1]), print=None)


if __name__ == "__main__":
    main()
