"""Bad input never loses anything: property tests over malformed enqueue requests,
task messages, Hatz API answers and settings. Each yields a clear error (at
enqueue, on the run, or at start), never an unexpected exception out of a task
and never a run left without a next step."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

import fakeredis
import pytest
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config import ConfigError, load_settings
from tests.conftest import make_settings
from worker import task_names
from worker.api.runs import enqueue_run
from worker.context import Context
from worker.errors import HatzError
from worker.hatz.client import HatzClient
from worker.hatz.transport import Body, Response
from worker.runs.poll import poll_step
from worker.runs.poll_hints import HINT_FIELDS
from worker.runs.submit import submit_step
from worker.runs.sweeper import sweep
from worker.runs.task_guard import run_step
from worker.store.ledger import RunState
from worker.store.outbox import Next

FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
anything = json_values | st.binary(max_size=10) | st.tuples(st.integers()) | st.just(object())


class Recorder:
    """Stands in for a Celery app: records what would be published."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any]]] = []

    def send_task(self, name: str, args: list[Any], countdown: float | None = None) -> None:
        self.sent.append((name, args))


class Answers:
    """A connection pool answering every request with one (status, body) pair."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        self.status, self.body, self.content_type = status, body, content_type

    def urlopen(
        self,
        method: str,
        url: str,
        *,
        body: Body = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        return Response.build(self.status, self.body, {"Content-Type": self.content_type})

    def clear(self) -> None:
        pass


def _no_sleep(_: float) -> None:
    """Retries never wait in these tests."""


def context_answering(status: int, body: bytes, content_type: str = "application/json") -> Context:
    s = make_settings(base_url="http://hatz.test/v1", http_retries=0)
    client = HatzClient(
        api_key="k",
        base_url="http://hatz.test/v1",
        pool=Answers(status, body, content_type),
        retries=0,
        sleep=lambda _: None,
    )
    return Context.from_settings(
        s, redis_client=fakeredis.FakeRedis(decode_responses=True), client=client
    )


# --- enqueue ----------------------------------------------------------------------


@FAST
@given(
    app_id=anything,
    inputs=anything,
    files=anything,
    metadata=anything,
    events=anything,
    timeout=anything,
)
def test_a_malformed_enqueue_request_is_refused_with_a_clear_error_or_enqueued(
    app_id: Any, inputs: Any, files: Any, metadata: Any, events: Any, timeout: Any
) -> None:
    ctx = context_answering(200, b"{}")
    celery = Recorder()
    try:
        run_id = enqueue_run(
            app_id,
            inputs,
            files=files,
            metadata=metadata,
            events=events,
            timeout=timeout,
            context=ctx,
            celery=cast(Celery, celery),
        )
    except (HatzError, TypeError) as exc:
        refused: str | None = f"{type(exc).__name__}: {exc}"
    else:
        refused = None
    if refused is not None:
        # Refused at enqueue with a message, and nothing was enqueued.
        assert len(refused) > len("TypeError: ")
        assert celery.sent == []
        return
    assert ctx.ledger.require(run_id).state is RunState.QUEUED
    assert celery.sent == [(task_names.SUBMIT, [run_id, 0])]


# --- task messages ----------------------------------------------------------------


@FAST
@given(run_id=anything, token=anything)
def test_a_malformed_task_message_never_raises(run_id: Any, token: Any) -> None:
    ctx = context_answering(200, b"{}")
    for step, task in ((submit_step, task_names.SUBMIT), (poll_step, task_names.POLL)):
        assert run_step(step, run_id, token, task=task, context=lambda: ctx) == []


@FAST
@given(hint=anything | st.lists(json_values, min_size=len(HINT_FIELDS), max_size=len(HINT_FIELDS)))
def test_a_malformed_poll_hint_never_raises_and_the_poll_reads_the_run_instead(hint: Any) -> None:
    # Given a submitted run and a poll message whose hint is anything at all
    ctx = context_answering(200, json.dumps({"job_id": "job-1", "status": "running"}).encode())
    run_id, _ = ctx.ledger.create({"app_id": "a", "inputs": {}})
    ctx.ledger.cas(run_id, states=None, to=RunState.SUBMITTED, fields={"job_id": "job-1"})

    # When it runs: it never raises, and the run's chain goes on
    steps = run_step(poll_step, run_id, 0, hint, task=task_names.POLL, context=lambda: ctx)

    run = ctx.ledger.require(run_id)
    assert run.state in (RunState.SUBMITTED, RunState.RUNNING)
    assert [s.task for s in steps] == [task_names.POLL]
    assert steps[0].args[:2] == (run_id, run.token)


def test_an_unexpected_error_is_recorded_and_the_sweeper_settles_the_run_after_the_limit() -> None:
    # Given a run whose poll task crashes every time
    ctx = context_answering(200, b"{}")
    clock = [1000.0]
    ctx.clock = ctx.ledger.clock = lambda: clock[0]
    run_id, _ = ctx.ledger.create({"app_id": "a", "inputs": {}}, first_due_in=0)
    ctx.ledger.cas(run_id, states=None, to=RunState.SUBMITTED, fields={"job_id": "j"})

    def crash(c: Context, r: str, t: int) -> list[Next]:
        c.ledger.claim(r, t, {RunState.SUBMITTED}, 5.0)
        raise KeyError("boom")

    limit = ctx.settings.internal_error_limit
    for _ in range(limit):
        token = ctx.ledger.require(run_id).token
        # When the task runs: it never raises, and records the error on the run
        assert run_step(crash, run_id, token, task=task_names.POLL, context=lambda: ctx) == []
        clock[0] += 1000
        report = sweep(ctx)
        ctx.redis.delete(ctx.keys.lease("sweeper"))
        if ctx.ledger.require(run_id).state.is_terminal:
            break
        assert report.rearmed == [run_id]  # re-armed, never lost

    # Then after the limit the run ends FAILED with the error, not stuck
    run = ctx.ledger.require(run_id)
    assert run.state is RunState.FAILED
    assert "KeyError" in run["error"]
    assert run["internal_errors"] == limit


# --- malformed Hatz answers -----------------------------------------------------------

bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.just(b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    st.just(b'{"job_id": "j", "status": "runn'),
    st.just(b'{"job_id": "j", "status": "complete", "step_outputs": "nope"}'),
    st.just(b'{"job_id": 5, "status": ["complete"]}'),
    st.just(b'{"job_id": "j", "status": "complete", "step_outputs": [{"step_id": 1}]}'),
    st.just(b"x" * 3_000_000),
    st.binary(max_size=64),
)


@FAST
@given(
    status=st.sampled_from([200, 200, 201, 400, 404, 409, 422, 429, 500, 502, 503]),
    body=bodies,
    content_type=st.sampled_from(["application/json", "text/html", "text/plain"]),
)
def test_a_malformed_poll_answer_never_loses_the_run(
    status: int, body: bytes, content_type: str
) -> None:
    # Given a submitted run
    ctx = context_answering(status, body, content_type)
    run_id, _ = ctx.ledger.create({"app_id": "a", "inputs": {}})
    ctx.ledger.cas(run_id, states=None, to=RunState.SUBMITTED, fields={"job_id": "job-1"})

    # When its poll gets that answer
    steps = run_step(poll_step, run_id, 0, task=task_names.POLL, context=lambda: ctx)

    # Then the run is finished with a reason, or it has its next poll scheduled
    run = ctx.ledger.require(run_id)
    if run.state.is_terminal:
        assert run.state is not RunState.COMPLETED or status < 300
        assert run.state is RunState.COMPLETED or run.get("error")
    else:
        assert [s.task for s in steps] == [task_names.POLL]
        assert run.get("last_error")
        assert run["next_at"] is not None


@FAST
@given(
    status=st.sampled_from([200, 201, 400, 404, 422, 429, 500, 502, 503]),
    body=bodies,
    content_type=st.sampled_from(["application/json", "text/html"]),
)
def test_a_malformed_submit_answer_never_loses_the_run(
    status: int, body: bytes, content_type: str
) -> None:
    # Given a queued run (the app check gets the same malformed answer)
    ctx = context_answering(status, body, content_type)
    run_id, _ = ctx.ledger.create({"app_id": "a", "inputs": {}})

    steps = run_step(submit_step, run_id, 0, task=task_names.SUBMIT, context=lambda: ctx)

    # Then it is refused/ambiguous with a reason, or retried later, or submitted
    run = ctx.ledger.require(run_id)
    if run.state.is_terminal:
        assert run.get("error")
    else:
        assert len(steps) == 1
        assert steps[0].task in (task_names.SUBMIT, task_names.POLL)


# --- malformed settings ---------------------------------------------------------------

SETTING_NAMES = [
    "poll_interval",
    "poll_max_interval",
    "visibility_timeout",
    "redis_url",
    "callback_retry_delays",
    "webhook_secret",
    "sweep_interval",
    "sweep_batch",
    "stall_after",
    "worker_eta_task_limit",
    "log_level",
    "base_url",
    "http_retries",
]


@FAST
@given(st.dictionaries(st.sampled_from(SETTING_NAMES), st.text(max_size=12), max_size=4))
def test_malformed_settings_give_a_config_error_naming_the_variable(values: dict[str, str]) -> None:
    try:
        load_settings(_env_file=None, **values)
    except ConfigError as exc:
        message = str(exc)
    else:
        return
    assert "HATZ_" in message or "settings" in message


@pytest.mark.parametrize(
    ("name", "value"),
    [("poll_interval", "fast"), ("visibility_timeout", "-1"), ("redis_url", "http://x")],
)
def test_each_bad_setting_is_named_in_one_line(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"HATZ_{name.upper()}"):
        load_settings(_env_file=None, **{name: value})
