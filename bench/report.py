"""The results table: every figure next to its baseline from the same run, and the goal."""

from __future__ import annotations

from typing import Any

Row = tuple[str, str, str, str, str, str]


def _num(value: Any, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}{unit}"
    return f"{round(float(value)):,}{unit}"


def _ratio(value: float | None, base: float | None, digits: int = 2) -> str:
    if value is None or not base:
        return "n/a"
    return f"{value / base:.{digits}f}x"


def _goal(text: str, met: bool | None) -> str:
    if met is None:
        return text
    return f"{text} {'ok' if met else 'MISSED'}"


def _per_round(r: dict[str, Any], name: str, key: str, per_task: int) -> str:
    """Each round's own ratio (figure ÷ that round's ceiling), when there were rounds."""
    rounds = r.get("rounds") or []
    if len(rounds) < 2:
        return ""
    ratios = [
        x[name][key] / (x["ceiling"]["tasks_per_s"] / per_task)
        for x in rounds
        if x["ceiling"]["tasks_per_s"]
    ]
    return f" (rounds: {', '.join(f'{v:.2f}' for v in ratios)})"


_CPU_GROUPS = ("worker_main", "worker_pool", "redis", "fake_hatz")


def _cpu(per_item: dict[str, float] | None) -> str:
    """``main / pool / Redis / fake`` CPU microseconds per run or task, or ""."""
    if not per_item:
        return ""
    return " / ".join(_num(per_item.get(name)) for name in _CPU_GROUPS) + " us"


def rows(r: dict[str, Any]) -> list[Row]:
    """The table rows for results ``r`` (see :func:`bench.runner.run`), goal by goal."""
    sections = (
        _ceiling_rows,
        _poll_rows,
        _inflight_section,
        _knee_rows,
        _naive_rows,
        _detection_rows,
        _budget_rows,
        _scaling_rows,
    )
    return [row for section in sections for row in section(r)]


def _ceiling_rows(r: dict[str, Any]) -> list[Row]:
    """The rows of goal 1: the no-op ceiling and runs that complete at their first poll."""
    out: list[Row] = []
    ceiling = r["ceiling"]["2"]["tasks_per_s"]
    first = r["first_poll"]["2"]
    per_run = ceiling / first["tasks_per_run"]
    ratio1 = first["runs_per_s"] / per_run
    n_rounds = len(r.get("rounds") or [])
    median = f", median of {n_rounds} rounds" if n_rounds > 1 else ""
    out.append(
        ("1 ceiling", f"no-op Celery task, c=2{median}", _num(ceiling, 0, " tasks/s"), "", "", "")
    )
    out.append(
        (
            "1 ceiling",
            "runs complete at 1st poll (submit+poll)",
            _num(first["runs_per_s"], 0, " runs/s"),
            _num(per_run, 0, " runs/s (ceiling/2)"),
            _ratio(first["runs_per_s"], per_run),
            _goal("≥ 0.6", ratio1 >= 0.6)
            + _per_round(r, "first_poll", "runs_per_s", first["tasks_per_run"]),
        )
    )
    if first.get("cpu_us_per_run"):
        out.append(
            (
                "1 ceiling",
                "CPU per run: worker main / pool / Redis / fake Hatz",
                _cpu(first["cpu_us_per_run"]),
                "per no-op task: " + _cpu(r["ceiling"]["2"].get("cpu_us_per_task")),
                "",
                "(fake Hatz: the harness's)",
            )
        )
    return out


def _poll_rows(r: dict[str, Any]) -> list[Row]:
    """The rows of goal 2: sustained polls per second, per pool."""
    out: list[Row] = []
    ceiling = r["ceiling"]["2"]["tasks_per_s"]
    tp = r["poll_throughput"]
    out.append(
        (
            "2 polls",
            f"sustained polls/s (offered {tp['offered_polls_per_s']:,.0f}/s)",
            _num(tp["polls_per_s"], 0, " polls/s"),
            _num(ceiling, 0, " tasks/s"),
            _ratio(tp["polls_per_s"], ceiling),
            _goal("≥ 0.5", tp["polls_per_s"] / ceiling >= 0.5)
            + _per_round(r, "poll_throughput", "polls_per_s", 1),
        )
    )
    out.append(
        (
            "2 polls",
            "worker CPU per poll",
            _num(tp["worker_cpu_ms_per_poll"], 2, " ms"),
            "",
            "",
            f"worker {tp['worker_cpu_cores']:.2f} + redis {tp['redis_cpu_cores']:.2f}"
            f" + fake {tp['fake_cpu_cores']:.2f} cores",
        )
    )
    for other in r.get("poll_throughput_pools", []):
        out.append(
            (
                "2 polls",
                f"{other['pool']} pool, c={other['concurrency']}: sustained polls/s",
                _num(other["polls_per_s"], 0, " polls/s"),
                _num(tp["polls_per_s"], 0, " polls/s (prefork c=2)"),
                _ratio(other["polls_per_s"], tp["polls_per_s"]),
                f"{other['worker_cpu_ms_per_poll'] or 0:.2f} ms worker CPU/poll",
            )
        )
    return out


