"""The chaos suite: real redis-server, celery worker and beat processes, the fake
Hatz server with injected faults and a callback receiver that records every
delivery; each scenario breaks something and prints one scorecard row.

    python -m bench.chaos            # the full scorecard (README "Reliability")
    python -m bench.chaos --quick    # the CI subset, smaller (also run by `make test`)
    python -m bench.chaos --only redis-restart

Every count comes from outside the worker: jobs created per run from the fake's
call log (each run's inputs carry a unique tag), successful callbacks per run
from the receiver's log. The ledger is never consulted for a verdict.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from config import Settings, load_settings
from worker.api.runs import enqueue_run
from worker.context import Context
from worker.fake_hatz import FakeApp, FakeHatz, FakeInput, FakeStep, FaultConfig
from worker.local.stack import (
    CallbackReceiver,
    CeleryProcess,
    LocalRedis,
    Supervisor,
    wait_until,
)
from worker.taskqueue.app import create_app

API_KEY = "chaos-key-0123456789"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

#: Fast timings so each scenario takes seconds, passed explicitly to every process.
CHAOS_SETTINGS: dict[str, Any] = {
    "poll_initial_delay": 0.3,
    "poll_interval": 0.5,
    "poll_max_interval": 1.0,
    "poll_backoff": 1.0,
    "poll_jitter": 0.1,
    "overage_pause": 0.5,
    "breaker_max_backoff": 2.0,  # compressed like every other timing here
    "http_connect_timeout": 0.5,
    "http_read_timeout": 1.0,
    "http_retries": 1,
    "http_retry_base_delay": 0.05,
    "http_retry_max_delay": 0.2,
    "app_cache_ttl": 30,
    "visibility_timeout": 900,
    "sweep_interval": 2,
    "sweep_grace": 1,
    "stall_after": 120,
    "run_timeout": 900,
    "submit_retry_deadline": 900,
    "webhook_secret": SECRET,
    "callback_allow_private": True,
    "callback_connect_timeout": 0.5,
    "callback_timeout": 2,
    "callback_retry_delays": "0,0.3,0.5,1,1,1,1,2,2,2,2,2,2,2,2",
    "log_level": "INFO",
}
WORKER_ARGS = ["--pool", "prefork", "--without-gossip", "--without-mingle", "-E"]


@dataclass
class Row:
    """One scorecard row."""

    scenario: str
    goal: str
    result: str
    ok: bool
    seconds: float = 0.0


@dataclass
class Evidence:
    """What the fake and the receiver saw, per run."""

    runs: int
    lost: list[str] = field(default_factory=list)
    not_completed: list[str] = field(default_factory=list)
    #: Not completed because a worker died mid-submit: AMBIGUOUS by design (never re-sent).
    ambiguous: list[str] = field(default_factory=list)
    #: Why each not-completed run ended, from its callback: "status: error".
    reasons: dict[str, str] = field(default_factory=dict)
    dup_submits: int = 0
    max_submits: int = 0
    dup_callbacks: int = 0

    def summary(self) -> str:
        """``lost 0, not completed 0, duplicate submits 0, duplicate callbacks 0``."""
        text = (
            f"{self.runs} runs: lost {len(self.lost)}, failed {len(self.not_completed)}, "
            f"duplicate submits {self.dup_submits}, duplicate callbacks {self.dup_callbacks}"
        )
        if self.ambiguous:
            text += f" ({len(self.ambiguous)} of the failed AMBIGUOUS: killed mid-submit)"
        others = [r for r in self.not_completed if r not in self.ambiguous]
        if others:
            text += "; failed: " + "; ".join(self.reasons[r][:120] for r in others[:3])
        return text

    @property
    def clean(self) -> bool:
        """Every run completed once, submitted once, called back once."""
        return not (self.lost or self.not_completed or self.dup_submits or self.dup_callbacks)


class ChaosStack:
    """Private Redis (AOF, fsync always), fake Hatz, receiver, supervised worker and beat."""

    def __init__(self, *, concurrency: int = 4, beat: bool = True, **overrides: Any) -> None:
        self.redis = LocalRedis(appendonly=True, appendfsync="always").start()
        self.fake = FakeHatz(api_key=API_KEY, call_log_size=500_000, seed=None).start()
        self.receiver = CallbackReceiver().start()
        values = {**CHAOS_SETTINGS, **overrides}
        values.update(redis_url=self.redis.url, base_url=self.fake.url, api_key=API_KEY)
        self.values = values
        self.settings: Settings = load_settings(_env_file=None, **values)
        self.context = Context.from_settings(self.settings)
        self.celery = create_app(self.settings)
        self.app = self.fake.add_app(
            FakeApp(
                id=str(uuid.uuid4()),
                name="chaos",
                user_inputs=[FakeInput("tag", required=True)],
                steps=[FakeStep(output_type="dump"), FakeStep(output_type="text")],
                duration=2.0,
                pending_seconds=0.2,
            )
        )
        self.worker = Supervisor(
            CeleryProcess(values, args=[*WORKER_ARGS, "--concurrency", str(concurrency)])
        )
        self.beat = Supervisor(CeleryProcess(values, kind="beat")) if beat else None
        self.tags: dict[str, str] = {}
        self.outcomes: dict[str, tuple[str, str]] = {}
        self.worker.start()
        self.worker.process.wait_ready()
        if self.beat is not None:
            self.beat.start()
            self.beat.process.wait_ready()

    # --- runs ---------------------------------------------------------------------

    def enqueue(self, n: int) -> list[str]:
        """Enqueue ``n`` runs with unique tags and a callback."""
        ids = []
        for _ in range(n):
            tag = uuid.uuid4().hex
            run_id = enqueue_run(
                self.app.id,
                {"tag": tag},
                callback_url=self.receiver.url,
                context=self.context,
                celery=self.celery,
            )
            self.tags[run_id] = tag
            ids.append(run_id)
        return ids

    def jobs_created(self) -> Counter[str]:
        """Successful submits per tag, from the fake's call log."""
        counts: Counter[str] = Counter()
        for call in self.fake.calls("run"):
            if call["status"] == 200 and call.get("app_id") == self.app.id:
                counts[str((call.get("inputs") or {}).get("tag"))] += 1
        return counts

    def callbacks(self) -> dict[str, list[str]]:
        """Successful deliveries per run id: the event types, from the receiver's log."""
        seen: dict[str, list[str]] = {}
        for delivery in self.receiver.successful():
            body = json.loads(delivery["body"])  # type: ignore[arg-type]
            data = body["data"]
            seen.setdefault(data["run_id"], []).append(body["type"])
            self.outcomes[data["run_id"]] = (str(data.get("status")), str(data.get("error") or ""))
        return seen

    def done(self, ids: list[str]) -> bool:
        """Every run has had a successful callback."""
        seen = self.callbacks()
        return all(r in seen for r in ids)

    def wait_done(self, ids: list[str], timeout: float) -> float:
        """Seconds until every run has called back (``timeout`` when some never did)."""
        started = time.monotonic()
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: self.done(ids), timeout=timeout, interval=0.2, message="runs")
        return time.monotonic() - started

    def wait_submitted(self, ids: list[str], timeout: float = 60) -> None:
        """Until the fake has created a job for every run."""
        wanted = {self.tags[r] for r in ids}
        wait_until(
            lambda: wanted <= set(self.jobs_created()),
            timeout=timeout,
            interval=0.1,
            message="every run submitted",
        )

    def evidence(self, ids: list[str]) -> Evidence:
        """Counts from the fake's call log and the receiver's log."""
        jobs = self.jobs_created()
        seen = self.callbacks()
        ev = Evidence(runs=len(ids))
        for run_id in ids:
            submits = jobs.get(self.tags[run_id], 0)
            ev.max_submits = max(ev.max_submits, submits)
            ev.dup_submits += max(0, submits - 1)
            types = seen.get(run_id, [])
            if not types:
                ev.lost.append(run_id)
            elif any(t != "workflow_run.completed" for t in types):
                ev.not_completed.append(run_id)
                status, error = self.outcomes.get(run_id, ("?", ""))
                ev.reasons[run_id] = f"{status}: {error}"
                if status == "ambiguous" and "lost" in error:
                    ev.ambiguous.append(run_id)
            ev.dup_callbacks += max(0, len(types) - 1)
        return ev

    def close(self) -> None:
        """Stop everything; keep logs when CHAOS_KEEP_LOGS is set."""
        for sup in (self.beat, self.worker):
            if sup is not None:
                sup.stop(timeout=20)
        self.receiver.stop()
        self.fake.stop()
        self.context.client.close()
        self.redis.close()
        if not os.environ.get("CHAOS_KEEP_LOGS"):
            for sup in (self.beat, self.worker):
                if sup is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(sup.process.log_path)


