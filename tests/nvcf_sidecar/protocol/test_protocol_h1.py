"""Attach framing: exact head bytes, incremental parsing in any chunking, and every limit."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvcf_sidecar.protocol import (
    MAX_HEAD_BYTES,
    MAX_HEAD_HEADERS,
    HeadAlreadyParsed,
    Header,
    HeadTooLarge,
    IncompleteHead,
    InnerTransferEncoding,
    InvalidContentLength,
    InvalidHeader,
    InvalidStatus,
    MalformedHead,
    RequestHeadParser,
    ResponseHead,
    ResponseHeadParser,
    TooManyHeaders,
    content_length,
    encode_request_head,
    encode_response_head,
    parse_request_head,
    parse_response_head,
)

# --- encoding ------------------------------------------------------------------------------------


def test_response_head_strips_hop_by_hop_and_sets_the_known_length() -> None:
    headers = [
        ("Content-Type", "text/plain"),
        ("Connection", "close, X-Hop"),
        ("X-Hop", "1"),
        ("Transfer-Encoding", "chunked"),
        ("Keep-Alive", "timeout=5"),
        ("Set-Cookie", "a=1"),
        ("TE", "trailers"),
        ("Set-Cookie", "b=2"),
        ("content-length", "99"),
        ("Upgrade", "h2c"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authenticate", "Basic"),
        ("Proxy-Authorization", "Basic eA=="),
        ("Trailer", "X-T"),
    ]

    head = encode_response_head(200, headers, content_length=5)

    assert head == (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/plain\r\n"
        b"Set-Cookie: a=1\r\n"
        b"Set-Cookie: b=2\r\n"
        b"Content-Length: 5\r\n"
        b"\r\n"
    )


def test_response_head_without_a_known_length_has_no_length_and_no_transfer_encoding() -> None:
    head = encode_response_head(
        200,
        [
            ("Content-Type", "text/event-stream"),
            ("Content-Length", "7"),
            ("Transfer-Encoding", "x"),
        ],
    )
    assert head == b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"


@pytest.mark.parametrize(
    ("status", "reason", "line"),
    [
        (202, None, b"HTTP/1.1 202 Accepted\r\n"),
        (404, None, b"HTTP/1.1 404 Not Found\r\n"),
        (418, None, b"HTTP/1.1 418 I'm a teapot\r\n"),
        (413, None, b"HTTP/1.1 413 Request Entity Too Large\r\n"),
        (599, None, b"HTTP/1.1 599 status code 599\r\n"),
        (200, "Fine", b"HTTP/1.1 200 Fine\r\n"),
        (200, "", b"HTTP/1.1 200 \r\n"),
    ],
)
def test_status_line(status: int, reason: str | None, line: bytes) -> None:
    assert encode_response_head(status, [], reason=reason) == line + b"\r\n"


def test_response_head_with_an_empty_body_declares_zero() -> None:
    assert encode_response_head(204, [], content_length=0) == (
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
    )


def test_non_ascii_header_values_are_written_as_utf8() -> None:
    head = encode_response_head(200, [("X-Name", "caf\u00e9")])
    assert head == b"HTTP/1.1 200 OK\r\nX-Name: caf\xc3\xa9\r\n\r\n"


@pytest.mark.parametrize("status", [99, 1000, -1, True])
def test_status_out_of_range_is_refused(status: int) -> None:
    with pytest.raises(InvalidStatus):
        encode_response_head(status, [])


@pytest.mark.parametrize(
    "header",
    [
        ("X-Bad", "a\r\nX-Smuggled: 1"),
        ("X-Bad", "a\nb"),
        ("X-Bad", "nul\x00"),
        ("Bad Name", "v"),
        ("", "v"),
        ("X:Y", "v"),
    ],
)
def test_header_that_would_corrupt_the_head_is_refused(header: Header) -> None:
    with pytest.raises(InvalidHeader):
        encode_response_head(200, [header])
    with pytest.raises(InvalidHeader):
        encode_request_head("GET", "/", [header])


def test_reason_with_a_line_break_is_refused() -> None:
    with pytest.raises(InvalidHeader, match="reason"):
        encode_response_head(200, [], reason="OK\r\nX: 1")


def test_request_head_bytes() -> None:
    head = encode_request_head(
        "POST",
        "/v1/x?y=1",
        [
            ("host", "a"),
            ("content-length", "3"),
            ("x-dup", "1"),
            ("x-dup", "2, 3"),
            ("transfer-encoding", "chunked"),
            ("nvcf-invocation-region", "us-east-1"),
        ],
    )
    assert head == (
        b"POST /v1/x?y=1 HTTP/1.1\r\n"
        b"host: a\r\n"
        b"content-length: 3\r\n"
        b"x-dup: 1\r\n"
        b"x-dup: 2, 3\r\n"
        b"nvcf-invocation-region: us-east-1\r\n"
        b"\r\n"
    )


def test_request_head_with_empty_target_asks_for_root() -> None:
    assert encode_request_head("GET", "", []) == b"GET / HTTP/1.1\r\n\r\n"


@pytest.mark.parametrize(
    ("method", "target"),
    [("GE T", "/"), ("", "/"), ("GET", "/a b"), ("GET", "nope"), ("GET", "/caf\u00e9")],
)
def test_request_line_that_would_corrupt_the_head_is_refused(method: str, target: str) -> None:
    with pytest.raises(InvalidHeader):
        encode_request_head(method, target, [])


# --- parsing: chunking ---------------------------------------------------------------------------

SAMPLE = (
    b"HTTP/1.1 201 Created\r\n"
    b"Content-Type: application/json\r\n"
    b"Set-Cookie: a=1\r\n"
    b"set-cookie: b=2\r\n"
    b"X-Empty:\r\n"
    b"X-Spaces:   padded value \t\r\n"
    b"\r\n"
    b'{"ok": true}'
)
SAMPLE_HEADERS = [
    ("Content-Type", "application/json"),
    ("Set-Cookie", "a=1"),
    ("set-cookie", "b=2"),
    ("X-Empty", ""),
    ("X-Spaces", "padded value"),
]


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the given offsets (clamped, any order), empty chunks included."""
    bounds = [0, *sorted(min(cut, len(data)) for cut in cuts), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


def _feed_all(parser: ResponseHeadParser, chunks: list[bytes]) -> tuple[ResponseHead, bytes]:
    """Feed chunks until the head is complete; return it and every body byte seen."""
    head = None
    rest = bytearray()
    for chunk in chunks:
        if head is None:
            head = parser.feed(chunk)
        else:
            rest += chunk
    assert head is not None
    return head, head.body + bytes(rest)


def test_parse_in_one_chunk() -> None:
    head = parse_response_head(SAMPLE)
    assert (head.status, head.reason) == (201, "Created")
    assert head.headers == SAMPLE_HEADERS
    assert head.body == b'{"ok": true}'


def test_parse_fed_byte_by_byte() -> None:
    parser = ResponseHeadParser()
    head_length = SAMPLE.index(b"\r\n\r\n") + 4

    for index in range(head_length - 1):
        assert parser.feed(SAMPLE[index : index + 1]) is None, f"complete too early at {index}"
    head = parser.feed(SAMPLE[head_length - 1 : head_length])  # the final LF completes it

    assert head is not None
    assert head.headers == SAMPLE_HEADERS
    assert head.body == b""
    assert parser.done


@given(st.lists(st.integers(min_value=0, max_value=len(SAMPLE)), max_size=12))
def test_parse_in_random_chunks(cuts: list[int]) -> None:
    chunks = _split(SAMPLE, cuts)

    head, body = _feed_all(ResponseHeadParser(), chunks)

    assert (head.status, head.reason, head.headers) == (201, "Created", SAMPLE_HEADERS)
    assert body == b'{"ok": true}'


_token = st.text(
    alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    min_size=1,
    max_size=20,
)
_value = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=30
).map(lambda text: text.strip(" \t\u00a0"))
_hop = {
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
}
_end_to_end = st.tuples(_token, _value).filter(lambda pair: pair[0].lower() not in _hop)


