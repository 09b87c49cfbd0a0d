"""``hatz-worker demo`` and ``hatz-worker fake-hatz``: the whole system on this machine.

The demo starts a private ``redis-server``, the fake Hatz API (in this
process), a callback receiver that verifies Standard Webhooks signatures, and
a real ``celery worker`` subprocess; then enqueues a few runs the way an
application would (:func:`worker.enqueue_run`), shows their progress and the
callbacks as they arrive, downloads a document through its presigned URL, and
checks that every run ended as expected. Everything it started is stopped on
exit. ``fake-hatz`` serves the fake Hatz API alone, for local development.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import click
import urllib3
from celery import Celery
from pydantic import SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from redis import RedisError

from config import Settings
from worker.api.runs import enqueue_run
from worker.cli.output import ProgressDrawer, clip, safe_url, table
from worker.cli.runs import steps_text
from worker.cli.runtime import EXIT_INTERRUPTED, EXIT_USAGE
from worker.context import Context
from worker.errors import HatzError
from worker.hatz.types import App
from worker.local.stack import CallbackReceiver, CeleryProcess, LocalRedis
from worker.store.ledger import Run, RunState
from worker.taskqueue.app import create_app
from worker.webhooks.delivery import EVENT_TYPES

#: Give up waiting for the runs (and their callbacks) after this long, s.
RUNS_DEADLINE = 60.0
CALLBACKS_GRACE = 15.0
REFRESH = 0.5

REPORT_APP = "Report Summarizer"
TOPIC_APP = "Topic Brief"
FAILING_APP = "Always Fails"

SAMPLE_CSV = """quarter,region,revenue,costs
2024-Q1,North,120000,80000
2024-Q1,South,95000,70000
2024-Q2,North,135000,82000
2024-Q2,South,101000,69000
"""

_SAMPLE_VALUES = {
    "topic": "",  # filled per run
    "audience": "engineering managers",
    "tone": "friendly",
    "style": "executive",
    "length": "short",
    "language": "English",
}


class DemoSettings(Settings):
    """Settings from explicit values only: no environment variables, no ``.env``."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values passed to the constructor."""
        return (init_settings,)


def settings_as_env_values(settings: Settings) -> dict[str, str]:
    """Every field of ``settings`` as the string its ``HATZ_*`` variable would hold.

    Passing every field (not just the overridden ones) keeps the worker subprocess
    from picking up anything else from the shell or a ``.env`` file.
    """
    values: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            values[name] = value.get_secret_value()
        elif isinstance(value, list):
            values[name] = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            values[name] = "true" if value else "false"
        else:
            values[name] = str(value)
    return values


# --- callbacks as received -------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedCallback:
    """One delivery the receiver recorded, read as the event it carries."""

    verified: bool
    problem: str
    event: dict[str, Any]

    @classmethod
    def of(cls, delivery: Mapping[str, object]) -> ReceivedCallback:
        """The callback in one :class:`CallbackReceiver` record (made with a secret)."""
        body = delivery.get("body")
        try:
            event = json.loads(body) if isinstance(body, bytes) else {}
        except ValueError:
            event = {}
        event = event if isinstance(event, dict) else {}
        return cls(bool(delivery.get("verified")), str(delivery.get("problem") or ""), event)

    @property
    def type(self) -> str:
        """The event type, e.g. ``workflow_run.completed``."""
        return str(self.event.get("type", "?"))

    @property
    def run_id(self) -> str:
        """``data.run_id`` of the event."""
        data = self.event.get("data")
        return str(data.get("run_id", "")) if isinstance(data, dict) else ""

    @property
    def status(self) -> str:
        """``data.status`` of the event."""
        data = self.event.get("data")
        return str(data.get("status", "")) if isinstance(data, dict) else ""


def received(receiver: CallbackReceiver) -> list[ReceivedCallback]:
    """Every callback ``receiver`` got so far, in order."""
    return [ReceivedCallback.of(d) for d in receiver.snapshot()]


# --- the runs ---------------------------------------------------------------------------


@dataclass
class DemoRun:
    """One run the demo enqueues, and what it should end as."""

    label: str
    app: App
    expected: RunState
    inputs: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    run_id: str = ""
    record: Run | None = None
    last_seen: tuple[str, str] = ("", "")

    @property
    def state(self) -> str:
        """The last state seen."""
        return self.record.state.value if self.record is not None else "-"


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def find_app(apps: list[App], name: str) -> App:
    """The app called ``name`` (case and punctuation ignored)."""
    for app in apps:
        if _norm(app.name) == _norm(name):
            return app
    known = ", ".join(sorted(a.name for a in apps)) or "none"
    raise LookupError(f"the fake Hatz server has no app named {name!r} (it has: {known})")


