"""`nvcf-sidecar invoke FUNCTION_ID`: call a function on the local platform (or NVCF) as a client.

Through pexec by default; with `--gateway`, the way NVIDIA's CLI does: any `--method` on any
`--path` of the base URL, the function named by `function-id` headers. Flags and their checks live
here; the call itself is `caller.invoke`. The answer goes to stdout,
status and progress to stderr; the exit status says how it ended (`errors.EXIT_*`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Final, NoReturn
from urllib.parse import urlsplit

import orjson

from nvcf_sidecar.client.caller import InvokeSettings, invoke
from nvcf_sidecar.client.display import InvokeDisplay
from nvcf_sidecar.client.errors import EXIT_INTERRUPTED, EXIT_OK, InvokeError
from nvcf_sidecar.protocol import MAX_POLL_SECONDS, MIN_POLL_SECONDS

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_API_KEY",
    "DEFAULT_TIMEOUT_SECONDS",
    "DEFAULT_URL",
    "URL_ENV",
    "add_arguments",
    "run_command",
]

URL_ENV: Final = "NVCF_URL"
API_KEY_ENV: Final = "NVCF_API_KEY"
DEFAULT_URL: Final = "http://127.0.0.1:8080"
"""Where `nvcf-sidecar dev` serves the platform by default."""
DEFAULT_API_KEY: Final = "nvcf-local-key"
"""The key `LocalStack` and `nvcf-sidecar dev` accept by default."""
DEFAULT_TIMEOUT_SECONDS: Final = 3600.0
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
"""Methods whose gateway call sends `{}` when no --data is given (the others send no body)."""


def _uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {value!r}") from None


def _poll_seconds(value: str) -> int:
    try:
        seconds = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if not MIN_POLL_SECONDS <= seconds <= MAX_POLL_SECONDS:
        raise argparse.ArgumentTypeError(
            f"must be {MIN_POLL_SECONDS} to {MAX_POLL_SECONDS}: {seconds}"
        )
    return seconds


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return number


def _base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise argparse.ArgumentTypeError(f"not an http(s) base URL: {value!r}")
    return value.rstrip("/")


def _path(value: str) -> str:
    if not value.startswith("/") or any(c <= " " or c == "\x7f" for c in value):
        raise argparse.ArgumentTypeError(
            f"not a path (and query) starting with '/' without spaces: {value!r}"
        )
    return value


def _method(value: str) -> str:
    if not _HEADER_NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(f"not an HTTP method: {value!r}")
    return value.upper()


def _header(value: str) -> tuple[str, str]:
    name, colon, text = value.partition(":")
    name, text = name.strip(), text.strip()
    if not colon or not _HEADER_NAME.fullmatch(name) or "\r" in text or "\n" in text:
        raise argparse.ArgumentTypeError(f"not 'Name: value': {value!r}")
    return name, text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `invoke` subcommand's flags."""
    add = parser.add_argument
    add("function_id", type=_uuid, metavar="FUNCTION_ID", help="the function to call (a UUID)")
    add("--version", dest="version_id", type=_uuid, metavar="FVID", help="one version of it")
    add(
        "--data",
        metavar="JSON|@FILE",
        help="request body: inline JSON, @FILE (streamed as is) or @- (stdin); default {}",
    )
    add(
        "--asset",
        dest="assets",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="upload FILE as an input asset and name it in NVCF-INPUT-ASSET-REFERENCES (repeat)",
    )
    add(
        "--poll-seconds",
        type=_poll_seconds,
        metavar="N",
        help=f"NVCF-POLL-SECONDS of the call and of each status poll "
        f"({MIN_POLL_SECONDS}-{MAX_POLL_SECONDS}; the platform's default when absent)",
    )
    add(
        "--out",
        type=Path,
        metavar="DIR",
        help="where a large response is unpacked (./nvcf-output/<request id>)",
    )
    add("--stream", action="store_true", help="ask for server-sent events, print them as they come")
    add(
        "--gateway",
        action="store_true",
        help="the gateway form (as NVIDIA's CLI calls): --method on BASE/--path, the function "
        "named by function-id (and function-version-id) headers instead of pexec's path; the "
        "function's inference URL is not applied; no --asset",
    )
    add(
        "--path",
        type=_path,
        metavar="/PATH[?QUERY]",
        help="with --gateway: the path and query the container receives (default /)",
    )
    add(
        "--method",
        type=_method,
        metavar="METHOD",
        help="with --gateway: the HTTP method (default POST); without --data, POST, PUT and "
        "PATCH send {} and the others no body",
    )
    add(
        "--url",
        type=_base_url,
        default=os.environ.get(URL_ENV) or DEFAULT_URL,
        metavar="BASE",
        help=f"the platform's base URL (${URL_ENV}, else {DEFAULT_URL})",
    )
    add(
        "--api-key",
        default=os.environ.get(API_KEY_ENV) or DEFAULT_API_KEY,
        metavar="KEY",
        help=f"bearer token (${API_KEY_ENV}, else the local stack's {DEFAULT_API_KEY})",
    )
    add(
        "--header",
        dest="headers",
        action="append",
        type=_header,
        default=[],
        metavar="'NAME: VALUE'",
        help="extra header of the call and its polls; replaces a default of that name (repeat)",
    )
    add(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="S",
        help=f"limit on the whole command ({DEFAULT_TIMEOUT_SECONDS:g})",
    )
    parser.epilog = (
        "exit status: 0 answered (2xx, 302); 1 local file error; 2 bad flags; 3 refused (HTTP "
        "4xx); 4 function or platform failed (HTTP 5xx, broken answer); 5 timed out (HTTP 504 or "
        "408, or --timeout); 6 platform unreachable; 130 interrupted. "
        "gRPC functions (inferenceUrl /grpc) are not called with this command: a gRPC client "
        "(grpcio, grpcurl) calls the platform's gRPC entry point (--grpc-proxy-port; dev prints "
        "it) with 'authorization: Bearer KEY' and 'function-id: ID' metadata (docs/invocation.md)"
    )
    parser.set_defaults(_invoke_parser=parser)