@given(
    status=st.integers(min_value=100, max_value=999),
    headers=st.lists(_end_to_end, max_size=MAX_HEAD_HEADERS - 1),
    body=st.binary(max_size=64),
    cuts=st.lists(st.integers(min_value=0, max_value=4096), max_size=8),
)
def test_encoded_head_parses_back_in_any_chunking(
    status: int, headers: list[Header], body: bytes, cuts: list[int]
) -> None:
    wire = encode_response_head(status, headers, content_length=len(body)) + body
    chunks = _split(wire, cuts)

    head, received = _feed_all(ResponseHeadParser(), chunks)

    assert head.status == status
    assert head.headers == [*headers, ("Content-Length", str(len(body)))]
    assert head.content_length() == len(body)
    assert received == body


def test_bare_lf_line_endings_are_accepted() -> None:
    head = parse_response_head(b"HTTP/1.0 200 OK\nA: 1\n\nbody")
    assert (head.status, head.headers, head.body) == (200, [("A", "1")], b"body")


@given(st.lists(st.sampled_from([b"\r\n", b"\n"]), min_size=5, max_size=5), st.binary(max_size=8))
def test_any_mix_of_crlf_and_bare_lf_ends_the_same_lines(endings: list[bytes], body: bytes) -> None:
    lines = [b"HTTP/1.1 201 Made", b"A: 1", b"B:  two words\t", b"C:"]
    mixed = b"".join(line + end for line, end in zip(lines, endings, strict=False)) + endings[-1]
    head = parse_response_head(mixed + body)
    assert (head.status, head.reason, head.body) == (201, "Made", body)
    assert head.headers == [("A", "1"), ("B", "two words"), ("C", "")]


