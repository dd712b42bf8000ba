"""The stack's own work per request, timed through its own functions in this process with
neither HTTP nor NATS: what the platform and the sidecar compute for one echo call besides their
HTTP exchanges and their JetStream operations (those are `hotpath_floors`).

The platform (`platform_work`): the caller's headers taken, the request id, the presigned
large-response URL, the work item with its attach config encoded, the response token minted and
claimed, the worker's response head parsed, the headers relayed to the caller.

The sidecar (`sidecar_work`), in compatibility mode as the echo stack runs it: the work item
decoded, its deadline and attach config read, the request directory made and its progress watch
registered, the container's headers and URL, the container call's head encoded and its answer's
head parsed, the directory checked for outputs (one `rmdir`) and cleaned up, the POST attach's
inner and outer heads encoded and the platform's answer parsed, the metrics and the one log line
(JSON, to the null device), with the request directories where the stack puts them (/dev/shm
when it has room). Each request also gives the event loop one turn, in which the
progress monitor reads the directory's inotify events, as the sidecar's loop does.

Each figure is CPU time of this process (`time.process_time`) per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, cast

from nvcf_platform.control.registry import FunctionVersion
from nvcf_platform.devstack.scratch import Scratch
from nvcf_platform.invocation.exchange import WorkerExchange
from nvcf_platform.invocation.invocation import forwarded_headers
from nvcf_platform.invocation.tokens import AttachTokens, random_uuid
from nvcf_platform.objects.presign import UrlSigner
from nvcf_sidecar.protocol import (
    ATTACH_PATH,
    H1_CONTENT_TYPE,
    ResponseHeadParser,
    attach_config,
    bearer,
    decode_invoke_request,
    encode_invoke_request,
    encode_request_head,
    encode_response_head,
    first_http1_config,
    nvcf_status,
    parse_poll_seconds,
    strip_hop_by_hop,
)
from nvcf_sidecar.worker.artifacts import removed_if_empty
from nvcf_sidecar.worker.compat import compatibility_wanted
from nvcf_sidecar.worker.config import WorkerConfig
from nvcf_sidecar.worker.deadline import item_budget, request_time
from nvcf_sidecar.worker.directories import create_request_directory, remove_request_directory
from nvcf_sidecar.worker.forward import container_headers, container_url, worker_headers
from nvcf_sidecar.worker.logs import JsonLogFormatter
from nvcf_sidecar.worker.metrics import Outcome, WorkerMetrics
from nvcf_sidecar.worker.progress import ProgressMonitor
from nvcf_sidecar.worker.request import RequestLog

__all__ = ["platform_work", "sidecar_work"]

_BASE_URL: Final = "http://127.0.0.1:8080"
#: What wrk sends to the stack (`bench.wrk`): the caller's raw headers.
_CALLER_HEADERS: Final = (
    (b"Host", b"127.0.0.1:8080"),
    (b"Authorization", b"Bearer hotpath"),
    (b"Content-Type", b"application/json"),
    (b"Content-Length", b"112"),
)
#: The container's answer as it arrives (the echo server's head), and the platform's answer to
#: a POST attach.
_CONTAINER_ANSWER: Final = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 112\r\n"
    b"Date: Mon, 07 Dec 2026 01:00:00 GMT\r\nServer: Python/3.11 aiohttp/3.13\r\n\r\n"
)
_PLATFORM_ANSWER: Final = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nDate: Mon, 07 Dec 2026 01:00:00 GMT\r\n"
    b"Server: Python/3.11 aiohttp/3.13\r\n\r\n"
)


def _exchange(tokens: AttachTokens) -> WorkerExchange:
    # Only `work_item` is called: it reads none of the collaborators left out.
    unused = cast(Any, None)
    return WorkerExchange(
        link=unused, queue=unused, tracking=unused, tokens=tokens, background=unused,
        nca_id="hotpath-nca", subject="hotpath-caller", base_url=_BASE_URL,
        grpc_url="http://127.0.0.1:8081",
    )  # fmt: skip


async def platform_work(body: bytes, count: int) -> float:
    """CPU µs of the platform's own work per pexec call."""
    tokens = AttachTokens()
    signer = UrlSigner(b"hotpath-floor-signing-secret")
    exchange = _exchange(tokens)
    version = FunctionVersion(str(uuid.uuid4()), str(uuid.uuid4()), "hotpath", "/")
    answer = _CONTAINER_ANSWER + body
    started = time.process_time()
    for _ in range(count):
        headers = forwarded_headers(_CALLER_HEADERS, "local")
        parse_poll_seconds(None, None)
        request_id = random_uuid()  # as the platform makes them
        url = signer.presign("PUT", _BASE_URL, f"/results/nca/{request_id}")
        item = exchange.work_item(
            version, request_id, method="POST", headers=headers, body=body,
            large_response_url=url,
        )  # fmt: skip
        slot = tokens.mint_response(request_id)
        item.statelessConfig.CopyFrom(attach_config(_BASE_URL, slot.token))
        encode_invoke_request(item)
        claimed = tokens.claim_response(slot.token)
        head = ResponseHeadParser().feed(answer)
        if claimed is not slot or head is None:
            raise RuntimeError("the platform's work lost its token or the worker's head")
        relayed = [pair for pair in strip_hop_by_hop(head.headers) if pair[0] != "Content-Length"]
        relayed.append(("nvcf-status", nvcf_status(head.status)))
        tokens.revoke(slot.token)
        slot.abandon()
    return (time.process_time() - started) * 1e6 / count