@contextlib.contextmanager
def stack(**kwargs: Any) -> Iterator[ChaosStack]:
    """A :class:`ChaosStack` for one scenario."""
    s = ChaosStack(**kwargs)
    try:
        yield s
    finally:
        s.close()


class Toggler:
    """Flips something on and off in a background thread (overage bursts, flapping)."""

    def __init__(self, flip: Callable[[bool], None], on: float, off: float) -> None:
        self.flip, self.on, self.off = flip, on, off
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.flip(True)
            if self._stop.wait(self.on):
                break
            self.flip(False)
            self._stop.wait(self.off)
        self.flip(False)

    def __enter__(self) -> Toggler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _sweep_bound(s: ChaosStack) -> float:
    return s.settings.sweep_interval + 10.0


# --- scenarios --------------------------------------------------------------------


def worker_sigkill(n: int) -> Row:
    """SIGKILL the whole worker (main process and pool) while its runs are polling."""
    goal = "0 lost, 0 dup callbacks, all done ≤ sweep period + 10 s after restart"
    with stack() as s:
        ids = s.enqueue(n)
        s.wait_submitted(ids)
        s.worker.process.kill()  # the supervisor restarts it, like compose would
        restarted = time.monotonic()
        wait_until(lambda: s.worker.restarts >= 1, timeout=10, message="restart")
        s.wait_done(ids, timeout=120)
        took = time.monotonic() - restarted
        ev = s.evidence(ids)
        bound = _sweep_bound(s)
        ok = ev.clean and took <= bound
        result = f"{ev.summary()}; all done {took:.1f} s after restart (bound {bound:.0f} s)"
        return Row(f"worker SIGKILL mid-poll, {n} runs", goal, result, ok, took)


