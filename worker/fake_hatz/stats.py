"""Request counters and the call log, so a test or benchmark can count API calls.

Counters are always kept and cost O(1) per request. The call log is a ring
buffer of the most recent requests (``call_log_size``; 0 disables it), so a
long benchmark never grows memory through it.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any

from .clock import Clock
from .messages import Response


class Recorder:
    """Counts requests per endpoint and status, and keeps the recent call log."""

    def __init__(self, clock: Clock, call_log_size: int) -> None:
        """Use ``clock`` for timestamps and keep at most ``call_log_size`` calls."""
        if call_log_size < 0:
            raise ValueError("call_log_size must not be negative")
        self._clock = clock
        self._call_log_size = call_log_size
        self._lock = threading.Lock()
        self._since = 0.0
        self._requests = 0
        self._by_endpoint: Counter[str] = Counter()
        self._by_status: dict[str, Counter[int]] = {}
        self._faults: Counter[str] = Counter()
        self._calls: deque[dict[str, Any]] = deque(maxlen=call_log_size)
        # job_id -> status polls, for jobs created or polled since the last reset.
        self._jobs: dict[str, int] = {}
        self._jobs_created = 0
        self._files_uploaded = 0
        self.reset()

    def reset(self) -> None:
        """Forget every counter and logged call."""
        with self._lock:
            self._since = self._clock()
            self._requests = 0
            self._by_endpoint = Counter()
            self._by_status = {}
            self._faults = Counter()
            self._calls = deque(maxlen=self._call_log_size)
            self._jobs = {}
            self._jobs_created = 0
            self._files_uploaded = 0

    def record(self, *, endpoint: str, method: str, path: str, response: Response) -> None:
        """Count one answered request (status 0 when it was hung up on)."""
        status = 0 if response.hang_up else response.status
        entry = {
            "ts": self._clock(),
            "endpoint": endpoint,
            "method": method,
            "path": path,
            "status": status,
            "job_id": response.job_id,
            "app_id": response.app_id,
            "fault": response.fault,
            "inputs": response.inputs,
        }
        with self._lock:
            self._requests += 1
            self._by_endpoint[endpoint] += 1
            self._by_status.setdefault(endpoint, Counter())[status] += 1
            if response.fault is not None:
                self._faults[response.fault] += 1
            self._calls.append(entry)

    def job_created(self, job_id: str) -> None:
        """Count a new job."""
        with self._lock:
            self._jobs_created += 1
            self._jobs.setdefault(job_id, 0)

    def job_polled(self, job_id: str) -> None:
        """Count one status request for an existing job."""
        with self._lock:
            self._jobs[job_id] = self._jobs.get(job_id, 0) + 1

    def file_uploaded(self) -> None:
        """Count one stored upload."""
        with self._lock:
            self._files_uploaded += 1

    def counters(self) -> tuple[dict[str, Any], dict[str, int]]:
        """Return the JSON-ready counters and a copy of the per-job poll counts."""
        with self._lock:
            counters = {
                "since": self._since,
                "requests": self._requests,
                "by_endpoint": dict(self._by_endpoint),
                "by_endpoint_status": {
                    endpoint: {str(status): n for status, n in sorted(statuses.items())}
                    for endpoint, statuses in self._by_status.items()
                },
                "faults": dict(self._faults),
                "jobs_created": self._jobs_created,
                "files_uploaded": self._files_uploaded,
            }
            return counters, dict(self._jobs)

    def calls(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """Return the logged calls, oldest first, optionally for one endpoint only."""
        with self._lock:
            entries = list(self._calls)
        return [dict(e) for e in entries if endpoint is None or e["endpoint"] == endpoint]
