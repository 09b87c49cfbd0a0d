"""``python -m bench.polling [--quick]``: learned poll schedules beside today's fixed one.

Three duration mixes, each served by the fake Hatz server as an app whose
successive runs take a seeded list of durations in turn (``FakeApp.durations``):

* **stable**: about the same time every run (coefficient of variation 3 %);
* **bimodal**: half short, half long runs (two stable modes);
* **heavy-tailed**: log-normal, a few runs many times the median.

Durations are compressed (seconds, not minutes) so the section takes a few
minutes; the poll settings are today's defaults (first poll at 2 s, then 5 s,
x1.5 while unchanged, up to 60 s). The arms run at once, each with its own
worker on its own Redis database and the same fake: the *learned* worker
(``HATZ_POLL_TARGET_LATENCY=0.5``), the *fixed* one (``0``: today's schedule)
and *fixed again*, the same as fixed: how far two identical schedules differ in
one run (jitter, timing) is the noise floor a "no worse" is read against.
Each arm first runs ``history`` runs of every mix (the learned arm records
their durations), then fresh workers (no cached plans) run ``measured`` runs
of every mix, spread over a few seconds, with a callback.

Per mix and arm: status calls per run (the fake's count per job) and the
completion -> callback latency (the fake's completion instant to the
receiver's arrival), p50 and p90.

A second table replays the planner over the same mixes at full scale (60 s
runs, no servers, no worker overhead), including stable mixes with a 5 % and
10 % coefficient of variation: what the schedule itself can do there.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery

from bench import runner, scenarios
from bench.scenarios import Bench, percentile
from bench.stack import Worker
from config import Settings
from worker.api.runs import enqueue_run
from worker.context import Context
from worker.local.stack import CallbackReceiver
from worker.runs.poll_plan import plan_window, replay
from worker.taskqueue.app import create_app

RESULTS = Path(__file__).resolve().parent / "results"
#: Today's poll defaults, for every arm.
POLLING: dict[str, Any] = {
    "poll_initial_delay": 2.0,
    "poll_interval": 5.0,
    "poll_backoff": 1.5,
    "poll_max_interval": 60.0,
    "poll_jitter": 0.1,
}
TARGET_LATENCY = 0.5
#: The arms; "fixed again" is today's schedule a second time (an A/A arm): how far two
#: identical schedules' figures differ in one run (jitter, timing) is the noise floor.
ARMS = {"learned": TARGET_LATENCY, "fixed": 0.0, "fixed again": 0.0}


@dataclass(frozen=True)
class Mix:
    """A duration mix: a name and a seeded generator of run durations, s."""

    name: str
    draw: Callable[[random.Random], float]


def mixes(scale: float = 1.0) -> list[Mix]:
    """The three mixes, durations multiplied by ``scale``."""

    def bimodal(r: random.Random) -> float:
        return r.gauss(4.0, 0.2) if r.random() < 0.5 else r.gauss(16.0, 0.8)

    return [
        Mix("stable", lambda r: scale * r.gauss(10.0, 0.3)),
        Mix("bimodal", lambda r: scale * bimodal(r)),
        Mix("heavy-tailed", lambda r: scale * min(60.0, r.lognormvariate(1.8, 0.8))),
    ]


def durations(mix: Mix, n: int, seed: int = 21) -> list[float]:
    """``n`` durations of ``mix`` (never below 0.1 s), the same for every arm."""
    rng = random.Random(f"{seed}/{mix.name}")
    return [round(max(0.1, mix.draw(rng)), 3) for _ in range(n)]


@dataclass(frozen=True)
class Plan:
    """The sizes: runs of history and measured runs per mix and arm, submit spread, s."""

    history: int
    measured: int
    spread: float
    scale: float


FULL = Plan(history=20, measured=60, spread=8.0, scale=1.0)
QUICK = Plan(history=6, measured=8, spread=1.0, scale=0.3)


@dataclass
class Arm:
    """One side: its settings, its Redis database, its Celery app and its apps by mix."""

    name: str
    settings: Settings
    ctx: Context
    celery: Celery
    apps: dict[str, str]

    def enqueue(self, app_id: str, callback_url: str = "") -> str:
        """One run of ``app_id``, as an application would enqueue it."""
        return enqueue_run(
            app_id, {}, context=self.ctx, celery=self.celery, callback_url=callback_url or None
        )


def _arm(b: Bench, name: str, db: int, series: dict[str, list[float]]) -> Arm:
    url = b.redis.url.rsplit("/", 1)[0] + f"/{db}"
    values = {
        **b.base_settings(url, b.fake.url),
        **POLLING,
        "poll_target_latency": ARMS[name],
    }
    settings = Settings(_env_file=None, **values)
    apps = {
        mix: b.fake.add_app(durations=list(seconds), pending_seconds=0.0, duration=1.0)
        for mix, seconds in series.items()
    }
    return Arm(name, settings, Context.from_settings(settings), create_app(settings), apps)


@contextmanager
def _workers(b: Bench, arms: Sequence[Arm]) -> Iterator[None]:
    """A fresh worker per arm (so no plan cached from an earlier phase)."""
    with ExitStack() as stack:
        started = []
        for arm in arms:
            worker = Worker(
                {
                    **b.base_settings(arm.settings.redis_url, b.fake.url),
                    **POLLING,
                    "poll_target_latency": ARMS[arm.name],
                },
                queues=["hatz.submit", "hatz.poll", "hatz.callback", "hatz.default"],
                concurrency=2,
                name=f"polling-{arm.name}",
            )
            worker.start()
            stack.callback(worker.close)
            started.append((worker, arm))
        for worker, arm in started:  # started together, then each waited for
            worker.wait_pinged(arm.celery)
        yield


def _wait_ended(arms: Sequence[Arm], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for arm in arms:
        while arm.ctx.redis.zcard(arm.ctx.keys.schedule) > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{arm.name}: runs still going after {timeout:.0f} s")
            time.sleep(0.1)


def _history(b: Bench, arms: Sequence[Arm], plan: Plan, longest: float) -> None:
    """``plan.history`` runs of every mix on every arm, all at once, until they end."""
    with _workers(b, arms):
        for arm in arms:
            for app_id in arm.apps.values():
                for _ in range(plan.history):
                    arm.enqueue(app_id)
        _wait_ended(arms, timeout=120 + 2 * longest)


def _measured(
    b: Bench, arms: Sequence[Arm], plan: Plan, longest: float
) -> dict[str, dict[str, Any]]:
    """``plan.measured`` runs of every mix on every arm, spread out, with callbacks."""
    b.fake.reset("stats")
    jobs_of: dict[str, tuple[str, str]] = {}  # app id -> (arm, mix)
    for arm in arms:
        for mix, app_id in arm.apps.items():
            jobs_of[app_id] = (arm.name, mix)
    total = plan.measured * sum(len(arm.apps) for arm in arms)
    with CallbackReceiver() as receiver, _workers(b, arms):
        for _ in range(plan.measured):
            for arm in arms:
                for app_id in arm.apps.values():
                    arm.enqueue(app_id, callback_url=receiver.url)
            time.sleep(plan.spread / plan.measured)
        deadline = time.monotonic() + 120 + 2 * longest
        while len(receiver.successful()) < total and time.monotonic() < deadline:
            time.sleep(0.1)
        deliveries = receiver.successful()
    return _figures(b.fake.stats()["jobs"], deliveries, jobs_of)


def _figures(
    jobs: dict[str, Any], deliveries: Sequence[dict[str, object]], jobs_of: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Status calls per run and detection latency per (arm, mix)."""
    arrived: dict[str, float] = {}
    for delivery in deliveries:
        body = delivery["body"]
        data = json.loads(body if isinstance(body, bytes | str) else str(body))["data"]
        arrived[data["job_id"]] = float(str(delivery["at"]))
    calls: dict[tuple[str, str], list[int]] = {}
    latency: dict[tuple[str, str], list[float]] = {}
    for job_id, job in jobs.items():
        side = jobs_of.get(job["app_id"])
        if side is None:
            continue
        calls.setdefault(side, []).append(int(job["status_polls"]))
        done = job.get("first_complete_at")
        if done is not None and job_id in arrived:
            latency.setdefault(side, []).append(arrived[job_id] - float(done))
    out: dict[str, dict[str, Any]] = {}
    for (arm, mix), counts in sorted(calls.items()):
        lat = latency.get((arm, mix), [])
        out.setdefault(mix, {})[arm] = {
            "runs": len(counts),
            "callbacks": len(lat),
            "status_calls_per_run": sum(counts) / len(counts),
            "latency_p50_s": percentile(lat, 50),
            "latency_p90_s": percentile(lat, 90),
        }
    return out