def child_sigkill(n: int) -> Row:
    """SIGKILL the pool's child processes (three times) while they run polls."""
    goal = "0 lost, 0 dup callbacks, all done ≤ sweep period + 10 s after the last kill"
    with stack() as s:
        s.fake.configure(FaultConfig(latency=0.3, endpoints={"status"}))
        ids = s.enqueue(n)
        s.wait_submitted(ids)
        killed = 0
        for _ in range(3):
            for pid in s.worker.process.children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            time.sleep(0.7)  # let the pool respawn before the next kill (not a sync point)
        last_kill = time.monotonic()
        s.wait_done(ids, timeout=120)
        took = time.monotonic() - last_kill
        ev = s.evidence(ids)
        bound = _sweep_bound(s)
        ok = ev.clean and took <= bound and killed > 0
        result = f"{ev.summary()}; {killed} children killed; all done {took:.1f} s after"
        return Row(f"pool child SIGKILL, {n} runs", goal, result, ok, took)


def sigterm_pending(n: int) -> Row:
    """SIGTERM while the worker holds ``n`` countdown polls; no beat, so no sweeper help."""
    goal = "0 lost (held polls restored at warm shutdown; no sweeper running)"
    with stack(beat=False, poll_interval=3.0, poll_max_interval=3.0, poll_initial_delay=3.0) as s:
        s.app.duration = 8.0
        ids = s.enqueue(n)
        s.wait_submitted(ids)
        s.worker.process.signal(signal.SIGTERM)
        proc = s.worker.process
        wait_until(lambda: s.worker.restarts >= 1, timeout=60, message="worker restarted")
        log = proc.log_text()
        restored = _restored_count(log)
        took = s.wait_done(ids, timeout=90)
        ev = s.evidence(ids)
        ok = ev.clean and restored > 0
        result = f"{ev.summary()}; {restored} held polls restored at shutdown"
        return Row(f"SIGTERM with {n} scheduled polls pending", goal, result, ok, took)


