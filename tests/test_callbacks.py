"""Callback delivery called directly: fakeredis ledger, a real loopback HTTP receiver."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import standardwebhooks

from tests.conftest import make_settings
from worker import task_names
from worker.cli.main import main
from worker.context import Context
from worker.errors import CallbackReplayError, UnsafeCallbackURLError
from worker.retry_after import parse_retry_after
from worker.runs.cancel import cancel
from worker.runs.finish import finish
from worker.store.ledger import ACTIVE_STATES, RunState
from worker.store.outbox import Next
from worker.taskqueue.app import create_app
from worker.webhooks import events
from worker.webhooks.delivery import (
    deliver_step,
    failed_callbacks,
    index_dead_letter,
    replay_callback,
    send_test,
)
from worker.webhooks.transport import MAX_BODY_READ

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
DOC_URL = "https://bucket.example.com/j1/doc.pdf?X-Amz-Signature=presignedsecret"


class Clock:
    def __init__(self) -> None:
        self.now = 1_764_000_000.0

    def __call__(self) -> float:
        return self.now


class Receiver:
    """A loopback HTTP server answering from a script of (status, headers, body)."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str], bytes]] = []
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, headers, answer = (
                    receiver.script.pop(0) if receiver.script else (200, {}, b"ok")
                )
                receiver.requests.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                        "status": status,
                    }
                )
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=hooksecret"

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def ctx(context_factory: Callable[..., Context]) -> Context:
    settings = make_settings(
        webhook_secret=SECRET,
        callback_retry_delays="0,0.05,0.1",
        callback_timeout=2.0,
        callback_connect_timeout=1.0,
        poll_jitter=0.0,
    )
    context = context_factory(settings)
    context.clock = Clock()
    context.ledger.clock = context.clock
    return context


def ended_run(
    ctx: Context,
    url: str,
    state: RunState = RunState.COMPLETED,
    *,
    events_filter: list[str] | None = None,
    running: bool = False,
) -> tuple[str, list[Next]]:
    """A run that just ended; returns its id and the steps ``finish`` queued."""
    run_id, _ = ctx.ledger.create(
        {
            "app_id": "app-1",
            "callback_url": url,
            "metadata": {"order": 7},
            "events": events_filter,
        }
    )
    ctx.ledger.cas(run_id, states=ACTIVE_STATES, to=RunState.SUBMITTED, fields={"job_id": "job-1"})
    if running:
        ctx.ledger.cas(run_id, states=ACTIVE_STATES, to=RunState.RUNNING)
    fields = {
        "step_outputs": [
            {
                "step_id": "s1",
                "step_type": "prompt",
                "status": "complete",
                "output_type": "dump",
                "output_data": "hello",
                "duration": 1200,
            },
            {
                "step_id": "s2",
                "step_type": "document",
                "status": "complete",
                "output_type": "document",
                "output_data": None,
                "duration": 3400,
            },
        ],
        "documents": {"s2": {"url": DOC_URL, "expires_at": ctx.clock() + 3600}},
    }
    error = "step s1 failed" if state is RunState.FAILED else ""
    steps = finish(ctx, run_id, None, state, error=error, fields=fields)
    return run_id, steps


def run_chain(ctx: Context, steps: list[Next], limit: int = 10) -> list[Next]:
    """Run delivery steps like a worker would, until none is left; return every step run."""
    done: list[Next] = []
    queue = list(steps)
    while queue and len(done) < limit:
        step = queue.pop(0)
        assert step.task == task_names.DELIVER_CALLBACK
        done.append(step)
        queue += deliver_step(ctx, *step.args)
    return done


# --- payload --------------------------------------------------------------------------


def test_completed_event_has_the_documented_shape(ctx: Context, receiver: Receiver) -> None:
    run_id, steps = ended_run(ctx, receiver.url)

    run_chain(ctx, steps)

    (payload,) = receiver.payloads()
    assert set(payload) == {"type", "timestamp", "sequence", "data"}
    assert payload["type"] == "workflow_run.completed"
    assert datetime.fromisoformat(payload["timestamp"]).timestamp() == ctx.clock()
    assert payload["sequence"] == 1
    data = payload["data"]
    assert set(data) == {
        "run_id",
        "job_id",
        "app_id",
        "status",
        "metadata",
        "error",
        "step_outputs",
    }
    assert (data["run_id"], data["job_id"], data["app_id"]) == (run_id, "job-1", "app-1")
    assert (data["status"], data["metadata"], data["error"]) == ("completed", {"order": 7}, None)
    first, second = data["step_outputs"]
    assert set(first) == {
        "step_id",
        "step_type",
        "status",
        "output_type",
        "output_data",
        "duration",
        "document",
    }
    assert first["document"] is None
    assert second["document"] == {"url": DOC_URL, "expires_at": ctx.clock() + 3600}


