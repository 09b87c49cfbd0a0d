"""Reading a request's HTTP/1.x header block, as :mod:`http.client` does but ten times cheaper.

The fake server's own parsing (it shares no code with the client).
``http.client.parse_headers`` (used by ``http.server`` for requests) runs the
block through the ``email`` package's feed parser: about 20 us for five
headers, a large share of the fake server's CPU per request, and the
benchmarks run the fake on the same cores as the worker.
:func:`read_headers` reads the same lines into the same
:class:`http.client.HTTPMessage` with the same result (names and values as the
``email`` parser stores them, folded lines included, and where it stops at a
line that is not a header), and the same limits and exceptions
(:class:`http.client.LineTooLong`, :class:`http.client.HTTPException` for too
many lines), for any block whose lines end in CRLF or LF (a bare CR, which
HTTP forbids in a header, is a line break to the ``email`` parser and not here).
``tests/test_http_headers.py`` checks it against the standard library, block by
block.

Used by :mod:`worker.fake_hatz.server`.
"""

from __future__ import annotations

import http.client
import re
from typing import Protocol

#: http.client's limits: the longest header line and the most lines (the blank one too).
MAX_LINE = 65536
MAX_LINES = 100

# What the email package's feed parser takes as a header line: a name of printable
# characters but ':' (maybe empty), then ':'. (Its other two cases, a continuation
# line and a mailbox "From " line, are handled below.)
_HEADER = re.compile(rb"[\x21-\x39\x3b-\x7e]*:")
_END = (b"\r\n", b"\n", b"")


class _Lines(Protocol):
    def readline(self, size: int = ..., /) -> bytes: ...


def read_headers(fp: _Lines) -> http.client.HTTPMessage:
    """Read header lines from ``fp`` up to and including the blank line; return them.

    As ``http.client.parse_headers``: a continuation line (starting with a space
    or a tab) joins the header before it, its line break kept; a first line that
    is a continuation, or a header with an empty name, is dropped; a line that is
    not a header ends the headers (the lines after it, up to the blank line, are
    read and dropped).
    """
    message = http.client.HTTPMessage()
    current: list[bytes] = []  # the header being read: its first line and continuations
    stopped = False  # a non-header line was seen: read on to the blank line, keep nothing
    lines = 0
    while True:
        line = fp.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise http.client.LineTooLong("header line")
        lines += 1
        if lines > MAX_LINES:
            raise http.client.HTTPException(f"got more than {MAX_LINES} headers")
        if line in _END:
            break
        if stopped:
            continue
        if line[:1] in (b" ", b"\t"):
            if current:
                current.append(line)
            continue
        if line.startswith(b"From "):  # the email parser's mbox line: skipped, as is
            _add(message, current)  # any continuation of it
            current = []
            continue
        if _HEADER.match(line) is None:
            stopped = True
            continue
        _add(message, current)
        current = [line]
    _add(message, current)
    return message


def _add(message: http.client.HTTPMessage, lines: list[bytes]) -> None:
    """Store one header as ``email.policy.compat32.header_source_parse`` would."""
    if not lines:
        return
    text = b"".join(lines).decode("iso-8859-1")
    name, _, value = text.partition(":")
    if not name:  # ": value": the email parser drops it as a defect
        return
    message.set_raw(name, value.lstrip(" \t").rstrip("\r\n"))
