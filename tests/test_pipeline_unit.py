"""Pipeline functions called directly: fakeredis ledger, a scripted Hatz client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fakeredis
import pytest

from tests.conftest import make_settings
from worker import task_names
from worker.context import Context
from worker.errors import (
    HatzConnectError,
    HatzCreditOverageError,
    HatzNotFoundError,
    HatzServerError,
    HatzTimeoutError,
    HatzTransportError,
    HatzValidationError,
)
from worker.hatz.types import App, Job, PresignedURL, SubmittedJob, UploadedFile, UserInput
from worker.limits import breaker
from worker.runs.apps import fetch_app
from worker.runs.cancel import cancel
from worker.runs.documents import refresh_documents
from worker.runs.inputs import validate_inputs
from worker.runs.poll import poll_step
from worker.runs.poll_hints import HINT_FIELDS, poll_hint
from worker.runs.submit import submit_hint, submit_step
from worker.runs.sweeper import sweep
from worker.store.ledger import RunState
from worker.store.outbox import Next

OVERAGE = "Workflows have been rate limited for your organization due to a credit overage."


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


class StubClient:
    """Answers each method from a queue of results or exceptions; records calls."""

    def __init__(self) -> None:
        self.app = App(
            id="app",
            user_inputs=[
                UserInput(variable_name="topic", required=True),
                UserInput(variable_name="doc", variable_type="file_upload"),
            ],
        )
        self.runs: list[Any] = []
        self.jobs: list[Any] = []
        self.presigned: list[Any] = []
        self.calls: list[str] = []

    def _next(self, queue: list[Any], default: Any) -> Any:
        answer = queue.pop(0) if queue else default
        if isinstance(answer, Exception):
            raise answer
        return answer

    def get_app(self, app_id: str) -> App:
        self.calls.append("get_app")
        if app_id != "app":
            raise HatzNotFoundError(404, "App not found")
        return self.app

    def upload_file(self, path: str, **_: Any) -> UploadedFile:
        self.calls.append("upload")
        with open(path, "rb"):
            pass
        return UploadedFile(file_uuid="8fb5bc1d-5a8d-4015-86a6-b0ca394e7793")

    def run_workflow(self, app_id: str, inputs: dict[str, Any], **_: Any) -> SubmittedJob:
        self.calls.append("run")
        return self._next(self.runs, SubmittedJob(job_id="job-1"))  # type: ignore[no-any-return]

    def get_job(self, job_id: str) -> Job:
        self.calls.append("get_job")
        return self._next(self.jobs, job("running"))  # type: ignore[no-any-return]

    def presigned_url(self, job_id: str, step_id: str, **_: Any) -> PresignedURL:
        self.calls.append("presign")
        default = PresignedURL(url=f"http://s3/{step_id}?sig=1", expires_in=60)
        return self._next(self.presigned, default)  # type: ignore[no-any-return]

    def close(self) -> None:
        pass


def job(status: str, steps: list[dict[str, Any]] | None = None) -> Job:
    return Job.model_validate(
        {"job_id": "job-1", "status": status, "number_of_steps": 2, "step_outputs": steps or []}
    )


Harness = tuple[Context, StubClient, Clock]


@pytest.fixture
def harness(fake_redis: fakeredis.FakeRedis) -> Callable[..., Harness]:
    def build(**overrides: Any) -> Harness:
        clock = Clock()
        client = StubClient()
        settings = make_settings(
            **{
                "poll_interval": 5.0,
                "poll_max_interval": 40.0,
                "poll_backoff": 2.0,
                "countdown_horizon": 0.0,  # every poll a countdown; parking has its own tests
                **overrides,
            }
        )
        ctx = Context.from_settings(
            settings,
            redis_client=fake_redis,
            client=client,  # type: ignore[arg-type]
            clock=clock,
        )
        return ctx, client, clock

    return build


def new_run(ctx: Context, **fields: Any) -> str:
    params = {"app_id": "app", "inputs": {"topic": "t"}, **fields}
    run_id, _ = ctx.ledger.create(params)
    return run_id


def submitted(ctx: Context, **fields: Any) -> tuple[str, int]:
    run_id = new_run(ctx, **fields)
    (step,) = submit_step(ctx, run_id, 0)
    assert step.task == task_names.POLL
    return run_id, int(step.args[1])


def test_submit_stores_job_id_and_schedules_the_first_poll(harness: Callable[..., Harness]) -> None:
    ctx, client, _ = harness(poll_initial_delay=2.0, poll_jitter=0.0)
    run_id = new_run(ctx)

    steps = submit_step(ctx, run_id, 0)

    run = ctx.ledger.require(run_id)
    assert run.state is RunState.SUBMITTED
    assert run["job_id"] == "job-1"
    # The poll carries what the record now says (its hint), so it reads nothing first.
    assert steps == [Next(task_names.POLL, (run_id, run.token, poll_hint(run)), 2.0)]
    assert client.calls == ["get_app", "run"]


def test_a_duplicate_submit_message_is_a_no_op(harness: Callable[..., Harness]) -> None:
    ctx, client, _ = harness()
    run_id = new_run(ctx)
    submit_step(ctx, run_id, 0)

    assert submit_step(ctx, run_id, 0) == []
    assert client.calls.count("run") == 1


def test_files_are_uploaded_and_replaced_by_their_uuid(
    harness: Callable[..., Harness], tmp_path: Any
) -> None:
    ctx, client, _ = harness()
    f = tmp_path / "d.pdf"
    f.write_bytes(b"%PDF")
    run_id = new_run(ctx, files={"doc": str(f)})

    submit_step(ctx, run_id, 0)

    run = ctx.ledger.require(run_id)
    assert run["inputs"]["doc"] == "8fb5bc1d-5a8d-4015-86a6-b0ca394e7793"
    assert client.calls == ["get_app", "upload", "run"]
    assert [s for s, _ in run.history()] == ["QUEUED", "UPLOADING", "SUBMITTING", "SUBMITTED"]


def test_a_file_that_vanished_before_upload_rejects_the_run(
    harness: Callable[..., Harness], tmp_path: Any
) -> None:
    ctx, client, _ = harness()
    run_id = new_run(ctx, files={"doc": str(tmp_path / "gone.pdf")})

    submit_step(ctx, run_id, 0)

    run = ctx.ledger.require(run_id)
    assert run.state is RunState.REJECTED
    assert "cannot read file for input 'doc'" in run["error"]
    assert "run" not in client.calls


def test_validation_lists_every_problem() -> None:
    app = App(
        user_inputs=[
            UserInput(variable_name="topic", required=True),
            UserInput(variable_name="doc", variable_type="file_upload"),
        ]
    )

    problems = validate_inputs(app, {"doc": "not a uuid", "extra": 1}, {"topic": "/tmp/x"})

    assert problems == [
        "unknown input 'extra' (the app's inputs: doc, topic)",
        "input 'doc' is a file_upload input: pass a file, not a value",
        "input 'topic' is not a file_upload input (short_answer)",
    ]


@pytest.mark.parametrize(
    "failure",
    [
        HatzConnectError("refused"),
        HatzServerError(503, "unavailable"),
        HatzCreditOverageError(429, OVERAGE),
    ],
)
def test_submit_failures_that_created_no_job_are_retried_later(
    harness: Callable[..., Harness], failure: Exception
) -> None:
    ctx, client, clock = harness()
    client.runs = [failure]
    run_id = new_run(ctx)

    (retry,) = submit_step(ctx, run_id, 0)
    run = ctx.ledger.require(run_id)

    assert retry.task == task_names.SUBMIT
    assert retry.countdown > 0
    assert run.state is RunState.SUBMITTING
    assert not run["submit_inflight"]
    clock.now += retry.countdown + 1  # the retry runs when due (past any breaker backoff)
    (poll,) = submit_step(ctx, run_id, int(retry.args[1]))
    assert poll.task == task_names.POLL
    assert client.calls.count("run") == 2


def test_credit_overage_waits_the_overage_pause(harness: Callable[..., Harness]) -> None:
    ctx, client, _ = harness(overage_pause=30.0, poll_jitter=0.0)
    client.runs = [HatzCreditOverageError(429, OVERAGE)]

    (retry,) = submit_step(ctx, new_run(ctx), 0)

    assert retry.countdown == 30.0


@pytest.mark.parametrize("failure", [HatzTimeoutError("slow"), HatzTransportError("reset")])
def test_a_lost_submit_answer_is_ambiguous_and_never_resent(
    harness: Callable[..., Harness], failure: Exception
) -> None:
    ctx, client, _ = harness()
    client.runs = [failure]
    run_id = new_run(ctx)

    assert submit_step(ctx, run_id, 0) == []

    run = ctx.ledger.require(run_id)
    assert run.state is RunState.AMBIGUOUS
    assert "not re-sent" in run["error"]
    assert client.calls.count("run") == 1


def test_a_5xx_submit_is_ambiguous_when_5xx_retries_are_off(
    harness: Callable[..., Harness],
) -> None:
    ctx, client, _ = harness(submit_retry_5xx=False)
    client.runs = [HatzServerError(502, "bad gateway")]
    run_id = new_run(ctx)

    assert submit_step(ctx, run_id, 0) == []

    assert ctx.ledger.require(run_id).state is RunState.AMBIGUOUS
    assert client.calls.count("run") == 1


def test_a_submit_refused_by_the_api_is_rejected(harness: Callable[..., Harness]) -> None:
    ctx, client, _ = harness()
    client.runs = [HatzValidationError(400, "file not found")]
    run_id = new_run(ctx)

    submit_step(ctx, run_id, 0)

    assert ctx.ledger.require(run_id).state is RunState.REJECTED


def test_poll_reschedules_with_backoff_until_complete(harness: Callable[..., Harness]) -> None:
    ctx, client, _ = harness(poll_jitter=0.0)
    run_id, token = submitted(ctx)
    client.jobs = [job("running"), job("running"), job("running")]
    countdowns = []
    for _ in range(3):
        (step,) = poll_step(ctx, run_id, token)
        token = int(step.args[1])
        countdowns.append(step.countdown)

    # first poll sees a change (pending -> running): base interval; then it doubles
    assert countdowns == [5.0, 10.0, 20.0]
    assert ctx.ledger.require(run_id).state is RunState.RUNNING


def test_poll_interval_is_capped(harness: Callable[..., Harness]) -> None:
    ctx, client, _ = harness(poll_jitter=0.0)
    run_id, token = submitted(ctx)
    client.jobs = [job("running")] * 8
    for _ in range(8):
        (step,) = poll_step(ctx, run_id, token)
        token = int(step.args[1])

    assert step.countdown == 40.0


def test_a_stale_or_duplicate_poll_exits_without_rescheduling(
    harness: Callable[..., Harness],
) -> None:
    ctx, client, _ = harness()
    run_id, token = submitted(ctx)

    first = poll_step(ctx, run_id, token)
    duplicate = poll_step(ctx, run_id, token)

    assert len(first) == 1
    assert duplicate == []
    assert client.calls.count("get_job") == 1


def test_complete_job_collects_documents_and_skips_non_documents(
    harness: Callable[..., Harness],
) -> None:
    ctx, client, clock = harness()
    run_id, token = submitted(ctx, callback_url="http://cb.test/x")
    client.jobs = [
        job(
            "complete",
            [
                {"step_id": "s1", "status": "complete", "output_type": "dump", "output_data": "hi"},
                {"step_id": "s2", "status": "complete", "output_type": "document"},
                {"step_id": "s3", "status": "complete", "output_type": "document"},
            ],
        )
    ]
    client.presigned = [
        PresignedURL(url="http://s3/s2?sig=1", expires_in=60),
        HatzValidationError(400, "Step output is not a document"),
    ]

    steps = poll_step(ctx, run_id, token)

    run = ctx.ledger.require(run_id)
    assert run.state is RunState.COMPLETED
    assert run["documents"] == {"s2": {"url": "http://s3/s2?sig=1", "expires_at": clock.now + 60}}
    assert [s["step_id"] for s in run["step_outputs"]] == ["s1", "s2", "s3"]
    assert steps == [Next(task_names.DELIVER_CALLBACK, (run_id, 0))]


def test_failed_job_fails_the_run_with_the_failing_step(harness: Callable[..., Harness]) -> None:
    ctx, client, _ = harness()
    run_id, token = submitted(ctx)
    client.jobs = [
        job("failed", [{"step_id": "s1", "status": "failed", "output_data": "model overloaded"}])
    ]

    assert poll_step(ctx, run_id, token) == []

    run = ctx.ledger.require(run_id)
    assert run.state is RunState.FAILED
    assert run["error"] == "step s1 failed: model overloaded"


def test_transient_poll_errors_keep_polling(harness: Callable[..., Harness]) -> None:
    ctx, client, _ = harness()
    run_id, token = submitted(ctx)
    client.jobs = [HatzServerError(502, "bad gateway"), HatzTimeoutError("slow"), job("complete")]
    for _ in range(2):
        (step,) = poll_step(ctx, run_id, token)
        token = int(step.args[1])
    poll_step(ctx, run_id, token)

    assert ctx.ledger.require(run_id).state is RunState.COMPLETED


def test_job_not_found_fails_only_after_the_limit(harness: Callable[..., Harness]) -> None:
    ctx, client, _ = harness(not_found_limit=3)
    run_id, token = submitted(ctx)
    client.jobs = [HatzNotFoundError(404, "Job not found")] * 3
    for _ in range(2):
        (step,) = poll_step(ctx, run_id, token)
        token = int(step.args[1])
        assert ctx.ledger.require(run_id).state is RunState.SUBMITTED

    poll_step(ctx, run_id, token)

    run = ctx.ledger.require(run_id)
    assert run.state is RunState.FAILED
    assert run["error"] == "Job not found"


def test_run_times_out_after_the_run_timeout(harness: Callable[..., Harness]) -> None:
    ctx, _, clock = harness(run_timeout=100.0)
    run_id, token = submitted(ctx)
    clock.now += 101

    assert poll_step(ctx, run_id, token) == []
    assert ctx.ledger.require(run_id).state is RunState.TIMED_OUT


def test_canceled_run_ignores_late_polls(harness: Callable[..., Harness]) -> None:
    ctx, client, _ = harness()
    run_id, token = submitted(ctx)

    assert cancel(ctx, run_id)[0]
    assert poll_step(ctx, run_id, token) == []
    assert client.calls.count("get_job") == 0
    assert not cancel(ctx, run_id)[0]


def test_sweeper_rearms_a_run_whose_poll_was_lost(harness: Callable[..., Harness]) -> None:
    ctx, _client, clock = harness(sweep_grace=30.0)
    run_id, lost_token = submitted(ctx)
    clock.now += 1000  # the countdown task never arrived

    report = sweep(ctx)

    (step,) = report.steps
    assert report.rearmed == [run_id]
    assert step.task == task_names.POLL
    assert poll_step(ctx, run_id, lost_token) == []  # the lost one, if it surfaces, is stale
    assert len(poll_step(ctx, run_id, int(step.args[1]))) == 1


def test_sweeper_marks_a_run_lost_mid_submit_ambiguous(harness: Callable[..., Harness]) -> None:
    ctx, _, clock = harness(sweep_grace=30.0)
    run_id = new_run(ctx)
    claimed = ctx.ledger.claim(run_id, 0, [RunState.QUEUED], lease=60)
    assert claimed is not None
    ctx.ledger.cas(
        run_id,
        states=None,
        token=claimed.token,
        to=RunState.SUBMITTING,
        fields={"submit_inflight": True},
    )
    clock.now += 1000  # the worker died while sending

    report = sweep(ctx)

    assert report.ambiguous == [run_id]
    assert ctx.ledger.require(run_id).state is RunState.AMBIGUOUS


def test_sweeper_leaves_healthy_runs_alone(harness: Callable[..., Harness]) -> None:
    ctx, _, clock = harness(sweep_grace=30.0, poll_jitter=0.0)
    submitted(ctx)
    clock.now += 10

    assert sweep(ctx).rearmed == []


def test_only_one_sweeper_runs_at_a_time(harness: Callable[..., Harness]) -> None:
    ctx, _, _ = harness()

    assert sweep(ctx).ran
    assert not sweep(ctx).ran


def test_documents_about_to_expire_are_renewed_before_a_late_callback(
    harness: Callable[..., Harness],
) -> None:
    ctx, client, clock = harness(presign_expires_in=3600)
    run_id, token = submitted(ctx)
    client.jobs = [job("complete", [{"step_id": "s2", "status": "complete", "output_type": "pdf"}])]
    poll_step(ctx, run_id, token)
    old = ctx.ledger.require(run_id)["documents"]["s2"]
    client.presigned = [PresignedURL(url="http://s3/s2?sig=fresh", expires_in=3600)]
    clock.now += 3500  # a callback retry, close to the URL's expiry

    renewed = refresh_documents(ctx, ctx.ledger.require(run_id))

    assert old["url"] == "http://s3/s2?sig=1"
    assert renewed["documents"]["s2"] == {
        "url": "http://s3/s2?sig=fresh",
        "expires_at": clock.now + 3600,
    }
    assert ctx.ledger.require(run_id)["documents"] == renewed["documents"]
    assert refresh_documents(ctx, renewed) == renewed  # still fresh: no new call
    assert client.calls.count("presign") == 2


def test_app_definition_is_read_once_per_process_until_its_cache_entry_expires(
    harness: Callable[..., Harness],
) -> None:
    ctx, client, clock = harness(app_cache_ttl=30)
    other, other_client, _ = harness(app_cache_ttl=30)  # another worker process, same Redis

    assert fetch_app(ctx, "app").id == "app"
    ctx.redis.delete(ctx.keys.app("app"))
    assert fetch_app(ctx, "app").id == "app"  # this process: no Redis read, no API call
    assert client.calls.count("get_app") == 1

    fetch_app(other, "app")  # the shared entry is gone: the other process asks the API
    fetch_app(other, "app")
    assert other_client.calls.count("get_app") == 1

    clock.now += 31  # this process's copy expired: the shared entry (30 s) serves it
    fetch_app(ctx, "app")
    assert client.calls.count("get_app") == 1
    expires, _ = ctx.apps["app"]
    assert clock.now < expires <= clock.now + 30


def test_app_cache_off_asks_the_api_every_time(harness: Callable[..., Harness]) -> None:
    ctx, client, _ = harness(app_cache_ttl=0)
    fetch_app(ctx, "app")
    fetch_app(ctx, "app")
    assert client.calls.count("get_app") == 2
    assert not ctx.apps


def test_canceling_a_batch_run_frees_its_slot_at_once(harness: Callable[..., Harness]) -> None:
    ctx, _, _ = harness()
    run_id, _ = submitted(ctx, batch_id="b1")

    ok, steps = cancel(ctx, run_id)

    assert ok
    assert steps == [Next(task_names.BATCH_TICK, ("b1",))]


def _first_poll(ctx: Context, **fields: Any) -> tuple[str, Next]:
    run_id = new_run(ctx, **fields)
    (step,) = submit_step(ctx, run_id, 0)
    return run_id, step


def test_a_poll_with_a_hint_reads_nothing_and_writes_once(
    harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, client, _ = harness()
    run_id, step = _first_poll(ctx)
    reads: list[str] = []

    def counted(name: str) -> Callable[..., Any]:
        original = getattr(ctx.ledger, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            reads.append(name)
            return original(*args, **kwargs)

        return call

    for name in ("get", "claim"):
        monkeypatch.setattr(ctx.ledger, name, counted(name))
    client.jobs = [job("running")]

    (nxt,) = poll_step(ctx, *step.args)

    assert reads == []
    run = ctx.ledger.require(run_id)
    assert run.state is RunState.RUNNING
    assert run.token == step.args[1] + 1  # the one compare-and-set moved the token on
    assert nxt.args == (run_id, run.token, poll_hint(run))
    client.jobs = [job("complete")]
    reads.clear()  # (require reads)
    assert poll_step(ctx, *nxt.args) == []  # no callback, no batch: nothing follows
    assert reads == []  # ending a quiet run needs no read either
    assert ctx.ledger.require(run_id).state is RunState.COMPLETED


def test_a_hinted_poll_that_ends_a_run_with_a_callback_still_queues_the_callback(
    harness: Callable[..., Harness],
) -> None:
    ctx, client, _ = harness()
    run_id, step = _first_poll(ctx, callback_url="https://example.com/hook")
    assert step.args[2][-1] is False  # not quiet
    client.jobs = [job("complete")]

    steps = poll_step(ctx, *step.args)

    run = ctx.ledger.require(run_id)
    assert run.state is RunState.COMPLETED
    assert steps == [Next(task_names.DELIVER_CALLBACK, (run_id, 0))]
    assert run["callback_state"] == "pending"


def test_a_duplicate_hinted_poll_changes_nothing_and_a_very_late_one_claims_first(
    harness: Callable[..., Harness],
) -> None:
    ctx, client, clock = harness()
    run_id, step = _first_poll(ctx)
    client.jobs = [job("running"), job("running")]
    (_next,) = poll_step(ctx, *step.args)
    before = ctx.ledger.require(run_id)

    assert poll_step(ctx, *step.args) == []  # the same message again: its GET is wasted
    assert ctx.ledger.require(run_id) == before
    assert client.jobs == []

    clock.now += ctx.settings.sweep_grace  # so late the sweeper may have re-armed it
    assert poll_step(ctx, *step.args) == []  # claims first: stale, so no GET at all
    assert ctx.ledger.require(run_id) == before


def test_a_hint_built_from_any_polling_record_is_one_a_poll_accepts() -> None:
    from worker.runs.poll_hints import record_from_hint as _from_hint
    from worker.store.ledger import Run

    record = Run.from_hash(
        {
            "run_id": "r",
            "state": "RUNNING",
            "token": "3",
            "job_id": "j",
            "app_id": "a",
            "due_at": "12.5",
            "poll_count": "4",
            "poll_interval": "5.0",
            "hatz_status": "running",
            "steps_done": "1",
            "not_found_count": "0",
            "submitted_at": "1.0",
            "run_timeout": "3600",
            "callback_url": "https://example.com/hook?token=secret",
        }
    )

    hint = poll_hint(record)

    assert hint == ["j", "a", "RUNNING", 12.5, 4, 5.0, "running", 1, 0, 1.0, 3600.0, False]
    assert "secret" not in repr(hint)  # the callback URL itself never travels
    assert _from_hint("r", 3, hint) == {
        **dict(zip(HINT_FIELDS, hint, strict=True)),
        "run_id": "r",
        "token": 3,
    }
    assert _from_hint("r", 3, [*hint[:3], "12.5", *hint[4:]]) is None  # a wrong type


# --- a hinted submit: the claim marks the send --------------------------------------------


def _counting_cas(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every compare-and-set the ledger sends (claims included), by the state it asks for."""
    sent: list[str] = []
    original = ctx.ledger.cas

    def cas(run_id: str, **kwargs: Any) -> Any:
        to = kwargs.get("to")
        sent.append(to.value if to is not None else "-")
        return original(run_id, **kwargs)

    monkeypatch.setattr(ctx.ledger, "cas", cas)
    return sent