def test_failed_event_carries_the_error(ctx: Context, receiver: Receiver) -> None:
    _, steps = ended_run(ctx, receiver.url, RunState.FAILED)

    run_chain(ctx, steps)

    (payload,) = receiver.payloads()
    assert payload["type"] == "workflow_run.failed"
    assert payload["data"]["status"] == "failed"
    assert payload["data"]["error"] == "step s1 failed"


def test_delivery_is_signed_and_verifies_with_the_library(ctx: Context, receiver: Receiver) -> None:
    run_id, steps = ended_run(ctx, receiver.url)

    run_chain(ctx, steps)

    (request,) = receiver.requests
    standardwebhooks.Webhook(SECRET).verify(request["body"], request["headers"])
    assert request["headers"]["webhook-id"] == f"msg_{run_id}_completed"
    assert request["headers"]["content-type"] == "application/json"
    assert request["path"] == "/hook?token=hooksecret"


# --- exactly once in effect --------------------------------------------------------------


def test_a_duplicated_delivery_task_sends_nothing(ctx: Context, receiver: Receiver) -> None:
    _, steps = ended_run(ctx, receiver.url)

    run_chain(ctx, steps + steps + steps)

    assert len(receiver.requests) == 1


def test_delivered_callback_leaves_the_schedule(ctx: Context, receiver: Receiver) -> None:
    run_id, steps = ended_run(ctx, receiver.url)

    run_chain(ctx, steps)

    run = ctx.ledger.require(run_id)
    assert run["callback_state"] == "delivered"
    assert run["callback_seq"] == 1
    assert ctx.redis.zscore(ctx.keys.schedule, run_id) is None


# --- retries ------------------------------------------------------------------------------


def test_5xx_then_success_retries_with_the_same_webhook_id(
    ctx: Context, receiver: Receiver
) -> None:
    receiver.script = [(503, {}, b"down"), (502, {}, b"still down")]
    run_id, steps = ended_run(ctx, receiver.url)

    chain = run_chain(ctx, steps)

    assert [r["status"] for r in receiver.requests] == [503, 502, 200]
    assert [s.countdown for s in chain] == [0.0, 0.05, 0.1]
    assert len({r["headers"]["webhook-id"] for r in receiver.requests}) == 1
    run = ctx.ledger.require(run_id)
    assert run["callback_state"] == "delivered"
    statuses = [a["status"] for a in run["callback_attempts"]]
    assert statuses == [503, 502, 200]
    assert all("latency_ms" in a and "at" in a for a in run["callback_attempts"])
    assert run["callback_attempts"][0]["body"] == "down"


def test_retryable_4xx_are_retried_and_exhausted_retries_dead_letter(
    ctx: Context, receiver: Receiver
) -> None:
    receiver.script = [(429, {}, b""), (408, {}, b""), (425, {}, b""), (409, {}, b"")]
    run_id, steps = ended_run(ctx, receiver.url)

    run_chain(ctx, steps)

    assert [r["status"] for r in receiver.requests] == [429, 408, 425]
    run = ctx.ledger.require(run_id)
    assert run["callback_state"] == "failed"
    assert run["callback_error"] == "HTTP 425 after 3 attempt(s)"
    assert ctx.redis.zscore(ctx.keys.failed_callbacks, run_id) is not None


def test_response_bodies_are_truncated(ctx: Context, receiver: Receiver) -> None:
    receiver.script = [(500, {}, b"x" * (MAX_BODY_READ * 4))]
    run_id, steps = ended_run(ctx, receiver.url)

    run_chain(ctx, steps, limit=1)

    (attempt,) = ctx.ledger.require(run_id)["callback_attempts"]
    assert attempt["body"] == "x" * 200


def test_connection_refused_is_retried(ctx: Context) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    run_id, steps = ended_run(ctx, f"http://127.0.0.1:{port}/hook")

    follow = deliver_step(ctx, *steps[0].args)

    assert follow == [Next(task_names.DELIVER_CALLBACK, (run_id, 1), 0.05)]
    (attempt,) = ctx.ledger.require(run_id)["callback_attempts"]
    assert attempt["error"].startswith("connect:")