def run_command(args: argparse.Namespace) -> int:
    """Invoke once; returns the exit status (see the module docstring of `errors`)."""
    if not args.gateway and (args.path is not None or args.method is not None):
        _usage_error(args, "--path and --method need --gateway (pexec is a POST on its own path)")
    if args.gateway and args.assets:
        _usage_error(args, "--gateway takes no --asset (the gateway form reads no asset header)")
    method = args.method or "POST"
    settings = InvokeSettings(
        function_id=args.function_id,
        version_id=args.version_id,
        base_url=args.url,
        api_key=args.api_key,
        body=_body(args),
        assets=tuple(_asset(args, path) for path in args.assets),
        poll_seconds=args.poll_seconds,
        output_dir=args.out,
        stream=args.stream,
        headers=tuple(args.headers),
        timeout=args.timeout,
        gateway_path=(args.path or "/") if args.gateway else None,
        method=method,
    )
    display = InvokeDisplay()
    try:
        asyncio.run(invoke(settings, display, sys.stdout.buffer))
    except InvokeError as error:
        display.error(str(error))
        return error.exit_status
    except KeyboardInterrupt:
        display.error("interrupted")
        return EXIT_INTERRUPTED
    return EXIT_OK


def _usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    parser: argparse.ArgumentParser = args._invoke_parser
    parser.error(message)  # exits 2


def _body(args: argparse.Namespace) -> bytes | Path:
    """`--data` as bytes (inline, stdin) or a file to stream; inline text must be JSON unless a
    `--header 'Content-Type: ...'` says otherwise."""
    data: str | None = args.data
    if data is None:
        bodiless = args.gateway and (args.method or "POST") not in _BODY_METHODS
        return b"" if bodiless else b"{}"
    if data == "@-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        path = Path(data[1:])
        if not path.is_file():
            _usage_error(args, f"--data {data}: no such file")
        return path
    if not any(name.lower() == "content-type" for name, _ in args.headers):
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError as error:
            _usage_error(
                args,
                f"--data is not JSON ({error}); "
                "send other text with --header 'Content-Type: <type>'",
            )
    return data.encode()


def _asset(args: argparse.Namespace, path: Path) -> Path:
    if not path.is_file():
        _usage_error(args, f"--asset {path}: no such file")
    return path
