"""``python -m bench.console``: the web console's runs page with 100,000 runs in the ledger.

A private ``redis-server`` is filled with ``--runs`` run records (copies of a
real completed record made by the ledger, with their own ids, times, apps,
clients and states; 1,000 of them still in flight), then a real ``hatz-worker
serve`` process (uvicorn) is logged in to as an admin and each console request
is timed over loopback HTTP, ``--requests`` times. Beside them, from the same
server in the same run: ``GET /healthz`` (the floor: HTTP plus one Redis
round trip) and the HTTP API's own page of 50 runs (``GET /v1/runs?limit=50``).
The issue's goal: the runs page answers in under 300 ms.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import uuid
from typing import Any

import requests

from tests.http_stack import ApiServer
from worker.console.queries import encode_cursor
from worker.context import redis_from_url
from worker.local.stack import LocalRedis
from worker.store.keys import Keys
from worker.store.ledger import Ledger
from worker.store.poll_log import poll_log_field

GOAL_MS = 300.0
_STATES = ["COMPLETED"] * 90 + ["FAILED"] * 6 + ["TIMED_OUT"] * 2 + ["CANCELED"] * 2


def template_record(url: str) -> dict[str, str]:
    """A completed run's hash as the ledger writes it (inputs, outputs, documents, polls)."""
    client = redis_from_url(url)
    ledger = Ledger(client, keys=Keys("bench"))
    run_id, _ = ledger.create(
        {
            "app_id": "app",
            "inputs": {"topic": "quarterly report " * 8},
            "metadata": {"customer": "acme", "ticket": 12345},
            "callback_url": "https://hooks.example/hatz",
        }
    )
    extra: dict[Any, Any] = {
        "state": "COMPLETED",
        "job_id": "job",
        "poll_count": "12",
        "step_outputs": '[{"step_id": "s1", "output_type": "dump", "output": "' + "x" * 800 + '"}]',
        "documents": '{"s2": {"url": "https://b.example/d.pdf?sig=1", "expires_at": 1.0}}',
        "callback_state": "delivered",
    }
    for n in range(1, 13):
        extra.update(poll_log_field(n, time.time(), "running", 0.01))
    client.hset(ledger.keys.run(run_id), mapping=extra)
    record = {str(k): str(v) for k, v in client.hgetall(ledger.keys.run(run_id)).items()}
    client.delete(ledger.keys.run(run_id))
    client.zrem(ledger.keys.runs, run_id)
    client.zrem(ledger.keys.schedule, run_id)
    client.close()
    return record


def fill(url: str, runs: int, in_flight: int = 1000) -> tuple[str, str]:
    """Write ``runs`` records (newest last); return a job id half-way back to search for
    and a page cursor there."""
    keys = Keys("bench")
    client = redis_from_url(url)
    record = template_record(url)
    rng = random.Random(7)
    start = time.time() - runs
    needle = cursor = ""
    pipe = client.pipeline(transaction=False)
    for i in range(runs):
        run_id = uuid.uuid4().hex
        created = start + i
        state = "RUNNING" if i >= runs - in_flight else rng.choice(_STATES)
        job_id = str(uuid.uuid4())
        if i == runs // 2:
            needle = job_id
            cursor = encode_cursor((created, run_id))
        client_name = f"client{i % 20}"
        fields: dict[Any, Any] = {
            **record,
            "run_id": run_id,
            "state": state,
            "app_id": f"app-{i % 50}",
            "client": client_name,
            "job_id": job_id,
            "created_at": repr(created),
            "queued_at": repr(created),
            "updated_at": repr(created + 5),
        }
        pipe.hset(keys.run(run_id), mapping=fields)
        pipe.zadd(keys.runs, {run_id: created})
        pipe.zadd(keys.client_runs(client_name), {run_id: created})
        if state == "RUNNING":
            pipe.zadd(keys.schedule, {run_id: created + 60})
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    for state in set(_STATES):
        client.hset(keys.metrics, f"state|{state}", runs)
    client.close()
    return needle, cursor


def timed(session: requests.Session, url: str, n: int, **kwargs: Any) -> list[float]:
    """Milliseconds of ``n`` GETs (each must answer 200)."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        answer = session.get(url, timeout=60, allow_redirects=False, **kwargs)
        times.append((time.perf_counter() - started) * 1000)
        if answer.status_code not in (200, 303):
            raise SystemExit(f"{url}: HTTP {answer.status_code}: {answer.text[:300]}")
    return times


def login(server: ApiServer, token: str) -> requests.Session:
    """A session logged in to the console."""
    session = requests.Session()
    session.trust_env = False
    answer = session.post(
        server.url + "/console/login",
        data={"token": token},
        headers={"Origin": server.url},
        allow_redirects=False,
        timeout=30,
    )
    if answer.status_code != 303:
        raise SystemExit(f"login failed: HTTP {answer.status_code}")
    return session


def row(name: str, times: list[float]) -> str:
    """One line of the table: median, p95, max in ms."""
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"{name:<48} {statistics.median(ordered):9.1f} {p95:9.1f} {ordered[-1]:9.1f}"


def measure(
    server: ApiServer, token: str, n: int, needle: str, cursor: str
) -> list[tuple[str, list[float]]]:
    """Every timed row, ``n`` requests each (a search fewer: it is the slow one)."""
    session = login(server, token)
    base = server.url
    auth = {"Authorization": f"Bearer {token}"}
    paths = [
        ("console runs page", "/console/runs"),
        ("console runs page, live refresh", "/console/runs/_live"),
        ("console runs page, one client", "/console/runs?client=client3"),
        ("console runs page, state=FAILED", "/console/runs?state=FAILED"),
        ("console runs page, state=REJECTED (none)", "/console/runs?state=REJECTED"),
        ("console runs page, half-way back (cursor)", f"/console/runs?cursor={cursor}"),
    ]
    rows = [
        ("GET /healthz (floor)", timed(session, base + "/healthz", n)),
        (
            "GET /v1/runs?limit=50 (the API's page)",
            timed(session, base + "/v1/runs?limit=50", n, headers=auth),
        ),
    ]
    rows += [(name, timed(session, base + path, n)) for name, path in paths]
    search = timed(session, base + f"/console/runs?q={needle}", max(3, n // 5))
    rows.append(("console search by job id (half-way back)", search))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Fill, serve, time, print."""
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__)
    parser.add_argument("--runs", type=int, default=100_000, help="runs in the ledger")
    parser.add_argument("--requests", type=int, default=30, help="requests timed per row")
    args = parser.parse_args(argv)
    with LocalRedis() as redis:
        began = time.perf_counter()
        needle, cursor = fill(redis.url, args.runs)
        print(f"filled {args.runs:,} runs in {time.perf_counter() - began:.1f} s", file=sys.stderr)
        server = ApiServer(
            {"redis_url": redis.url, "key_prefix": "bench", "client_rate_burst": 1e6}
        )
        server.start()
        try:
            server.wait_ready()
            token = server.token("bench-admin", admin=True)
            rows = measure(server, token, args.requests, needle, cursor)
        finally:
            server.stop()
    print(f"\nweb console with {args.runs:,} runs in the ledger, {args.requests} requests each")
    print(f"{'request':<48} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}")
    for name, times in rows:
        print(row(name, times))
    page = statistics.median(rows[2][1])
    verdict = "met" if page < GOAL_MS else "NOT met"
    print(f"\ngoal: the runs page under {GOAL_MS:.0f} ms: {verdict} (p50 {page:.1f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