def test_retry_after_seconds_is_honoured(ctx: Context, receiver: Receiver) -> None:
    receiver.script = [(503, {"Retry-After": "7"}, b"")]
    _, steps = ended_run(ctx, receiver.url)

    (retry,) = deliver_step(ctx, *steps[0].args)

    assert retry.countdown == 7.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [("12", 12.0), ("0", 0.0), ("-3", 0.0), ("soon", None), (None, None)],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, 1000.0) == expected


def test_parse_retry_after_http_date() -> None:
    now = 1_764_000_000.0
    when = format_datetime(datetime.fromtimestamp(now + 90).astimezone(), usegmt=False)

    assert parse_retry_after(when, now) == pytest.approx(90.0)


def test_long_retry_waits_in_the_schedule_not_as_a_countdown(
    context_factory: Callable[..., Context], receiver: Receiver
) -> None:
    ctx = context_factory(make_settings(callback_retry_delays="0,7200", poll_jitter=0.0))
    receiver.script = [(503, {}, b"")]
    run_id, steps = ended_run(ctx, receiver.url)

    assert deliver_step(ctx, *steps[0].args) == []

    due = ctx.redis.zscore(ctx.keys.schedule, run_id)
    assert due is not None
    assert due >= ctx.clock() + 7200 - 1
    assert ctx.ledger.require(run_id)["callback_state"] == "retrying"


def test_redirects_are_not_followed(ctx: Context, receiver: Receiver) -> None:
    target = Receiver()
    try:
        receiver.script = [(302, {"Location": target.url}, b"")]
        run_id, steps = ended_run(ctx, receiver.url)

        run_chain(ctx, steps)

        assert target.requests == []
        assert ctx.ledger.require(run_id)["callback_state"] == "failed"
    finally:
        target.close()


def test_a_receiver_that_trickles_bytes_hits_the_total_deadline(
    context_factory: Callable[..., Context],
) -> None:
    # A receiver that sends one byte of its status line every 50 ms, for ever:
    # each recv succeeds quickly, so only a total deadline ends the attempt.
    ctx = context_factory(make_settings(callback_timeout=0.4, callback_connect_timeout=0.2))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            while not stop.wait(0.05):
                try:
                    conn.sendall(b"H")
                except OSError:
                    return

    threading.Thread(target=trickle, daemon=True).start()
    try:
        run_id, steps = ended_run(ctx, f"http://127.0.0.1:{server.getsockname()[1]}/hook")
        deliver_step(ctx, *steps[0].args)
    finally:
        stop.set()
        server.close()

    (attempt,) = ctx.ledger.require(run_id)["callback_attempts"]
    assert attempt["error"].startswith("timeout:")


# --- dead letter and replay ------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
def test_other_4xx_dead_letter_at_once(ctx: Context, receiver: Receiver, status: int) -> None:
    receiver.script = [(status, {}, b"no")]
    run_id, steps = ended_run(ctx, receiver.url)

    run_chain(ctx, steps)

    assert len(receiver.requests) == 1
    (failed,) = failed_callbacks(ctx)
    assert failed.run_id == run_id
    assert failed.error == f"HTTP {status} after 1 attempt(s)"
    assert failed.event == "workflow_run.completed"
    assert failed.webhook_id == f"msg_{run_id}_completed"
    assert "hooksecret" not in json.dumps(failed.as_dict())
    assert ctx.redis.zscore(ctx.keys.schedule, run_id) is None
    assert ctx.ledger.require(run_id).state is RunState.COMPLETED


def test_a_crash_right_after_the_dead_letter_write_still_leaves_it_listed(
    ctx: Context, receiver: Receiver
) -> None:
    receiver.script = [(410, {}, b"gone")]
    run_id, steps = ended_run(ctx, receiver.url)
    real = ctx.redis.evalsha

    def dies_after_writing(*args: Any) -> Any:
        result = real(*args)
        if ctx.redis.hget(ctx.keys.run(run_id), "callback_state") == "failed":
            raise SystemExit("worker killed")  # the write landed; nothing after it runs
        return result

    ctx.redis.evalsha = dies_after_writing  # type: ignore[method-assign,assignment]
    with pytest.raises(SystemExit):
        run_chain(ctx, steps)
    ctx.redis.evalsha = real  # type: ignore[method-assign]

    assert [f.run_id for f in failed_callbacks(ctx)] == [run_id]


