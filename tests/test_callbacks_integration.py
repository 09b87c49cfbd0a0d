"""Callbacks end to end: a private redis-server, a real `celery worker`, the fake Hatz
server and real loopback receivers. What receivers got is counted at the receivers."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis as redis_lib
import standardwebhooks

from tests.conftest import API_KEY
from tests.stack import Stack, running_stack
from worker.api.runs import cancel_run
from worker.cli.main import main
from worker.context import Context
from worker.fake_hatz import FakeStep
from worker.local.stack import wait_until
from worker.runs.sweeper import sweep
from worker.store.ledger import RunState
from worker.taskqueue.app import publish
from worker.webhooks import events
from worker.webhooks.delivery import failed_callbacks

pytestmark = pytest.mark.integration

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
WORKER_SETTINGS: dict[str, Any] = {
    "poll_initial_delay": 0.2,
    "poll_interval": 0.2,
    "poll_max_interval": 0.5,
    "poll_backoff": 1.0,
    "http_retries": 1,
    "http_retry_base_delay": 0.05,
    "http_retry_max_delay": 0.2,
    "app_cache_ttl": 0,
    "webhook_secret": f"{SECRET},{OLD_SECRET}",
    "callback_allow_private": True,  # the receivers listen on 127.0.0.1
    "callback_retry_delays": "0,0.2,0.4,0.4",
    "callback_connect_timeout": 1.0,
    "callback_timeout": 10.0,
    "sweep_grace": 1.0,
}


class HoldingReceiver:
    """Takes a delivery in (its effect has happened), then holds the answer until released.

    That is the window between a receiver acting on a callback and the worker
    learning it did.
    """

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.received = threading.Event()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.bodies.append(
                    {"body": body, "headers": {k.lower(): v for k, v in self.headers.items()}}
                )
                receiver.received.set()
                receiver.release.wait(30)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the worker is gone: nobody reads this answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/held"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class RedisRecorder:
    """Every command sent to Redis (MONITOR), to grep what the worker published and stored."""

    def __init__(self, url: str) -> None:
        self.client = redis_lib.Redis.from_url(url, decode_responses=True)
        self.commands: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        with self.client.monitor() as monitor:  # type: ignore[no-untyped-call]
            self._ready.set()
            while not self._stop.is_set():
                self.commands.append(str(monitor.next_command()["command"]))

    def start(self) -> RedisRecorder:
        self._thread.start()
        self._ready.wait(5)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.client.ping()  # wakes the monitor so it sees the stop flag
        self._thread.join(5)
        self.client.close()

    def task_messages(self) -> list[str]:
        """The decoded bodies and headers of every Celery message pushed."""
        found = []
        for command in self.commands:
            for body in re.findall(r'body\\?":\s*\\?"([A-Za-z0-9+/=]+)', command):
                try:
                    found.append(base64.b64decode(body, validate=True).decode("utf-8", "replace"))
                except ValueError:
                    continue  # a "body" that is not a message (e.g. a callback attempt's)
            if "argsrepr" in command:
                found.append(command)
        return found


APP_DEFAULTS: dict[str, Any] = {
    "name": "callback test app",
    "steps": [FakeStep(output_type="dump"), FakeStep(output_type="document")],
}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack(values=WORKER_SETTINGS, app_defaults=APP_DEFAULTS) as s:
        yield s


def _verify_all(deliveries: list[dict[str, Any]]) -> None:
    for d in deliveries:
        standardwebhooks.Webhook(SECRET).verify(d["body"], d["headers"])
        standardwebhooks.Webhook(OLD_SECRET).verify(d["body"], d["headers"])


def test_receiver_down_then_up_gets_exactly_one_successful_delivery(stack: Stack) -> None:
    # Given a receiver that answers 503 twice before it recovers
    app = stack.app()
    stack.receiver.responses = [503, 503]

    # When a run completes
    run_id = stack.enqueue(app.id, callback_url=stack.receiver.url, metadata={"order": 1})
    assert stack.wait(run_id).state is RunState.COMPLETED
    wait_until(lambda: stack.callback_state(run_id) == "delivered", timeout=15, message="delivery")

    # Then three attempts arrived, one succeeded, all under one webhook-id, all signed
    got = stack.received(run_id)
    assert [d["status"] for d in got] == [503, 503, 200]
    assert {d["headers"]["webhook-id"] for d in got} == {f"msg_{run_id}_completed"}
    _verify_all(got)
    payload = json.loads(got[-1]["body"])
    assert payload["type"] == "workflow_run.completed"
    assert payload["sequence"] == 1
    document = payload["data"]["step_outputs"][1]["document"]
    assert set(document) == {"url", "expires_at"}
    attempts = stack.context.ledger.require(run_id)["callback_attempts"]
    assert [a["status"] for a in attempts] == [503, 503, 200]


def test_started_and_completed_events_arrive_in_sequence(stack: Stack) -> None:
    app = stack.app(duration=1.0)

    run_id = stack.enqueue(
        app.id, callback_url=stack.receiver.url, events=[events.STARTED, events.COMPLETED]
    )
    assert stack.wait(run_id).state is RunState.COMPLETED
    wait_until(lambda: stack.callback_state(run_id) == "delivered", timeout=15, message="delivery")

    got = stack.received(run_id)
    payloads = [json.loads(d["body"]) for d in got]
    assert [p["type"] for p in payloads] == ["workflow_run.started", "workflow_run.completed"]
    assert [p["sequence"] for p in payloads] == [1, 2]
    _verify_all(got)


def test_the_started_event_arrives_while_the_run_is_still_running(stack: Stack) -> None:
    # Given a long job and a run that asked for its started event
    app = stack.app(duration=60.0, pending_seconds=0.1)
    run_id = stack.enqueue(app.id, callback_url=stack.receiver.url, events=[events.STARTED])

    # When the job is seen running, the started event goes out then, not at the end
    wait_until(lambda: stack.received(run_id), timeout=20, message="the started callback")
    assert stack.context.ledger.require(run_id).state is RunState.RUNNING
    assert [json.loads(d["body"])["type"] for d in stack.received(run_id)] == [events.STARTED]
    cancel_run(run_id, context=stack.context)  # (ends it: no event wanted for that)


def test_refused_callback_is_dead_lettered_and_replay_delivers_it(stack: Stack) -> None:
    # Given a receiver that says 410 Gone
    app = stack.app()
    stack.receiver.responses = [410]
    run_id = stack.enqueue(app.id, callback_url=stack.receiver.url)
    assert stack.wait(run_id).state is RunState.COMPLETED
    wait_until(lambda: stack.callback_state(run_id) == "failed", timeout=15, message="dead letter")
    assert run_id in [f.run_id for f in failed_callbacks(stack.context)]
    assert len(stack.received(run_id)) == 1

    # When the receiver is fixed and the callback replayed from the CLI
    code = main(["callbacks", "replay", run_id], context=stack.context, celery=stack.celery)
    assert code == 0
    wait_until(lambda: stack.callback_state(run_id) == "delivered", timeout=15, message="replay")

    # Then it arrived with the same webhook-id and left the failed list
    first, second = stack.received(run_id)
    assert (first["status"], second["status"]) == (410, 200)
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    _verify_all([second])
    assert run_id not in [f.run_id for f in failed_callbacks(stack.context)]
    assert stack.context.ledger.require(run_id).state is RunState.COMPLETED


def test_no_secret_in_logs_task_messages_or_stored_records(stack: Stack) -> None:
    recorder = RedisRecorder(stack.redis.url).start()
    try:
        app = stack.app()
        stack.receiver.responses = [500]
        run_id = stack.enqueue(app.id, callback_url=stack.receiver.url + "?token=hooksecret")
        assert stack.wait(run_id).state is RunState.COMPLETED
        wait_until(lambda: stack.callback_state(run_id) == "delivered", timeout=15, message="cb")
    finally:
        recorder.stop()
    run = stack.context.ledger.require(run_id)
    presigned = next(iter(run["documents"].values()))["url"]
    signature = presigned.split("X-Amz-Signature=", 1)[1]
    secrets = [API_KEY, SECRET, OLD_SECRET, SECRET[6:], OLD_SECRET[6:], signature]

    messages = recorder.task_messages()
    assert any(run_id in m for m in messages)  # the recorder did see the worker's messages
    logs = stack.worker.log_text() + "".join(stack.logs)
    raw = stack.context.redis.hgetall(stack.context.keys.run(run_id))
    # The presigned URL itself is the run's result (README "The run record"); nothing else.
    stored = json.dumps({k: v for k, v in raw.items() if k != "documents"})
    for secret in secrets:
        assert secret not in logs
        assert all(secret not in m for m in messages)
        assert secret not in stored
    assert "hooksecret" not in logs
    assert all("hooksecret" not in m for m in messages)


def test_worker_killed_after_the_send_costs_at_most_one_extra_delivery(stack: Stack) -> None:
    # Given a receiver that acts on a delivery but holds its answer
    holder = HoldingReceiver()
    try:
        app = stack.app()
        run_id = stack.enqueue(app.id, callback_url=holder.url)
        assert stack.wait(run_id).state is RunState.COMPLETED
        assert holder.received.wait(15), "no delivery arrived"

        # When the worker is SIGKILLed before it could record the answer
        stack.worker.kill()
        holder.release.set()
        assert stack.callback_state(run_id) == "sending"
        holder.received.clear()
        stack.restart_worker()

        # ...and the sweeper, once the delivery's lease is over, re-arms the chain
        later = Context.from_settings(stack.settings, clock=lambda: time.time() + 3600)
        try:
            report = sweep(later)
        finally:
            later.client.close()
        assert run_id in report.rearmed
        publish(report.steps, stack.celery)
        wait_until(
            lambda: stack.callback_state(run_id) == "delivered", timeout=20, message="re-send"
        )

        # Then the receiver saw the event at most twice, both under one webhook-id
        assert len(holder.bodies) == 2
        assert {b["headers"]["webhook-id"] for b in holder.bodies} == {f"msg_{run_id}_completed"}
        assert holder.bodies[0]["body"] == holder.bodies[1]["body"]
        _verify_all(holder.bodies)
    finally:
        holder.close()
