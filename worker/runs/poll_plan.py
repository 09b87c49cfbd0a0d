"""Learned poll schedules: poll a run when its app's runs usually complete.

Most runs of one app take about the same time, so the app's recent durations
(:mod:`worker.store.durations`) say when to look. A run's schedule is then:

1. the first poll after ``HATZ_POLL_INITIAL_DELAY``, as always (it catches a
   job that failed to start);
2. one jump to the start of the app's *window* (the 10th to the 90th
   percentile of its recent durations; one span per mode when the durations
   cluster apart, each mode holding a fifth of the runs or more), cut into hops
   of at most ``HATZ_POLL_MAX_INTERVAL`` (no countdown ever grows past today's
   longest);
3. inside a span, a poll every *spacing* seconds (``HATZ_POLL_TARGET_LATENCY``,
   or a multiple of it, see below): a run that completes there is seen at most
   one spacing later; between spans, one jump;
4. past the window, the spacing doubles up to ``HATZ_POLL_INTERVAL``, then
   today's backoff (``HATZ_POLL_BACKOFF`` up to ``HATZ_POLL_MAX_INTERVAL``).

No history (fewer than :data:`MIN_HISTORY` runs), the knob at 0, or durations
so erratic that a window does not pay: today's schedule. "Pays" is checked on
the app's own history: :func:`plan_window` replays every recorded duration
(and each 5 % shorter and longer, as the next runs will differ from these)
through the learned schedule and through today's, and keeps the learned one
only when it costs no more status calls on average and its 90th-percentile
detection delay is no worse. It tries the spacing at the knob, then doubled
(up to ``HATZ_POLL_INTERVAL``), and keeps the cheapest window that pays at the
first spacing where one does; a long-tailed app usually gets none.

Written here rather than taken from a library: it is a few quantiles and a
replay loop over at most 64 numbers, and the rules (the countdown cap, the
fallback) are this project's.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from config import Settings
from worker.context import Context
from worker.store.durations import recent_durations

#: Runs of an app recorded before its polls are planned from them.
MIN_HISTORY = 5
#: How long a worker process reuses an app's window before reading its history again, s.
WINDOW_TTL = 30.0
_LOW, _HIGH = 10, 90  # the window's percentiles
_MARGIN = 0.05  # how much shorter and longer than its history the next runs are judged
_MAX_SPANS = 4  # modes planned for at most (each holds a fifth of the runs or more)
_CACHE_SIZE = 1024


@dataclass(frozen=True)
class Window:
    """Where an app's runs usually complete, in seconds after the submit (one span, or
    one per mode when its durations cluster apart), and how densely to poll there."""

    spans: tuple[tuple[float, float], ...]
    spacing: float

    @property
    def start(self) -> float:
        """The earliest completion expected."""
        return self.spans[0][0]

    @property
    def end(self) -> float:
        """The latest completion expected."""
        return self.spans[-1][1]

    def encode(self) -> str:
        """As the run record and the poll hint carry it: ``start,end[,start,end...],spacing``."""
        bounds = [f"{edge:.3f}" for span in self.spans for edge in span]
        return ",".join([*bounds, f"{self.spacing:.3f}"])

    @classmethod
    def decode(cls, raw: object) -> Window | None:
        """A window read back from a record or a hint; None when absent or malformed."""
        if not isinstance(raw, str) or not raw:
            return None
        try:
            numbers = [float(part) for part in raw.split(",")]
        except ValueError:
            return None
        if len(numbers) < 3 or len(numbers) % 2 == 0 or len(numbers) > 2 * _MAX_SPANS + 1:
            return None
        *edges, spacing = numbers
        if not spacing > 0 or any(not 0 <= e < math.inf for e in edges) or edges != sorted(edges):
            return None
        spans = tuple((edges[i], edges[i + 1]) for i in range(0, len(edges), 2))
        return cls(spans, spacing)


@dataclass(frozen=True)
class Replay:
    """A schedule replayed over durations: mean status calls per run, p90 delay."""

    calls: float
    p90_latency: float


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of the sorted, non-empty ``ordered``."""
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def plan_window(durations: Sequence[float], settings: Settings) -> Window | None:
    """The learned window for an app whose recent runs took ``durations`` seconds
    (to complete, after the submit); None: poll on today's schedule."""
    spacing = settings.poll_target_latency
    if spacing <= 0 or len(durations) < MIN_HISTORY:
        return None
    ordered = sorted(durations)
    # Judged on the history and on each run a little shorter and longer, as the next
    # runs will be: a window fitted too closely to 20 numbers fails the ones that follow.
    judged = sorted(
        [*ordered, *(d * (1 - _MARGIN) for d in ordered), *(d * (1 + _MARGIN) for d in ordered)]
    )
    fixed = replay(judged, None, settings)
    whole = _spans(ordered, math.inf)
    split = _spans(ordered, settings.poll_interval)
    candidates = [whole]
    if split != whole and len(split) <= _MAX_SPANS and _modes(ordered, split):
        candidates.insert(0, split)
    while spacing <= settings.poll_interval:
        best: tuple[float, Window] | None = None
        for spans in candidates:
            window = Window(spans, spacing)
            learned = replay(judged, window, settings)
            pays = learned.calls <= fixed.calls and learned.p90_latency <= fixed.p90_latency
            if pays and (best is None or learned.calls < best[0]):
                best = (learned.calls, window)
        if best is not None:
            return best[1]
        spacing *= 2
    return None


