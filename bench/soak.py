"""The Redis soak: many runs through to completion with a short retention, then Redis is
back to its baseline (key count and ``used_memory``) with nobody listing anything.

    python -m bench.soak                      # 2000 runs, HATZ_RUN_RETENTION=10 s
    python -m bench.soak --runs 500 --retention 3 --json

A private ``redis-server``, a real ``celery worker`` and ``celery beat`` (whose
sweeper trims the indexes), the fake Hatz server and two callback receivers,
one answering 200 and one 503 (its callbacks are dead-lettered). The runs are
a mix: completed with a callback and an idempotency key, failed with a
dead-lettered callback, rejected, plain, and one batch with its own callback.

The baseline is taken after a warm-up round has come and gone (Lua scripts
loaded, queues bound, metric fields written); the soak round then runs, and
Redis is measured at its peak and again once every run, batch, idempotency key
and index entry of the round has expired. The quick version runs in the test
suite (``tests/test_soak.py``); the figures of a full run are in
``docs/operating.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import redis
from celery import Celery

from config import Settings, load_settings
from worker.api.batches import start_batch
from worker.api.runs import enqueue_run
from worker.batches.request import BatchRequest
from worker.context import Context
from worker.fake_hatz import FakeApp, FakeHatz, FakeInput
from worker.local.stack import CallbackReceiver, CeleryProcess, LocalRedis, wait_until
from worker.taskqueue.app import create_app

API_KEY = "soak-key-0123456789"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
QUIET = ["--without-gossip", "--without-mingle", "--without-heartbeat"]


@dataclass(frozen=True)
class Snapshot:
    """Redis at one moment: keys, keys without an expiry, ``used_memory``, run records."""

    keys: int
    persistent_keys: int
    used_memory: int
    run_records: int
    names: tuple[str, ...] = ()
    memory: tuple[tuple[str, int], ...] = ()

    @classmethod
    def take(cls, client: redis.Redis, prefix: str) -> Snapshot:
        """Measure (SCAN, TTL per key: fine for the few thousand keys of a soak)."""
        keys = list(client.scan_iter(count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.ttl(key)
        persistent = sum(1 for ttl in pipe.execute() if ttl == -1)
        runs = sum(1 for key in keys if _text(key).startswith(f"{prefix}:run:"))
        info = client.info("memory")
        names = tuple(sorted(_text(k) for k in keys)) if len(keys) <= 50 else ()
        detail = tuple(
            (k, int(info[k]))
            for k in (
                "used_memory_dataset",
                "used_memory_overhead",
                "used_memory_scripts",
                "mem_clients_normal",
            )
            if k in info
        )
        return cls(len(keys), persistent, int(info["used_memory"]), runs, names, detail)


@dataclass
class SoakStack:
    """The processes of one soak and what talks to them."""

    redis: LocalRedis
    fake: FakeHatz
    ok: CallbackReceiver
    broken: CallbackReceiver
    folder: Path
    settings: Settings
    context: Context
    celery: Celery
    apps: dict[str, FakeApp]


def worker_values(retention: int, redis_url: str, fake_url: str, folder: Path) -> dict[str, Any]:
    """The settings the worker, beat and the harness share."""
    return {
        "redis_url": redis_url,
        "base_url": fake_url,
        "api_key": API_KEY,
        "run_retention": retention,
        "idempotency_ttl": retention,
        "poll_initial_delay": 0.1,
        "poll_interval": 0.1,
        "poll_max_interval": 0.5,
        "http_retries": 1,
        "http_retry_base_delay": 0.05,
        "http_retry_max_delay": 0.2,
        "overage_pause": 0.5,
        "app_cache_ttl": 0,
        "webhook_secret": SECRET,
        "callback_allow_private": True,
        "callback_retry_delays": "0,0.1,0.2",
        "sweep_interval": 1,
        "sweep_grace": 3,
        "heartbeat_interval": 5,
        "file_roots": str(folder),
    }


@contextmanager
def soak_stack(retention: int, concurrency: int = 4) -> Iterator[SoakStack]:
    """Start everything; stop it all on the way out."""
    with ExitStack() as stack:
        r = stack.enter_context(LocalRedis())
        fake = stack.enter_context(FakeHatz(api_key=API_KEY, port=0, call_log_size=0))
        ok = stack.enter_context(CallbackReceiver())
        broken = stack.enter_context(CallbackReceiver())
        broken.failing = True
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hatz-soak-")))
        values = worker_values(retention, r.url, fake.url, folder)
        worker = CeleryProcess(
            values, args=["--pool", "prefork", "--concurrency", str(concurrency), *QUIET]
        )
        beat = CeleryProcess(values, kind="beat")
        for process in (worker, beat):
            stack.callback(process.stop)
            process.start()
        worker.wait_ready()
        beat.wait_ready()
        settings = load_settings(_env_file=None, **values)
        context = Context.from_settings(settings)
        stack.callback(context.client.close)
        celery = create_app(settings)
        stack.callback(celery.close)
        apps = {
            "ok": FakeApp(id="0b7d5a3e-0000-4c8e-9d61-000000000001", duration=0.2),
            "fails": FakeApp(id="0b7d5a3e-0000-4c8e-9d61-000000000002", duration=0.1, fail=True),
            "topic": FakeApp(
                id="0b7d5a3e-0000-4c8e-9d61-000000000003",
                duration=0.1,
                user_inputs=[FakeInput("topic", required=True)],
            ),
        }
        for app in apps.values():
            fake.add_app(app)
        yield SoakStack(r, fake, ok, broken, folder, settings, context, celery, apps)


def one_round(s: SoakStack, runs: int, tag: str) -> list[str]:
    """Enqueue ``runs`` runs (a mix of outcomes) and one batch; their run ids."""
    ids: list[str] = []
    for i in range(runs):
        kind = i % 10
        if kind < 7:  # completes; callback delivered; idempotency key
            ids.append(
                enqueue_run(
                    s.apps["ok"].id,
                    callback_url=s.ok.url,
                    idempotency_key=f"{tag}-{i}",
                    metadata={"i": i},
                    context=s.context,
                    celery=s.celery,
                )
            )
        elif kind == 7:  # fails; its callback is dead-lettered
            ids.append(
                enqueue_run(
                    s.apps["fails"].id,
                    callback_url=s.broken.url,
                    context=s.context,
                    celery=s.celery,
                )
            )
        elif kind == 8:  # rejected by the app check (unknown input)
            ids.append(
                enqueue_run(s.apps["ok"].id, {"nope": 1}, context=s.context, celery=s.celery)
            )
        else:  # plain
            ids.append(enqueue_run(s.apps["ok"].id, context=s.context, celery=s.celery))
    rows = max(2, runs // 20)
    source = s.folder / f"{tag}.csv"
    source.write_text("topic\n" + "".join(f"t{i}\n" for i in range(rows)))
    start_batch(
        BatchRequest(
            s.apps["topic"].id,
            source,
            callback_url=s.ok.url,
            max_in_flight=4,
            batch_key=f"{tag}-batch",
        ),
        context=s.context,
        celery=s.celery,
    )
    return ids


def wait_finished(
    s: SoakStack, ids: list[str], timeout: float, peak: dict[str, int] | None = None
) -> None:
    """Until every run is terminal (or already expired); ``peak``: the largest key count
    and ``used_memory`` seen meanwhile."""
    terminal = {"COMPLETED", "FAILED", "TIMED_OUT", "REJECTED", "CANCELED", "AMBIGUOUS"}

    def done() -> bool:
        pipe = s.context.redis.pipeline(transaction=False)
        for run_id in ids:
            pipe.hget(s.context.keys.run(run_id), "state")
        pipe.dbsize()
        pipe.info("memory")
        *states, keys, memory = pipe.execute()
        if peak is not None:
            peak["keys"] = max(peak.get("keys", 0), int(keys))
            peak["used_memory"] = max(peak.get("used_memory", 0), int(memory["used_memory"]))
        return all(state is None or _text(state) in terminal for state in states)

    wait_until(done, timeout=timeout, interval=0.2, message="every soak run to end")


def wait_drained(s: SoakStack, timeout: float) -> None:
    """Until nothing of a round is left: no run, batch or idempotency key, empty indexes."""
    keys = s.context.keys
    client = s.context.redis

    def drained() -> bool:
        for pattern in ("run:*", "batch:*", "idem:*", "batchkey:*"):
            if next(client.scan_iter(match=f"{keys.prefix}:{pattern}", count=1000), None):
                return False
        indexes = (*keys.time_indexes, keys.schedule, keys.parked, keys.active_batches)
        return not any(client.zcard(index) for index in indexes)

    wait_until(drained, timeout=timeout, interval=0.25, message="the soak's keys to expire")


#: kombu's bookkeeping of the messages a worker holds right now (a beat task or a poll in
#: flight): there whenever one is, whatever the round left behind.
IN_FLIGHT_KEYS = frozenset({"unacked", "unacked_index", "unacked_mutex"})


def quiet_snapshot(client: redis.Redis, prefix: str, timeout: float = 30.0) -> Snapshot:
    """A :class:`Snapshot` taken while no worker holds a message, so that two of them
    compare the data left behind, not which periodic task happened to be running."""

    def quiet() -> Snapshot | None:
        if client.exists(*IN_FLIGHT_KEYS):
            return None
        snapshot = Snapshot.take(client, prefix)
        held = IN_FLIGHT_KEYS.intersection(snapshot.names) or client.exists(*IN_FLIGHT_KEYS)
        return None if held else snapshot

    found = wait_until(quiet, timeout=timeout, interval=0.1, message="no message in flight")
    return cast(Snapshot, found)


def soak(
    runs: int = 2000,
    retention: int = 10,
    concurrency: int = 4,
    log: Any = sys.stderr,
    drain_timeout: float = 120.0,
) -> dict[str, Any]:
    """Run the soak; its figures (snapshots before, at the peak and after).

    Raises ``TimeoutError`` when the round's keys are still there ``drain_timeout``
    seconds after the retention.
    """
    started = time.monotonic()
    with soak_stack(retention, concurrency) as s:
        client = s.context.redis
        prefix = s.settings.key_prefix
        warm = one_round(s, 20, "warm")
        wait_finished(s, warm, timeout=120)
        wait_drained(s, timeout=retention + 60)
        baseline = quiet_snapshot(client, prefix)
        print(f"soak: baseline {baseline}; enqueueing {runs} runs", file=log)
        t0 = time.monotonic()
        highest: dict[str, int] = {}
        ids = one_round(s, runs, "soak")
        wait_finished(s, ids, timeout=120 + runs * 0.5, peak=highest)
        took = time.monotonic() - t0
        peak = Snapshot.take(client, prefix)
        print(f"soak: {runs} runs ended in {took:.1f} s; then {peak}; peak {highest}", file=log)
        t1 = time.monotonic()
        wait_drained(s, timeout=retention + drain_timeout)
        after = quiet_snapshot(client, prefix)
        print(f"soak: drained in {time.monotonic() - t1:.1f} s; after {after}", file=log)
        delivered = len(s.ok.successful())
        dead_lettered = len(s.broken.snapshot())
    return {
        "runs": runs,
        "retention_s": retention,
        "round_s": round(took, 1),
        "total_s": round(time.monotonic() - started, 1),
        "callbacks_delivered": delivered,
        "dead_letter_attempts": dead_lettered,
        "baseline": asdict(baseline),
        "peak": {**asdict(peak), **highest},
        "after": asdict(after),
    }


def table(figures: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    rows = [
        f"{figures['runs']} runs, HATZ_RUN_RETENTION={figures['retention_s']} s: the round "
        f"took {figures['round_s']} s, everything {figures['total_s']} s",
        "",
        "| | keys | used_memory |",
        "|---|---|---|",
    ]
    for name, label in (
        ("baseline", "baseline (after a warm-up round expired)"),
        ("peak", "peak (highest seen during the round)"),
        ("after", "after the round expired"),
    ):
        snap = figures[name]
        rows.append(f"| {label} | {snap['keys']} | {snap['used_memory'] / 1024:.0f} KiB |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.soak``."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--retention", type=int, default=10, help="HATZ_RUN_RETENTION, s")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    figures = soak(args.runs, args.retention, args.concurrency)
    print(json.dumps(figures, indent=2) if args.json else table(figures))
    return 0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


if __name__ == "__main__":
    sys.exit(main())
