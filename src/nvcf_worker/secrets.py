"""Secrets NVCF mounts into a function container as one JSON object.

`read_secrets()` returns it as a dict and explains exactly what is wrong when it cannot; error
messages never contain secret values.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nvcf_worker.errors import SecretsError, SecretsNotFound

__all__ = ["DEFAULT_SECRETS_PATH", "SECRETS_PATH_ENV", "read_secrets", "secrets_path"]

DEFAULT_SECRETS_PATH = Path("/var/secrets/secrets.json")
SECRETS_PATH_ENV = "NVCF_SECRETS_PATH"
"""Where the secrets file is instead, when set (`nvcf-sidecar dev` sets it for a function
configured with `secrets`); NVCF itself never sets it."""


def secrets_path() -> Path:
    """`$NVCF_SECRETS_PATH` when set and not empty, else `/var/secrets/secrets.json`."""
    return Path(os.environ.get(SECRETS_PATH_ENV) or DEFAULT_SECRETS_PATH)


def read_secrets(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read the secrets file as a JSON object: `path`, else `secrets_path()` (by default
    `/var/secrets/secrets.json`).

    Raises `SecretsError` when the file is missing, unreadable, not UTF-8 JSON, or not an object.
    """
    source = Path(path) if path is not None else secrets_path()
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise SecretsNotFound(
            f"no secrets file at {source}: NVCF mounts it only for functions created with "
            "secrets (or pass the path of a local file)"
        ) from None
    except IsADirectoryError:
        raise SecretsError(f"secrets path {source} is a directory, not a JSON file") from None
    except PermissionError:
        raise SecretsError(f"secrets file {source} is not readable by this process") from None
    except OSError as exc:
        raise SecretsError(f"cannot read secrets file {source}: {exc.strerror}") from None
    try:
        document = json.loads(raw)
    except UnicodeDecodeError:
        raise SecretsError(f"secrets file {source} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        # exc.msg and the position say what is wrong without echoing any secret.
        raise SecretsError(
            f"secrets file {source} is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}"
        ) from None
    if not isinstance(document, dict):
        raise SecretsError(
            f"secrets file {source} must hold a JSON object, not {type(document).__name__}"
        )
    return document
