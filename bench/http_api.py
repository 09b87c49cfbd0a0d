"""``python -m bench.http_api``: enqueues per second through the HTTP API beside
``enqueue_run`` called directly, in the same run, and the latency of ``POST /v1/runs``.

One fresh ``redis-server``; no Celery worker (an enqueue ends when the run is in
the ledger and its submit message is in Redis, so none is needed). In turn:

1. **direct**: one thread calls :func:`worker.api.runs.enqueue_run` in a loop for
   ``--seconds`` (what a Python app sharing our Redis does);
2. **HTTP API**: ``hatz-worker serve`` (uvicorn, as deployed) and a load generator
   in this process keeping ``--concurrency`` keep-alive connections busy with
   ``POST /v1/runs`` for ``--seconds``: one process, then ``serve --workers 2``
   (a process per core, as the docs advise); then one process at concurrency 1
   for the latency of a lone caller.

The goal (issue 18): the API at least half of the direct rate on the same two
cores, i.e. ``serve --workers 2`` here. One process alone is printed against
the same mark: a Python process runs one request's code at a time, so it is
held to about one core's worth. The load generator is a few lines of asyncio
over raw sockets with a request built once, not an HTTP library: on two shared
cores a Python HTTP client would spend more CPU per request than the server and
measure itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from config.settings import Settings
from worker.api.runs import enqueue_run
from worker.clients import ClientStore
from worker.context import Context
from worker.local.stack import LocalRedis, free_port, settings_env, wait_until
from worker.taskqueue.app import create_app

ROOT = Path(__file__).resolve().parents[1]
APP_ID = "5ae6e9dd-0000-4000-8000-000000000000"
INPUTS = {"topic": "quarterly sales", "tone": "plain"}
SETTINGS: dict[str, object] = {
    "api_key": "bench-key-0123456789",
    "base_url": "http://127.0.0.1:9/v1",  # never called: nothing is submitted
    "client_rate_limit": 1_000_000,
    "client_rate_burst": 1_000_000,
    "log_level": "WARNING",
}


@dataclass
class Result:
    """One measured phase."""

    name: str
    count: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Enqueues per second."""
        return self.count / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms(self) -> float:
        """CPU time of the enqueuing process(es) per enqueue, ms."""
        return self.cpu_seconds / self.count * 1000 if self.count else 0.0

    def percentile(self, q: float) -> float:
        """The ``q`` quantile of the latencies, ms (0 when none were kept)."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def measure_direct(context: Context, seconds: float) -> Result:
    """``enqueue_run`` in a loop on one thread."""
    celery = create_app(context.settings)
    for _ in range(50):  # warm up: scripts loaded, connections open
        enqueue_run(APP_ID, INPUTS, context=context, celery=celery)
    latencies: list[float] = []
    cpu = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        enqueue_run(APP_ID, INPUTS, context=context, celery=celery)
        after = time.perf_counter()
        latencies.append(after - now)
        now = after
    cpu = time.process_time() - cpu
    return Result("direct enqueue_run", len(latencies), now - start, latencies, cpu)


class ApiProcess:
    """``hatz-worker serve [--workers N]`` on a free loopback port."""

    def __init__(self, settings: dict[str, object], workers: int = 1) -> None:
        self.port = free_port()
        self.workers = workers
        env = {k: v for k, v in os.environ.items() if not k.startswith("HATZ_")}
        env.update(settings_env(settings))
        command = [sys.executable, "-m", "worker.cli.main", "serve", "--port", str(self.port)]
        command += ["--workers", str(workers)]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(self._ready, timeout=30, interval=0.05, message="hatz-worker serve")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"hatz-worker serve exited {self.process.returncode}")
        return asyncio.run(_healthz(self.port))

    def cpu_seconds(self) -> float:
        """User + system CPU time the process and its serve processes used so far, s."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return sum(_cpu_seconds(p) for p in [pid, *map(int, children)])

    def stop(self) -> None:
        """SIGTERM and wait."""
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # a serve process that has just exited
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _healthz(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
    status = await reader.readline()
    writer.close()
    return b" 200 " in status


def post_request(token: str) -> bytes:
    """The bytes of one ``POST /v1/runs``, built once."""
    body = json.dumps({"app_id": APP_ID, "inputs": INPUTS}).encode()
    head = (
        "POST /v1/runs HTTP/1.1\r\nHost: bench\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _connection(port: int, request: bytes, deadline: float, out: list[float]) -> int:
    """Send ``request`` over one keep-alive connection until ``deadline``; 201s counted."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    created = 0
    try:
        while (sent := time.perf_counter()) < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            out.append(time.perf_counter() - sent)
            if head.startswith(b"HTTP/1.1 201"):
                created += 1
            else:
                raise RuntimeError(f"POST /v1/runs answered {head.split(b' ', 2)[1].decode()}")
    finally:
        writer.close()
    return created


async def _load(ports: Sequence[int], request: bytes, concurrency: int, seconds: float) -> Result:
    """``concurrency`` connections spread over the API processes' ``ports``."""
    spread = [ports[i % len(ports)] for i in range(concurrency)]
    warm: list[float] = []
    await asyncio.gather(
        *(_connection(port, request, time.perf_counter() + 0.5, warm) for port in spread)
    )
    latencies: list[float] = []
    start = time.perf_counter()
    counts = await asyncio.gather(
        *(_connection(port, request, start + seconds, latencies) for port in spread)
    )
    elapsed = time.perf_counter() - start
    return Result(f"HTTP API, {concurrency} conn.", sum(counts), elapsed, latencies)


def measure_api(apis: Sequence[ApiProcess], token: str, concurrency: int, seconds: float) -> Result:
    """``POST /v1/runs`` from ``concurrency`` keep-alive connections for ``seconds``."""
    cpu = sum(api.cpu_seconds() for api in apis)
    result = asyncio.run(_load([a.port for a in apis], post_request(token), concurrency, seconds))
    result.cpu_seconds = sum(api.cpu_seconds() for api in apis) - cpu
    workers = sum(api.workers for api in apis)
    if workers > 1:
        result.name += f", {workers} processes"
    return result


def report(results: Sequence[Result], direct: Result) -> str:
    """The results as a table, each rate beside the direct one."""
    lines = [
        f"{'measure':<36} {'enqueues/s':>10} {'of direct':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'CPU ms/enqueue':>14}",
        "-" * 88,
    ]
    for r in results:
        share = f"{r.rate / direct.rate:.0%}" if direct.rate else "-"
        lines.append(
            f"{r.name:<36} {r.rate:>10,.0f} {share:>9} "
            f"{r.percentile(0.5):>7.2f} {r.percentile(0.99):>7.2f} {r.cpu_ms:>14.2f}"
        )
    return "\n".join(lines)


def _median(results: Sequence[Result]) -> Result:
    """The round with the median rate (its latencies too)."""
    return sorted(results, key=lambda r: r.rate)[len(results) // 2]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measures, alternating, and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.http_api", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measure (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--concurrency", type=int, default=8, help="API connections (default 8)")
    args = parser.parse_args(argv)
    direct: list[Result] = []
    one: list[Result] = []
    two: list[Result] = []
    with LocalRedis() as redis:
        settings = {**SETTINGS, "redis_url": redis.url}
        context = Context.from_settings(Settings.model_validate(settings))
        token = ClientStore(context.redis, context.keys).create("bench")
        single, pair = ApiProcess(settings), ApiProcess(settings, workers=2)
        try:
            for _ in range(args.rounds):  # alternating, so a busy spell hits each alike
                direct.append(measure_direct(context, args.seconds))
                one.append(measure_api([single], token, args.concurrency, args.seconds))
                two.append(measure_api([pair], token, args.concurrency, args.seconds))
            lone = measure_api([single], token, 1, args.seconds)
        finally:
            for api in (single, pair):
                api.stop()
    baseline = _median(direct)
    print(
        f"cores: {os.cpu_count()}; median of {args.rounds} alternating rounds of "
        f"{args.seconds:g} s; load average (1 min) at the end: {os.getloadavg()[0]:.1f}"
    )
    print(report([baseline, _median(one), _median(two), lone], baseline))
    for name, rounds in (("1 process", one), ("2 processes", two)):
        shares = [f"{a.rate / d.rate:.0%}" for a, d in zip(rounds, direct, strict=True)]
        print(f"API/direct each round, {name}: {', '.join(shares)}")
    for label, rounds in (
        ("one API process", one),
        ("issue 18, the API on the two cores: serve --workers 2", two),
    ):
        share = _median(rounds).rate / baseline.rate if baseline.rate else 0.0
        verdict = "met" if share >= 0.5 else "NOT met"
        print(f"goal ({label} >= half of direct): {verdict} ({share:.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
