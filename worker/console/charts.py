"""The console's charts: runs by state over time, poll lateness, Hatz API calls per minute.

Drawn from the counters the project already keeps (``P:metrics``, see
:mod:`worker.ops.metrics`): runs entering each state, every Hatz API attempt,
the poll-lateness sum and count. Those are totals, so the console samples
them, at most once per :data:`SAMPLE_EVERY` seconds whichever console process
is asked (a ``SET NX`` lease; ``HATZ_CONSOLE_SAMPLE_INTERVAL``), into
``Keys.console_samples`` (newest first, trimmed to :data:`KEEP` samples), and
a chart is the differences between samples. Samples are taken while someone
has a console page open.

The charts are inline SVG drawn here (a few polylines): a charting library
would mean shipping a JavaScript bundle for three line charts.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup, escape

from worker.context import Context
from worker.ops.metrics import state_counter_field
from worker.store.ledger import RunState

KEEP = 2160  # six hours of samples at the default interval (10 s)
_LEASE = "console-sample"
_SEP = "|"

#: The run states charted (entered per minute); the rest are summed as "other ends".
CHARTED_STATES = ("QUEUED", "COMPLETED", "FAILED")


def take_sample(ctx: Context) -> bool:
    """Record the counters now unless a sample is younger than the sample interval."""
    every = ctx.settings.console_sample_interval
    if not ctx.redis.set(ctx.keys.lease(_LEASE), "1", nx=True, px=max(1, int(every * 1000))):
        return False
    raw = {_text(k): _text(v) for k, v in ctx.redis.hgetall(ctx.keys.metrics).items()}
    api = sum(float(v) for k, v in raw.items() if k.startswith("api" + _SEP))
    sample = {
        "at": ctx.clock(),
        "states": {s.value: float(raw.get(state_counter_field(s), 0)) for s in RunState},
        "api": api,
        "late_sum": float(raw.get("lateness|sum", 0)),
        "late_count": float(raw.get("lateness|count", 0)),
    }
    with ctx.redis.pipeline(transaction=False) as pipe:
        pipe.lpush(ctx.keys.console_samples, json.dumps(sample, separators=(",", ":")))
        pipe.ltrim(ctx.keys.console_samples, 0, KEEP - 1)
        pipe.execute()
    return True


def read_samples(ctx: Context, *, window: float = 3600.0) -> list[dict[str, Any]]:
    """Samples of the last ``window`` seconds, oldest first."""
    count = min(KEEP, int(window / ctx.settings.console_sample_interval) + 1)
    samples = []
    for raw in ctx.redis.lrange(ctx.keys.console_samples, 0, count - 1):
        try:
            samples.append(json.loads(raw))
        except ValueError:
            continue
    newest = float(samples[0]["at"]) if samples else 0.0
    return [s for s in reversed(samples) if float(s["at"]) >= newest - window]


Series = dict[str, list[tuple[float, float]]]


@dataclass(frozen=True)
class Chart:
    """One chart: its title, unit and series of ``(time, value)`` points."""

    title: str
    unit: str
    series: Series


def charts(samples: list[dict[str, Any]]) -> list[Chart]:
    """The three charts from consecutive samples' differences."""
    runs: Series = {name: [] for name in (*CHARTED_STATES, "other ends")}
    lateness: Series = {"mean lateness": []}
    api: Series = {"API calls": []}
    for before, after in itertools.pairwise(samples):
        minutes = (float(after["at"]) - float(before["at"])) / 60
        if minutes <= 0:
            continue
        at = float(after["at"])
        delta = {
            s: max(0.0, after["states"].get(s, 0) - before["states"].get(s, 0))
            for s in after["states"]
        }
        for name in CHARTED_STATES:
            runs[name].append((at, delta.get(name, 0) / minutes))
        others = sum(v for k, v in delta.items() if k not in CHARTED_STATES and _terminal(k))
        runs["other ends"].append((at, others / minutes))
        polls = after["late_count"] - before["late_count"]
        late = (after["late_sum"] - before["late_sum"]) / polls if polls > 0 else 0.0
        lateness["mean lateness"].append((at, max(0.0, late)))
        api["API calls"].append((at, max(0.0, after["api"] - before["api"]) / minutes))
    return [
        Chart("Runs entering each state", "per minute", runs),
        Chart("Poll lateness", "seconds", lateness),
        Chart("Hatz API calls", "per minute", api),
    ]


def _terminal(state: str) -> bool:
    try:
        return RunState(state).is_terminal
    except ValueError:
        return False


def svg(chart: Chart, *, width: int = 520, height: int = 160, every: float = 10.0) -> Markup:
    """The chart as inline SVG (colours come from the stylesheet's ``.s0``... classes)."""
    points = [p for series in chart.series.values() for p in series]
    label = f"{chart.title} ({chart.unit})"
    if len({t for t, _ in points}) < 2:
        return Markup(
            '<p class="muted">{}: not enough samples yet (one every {:g} s while the console '
            "is open)</p>"
        ).format(label, every)
    t0 = min(t for t, _ in points)
    t1 = max(t for t, _ in points)
    top = max(max(v for _, v in points), 1e-9)
    pad = 30

    def xy(t: float, v: float) -> str:
        x = pad + (t - t0) / max(t1 - t0, 1e-9) * (width - pad - 5)
        y = height - 20 - v / top * (height - 30)
        return f"{x:.1f},{y:.1f}"

    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}">',
        f"<title>{escape(label)}</title>",
        f'<line class="axis" x1="{pad}" y1="{height - 20}" x2="{width - 5}" y2="{height - 20}"/>',
        f'<text class="tick" x="2" y="14">{top:.3g}</text>',
        f'<text class="tick" x="2" y="{height - 22}">0</text>',
    ]
    for i, (name, series) in enumerate(chart.series.items()):
        line = " ".join(xy(t, v) for t, v in series)
        parts.append(
            f'<polyline class="s{i}" points="{line}"><title>{escape(name)}</title></polyline>'
        )
        parts.append(
            f'<text class="legend s{i}" x="{pad + 110 * i}" y="{height - 4}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    # Every text part above went through escape(); the rest are numbers and fixed markup.
    return Markup("".join(parts))  # noqa: S704


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