def _inflight_section(r: dict[str, Any]) -> list[Row]:
    """The rows of goal 3: runs in flight, each at its poll interval."""
    out: list[Row] = []
    for key, label in (
        ("big", "3 in flight"),
        ("fast", "3 in flight"),
        ("fast_held", "3 in flight"),
    ):
        x = r["inflight"].get(key)
        if x is None:
            continue
        name = f"{x['runs']:,} runs @ {x['interval_s']:g} s ({x['offered_polls_per_s']:.0f}/s)"
        if x.get("countdown_horizon") is not None:
            name += f", HATZ_COUNTDOWN_HORIZON={x['countdown_horizon']:g}"
        out += _inflight_rows(label, name, x)
    return out


def _knee_rows(r: dict[str, Any]) -> list[Row]:
    """The rows of goal 3: the knee: the most polls per second with p99 lateness within 1 s."""
    out: list[Row] = []
    ceiling = r["ceiling"]["2"]["tasks_per_s"]
    knee = r["knee"]
    steps = ", ".join(
        f"{s['offered_polls_per_s']:.0f}/s→p99 {_num(s['lateness_p99_s'], 2, ' s')}"
        for s in knee["steps"]
    )
    out.append(
        (
            "3 knee",
            "highest polls/s with p99 ≤ 1 s, c=2",
            _num(knee["knee_polls_per_s"], 0, " polls/s"),
            _num(ceiling, 0, " tasks/s"),
            _ratio(knee["knee_polls_per_s"], ceiling),
            steps,
        )
    )
    return out


def _naive_rows(r: dict[str, Any]) -> list[Row]:
    """The rows of goal 4: against a naive sleep-poll worker."""
    out: list[Row] = []
    nv = r["naive"]
    biggest = max(
        (x["runs"] for x in r["scale_inflight"] if x["lateness_p99_s"] is not None),
        default=0,
    )
    out.append(
        (
            "4 naive",
            f"max runs in flight, c={nv['concurrency']} (ours: largest tested)",
            _num(biggest, 0, " runs"),
            _num(nv["naive_max_in_flight"], 0, " runs (sleep-poll)"),
            _ratio(biggest, nv["naive_max_in_flight"], 0),
            _goal("≥ 100x", biggest >= 100 * max(1, nv["naive_max_in_flight"])),
        )
    )
    out.append(
        (
            "4 naive",
            f"{nv['runs']} runs of {nv['duration_s']:g} s: runs/s",
            _num(nv["ours_runs_per_s"], 2, " runs/s"),
            _num(nv["naive_runs_per_s"], 2, " runs/s"),
            _ratio(nv["ours_runs_per_s"], nv["naive_runs_per_s"], 1),
            f"ours peaked at {nv['ours_max_in_flight']} in flight",
        )
    )
    return out


def _detection_rows(r: dict[str, Any]) -> list[Row]:
    """The rows of goals 5 and 6: completion to callback, and Hatz API calls per run."""
    out: list[Row] = []
    d = r["detection"]
    out.append(
        (
            "5 detection",
            f"job complete → callback, interval {d['interval_s']:g} s, p50",
            _num(d["latency_p50_s"], 2, " s"),
            _num(d["interval_s"] / 2, 2, " s (interval/2)"),
            _ratio(d["latency_p50_s"], d["interval_s"] / 2),
            _goal(
                f"≤ {d['goal_p50_s']:.2f} s",
                d["latency_p50_s"] is not None and d["latency_p50_s"] <= d["goal_p50_s"],
            ),
        )
    )
    out.append(("5 detection", "p99", _num(d["latency_p99_s"], 2, " s"), "", "", ""))
    calls = ", ".join(f"{k} {v:.2f}" for k, v in d["calls_per_run"].items())
    out.append(
        (
            "6 API",
            f"calls per run ({d['duration_s']:g} s job, 1 document)",
            _num(d["calls_per_run_total"], 2),
            _num(d["minimum_calls_per_run"], 0, " (minimum)"),
            _ratio(d["calls_per_run_total"], d["minimum_calls_per_run"]),
            _goal("≤ 1.1x", d["economy_ratio"] <= 1.1) + f"  [{calls}]",
        )
    )
    return out


