"""A test inference server: tells what it was started with, answers slowly on request.

    python env_server.py --port N [args...]

- `GET /v2/health/ready`: 200.
- `POST /`: `{"argv", "env", "secrets"}` (env: the NVCF_* / INFERENCE_PORT / TEST_* variables;
  secrets: the JSON at $NVCF_SECRETS_PATH); a body `{"sleep": s}` answers after `s` seconds,
  logging `request started` first.
With `EXIT_AT_START=<code>` in its environment it prints a line and exits with that code (with
`TEST_EXIT_IF_EXISTS=<path>`: exits 3 while that file exists); with
`TEST_UNHEALTHY=1` its health endpoint answers 503.
"""

import asyncio
import json
import os
import sys
from pathlib import Path

from aiohttp import web

if os.environ.get("EXIT_AT_START"):
    print("env_server: refusing to start (EXIT_AT_START)", flush=True)
    sys.exit(int(os.environ["EXIT_AT_START"]))
if os.environ.get("TEST_EXIT_IF_EXISTS") and Path(os.environ["TEST_EXIT_IF_EXISTS"]).exists():
    print("env_server: refusing to start (TEST_EXIT_IF_EXISTS)", flush=True)
    sys.exit(3)


async def infer(request: web.Request) -> web.Response:
    raw = await request.read()
    body = json.loads(raw) if raw else {}
    if isinstance(body, dict) and body.get("sleep"):
        print("request started", flush=True)
        await asyncio.sleep(float(body["sleep"]))
    secrets_path = os.environ.get("NVCF_SECRETS_PATH")
    secrets = None
    if secrets_path:
        secrets = json.loads(Path(secrets_path).read_text())  # noqa: ASYNC240 - a tiny file
    env = {
        key: value
        for key, value in os.environ.items()
        if key.startswith(("NVCF_", "TEST_")) or key == "INFERENCE_PORT"
    }
    return web.json_response({"argv": sys.argv[1:], "env": env, "secrets": secrets})


async def health(request: web.Request) -> web.Response:
    return web.Response(status=503 if os.environ.get("TEST_UNHEALTHY") else 200)


app = web.Application()
app.router.add_get("/v2/health/ready", health)
app.router.add_post("/", infer)
port = int(sys.argv[sys.argv.index("--port") + 1])
web.run_app(app, host="127.0.0.1", port=port, print=None)