def inputs_for(app: App, csv_path: str, topic: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Plausible values for every input of ``app``: the CSV for file inputs, text otherwise."""
    inputs: dict[str, Any] = {}
    files: dict[str, str] = {}
    for ui in app.user_inputs:
        if ui.is_file:
            files[ui.variable_name] = csv_path
            continue
        lower = ui.variable_name.lower()
        sample = next((v for k, v in _SAMPLE_VALUES.items() if k in lower), "")
        inputs[ui.variable_name] = sample or topic or f"demo value for {ui.variable_name}"
    return inputs, files


def bad_inputs(app: App, inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` without one required input (or with an unknown one if none is required)."""
    required = [ui.variable_name for ui in app.user_inputs if ui.required and not ui.is_file]
    if required:
        return {k: v for k, v in inputs.items() if k != required[0]}
    return {**inputs, "not_an_input_of_this_app": "oops"}


def plan_runs(apps: list[App], csv_path: str) -> list[DemoRun]:
    """The demo's runs: a report with a file, two topic briefs, a failure, a bad request."""
    report, topic, failing = (find_app(apps, n) for n in (REPORT_APP, TOPIC_APP, FAILING_APP))
    runs: list[DemoRun] = []
    inputs, files = inputs_for(report, csv_path, "Quarterly revenue by region")
    runs.append(DemoRun("report + file", report, RunState.COMPLETED, inputs, files))
    for i, subject in enumerate(("Solar power in 2030", "Urban beekeeping"), start=1):
        inputs, files = inputs_for(topic, csv_path, subject)
        runs.append(DemoRun(f"topic brief #{i}", topic, RunState.COMPLETED, inputs, files))
    inputs, files = inputs_for(failing, csv_path, "A doomed request")
    runs.append(DemoRun("always fails", failing, RunState.FAILED, inputs, files))
    inputs, files = inputs_for(topic, csv_path, "Missing input")
    runs.append(DemoRun("bad input", topic, RunState.REJECTED, bad_inputs(topic, inputs), files))
    return runs


def _elapsed(run: Run) -> str:
    start = float(run.get("created_at") or time.time())
    end = float(run.get("updated_at") or time.time()) if run.state.is_terminal else time.time()
    return f"{max(0.0, end - start):.1f}s"


def runs_table(runs: list[DemoRun]) -> list[str]:
    """The live table: one row per run."""
    header = ("RUN", "RUN_ID", "STATE", "STEPS", "POLLS", "ELAPSED", "CALLBACK")
    rows = []
    for r in runs:
        rec = r.record
        rows.append(
            (
                r.label,
                r.run_id[:8],
                r.state,
                steps_text(rec) if rec else "-",
                str(int(rec.get("poll_count") or 0)) if rec else "-",
                _elapsed(rec) if rec else "-",
                str(rec.get("callback_state") or "-") if rec else "-",
            )
        )
    return table(header, rows)


def download(url: str) -> bytes:
    """GET ``url`` (a presigned document link) and return the body; raises on an error status."""
    # No retries and no redirects: a presigned link answers directly or not at all.
    timeout = urllib3.Timeout(connect=5, read=15)
    with urllib3.PoolManager(timeout=timeout, retries=False) as http:
        response = http.request("GET", url)
    if response.status >= 400:
        raise urllib3.exceptions.HTTPError(f"HTTP {response.status}")
    return response.data


def _callback_done(run: DemoRun) -> bool:
    rec = run.record
    return rec is not None and rec.get("callback_state") in ("delivered", "failed")


class Demo:
    """One demo session; :meth:`run` returns the exit code, :meth:`close` cleans up."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        # Not on a terminal, the demo prints its own line per change (see _refresh).
        self.drawer = ProgressDrawer(out, plain=False)
        self.started = time.monotonic()
        self.cleanups: list[tuple[str, Callable[[], object]]] = []
        self.worker: CeleryProcess | None = None
        self.failed = False

    def say(self, text: str = "") -> None:
        """Print a line."""
        self.drawer.say(text)

    # --- setup ------------------------------------------------------------------

    def _start_stack(self, tmp: Path) -> tuple[Context, Celery, CallbackReceiver]:
        from worker.fake_hatz import FakeHatz, seed_default_apps

        redis_server = LocalRedis().start()
        self.cleanups.append(("redis", redis_server.close))
        self.say(f"  redis-server       {redis_server.url}")

        api_key = "demo-" + base64.urlsafe_b64encode(os.urandom(18)).decode()
        fake = FakeHatz(api_key=api_key, port=0, seed=None)
        seed_default_apps(fake)
        fake.start()
        self.cleanups.append(("fake Hatz", fake.stop))
        self.say(f"  fake Hatz API      {fake.url}")

        secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
        receiver = CallbackReceiver(secret=secret, path="/hatz/callbacks").start()
        self.cleanups.append(("callback receiver", receiver.stop))
        self.say(f"  callback receiver  {receiver.url}")

        settings = DemoSettings(
            api_key=api_key,
            base_url=fake.url,
            redis_url=redis_server.url,
            webhook_secret=secret,
            callback_allow_private=True,
            poll_initial_delay=1,
            poll_interval=1,
            poll_max_interval=3,
            app_cache_ttl=5,
            file_roots=[str(tmp)],  # the demo's sample file lives there
        )
        self.worker = CeleryProcess(
            settings_as_env_values(settings),
            args=["--concurrency", "4", "--without-gossip", "--without-mingle"],
        )
        self.worker.start()
        self.cleanups.append(("celery worker", self._stop_worker))
        pid = self.worker.process.pid if self.worker.process is not None else "?"
        self.say(f"  celery worker      pid {pid}, log {self.worker.log_path}")

        ctx = Context.from_settings(settings)
        self.cleanups.append(("ledger connection", ctx.redis.close))
        self.cleanups.append(("Hatz client", ctx.client.close))
        celery_app = create_app(settings)
        self.cleanups.append(("celery app", celery_app.close))
        (tmp / "sales.csv").write_text(SAMPLE_CSV)
        return ctx, celery_app, receiver

    def _stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop(timeout=10)

    # --- main flow ----------------------------------------------------------------

    def run(self, tmp: Path) -> int:
        """Start everything, run the demo, return 0 when every run ended as expected."""
        self.say("hatz-worker demo: everything runs locally; nothing needs configuring.")
        self.say("Starting:")
        ctx, celery_app, receiver = self._start_stack(tmp)
        assert self.worker is not None
        self.worker.wait_ready(timeout=45)
        self.say(f"Worker ready after {time.monotonic() - self.started:.1f}s.\n")

        apps = list(ctx.client.iter_apps())
        runs = plan_runs(apps, str(tmp / "sales.csv"))
        for r in runs:
            r.run_id = enqueue_run(
                r.app.id,
                r.inputs,
                files=r.files,
                callback_url=receiver.url,
                metadata={"demo": r.label},
                context=ctx,
                celery=celery_app,
            )
            extra = f" with file {Path(next(iter(r.files.values()))).name}" if r.files else ""
            self.say(f"enqueued {r.label:<14} {r.app.name}{extra} -> run {r.run_id[:8]}")
        self.say()

        self._follow(ctx, runs, receiver)
        ok_runs = self._report_runs(runs)
        ok_callbacks = self._report_callbacks(runs, receiver)
        ok_document = self._download_document(runs[0])
        ok = ok_runs and ok_callbacks and ok_document
        took = time.monotonic() - self.started
        self.say()
        if ok:
            self.say(f"Demo OK in {took:.1f}s: every run ended as expected.")
            self.say("Next: `hatz-worker --help`, or see the README to point it at the real API.")
            return 0
        self.failed = True
        self.say(f"Demo FAILED after {took:.1f}s (see above).")
        return 1

    def _refresh(self, ctx: Context, runs: list[DemoRun]) -> None:
        for r in runs:
            r.record = ctx.ledger.get(r.run_id)
            if self.drawer.tty or r.record is None:
                continue
            seen = (r.state, steps_text(r.record))
            if seen != r.last_seen:
                r.last_seen = seen
                self.say(
                    f"[{time.monotonic() - self.started:5.1f}s] {r.label:<14} {r.run_id[:8]}  "
                    f"{r.state:<10} steps {steps_text(r.record)}"
                )
        self.drawer.show(runs_table(runs))

    def _follow(self, ctx: Context, runs: list[DemoRun], receiver: CallbackReceiver) -> None:
        shown = 0
        deadline = time.monotonic() + RUNS_DEADLINE
        callbacks_deadline: float | None = None
        while True:
            self._refresh(ctx, runs)
            callbacks = received(receiver)
            for cb in callbacks[shown:]:
                mark = (
                    "signature verified ✓" if cb.verified else f"signature INVALID ✗ {cb.problem}"
                )
                self.say(f"callback: {cb.type:<24} run {cb.run_id[:8]}  {cb.status:<10} {mark}")
            shown = len(callbacks)
            now = time.monotonic()
            if all(r.record is not None and r.record.state.is_terminal for r in runs):
                if all(_callback_done(r) for r in runs):
                    break
                callbacks_deadline = callbacks_deadline or now + CALLBACKS_GRACE
                if now >= callbacks_deadline:
                    self.say("gave up waiting for callbacks")
                    break
            elif now >= deadline:
                self.say(f"gave up after {RUNS_DEADLINE:.0f}s: some runs are still running")
                break
            time.sleep(REFRESH)
        self.drawer.finish()
        if not self.drawer.tty:
            self.say()
            for line in runs_table(runs):
                self.say(line)

    # --- checks ---------------------------------------------------------------------

    def _report_runs(self, runs: list[DemoRun]) -> bool:
        self.say()
        self.say("Runs:")
        ok = True
        for r in runs:
            good = r.record is not None and r.state == r.expected.value
            ok = ok and good
            note = ""
            if r.record is not None and r.record.get("error"):
                error = " ".join(str(r.record["error"]).split())
                note = f"  ({error[:100]}…)" if len(error) > 100 else f"  ({error})"
            mark = "✓" if good else f"✗ expected {r.expected.value}"
            self.say(f"  {r.label:<14} {r.state:<10} {mark}{note}")
        return ok

    def _report_callbacks(self, runs: list[DemoRun], receiver: CallbackReceiver) -> bool:
        callbacks = received(receiver)
        ok = True
        for r in runs:
            want = EVENT_TYPES[r.expected]
            got = [c for c in callbacks if c.run_id == r.run_id]
            if not any(c.verified and c.type == want for c in got):
                ok = False
                self.say(f"  no verified {want} callback for {r.label} (got {len(got)})")
        verified = sum(1 for c in callbacks if c.verified)
        mark = "✓" if ok else "✗"
        self.say(f"Callbacks: {len(callbacks)} received, {verified} with a valid signature {mark}")
        return ok

    def _download_document(self, run: DemoRun) -> bool:
        docs: Mapping[str, Any] = (run.record.get("documents") if run.record else None) or {}
        if not docs:
            self.say(f"Document: none for {run.label} ✗")
            return False
        step_id, doc = sorted(docs.items())[0]
        url = str(doc.get("url") or "")
        try:
            content = download(url)
        except urllib3.exceptions.HTTPError as exc:
            # The type only: an exception's text may hold the presigned query.
            self.say(f"Document: download of {safe_url(url)} failed: {type(exc).__name__} ✗")
            return False
        first = content.split(b"\n", 1)[0][:60].decode("utf-8", errors="replace").strip()
        shown = clip(safe_url(url), 70)
        self.say(f"Document of step {step_id[:8]}: {shown} (presigned URL, query hidden)")
        self.say(f"  downloaded {len(content)} bytes; first line: {first!r} ✓")
        return True

    # --- cleanup -------------------------------------------------------------------

    def close(self) -> None:
        """Stop everything started, newest first; never raises."""
        for name, stop in reversed(self.cleanups):
            try:
                stop()
            except Exception as exc:
                print(f"demo: could not stop {name}: {exc}", file=sys.stderr)
        self.cleanups.clear()
        if self.worker is None:
            return
        if self.failed:
            print(f"worker log kept at {self.worker.log_path}", file=sys.stderr)
        else:
            with contextlib.suppress(OSError):
                Path(self.worker.log_path).unlink()


def run_demo(out: TextIO | None = None) -> int:
    """Run the demo; 0 when every run ended in its expected state, else 1 (130 on Ctrl-C)."""
    stream = out or sys.stdout
    tmp = Path(tempfile.mkdtemp(prefix="hatz-demo-"))
    demo = Demo(stream)
    try:
        return demo.run(tmp)
    except KeyboardInterrupt:
        demo.drawer.finish()
        print("\ninterrupted; cleaning up", file=sys.stderr)
        demo.failed = False
        return EXIT_INTERRUPTED
    except (RuntimeError, TimeoutError, LookupError, OSError, HatzError, RedisError) as exc:
        demo.drawer.finish()
        demo.failed = True
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    except BaseException:
        demo.failed = True
        raise
    finally:
        demo.close()
        shutil.rmtree(tmp, ignore_errors=True)


# --- commands -------------------------------------------------------------------------


@click.command(
    "demo",
    short_help="run a self-contained end-to-end demo (no setup needed)",
    help="Start Redis, the fake Hatz API and a worker; run a few workflows.",
)
def demo_command() -> int:
    """``demo``: :func:`run_demo`."""
    return run_demo()


@click.command(
    "fake-hatz",
    short_help="serve the fake Hatz API (for local development)",
    help="Serve the fake Hatz API; options are passed to the fake server.",
    # Every option, --help included, belongs to the fake server's own parser.
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def fake_hatz_command(args: tuple[str, ...]) -> int:
    """``fake-hatz``: delegate to the fake server's ``serve(argv)``."""
    from worker.fake_hatz import serve

    try:
        return serve(list(args))
    except SystemExit as exc:  # its own --help or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


COMMANDS = (fake_hatz_command, demo_command)
