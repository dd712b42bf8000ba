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

__all__ = ["DEFAULT_SECRETS_PATH", "read_secrets"]

DEFAULT_SECRETS_PATH = Path("/var/secrets/secrets.json")


def read_secrets(path: str | os.PathLike[str] = DEFAULT_SECRETS_PATH) -> dict[str, Any]:
    """Read the secrets file (`/var/secrets/secrets.json` by default) as a JSON object.

    Raises `SecretsError` when the file is missing, unreadable, not UTF-8 JSON, or not an object.
    """
    secrets_path = Path(path)
    try:
        raw = secrets_path.read_bytes()
    except FileNotFoundError:
        raise SecretsNotFound(
            f"no secrets file at {secrets_path}: NVCF mounts it only for functions created with "
            "secrets (or pass the path of a local file)"
        ) from None
    except IsADirectoryError:
        raise SecretsError(f"secrets path {secrets_path} is a directory, not a JSON file") from None
    except PermissionError:
        raise SecretsError(f"secrets file {secrets_path} is not readable by this process") from None
    except OSError as exc:
        raise SecretsError(f"cannot read secrets file {secrets_path}: {exc.strerror}") from None
    try:
        document = json.loads(raw)
    except UnicodeDecodeError:
        raise SecretsError(f"secrets file {secrets_path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        # exc.msg and the position say what is wrong without echoing any secret.
        raise SecretsError(
            f"secrets file {secrets_path} is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}"
        ) from None
    if not isinstance(document, dict):
        raise SecretsError(
            f"secrets file {secrets_path} must hold a JSON object, not {type(document).__name__}"
        )
    return document