def test_a_listed_run_whose_dead_lettering_did_not_complete_is_not_shown(
    ctx: Context, receiver: Receiver
) -> None:
    run_id, steps = ended_run(ctx, receiver.url)
    index_dead_letter(ctx, run_id)  # ... and the worker died before the record said so

    assert failed_callbacks(ctx) == []
    run_chain(ctx, steps)  # the sweeper's re-send delivers it
    assert ctx.redis.zscore(ctx.keys.failed_callbacks, run_id) is None


def _running_run(ctx: Context, url: str, events_filter: list[str] | None) -> str:
    run_id, _ = ctx.ledger.create({"app_id": "app-1", "callback_url": url, "events": events_filter})
    ctx.ledger.cas(run_id, states=ACTIVE_STATES, to=RunState.RUNNING, fields={"job_id": "job-1"})
    return run_id


def test_a_canceled_run_sends_workflow_run_canceled_when_it_asked_for_it(
    ctx: Context, receiver: Receiver
) -> None:
    run_id = _running_run(ctx, receiver.url, [events.COMPLETED, events.CANCELED])

    ok, steps = cancel(ctx, run_id)
    run_chain(ctx, steps)

    assert ok
    (request,) = receiver.requests
    body = json.loads(request["body"])
    assert body["type"] == events.CANCELED
    assert body["data"]["run_id"] == run_id
    assert request["headers"]["webhook-id"] == f"msg_{run_id}_canceled"
    standardwebhooks.Webhook(SECRET).verify(request["body"], request["headers"])
    assert ctx.ledger.require(run_id)["callback_state"] == "delivered"


def test_a_canceled_run_sends_nothing_by_default(ctx: Context, receiver: Receiver) -> None:
    run_id = _running_run(ctx, receiver.url, None)

    ok, steps = cancel(ctx, run_id)

    assert ok
    assert steps == []
    assert ctx.ledger.require(run_id).state is RunState.CANCELED
    assert cancel(ctx, run_id) == (False, [])  # already ended


def test_replay_resends_with_the_same_webhook_id_and_clears_the_failure(
    ctx: Context, receiver: Receiver
) -> None:
    receiver.script = [(410, {}, b"gone")]
    run_id, steps = ended_run(ctx, receiver.url)
    run_chain(ctx, steps)

    run_chain(ctx, replay_callback(ctx, run_id))

    first, second = receiver.requests
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    assert first["body"] == second["body"]
    standardwebhooks.Webhook(SECRET).verify(second["body"], second["headers"])
    assert failed_callbacks(ctx) == []
    assert ctx.ledger.require(run_id)["callback_state"] == "delivered"


def test_replay_of_a_delivered_callback_is_refused(ctx: Context, receiver: Receiver) -> None:
    run_id, steps = ended_run(ctx, receiver.url)
    run_chain(ctx, steps)

    with pytest.raises(CallbackReplayError, match="delivered"):
        replay_callback(ctx, run_id)


def test_a_stale_task_after_a_replay_sends_nothing(ctx: Context, receiver: Receiver) -> None:
    receiver.script = [(400, {}, b"")]
    run_id, steps = ended_run(ctx, receiver.url)
    run_chain(ctx, steps)
    replay = replay_callback(ctx, run_id)

    run_chain(ctx, steps + replay + replay)

    assert len(receiver.requests) == 2


def test_guard_refusal_at_delivery_dead_letters_without_sending(
    context_factory: Callable[..., Context],
) -> None:
    ctx = context_factory(make_settings(callback_allow_private=True))
    run_id, steps = ended_run(ctx, "http://hooks.example.com/x")
    guarded = context_factory(make_settings(callback_allow_private=False))

    follow = deliver_step(guarded, *steps[0].args, resolver=lambda h, p: ["169.254.169.254"])

    assert follow == []
    run = guarded.ledger.require(run_id)
    assert run["callback_state"] == "failed"
    assert "refused by the SSRF guard" in run["callback_error"]
    assert "link-local" in run["callback_error"]


# --- event filter and ordering --------------------------------------------------------------


def test_default_filter_sends_terminal_events_only(ctx: Context, receiver: Receiver) -> None:
    _, steps = ended_run(ctx, receiver.url, running=True)

    run_chain(ctx, steps)

    assert [p["type"] for p in receiver.payloads()] == ["workflow_run.completed"]


