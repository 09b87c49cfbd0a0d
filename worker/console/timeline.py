"""A run's timeline, built from what its record keeps: state stamps, the recent polls,
documents with their expiry, callback attempts, the error.

Nothing here may show a secret: a document shows only its URL's origin (a
presigned URL's signature may sit in its query or path), a callback URL loses
its query string and credentials, and inputs are shown as the
ledger holds them (file inputs are ``file_uuid``\\ s, never file contents).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from worker.ops.redaction import safe_url
from worker.store.ledger import Run
from worker.store.poll_log import read_poll_log


@dataclass(frozen=True)
class Event:
    """One line of the timeline."""

    at: float
    kind: str  # state, poll, document, callback, error
    title: str
    detail: str = ""
    tone: str = ""  # "", "ok", "bad", "warn"


_STATE_TONE = {
    "COMPLETED": "ok",
    "FAILED": "bad",
    "TIMED_OUT": "bad",
    "REJECTED": "bad",
    "AMBIGUOUS": "warn",
    "CANCELED": "warn",
}


def timeline(run: Run) -> list[Event]:
    """Every event the record tells of, oldest first."""
    events = [*_states(run), *_polls(run), *_documents(run), *_callbacks(run)]
    if run.get("error"):
        at = float(run.get("updated_at") or 0)
        events.append(Event(at, "error", "error", str(run["error"]), "bad"))
    return sorted(events, key=lambda e: e.at)


def _states(run: Run) -> list[Event]:
    out = []
    for state, at in run.history():
        detail = ""
        if state == "SUBMITTING" and run.get("submit_attempts"):
            detail = f"{run['submit_attempts']} submit attempt(s)"
        elif state == "SUBMITTED" and run.get("job_id"):
            detail = f"job {run['job_id']}"
        elif state == "UPLOADING":
            detail = ", ".join(sorted((run.get("files") or {}).keys()))
        out.append(Event(at, "state", state, detail, _STATE_TONE.get(state, "")))
    return out


def _polls(run: Run) -> list[Event]:
    out = []
    for poll in read_poll_log(run):
        late = "" if poll.lateness is None else f"{poll.lateness:.3f} s late"
        tone = "warn" if poll.lateness is not None and poll.lateness > 5 else ""
        out.append(Event(poll.at, "poll", f"poll #{poll.number}: {poll.status}", late, tone))
    return out


def _documents(run: Run) -> list[Event]:
    out = []
    at = float(run.get("completed_at") or run.get("updated_at") or 0)
    for step, doc in sorted((run.get("documents") or {}).items()):
        if not isinstance(doc, dict):
            continue
        expires = doc.get("expires_at")
        detail = _origin(str(doc.get("url") or ""))
        if isinstance(expires, int | float):
            detail += f" (expires {fmt_time(float(expires))})"
        out.append(Event(at, "document", f"document of step {step}", detail))
    return out


def _callbacks(run: Run) -> list[Event]:
    out = []
    for attempt in run.get("callback_attempts") or []:
        if not isinstance(attempt, dict):
            continue
        status = attempt.get("status")
        answer = f"HTTP {status}" if status else str(attempt.get("error") or "no answer")
        latency = attempt.get("latency_ms")
        detail = f"{latency:g} ms" if isinstance(latency, int | float) else ""
        tone = "ok" if isinstance(status, int) and 200 <= status < 300 else "bad"
        title = f"callback {attempt.get('event') or ''}: {answer}".replace("  ", " ")
        out.append(Event(float(attempt.get("at") or 0), "callback", title, detail, tone))
    return out


def _origin(url: str) -> str:
    """Where a document lives, without its path or query: a presigned URL may carry its
    signature in either."""
    parts = urlsplit(safe_url(url))
    return f"{parts.scheme}://{parts.netloc}/…" if parts.netloc else ""


def run_details(run: Run) -> list[tuple[str, str]]:
    """The record's fields worth showing beside the timeline, as text (no secrets)."""
    shown = [
        ("state", run.get("state")),
        ("app", run.get("app_id")),
        ("client", run.get("client")),
        ("job id", run.get("job_id")),
        ("Hatz status", run.get("hatz_status")),
        ("steps", _steps(run)),
        ("polls", run.get("poll_count")),
        ("callback", _callback(run)),
        ("batch", run.get("batch_id")),
        ("last error", run.get("last_error")),
    ]
    return [(k, str(v)) for k, v in shown if v not in (None, "", 0)]


def _steps(run: Run) -> str:
    total = run.get("number_of_steps")
    return f"{run.get('steps_done') or 0} / {total}" if total else ""


def _callback(run: Run) -> str:
    url = str(run.get("callback_url") or "")
    if not url:
        return ""
    return f"{safe_url(url)} ({run.get('callback_state') or 'pending'})"


def pretty(value: Any) -> str:
    """JSON for a ``<pre>`` block."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def fmt_time(at: float | str | None) -> str:
    """A UTC timestamp as ``2026-12-06 12:34:56`` ("" for none)."""
    if at in (None, ""):
        return ""
    try:
        return datetime.fromtimestamp(float(at), UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return ""