def _budget_rows(r: dict[str, Any]) -> list[Row]:
    """The rows of goal 6: the shared API budget."""
    out: list[Row] = []
    budget = r.get("rate_budget")
    if budget is None:
        out.append(("6 API", "shared rate budget (HATZ_API_MAX_RPS)", "not present", "", "", ""))
    else:
        out.append(
            (
                "6 API",
                "HATZ_API_MAX_RPS=100, 200 polls/s offered",
                _num(budget["polls_per_s"], 0, " polls/s"),
                "100 rps budget",
                _ratio(budget["polls_per_s"], 100.0),
                f"lateness p99 {_num(budget['lateness_p99_s'], 2, ' s')}",
            )
        )
    return out


def _scaling_rows(r: dict[str, Any]) -> list[Row]:
    """The rows of goal 7: scaling with concurrency and with runs in flight."""
    out: list[Row] = []
    for c, x in sorted(r["first_poll"].items()):
        base = r["ceiling"][c]["tasks_per_s"] / x["tasks_per_run"]
        out.append(
            (
                "7 scaling",
                f"c={c}: first-poll runs/s",
                _num(x["runs_per_s"], 0, " runs/s"),
                _num(base, 0, " (ceiling/2)"),
                _ratio(x["runs_per_s"], base),
                "",
            )
        )
    for c, x in sorted(r["scale_lateness"].items()):
        out.append(
            (
                "7 scaling",
                f"c={c}: lateness at {x['offered_polls_per_s']:.0f} polls/s, p50/p99",
                f"{_num(x['lateness_p50_s'], 3, ' s')} / {_num(x['lateness_p99_s'], 2, ' s')}",
                "",
                "",
                f"{x['polls_per_s']:.0f} polls/s done",
            )
        )
    smallest = r["scale_inflight"][0]
    for x in r["scale_inflight"]:
        out.append(
            (
                "7 scaling",
                f"{x['runs']:,} in flight @ {x['interval_s']:g} s: RSS, Redis/run",
                f"{_num(x['worker_rss_mb'], 0, ' MB')}, {_num(x['redis_bytes_per_run'], 0, ' B')}",
                f"{smallest['runs']:,} runs: {_num(smallest['worker_rss_mb'], 0, ' MB')}",
                _ratio(x["worker_rss_mb"], smallest["worker_rss_mb"], 1)
                + f" RSS for {x['runs'] / smallest['runs']:.0f}x runs",
                f"p99 {_num(x['lateness_p99_s'], 2, ' s')}, CPU {x['worker_cpu_cores']:.2f} cores",
            )
        )
    return out


def _inflight_rows(label: str, name: str, x: dict[str, Any]) -> list[Row]:
    p99 = x["lateness_p99_s"]
    return [
        (
            label,
            f"{name}: worker RSS (main+children)",
            _num(x["worker_rss_mb"], 0, " MB"),
            _num(x["worker_rss_idle_mb"], 0, " MB idle"),
            _ratio(x["worker_rss_mb"], x["worker_rss_idle_mb"], 1),
            _goal("≤ 300 MB", x["worker_rss_mb"] <= 300)
            + f" (PSS {_num(x.get('worker_pss_mb'), 0, ' MB')})",
        ),
        (
            label,
            f"{name}: Redis per run (incl. countdown msgs)",
            _num(x["redis_bytes_per_run"], 0, " B"),
            _num(x["ledger_hash_bytes"], 0, " B ledger hash"),
            _ratio(x["redis_bytes_per_run"], x["ledger_hash_bytes"], 1),
            _goal("≤ 2 KB", x["redis_bytes_per_run"] <= 2048),
        ),
        (
            label,
            f"{name}: poll lateness p50 / p99",
            f"{_num(x['lateness_p50_s'], 3, ' s')} / {_num(p99, 2, ' s')}",
            _num(x["interval_s"], 0, " s interval"),
            _ratio(p99, x["interval_s"], 3),
            _goal("p99 ≤ 1 s", p99 is not None and p99 <= 1.0),
        ),
        (
            label,
            f"{name}: CPU (cores) and polls/s done",
            f"worker {x['worker_cpu_cores']:.2f}, redis {x['redis_cpu_cores']:.2f}, "
            f"fake {x['fake_cpu_cores']:.2f}",
            "",
            "",
            f"{x['polls_per_s']:.0f} polls/s, {x['worker_cpu_ms_per_poll'] or 0:.2f} ms CPU/poll",
        ),
    ]


def render(r: dict[str, Any]) -> str:
    """The machine line and the table, as Markdown."""
    m = r["machine"]
    head = (
        f"{r['plan']['mode']} run, {r.get('elapsed_s', 0):.0f} s · {m['cores']} cores · "
        f"Python {m['python']} · Celery {m['celery']} · kombu {m['kombu']} · "
        f"redis-py {m['redis_py']} · Redis {m['redis_server']} · "
        f"load avg {m['load_avg_at_start']} → {m.get('load_avg_at_end', '?')} · prefork pool"
    )
    header: Row = ("section", "measure", "figure", "baseline (same run)", "ratio", "goal")
    table = [header, *rows(r)]
    lines = [head, ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    return "\n".join(lines)