def test_filtered_out_end_queues_no_delivery(ctx: Context, receiver: Receiver) -> None:
    run_id, steps = ended_run(ctx, receiver.url, events_filter=[events.FAILED])

    assert steps == []
    assert ctx.ledger.require(run_id).get("callback_state") is None


def test_only_failures_filter_still_sends_failures(ctx: Context, receiver: Receiver) -> None:
    _, steps = ended_run(ctx, receiver.url, RunState.FAILED, events_filter=[events.FAILED])

    run_chain(ctx, steps)

    assert [p["type"] for p in receiver.payloads()] == ["workflow_run.failed"]


def test_started_then_completed_arrive_in_sequence_with_distinct_ids(
    ctx: Context, receiver: Receiver
) -> None:
    # Given a run that asked for started events and is seen running
    run_id, _ = ctx.ledger.create(
        {
            "app_id": "app-1",
            "callback_url": receiver.url,
            "events": [events.STARTED, events.COMPLETED],
        }
    )
    ctx.ledger.cas(run_id, states=ACTIVE_STATES, to=RunState.RUNNING, fields={"job_id": "job-1"})
    started = [Next(task_names.DELIVER_CALLBACK, (run_id, 0))]
    # When the started delivery is queued, the run ends before it runs, and both go
    ended = finish(ctx, run_id, None, RunState.COMPLETED, states=ACTIVE_STATES)
    run_chain(ctx, started + ended)

    # Then each event arrives once, in order, with rising sequence numbers
    payloads = receiver.payloads()
    assert [p["type"] for p in payloads] == ["workflow_run.started", "workflow_run.completed"]
    assert [p["sequence"] for p in payloads] == [1, 2]
    assert payloads[0]["data"]["status"] == "running"
    ids = [r["headers"]["webhook-id"] for r in receiver.requests]
    assert ids == [f"msg_{run_id}_started", f"msg_{run_id}_completed"]
    assert ctx.ledger.require(run_id)["callback_state"] == "delivered"


def test_started_event_is_delivered_while_the_run_is_still_running(
    ctx: Context, receiver: Receiver
) -> None:
    run_id, _ = ctx.ledger.create(
        {"app_id": "app-1", "callback_url": receiver.url, "events": [events.STARTED]}
    )
    ctx.ledger.cas(run_id, states=ACTIVE_STATES, to=RunState.RUNNING, next_at=ctx.clock() + 5)

    run_chain(ctx, [Next(task_names.DELIVER_CALLBACK, (run_id, 0))])

    assert [p["type"] for p in receiver.payloads()] == ["workflow_run.started"]
    run = ctx.ledger.require(run_id)
    assert run.state is RunState.RUNNING
    assert run["callback_state"] == "delivered"
    # the poll chain's schedule entry is untouched by the callback chain
    assert ctx.redis.zscore(ctx.keys.schedule, run_id) == ctx.clock() + 5


def test_a_concurrent_claim_of_the_token_in_flight_sends_nothing(
    ctx: Context, receiver: Receiver
) -> None:
    # The run ends while its started event is being sent: finish() queues a task
    # with the token the in-flight sender now holds. That task must not send.
    run_id, _ = ctx.ledger.create(
        {"app_id": "app-1", "callback_url": receiver.url, "events": [events.STARTED]}
    )
    ctx.ledger.cas(run_id, states=ACTIVE_STATES, to=RunState.RUNNING)
    sent: list[list[Next]] = []
    in_flight: list[list[Next]] = []

    def hold_and_finish(host: str, port: int) -> list[str]:
        # called by the first delivery after its claim, before it sends
        if not in_flight:
            in_flight.append([])
            ended = finish(ctx, run_id, None, RunState.FAILED, states=ACTIVE_STATES)
            sent.append(ended)
            for step in ended:
                sent.append(deliver_step(ctx, *step.args, resolver=hold_and_finish))
        return ["127.0.0.1"]

    url = receiver.url.replace("127.0.0.1", "hooks.test")
    ctx.ledger.cas(run_id, states=None, fields={"callback_url": url})
    assert deliver_step(ctx, run_id, 0, resolver=hold_and_finish) == []

    assert len(sent[0]) == 1  # finish() queued a delivery: the started event is still owed
    assert sent[1] == []  # ...and that task found the token held by the sender in flight
    assert [p["type"] for p in receiver.payloads()] == ["workflow_run.started"]
    # FAILED is not in this run's filter, so the chain ends after started
    assert ctx.ledger.require(run_id)["callback_state"] == "delivered"


