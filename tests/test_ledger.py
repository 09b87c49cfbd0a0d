"""The run ledger's state machine: forward-only compare-and-set, tokens, idempotency."""

from __future__ import annotations

import fakeredis
import pytest

from worker.errors import IdempotencyConflictError, RunNotFoundError
from worker.store.keys import Keys
from worker.store.ledger import (
    ACTIVE_STATES,
    POLLING_STATES,
    PRE_SUBMIT_STATES,
    TERMINAL_STATES,
    Ledger,
    RunState,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(fake_redis: fakeredis.FakeRedis, clock: Clock) -> Ledger:
    return Ledger(fake_redis, keys=Keys("t"), retention=100, idempotency_ttl=50, clock=clock)


def test_create_records_a_queued_run_with_its_fields(ledger: Ledger) -> None:
    run_id, created = ledger.create({"app_id": "a", "inputs": {"topic": "x"}})

    run = ledger.require(run_id)
    assert created
    assert run.state is RunState.QUEUED
    assert run["inputs"] == {"topic": "x"}
    assert run.token == 0
    assert [s for s, _ in run.history()] == ["QUEUED"]


def test_create_returns_the_record_exactly_as_a_read_gives_it(ledger: Ledger) -> None:
    fields = {
        "app_id": "a",
        "inputs": {"topic": "x", "n": 2},
        "metadata": {"k": ["v"]},
        "callback_url": "https://example.test/hook",
        "events": ["run.completed"],
        "is_draft_app": True,
        "client": "alice",
        "run_timeout": 30.5,
        "files": {},
    }
    created = ledger.create(fields, idempotency_key="k", params_fingerprint="f")

    assert created.created
    assert created.run_id == created[0]
    assert created.record == ledger.require(created.run_id)


def test_a_create_that_found_an_existing_run_has_no_record(ledger: Ledger) -> None:
    first = ledger.create({"app_id": "a"}, idempotency_key="k", params_fingerprint="f")

    again = ledger.create({"app_id": "a"}, idempotency_key="k", params_fingerprint="f")

    assert (again.run_id, again.created, again.record) == (first.run_id, False, None)


def test_same_idempotency_key_and_params_returns_the_existing_run(ledger: Ledger) -> None:
    first, _ = ledger.create({"app_id": "a"}, idempotency_key="k", params_fingerprint="f")

    second, created = ledger.create({"app_id": "a"}, idempotency_key="k", params_fingerprint="f")

    assert (second, created) == (first, False)
    assert len(ledger.run_ids()) == 1


def test_same_idempotency_key_with_other_params_is_a_conflict(ledger: Ledger) -> None:
    ledger.create({"app_id": "a"}, idempotency_key="k", params_fingerprint="f1")

    with pytest.raises(IdempotencyConflictError, match="different parameters"):
        ledger.create({"app_id": "b"}, idempotency_key="k", params_fingerprint="f2")


def test_idempotency_key_expires_after_its_ttl(
    ledger: Ledger, fake_redis: fakeredis.FakeRedis
) -> None:
    ledger.create({"app_id": "a"}, idempotency_key="k", params_fingerprint="f")

    assert 0 < fake_redis.ttl("t:idem:k") <= 50


def test_cas_refuses_a_transition_from_a_state_not_allowed(ledger: Ledger) -> None:
    run_id, _ = ledger.create({"app_id": "a"})

    result = ledger.cas(run_id, states=POLLING_STATES, to=RunState.COMPLETED)

    assert not result
    assert result.state_before == "QUEUED"
    assert ledger.require(run_id).state is RunState.QUEUED


def test_terminal_runs_never_move_again(ledger: Ledger) -> None:
    run_id, _ = ledger.create({"app_id": "a"})
    assert ledger.cas(run_id, states=ACTIVE_STATES, to=RunState.FAILED)

    for target in (RunState.COMPLETED, RunState.SUBMITTED, RunState.QUEUED):
        assert not ledger.cas(run_id, states=ACTIVE_STATES, to=target)
    assert ledger.require(run_id).state is RunState.FAILED


def test_claim_bumps_the_token_so_a_duplicate_message_is_stale(ledger: Ledger) -> None:
    run_id, _ = ledger.create({"app_id": "a"})

    first = ledger.claim(run_id, 0, PRE_SUBMIT_STATES, lease=30)
    duplicate = ledger.claim(run_id, 0, PRE_SUBMIT_STATES, lease=30)

    assert first is not None
    assert first.token == 1
    assert duplicate is None


def test_commit_with_an_old_token_is_refused(ledger: Ledger) -> None:
    run_id, _ = ledger.create({"app_id": "a"})
    ledger.claim(run_id, 0, PRE_SUBMIT_STATES, lease=30)

    stale = ledger.cas(run_id, states=ACTIVE_STATES, token=0, to=RunState.SUBMITTED)

    assert not stale
    assert ledger.require(run_id).state is RunState.QUEUED


def test_claim_holds_the_run_on_the_schedule_for_the_lease(ledger: Ledger, clock: Clock) -> None:
    run_id, _ = ledger.create({"app_id": "a"}, first_due_in=5)

    ledger.claim(run_id, 0, PRE_SUBMIT_STATES, lease=30)

    assert ledger.due(clock.now + 29) == []
    assert ledger.due(clock.now + 31) == [(run_id, clock.now + 30)]


def test_terminal_transition_unschedules_and_starts_retention(
    ledger: Ledger, fake_redis: fakeredis.FakeRedis
) -> None:
    run_id, _ = ledger.create({"app_id": "a"})

    ledger.cas(run_id, states=ACTIVE_STATES, to=RunState.COMPLETED)

    assert ledger.due(10**12) == []
    assert 0 < fake_redis.ttl(f"t:run:{run_id}") <= 100


def test_terminal_transition_with_next_at_stays_scheduled_for_its_callback(
    ledger: Ledger,
) -> None:
    run_id, _ = ledger.create({"app_id": "a"})

    ledger.cas(run_id, states=ACTIVE_STATES, to=RunState.COMPLETED, next_at=2_000.0)

    assert ledger.due(10**12) == [(run_id, 2_000.0)]


def test_history_lists_every_state_in_order(ledger: Ledger, clock: Clock) -> None:
    run_id, _ = ledger.create({"app_id": "a"})
    for state in (RunState.SUBMITTING, RunState.SUBMITTED, RunState.RUNNING, RunState.COMPLETED):
        clock.now += 1
        assert ledger.cas(run_id, states=ACTIVE_STATES, to=state)

    history = ledger.require(run_id).history()

    assert [s for s, _ in history] == ["QUEUED", "SUBMITTING", "SUBMITTED", "RUNNING", "COMPLETED"]
    assert [t for _, t in history] == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]


def test_callback_token_is_independent_of_the_run_token(ledger: Ledger) -> None:
    run_id, _ = ledger.create({"app_id": "a"})
    ledger.cas(run_id, states=ACTIVE_STATES, to=RunState.COMPLETED)

    claimed = ledger.claim(run_id, 0, TERMINAL_STATES, lease=10, token_field="callback_token")

    assert claimed is not None
    assert claimed["callback_token"] == 1
    assert claimed.token == 0


def test_require_unknown_run_raises(ledger: Ledger) -> None:
    with pytest.raises(RunNotFoundError):
        ledger.require("nope")


def test_cas_on_unknown_run_is_refused(ledger: Ledger) -> None:
    assert not ledger.cas("nope", states=None, fields={"x": 1})
