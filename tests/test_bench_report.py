"""The bench's headline figures: medians of interleaved rounds, each round's ratio shown."""

from __future__ import annotations

from typing import Any

from bench.report import _per_round
from bench.runner import _median_of


def _round(ceiling: float, runs: float, polls: float) -> dict[str, Any]:
    return {
        "ceiling": {"tasks_per_s": ceiling},
        "first_poll": {"runs_per_s": runs, "tasks_per_run": 2},
        "poll_throughput": {"polls_per_s": polls},
    }


def test_the_median_round_is_reported_and_every_rounds_own_ratio_is_listed() -> None:
    rounds = [_round(1000, 300, 500), _round(1200, 360, 660), _round(1100, 500, 440)]

    assert _median_of(rounds, "ceiling", "tasks_per_s")["tasks_per_s"] == 1100
    assert _median_of(rounds, "first_poll", "runs_per_s")["runs_per_s"] == 360
    assert _median_of(rounds[:2], "poll_throughput", "polls_per_s")["polls_per_s"] == 500
    results = {"rounds": rounds}
    assert _per_round(results, "first_poll", "runs_per_s", 2) == " (rounds: 0.60, 0.60, 0.91)"
    assert _per_round(results, "poll_throughput", "polls_per_s", 1) == " (rounds: 0.50, 0.55, 0.40)"
    assert _per_round({"rounds": rounds[:1]}, "first_poll", "runs_per_s", 2) == ""