def _restored_count(log: str) -> int:
    total = 0
    for line in log.splitlines():
        if "Restoring" in line and "unacknowledged message" in line:
            words = line.split("Restoring", 1)[1].split()
            if words and words[0].isdigit():
                total += int(words[0])
    return total


def redis_restart(n: int) -> Row:
    """SIGKILL redis-server mid-run and start it again on the same AOF files."""
    goal = "all runs finish, 0 dup submits (worker survives the kombu restore trap)"
    with stack() as s:
        ids = s.enqueue(n)
        s.wait_submitted(ids[: n // 2])
        s.redis.kill()
        time.sleep(2)  # Redis stays down a moment (the outage itself, not a sync point)
        s.redis.start()
        back = time.monotonic()
        s.wait_done(ids, timeout=120)
        took = time.monotonic() - back
        ev = s.evidence(ids)
        crashed = "Unrecoverable error" in s.worker.process.log_text()
        ok = not ev.lost and not ev.not_completed and ev.dup_submits == 0
        result = (
            f"{ev.summary()}; worker restarts {s.worker.restarts}"
            f"{' (crashed!)' if crashed else ''}, beat restarts "
            f"{s.beat.restarts if s.beat else 0}; all done {took:.1f} s after Redis returned"
        )
        return Row("Redis killed and restarted (AOF on) mid-run", goal, result, ok, took)


def redis_unreachable(n: int, pause: float) -> Row:
    """SIGSTOP redis-server for ``pause`` s (a blackhole), then SIGCONT."""
    goal = "recovers by itself ≤ 60 s after Redis returns; all runs finish"
    with stack() as s:
        ids = s.enqueue(n)
        s.wait_submitted(ids[: n // 2])
        s.redis.pause()
        time.sleep(pause)  # the outage itself
        s.redis.resume()
        back = time.monotonic()
        s.wait_done(ids, timeout=120)
        took = time.monotonic() - back
        ev = s.evidence(ids)
        ok = not ev.lost and not ev.not_completed and ev.dup_submits == 0 and took <= 60
        result = (
            f"{ev.summary()}; all done {took:.1f} s after Redis returned "
            f"(worker restarts {s.worker.restarts})"
        )
        return Row(f"Redis unreachable {pause:.0f} s (SIGSTOP/SIGCONT)", goal, result, ok, took)


#: 30 % of calls fail: 5xx and hangs (read timeouts) on every endpoint but the
#: submit, which gets 10 % credit overage (plus bursts). A hang on the submit is a
#: lost answer, which makes the run AMBIGUOUS by design (README "The submit rule").
def _hatz_faults(s: ChaosStack) -> None:
    s.fake.configure(
        FaultConfig(
            error_rate=0.15,
            timeout_rate=0.15,
            hang_seconds=1.5,
            overage_rate=0.1,
            endpoints={"status", "app_get", "presign", "upload"},
        )
    )


def hatz_faults(n: int) -> Row:
    """5xx and hangs on 30 % of Hatz calls, plus credit-overage bursts on submits."""
    goal = "0 runs failed that would have completed; ≤ 1 submit per run"
    with stack(concurrency=6) as s:
        _hatz_faults(s)
        with Toggler(s.fake.set_overage, on=1.5, off=2.5):
            ids = s.enqueue(n)
            took = s.wait_done(ids, timeout=240)
        ev = s.evidence(ids)
        faults = s.fake.stats().get("faults", {})
        ok = ev.clean and ev.max_submits <= 1
        result = f"{ev.summary()}; max submits/run {ev.max_submits}; faults injected {faults}"
        return Row("Hatz 5xx/timeouts 30 % of calls, 429 overage bursts", goal, result, ok, took)


def _flap(receiver: CallbackReceiver) -> Callable[[bool], None]:
    def flip(on: bool) -> None:
        receiver.failing = on

    return flip


def receiver_flapping(n: int) -> Row:
    """The callback receiver answers 503 for 1 s out of every 2."""
    goal = "exactly one successful delivery per run"
    with stack() as s, Toggler(_flap(s.receiver), on=1.0, off=1.0):
        ids = s.enqueue(n)
        took = s.wait_done(ids, timeout=120)
        time.sleep(1.0)  # a late duplicate would land now (measured, not synchronised on)
        ev = s.evidence(ids)
        failed = len(s.receiver.deliveries) - len(s.receiver.successful())
        ok = ev.clean
        result = f"{ev.summary()}; {failed} deliveries refused by the flapping receiver"
        return Row("callback receiver flapping", goal, result, ok, took)


def mixed(n: int, pause: float) -> Row:
    """Everything at once over ``n`` runs."""
    goal = "0 lost, 0 dup submits, 0 dup successful callbacks, 0 stuck"
    with stack(concurrency=6) as s:
        _hatz_faults(s)
        with (
            Toggler(s.fake.set_overage, on=1.0, off=4.0),
            Toggler(_flap(s.receiver), on=1.0, off=2.0),
        ):
            ids = s.enqueue(n)
            s.wait_submitted(ids[: n // 4], timeout=240)
            s.worker.process.kill()
            time.sleep(3)
            for pid in s.worker.process.children():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            s.wait_submitted(ids[: n // 2], timeout=240)
            s.redis.kill()
            time.sleep(2)
            s.redis.start()
            time.sleep(5)
            s.redis.pause()
            time.sleep(pause)
            s.redis.resume()
            took = s.wait_done(ids, timeout=600)
        time.sleep(1.0)
        ev = s.evidence(ids)
        ok = not ev.lost and ev.dup_submits == 0 and ev.dup_callbacks == 0
        # A run whose worker was SIGKILLed mid-POST ends AMBIGUOUS (never re-sent, its
        # callback says so): not lost, not stuck, by design. Any other failure counts.
        ok = ok and set(ev.not_completed) <= set(ev.ambiguous)
        result = (
            f"{ev.summary()}; stuck {len(ev.lost)}; worker restarts {s.worker.restarts}, "
            f"beat restarts {s.beat.restarts if s.beat else 0}"
        )
        return Row(f"{n} runs, all faults above mixed", goal, result, ok, took)


# --- the runner -------------------------------------------------------------------

FULL: dict[str, Callable[[], Row]] = {
    "worker-sigkill": lambda: worker_sigkill(50),
    "child-sigkill": lambda: child_sigkill(50),
    "sigterm": lambda: sigterm_pending(100),
    "redis-restart": lambda: redis_restart(50),
    "redis-unreachable": lambda: redis_unreachable(50, 30.0),
    "hatz-faults": lambda: hatz_faults(100),
    "receiver-flapping": lambda: receiver_flapping(50),
    "mixed": lambda: mixed(1000, 15.0),
}
QUICK: dict[str, Callable[[], Row]] = {
    "worker-sigkill": lambda: worker_sigkill(10),
    "sigterm": lambda: sigterm_pending(30),
    "redis-restart": lambda: redis_restart(10),
    "receiver-flapping": lambda: receiver_flapping(10),
}


def scorecard(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = ["| scenario | goal | measured | at goal |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.scenario} | {r.goal} | {r.result} | {'✓' if r.ok else '✗'} |")
    return "\n".join(lines)


def run(names: list[str], table: dict[str, Callable[[], Row]]) -> list[Row]:
    """Run the named scenarios one after another, printing each row as it finishes."""
    rows = []
    for name in names:
        started = time.monotonic()
        try:
            row = table[name]()
        except Exception as exc:  # a scenario that cannot even finish is a failed row
            row = Row(name, "", f"scenario error: {type(exc).__name__}: {exc}", False)
        print(
            f"[{time.monotonic() - started:5.1f} s] {'PASS' if row.ok else 'FAIL'} "
            f"{row.scenario}: {row.result}",
            flush=True,
        )
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.chaos [--quick] [--only NAME ...]``; exit 1 when a row misses."""
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the smaller CI subset")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="scenarios to run")
    args = parser.parse_args(argv)
    table = QUICK if args.quick else FULL
    names = args.only or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; known: {', '.join(table)}")
    started = time.monotonic()
    rows = run(names, table)
    print()
    print(scorecard(rows))
    took = time.monotonic() - started
    print(f"\n{sum(r.ok for r in rows)}/{len(rows)} rows at goal in {took:.0f} s")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
