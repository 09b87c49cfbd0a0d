"""Everything the fake server knows: apps, uploaded files, jobs, faults and counters.

One lock guards the shared dictionaries; it is held only for dictionary
operations, never while rendering or sleeping, so polling many jobs from many
threads does not serialise on it.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import uuid
from dataclasses import dataclass, replace
from typing import Any

from .clock import Clock
from .faults import FaultConfig, FaultInjector
from .jobs import Job, input_label, plan_job
from .models import FakeApp
from .stats import Recorder

#: ``tenant_id`` and ``user_id`` reported on every job unless configured otherwise.
DEFAULT_TENANT_ID = "tenant_fakeHatz001"
DEFAULT_USER_ID = "5f0c7d2e-3a41-4b6e-9c8d-fa4e00000001"


@dataclass(frozen=True)
class UploadedFile:
    """What the fake keeps of an upload: its metadata and digest, never its content."""

    file_uuid: str
    filename: str
    size: int
    sha256: str
    content_type: str | None
    scope_type: str | None
    scope_id: str | None
    uploaded_at: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description of the upload."""
        return {
            "file_uuid": self.file_uuid,
            "filename": self.filename,
            "size": self.size,
            "sha256": self.sha256,
            "content_type": self.content_type,
            "scope_type": self.scope_type,
            "scope_id": self.scope_id,
            "uploaded_at": self.uploaded_at,
        }


