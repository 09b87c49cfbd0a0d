"""The bench's private processes: redis-server, the fake Hatz server, Celery workers.

The fake runs in its own process (``python -m worker.fake_hatz``) so its GIL
never competes with the harness; the harness talks to it over its admin API.
Process metrics (RSS, CPU) come from ``/proc``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from celery import Celery

from worker.local.stack import CeleryProcess, free_port, wait_until

API_KEY = "bench-key-0123456789"
_TICK = os.sysconf("SC_CLK_TCK")


class FakeServer:
    """``python -m worker.fake_hatz`` in a subprocess, driven through ``/_fake/``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The base URL for the Hatz client."""
        return f"{self.root_url}/v1"

    def start(self) -> FakeServer:
        """Start it and wait for ``/_fake/health``."""
        args = [sys.executable, "-m", "worker.fake_hatz", "--port", str(self.port)]
        args += ["--api-key", API_KEY, "--no-default-apps", "--call-log-size", "0"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def healthy() -> bool:
            try:
                return self.session.get(f"{self.root_url}/_fake/health", timeout=1).ok
            except requests.RequestException:
                return False

        wait_until(healthy, timeout=20, interval=0.1, message="fake Hatz server")
        return self

    def stop(self) -> None:
        """Stop it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.session.close()

    def add_app(self, **fields: Any) -> str:
        """Serve a workflow (FakeApp fields); return its id."""
        answer = self.session.post(f"{self.root_url}/_fake/apps", json=fields, timeout=10)
        answer.raise_for_status()
        return str(answer.json()["id"])

    def stats(self) -> dict[str, Any]:
        """``GET /_fake/stats``."""
        answer = self.session.get(f"{self.root_url}/_fake/stats", timeout=60)
        answer.raise_for_status()
        data: dict[str, Any] = answer.json()
        return data

    def calls(self, endpoint: str) -> int:
        """Requests counted for ``endpoint`` since the last reset."""
        return int(self.stats()["by_endpoint"].get(endpoint, 0))

    def reset(self, scope: str = "all") -> None:
        """Forget jobs and counters (``all``) or only counters (``stats``)."""
        self.session.post(f"{self.root_url}/_fake/reset", json={"scope": scope}, timeout=30)

    def create_jobs(self, app_id: str, n: int, threads: int = 6) -> list[str]:
        """Submit ``n`` jobs directly (not through the worker) to seed in-flight runs."""

        def chunk(count: int) -> list[str]:
            with requests.Session() as s:
                out = []
                for _ in range(count):
                    answer = s.post(
                        f"{self.url}/workflows/run",
                        json={"app_id": app_id, "inputs": {}},
                        headers={"X-API-Key": API_KEY},
                        timeout=30,
                    )
                    answer.raise_for_status()
                    out.append(str(answer.json()["job_id"]))
                return out

        sizes = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]
        with ThreadPoolExecutor(threads) as pool:
            return [job for part in pool.map(chunk, sizes) for job in part]


class Worker(CeleryProcess):
    """A ``celery worker`` of any app module, started with explicit flags and settings."""

    def __init__(
        self,
        settings: dict[str, object],
        *,
        app_module: str = "worker",
        queues: Sequence[str],
        concurrency: int = 2,
        pool: str = "prefork",
        loglevel: str = "WARNING",
        name: str = "bench",
    ) -> None:
        self.app_module = app_module
        self.node = f"{name}-{os.getpid()}-{time.monotonic_ns()}@localhost"
        self.flags = [
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            self.node,
            "-Q",
            ",".join(queues),
        ]
        fd, log = tempfile.mkstemp(prefix="hatz-bench-worker-", suffix=".log")
        os.close(fd)
        super().__init__(settings, args=self.flags, log_path=log)

    def command(self) -> list[str]:
        """``python -m celery -A MODULE worker FLAGS``."""
        return [sys.executable, "-m", "celery", "-A", self.app_module, "worker", *self.flags]

    def wait_pinged(self, celery: Celery, timeout: float = 60) -> None:
        """Wait until the worker answers a remote-control ping (works at any log level)."""

        def answered() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_text()[-3000:]}")
            return bool(celery.control.ping(destination=[self.node], timeout=0.5))

        wait_until(answered, timeout=timeout, interval=0.2, message="celery worker ping")

    def pids(self) -> list[int]:
        """The main process and its pool children."""
        if self.process is None:
            return []
        return [self.process.pid, *self.children()]

    def close(self) -> None:
        """Kill it (the bench throws its queues away) and remove its log."""
        self.kill()
        self.stop(timeout=5)
        Path(self.log_path).unlink(missing_ok=True)


def _proc_kb_sum(pids: Sequence[int], name: str, field: str) -> int:
    """Sum over ``pids`` of the ``field:`` line (kB) of ``/proc/<pid>/<name>``, in bytes."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
                if line.startswith(field):
                    total += int(line.split()[1]) * 1024
        except (FileNotFoundError, PermissionError):
            continue
    return total


def rss_bytes(pids: Sequence[int]) -> int:
    """Sum of VmRSS over ``pids``."""
    return _proc_kb_sum(pids, "status", "VmRSS:")


def pss_bytes(pids: Sequence[int]) -> int:
    """Sum of proportional set size over ``pids``: shared pages counted once overall."""
    return _proc_kb_sum(pids, "smaps_rollup", "Pss:")


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds used so far by ``pids``."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]
