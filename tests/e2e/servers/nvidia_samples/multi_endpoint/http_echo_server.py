"""Several routes on one server, in the shape of NVIDIA's fastapi_multi_endpoint_sample.

POST /echo `{"message": "hi", "delay": 0, "repeats": 1, "stream": false}` answers the message
repeated, as a JSON string or, with `stream`, as server-sent events (one per repeat, each with
the request id from the helper module); GET /yeet answers "yeet"; GET /query echoes its query
parameters. GET /health is 200.
Start: `uvicorn http_echo_server:app --host=127.0.0.1 --port=8000`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from nvcf_worker import compat as helpers  # the one line that differs from NVIDIA's helpers

app = FastAPI()


class HealthCheck(BaseModel):
    status: str = "OK"


class Echo(BaseModel):
    message: str
    delay: float = 0.000001
    repeats: int = 1
    stream: bool = False


@app.get("/health", status_code=status.HTTP_200_OK, response_model=HealthCheck)
def get_health() -> HealthCheck:
    return HealthCheck(status="OK")


@app.post("/echo", response_model=None)
async def echo(echo: Echo, request: Request) -> str | StreamingResponse:
    request_id = helpers.get_request_id(helpers._uppercase_dict_keys(request.headers))
    if echo.stream:

        def stream_text() -> Iterator[str]:
            for _ in range(echo.repeats):
                time.sleep(echo.delay)
                yield f"id: {request_id}\ndata: {echo.message}\n\n"

        return StreamingResponse(stream_text(), media_type="text/event-stream")
    await asyncio.sleep(echo.delay)
    return echo.message * echo.repeats


@app.get("/yeet")
async def yeet() -> str:
    return "yeet"


@app.get("/query")
async def query_params(
    name: str | None = None, age: int | None = None, active: bool = True
) -> dict[str, Any]:
    return {
        "message": "Query parameters received",
        "parameters": {"name": name, "age": age, "active": active},
    }


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.getenv("PORT", "8000")))
