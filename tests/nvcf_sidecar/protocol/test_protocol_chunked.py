"""Decoding chunked bodies (RFC 9112 §7.1) fed in any pieces."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvcf_sidecar.protocol.chunked import MAX_CHUNK_LINE, ChunkedDecoder
from nvcf_sidecar.protocol.errors import MalformedChunk

WIRE = b"5;name=value\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n"
DATA = b"hello 0123456789"


def decode(pieces: list[bytes]) -> tuple[bytes, ChunkedDecoder]:
    received: list[bytes] = []
    decoder = ChunkedDecoder(received.append)
    for piece in pieces:
        decoder.feed(piece)
    return b"".join(received), decoder


def test_extensions_and_trailers_are_dropped_and_what_follows_is_left_over() -> None:
    data, decoder = decode([WIRE + b"GET / HTTP/1.1\r\n"])
    assert (data, decoder.done, decoder.leftover) == (DATA, True, b"GET / HTTP/1.1\r\n")
    decoder.feed(b"more")
    assert decoder.leftover == b"GET / HTTP/1.1\r\nmore"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(WIRE)), max_size=12))
def test_any_pieces_decode_the_same(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(WIRE)]
    data, decoder = decode([WIRE[a:b] for a, b in itertools.pairwise(bounds)])
    assert (data, decoder.done, decoder.leftover) == (DATA, True, b"")


def test_a_body_not_ended_yet_is_not_done() -> None:
    data, decoder = decode([b"5\r\nhel", b"lo\r\n"])
    assert (data, decoder.done) == (b"hello", False)


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"zz\r\n", "chunk size b'zz'"),
        (b"-1\r\n", "chunk size b'-1'"),
        (b"1234567890abcdef0\r\n", "chunk size"),
        (b"2\r\nabc\r\n", "chunk data longer than its size"),
        (b"1" * (MAX_CHUNK_LINE + 1), "a chunk line too long"),
    ],
)
def test_malformed_framing_is_refused(wire: bytes, message: str) -> None:
    with pytest.raises(MalformedChunk, match=message):
        decode([wire])
