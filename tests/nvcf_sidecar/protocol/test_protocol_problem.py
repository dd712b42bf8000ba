"""Problem+json shapes of the IS and the worker, reason phrases and the gRPC status table."""

from __future__ import annotations

import grpc
import orjson
import pytest

from nvcf_sidecar.protocol import (
    INFERENCE_CONNECTION,
    INFERENCE_CONNECTION_FAILED,
    INFERENCE_SERVICE,
    PROBLEM_CONTENT_TYPE,
    WORKER_SERVICE,
    ErrorDetails,
    grpc_status_to_http,
    inference_error_detail,
    inference_error_problem,
    invocation_problem,
    problem_type,
    reason_phrase,
    worker_problem,
)


def test_content_type() -> None:
    assert PROBLEM_CONTENT_TYPE == "application/problem+json"


def test_worker_problem_shape_and_key_order() -> None:
    body = worker_problem(INFERENCE_CONNECTION, 500, INFERENCE_CONNECTION_FAILED)
    document = orjson.loads(body)
    assert document == {
        "type": "urn:inference-connection:problem-details:internal-server-error",
        "title": "Internal Server Error",
        "status": 500,
        "detail": "Inference connection error while making inference request",
    }
    assert list(document) == ["type", "title", "status", "detail"]


def test_worker_problem_parses_as_error_details_protobuf_json() -> None:
    from google.protobuf import json_format

    details = json_format.Parse(worker_problem(WORKER_SERVICE, 503, "x"), ErrorDetails())
    assert (details.type, details.title, details.status, details.detail) == (
        "urn:nvcf-worker-service:problem-details:service-unavailable",
        "Service Unavailable",
        503,
        "x",
    )


@pytest.mark.parametrize(
    ("status", "suffix"),
    [
        (400, "bad-request"),
        (404, "not-found"),
        (413, "request-entity-too-large"),
        (414, "request-uri-too-long"),
        (416, "requested-range-not-satisfiable"),
        (418, "i'm-a-teapot"),
        (422, "unprocessable-entity"),
        (429, "too-many-requests"),
        (203, "non-authoritative-information"),
        (505, "http-version-not-supported"),
    ],
)
def test_problem_type_uses_gos_reason_text(status: int, suffix: str) -> None:
    assert problem_type(INFERENCE_SERVICE, status) == (
        f"urn:inference-service:problem-details:{suffix}"
    )


def test_status_without_a_reason_has_no_title_like_protojson() -> None:
    document = orjson.loads(worker_problem(INFERENCE_SERVICE, 599, "odd"))
    assert document == {
        "type": "urn:inference-service:problem-details:",
        "status": 599,
        "detail": "odd",
    }
    assert reason_phrase(599) == ""


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"error": "model not found"}', "model not found"),
        (b'{"Error": "capitalised"}', "capitalised"),
        (b'{"error": "a", "ERROR": "b"}', "b"),
        (b'{"error": ""}', "Inference error"),
        (b'{"error": 5}', "Inference error"),
        (b'{"error": null}', "Inference error"),
        (b'{"message": "x"}', "Inference error"),
        (b'["error"]', "Inference error"),
        (b"not json", "Inference error"),
        (b'{"error": "cut', "Inference error"),
        (b"", "Inference error"),
    ],
)
def test_inference_error_detail(body: bytes, detail: str) -> None:
    assert inference_error_detail(body) == detail


def test_container_error_becomes_an_inference_service_problem() -> None:
    document = orjson.loads(inference_error_problem(404, b'{"error":"unknown model"}'))
    assert document == {
        "type": "urn:inference-service:problem-details:not-found",
        "title": "Not Found",
        "status": 404,
        "detail": "unknown model",
    }


def test_invocation_service_problem_has_no_type() -> None:
    assert orjson.loads(invocation_problem(504)) == {"status": 504, "title": "Gateway Timeout"}
    assert orjson.loads(invocation_problem(401, "The provided token")) == {
        "status": 401,
        "title": "Unauthorized",
        "detail": "The provided token",
    }


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.OK, 200),
        (grpc.StatusCode.CANCELLED, 503),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 503),
        (grpc.StatusCode.ABORTED, 503),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.OUT_OF_RANGE, 400),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.ALREADY_EXISTS, 409),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.FAILED_PRECONDITION, 412),
        (grpc.StatusCode.UNIMPLEMENTED, 501),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.UNKNOWN, 500),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.DATA_LOSS, 500),
    ],
)
def test_grpc_status_to_http(code: grpc.StatusCode, status: int) -> None:
    assert grpc_status_to_http(code) == status
    assert grpc_status_to_http(code.value[0]) == status


def test_unknown_with_expired_credits_is_payment_required() -> None:
    message = "account: Cloud credits expired for org"
    assert grpc_status_to_http(grpc.StatusCode.UNKNOWN, message) == 402
    assert grpc_status_to_http(grpc.StatusCode.INTERNAL, message) == 500
