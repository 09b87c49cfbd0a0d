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


def test_cpu_per_completion_is_measured_between_10_and_90_percent() -> None:
    import os
    import time

    from bench.scenarios import measure_rate_and_cpu

    done = 0

    def count() -> int:  # one completion per call, each costing ~2 ms of this process's CPU
        nonlocal done
        end = time.process_time() + 0.002
        while time.process_time() < end:
            pass
        done += 1
        return done

    rate, cpu = measure_rate_and_cpu(
        count, 200, timeout=60, processes={"me": lambda: [os.getpid()]}
    )

    assert rate > 0
    assert set(cpu) == {"me"}
    # Clock ticks are 10 ms: over ~160 completions of ~2 ms each the mean is within reach.
    assert 1000 < cpu["me"] < 6000


def test_the_cpu_row_lists_each_process_group_and_the_no_op_baseline() -> None:
    from bench.report import _cpu

    assert _cpu(None) == ""
    cpu = {"worker_main": 1600.4, "worker_pool": 1700, "redis": 550, "fake_hatz": 450}
    assert _cpu(cpu) == "1,600 / 1,700 / 550 / 450 us"
    assert (
        _cpu({"worker_main": 700, "worker_pool": 290, "redis": 150}) == "700 / 290 / 150 / n/a us"
    )
