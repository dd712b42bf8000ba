"""streaming: a BYOC function on aiohttp that streams tokens as server-sent events.

    python examples/byoc/streaming/server.py --port 8000

- `GET /v2/health/ready`: 200 once the server listens (what the sidecar polls).
- `POST /generate` with `Accept: text/event-stream` and an optional JSON object
  `{"delay": 0.1}`: one event per token of a canned sentence, `data: {"token": "..."}`,
  `delay` seconds apart, then `data: [DONE]`. The sidecar relays each event as it is written
  (passthrough mode), so the caller sees tokens arrive one by one.
- `POST /generate` without that `Accept`: the whole answer at once, `{"text": ..., "tokens": n}`.

A body that is not a JSON object, or a `delay` outside 0-5 s, is answered 400 `{"error": ...}`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Final

from aiohttp import web

from nvcf_worker import configure_logging
from nvcf_worker.integrations.aiohttp import get_context, nvcf_context_middleware

__all__ = ["DONE", "SENTENCE", "make_app", "tokens"]

log = logging.getLogger("streaming")

SENTENCE: Final = (
    "NVIDIA Cloud Functions relay server-sent events from the function to the caller "
    "one event at a time, so every token shows up as soon as it is generated."
)
DONE: Final = "[DONE]"
DEFAULT_DELAY: Final = 0.1
MAX_DELAY: Final = 5.0


def tokens(text: str = SENTENCE) -> list[str]:
    """`text` split into word tokens that keep their leading space, as LLM tokens do."""
    words = text.split(" ")
    return [words[0], *(f" {word}" for word in words[1:])]


def _parse_delay(raw: bytes) -> float:
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError as error:
        raise ValueError(f"the body is not JSON: {error}") from None
    if not isinstance(body, Mapping):
        raise ValueError(f"the body must be a JSON object, not {type(body).__name__}")
    delay = body.get("delay", DEFAULT_DELAY)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= MAX_DELAY:
        raise ValueError(f"'delay' must be a number of seconds from 0 to {MAX_DELAY:g}")
    return float(delay)


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def generate(request: web.Request) -> web.StreamResponse:
    get_context(request)  # no NVCF-REQID: the middleware answers 400
    try:
        delay = _parse_delay(await request.read())
    except ValueError as error:
        log.warning("bad request: %s", error)
        return web.json_response({"error": str(error)}, status=400)
    pieces = tokens()
    if "text/event-stream" not in request.headers.get("Accept", ""):
        return web.json_response({"text": SENTENCE, "tokens": len(pieces)})
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    for index, token in enumerate(pieces):
        if index:
            await asyncio.sleep(delay)  # stands in for generating the next token
        await response.write(f"data: {json.dumps({'token': token})}\n\n".encode())
    await response.write(f"data: {DONE}\n\n".encode())
    await response.write_eof()
    log.info("streamed %d tokens", len(pieces))  # the request id is on the line
    return response


def make_app() -> web.Application:
    app = web.Application(middlewares=[nvcf_context_middleware])
    app.router.add_get("/v2/health/ready", health)
    app.router.add_post("/generate", generate)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="listen address (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="listen port (8000)")
    args = parser.parse_args()
    configure_logging()
    log.info("streaming function listening on http://%s:%d", args.host, args.port)
    web.run_app(make_app(), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
