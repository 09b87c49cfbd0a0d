"""``python -m bench [--quick]``: run every measurement, print the table, write JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import celery
import kombu
import redis

from bench import scenarios
from bench.report import render
from bench.scenarios import Bench

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Plan:
    """Sizes of every measurement; ``QUICK`` keeps the harness alive in CI."""

    mode: str
    rounds: int  # of the c=2 ceiling, first-poll and polls figures, interleaved; medians reported
    noop_tasks: int
    first_poll_runs: int
    concurrencies: tuple[int, ...]
    throughput_runs: int
    throughput_interval: float
    throughput_window: float
    throughput_pools: tuple[tuple[str, int], ...]  # other pools to compare with prefork c=2
    big: tuple[int, float, float]  # runs, interval, window: "10k in flight @ 60 s"
    fast: tuple[int, float, float]  # "1k polling every 5 s"
    knee_rates: tuple[int, ...]  # polls/s, at the fast interval
    knee_window: float
    scale: tuple[tuple[int, float], ...]  # extra in-flight sizes (runs, interval)
    scale_window: float
    lateness_concurrencies: tuple[int, ...]
    naive: tuple[int, float, float]  # runs, duration, interval
    detection: tuple[int, float, float, float]  # runs, duration, interval, spread
    notes: list[str] = field(default_factory=list)


FULL = Plan(
    mode="full",
    rounds=5,
    noop_tasks=5000,
    first_poll_runs=2000,
    concurrencies=(1, 2, 4),
    throughput_runs=3000,
    throughput_interval=2.0,
    throughput_window=15.0,
    throughput_pools=(("threads", 8), ("prefork", 4)),
    big=(10_000, 60.0, 60.0),
    fast=(1_000, 5.0, 30.0),
    knee_rates=(300, 400, 500, 650, 800, 1000),
    knee_window=20.0,
    scale=((1_000, 6.0), (50_000, 300.0)),
    scale_window=30.0,
    lateness_concurrencies=(1, 4),
    naive=(12, 5.0, 1.0),
    detection=(100, 3.5, 1.0, 5.0),
)

QUICK = Plan(
    mode="quick",
    rounds=1,
    noop_tasks=300,
    first_poll_runs=100,
    concurrencies=(2,),
    throughput_runs=200,
    throughput_interval=0.5,
    throughput_window=3.0,
    throughput_pools=(),
    big=(300, 6.0, 4.0),
    fast=(100, 1.0, 3.0),
    knee_rates=(150,),
    knee_window=3.0,
    scale=(),
    scale_window=3.0,
    lateness_concurrencies=(),
    naive=(4, 1.0, 0.5),
    detection=(10, 1.25, 0.5, 0.5),
)


def machine() -> dict[str, Any]:
    """Cores, Python, Celery, kombu, redis-py and redis-server versions, and the load."""
    server = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    version = next((p[2:] for p in server if p.startswith("v=")), "?")
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis.__version__,
        "redis_server": version,
        "load_avg_at_start": round(os.getloadavg()[0], 2),
    }


def _median_of(rounds: list[dict[str, Any]], name: str, key: str) -> dict[str, Any]:
    """The round whose ``name`` result has the median ``key`` (the lower one of two)."""
    ordered = sorted((r[name] for r in rounds), key=lambda x: float(x[key]))
    return dict(ordered[(len(ordered) - 1) // 2])


def _headline(b: Bench, plan: Plan, step: Any) -> dict[str, Any]:
    """The c=2 ceiling, first-poll and polls figures in interleaved rounds, with medians."""
    # The headline figures (c=2) are measured in interleaved rounds and the median
    # of each is reported (the table also lists each round's own ratios): this
    # VM drifts by more than 10 % between minutes, and a lone pair of figures
    # drifts with it.
    rounds: list[dict[str, Any]] = []
    for i in range(plan.rounds):
        step(f"round {i + 1}/{plan.rounds}: no-op ceiling, first-poll runs, polls (c=2)")
        rounds.append(
            {
                "ceiling": scenarios.noop_ceiling(b, plan.noop_tasks, 2),
                "first_poll": scenarios.first_poll_runs(b, plan.first_poll_runs, 2),
                "poll_throughput": scenarios.poll_throughput(
                    b, plan.throughput_runs, plan.throughput_interval, plan.throughput_window
                ),
            }
        )
    return {
        "rounds": rounds,
        "ceiling": {"2": _median_of(rounds, "ceiling", "tasks_per_s")},
        "first_poll": {"2": _median_of(rounds, "first_poll", "runs_per_s")},
        "poll_throughput": _median_of(rounds, "poll_throughput", "polls_per_s"),
    }


def headline_summary(r: dict[str, Any]) -> str:
    """The first-poll and polls ratios of a ``--headline`` run, each round's too."""
    lines = []
    for name, x in [("median", r), *((f"round {i + 1}", x) for i, x in enumerate(r["rounds"]))]:
        ceiling = (
            x["ceiling"]["2"]["tasks_per_s"] if name == "median" else x["ceiling"]["tasks_per_s"]
        )
        first = x["first_poll"]["2"] if name == "median" else x["first_poll"]
        polls = x["poll_throughput"]["polls_per_s"]
        per_run = ceiling / first["tasks_per_run"]
        lines.append(
            f"{name:>8}: ceiling {ceiling:6.0f} tasks/s  first-poll {first['runs_per_s']:6.0f}"
            f" runs/s = {first['runs_per_s'] / per_run:.2f}  polls {polls:6.0f}/s"
            f" = {polls / ceiling:.2f}"
        )
    cpu = r["first_poll"]["2"].get("cpu_us_per_run")
    if cpu:
        lines.append("CPU per first-poll run (us): " + json.dumps(cpu, sort_keys=True))
    machine = r["machine"]
    lines.append(
        f"load average: {machine['load_avg_at_start']} at start,"
        f" {machine.get('load_avg_at_end')} at end"
    )
    return "\n".join(lines)


