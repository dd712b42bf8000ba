"""The `NVCF-*` request headers a function container receives, and how their values are parsed.

Names are the literal ones NVIDIA's worker sends; parsing is strict: a value that would make an
unsafe path or a wrong number raises `InvalidHeader` naming the header and the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from nvcf_worker.errors import InvalidHeader

__all__ = [
    "ASSET_DIR",
    "BACKEND",
    "DEFAULT_ASSET_BASE_DIR",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_RESPONSE_BASE_DIR",
    "ENV",
    "FUNCTION_ASSET_IDS",
    "FUNCTION_ID",
    "FUNCTION_NAME",
    "FUNCTION_VERSION_ID",
    "INSTANCE_TYPE",
    "INVOCATION_REGION",
    "LARGE_OUTPUT_DIR",
    "MAX_RESPONSE_SIZE_BYTES",
    "NCA_ID",
    "NSPECT_ID",
    "POLL_SECONDS",
    "REGION",
    "REQUEST_ID",
    "SUB",
    "WORKER_OWNED_HEADERS",
    "is_safe_component",
    "normalize_headers",
    "parse_absolute_dir",
    "parse_asset_ids",
    "parse_int",
    "parse_safe_component",
]

REQUEST_ID = "NVCF-REQID"
SUB = "NVCF-SUB"
NCA_ID = "NVCF-NCAID"
FUNCTION_NAME = "NVCF-FUNCTION-NAME"
FUNCTION_ID = "NVCF-FUNCTION-ID"
FUNCTION_VERSION_ID = "NVCF-FUNCTION-VERSION-ID"
ASSET_DIR = "NVCF-ASSET-DIR"
LARGE_OUTPUT_DIR = "NVCF-LARGE-OUTPUT-DIR"
MAX_RESPONSE_SIZE_BYTES = "NVCF-MAX-RESPONSE-SIZE-BYTES"
NSPECT_ID = "NVCF-NSPECTID"
BACKEND = "NVCF-BACKEND"
INSTANCE_TYPE = "NVCF-INSTANCETYPE"
REGION = "NVCF-REGION"
ENV = "NVCF-ENV"
FUNCTION_ASSET_IDS = "NVCF-FUNCTION-ASSET-IDS"
INVOCATION_REGION = "NVCF-INVOCATION-REGION"
POLL_SECONDS = "NVCF-POLL-SECONDS"

#: Headers only the worker may set; a caller's copy of any of them never reaches the container.
WORKER_OWNED_HEADERS: frozenset[str] = frozenset(
    {
        REQUEST_ID,
        SUB,
        NCA_ID,
        FUNCTION_NAME,
        FUNCTION_ID,
        FUNCTION_VERSION_ID,
        ASSET_DIR,
        LARGE_OUTPUT_DIR,
        MAX_RESPONSE_SIZE_BYTES,
        NSPECT_ID,
        BACKEND,
        INSTANCE_TYPE,
        REGION,
        ENV,
        FUNCTION_ASSET_IDS,
    }
)

DEFAULT_ASSET_BASE_DIR = "/var/inf/inputAssets"
DEFAULT_RESPONSE_BASE_DIR = "/var/inf/response"
#: NVIDIA's helper library assumes 5 MB (decimal) when the header is absent.
DEFAULT_MAX_RESPONSE_BYTES = 5_000_000

# One path component, never "." or "..", no separators, no NUL, at most 128 characters.
_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_INTEGER = re.compile(r"-?[0-9]{1,19}")


def normalize_headers(headers: Mapping[str, Any] | Iterable[tuple[Any, Any]]) -> dict[str, Any]:
    """Return a dict keyed by upper-case header name; the first value of a repeated name wins.

    Accepts any mapping (a dict, aiohttp's or Starlette's headers, PyTriton `request.parameters`)
    or an iterable of `(name, value)` pairs such as ASGI's raw header list; byte names and values
    are decoded as latin-1, as HTTP/1.1 defines them.
    """
    # Multi-dicts (aiohttp, Starlette) yield a repeated name once per value from items().
    items: Iterable[tuple[Any, Any]] = headers.items() if isinstance(headers, Mapping) else headers
    result: dict[str, Any] = {}
    for name, value in items:
        key = name.decode("latin-1") if isinstance(name, bytes) else str(name)
        key = key.upper()
        if key not in result:
            result[key] = value.decode("latin-1") if isinstance(value, bytes) else value
    return result


def is_safe_component(value: str) -> bool:
    """True when `value` can be used as one file name inside a directory and nothing more."""
    return _SAFE_COMPONENT.fullmatch(value) is not None


def _as_text(header: str, value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise InvalidHeader(header, value, "expected a string")


def parse_safe_component(header: str, value: Any) -> str:
    """Parse an id that becomes a path component (a request id, an asset id)."""
    text = _as_text(header, value)
    if not is_safe_component(text):
        raise InvalidHeader(
            header,
            value,
            "must be a single path component of letters, digits, '.', '_' or '-' "
            "(at most 128 characters, not starting with '.')",
        )
    return text


def parse_int(header: str, value: Any, *, minimum: int | None = 0) -> int:
    """Parse a decimal integer header; below `minimum` (when given) is an error."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        text = _as_text(header, value)
        if _INTEGER.fullmatch(text) is None:
            raise InvalidHeader(header, value, "expected a decimal integer")
        number = int(text)
    if minimum is not None and number < minimum:
        raise InvalidHeader(header, value, f"must be at least {minimum}")
    return number


def parse_absolute_dir(header: str, value: Any) -> str:
    """Parse a directory header: absolute, no `..` segment, no NUL byte; returns the text."""
    text = _as_text(header, value)
    if "\x00" in text:
        raise InvalidHeader(header, value, "contains a NUL byte")
    if not text.startswith("/"):
        raise InvalidHeader(header, value, "must be an absolute directory")
    if ".." in text.split("/"):
        raise InvalidHeader(header, value, "must not contain a '..' segment")
    return text


def parse_asset_ids(header: str, value: Any) -> tuple[str, ...]:
    """Parse a comma-separated asset id list; blanks are ignored, each id must be a safe name."""
    text = _as_text(header, value)
    return tuple(parse_safe_component(header, part) for part in text.split(",") if part.strip())
