"""One invocation's lifecycle in the sidecar: prepare, call the container, answer, clean up (§5.2).

`RequestRunner.run` serves one decoded work item and says how it ended; the consumer owns the
slot, keepalives, cancellation and the ack around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, Final

from nvcf_sidecar.protocol import (
    ASSET_DOWNLOAD_FAILED,
    INFERENCE_REQUEST_FAILED,
    PREPARE_FAILED,
    WORKER_SERVICE,
    H1Error,
    Header,
    MissingAttachConfig,
    PollBudget,
    WorkerInvokeFunctionRequest,
    content_length,
    first_http1_config,
    get_attach_accept,
)
from nvcf_sidecar.worker.assets import AssetDownloadFailed, download_assets
from nvcf_sidecar.worker.attach import AttachClient, AttachError, RequestBodyStream
from nvcf_sidecar.worker.compat import (
    CompatibilityServices,
    compatibility_wanted,
    serve_compatible,
)
from nvcf_sidecar.worker.config import WorkerConfig
from nvcf_sidecar.worker.deadline import answer_deadline, item_budget, request_time
from nvcf_sidecar.worker.directories import create_request_directory, remove_request_directory
from nvcf_sidecar.worker.forward import (
    ContainerCall,
    ContainerCallError,
    ForwardedBody,
    container_failure_problem,
    container_headers,
    container_url,
    request_target_path,
    worker_headers,
)
from nvcf_sidecar.worker.gate import ContainerGate, ContainerWatch
from nvcf_sidecar.worker.metrics import Outcome, WorkerMetrics
from nvcf_sidecar.worker.passthrough import Polling, serve_passthrough
from nvcf_sidecar.worker.sessions import HttpSessions
from nvcf_sidecar.worker.stateful import StatefulSessions
from nvcf_worker.headers import is_safe_component

__all__ = ["STALE_ITEM_SECONDS", "RequestLog", "RequestRunner"]

STALE_ITEM_SECONDS: Final = 1.0
"""An item older than this when it arrives is checked like a redelivery (one GET to the
platform) before it runs: it may be a redelivery whose count a nats-server restart lost, or its
caller may be gone."""

_logger = logging.getLogger(__name__)


class RequestLog(logging.LoggerAdapter[logging.Logger]):
    """A logger bound to one request: every record carries `request_id` (and per-call extras)."""

    def __init__(self, logger: logging.Logger, request_id: str) -> None:
        super().__init__(logger, {"request_id": request_id})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


class RequestRunner:
    """Serves work items end to end: attach, response directory, container call, answer.

    One instance per sidecar process, shared by all concurrent requests; it holds no
    per-request state. Without `compat` (progress monitor, NATS for polls, large-response
    shipper) every request is served in passthrough. With `watch` (the container's health), a
    container that refuses connections holds requests instead of failing them (`gate`).
    """

    def __init__(
        self,
        config: WorkerConfig,
        metrics: WorkerMetrics,
        sessions: HttpSessions,
        compat: CompatibilityServices | None = None,
        *,
        watch: ContainerWatch | None = None,
        stateful: StatefulSessions | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._sessions = sessions
        self._compat = compat
        self._gate = ContainerGate(sessions.container_client, metrics, watch)
        self._stateful = stateful
        # Each request's directories are named by joining strings: a `Path` per request costs
        # a parse and a format, a few µs on the hot path.
        self._response_base = os.fspath(config.base_response_dir)
        self._asset_base = os.fspath(config.base_asset_dir)

    async def run(
        self,
        request: WorkerInvokeFunctionRequest,
        *,
        redelivered: bool = False,
        container_done: Callable[[], None] | None = None,
    ) -> Outcome:
        """Serve one decoded request end to end and return how it ended.

        Too late is never run (`EXPIRED`, the container is not called): an item whose poll
        budget is more than 2 s overdrawn (it still gets NVIDIA's 500 problem), and a
        `redelivered` item, or one that waited in the queue over `STALE_ITEM_SECONDS`, whose
        response the platform says it no longer waits for (an earlier worker answered it, or
        its caller is gone). A nats-server restart can lose the delivery count of an item in
        flight, so age stands in for "maybe delivered before".

        Never raises, except `asyncio.CancelledError` when the caller cancels the task (upstream
        cancel or shutdown): the container call and any attach transfer are stopped, the
        response directory is removed, and the cancellation propagates. Every log record carries
        the request id (`extra={"request_id": ...}`).
        """
        log = RequestLog(_logger, request.requestId)
        received = time.time()
        accepted = request_time(request)
        if accepted is not None:
            self._metrics.queue_wait.observe(max(0.0, received - accepted))
        if request.HasField("statefulConfig"):  # a gRPC session: no request, a tunnel
            if self._stateful is None:
                log.error("a stateful (gRPC) work item, and this runner serves none")
                return Outcome.WORKER_ERROR
            return await self._stateful.serve(request, log)
        try:
            connection = first_http1_config(request)
        except MissingAttachConfig as error:
            log.error("no answer possible: %s", error)
            return Outcome.WORKER_ERROR
        attach = self._sessions.attach_client(connection)
        caller: list[Header] = [(header.key, header.value) for header in request.requestHeaders]
        stale = accepted is not None and received - accepted > STALE_ITEM_SECONDS
        expired = await self._expired(request, caller, attach, redelivered or stale, log)
        if expired is not None:
            return expired
        try:
            outcome = await self._serve(request, caller, attach, log, container_done)
        except asyncio.CancelledError:
            log.info("request cancelled; container call and attach transfers stopped")
            raise
        except Exception:
            log.exception("unexpected failure while serving the request")
            outcome = Outcome.WORKER_ERROR
            if not attach.response_started:
                outcome = await self._answer_problem(
                    attach, log, WORKER_SERVICE, INFERENCE_REQUEST_FAILED, Outcome.WORKER_ERROR
                )
        log.info("request finished", extra={"outcome": outcome.value})
        return outcome

    async def _expired(
        self,
        request: WorkerInvokeFunctionRequest,
        caller: list[Header],
        attach: AttachClient,
        maybe_answered: bool,
        log: RequestLog,
    ) -> Outcome | None:
        """`EXPIRED` when the item's answer can no longer be delivered, else None."""
        budget = item_budget(request, caller)
        if budget.too_late:
            log.warning(
                "response target too far in the past (%.1f s left); not calling the container",
                budget.shifted,
            )
            self._metrics.expired.labels("deadline").inc()
            # As NVIDIA's worker: the 500 problem, which a platform that gave up refuses.
            await self._answer_problem(
                attach, log, WORKER_SERVICE, INFERENCE_REQUEST_FAILED, Outcome.EXPIRED
            )
            return Outcome.EXPIRED
        if maybe_answered and await attach.response_wanted() is False:
            log.warning(
                "redelivered or long queued, and its response is no longer wanted; "
                "not calling the container"
            )
            self._metrics.expired.labels("token_gone").inc()
            return Outcome.EXPIRED
        return None

    async def _serve(
        self,
        request: WorkerInvokeFunctionRequest,
        caller: list[Header],
        attach: AttachClient,
        log: RequestLog,
        container_done: Callable[[], None] | None = None,
    ) -> Outcome:
        request_id = request.requestId
        if not is_safe_component(request_id):
            # It names directories that are removed afterwards; never let it leave the base.
            log.error("request id %r cannot name a directory", request_id)
            return await self._answer_problem(
                attach, log, WORKER_SERVICE, PREPARE_FAILED, Outcome.WORKER_ERROR
            )
        response_dir = os.path.join(self._response_base, request_id)
        async with contextlib.AsyncExitStack() as cleanup:
            rest: RequestBodyStream | None = None
            if attach.has_request_body:
                # Started now, read when the container call needs it (NVIDIA starts it eagerly).
                accept = get_attach_accept(request.requestMethod)
                rest = await cleanup.enter_async_context(attach.request_body(accept))
            if request.inputAssetReference:
                asset_dir = Path(self._asset_base, request_id)
                cleanup.callback(remove_request_directory, asset_dir, log)
                try:
                    await download_assets(
                        self._sessions.transfer, request, asset_dir, metrics=self._metrics, log=log
                    )
                except AssetDownloadFailed as error:
                    log.error("input assets not downloaded: %s", error)
                    return await self._answer_problem(
                        attach, log, WORKER_SERVICE, ASSET_DOWNLOAD_FAILED, Outcome.WORKER_ERROR
                    )
            if not self._config.compatibility_disabled:
                cleanup.callback(remove_request_directory, response_dir, log)
                try:
                    create_request_directory(response_dir)
                except OSError as error:
                    log.error("cannot create the response directory: %s", error)
                    return await self._answer_problem(
                        attach, log, WORKER_SERVICE, PREPARE_FAILED, Outcome.WORKER_ERROR
                    )
            try:
                return await self._forward(
                    request, caller, attach, rest, response_dir, log, container_done
                )
            finally:
                if rest is not None and rest.error is not None:
                    self._metrics.attach_errors.labels("get").inc()

    async def _forward(
        self,
        request: WorkerInvokeFunctionRequest,
        caller: list[Header],
        attach: AttachClient,
        rest: RequestBodyStream | None,
        response_dir: str,
        log: RequestLog,
        container_done: Callable[[], None] | None,
    ) -> Outcome:
        """`caller` is the item's request headers; a stream-full head's are added to it."""
        method, path = request.requestMethod, request.requestPath
        if not method:
            # Stream-full mode: method, target and headers come from the head of GET attach.
            if rest is None:
                log.error("the work item has neither a method nor a request token")
                return await self._answer_problem(
                    attach, log, WORKER_SERVICE, INFERENCE_REQUEST_FAILED, Outcome.WORKER_ERROR
                )
            try:
                head = await rest.read_request_head()
            except AttachError as error:
                log.error("cannot read the streamed request: %s", error)
                return await self._answer_problem(
                    attach, log, WORKER_SERVICE, INFERENCE_REQUEST_FAILED, Outcome.WORKER_ERROR
                )
            method, path = head.method, request_target_path(head.target)
            caller.extend(head.headers)

        poll = item_budget(request, caller)
        compat = self._compat
        compatible = compat is not None and compatibility_wanted(
            caller, self._config.compatibility_disabled
        )
        body, body_length = _request_body(request, rest, caller)
        call = ContainerCall(
            method=method,
            url=container_url(self._config.inference_url, path),
            headers=self._headers(request, caller, poll, response_dir),
            body=body,
            body_length=body_length,
        )

        def poll_call(item: WorkerInvokeFunctionRequest) -> ContainerCall:
            # A status poll goes to the container as a GET on the function's path (§6).
            pairs = [(kv.key, kv.value) for kv in item.requestHeaders]
            budget = item_budget(item, pairs)
            return ContainerCall(
                method=item.requestMethod or "GET",
                url=container_url(self._config.inference_url, item.requestPath),
                headers=self._headers(item, pairs, budget, response_dir),
                body=item.requestBody or None,
                body_length=None,
            )

        log.debug(
            "calling the container",
            extra={"method": method, "path": path or "/", "compatibility": compatible},
        )
        if compat is not None and compatible:
            return await serve_compatible(
                call,
                request,
                attach=attach,
                budget=poll,
                response_dir=response_dir,
                services=compat,
                gate=self._gate,
                new_attach=self._sessions.attach_client,
                make_poll_call=poll_call,
                metrics=self._metrics,
                log=log,
                container_done=container_done,
            )
        polling = (
            None
            if compat is None
            else Polling(
                compat.nats, request.requestId, poll.target, self._sessions.attach_client, poll_call
            )
        )
        try:
            return await serve_passthrough(
                call,
                gate=self._gate,
                deadline=answer_deadline(poll),
                attach=attach,
                metrics=self._metrics,
                log=log,
                polling=polling,
            )
        except ContainerCallError as error:
            if isinstance(body, ForwardedBody) and body.error is not None:
                log.error("the request body could not be forwarded: %s", body.error)
                return await self._answer_problem(
                    attach, log, WORKER_SERVICE, INFERENCE_REQUEST_FAILED, Outcome.WORKER_ERROR
                )
            log.error("no response from the container: %s", error)
            source, detail = container_failure_problem(error.cause)
            return await self._answer_problem(attach, log, source, detail, Outcome.CONTAINER_ERROR)

    def _headers(
        self,
        request: WorkerInvokeFunctionRequest,
        caller: list[Header],
        poll: PollBudget,
        response_dir: str,
    ) -> list[Header]:
        worker = worker_headers(
            self._config,
            request,
            asset_dir=os.path.join(self._asset_base, request.requestId),
            response_dir=response_dir,
        )
        # Like NVIDIA's worker: JSON unless the caller sent a type, whatever mode serves the
        # request, unless V3 compatibility is disabled by config (§5.2 step 5).
        default_type = None if self._config.compatibility_disabled else "application/json"
        return container_headers(worker, caller, poll, default_content_type=default_type)

    async def _answer_problem(
        self, attach: AttachClient, log: RequestLog, source: str, detail: str, outcome: Outcome
    ) -> Outcome:
        """Deliver a worker-generated 500 problem; `outcome` if it arrives, else ATTACH_ERROR."""
        try:
            await attach.send_problem(source, 500, detail)
        except Exception as error:  # AttachError, or anything unforeseen: run() never raises
            self._metrics.attach_errors.labels("post").inc()
            log.error(
                "problem response not delivered: %s",
                error,
                exc_info=not isinstance(error, AttachError),
            )
            return Outcome.ATTACH_ERROR
        log.info("problem response delivered", extra={"detail": detail})
        return outcome


def _request_body(
    request: WorkerInvokeFunctionRequest, rest: RequestBodyStream | None, caller: list[Header]
) -> tuple[bytes | ForwardedBody | None, int | None]:
    """The body for the container and its Content-Length (None: chunked or computed by aiohttp).

    Without a request token the whole body is inline and sent with its exact length. Otherwise
    the inline part is followed by the GET attach stream, with the caller's Content-Length when
    it declared a valid one (an invalid one is ignored, as NVIDIA's worker does).
    """
    inline = request.requestBody
    if rest is None:
        return (inline or None), None
    try:
        declared = content_length(caller)
    except H1Error:
        declared = None
    return ForwardedBody(inline, rest, declared), declared
