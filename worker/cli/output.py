"""How ``hatz-worker`` commands and the demo print: JSON, error lines, tables, durations,
URLs without their secrets, and the one live progress drawer.

The progress drawer is hand-written rather than click's ``progressbar``: ours
redraws several lines (the demo's table) with lines printed above them, and
prints plain, deduplicated lines when the stream is not a terminal (CI logs).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from worker.cli.runtime import PROG
from worker.ops.redaction import safe_url

__all__ = [
    "ProgressDrawer",
    "clip",
    "clock",
    "duration",
    "print_error",
    "print_json",
    "safe_url",
    "table",
]


def print_error(message: str) -> None:
    """``hatz-worker: <message>`` on stderr."""
    print(f"{PROG}: {message}", file=sys.stderr)


def print_json(value: Any) -> None:
    """``value`` as indented JSON with sorted keys on stdout."""
    print(json.dumps(value, indent=2, sort_keys=True, default=str))


def duration(seconds: float) -> str:
    """``12.3s``, ``4m05s``, ``2h07m`` or ``3d04h`` (negative counts as 0)."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


def clock(ts: float) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS.mmm``."""
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def clip(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart, a header line first; no trailing spaces."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines


_NOTHING_SHOWN = object()


class ProgressDrawer:
    """Live progress on ``stream``: lines redrawn in place on a terminal, plain lines otherwise.

    :meth:`show` replaces the live lines; :meth:`say` prints a lasting line above
    them. When ``stream`` is not a terminal, :meth:`show` prints its lines only when
    ``key`` changed (or ``every`` seconds passed), and nothing at all when ``plain``
    is false (``--json`` output, or a caller that prints its own lines).
    """

    def __init__(self, stream: TextIO, *, plain: bool = True, every: float | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.plain = plain
        self.every = every
        self._live: list[str] = []
        self._drawn = 0
        self._last_key: object = _NOTHING_SHOWN
        self._last_print = 0.0

    def say(self, text: str = "") -> None:
        """Print a lasting line (above the live lines, on a terminal)."""
        self._erase()
        # A terminal that cannot show ✓ gets a "?" rather than an exception.
        encoding = getattr(self.stream, "encoding", None) or "utf-8"
        self.stream.write(text.encode(encoding, errors="replace").decode(encoding) + "\n")
        self._draw()

    def show(self, lines: Sequence[str], *, key: object = None) -> None:
        """Replace the live lines (``key``: what counts as a change; default the lines)."""
        if self.tty:
            self._erase()
            self._live = list(lines)
            self._draw()
            return
        if not self.plain:
            return
        key = tuple(lines) if key is None else key
        now = time.monotonic()
        due = self.every is not None and now - self._last_print >= self.every
        if key != self._last_key or due:
            self.stream.write("".join(line + "\n" for line in lines))
            self.stream.flush()
            self._last_key, self._last_print = key, now

    def finish(self, *, keep: bool = True) -> None:
        """Stop redrawing; the live lines stay on screen, or are erased with ``keep=False``."""
        if not keep:
            self._erase()
        self._live = []
        self._drawn = 0
        self.stream.flush()

    def _erase(self) -> None:
        if self._drawn:
            # Up to the first live line, then clear to the end of the screen.
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        if self.tty and self._live:
            self.stream.write("".join(line + "\n" for line in self._live))
            self._drawn = len(self._live)
        self.stream.flush()
