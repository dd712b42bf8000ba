"""Attach endpoint details and the shared header rules."""

from __future__ import annotations

import pytest

from nvcf_sidecar.protocol import (
    H1_CONTENT_TYPE,
    OCTET_STREAM_CONTENT_TYPE,
    attach_url,
    bearer,
    encode_response_head,
    get_attach_accept,
    nvcf_status,
    parse_bearer,
    post_attach_content_length,
    strip_hop_by_hop,
)


@pytest.mark.parametrize(
    "target", ["http://10.0.0.7:8080", "http://10.0.0.7:8080/", "http://10.0.0.7:8080//"]
)
def test_attach_url(target: str) -> None:
    assert attach_url(target) == "http://10.0.0.7:8080/v2/nvcf/worker/request-attach"


def test_bearer_round_trip() -> None:
    assert bearer("abc") == "Bearer abc"
    assert parse_bearer("Bearer abc") == "abc"
    assert parse_bearer("bearer  abc ") == "abc"


@pytest.mark.parametrize("value", [None, "", "Bearer", "Bearer ", "Basic abc", "Bearerabc"])
def test_not_a_bearer(value: str | None) -> None:
    assert parse_bearer(value) is None


def test_get_attach_accept_follows_the_request_method() -> None:
    assert get_attach_accept("POST") == OCTET_STREAM_CONTENT_TYPE == "application/octet-stream"
    assert get_attach_accept("") == H1_CONTENT_TYPE == "application/octet-stream+h1"


def test_post_attach_length_is_head_plus_body() -> None:
    head = encode_response_head(200, [], content_length=10)
    assert post_attach_content_length(head, 10) == len(head) + 10
    assert post_attach_content_length(head, None) is None


def test_strip_hop_by_hop_keeps_order_and_duplicates() -> None:
    headers = [
        ("A", "1"),
        ("connection", "Keep-Alive, x-private , ,"),
        ("X-Private", "secret"),
        ("Keep-Alive", "5"),
        ("A", "2"),
        ("Upgrade", "websocket"),
    ]
    assert strip_hop_by_hop(headers) == [("A", "1"), ("A", "2")]
    assert strip_hop_by_hop(iter(headers)) == [("A", "1"), ("A", "2")]


@pytest.mark.parametrize(
    ("status", "value"),
    [
        (200, "fulfilled"),
        (201, "fulfilled"),
        (202, "in-progress"),
        (302, "fulfilled"),
        (399, "fulfilled"),
        (400, "errored"),
        (504, "errored"),
        (101, "errored"),
    ],
)
def test_nvcf_status(status: int, value: str) -> None:
    assert nvcf_status(status) == value