@pytest.mark.parametrize(
    ("line", "reason"),
    [(b"HTTP/1.1 204", ""), (b"HTTP/1.1 204 ", ""), (b"HTTP/1.1 299 My Own", "My Own")],
)
def test_reason_phrase_is_optional(line: bytes, reason: str) -> None:
    head = parse_response_head(line + b"\r\n\r\n")
    assert head.reason == reason


def test_feeding_after_the_head_is_an_error() -> None:
    parser = ResponseHeadParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\n\r\n") is not None
    with pytest.raises(HeadAlreadyParsed):
        parser.feed(b"more")


def test_memoryview_and_bytearray_chunks_are_accepted() -> None:
    parser = ResponseHeadParser()
    assert parser.feed(memoryview(b"HTTP/1.1 200 OK\r\n")) is None
    head = parser.feed(bytearray(b"\r\nxyz"))
    assert head is not None
    assert head.body == b"xyz"


# --- parsing: the invocation service's limits and errors -----------------------------------------


def _head_with(count: int) -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(count)) + b"\r\n"


def test_64_headers_are_accepted() -> None:
    assert len(parse_response_head(_head_with(MAX_HEAD_HEADERS)).headers) == 64


def test_65_headers_are_too_many() -> None:
    with pytest.raises(TooManyHeaders) as caught:
        parse_response_head(_head_with(MAX_HEAD_HEADERS + 1))
    assert caught.value.detail == "Failed to parse HTTP response: too many headers"


def _head_of_size(size: int) -> bytes:
    start, end = b"HTTP/1.1 200 OK\r\nX-Pad: ", b"\r\n\r\n"
    return start + b"p" * (size - len(start) - len(end)) + end


def test_head_ending_exactly_at_the_byte_limit_is_accepted() -> None:
    assert MAX_HEAD_BYTES == 8 * 1024 + 400 * 1024
    wire = _head_of_size(MAX_HEAD_BYTES) + b"b" * 100_000
    head = parse_response_head(wire)
    assert len(head.headers[0][1]) > 400_000
    assert head.body == b"b" * 100_000


@pytest.mark.parametrize("chunk_size", [MAX_HEAD_BYTES + 1, 4096, 65_536])
def test_head_one_byte_over_the_limit_is_too_large_in_any_chunking(chunk_size: int) -> None:
    wire = _head_of_size(MAX_HEAD_BYTES + 1)
    parser = ResponseHeadParser()
    with pytest.raises(HeadTooLarge) as caught:  # noqa: PT012 - the raise comes from some feed
        for offset in range(0, len(wire), chunk_size):
            assert parser.feed(wire[offset : offset + chunk_size]) is None
    assert caught.value.detail == "HTTP headers too large or malformed"


def test_endless_head_is_refused_once_the_limit_is_buffered() -> None:
    parser = ResponseHeadParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\nX: " + b"a" * (MAX_HEAD_BYTES - 30)) is None
    with pytest.raises(HeadTooLarge):
        parser.feed(b"a" * 100)