def run(plan: Plan, log: Any = sys.stderr, *, headline: bool = False) -> dict[str, Any]:
    """Every measurement of ``plan`` (only the c=2 rounds if ``headline``); the results."""
    results: dict[str, Any] = {"machine": machine(), "plan": asdict(plan)}
    started = time.monotonic()

    def step(name: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {name}", file=log, flush=True)

    with Bench.running() as b:
        results.update(_headline(b, plan, step))
        if not headline:
            _the_rest(b, plan, step, results)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["machine"]["load_avg_at_end"] = round(os.getloadavg()[0], 2)
    return results


def _the_rest(b: Bench, plan: Plan, step: Any, results: dict[str, Any]) -> None:
    """Every measurement after the headline rounds, into ``results``."""
    ceilings: dict[int, Any] = {2: results["ceiling"]["2"]}
    first: dict[int, Any] = {2: results["first_poll"]["2"]}
    for c in sorted(set(plan.concurrencies) - {2}):
        step(f"no-op ceiling, concurrency {c}")
        ceilings[c] = scenarios.noop_ceiling(b, plan.noop_tasks, c)
        step(f"first-poll runs, concurrency {c}")
        first[c] = scenarios.first_poll_runs(b, plan.first_poll_runs, c)
    results["ceiling"] = {str(c): v for c, v in sorted(ceilings.items())}
    results["first_poll"] = {str(c): v for c, v in sorted(first.items())}

    results["poll_throughput_pools"] = []
    for pool, c in plan.throughput_pools:
        step(f"sustained poll throughput, {pool} pool, concurrency {c}")
        results["poll_throughput_pools"].append(
            scenarios.poll_throughput(
                b,
                plan.throughput_runs,
                plan.throughput_interval,
                plan.throughput_window,
                c,
                pool,
            )
        )

    step(f"in flight: {plan.big[0]} runs every {plan.big[1]:g} s")
    big = scenarios.inflight(b, *plan.big)
    step(f"in flight: {plan.fast[0]} runs every {plan.fast[1]:g} s")
    fast = scenarios.inflight(b, *plan.fast)
    step(f"in flight: {plan.fast[0]} runs every {plan.fast[1]:g} s, horizon 15 s")
    # The same load with every wait a held countdown (the default horizon parks them).
    fast_held = scenarios.inflight(b, *plan.fast, countdown_horizon=15.0)
    fast_held["countdown_horizon"] = 15.0
    results["inflight"] = {"big": big, "fast": fast, "fast_held": fast_held}

    knee: list[dict[str, Any]] = [fast]
    for rate in plan.knee_rates:
        runs = int(rate * plan.fast[1])
        step(f"knee: {rate} polls/s ({runs} runs every {plan.fast[1]:g} s)")
        knee.append(scenarios.inflight(b, runs, plan.fast[1], plan.knee_window))
        if not scenarios.keeps_up(knee[-1]):
            break
    ok = [k["offered_polls_per_s"] for k in knee if scenarios.keeps_up(k)]
    results["knee"] = {"steps": knee, "knee_polls_per_s": max(ok, default=None)}

    scale = [fast, big]
    for runs, interval in plan.scale:
        step(f"scale: {runs} runs every {interval:g} s")
        scale.append(scenarios.inflight(b, runs, interval, plan.scale_window))
    results["scale_inflight"] = sorted(scale, key=lambda r: r["runs"])
    lateness = {2: fast}
    for c in plan.lateness_concurrencies:
        step(f"lateness at concurrency {c}")
        lateness[c] = scenarios.inflight(b, *plan.fast, concurrency=c)
    results["scale_lateness"] = {str(c): v for c, v in sorted(lateness.items())}

    step("naive sleep-polling baseline")
    results["naive"] = scenarios.naive_vs_ours(b, *plan.naive)
    step("detection latency and API economy")
    results["detection"] = scenarios.detection(b, *plan.detection)
    if scenarios.rate_budget_present():
        step("shared rate budget (HATZ_API_MAX_RPS=100)")
        results["rate_budget"] = scenarios.inflight(b, *plan.fast, api_max_rps=100)
    else:
        results["rate_budget"] = None


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench``."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test (~1 min)")
    parser.add_argument(
        "--headline",
        action="store_true",
        help="only the c=2 rounds (no-op ceiling, first-poll runs, polls) and their ratios",
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="number of headline rounds (default: the plan's)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON file (default: bench/results/)"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds is not None:
        plan = replace(plan, rounds=args.rounds)
    results = run(plan, headline=args.headline)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    mode = f"{plan.mode}-headline" if args.headline else plan.mode
    out = args.out or RESULTS / f"bench-{mode}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.headline:
        out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        print(headline_summary(results))
        print(f"\nresults: {out}")
        return 0
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    results["table"] = table = render(results)
    print(table)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"\nresults: {out}")
    return 0
