"""worker.fake_hatz.headers.read_headers gives what http.client.parse_headers gives."""

from __future__ import annotations

import http.client
import io

import pytest

from worker.fake_hatz.headers import MAX_LINES, read_headers

BLOCKS = [
    b"\r\n",
    b"Content-Type: application/json\r\nContent-Length: 12\r\n\r\n",
    b"content-length:12\n\n",  # LF only, no space after the colon
    b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nX: \r\n\r\n",  # repeated; empty value
    b"X-Folded: one\r\n  two\r\n\tthree\r\nY: y\r\n\r\n",  # obs-fold continuation lines
    b"X-Empty-First:\r\n more\r\n\r\n",
    b"  leading continuation\r\nA: a\r\n\r\n",  # first line is a continuation: dropped
    b": no name\r\n cont\r\nB: b\r\n\r\n",  # empty name: dropped with its continuation
    b"A: a\r\nNot a header line\r\nB: b\r\n\r\n",  # a non-header line ends the headers
    b"A: a\r\nBad Name: x\r\n\r\n",  # a space in the name is not a header either
    b"From someone\r\nA: a\r\n\r\n",  # mailbox line first
    b"A: a\r\nFrom x\r\n cont\r\nB: b\r\n\r\n",  # misplaced mailbox line and its continuation
    b"A:  spaced value  \r\nB:\ttabbed\r\n\r\n",
    b"Caf\xe9: na\xefve\r\n\r\n",  # latin-1 bytes
    b"A: a",  # no end: the connection closed
    b"A: a\r\nB: b\r\n",  # closed after a header line
    b"Host: x\r\nHost: y\r\nhost: z\r\n\r\n",
    b"Weird!#$%&'*+-.^_`|~Name: v\r\n\r\n",
    b"A: a:b:c\r\n\r\n",
]


@pytest.mark.parametrize("block", BLOCKS)
def test_same_headers_as_http_client(block: bytes) -> None:
    ours = read_headers(io.BytesIO(block + b"BODY"))
    stdlib = http.client.parse_headers(io.BytesIO(block + b"BODY"))
    assert isinstance(ours, http.client.HTTPMessage)
    assert ours.items() == stdlib.items()
    assert ours.get("content-length") == stdlib.get("content-length")
    assert ours.get_all("set-cookie") == stdlib.get_all("set-cookie")


@pytest.mark.parametrize("block", BLOCKS)
def test_reads_exactly_the_header_block(block: bytes) -> None:
    ours = io.BytesIO(block + b"BODY")
    stdlib = io.BytesIO(block + b"BODY")
    read_headers(ours)
    http.client.parse_headers(stdlib)
    assert ours.read() == stdlib.read()


def test_too_many_lines_is_the_same_error() -> None:
    block = b"".join(b"H%d: v\r\n" % i for i in range(MAX_LINES)) + b"\r\n"
    with pytest.raises(http.client.HTTPException) as stdlib:
        http.client.parse_headers(io.BytesIO(block))
    with pytest.raises(http.client.HTTPException) as ours:
        read_headers(io.BytesIO(block))
    assert str(ours.value) == str(stdlib.value)
    fits = b"".join(b"H%d: v\r\n" % i for i in range(MAX_LINES - 1)) + b"\r\n"
    assert len(read_headers(io.BytesIO(fits))) == MAX_LINES - 1


def test_too_long_a_line_is_the_same_error() -> None:
    block = b"A: " + b"x" * 70_000 + b"\r\n\r\n"
    with pytest.raises(http.client.LineTooLong):
        http.client.parse_headers(io.BytesIO(block))
    with pytest.raises(http.client.LineTooLong):
        read_headers(io.BytesIO(block))