def _work_items(body: bytes, count: int, version: FunctionVersion) -> list[bytes]:
    """`count` encoded work items as the platform sends them, each with its own request id."""
    tokens = AttachTokens()
    exchange = _exchange(tokens)
    headers = forwarded_headers(_CALLER_HEADERS, "local")
    items = []
    for _ in range(count):
        request_id = str(uuid.uuid4())
        item = exchange.work_item(version, request_id, method="POST", headers=headers, body=body)
        item.statelessConfig.CopyFrom(attach_config(_BASE_URL, str(uuid.uuid4())))
        items.append(encode_invoke_request(item))
    return items


@contextlib.contextmanager
def _lean_records() -> Iterator[None]:
    """Records gather no caller frame, thread or process while inside, as in the sidecar
    (`configure_worker_logging`'s switches), and the switches are put back after."""
    saved = (logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    try:
        yield
    finally:
        (
            logging._srcfile,
            logging.logThreads,
            logging.logProcesses,
            logging.logMultiprocessing,
        ) = saved


def _null_logger() -> tuple[logging.Logger, logging.Handler]:
    """The sidecar's JSON log line, written to the null device."""
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 (closed by the caller)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("bench.hotpath.sidecar_work")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, handler


async def sidecar_work(body: bytes, count: int) -> float:
    """CPU µs of the sidecar's own work per request in compatibility mode."""
    version = FunctionVersion(str(uuid.uuid4()), str(uuid.uuid4()), "hotpath", "/")
    payloads = _work_items(body, count, version)
    logger, handler = _null_logger()
    metrics = WorkerMetrics()
    with tempfile.TemporaryDirectory(prefix="hotpath-work-") as work:
        # Where the stack puts its request directories: /dev/shm when it has room.
        scratch = Scratch.open(Path(work))
        config = WorkerConfig.from_env(
            {
                "FUNCTION_ID": version.function_id,
                "FUNCTION_VERSION_ID": version.function_version_id,
                "NVCF_FQDN_GRPC": "http://127.0.0.1:8081",
                "BASE_RESPONSE_DIR": str(scratch.root / "response"),
                "BASE_ASSET_DIR": str(scratch.root / "assets"),
            }
        )
        answer = _CONTAINER_ANSWER + body
        try:
            with _lean_records():
                async with ProgressMonitor(config.base_response_dir, metrics) as monitor:
                    started = time.process_time()
                    for payload in payloads:
                        _serve_one(payload, config, monitor, metrics, logger, answer)
                        await asyncio.sleep(0)  # the loop's turn: the monitor reads its events
                    spent = time.process_time() - started
        finally:
            handler.close()
            scratch.close()
    return spent * 1e6 / count


def _serve_one(
    payload: bytes,
    config: WorkerConfig,
    monitor: ProgressMonitor,
    metrics: WorkerMetrics,
    logger: logging.Logger,
    answer: bytes,
) -> None:
    request = decode_invoke_request(payload)
    log = RequestLog(logger, request.requestId)
    accepted = request_time(request)
    if accepted is not None:
        metrics.queue_wait.observe(max(0.0, time.time() - accepted))
    connection = first_http1_config(request)
    caller = [(header.key, header.value) for header in request.requestHeaders]
    budget = item_budget(request, caller)
    response_dir = os.path.join(os.fspath(config.base_response_dir), request.requestId)
    create_request_directory(response_dir)
    with monitor.watch(request.requestId, response_dir):
        compatibility_wanted(caller, False)
        worker = worker_headers(
            config,
            request,
            asset_dir=os.path.join(os.fspath(config.base_asset_dir), request.requestId),
            response_dir=response_dir,
        )
        headers = container_headers(worker, caller, budget, default_content_type="application/json")
        container_url(config.inference_url, request.requestPath)
        lines = [
            ("Host", "127.0.0.1:8000"),
            *headers,
            ("Content-Length", str(len(request.requestBody))),
        ]
        encode_request_head(request.requestMethod, "/", lines, strip=False)
        head = ResponseHeadParser(transfer_encoding=True).feed(answer)
        if head is None:
            raise RuntimeError("the container's answer head did not parse")
        metrics.container_latency.observe(0.001)
        removed_if_empty(response_dir)
        inner = encode_response_head(head.status, head.headers, content_length=len(head.body))
        outer = [
            ("Host", "127.0.0.1:8080"),
            ("Authorization", bearer(connection.responseAuthorizationToken)),
            ("Content-Type", H1_CONTENT_TYPE),
            ("Content-Length", str(len(inner) + len(head.body))),
        ]
        encode_request_head("POST", ATTACH_PATH, outer, strip=False)
        if ResponseHeadParser(transfer_encoding=True).feed(_PLATFORM_ANSWER) is None:
            raise RuntimeError("the platform's answer head did not parse")
    remove_request_directory(response_dir, log)  # the clean-up, after the check removed it
    metrics.count(Outcome.DELIVERED)
    log.info("request finished", extra={"outcome": Outcome.DELIVERED.value})