def live(plan: Plan, log: Any = sys.stderr) -> dict[str, Any]:
    """Every arm on the fake server: history first, then the measured runs."""
    all_mixes = mixes(plan.scale)
    series = {m.name: durations(m, plan.history + plan.measured) for m in all_mixes}
    longest = max(max(s) for s in series.values())
    started = time.monotonic()

    def step(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {text}", file=log, flush=True)

    with Bench.running() as b:
        b.reset()
        arms = [_arm(b, name, db, series) for db, name in enumerate(ARMS, start=1)]
        step(f"history: {plan.history} runs of each mix, every arm")
        _history(b, arms, plan, longest)
        step(f"measured: {plan.measured} runs of each mix, every arm")
        figures = _measured(b, arms, plan, longest)
        for mix, windows in _windows(arms[0]).items():
            figures[mix]["learned"]["windows"] = windows
        for arm in arms:
            arm.ctx.client.close()
    return {"figures": figures}


def _windows(arm: Arm) -> dict[str, dict[str, int]]:
    """Per mix: how many of the arm's runs had each learned window ("" for none)."""
    mix_of = {app_id: mix for mix, app_id in arm.apps.items()}
    out: dict[str, dict[str, int]] = {mix: {} for mix in arm.apps}
    for run_id in arm.ctx.ledger.run_ids(limit=100_000):
        run = arm.ctx.ledger.get(run_id)
        if run is None or run.get("app_id") not in mix_of or not run.get("callback_url"):
            continue  # only the measured runs have a callback
        counts = out[mix_of[run["app_id"]]]
        window = str(run.get("poll_window") or "")
        counts[window] = counts.get(window, 0) + 1
    return out


def replayed(history: int = 20, runs: int = 2000) -> dict[str, dict[str, Any]]:
    """The planner replayed at full scale (60 s runs), no servers: calls and delay."""
    settings = Settings(_env_file=None, **POLLING, poll_target_latency=TARGET_LATENCY)
    full = [
        Mix("stable CV 1 %", lambda r: r.gauss(60.0, 0.6)),
        Mix("stable CV 5 %", lambda r: r.gauss(60.0, 3.0)),
        Mix("stable CV 10 %", lambda r: r.gauss(60.0, 6.0)),
        Mix("bimodal", lambda r: r.gauss(20.0, 1.0) if r.random() < 0.5 else r.gauss(80.0, 4.0)),
        Mix("heavy-tailed", lambda r: min(600.0, r.lognormvariate(3.4, 0.8))),
    ]
    out: dict[str, dict[str, Any]] = {}
    for mix in full:
        seconds = durations(mix, history + runs)
        window = plan_window(seconds[:history], settings)
        test = sorted(seconds[history:])
        learned, fixed = replay(test, window, settings), replay(test, None, settings)
        out[mix.name] = {
            "window": None if window is None else window.encode(),
            "learned": {"calls": learned.calls, "latency_p90_s": learned.p90_latency},
            "fixed": {"calls": fixed.calls, "latency_p90_s": fixed.p90_latency},
        }
    return out


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def render(results: dict[str, Any]) -> str:
    """The two tables and the goals, as text."""
    lines = [
        "Learned poll schedules vs today's fixed schedule (fake Hatz, compressed durations)",
        f"{'mix':<14}{'arm':<13}{'runs':>5}{'calls/run':>11}{'p50 s':>8}{'p90 s':>8}"
        "  learned window (runs)",
    ]
    figures = results["live"]["figures"]
    for mix, arms in figures.items():
        for arm in ARMS:
            x = arms.get(arm)
            if x is None:
                continue
            windows = ", ".join(
                f"{w or 'none'} ({n})" for w, n in sorted(x.get("windows", {}).items())
            )
            lines.append(
                f"{mix:<14}{arm:<13}{x['runs']:>5}{x['status_calls_per_run']:>11.2f}"
                f"{_fmt(x['latency_p50_s']):>8}{_fmt(x['latency_p90_s']):>8}  {windows}"
            )
    lines += ["", "Goals:"] + [f"  {g}" for g in goals(figures)]
    lines += [
        "",
        "Replayed at full scale (60 s runs, no servers: the schedule alone)",
        f"{'mix':<16}{'calls l/f':>12}{'p90 s l/f':>14}  window (from,to[,from,to],spacing s)",
    ]
    for mix, x in results["replayed"].items():
        window = x["window"] or "none (today's schedule)"
        lines.append(
            f"{mix:<16}{x['learned']['calls']:>6.2f}/{x['fixed']['calls']:<5.2f}"
            f"{x['learned']['latency_p90_s']:>8.2f}/{x['fixed']['latency_p90_s']:<5.2f}"
            f"  {window}"
        )
    return "\n".join(lines)


def goals(figures: dict[str, Any]) -> list[str]:
    """Each goal of the issue, with the figure and whether it is met."""
    out = []
    stable = figures.get("stable", {}).get("learned")
    if stable:
        calls, p50 = stable["status_calls_per_run"], stable["latency_p50_s"]
        ok = calls <= 3 and p50 is not None and p50 <= 0.5
        out.append(
            f"stable, learned: {calls:.2f} calls/run (<= 3), p50 {_fmt(p50)} s (<= 0.5): "
            + ("met" if ok else "NOT met")
        )
    for mix in ("bimodal", "heavy-tailed"):
        arms = figures.get(mix, {})
        if "learned" not in arms or "fixed" not in arms:
            continue
        learned, fixed = arms["learned"], arms["fixed"]
        ratio = learned["status_calls_per_run"] / fixed["status_calls_per_run"]
        p90_l, p90_f = learned["latency_p90_s"] or 0.0, fixed["latency_p90_s"] or 0.0
        again = arms.get("fixed again", {}).get("latency_p90_s")
        noise = abs(again - p90_f) if again is not None else 0.0
        if ratio <= 1.1 and p90_l <= p90_f:
            verdict = "met"
        elif ratio <= 1.1 and p90_l - p90_f <= noise:
            verdict = f"met within the A/A noise (fixed vs fixed again: {noise:.2f} s)"
        else:
            verdict = "NOT met"
        out.append(
            f"{mix}: calls learned/fixed {ratio:.2f} (<= 1.10), p90 {p90_l:.2f} vs"
            f" {p90_f:.2f} s (no worse): {verdict}"
        )
    return out


def inflight(quick: bool = False, log: Any = sys.stderr) -> dict[str, Any]:
    """The existing bench's in-flight measurements (10,000 runs polling every 60 s,
    1,000 every 5 s; :func:`bench.scenarios.inflight`), on this code."""
    plan = runner.QUICK if quick else runner.FULL
    out = {}
    with Bench.running() as b:
        for name, (runs, interval, window) in (("big", plan.big), ("fast", plan.fast)):
            print(f"in flight: {runs} runs every {interval:g} s", file=log, flush=True)
            out[name] = scenarios.inflight(b, runs, interval, window)
    return out


def render_inflight(results: dict[str, Any]) -> str:
    """The in-flight figures beside their goals."""
    lines = ["In flight (the existing bench's section 3, on this code)"]
    for x in results.values():
        p99 = x["lateness_p99_s"]
        lines.append(
            f"  {x['runs']:,} runs @ {x['interval_s']:g} s: worker RSS {x['worker_rss_mb']:.0f} MB"
            f" (<= 300), Redis {x['redis_bytes_per_run']:,.0f} B/run (<= 2048), lateness p50"
            f" {_fmt(x['lateness_p50_s'], '{:.3f}')} / p99 {_fmt(p99)} s (<= 1),"
            f" {x['polls_per_s']:.0f} polls/s of {x['offered_polls_per_s']:.0f} offered,"
            f" worker {x['worker_cpu_cores']:.2f} cores"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.polling``."""
    parser = argparse.ArgumentParser(prog="python -m bench.polling", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=None, help="JSON file")
    parser.add_argument(
        "--inflight",
        action="store_true",
        help="only the existing bench's in-flight figures (10,000 runs @ 60 s, 1,000 @ 5 s)",
    )
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kind = ("inflight-" if args.inflight else "") + ("quick" if args.quick else "full")
    results: dict[str, Any]
    if args.inflight:
        results = {"inflight": inflight(args.quick)}
        results["table"] = table = render_inflight(results["inflight"])
    else:
        plan = QUICK if args.quick else FULL
        results = {"plan": plan.__dict__, "live": live(plan), "replayed": replayed()}
        results["table"] = table = render(results)
    print(table)
    out = args.out or RESULTS / f"polling-{kind}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