# --- test events and secrets ------------------------------------------------------------------


def test_send_test_posts_a_signed_test_event(ctx: Context, receiver: Receiver) -> None:
    result = send_test(ctx, receiver.url)

    assert result.outcome.ok
    (request,) = receiver.requests
    payload = standardwebhooks.Webhook(SECRET).verify(request["body"], request["headers"])
    assert payload["type"] == "webhook.test"
    assert request["headers"]["webhook-id"] == result.webhook_id


def test_send_test_respects_the_guard(context_factory: Callable[..., Context]) -> None:
    ctx = context_factory(make_settings(callback_allow_private=False))

    with pytest.raises(UnsafeCallbackURLError):
        send_test(ctx, "http://127.0.0.1:9/hook")


def test_no_secret_in_logs_or_the_ledger(
    ctx: Context, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.script = [(503, {}, b""), (410, {}, b"")]
    run_id, steps = ended_run(ctx, receiver.url)

    run_chain(ctx, steps)
    run_chain(ctx, replay_callback(ctx, run_id))

    logs = caplog.text
    record = ctx.redis.hgetall(ctx.keys.run(run_id))
    stored = json.dumps({k: v for k, v in record.items() if k not in ("documents",)})
    for secret in (SECRET, SECRET.removeprefix("whsec_"), "presignedsecret"):
        assert secret not in logs
        assert secret not in stored
    assert "hooksecret" not in logs
    assert "delivered" in logs
    assert all(isinstance(a, str | int) for s in steps for a in s.args)


# --- the CLI ------------------------------------------------------------------------------


@pytest.fixture
def cli(
    ctx: Context, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[..., tuple[int, str, str]]]:
    """``main(argv)`` on the test context and an in-memory broker: (code, stdout, stderr)."""
    app = create_app(ctx.settings)
    app.conf.update(broker_url="memory://")

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv), context=ctx, celery=app)
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    app.close()


def test_cli_lists_failed_callbacks_with_the_last_error(
    ctx: Context, receiver: Receiver, cli: Callable[..., tuple[int, str, str]]
) -> None:
    receiver.script = [(410, {}, b"gone")]
    run_id, steps = ended_run(ctx, receiver.url)
    run_chain(ctx, steps)

    code, out, _ = cli("callbacks", "failed")
    assert code == 0
    assert run_id in out
    assert "HTTP 410 after 1 attempt(s)" in out
    assert "hooksecret" not in out

    code, out, _ = cli("callbacks", "failed", "--json")
    (row,) = json.loads(out)
    assert row["run_id"] == run_id
    assert row["webhook_id"] == f"msg_{run_id}_completed"


def test_cli_replay_restarts_the_chain(
    ctx: Context, receiver: Receiver, cli: Callable[..., tuple[int, str, str]]
) -> None:
    receiver.script = [(400, {}, b"")]
    run_id, steps = ended_run(ctx, receiver.url)
    run_chain(ctx, steps)

    code, out, _ = cli("callbacks", "replay", "--all")

    assert code == 0
    assert f"run {run_id}: callback replay queued" in out
    assert ctx.ledger.require(run_id)["callback_state"] == "pending"
    code, _, err = cli("callbacks", "replay", run_id)
    assert code == 1
    assert "not dead-lettered" in err


def test_cli_replay_needs_a_run_or_all(cli: Callable[..., tuple[int, str, str]]) -> None:
    code, _, err = cli("callbacks", "replay")
    assert code == 2
    assert "RUN_ID or --all" in err


def test_cli_send_test_reports_the_answer(
    receiver: Receiver, cli: Callable[..., tuple[int, str, str]]
) -> None:
    code, out, _ = cli("callbacks", "send-test", receiver.url)
    assert code == 0
    assert "delivered: HTTP 200" in out

    receiver.script = [(500, {}, b"boom")]
    code, _, err = cli("callbacks", "send-test", receiver.url)
    assert code == 1
    assert "HTTP 500" in err


def test_cli_send_test_refuses_guarded_urls(
    context_factory: Callable[..., Context], capsys: pytest.CaptureFixture[str]
) -> None:
    guarded = context_factory(make_settings(callback_allow_private=False))

    code = main(["callbacks", "send-test", "http://169.254.169.254/latest"], context=guarded)

    assert code == 2
    assert "link-local" in capsys.readouterr().err
