"""grpc_echo: a gRPC function for NVCF's gRPC entry point (`inferenceUrl: "/grpc"`).

A plain grpcio server on h2c (no TLS: NVCF's sidecar reaches it on 127.0.0.1), with the
standard health service the sidecar calls for gRPC functions. Messages are raw bytes (generic
handlers), so no generated code is needed; a real function would register its generated
servicers the same way.

    /echo.Echo/Unary    the request back
    /echo.Echo/Repeat   the request back `count` times (server streaming; count = 3)
    /echo.Echo/Chat     each request back as it arrives (bidirectional streaming)
    /grpc.health.v1.Health/Check   SERVING

Callers add the metadata NVCF's gRPC proxy reads: `authorization: Bearer <key>` and
`function-id: <id>` (optionally `function-version-id`); the function sees them too.
"""

from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

HEALTH_SERVING = b"\x08\x01"  # grpc.health.v1.HealthCheckResponse{status: SERVING}
REPEAT = 3

logger = logging.getLogger("grpc_echo")


def unary(request: bytes, context: Any) -> bytes:
    metadata = dict(context.invocation_metadata())
    logger.info("Unary from function-id %s", metadata.get("function-id", "?"))
    return request


def repeat(request: bytes, _context: Any) -> Iterator[bytes]:
    for _ in range(REPEAT):
        yield request


def chat(requests: Iterator[bytes], _context: Any) -> Iterator[bytes]:
    yield from requests


def health(_request: bytes, _context: Any) -> bytes:
    return HEALTH_SERVING


class EchoHandler(grpc.GenericRpcHandler):
    """Routes the four methods above; anything else is UNIMPLEMENTED (grpcio's answer)."""

    def __init__(self) -> None:
        self._methods = {
            "/echo.Echo/Unary": grpc.unary_unary_rpc_method_handler(unary),
            "/echo.Echo/Repeat": grpc.unary_stream_rpc_method_handler(repeat),
            "/echo.Echo/Chat": grpc.stream_stream_rpc_method_handler(chat),
            "/grpc.health.v1.Health/Check": grpc.unary_unary_rpc_method_handler(health),
        }

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        return self._methods.get(handler_call_details.method)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="h2c port (8000)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (127.0.0.1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((EchoHandler(),))
    server.add_insecure_port(f"{args.host}:{args.port}")
    server.start()
    logger.info("listening on %s:%d", args.host, args.port)
    signal.signal(signal.SIGTERM, lambda *_: server.stop(5))
    server.wait_for_termination()


if __name__ == "__main__":
    main()