def _seen_at_send(ctx: Context, client: StubClient, run_id: str) -> list[tuple[str, bool]]:
    """The run's state and in-flight mark as the request goes out (the submit rule)."""
    seen: list[tuple[str, bool]] = []
    send = client.run_workflow

    def run_workflow(app_id: str, inputs: dict[str, Any], **kw: Any) -> SubmittedJob:
        run = ctx.ledger.require(run_id)
        seen.append((run.state.value, bool(run.get("submit_inflight"))))
        return send(app_id, inputs, **kw)

    client.run_workflow = run_workflow  # type: ignore[method-assign]
    return seen


def test_a_hinted_submit_with_the_app_at_hand_claims_and_marks_the_send_in_one_write(
    harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, client, _ = harness(app_cache_ttl=60)
    fetch_app(ctx, "app")  # this process holds the app's definition
    run_id = new_run(ctx)
    hint = submit_hint(ctx.ledger.require(run_id))
    sent = _counting_cas(ctx, monkeypatch)
    seen = _seen_at_send(ctx, client, run_id)

    (poll,) = submit_step(ctx, run_id, 0, hint)

    assert hint == {"app_id": "app"}
    assert sent == ["SUBMITTING", "SUBMITTED"]  # claim + mark, then the job id: two writes
    assert seen == [("SUBMITTING", True)]  # the send was marked in flight before it went
    run = ctx.ledger.require(run_id)
    assert run.state is RunState.SUBMITTED
    assert not run["submit_inflight"]
    assert [s for s, _ in run.history()] == ["QUEUED", "SUBMITTING", "SUBMITTED"]
    assert poll.task == task_names.POLL
    assert client.calls == ["get_app", "run"]  # the warm-up's get_app only


def test_a_hinted_submit_without_the_app_at_hand_claims_then_marks(
    harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, client, _ = harness(app_cache_ttl=60)
    run_id = new_run(ctx)
    sent = _counting_cas(ctx, monkeypatch)
    seen = _seen_at_send(ctx, client, run_id)

    submit_step(ctx, run_id, 0, submit_hint(ctx.ledger.require(run_id)))

    # The app had to be fetched after the claim: a crash there must not look like a send.
    assert sent == ["-", "SUBMITTING", "SUBMITTED"]
    assert seen == [("SUBMITTING", True)]
    assert ctx.ledger.require(run_id).state is RunState.SUBMITTED
    assert client.calls == ["get_app", "run"]


def test_a_hinted_submit_with_bad_inputs_is_rejected_without_an_in_flight_mark(
    harness: Callable[..., Harness],
) -> None:
    ctx, client, _ = harness(app_cache_ttl=60)
    fetch_app(ctx, "app")
    run_id = new_run(ctx, inputs={"topic": "t", "bogus": 1})

    assert submit_step(ctx, run_id, 0, submit_hint(ctx.ledger.require(run_id))) == []

    run = ctx.ledger.require(run_id)
    assert run.state is RunState.REJECTED
    assert "unknown input 'bogus'" in run["error"]
    assert not run["submit_inflight"]
    assert "run" not in client.calls


def test_a_hinted_submit_while_the_breaker_is_open_waits_without_an_in_flight_mark(
    harness: Callable[..., Harness],
) -> None:
    ctx, client, _ = harness(app_cache_ttl=60)
    fetch_app(ctx, "app")
    breaker.record_overage(ctx, OVERAGE)
    run_id = new_run(ctx)

    (again,) = submit_step(ctx, run_id, 0, submit_hint(ctx.ledger.require(run_id)))

    run = ctx.ledger.require(run_id)
    assert again.task == task_names.SUBMIT
    assert again.countdown > 0
    assert run.state is RunState.SUBMITTING  # validated: only the send waits
    assert not run["submit_inflight"]
    assert "run" not in client.calls


@pytest.mark.parametrize("mismatch", ["other app", "files"])
def test_a_hint_that_does_not_describe_the_run_is_undone_and_the_run_submits_as_usual(
    harness: Callable[..., Harness], tmp_path: Any, mismatch: str
) -> None:
    ctx, client, clock = harness(app_cache_ttl=60)
    fetch_app(ctx, "app")
    ctx.apps["other"] = (clock.now + 60, App(id="other"))
    if mismatch == "files":
        f = tmp_path / "d.pdf"
        f.write_bytes(b"%PDF")
        run_id = new_run(ctx, files={"doc": str(f)})
        hint = {"app_id": "app"}
    else:
        run_id = new_run(ctx)
        hint = {"app_id": "other"}
    seen = _seen_at_send(ctx, client, run_id)

    (poll,) = submit_step(ctx, run_id, 0, hint)

    run = ctx.ledger.require(run_id)
    assert poll.task == task_names.POLL
    assert run.state is RunState.SUBMITTED
    assert not run["submit_inflight"]
    assert seen == [("SUBMITTING", True)]
    assert client.calls.count("run") == 1
    assert ("upload" in client.calls) == (mismatch == "files")


@pytest.mark.parametrize("hint", [None, {}, {"app_id": 3}, ["app"], "app"])
def test_a_submit_hint_of_the_wrong_shape_is_ignored(
    harness: Callable[..., Harness], hint: Any
) -> None:
    ctx, client, _ = harness(app_cache_ttl=60)
    fetch_app(ctx, "app")
    run_id = new_run(ctx)

    (poll,) = submit_step(ctx, run_id, 0, hint)

    assert poll.task == task_names.POLL
    assert ctx.ledger.require(run_id).state is RunState.SUBMITTED
    assert client.calls == ["get_app", "run"]


def test_a_duplicate_hinted_submit_is_a_no_op(harness: Callable[..., Harness]) -> None:
    ctx, client, _ = harness(app_cache_ttl=60)
    fetch_app(ctx, "app")
    run_id = new_run(ctx)
    hint = submit_hint(ctx.ledger.require(run_id))
    submit_step(ctx, run_id, 0, hint)

    assert submit_step(ctx, run_id, 0, hint) == []
    assert client.calls.count("run") == 1


def test_a_worker_lost_after_a_hinted_claim_leaves_the_run_ambiguous_not_resent(
    harness: Callable[..., Harness],
) -> None:
    ctx, client, clock = harness(sweep_grace=30.0, app_cache_ttl=60)
    fetch_app(ctx, "app")
    run_id = new_run(ctx)

    def dies(app_id: str, inputs: dict[str, Any], **_: Any) -> SubmittedJob:
        client.calls.append("run")
        raise KeyboardInterrupt  # the process dies as the request goes out

    client.run_workflow = dies  # type: ignore[method-assign]

    with pytest.raises(KeyboardInterrupt):
        submit_step(ctx, run_id, 0, submit_hint(ctx.ledger.require(run_id)))
    clock.now += 1000
    report = sweep(ctx)

    assert report.ambiguous == [run_id]
    assert ctx.ledger.require(run_id).state is RunState.AMBIGUOUS
    assert client.calls.count("run") == 1


def test_only_runs_without_files_get_a_submit_hint() -> None:
    assert submit_hint({"app_id": "a", "files": {}}) == {"app_id": "a"}
    assert submit_hint({"app_id": "a", "files": {"doc": "/x.pdf"}}) is None
    assert submit_hint({"files": {}}) is None
