"""`nvcf-sidecar dev -- <command>`: the whole local NVCF stack around one function, one command.

Builds a `FunctionSpec` from the flags, starts `LocalStack` (NATS, the platform, the function's
server, its sidecar) with every child's output copied to stdout as `[name] line`, prints the
invocation endpoint and copy-paste `curl` lines, and runs until SIGINT or SIGTERM (exit 0). A child
that exits meanwhile is reported by name and status and the stack is stopped (exit 1).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from types import FrameType
from typing import Final, NoReturn

from nvcf_sidecar.platform.stack import (
    HOST,
    ChildExited,
    FunctionSpec,
    LocalStack,
    StackError,
    StackProcess,
)

__all__ = ["add_arguments", "run_command"]

_PREFIX: Final = "[dev] "
_POLL_INTERVAL: Final = 0.2
_EXAMPLE_BODY: Final = '{"hello": "world"}'


class _Interrupted(BaseException):
    """SIGINT or SIGTERM arrived while the stack was starting."""


def _uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {value!r}") from None


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {value!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return port


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {number}")
    return number


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return number


def _path(value: str) -> str:
    if value and not value.startswith("/"):
        raise argparse.ArgumentTypeError(f"must start with '/': {value!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `dev` subcommand's flags; the function's server command follows `--`."""
    parser.usage = "%(prog)s [OPTIONS] -- COMMAND [ARG ...]"
    add = parser.add_argument
    add("--inference-port", type=_port, default=8000, metavar="N", help="where COMMAND listens")
    add("--path", type=_path, default="/", help="default invocation path (/)")
    add("--health-endpoint", type=_path, default="/v2/health/ready", help="the server's health")
    add("--function-id", type=_uuid, help="function id (random UUID)")
    add("--version-id", type=_uuid, help="function version id (random UUID)")
    add("--name", default="function", help="function name (function)")
    add("--max-request-concurrency", type=_positive, default=1, metavar="N", help="per sidecar (1)")
    add("--port", type=_port, default=8080, metavar="N", help="the platform's HTTP port (8080)")
    add("--api-key", default="nvcf-local-key", metavar="KEY", help="callers' bearer token")
    add("--work-dir", type=Path, metavar="DIR", help="logs and state (a temporary directory)")
    add("--timeout", type=_seconds, default=120.0, metavar="S", help="start-up limit (120)")
    add("server_command", nargs=argparse.REMAINDER, metavar="COMMAND", help="after --")
    parser.set_defaults(_dev_parser=parser)


def run_command(args: argparse.Namespace) -> int:
    """Run the stack until SIGINT/SIGTERM (0) or until a child exits (1)."""
    command = list(args.server_command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        _usage_error(args, "the function's server command is missing: ... dev [OPTIONS] -- COMMAND")
    try:
        spec = FunctionSpec(
            command=command,
            inference_port=args.inference_port,
            function_id=args.function_id or str(uuid.uuid4()),
            version_id=args.version_id or str(uuid.uuid4()),
            name=args.name,
            default_invocation_path=args.path,
            health_endpoint=args.health_endpoint,
            max_request_concurrency=args.max_request_concurrency,
        )
    except StackError as error:
        _usage_error(args, str(error))
    temporary = args.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="nvcf-dev-")) if temporary else args.work_dir
    try:
        return _run(spec, args, work_dir)
    finally:
        if temporary:
            shutil.rmtree(work_dir, ignore_errors=True)


def _usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    parser: argparse.ArgumentParser = args._dev_parser
    parser.error(message)  # exits 2


def _say(text: str) -> None:
    lines = text.splitlines() or [""]
    sys.stdout.write("".join(f"{_PREFIX}{line}\n" for line in lines))
    sys.stdout.flush()


def _run(spec: FunctionSpec, args: argparse.Namespace, work_dir: Path) -> int:
    stack = LocalStack(
        [spec],
        work_dir=work_dir,
        api_key=args.api_key,
        platform_args=["--port", str(args.port)],
        log_stream=sys.stdout,
    )
    stop = threading.Event()
    starting = [True]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        if starting[0]:
            starting[0] = False  # raise once; LocalStack.start stops what it started
            raise _Interrupted(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            _say(f"work dir {work_dir}" + (" (removed at exit)" if args.work_dir is None else ""))
            _say(f"function {spec.name}: {shlex.join(spec.command)}")
            _say(
                f"waiting (up to {args.timeout:g} s) for nats-server, the platform on "
                f"http://{HOST}:{args.port}, the function's health "
                f"http://{HOST}:{spec.inference_port}{spec.health_endpoint} and its sidecar"
            )
            stack.start(timeout=args.timeout)
        except _Interrupted:
            _say("interrupted during start-up; stopped")
            return 0
        except ChildExited as error:
            _say(_exited(stack, error.name, error.returncode, error.log_tail))
            return 1
        except StackError as error:
            _say(f"error: {error}")
            return 1
        starting[0] = False
        if stop.is_set():
            return _stop(stack, 0)
        _print_ready(stack, spec)
        while not stop.wait(_POLL_INTERVAL):
            dead = _first_exited(stack)
            if dead is not None:
                code = dead.returncode
                assert code is not None
                _say(_exited(stack, dead.name, code, dead.log_tail()))
                return _stop(stack, 1)
            if not stack.nats.running:
                _say(f"error: nats-server exited; log ends with:\n{stack.nats.log_tail()}")
                return _stop(stack, 1)
        _say("stopping: sidecar, function server, platform, nats-server")
        return _stop(stack, 0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _first_exited(stack: LocalStack) -> StackProcess | None:
    for process in stack.processes():
        if process.returncode is not None:
            return process
    return None


def _exited(stack: LocalStack, name: str, code: int, log_tail: str) -> str:
    what = name
    for spec in stack.functions:
        try:
            container = stack.container(spec.version_id)
        except StackError:
            continue
        if container.name == name:
            what = f"{name} (the function's server: {shlex.join(spec.command)})"
    status = f"exit code {code}" if code >= 0 else f"signal {-code}"
    text = f"error: {what} exited with {status}; stopping the stack"
    return f"{text}\nits output ended with:\n{log_tail}" if log_tail else text


def _stop(stack: LocalStack, status: int) -> int:
    try:
        stack.stop()
    except StackError as error:
        _say(f"error while stopping: {error}")
        return 1
    _say("stopped")
    return status


def _print_ready(stack: LocalStack, spec: FunctionSpec) -> None:
    url = stack.invoke_url(spec.function_id)
    auth = f"Authorization: Bearer {stack.api_key}"
    body = shlex.quote(_EXAMPLE_BODY)
    curl = (
        f"curl -sS -X POST {shlex.quote(url)} -H {shlex.quote(auth)} "
        f"-H 'Content-Type: application/json' -d {body}"
    )
    sse = (
        f"curl -sS -N -X POST {shlex.quote(url)} -H {shlex.quote(auth)} "
        f"-H 'Accept: text/event-stream' -H 'Content-Type: application/json' -d {body}"
    )
    pids = [("nats-server", stack.nats.pid)] + [(p.name, p.pid) for p in stack.processes()]
    _say(
        f"ready: {url}\n"
        f"function id {spec.function_id}, version id {spec.version_id}, "
        f"invocation path {spec.default_invocation_path or '/'}\n"
        f"pids: {' '.join(f'{name}={pid}' for name, pid in pids)}\n"
        f"invoke:\n  {curl}\n"
        f"stream (server-sent events):\n  {sse}\n"
        "Ctrl-C stops everything."
    )