def _spans(ordered: Sequence[float], gap: float) -> tuple[tuple[float, float], ...]:
    """The 10th to 90th percentile of the sorted durations, split where two neighbours
    lie more than ``gap`` apart (a mode each side: jumping the gap costs one poll,
    walking it at the spacing many)."""
    low, high = percentile(ordered, _LOW), percentile(ordered, _HIGH)
    inside = [d for d in ordered if low <= d <= high]
    spans = []
    first = inside[0]
    for before, after in itertools.pairwise(inside):
        if after - before > gap:
            spans.append((first, before))
            first = after
    spans.append((first, inside[-1]))
    return tuple(spans)


def _modes(ordered: Sequence[float], spans: Sequence[tuple[float, float]]) -> bool:
    """Whether every span holds a real mode: at least a fifth of the runs (and 3),
    not a few stragglers of a long tail that one history happened to draw."""
    least = max(3, len(ordered) / 5)
    return all(sum(1 for d in ordered if a <= d <= b) >= least for a, b in spans)


def next_poll(
    elapsed: float, current: float, window: Window, settings: Settings
) -> tuple[float, float] | None:
    """``(delay, interval)``: when to poll next a run ``elapsed`` s after its submit,
    whose last delay was ``current``, and the interval to record (what today's
    backoff and error handling continue from). None: today's schedule from here.
    """
    aim = _aim(elapsed, window)
    if aim is not None:  # jump to the span (in hops no longer than today's longest)
        return min(aim - elapsed, settings.poll_max_interval), window.spacing
    if elapsed < window.end:
        return window.spacing, window.spacing
    if current < settings.poll_interval:  # past the window: widen fast to today's interval
        widened = min(settings.poll_interval, max(current, window.spacing) * 2)
        return widened, widened
    return None


def _aim(elapsed: float, window: Window) -> float | None:
    """Where a run ``elapsed`` s after its submit jumps to: the first poll of the next
    span, when it is before one (not inside one); None inside a span or past them all."""
    for start, end in window.spans:
        if elapsed < start:
            return start + window.spacing
        if elapsed < end:
            return None
    return None


def fixed_next(current: float, settings: Settings) -> float:
    """Today's next interval for a job that did not change: the backoff, capped."""
    return min(settings.poll_max_interval, current * settings.poll_backoff)


def poll_times(duration: float, window: Window | None, settings: Settings) -> list[float]:
    """Every poll of a run that takes ``duration`` s, in seconds after its submit, up to
    the one that sees it complete (no jitter; today's schedule without a window).

    Today's schedule is replayed as for a job that never reports progress (each
    progress resets it to ``HATZ_POLL_INTERVAL``), the cheapest case for it.
    """
    t = settings.poll_initial_delay
    current = settings.poll_interval
    times = [t]
    while t < duration:
        step = next_poll(t, current, window, settings) if window is not None else None
        if step is None:
            window = None  # past the window, today's schedule for good
            nxt = current if len(times) == 1 else fixed_next(current, settings)
            step = (nxt, nxt)
        t += step[0]
        current = step[1]
        times.append(t)
    return times


def seen_at(duration: float, window: Window | None, settings: Settings) -> tuple[int, float]:
    """``len`` and last entry of :func:`poll_times`, counting runs of equal steps (today's
    schedule once steady, hops of ``HATZ_POLL_MAX_INTERVAL`` towards a far window) at
    once: a long run costs the replay a few dozen steps, not one per poll."""
    t, current, calls = settings.poll_initial_delay, settings.poll_interval, 1
    longest = settings.poll_max_interval
    while t < duration:
        aim = _aim(t, window) if window is not None else None
        if aim is not None and aim - t > longest:
            full = math.ceil((aim - t) / longest) - 1  # hops of the longest countdown
            needed = math.ceil((duration - t) / longest)
            if needed <= full:
                return calls + needed, t + needed * longest
            t, current, calls = (
                t + full * longest,
                window.spacing if window else current,
                calls + full,
            )
            continue
        step = next_poll(t, current, window, settings) if window is not None else None
        if step is None:
            window = None  # past the window, today's schedule for good
            nxt = current if calls == 1 else fixed_next(current, settings)
            if calls > 1 and nxt == current:  # steady: this step until it sees the run
                needed = math.ceil((duration - t) / current)
                return calls + needed, t + needed * current
            step = (nxt, nxt)
        t, current, calls = t + step[0], step[1], calls + 1
    return calls, t


def replay(ordered: Sequence[float], window: Window | None, settings: Settings) -> Replay:
    """Replay ``window``'s schedule (today's without one) over the run durations."""
    calls = 0
    delays = []
    for duration in ordered:
        count, last = seen_at(duration, window, settings)
        calls += count
        delays.append(max(0.0, last - duration))
    return Replay(calls / len(ordered), percentile(sorted(delays), 90))


def jittered_delay(delay: float, window: Window, settings: Settings) -> float:
    """A planned delay spread by ±``HATZ_POLL_JITTER`` of the window's spacing (not of
    the whole delay: a long jump keeps its aim)."""
    j = settings.poll_jitter * window.spacing
    return max(0.0, delay + random.uniform(-j, j))


def window_for(ctx: Context, app_id: str) -> Window | None:
    """``app_id``'s window now, from its history; reused by this process for
    :data:`WINDOW_TTL` seconds (one Redis read per app per process and period)."""
    if ctx.settings.poll_target_latency <= 0 or not app_id:
        return None
    now = ctx.clock()
    held = ctx.poll_windows.get(app_id)
    if held is not None and held[0] > now:
        window: Window | None = held[1]
        return window
    history = recent_durations(ctx.redis, ctx.keys, app_id)
    window = plan_window([d.to_complete for d in history], ctx.settings)
    if len(ctx.poll_windows) >= _CACHE_SIZE:
        ctx.poll_windows.clear()
    ctx.poll_windows[app_id] = (now + WINDOW_TTL, window)
    return window
