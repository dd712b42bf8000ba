"""Byte-level vectors for the `nvcf` protobuf messages, worked out by hand from the wire format.

tag = field_number << 3 | wire_type (0 varint, 2 length-delimited); varints are little-endian
7-bit groups with the high bit as continuation.
"""

from __future__ import annotations

import pytest

from nvcf_sidecar.protocol import (
    MAX_MESSAGE_BYTES,
    ErrorDetails,
    InputAssetReference,
    InvokeStatus,
    MalformedMessage,
    MessageTooLarge,
    MissingAttachConfig,
    ProvisionWorkerRequest,
    StringKV,
    WorkerConnectOnceResponse,
    WorkerInvokeFunctionRequest,
    WorkerResultTracking,
    attach_config,
    decode_invoke_request,
    encode_invoke_request,
    first_http1_config,
)


def _full_request() -> WorkerInvokeFunctionRequest:
    request = WorkerInvokeFunctionRequest(
        requestId="r1",
        maxDirectResponseSizeBytes=5_242_880,
        requestBody=b"hi",
        requestMethod="POST",
        requestPath="/v1",
    )
    request.requestTime.seconds = 1_700_000_000
    request.requestTime.nanos = 5
    request.requestHeaders.add(key="accept", value="*/*")
    request.requestHeaders.add(key="x-a", value="1")
    request.statelessConfig.CopyFrom(attach_config("http://is:8080", "tok", request_token="rt"))
    return request


# fmt: off
FULL_REQUEST_BYTES = bytes([
    0x0A, 0x02, *b"r1",                          # 1 requestId
    0x28, 0x80, 0x80, 0xC0, 0x02,                # 5 maxDirectResponseSizeBytes = 0x500000
    0x42, 0x08,                                  # 8 requestTime, 8 bytes
    0x08, 0x80, 0xE2, 0xCF, 0xAA, 0x06,          #   1 seconds = 1 700 000 000
    0x10, 0x05,                                  #   2 nanos = 5
    0x52, 0x02, *b"hi",                          # 10 requestBody
    0x6A, 0x0D,                                  # 13 requestHeaders[0], 13 bytes
    0x0A, 0x06, *b"accept", 0x12, 0x03, *b"*/*",
    0x6A, 0x08,                                  # 13 requestHeaders[1], 8 bytes
    0x0A, 0x03, *b"x-a", 0x12, 0x01, *b"1",
    0x72, 0x04, *b"POST",                        # 14 requestMethod
    0x7A, 0x03, *b"/v1",                         # 15 requestPath
    0x92, 0x01, 0x1D,                            # 18 statelessConfig (tag 146 = 2 bytes), 29 bytes
    0x0A, 0x1B,                                  #   1 connectionConfigs[0], 27 bytes
    0x0A, 0x19,                                  #     1 http1Config, 25 bytes
    0x12, 0x0E, *b"http://is:8080",              #       2 targetURI
    0x1A, 0x03, *b"tok",                         #       3 responseAuthorizationToken
    0x22, 0x02, *b"rt",                          #       4 requestAuthorizationToken
])
# fmt: on


def test_work_item_encodes_to_the_hand_computed_bytes() -> None:
    assert encode_invoke_request(_full_request()) == FULL_REQUEST_BYTES


def test_work_item_decodes_from_the_hand_computed_bytes() -> None:
    request = decode_invoke_request(FULL_REQUEST_BYTES)

    assert request == _full_request()
    assert [(kv.key, kv.value) for kv in request.requestHeaders] == [
        ("accept", "*/*"),
        ("x-a", "1"),
    ]
    http1 = first_http1_config(request)
    assert http1.targetURI == "http://is:8080"
    assert http1.HasField("requestAuthorizationToken")
    assert not http1.HasField("proxyURI")


def test_present_but_empty_request_body_is_on_the_wire_and_absent_one_is_not() -> None:
    initial = WorkerInvokeFunctionRequest(requestId="r", requestBody=b"")
    poll = WorkerInvokeFunctionRequest(requestId="r")

    assert initial.SerializeToString() == b"\x0a\x01r" + b"\x52\x00"
    assert poll.SerializeToString() == b"\x0a\x01r"
    assert decode_invoke_request(b"\x0a\x01r\x52\x00").HasField("requestBody")
    assert not decode_invoke_request(b"\x0a\x01r").HasField("requestBody")


