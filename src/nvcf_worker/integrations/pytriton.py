"""PyTriton integration: the NVCF context of each request an infer function serves.

Owns the `TritonConfig` an NVCF PyTriton container starts with (port, forwarded `NVCF-*` headers,
libpython fix) and `infer_with_context`, the decorator that hands each request its context.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeAlias, overload

import numpy as np
import numpy.typing as npt
from pytriton.proxy.types import Request
from pytriton.triton import TritonConfig

from nvcf_worker.context import InvocationContext
from nvcf_worker.integrations.tritonserver import (
    NVCF_HEADER_FORWARD_PATTERN,
    prepare_pytriton_environment,
)
from nvcf_worker.logging import bind_request_id

__all__ = [
    "HEADER_FORWARD_PATTERN",
    "INFERENCE_PORT",
    "Outputs",
    "context_from_request",
    "infer_with_context",
    "nvcf_triton_config",
]

#: NVCF calls the container on `inferencePort`, 8000 unless the function says otherwise.
INFERENCE_PORT = 8000

#: The header-forward pattern, shared with the `nvcf-tritonserver` launcher.
HEADER_FORWARD_PATTERN = NVCF_HEADER_FORWARD_PATTERN

#: What a per-request infer function returns: output name -> array (without a batch axis
#: unless the model is bound with batching).
Outputs: TypeAlias = Mapping[str, npt.NDArray[Any]]

_Responses: TypeAlias = list[dict[str, npt.NDArray[Any]]]


def context_from_request(request: Request) -> InvocationContext:
    """Parse the `InvocationContext` of one PyTriton request from its `parameters`.

    Triton puts the forwarded HTTP headers into the request parameters (see
    `nvcf_triton_config`). Raises `InvalidHeader` when `NVCF-REQID` is missing or a header is
    invalid.
    """
    parameters: Mapping[str, Any] = request.parameters or {}
    return InvocationContext.from_headers(parameters)


def nvcf_triton_config(**overrides: Any) -> TritonConfig:
    """Return the `TritonConfig` for serving PyTriton models under NVCF, and prepare the process.

    Defaults: HTTP on port 8000 (NVCF's default `inferencePort`), `NVCF-*` headers forwarded
    into request parameters (`HEADER_FORWARD_PATTERN`), `strict_readiness` and `exit_on_error`.
    `overrides` are any `TritonConfig` fields and win over these.

    Health check: PyTriton starts `tritonserver` before `bind()` loads a model, so
    `/v2/health/ready` can answer 200 while no model is loaded yet; point the function's health
    endpoint (`INFERENCE_HEALTH_ENDPOINT`, NVCF's `healthUri`) at `/v2/models/<name>/ready`.

    Also calls `prepare_pytriton_environment()`, so the `tritonserver` PyTriton starts later
    finds the running Python's libpython; call this before creating `Triton(...)`.
    """
    prepare_pytriton_environment()
    settings: dict[str, Any] = {
        "http_port": INFERENCE_PORT,
        "http_header_forward_pattern": HEADER_FORWARD_PATTERN,
        "strict_readiness": True,
        "exit_on_error": True,
    }
    settings.update(overrides)
    return TritonConfig(**settings)


def _contexts(requests: Sequence[Request]) -> list[InvocationContext]:
    # All contexts are parsed before any request is served: PyTriton cannot fail one request
    # of a batch alone, so a bad header fails the batch before anything was written.
    return [context_from_request(request) for request in requests]


def _as_response(outputs: Outputs, ctx: InvocationContext) -> dict[str, npt.NDArray[Any]]:
    if not isinstance(outputs, Mapping):
        raise TypeError(
            f"the infer function returned {type(outputs).__name__} for request "
            f"{ctx.request_id!r}; it must return a mapping of output names to numpy arrays"
        )
    return {name: np.asarray(value) for name, value in outputs.items()}


@overload
def infer_with_context(
    infer: Callable[[Request, InvocationContext], Awaitable[Outputs]],
) -> Callable[[list[Request]], Coroutine[Any, Any, _Responses]]: ...


@overload
def infer_with_context(
    infer: Callable[[Request, InvocationContext], Outputs],
) -> Callable[[list[Request]], _Responses]: ...


def infer_with_context(infer: Callable[[Request, InvocationContext], Any]) -> Callable[..., Any]:
    """Turn `infer(request, ctx) -> outputs` into a PyTriton infer callable `(requests) -> list`.

    The decorated function serves one request: `request["INPUT"]` is its input array, `ctx` its
    `InvocationContext`, and it returns a mapping of output names to numpy arrays. The result is
    what `Triton.bind(infer_func=...)` takes; it calls `infer` once per request, in order, with
    the request id bound for logging (`nvcf_worker.logging`). An `async def` function gives an
    async callable whose requests run concurrently, each with its own id bound. Use it without
    PyTriton's `@batch` (that merges requests, and their contexts, into one call); for a bound
    method, wrap it at bind time: `infer_func=infer_with_context(model.infer_one)`.

    Every request's context is parsed before any is served. A missing or invalid `NVCF-*`
    header raises `InvalidHeader`, which PyTriton reports to the caller as an HTTP 400 whose
    JSON `error` is PyTriton's traceback ending in the line
    `nvcf_worker.errors.InvalidHeader: invalid <header> header <value>: <reason>`; any other
    exception the function raises is reported the same way. PyTriton has no per-request
    errors: an exception fails every request served in the same call, so bind NVCF models with
    `ModelConfig(batching=False)` (or without a dynamic batcher) to keep requests apart.
    """
    # An object with `async def __call__` is served like an `async def` function.
    if inspect.iscoroutinefunction(infer) or inspect.iscoroutinefunction(type(infer).__call__):

        async def serve_one(request: Request, ctx: InvocationContext) -> dict[str, Any]:
            with bind_request_id(ctx.request_id):
                return _as_response(await infer(request, ctx), ctx)

        @functools.wraps(infer)
        async def infer_requests_async(requests: list[Request]) -> _Responses:
            contexts = _contexts(requests)
            # gather runs each coroutine in its own task, hence its own copy of the bound id.
            return list(
                await asyncio.gather(
                    *(
                        serve_one(request, ctx)
                        for request, ctx in zip(requests, contexts, strict=True)
                    )
                )
            )

        return infer_requests_async

    @functools.wraps(infer)
    def infer_requests(requests: list[Request]) -> _Responses:
        contexts = _contexts(requests)
        responses = []
        for request, ctx in zip(requests, contexts, strict=True):
            with bind_request_id(ctx.request_id):
                responses.append(_as_response(infer(request, ctx), ctx))
        return responses

    return infer_requests
