"""HTTP/1.1 heads carried inside attach bodies: writing them, and parsing them as bytes arrive (§4).

A POST attach body is a response head plus the raw response body; a `+h1` GET attach body is a
request head plus the raw request body. Neither carries an inner transfer coding or chunk framing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Final, Generic, TypeVar

from nvcf_sidecar.protocol.errors import (
    HeadAlreadyParsed,
    HeadTooLarge,
    IncompleteHead,
    InnerTransferEncoding,
    InvalidContentLength,
    InvalidHeader,
    InvalidStatus,
    MalformedHead,
    TooManyHeaders,
)
from nvcf_sidecar.protocol.headers import strip_hop_by_hop
from nvcf_sidecar.protocol.limits import MAX_HEAD_BYTES, MAX_HEAD_HEADERS
from nvcf_sidecar.protocol.reasons import reason_phrase

__all__ = [
    "Header",
    "RequestHead",
    "RequestHeadParser",
    "ResponseHead",
    "ResponseHeadParser",
    "content_length",
    "encode_request_head",
    "encode_response_head",
    "parse_request_head",
    "parse_response_head",
]

Header = tuple[str, str]
"""One header as (name, value); lists of them keep the order and duplicates of the wire."""

_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE: Final = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
# A whole valid header line: token name, colon, the value without its surrounding spaces/tabs.
_HEADER_FIELD: Final = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)[ \t]*"
)
# The blank line that ends a head: the first LF followed by LF or CRLF.
_HEAD_END: Final = re.compile(rb"\n\r?\n")
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
_REQUEST_LINE: Final = re.compile(rb"([^ ]*) ([^ ]*) HTTP/1\.([01])")
_TARGET: Final = re.compile(rb"/[\x21-\x7e]*|\*|[A-Za-z][A-Za-z0-9+.\-]*://[\x21-\x7e]+")
_DIGITS: Final = re.compile(r"[0-9]+")

_TOKEN_STR: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET_STR: Final = re.compile(r"/[\x21-\x7e]*|\*|[A-Za-z][A-Za-z0-9+.\-]*://[\x21-\x7e]+")
# Control characters other than HTAB would end the line early or smuggle a header.
_BAD_TEXT_STR: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


# --- values --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A parsed response head and the body bytes that arrived in the same chunks after it."""

    status: int
    reason: str
    headers: list[Header]
    body: bytes

    def content_length(self) -> int | None:
        """The declared body length, or None when the head declares none (read to the end)."""
        return content_length(self.headers)


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A parsed request head and the body bytes that arrived in the same chunks after it."""

    method: str
    target: str
    headers: list[Header]
    body: bytes
    minor_version: int = 1
    """1 for HTTP/1.1, 0 for HTTP/1.0 (whose connections close after one exchange by default)."""

    def content_length(self) -> int | None:
        """The declared body length, or None when the head declares none (read to the end)."""
        return content_length(self.headers)


def content_length(headers: Iterable[Header]) -> int | None:
    """The one Content-Length the headers declare, or None; conflicting or bad values raise."""
    found: int | None = None
    for name, value in headers:
        if name.lower() != "content-length":
            continue
        for raw in value.split(","):
            part = raw.strip(" \t")
            if not _DIGITS.fullmatch(part):
                raise InvalidContentLength("invalid Content-Length", f"Content-Length: {value}")
            length = int(part)
            if found is not None and length != found:
                raise InvalidContentLength(
                    "conflicting Content-Length values", f"{found} and {length}"
                )
            found = length
    return found


# --- writing -------------------------------------------------------------------------------------


def _header_lines(parts: list[str], headers: Iterable[Header]) -> None:
    for name, value in headers:
        if not _TOKEN_STR.fullmatch(name):
            raise InvalidHeader("invalid header name", repr(name))
        if _BAD_TEXT_STR.search(value):
            raise InvalidHeader("invalid header value", f"{name}: {value!r}")
        parts.append(f"{name}: {value}\r\n")


def _encode(parts: list[str]) -> bytes:
    # surrogateescape gives back the exact bytes of header values aiohttp decoded that way.
    return "".join(parts).encode("utf-8", "surrogateescape")


def encode_response_head(
    status: int,
    headers: Iterable[Header],
    *,
    content_length: int | None = None,
    reason: str | None = None,
) -> bytes:
    """The head that starts a POST attach body: status line, headers, blank line.

    Hop-by-hop headers (and those `Connection` names) are removed, so no Transfer-Encoding ever
    reaches the IS. Any Content-Length among `headers` is replaced: pass the length of the body
    that will follow when it is known, None when the body runs until the attach request ends.
    `reason` defaults to the canonical phrase (`status code <n>` for codes without one).
    """
    if isinstance(status, bool) or not 100 <= status <= 999:
        raise InvalidStatus("invalid status code", repr(status))
    if reason is None:
        reason = reason_phrase(status) or f"status code {status}"
    elif _BAD_TEXT_STR.search(reason):
        raise InvalidHeader("invalid reason phrase", repr(reason))
    kept = [pair for pair in strip_hop_by_hop(headers) if pair[0].lower() != "content-length"]
    if content_length is not None:
        if content_length < 0:
            raise InvalidContentLength("negative Content-Length", str(content_length))
        kept.append(("Content-Length", str(content_length)))
    parts = [f"HTTP/1.1 {status:03d} {reason}\r\n"]
    _header_lines(parts, kept)
    parts.append("\r\n")
    return _encode(parts)


def encode_request_head(
    method: str, target: str, headers: Iterable[Header], *, strip: bool = True
) -> bytes:
    """The head that starts a `+h1` GET attach body: request line, headers, blank line.

    `target` is the caller's path and query (empty means `/`; absolute-form and `*` are accepted,
    non-ASCII must already be percent-encoded). Hop-by-hop headers are removed (with `strip`
    False, `headers` are written as given: the caller removed them); a Content-Length is kept as
    given, since it describes the raw body that follows.
    """
    if not _TOKEN_STR.fullmatch(method):
        raise InvalidHeader("invalid method", repr(method))
    target = target or "/"
    if not _TARGET_STR.fullmatch(target):
        raise InvalidHeader("invalid request target", repr(target))
    parts = [f"{method} {target} HTTP/1.1\r\n"]
    _header_lines(parts, strip_hop_by_hop(headers) if strip else headers)
    parts.append("\r\n")
    return _encode(parts)


# --- parsing -------------------------------------------------------------------------------------


def _find_head_end(buffer: bytes | bytearray, start: int, stop: int) -> int:
    """Index just past the blank line that ends the head within buffer[:stop], or -1."""
    match = _HEAD_END.search(buffer, start, stop)
    return -1 if match is None else match.end()


def _head_lines(head: bytes) -> list[bytes]:
    if head.count(b"\n") == head.count(b"\r\n"):  # the usual case: CRLF only
        return head[:-4].split(b"\r\n")
    # Lines end in CRLF or a bare LF; the last two split items are the blank line and b"".
    lines = head.split(b"\n")
    del lines[-2:]
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


_HeadT = TypeVar("_HeadT", ResponseHead, RequestHead)


class _HeadParser(Generic[_HeadT]):
    """Buffers chunks until a complete head, then parses it once; shared by both directions."""

    __slots__ = ("_buffer", "_done", "_scan_from")

    _noun: ClassVar[str]

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scan_from = 0
        self._done = False

    @property
    def done(self) -> bool:
        """True once a head was returned; the parser accepts nothing more."""
        return self._done

    def feed(self, data: bytes | bytearray | memoryview) -> _HeadT | None:
        """Take the next chunk; return the head once it is complete, else None.

        The returned head's `body` holds the bytes that followed the head in the chunks fed so
        far; every later chunk of the stream is body and must not be fed here.
        """
        if self._done:
            raise HeadAlreadyParsed(f"the {self._noun} head was already parsed")
        buffer: bytes | bytearray
        if not self._buffer and isinstance(data, bytes):
            buffer = data  # the usual case: the whole head in the first chunk, no copy
        else:
            self._buffer += data
            buffer = self._buffer
        stop = min(len(buffer), MAX_HEAD_BYTES)
        end = _find_head_end(buffer, self._scan_from, stop)
        if end == -1:
            if len(buffer) >= MAX_HEAD_BYTES:
                raise HeadTooLarge(
                    "HTTP headers too large or malformed",
                    f"no end of the {self._noun} head within {MAX_HEAD_BYTES} bytes",
                )
            if buffer is data:
                self._buffer += data
            # A terminator may start in the last two bytes and finish in the next chunk.
            self._scan_from = max(0, stop - 2)
            return None
        self._done = True
        if isinstance(buffer, bytes):
            head, body = buffer[:end], buffer[end:]
        else:
            with memoryview(buffer) as view:  # one copy each, not slice-then-convert
                head, body = bytes(view[:end]), bytes(view[end:])
            self._buffer = bytearray()
        return self._parse(_head_lines(head), body)

    def feed_eof(self) -> None:
        """Signal the end of the stream; raises IncompleteHead if no complete head arrived."""
        if not self._done:
            raise IncompleteHead(
                f"Incomplete HTTP {self._noun}", f"{len(self._buffer)} bytes before the end"
            )

    def _parse(self, lines: list[bytes], body: bytes) -> _HeadT:
        raise NotImplementedError

    def _malformed(self, what: str, line_number: int, line: bytes) -> MalformedHead:
        return MalformedHead(
            f"Failed to parse HTTP {self._noun}: {what}", f"line {line_number}: {line[:200]!r}"
        )

    def _headers(self, lines: list[bytes], *, keep_non_utf8: bool) -> list[Header]:
        """Header lines in order; each must be `token ":" OWS value OWS`.

        A value that is not UTF-8 cannot become a `str` header: it is dropped when
        `keep_non_utf8` allows (responses, relayed as-is by the IS), else it is an error.
        One match per line; a head with a bad line, or too many, is checked again line by line
        (`_checked_headers`), which says what is wrong.
        """
        if len(lines) > MAX_HEAD_HEADERS:
            return self._checked_headers(lines, keep_non_utf8=keep_non_utf8)
        headers: list[Header] = []
        match_field = _HEADER_FIELD.fullmatch
        for line in lines:
            match = match_field(line)
            if match is None:
                return self._checked_headers(lines, keep_non_utf8=keep_non_utf8)
            name, raw_value = match.groups()
            try:
                value = raw_value.decode()
            except UnicodeDecodeError:
                if keep_non_utf8:
                    continue
                return self._checked_headers(lines, keep_non_utf8=keep_non_utf8)
            headers.append((name.decode("ascii"), value))
        return headers

    def _checked_headers(self, lines: list[bytes], *, keep_non_utf8: bool) -> list[Header]:
        """`_headers` one check at a time, raising for the first line that fails one."""
        headers: list[Header] = []
        for index, line in enumerate(lines, start=2):
            if index - 2 >= MAX_HEAD_HEADERS:
                raise TooManyHeaders(
                    f"Failed to parse HTTP {self._noun}: too many headers",
                    f"more than {MAX_HEAD_HEADERS} header lines",
                )
            colon = line.find(b":")
            if colon < 1 or not _TOKEN.fullmatch(line, 0, colon):
                raise self._malformed("invalid header name", index, line)
            raw_value = line[colon + 1 :].strip(b" \t")
            if not _FIELD_VALUE.fullmatch(raw_value):
                raise self._malformed("invalid header value", index, line)
            try:
                value = raw_value.decode()
            except UnicodeDecodeError:
                if keep_non_utf8:
                    continue
                raise self._malformed("header value is not UTF-8", index, line) from None
            headers.append((line[:colon].decode("ascii"), value))
        return headers


class ResponseHeadParser(_HeadParser[ResponseHead]):
    """Parses the response head at the start of a POST attach body, fed chunk by chunk.

    Enforces the invocation service's rules: the head ends within `MAX_HEAD_BYTES`, has at most
    `MAX_HEAD_HEADERS` header lines and no Transfer-Encoding; header values that are not UTF-8 are
    dropped. Error `detail`s are the texts the IS answers with in its 400.

    `transfer_encoding=True` parses the head of an answer on the wire instead (an HTTP client's),
    where Transfer-Encoding frames the body and is allowed.
    """

    __slots__ = ("_transfer_encoding",)
    _noun = "response"

    def __init__(self, *, transfer_encoding: bool = False) -> None:
        super().__init__()
        self._transfer_encoding = transfer_encoding

    def _parse(self, lines: list[bytes], body: bytes) -> ResponseHead:
        start = lines[0]
        if not start.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")):
            raise self._malformed("invalid HTTP version", 1, start)
        match = _STATUS_LINE.fullmatch(start)
        if match is None:
            raise self._malformed("invalid response status", 1, start)
        status = int(match.group(1))
        if status < 100:
            raise InvalidStatus("Invalid status code: invalid status code", repr(start))
        headers = self._headers(lines[1:], keep_non_utf8=True)
        # Checked on the raw lines: a Transfer-Encoding dropped as non-UTF-8 still counts.
        for line in () if self._transfer_encoding else lines[1:]:
            if line[:18].lower() == b"transfer-encoding:":
                raise InnerTransferEncoding(
                    "Transfer-Encoding in the inner response is not supported", repr(line[:200])
                )
        reason = (match.group(2) or b"").decode(errors="replace")
        return ResponseHead(status=status, reason=reason, headers=headers, body=body)


class RequestHeadParser(_HeadParser[RequestHead]):
    """Parses the request head at the start of a `+h1` GET attach body, fed chunk by chunk.

    A declared transfer coding other than `identity` is rejected (the body is never framed);
    the same size and count limits as for responses apply.

    `transfer_encoding=True` parses the head of a request on the wire instead (an HTTP
    server's), where Transfer-Encoding frames the body and is allowed.
    """

    __slots__ = ("_transfer_encoding",)
    _noun = "request"

    def __init__(self, *, transfer_encoding: bool = False) -> None:
        super().__init__()
        self._transfer_encoding = transfer_encoding

    def _parse(self, lines: list[bytes], body: bytes) -> RequestHead:
        start = lines[0]
        match = _REQUEST_LINE.fullmatch(start)
        if match is None:
            raise self._malformed("invalid request line", 1, start)
        method, target = match.group(1), match.group(2)
        if not _TOKEN.fullmatch(method):
            raise self._malformed("invalid method", 1, start)
        if not _TARGET.fullmatch(target):
            raise self._malformed("invalid request target", 1, start)
        headers = self._headers(lines[1:], keep_non_utf8=False)
        for name, value in () if self._transfer_encoding else headers:
            if name.lower() == "transfer-encoding":
                codings = [c.strip(" \t").lower() for c in value.split(",")]
                if any(coding and coding != "identity" for coding in codings):
                    raise InnerTransferEncoding(
                        "unexpected transfer encoding", f"Transfer-Encoding: {value}"
                    )
        return RequestHead(
            method=method.decode("ascii"),
            target=target.decode("ascii"),
            headers=headers,
            body=body,
            minor_version=int(match.group(3)),
        )


def parse_response_head(data: bytes) -> ResponseHead:
    """Parse a response head from a buffer that holds all of it (and maybe some body)."""
    head = ResponseHeadParser().feed(data)
    if head is None:
        raise IncompleteHead("Incomplete HTTP response", f"{len(data)} bytes before the end")
    return head


def parse_request_head(data: bytes) -> RequestHead:
    """Parse a request head from a buffer that holds all of it (and maybe some body)."""
    head = RequestHeadParser().feed(data)
    if head is None:
        raise IncompleteHead("Incomplete HTTP request", f"{len(data)} bytes before the end")
    return head