def test_assets_and_proxy_vector() -> None:
    request = WorkerInvokeFunctionRequest(
        inputAssetReference=[InputAssetReference(assetId="a", reference="u", contentType="t")]
    )
    request.statelessConfig.CopyFrom(attach_config("h", "k", proxy_uri="p"))

    # fmt: off
    expected = bytes([
        0x32, 0x09, 0x0A, 0x01, *b"a", 0x12, 0x01, *b"u", 0x1A, 0x01, *b"t",  # 6 asset
        0x92, 0x01, 0x0D, 0x0A, 0x0B, 0x0A, 0x09,                             # 18 > 1 > 1
        0x0A, 0x01, *b"p",                                                    # 1 proxyURI
        0x12, 0x01, *b"h",                                                    # 2 targetURI
        0x1A, 0x01, *b"k",                                                    # 3 response token
    ])
    # fmt: on
    assert request.SerializeToString() == expected
    assert not first_http1_config(request).HasField("requestAuthorizationToken")


def test_stateful_config_and_tracking_and_error_details_numbering() -> None:
    request = WorkerInvokeFunctionRequest()
    request.statefulConfig.nvcfRegionOfInvoker = "r"
    assert request.SerializeToString() == b"\x4a\x03\x1a\x01r"  # 9 > 3

    tracking = WorkerResultTracking(functionId="f", functionVersionId="v")
    tracking.requestTime.seconds = 1
    assert tracking.SerializeToString() == b"\x0a\x01f\x12\x01v\x1a\x02\x08\x01"

    details = ErrorDetails(type="t", title="T", status=404, detail="d")
    # status 404 = 0x194 -> varint 0x94 0x03
    assert details.SerializeToString() == b"\x0a\x01t\x12\x01T\x18\x94\x03\x22\x01d"


def test_rpc_messages_numbering() -> None:
    provision = ProvisionWorkerRequest(
        instanceId="i", functionId="f", functionVersionId="v", regionToProvision="r"
    )
    assert provision.SerializeToString() == b"\x0a\x01i\x12\x01f\x1a\x01v\x22\x01r"

    connected = WorkerConnectOnceResponse(
        connectedRegion="a", otherRegions=["b", "c"], nvcfWorkerToken="t"
    )
    assert connected.SerializeToString() == b"\x0a\x01a\x12\x01b\x12\x01c\x1a\x01t"


def test_invoke_status_numbers() -> None:
    assert InvokeStatus.Value("ERRORED") == 0
    assert InvokeStatus.Value("IN_PROGRESS") == 1
    assert InvokeStatus.Value("FULFILLED") == 2
    assert InvokeStatus.Value("PENDING_EVALUATION") == 3
    assert InvokeStatus.Value("REJECTED") == 4


def test_reserved_fields_from_an_older_sender_are_skipped_not_fatal() -> None:
    # field 16 (requestBodyReplySubject), string "x": tag 0x82 0x01
    request = decode_invoke_request(b"\x0a\x01r\x82\x01\x01x")
    assert request.requestId == "r"


def test_truncated_bytes_raise_malformed_message() -> None:
    with pytest.raises(MalformedMessage, match="WorkerInvokeFunctionRequest from 4 bytes"):
        decode_invoke_request(b"\x0a\x05ab")


def test_encoding_refuses_a_work_item_over_the_6_mib_cap() -> None:
    request = WorkerInvokeFunctionRequest(requestBody=b"x" * MAX_MESSAGE_BYTES)
    with pytest.raises(MessageTooLarge) as caught:
        encode_invoke_request(request)
    assert caught.value.limit == 6 * 1024 * 1024
    assert caught.value.size > caught.value.limit


def test_first_http1_config_requires_one_with_a_target() -> None:
    with pytest.raises(MissingAttachConfig, match="'r9'"):
        first_http1_config(WorkerInvokeFunctionRequest(requestId="r9"))

    request = WorkerInvokeFunctionRequest(requestId="r9")
    request.statelessConfig.CopyFrom(attach_config("", "tok"))
    with pytest.raises(MissingAttachConfig):
        first_http1_config(request)


def test_round_trip_keeps_duplicate_headers_in_order() -> None:
    request = WorkerInvokeFunctionRequest(
        requestHeaders=[StringKV(key="x", value="1"), StringKV(key="x", value="2")]
    )
    decoded = decode_invoke_request(encode_invoke_request(request))
    assert [(kv.key, kv.value) for kv in decoded.requestHeaders] == [("x", "1"), ("x", "2")]
