"""A gRPC inference container for the end-to-end tests: `grpc_echo.py PORT`, h2c on 127.0.0.1.

Methods, with raw bytes as messages (generic handlers, no generated code):
* `/echo.Echo/Unary`: the request back;
* `/echo.Echo/Repeat`: the request back three times (server streaming);
* `/echo.Echo/Chat`: each request back as it arrives (bidirectional streaming);
* `/grpc.health.v1.Health/Check`: SERVING (`08 01`), what NVCF's gRPC health check calls.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

SERVING = b"\x08\x01"


def _unary(request: bytes, _context: Any) -> bytes:
    return request


def _repeat(request: bytes, _context: Any) -> Iterator[bytes]:
    for _ in range(3):
        yield request


def _chat(requests: Iterator[bytes], _context: Any) -> Iterator[bytes]:
    yield from requests


def _health(_request: bytes, _context: Any) -> bytes:
    return SERVING


class _Echo(grpc.GenericRpcHandler):
    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method == "/echo.Echo/Unary":
            return grpc.unary_unary_rpc_method_handler(_unary)
        if method == "/echo.Echo/Repeat":
            return grpc.unary_stream_rpc_method_handler(_repeat)
        if method == "/echo.Echo/Chat":
            return grpc.stream_stream_rpc_method_handler(_chat)
        if method == "/grpc.health.v1.Health/Check":
            return grpc.unary_unary_rpc_method_handler(_health)
        return None


def main() -> None:
    port = int(sys.argv[1])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((_Echo(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: server.stop(1))
    server.wait_for_termination()


if __name__ == "__main__":
    main()
