"""The exception hierarchy of the wire-protocol package.

Every error raised on purpose by `nvcf_sidecar.protocol` derives from `ProtocolError` and says which
input was wrong and with which value; framing errors also carry the invocation service's `detail`.
"""

from __future__ import annotations

__all__ = [
    "H1Error",
    "HeadAlreadyParsed",
    "HeadTooLarge",
    "IncompleteHead",
    "InnerTransferEncoding",
    "InvalidContentLength",
    "InvalidHeader",
    "InvalidPollSeconds",
    "InvalidStatus",
    "InvalidSubjectToken",
    "MalformedChunk",
    "MalformedHead",
    "MalformedMessage",
    "MessageTooLarge",
    "MissingAttachConfig",
    "PollSecondsTooLarge",
    "ProtocolError",
    "TooManyHeaders",
    "UnparsablePollSeconds",
]


class ProtocolError(Exception):
    """Base class of every error the protocol package raises on purpose."""


class InvalidSubjectToken(ProtocolError, ValueError):
    """A value that goes into a NATS subject or stream name would change its meaning."""

    def __init__(self, kind: str, value: str, reason: str) -> None:
        self.kind = kind
        self.value = value
        self.reason = reason
        super().__init__(f"invalid {kind} {value!r} for a NATS subject or name: {reason}")


# --- HTTP/1.1 head framing (attach bodies) -------------------------------------------------------


class H1Error(ProtocolError):
    """A head inside an attach body (or one about to be written) breaks the framing rules.

    `detail` is the short text the invocation service puts in its 400 problem body; `str()` adds
    which line or value was at fault.
    """

    def __init__(self, detail: str, context: str = "") -> None:
        self.detail = detail
        self.context = context
        super().__init__(f"{detail} ({context})" if context else detail)


class IncompleteHead(H1Error):
    """The stream ended before the blank line that closes the head."""


class HeadTooLarge(H1Error):
    """The head did not end within the buffered-bytes limit."""


class TooManyHeaders(H1Error):
    """The head has more header lines than the limit."""


class MalformedHead(H1Error):
    """The start line or a header line is not valid HTTP/1.x syntax."""


class InvalidStatus(H1Error, ValueError):
    """A status code outside 100-999 was parsed or asked for."""


class InnerTransferEncoding(H1Error):
    """The inner head declares a transfer coding, which attach framing cannot carry."""


class InvalidHeader(H1Error, ValueError):
    """A header name, value, method, target or reason given to an encoder would corrupt the head."""


class InvalidContentLength(H1Error, ValueError):
    """Content-Length values that are not a single non-negative integer."""


class HeadAlreadyParsed(H1Error):
    """A head parser was fed after it returned the head; the rest is body, not head."""


class MalformedChunk(H1Error):
    """A chunked body's size line, chunk end or trailer breaks RFC 9112 §7.1."""


# --- Poll budget ---------------------------------------------------------------------------------


class InvalidPollSeconds(ProtocolError, ValueError):
    """The caller's NVCF-POLL-SECONDS header cannot be honoured (the IS answers 400).

    `detail` is the text NVIDIA's invocation service puts in that 400 problem body.
    """

    detail = "failed to parse poll duration"

    def __init__(self, value: str, reason: str) -> None:
        self.value = value
        self.reason = reason
        super().__init__(f"invalid NVCF-POLL-SECONDS {value!r}: {reason}")


class UnparsablePollSeconds(InvalidPollSeconds):
    """The header is not an unsigned decimal integer."""


class PollSecondsTooLarge(InvalidPollSeconds):
    """The header asks for more than the maximum poll duration."""


# --- Protobuf messages ---------------------------------------------------------------------------


class MalformedMessage(ProtocolError, ValueError):
    """Bytes from the queue or a poll request do not decode as the expected protobuf message."""

    def __init__(self, message_type: str, size: int, reason: str) -> None:
        self.message_type = message_type
        self.size = size
        self.reason = reason
        super().__init__(f"cannot decode {message_type} from {size} bytes: {reason}")


class MessageTooLarge(ProtocolError, ValueError):
    """An encoded work item exceeds the protobuf size cap of the queue."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"encoded work item is {size} bytes; the limit is {limit} bytes")


class MissingAttachConfig(ProtocolError, ValueError):
    """A work item names no HTTP/1 attach connection, so the worker cannot reach the IS."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(
            f"work item {request_id!r} has no statelessConfig connection with an http1Config"
        )
