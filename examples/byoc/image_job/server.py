"""image_job: a long BYOC job on aiohttp with input assets, progress and a large output file.

    python examples/byoc/image_job/server.py --port 8000

- `GET /v2/health/ready`: 200 once the server listens (what the sidecar polls).
- `POST /infer` with an optional JSON object `{"seed": 0, "step_seconds": 1.0}`: four steps,
  each reported as progress (`{"step": i, "of": 4, "stage": ...}`, 25/50/75/100 %):
  1. `assets`: reads every input asset in `NVCF-ASSET-DIR` (size and SHA-256);
  2. `render`: makes a 1024 x 2048 float32 "image" (8 MiB) from the seed and the assets' digests;
  3. `encode`: writes it as `image.npy` with `open_output` (`.partial`, renamed when complete);
  4. `verify`: hashes the written file.
  The answer is `{"request_id", "seed", "assets": {id: {"bytes", "sha256"}}, "outputs": [...]}`;
  since the job leaves an output file, the sidecar ships it with that answer as a zip (302).

A body that is not a JSON object, or a bad `seed` / `step_seconds`, is answered 400
`{"error": ...}` (the sidecar turns it into a problem+json for the caller).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from aiohttp import web

from nvcf_worker import AssetNotFound, InvocationContext, configure_logging
from nvcf_worker.integrations.aiohttp import get_context, nvcf_context_middleware

__all__ = ["IMAGE_SHAPE", "OUTPUT_NAME", "STEPS", "make_app", "npy_bytes", "render"]

log = logging.getLogger("image_job")

STEPS: Final = ("assets", "render", "encode", "verify")
OUTPUT_NAME: Final = "image.npy"
IMAGE_SHAPE: Final = (1024, 2048)  # float32: 8 MiB, over the 5 MiB direct-response limit
MAX_STEP_SECONDS: Final = 30.0
_HASH_BLOCK: Final = 1024 * 1024


class BadJob(ValueError):
    """The request body does not describe a job this function can run."""


def render(seed: int, digests: Sequence[str]) -> npt.NDArray[np.float32]:
    """The job's deterministic "image": uniform noise seeded by `seed` and the assets' digests."""
    mixed = hashlib.sha256(json.dumps([seed, list(digests)]).encode()).digest()
    rng = np.random.default_rng(int.from_bytes(mixed[:8], "big"))
    return rng.random(IMAGE_SHAPE, dtype=np.float32)


def npy_bytes(image: npt.NDArray[np.float32]) -> bytes:
    """`image` in `.npy` format, exactly as the job writes `image.npy`."""
    buffer = io.BytesIO()
    np.save(buffer, image)
    return buffer.getvalue()


def _parse_job(raw: bytes) -> tuple[int, float]:
    """`(seed, step_seconds)` from the request body; BadJob names what is wrong."""
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError as error:
        raise BadJob(f"the body is not JSON: {error}") from None
    if not isinstance(body, Mapping):
        raise BadJob(f"the body must be a JSON object, not {type(body).__name__}")
    seed = body.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise BadJob(f"'seed' must be a non-negative integer, not {seed!r}")
    step_seconds = body.get("step_seconds", 1.0)
    if (
        isinstance(step_seconds, bool)
        or not isinstance(step_seconds, int | float)
        or not 0 <= step_seconds <= MAX_STEP_SECONDS
    ):
        raise BadJob(f"'step_seconds' must be a number from 0 to {MAX_STEP_SECONDS:g}")
    return seed, float(step_seconds)


def _file_digest(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while block := file.read(_HASH_BLOCK):
            digest.update(block)
            size += len(block)
    return {"bytes": size, "sha256": digest.hexdigest()}


def _read_assets(ctx: InvocationContext) -> dict[str, dict[str, Any]]:
    # iter_assets yields in NVCF-FUNCTION-ASSET-IDS order and raises AssetNotFound for a gap.
    return {path.name: _file_digest(path) for path in ctx.iter_assets()}


def _write_image(ctx: InvocationContext, image: npt.NDArray[np.float32]) -> None:
    # Written as image.npy.partial and renamed when complete: the sidecar never ships half.
    with ctx.open_output(OUTPUT_NAME) as stream:
        np.save(stream, image)


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def infer(request: web.Request) -> web.Response:
    ctx = get_context(request)  # no NVCF-REQID: the middleware answers 400
    try:
        seed, step_seconds = _parse_job(await request.read())
    except BadJob as error:
        log.warning("bad job: %s", error)
        return web.json_response({"error": str(error)}, status=400)

    async def step(number: int, **partial: Any) -> None:
        ctx.report_progress(
            number * 100 // len(STEPS),
            {"step": number, "of": len(STEPS), "stage": STEPS[number - 1], **partial},
        )
        log.info("step %d of %d: %s", number, len(STEPS), STEPS[number - 1])
        if number < len(STEPS):
            await asyncio.sleep(step_seconds)  # stands in for real work the caller waits for

    try:
        assets = await asyncio.to_thread(_read_assets, ctx)
    except AssetNotFound as error:
        log.error("input asset missing: %s", error)
        return web.json_response({"error": str(error)}, status=500)
    await step(1, assets=len(assets))
    image = await asyncio.to_thread(render, seed, [a["sha256"] for a in assets.values()])
    await step(2, shape=list(image.shape))
    await asyncio.to_thread(_write_image, ctx, image)
    await step(3, output=OUTPUT_NAME)
    written = await asyncio.to_thread(_file_digest, ctx.output_dir / OUTPUT_NAME)
    await step(4, **written)
    output = {"name": OUTPUT_NAME, "shape": list(image.shape), "dtype": str(image.dtype)}
    return web.json_response(
        {
            "request_id": ctx.request_id,
            "seed": seed,
            "assets": assets,
            "outputs": [{**output, **written}],
        }
    )


def make_app() -> web.Application:
    app = web.Application(middlewares=[nvcf_context_middleware])
    app.router.add_get("/v2/health/ready", health)
    app.router.add_post("/infer", infer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="listen address (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="listen port (8000)")
    args = parser.parse_args()
    configure_logging()
    log.info("image_job listening on http://%s:%d", args.host, args.port)
    web.run_app(make_app(), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
