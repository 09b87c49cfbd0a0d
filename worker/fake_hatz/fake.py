"""``FakeHatz``: the fake Hatz AI server as a Python object you start and stop.

It is a real HTTP server on loopback, so the code under test talks to it
exactly as it talks to ``https://ai.hatz.ai/v1``: point the client's base URL
at :attr:`FakeHatz.url` and its API key at the one given here.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

from .clock import Clock
from .faults import FaultConfig
from .models import FakeApp
from .server import FakeHatzServer
from .state import DEFAULT_TENANT_ID, DEFAULT_USER_ID, FakeState

#: Default cap on an uploaded file's size (larger uploads get 413).
DEFAULT_MAX_UPLOAD_BYTES = 100 * 1024 * 1024


class FakeHatz:
    """A faithful fake of the Hatz Workflows and App Builder API, served over HTTP.

    Example::

        with FakeHatz(api_key="test-key") as fake:
            seed_default_apps(fake)
            requests.post(
                f"{fake.url}/workflows/run",
                headers={"X-API-Key": "test-key"},
                json={"app_id": TOPIC_BRIEF_ID, "inputs": {"topic": "tides"}},
            )
            assert fake.stats()["by_endpoint"]["run"] == 1

    State (apps, files, jobs, counters) belongs to the object, not the
    server thread, so ``stop()`` followed by ``start()`` simulates a server
    restart that keeps its jobs; it comes back on the same port. Jobs and
    upload metadata (never file contents) are kept until :meth:`reset`.
    """

    def __init__(
        self,
        api_key: str = "test-key",
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = 0,
        *,
        clock: Clock | None = None,
        faults: FaultConfig | None = None,
        call_log_size: int = 10_000,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        tenant_id: str = DEFAULT_TENANT_ID,
        user_id: str = DEFAULT_USER_ID,
    ) -> None:
        """Configure the fake; nothing listens until :meth:`start`.

        Args:
            api_key: the only ``X-API-Key`` accepted.
            host: address to bind; keep it loopback unless you mean otherwise.
            port: TCP port; 0 picks a free one (read it from :attr:`url`).
            seed: seeds fault injection, so a run's faults repeat; None for random.
            clock: time source (epoch seconds), e.g. a :class:`ManualClock`.
            faults: initial global faults (default: none).
            call_log_size: calls kept by :meth:`calls` (a ring buffer; 0 keeps none).
            max_upload_bytes: largest accepted upload.
            tenant_id: ``tenant_id`` reported on jobs.
            user_id: ``user_id`` reported on jobs.
        """
        self._host = host
        self._port = port
        self._state = FakeState(
            api_key=api_key,
            clock=clock or time.time,
            seed=seed,
            call_log_size=call_log_size,
            max_upload_bytes=max_upload_bytes,
            faults=faults or FaultConfig(),
            tenant_id=tenant_id,
            user_id=user_id,
        )
        self._server: FakeHatzServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> FakeHatz:
        """Bind and serve in a background daemon thread; a no-op when already running."""
        if self._server is not None:
            return self
        self._state.stop_event = threading.Event()
        server = FakeHatzServer(self._host, self._port, self._state)
        # Remember the port so a restart after stop() comes back on the same address.
        self._port = server.port
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._state.root_url = f"http://{host}:{server.port}"
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-hatz:{server.port}",
            daemon=True,
        )
        self._server = server
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and disconnect clients; returns promptly even with hung requests."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        # Wake requests sleeping through injected latency or a hang first.
        self._state.stop_event.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._server is not None

    def __enter__(self) -> FakeHatz:
        """Start the server (if not started) for the ``with`` block."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop the server."""
        self.stop()

    # --- addresses ---------------------------------------------------------------

    @property
    def root_url(self) -> str:
        """``http://HOST:PORT``, the server root (admin API under ``/_fake/``)."""
        if not self._state.root_url:
            raise RuntimeError("FakeHatz is not started")
        return self._state.root_url

    @property
    def url(self) -> str:
        """``http://HOST:PORT/v1``, the base URL to give the Hatz client."""
        return f"{self.root_url}/v1"

    @property
    def api_key(self) -> str:
        """The accepted API key."""
        return self._state.api_key

    # --- catalogue and faults ---------------------------------------------------------

    def add_app(self, app: FakeApp) -> FakeApp:
        """Serve ``app`` (replacing an app with the same id) and return it."""
        return self._state.add_app(app)

    def get_app(self, app_id: str) -> FakeApp | None:
        """The app with id ``app_id``, if served."""
        return self._state.get_app(app_id)

    def apps(self) -> list[FakeApp]:
        """Every served app, in the order added."""
        return self._state.list_apps()

    def configure(self, faults: FaultConfig | None = None, *, app_id: str | None = None) -> None:
        """Replace the global faults (``None`` = no faults), or one app's own faults.

        An app's own faults replace the global ones for requests about that app;
        ``configure(None, app_id=...)`` makes the app follow the global ones again.
        """
        if app_id is None:
            self._state.set_faults(faults or FaultConfig())
            return
        app = self._state.get_app(app_id)
        if app is None:
            raise KeyError(f"no app with id {app_id!r}")
        app.faults = faults

    @property
    def faults(self) -> FaultConfig:
        """The current global fault configuration."""
        return self._state.faults

    def set_overage(self, on: bool) -> None:
        """Turn the organisation's credit overage on (submits get the documented 429) or off."""
        self._state.set_overage(on)

    # --- jobs --------------------------------------------------------------------------

    def lose_job(self, job_id: str) -> bool:
        """Make a job answer 404 ``Job not found`` from now on; False if unknown."""
        return self._state.lose_job(job_id)

    def job_status(self, job_id: str) -> dict[str, Any] | None:
        """The job as ``GET /v1/workflows/{job_id}`` would show it now, without counting a poll.

        Returns None for an unknown job; a lost job is still shown.
        """
        job = self._state.get_job(job_id)
        if job is None:
            return None
        state = self._state
        return job.render(state.clock(), tenant_id=state.tenant_id, user_id=state.user_id)

    def upload_info(self, file_uuid: str) -> dict[str, Any] | None:
        """What the fake kept of an upload (name, size, sha256, scope), or None."""
        stored = self._state.get_file(file_uuid)
        return None if stored is None else stored.to_dict()

    # --- stats -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters since the last reset, JSON-ready (the same as ``GET /_fake/stats``).

        Keys: ``since``, ``requests``, ``by_endpoint`` (name -> count),
        ``by_endpoint_status`` (name -> status as a string -> count; status "0"
        is a hang-up), ``faults`` (kind -> count), ``jobs_created``,
        ``files_uploaded`` and ``jobs``: per job created or polled since the
        reset, ``app_id``, ``created_at``, ``first_complete_at`` (when it became
        complete/failed by the clock, or None), ``status``, ``status_polls``, ``lost``.
        """
        return self._state.stats()

    def calls(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """Logged requests, oldest first, optionally for one endpoint.

        Each is ``{"ts", "endpoint", "method", "path", "status", "job_id",
        "app_id", "fault", "inputs"}``; ``fault`` is None, ``"error"``,
        ``"timeout"``, ``"rate_limit"``, ``"overage"`` or ``"error_after_create"``;
        ``inputs`` is set for ``run`` and ``app_query``.
        """
        return self._state.recorder.calls(endpoint)

    def reset_stats(self) -> None:
        """Zero the counters and clear the call log; jobs and apps stay."""
        self._state.recorder.reset()

    def reset(self) -> None:
        """Forget jobs, uploads and counters and restore the initial faults; apps stay."""
        self._state.reset()