@pytest.mark.parametrize("partial", [b"", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nA: b\r\n\r"])
def test_end_of_stream_before_the_head_is_incomplete(partial: bytes) -> None:
    parser = ResponseHeadParser()
    if partial:
        assert parser.feed(partial) is None
    with pytest.raises(IncompleteHead) as caught:
        parser.feed_eof()
    assert caught.value.detail == "Incomplete HTTP response"
    with pytest.raises(IncompleteHead):
        parse_response_head(partial)


def test_end_of_stream_after_the_head_is_fine() -> None:
    parser = ResponseHeadParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\n\r\n") is not None
    parser.feed_eof()


@pytest.mark.parametrize("value", [b"chunked", b"identity", b""])
def test_inner_transfer_encoding_is_refused(value: bytes) -> None:
    with pytest.raises(InnerTransferEncoding) as caught:
        parse_response_head(b"HTTP/1.1 200 OK\r\ntransfer-ENCODING: " + value + b"\r\n\r\n")
    assert caught.value.detail == "Transfer-Encoding in the inner response is not supported"


@pytest.mark.parametrize(
    ("head", "what"),
    [
        (b"HTTP/2 200 OK\r\n\r\n", "invalid HTTP version"),
        (b"http/1.1 200 OK\r\n\r\n", "invalid HTTP version"),
        (b"\r\n\r\n", "invalid HTTP version"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "invalid response status"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "invalid response status"),
        (b"HTTP/1.1 200 O\x01K\r\n\r\n", "invalid response status"),
        (b"HTTP/1.1 200 OK\r\nBad Name: v\r\n\r\n", "invalid header name"),
        (b"HTTP/1.1 200 OK\r\nName : v\r\n\r\n", "invalid header name"),
        (b"HTTP/1.1 200 OK\r\n: v\r\n\r\n", "invalid header name"),
        (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "invalid header name"),
        (b"HTTP/1.1 200 OK\r\nA: 1\r\n folded\r\n\r\n", "invalid header name"),
        (b"HTTP/1.1 200 OK\r\nA: x\x01y\r\n\r\n", "invalid header value"),
        (b"HTTP/1.1 200 OK\r\nA: x\ry\r\n\r\n", "invalid header value"),
    ],
)
def test_malformed_heads_name_what_was_wrong(head: bytes, what: str) -> None:
    with pytest.raises(MalformedHead) as caught:
        parse_response_head(head)
    assert caught.value.detail == f"Failed to parse HTTP response: {what}"
    assert "line" in str(caught.value)


def test_status_below_100_is_invalid() -> None:
    with pytest.raises(InvalidStatus):
        parse_response_head(b"HTTP/1.1 099 Low\r\n\r\n")


def test_non_utf8_header_value_is_dropped_from_a_response() -> None:
    head = parse_response_head(b"HTTP/1.1 200 OK\r\nA: \xff\xfe\r\nB: caf\xc3\xa9\r\n\r\n")
    assert head.headers == [("B", "caf\u00e9")]


_LINE_BYTES = st.sampled_from([b"a", b"Z", b"-", b"!", b":", b" ", b"\t", b"/", b"\x7f", b"\x00",
                               b"\xc3\xa9", b"\xff", b"\r"])  # fmt: skip
_LINE_PART = st.lists(_LINE_BYTES, max_size=6).map(b"".join)
_NAME = st.lists(st.sampled_from([b"a", b"Z", b"-", b"!"]), min_size=1, max_size=3).map(b"".join)
# Mostly a valid name and any value, where one odd byte decides; sometimes anything at all.
_HEADER_LINE = st.builds(lambda name, value: name + b":" + value, _NAME, _LINE_PART) | _LINE_PART


@settings(max_examples=1000)  # a pure function: cheap, and a single odd byte decides
@given(st.lists(_HEADER_LINE, max_size=5))
def test_header_lines_parse_as_the_line_by_line_checks_say(lines: list[bytes]) -> None:
    # Each line is matched once; the line-by-line checks are the reference for every line mix.
    outcomes = []
    for parse in ("_headers", "_checked_headers"):
        for keep_non_utf8 in (True, False):
            try:
                result: object = getattr(RequestHeadParser(), parse)(
                    lines, keep_non_utf8=keep_non_utf8
                )
            except MalformedHead as error:
                result = (type(error), error.detail, str(error))
            outcomes.append(result)
    assert outcomes[:2] == outcomes[2:]


# --- request heads (GET attach, stream-full mode) ------------------------------------------------


def test_request_head_round_trip_with_body() -> None:
    headers = [("host", "x"), ("content-length", "4"), ("x-dup", "1"), ("x-dup", "2")]
    wire = encode_request_head("PUT", "/p/q?a=1&b=%20", headers) + b"data"

    parser = RequestHeadParser()
    head = None
    for index in range(len(wire)):
        head = parser.feed(wire[index : index + 1])
        if head is not None:
            break
    assert head is not None
    assert (head.method, head.target, head.headers) == ("PUT", "/p/q?a=1&b=%20", headers)
    assert head.content_length() == 4
    assert wire.endswith(head.body + b"data"[len(head.body) :])


@pytest.mark.parametrize("target", ["/", "/a?b", "*", "http://host:1/x?y"])
def test_request_target_forms(target: str) -> None:
    assert parse_request_head(f"OPTIONS {target} HTTP/1.1\r\n\r\n".encode()).target == target


@pytest.mark.parametrize("value", [b"chunked", b"gzip, chunked", b"identity, chunked"])
def test_request_with_a_real_transfer_coding_is_refused(value: bytes) -> None:
    with pytest.raises(InnerTransferEncoding, match="unexpected transfer encoding"):
        parse_request_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: " + value + b"\r\n\r\n")


@pytest.mark.parametrize("value", [b"chunked", b"gzip, chunked"])
def test_a_servers_request_parser_takes_transfer_codings_and_says_the_version(
    value: bytes,
) -> None:
    wire = b"POST / HTTP/1.0\r\nTransfer-Encoding: " + value + b"\r\n\r\n5\r\n"
    head = RequestHeadParser(transfer_encoding=True).feed(wire)
    assert head is not None
    assert (head.headers, head.body, head.minor_version) == (
        [("Transfer-Encoding", value.decode())],
        b"5\r\n",
        0,
    )
    assert parse_request_head(b"GET / HTTP/1.1\r\n\r\n").minor_version == 1


def test_request_with_identity_transfer_coding_is_accepted() -> None:
    head = parse_request_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: Identity\r\n\r\nraw")
    assert head.body == b"raw"


@pytest.mark.parametrize(
    ("head", "what"),
    [
        (b"GET /\r\n\r\n", "invalid request line"),
        (b"GET / HTTP/2\r\n\r\n", "invalid request line"),
        (b"G(T / HTTP/1.1\r\n\r\n", "invalid method"),
        (b"GET nope HTTP/1.1\r\n\r\n", "invalid request target"),
        (b"GET / HTTP/1.1\r\nA: \xff\r\n\r\n", "header value is not UTF-8"),
    ],
)
def test_malformed_request_heads(head: bytes, what: str) -> None:
    with pytest.raises(MalformedHead) as caught:
        parse_request_head(head)
    assert caught.value.detail == f"Failed to parse HTTP request: {what}"


def test_request_head_limits_match_the_response_ones() -> None:
    too_many = b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(65)) + b"\r\n"
    with pytest.raises(TooManyHeaders):
        parse_request_head(too_many)
    with pytest.raises(IncompleteHead, match="Incomplete HTTP request"):
        parse_request_head(b"GET / HTTP/1.1\r\n")


# --- Content-Length ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], None),
        ([("Content-Length", "5")], 5),
        ([("content-length", "5, 5")], 5),
        ([("Content-Length", "5"), ("CONTENT-LENGTH", "5")], 5),
        ([("Content-Length", "0")], 0),
    ],
)
def test_content_length(headers: list[Header], expected: int | None) -> None:
    assert content_length(headers) == expected


@pytest.mark.parametrize(
    "headers",
    [
        [("Content-Length", "5, 6")],
        [("Content-Length", "5"), ("Content-Length", "6")],
        [("Content-Length", "-1")],
        [("Content-Length", "")],
        [("Content-Length", "\u0661")],  # an Arabic-Indic digit is not an HTTP digit
    ],
)
def test_bad_content_length_is_an_error(headers: list[Header]) -> None:
    with pytest.raises(InvalidContentLength):
        content_length(headers)


def test_negative_content_length_is_refused_when_encoding() -> None:
    with pytest.raises(InvalidContentLength):
        encode_response_head(200, [], content_length=-1)
