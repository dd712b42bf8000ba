"""Triton python-backend integration: the NVCF context in a `model.py`, and per-request errors.

`triton_python_backend_utils` exists only inside the backend's stub process, so it is imported
when a response is built, never when this module is imported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nvcf_worker.context import InvocationContext
from nvcf_worker.errors import AssetNotFound, NVCFWorkerError
from nvcf_worker.logging import bind_request_id

__all__ = [
    "context_from_request",
    "error_response",
    "execute_per_request",
]

_logger = logging.getLogger(__name__)


def context_from_request(request: Any) -> InvocationContext:
    """Parse the `InvocationContext` of one `pb_utils.InferenceRequest`.

    The `NVCF-*` headers arrive as request parameters when the server forwards them
    (`nvcf-tritonserver` does: `--http-header-forward-pattern (?i)NVCF-.*`). Raises `InvalidHeader`
    when `NVCF-REQID` is missing or a header is invalid.
    """
    return InvocationContext.from_triton_request(request)


def _error_code(pb_utils: Any, error: BaseException | str) -> Any:
    """The `TritonError` code for `error`; None where this Triton has no codes."""
    codes = pb_utils.TritonError
    if not hasattr(codes, "INTERNAL"):
        return None
    if isinstance(error, AssetNotFound):
        return codes.NOT_FOUND
    if isinstance(error, NVCFWorkerError) and isinstance(error, ValueError):
        return codes.INVALID_ARG  # InvalidHeader, InvalidOutputName, InvalidProgress, ...
    return codes.INTERNAL


def error_response(error: BaseException | str) -> Any:
    """Build a `pb_utils.InferenceResponse` that fails one request with `error`'s message.

    The message is `str(error)` for library errors (they name the input and its value) and
    `"<ExceptionType>: <message>"` for any other exception. Where Triton has error codes, a
    library error about a bad value gets `INVALID_ARG`, a missing asset `NOT_FOUND`, anything
    else `INTERNAL` (Triton 2.41, the one in nvidia-pytriton 0.5, answers HTTP 400 for all).
    """
    import triton_python_backend_utils as pb_utils

    if isinstance(error, (str, NVCFWorkerError)):
        message = str(error)
    else:
        message = f"{type(error).__name__}: {error}"
    code = _error_code(pb_utils, error)
    triton_error = (
        pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    )
    return pb_utils.InferenceResponse(output_tensors=[], error=triton_error)


def _as_response(pb_utils: Any, result: Any) -> Any:
    if isinstance(result, Mapping):
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(name, value) for name, value in result.items()]
        )
    if isinstance(result, pb_utils.InferenceResponse):
        return result
    raise TypeError(
        f"the per-request function returned {type(result).__name__}; it must return a mapping "
        "of output names to numpy arrays or a pb_utils.InferenceResponse"
    )


def execute_per_request(
    requests: Sequence[Any], infer: Callable[[Any, InvocationContext], Any]
) -> list[Any]:
    """Serve each request with `infer(request, ctx)`; return one response per request, in order.

    Call it from `TritonPythonModel.execute`: `return execute_per_request(requests, self.infer)`.
    `infer` returns a mapping of output names to numpy arrays (made into `pb_utils.Tensor`s)
    or a ready `pb_utils.InferenceResponse`, and runs with the request id bound for logging.
    A request whose `NVCF-*` headers are invalid, or whose `infer` raises, gets an error
    response (`error_response`) while the other requests of the batch are served normally;
    unexpected exceptions are also logged with their traceback.
    """
    import triton_python_backend_utils as pb_utils

    responses = []
    for request in requests:
        try:
            ctx = context_from_request(request)
        except NVCFWorkerError as error:
            _logger.warning("refusing a request: %s", error)
            responses.append(error_response(error))
            continue
        with bind_request_id(ctx.request_id):
            try:
                responses.append(_as_response(pb_utils, infer(request, ctx)))
            except NVCFWorkerError as error:
                _logger.warning("request failed: %s", error)
                responses.append(error_response(error))
            except Exception as error:
                _logger.exception("request failed")
                responses.append(error_response(error))
    return responses