class FakeState:
    """The server's shared state, used by the request handlers and by ``FakeHatz``."""

    def __init__(
        self,
        *,
        api_key: str,
        clock: Clock,
        seed: int | None,
        call_log_size: int,
        max_upload_bytes: int,
        faults: FaultConfig,
        tenant_id: str = DEFAULT_TENANT_ID,
        user_id: str = DEFAULT_USER_ID,
    ) -> None:
        """Start empty (no apps) with the given key, clock, seed and limits."""
        self.api_key = api_key
        self.clock = clock
        self.seed = seed
        self.max_upload_bytes = max_upload_bytes
        self.tenant_id = tenant_id
        self.user_id = user_id
        #: Base of presigned URLs, e.g. ``http://127.0.0.1:8765``; set when serving.
        self.root_url = ""
        #: Set while stopping: wakes requests sleeping for latency or a hang.
        self.stop_event = threading.Event()
        #: Key signing presigned URLs; per instance, so another fake's URLs fail.
        self.signing_key = secrets.token_bytes(32)
        self.injector = FaultInjector(seed)
        self.recorder = Recorder(clock, call_log_size)
        self._lock = threading.Lock()
        self._faults = faults
        self._initial_faults = faults
        self._apps: dict[str, FakeApp] = {}
        self._files: dict[str, UploadedFile] = {}
        self._jobs: dict[str, Job] = {}
        self._lost: set[str] = set()
        self._runs_of: dict[str, int] = {}  # runs made per app (FakeApp.durations' turn)

    # --- auth, time ----------------------------------------------------------

    def key_ok(self, presented: str | None) -> bool:
        """True when ``presented`` is the API key (constant-time comparison)."""
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode(), self.api_key.encode())

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, returning early when the server stops."""
        if seconds > 0:
            self.stop_event.wait(seconds)

    # --- apps ------------------------------------------------------------------

    def add_app(self, app: FakeApp) -> FakeApp:
        """Add ``app``, replacing any app with the same id."""
        with self._lock:
            self._apps[app.id] = app
        return app

    def get_app(self, app_id: str | None) -> FakeApp | None:
        """The app with id ``app_id``, if any."""
        if app_id is None:
            return None
        with self._lock:
            return self._apps.get(app_id)

    def list_apps(self, name: str | None = None) -> list[FakeApp]:
        """Apps in insertion order whose name contains ``name`` (case-insensitive)."""
        with self._lock:
            apps = list(self._apps.values())
        if not name:
            return apps
        needle = name.casefold()
        return [app for app in apps if needle in app.name.casefold()]

    # --- faults ----------------------------------------------------------------

    @property
    def faults(self) -> FaultConfig:
        """The global fault configuration."""
        return self._faults

    def set_faults(self, faults: FaultConfig, app_id: str | None = None) -> None:
        """Set the global faults, or one app's own faults when ``app_id`` is given."""
        if app_id is None:
            self._faults = faults
            return
        app = self.get_app(app_id)
        if app is None:
            raise KeyError(app_id)
        app.faults = faults

    def set_overage(self, on: bool) -> None:
        """Turn the organisation-wide credit overage on or off."""
        self._faults = replace(self._faults, overage=on)

    def effective_faults(self, app_id: str | None) -> FaultConfig:
        """The faults for a request about ``app_id``: the app's own, else the global ones."""
        app = self.get_app(app_id)
        return app.faults if app is not None and app.faults is not None else self._faults

    def overage_hits(self, faults: FaultConfig, endpoint: str) -> bool:
        """Decide whether this request gets the credit-overage 429."""
        # Credit overage is organisation-wide: an app's own faults cannot lift it.
        if self._faults.overage and endpoint in self._faults.overage_endpoints:
            return True
        if endpoint not in faults.overage_endpoints:
            return False
        return faults.overage or self.injector.chance(faults.overage_rate)

    # --- files ------------------------------------------------------------------

    def add_file(self, upload: UploadedFile) -> None:
        """Remember an upload so runs can reference its ``file_uuid``."""
        with self._lock:
            self._files[upload.file_uuid] = upload
        self.recorder.file_uploaded()

    def get_file(self, file_uuid: str) -> UploadedFile | None:
        """The upload with ``file_uuid``, if any."""
        with self._lock:
            return self._files.get(file_uuid)

    # --- jobs -------------------------------------------------------------------

    def create_job(self, app: FakeApp, inputs: dict[str, Any], faults: FaultConfig) -> Job:
        """Create a run of workflow ``app`` now; ``faults.lose_jobs`` may lose it at once."""
        labels: dict[str, str] = {}
        for name, value in inputs.items():
            spec = app.input(name)
            upload = (
                self.get_file(value) if spec and spec.is_file and isinstance(value, str) else None
            )
            labels[name] = (
                f"{upload.filename} ({upload.size} bytes)" if upload else input_label(value)
            )
        duration = None
        if app.durations:
            with self._lock:
                turn = self._runs_of.get(app.id, 0)
                self._runs_of[app.id] = turn + 1
            duration = app.durations[turn % len(app.durations)]
        job = plan_job(
            app,
            job_id=str(uuid.uuid4()),
            inputs=dict(inputs),
            input_labels=labels,
            created_at=self.clock(),
            duration=duration,
        )
        lost = self.injector.chance(faults.lose_jobs)
        with self._lock:
            self._jobs[job.job_id] = job
            if lost:
                self._lost.add(job.job_id)
        self.recorder.job_created(job.job_id)
        return job

    def get_job(self, job_id: str) -> Job | None:
        """The job with ``job_id``, lost or not."""
        with self._lock:
            return self._jobs.get(job_id)

    def is_lost(self, job_id: str) -> bool:
        """True when the server pretends to have lost the job."""
        with self._lock:
            return job_id in self._lost

    def lose_job(self, job_id: str) -> bool:
        """Make the job answer 404 from now on; False if there is no such job."""
        with self._lock:
            if job_id not in self._jobs:
                return False
            self._lost.add(job_id)
            return True

    def job_count(self) -> int:
        """Number of jobs kept."""
        with self._lock:
            return len(self._jobs)

    # --- stats, reset -------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters plus, per job created or polled since the last reset, its timing.

        ``first_complete_at`` is when the job became ``complete``/``failed`` by
        the clock (computed, not when a poll noticed), or None while it runs.
        """
        counters, polls = self.recorder.counters()
        now = self.clock()
        jobs: dict[str, Any] = {}
        with self._lock:
            found = {job_id: self._jobs.get(job_id) for job_id in polls}
            lost = set(self._lost)
        for job_id, job in found.items():
            if job is None:
                continue
            finished = job.finished_at
            jobs[job_id] = {
                "app_id": job.app_id,
                "created_at": job.created_at,
                "first_complete_at": finished if now >= finished else None,
                "status": job.status_at(now),
                "status_polls": polls[job_id],
                "lost": job_id in lost,
            }
        counters["jobs"] = jobs
        return counters

    def reset(self) -> None:
        """Forget jobs, files, lost marks and counters; restore the initial global faults.

        Apps (and their own faults) stay; the fault generator restarts from the seed.
        """
        with self._lock:
            self._jobs.clear()
            self._files.clear()
            self._lost.clear()
            self._runs_of.clear()
            self._faults = self._initial_faults
        self.injector.reseed(self.seed)
        self.recorder.reset()
