"""A secrets reader in the shape of NVIDIA's secrets_sample, plus one route on the helper module.

POST /test `{"key": ""}` answers the function's and the account's secrets the way NVIDIA's
sample reads them: the files at `$SECRETS_PATH` (default `/var/secrets/secrets.json`) and
`$ACCOUNTS_SECRETS_PATH`, `{}` for a missing or bad file, one key when `key` is given.
POST /helpers answers the same from `helpers.get_secrets()`. GET /health is 200.
Start: `uvicorn http_server:app --host=127.0.0.1 --port=8000`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import uvicorn
from fastapi import FastAPI, status
from pydantic import BaseModel

from nvcf_worker import compat as helpers  # the one line that differs from NVIDIA's helpers

logging.basicConfig(level=logging.INFO)
logger = logging.getLogger(__name__)

app = FastAPI()

SECRETS_PATH = os.getenv("SECRETS_PATH", "/var/secrets/secrets.json")
ACCOUNTS_SECRETS_PATH = os.getenv("ACCOUNTS_SECRETS_PATH", "/var/secrets/accounts-secrets.json")


class HealthCheck(BaseModel):
    status: str = "OK"


class SecretRequest(BaseModel):
    key: str = ""


@app.get("/health", status_code=status.HTTP_200_OK, response_model=HealthCheck)
def get_health() -> HealthCheck:
    return HealthCheck(status="OK")


def pick(secrets: dict[str, Any], key: str) -> dict[str, Any]:
    if not key:
        return secrets
    return {key: secrets[key]} if key in secrets else {}


def read_secret_file(path: str, key: str) -> dict[str, Any]:
    """A file's secrets, `{}` when it is missing, empty or not a JSON object (logged)."""
    try:
        with open(path) as file:
            content = file.read()
    except OSError as error:
        logger.error("secret file not readable at %s: %s", path, error.strerror)
        return {}
    if not content.strip():
        logger.warning("secret file at %s is empty", path)
        return {}
    try:
        secrets = json.loads(content)
    except json.JSONDecodeError as error:
        logger.error("invalid JSON in secret file at %s: %s", path, error.msg)
        return {}
    return pick(secrets, key) if isinstance(secrets, dict) else {}


@app.post("/test")
async def get_secrets(request: SecretRequest) -> dict[str, Any]:
    return {
        "function secrets": read_secret_file(SECRETS_PATH, request.key),
        "account secrets": read_secret_file(ACCOUNTS_SECRETS_PATH, request.key),
    }


@app.post("/helpers")
async def get_secrets_with_helpers(request: SecretRequest) -> dict[str, Any]:
    return {"function secrets": pick(helpers.get_secrets(), request.key)}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.getenv("PORT", "8000")))
