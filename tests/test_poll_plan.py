"""The learned poll schedule: the planner's plain functions, the duration history, and
the poll step following a planned window (fakeredis, a scripted Hatz client)."""

from __future__ import annotations

import itertools
import random

import fakeredis
import pytest

from tests.conftest import make_settings
from tests.test_pipeline_unit import Clock, StubClient, job
from worker import task_names
from worker.context import Context
from worker.hatz.types import Job
from worker.runs.poll import poll_step
from worker.runs.poll_plan import (
    MIN_HISTORY,
    Window,
    fixed_next,
    next_poll,
    plan_window,
    poll_times,
    replay,
    window_for,
)
from worker.runs.submit import submit_step
from worker.store.durations import HISTORY_SIZE, Duration, recent_durations, record_duration
from worker.store.keys import Keys
from worker.store.ledger import RunState

# Today's defaults: first poll at 2 s, then 5 s, x1.5 while unchanged, up to 60 s.
SETTINGS = make_settings(
    poll_initial_delay=2.0,
    poll_interval=5.0,
    poll_backoff=1.5,
    poll_max_interval=60.0,
    poll_target_latency=0.5,
    poll_jitter=0.0,
    countdown_horizon=0.0,  # every poll a countdown (parking has its own tests)
)


def stable(n: int, mean: float = 60.0, sd: float = 0.3, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mean, sd) for _ in range(n)]


# --- the planner ---------------------------------------------------------------------------


@pytest.mark.parametrize("history", [[], stable(MIN_HISTORY - 1)])
def test_without_enough_history_the_schedule_is_todays(history: list[float]) -> None:
    assert plan_window(history, SETTINGS) is None


def test_the_knob_at_zero_turns_learning_off() -> None:
    assert plan_window(stable(20), make_settings(poll_target_latency=0.0)) is None


def test_a_stable_app_gets_a_tight_window_around_its_usual_duration() -> None:
    history = stable(20)

    window = plan_window(history, SETTINGS)

    assert window is not None
    assert min(history) <= window.start < 60.0 < window.end <= max(history)
    assert window.spacing == 0.5
    # Replayed over new runs of the same app: few calls, detection within the spacing.
    learned = replay(sorted(stable(500, seed=2)), window, SETTINGS)
    fixed = replay(sorted(stable(500, seed=2)), None, SETTINGS)
    assert learned.calls <= 3.5 < fixed.calls
    assert learned.p90_latency <= 1.0 < fixed.p90_latency


def test_a_bimodal_app_gets_one_span_per_mode_and_jumps_the_gap() -> None:
    rng = random.Random(5)
    history = [rng.gauss(20.0, 0.5) if i % 2 else rng.gauss(80.0, 1.0) for i in range(20)]

    window = plan_window(history, SETTINGS)

    assert window is not None
    ((a1, b1), (a2, b2)) = window.spans
    assert 18 < a1 < b1 < 22 < 77 < a2 < b2 < 83
    test = [
        rng.gauss(20.0, 0.5) if rng.random() < 0.5 else rng.gauss(80.0, 1.0) for _ in range(500)
    ]
    learned, fixed = replay(sorted(test), window, SETTINGS), replay(sorted(test), None, SETTINGS)
    assert learned.calls < fixed.calls
    assert learned.p90_latency < fixed.p90_latency


def test_erratic_durations_fall_back_to_todays_schedule() -> None:
    rng = random.Random(3)
    history = [rng.choice([5.0, 40.0, 90.0, 200.0]) * rng.uniform(0.5, 1.5) for _ in range(30)]

    assert plan_window(history, SETTINGS) is None


def test_a_window_is_kept_only_when_it_costs_no_more_calls_than_today() -> None:
    rng = random.Random(4)
    for _ in range(50):
        history = [rng.lognormvariate(3, rng.uniform(0.05, 1.5)) for _ in range(20)]
        window = plan_window(history, SETTINGS)
        if window is None:
            continue
        learned, fixed = (
            replay(sorted(history), window, SETTINGS),
            replay(sorted(history), None, SETTINGS),
        )
        assert learned.calls <= fixed.calls
        assert learned.p90_latency <= fixed.p90_latency


def test_polls_jump_to_the_window_then_follow_its_spacing() -> None:
    window = Window(((58.0, 61.0),), 0.5)

    times = poll_times(62.0, window, SETTINGS)

    assert times[0] == 2.0  # the first poll as always: a failed start is seen early
    assert times[1] == pytest.approx(58.5)  # one jump (under the 60 s countdown cap)
    assert times[2:] == pytest.approx([59.0, 59.5, 60.0, 60.5, 61.0, 62.0])


def test_a_jump_longer_than_the_longest_countdown_is_cut_into_hops() -> None:
    window = Window(((200.0, 201.0),), 0.5)

    times = poll_times(200.4, window, SETTINGS)

    assert times == pytest.approx([2.0, 62.0, 122.0, 182.0, 200.5])


def test_a_run_far_past_its_prediction_goes_back_to_todays_backoff() -> None:
    window = Window(((58.0, 61.0),), 0.5)

    # Just past the window: the spacing doubles up to HATZ_POLL_INTERVAL...
    assert next_poll(61.2, 0.5, window, SETTINGS) == (1.0, 1.0)
    assert next_poll(66.2, 4.0, window, SETTINGS) == (5.0, 5.0)
    # ...then today's schedule takes over (None), growing by the backoff.
    assert next_poll(600.0, 5.0, window, SETTINGS) is None
    times = poll_times(600.0, window, SETTINGS)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[-1] == SETTINGS.poll_max_interval
    assert fixed_next(5.0, SETTINGS) == 7.5


def test_a_window_round_trips_through_its_record_field() -> None:
    window = Window(((12.25, 13.5), (20.0, 21.0)), 0.5)

    assert Window.decode(window.encode()) == window
    for bad in (None, "", "x", "1,2", "3,2,0.5", "1,2,0", "1,inf,1", "1,2,3,0.5", 7):
        assert Window.decode(bad) is None


# --- the duration history -----------------------------------------------------------------


def test_the_history_keeps_the_newest_durations_and_expires(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    keys = Keys("t")
    for i in range(HISTORY_SIZE + 10):
        assert record_duration(fake_redis, keys, "app", Duration(float(i), 0.25), ttl=100)

    history = recent_durations(fake_redis, keys, "app")

    assert len(history) == HISTORY_SIZE
    assert history[0] == Duration(float(HISTORY_SIZE + 9), 0.25)  # newest first
    assert 0 < fake_redis.ttl(keys.durations("app")) <= 100


def test_unreadable_history_entries_are_skipped(fake_redis: fakeredis.FakeRedis) -> None:
    keys = Keys("t")
    fake_redis.lpush(keys.durations("app"), "12.5", "junk", "nan", "-1", "3.0:x", "4.0:0.5")

    assert recent_durations(fake_redis, keys, "app") == [Duration(4.0, 0.5), Duration(12.5)]


# --- the pipeline following the plan --------------------------------------------------------


def finished(seconds: float) -> Job:
    return Job.model_validate(
        {
            "job_id": "job-1",
            "status": "complete",
            "number_of_steps": 1,
            "start_time": 1_000_000,
            "end_time": 1_000_000 + int(seconds * 1000),
            "step_outputs": [{"step_id": "s1", "status": "complete", "start_time": 1_000_250}],
        }
    )


def test_a_completed_run_adds_its_duration_by_the_apis_clock(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    clock, client = Clock(), StubClient()
    ctx = Context.from_settings(
        SETTINGS,
        redis_client=fake_redis,
        client=client,  # type: ignore[arg-type]
        clock=clock,
    )
    run_id, _ = ctx.ledger.create({"app_id": "app", "inputs": {"topic": "t"}})
    (first,) = submit_step(ctx, run_id, 0)
    client.jobs = [finished(42.5)]

    poll_step(ctx, run_id, int(first.args[1]), first.args[2])

    assert ctx.ledger.require(run_id).state is RunState.COMPLETED
    assert recent_durations(fake_redis, ctx.keys, "app") == [Duration(42.5, 0.25)]


def test_a_run_of_a_stable_app_is_polled_at_its_predicted_completion(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    clock, client = Clock(), StubClient()
    ctx = Context.from_settings(
        SETTINGS,
        redis_client=fake_redis,
        client=client,  # type: ignore[arg-type]
        clock=clock,
    )
    for seconds in stable(20):
        record_duration(fake_redis, ctx.keys, "app", Duration(seconds), ttl=100)
    window = window_for(ctx, "app")
    assert window is not None
    run_id, _ = ctx.ledger.create({"app_id": "app", "inputs": {"topic": "t"}})
    (step,) = submit_step(ctx, run_id, 0)
    assert step.countdown == 2.0
    client.jobs = [job("running"), job("running"), finished(60.0)]
    countdowns = []

    while step.task == task_names.POLL:
        clock.now += float(step.countdown or 0)
        countdowns.append(step.countdown)
        steps = poll_step(ctx, run_id, int(step.args[1]), step.args[2])
        if not steps:
            break
        (step,) = steps

    assert ctx.ledger.require(run_id).state is RunState.COMPLETED
    assert client.calls.count("get_job") == 3
    assert countdowns[1] == pytest.approx(window.start + window.spacing - 2.0)
    assert countdowns[2] == pytest.approx(window.spacing)


def test_a_hint_carries_the_window_only_when_the_run_has_one() -> None:
    from worker.runs.poll_hints import HINT_FIELDS, poll_hint, record_from_hint

    record = {"job_id": "j", "state": "RUNNING", "poll_window": "1.000,2.000,0.500"}

    hint = poll_hint(record)

    assert len(hint) == len(HINT_FIELDS) + 1
    assert record_from_hint("r", 1, hint)["poll_window"] == "1.000,2.000,0.500"  # type: ignore[index]
    assert len(poll_hint({"job_id": "j", "state": "RUNNING"})) == len(HINT_FIELDS)
    assert record_from_hint("r", 1, [*hint[:-1], 7]) is None  # a window of the wrong type


def test_a_parked_learned_poll_keeps_its_window_when_the_dispatcher_publishes_it(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    from worker.runs.dispatcher import dispatch_due
    from worker.store.outbox import Next

    clock, client = Clock(), StubClient()
    settings = make_settings(**{**SETTINGS.model_dump(), "countdown_horizon": 2.0})
    ctx = Context.from_settings(
        settings,
        redis_client=fake_redis,
        client=client,  # type: ignore[arg-type]
        clock=clock,
    )
    for seconds in stable(20):
        record_duration(fake_redis, ctx.keys, "app", Duration(seconds), ttl=100)
    run_id, _ = ctx.ledger.create({"app_id": "app", "inputs": {"topic": "t"}})
    (first,) = submit_step(ctx, run_id, 0)
    clock.now += 2.0
    assert poll_step(ctx, run_id, int(first.args[1]), first.args[2]) == []  # the jump: parked
    sent: list[Next] = []
    clock.now = float(ctx.ledger.require(run_id)["due_at"]) - 1.0

    assert dispatch_due(ctx, sent.extend) == 1

    (step,) = sent
    assert step.args[2][-1] == ctx.ledger.require(run_id)["poll_window"]  # the hint's window
    clock.now += float(step.countdown or 0)
    (after,) = poll_step(ctx, run_id, int(step.args[1]), step.args[2])
    assert after.countdown == pytest.approx(0.5)  # inside the window: its spacing


def test_a_learned_run_rearmed_by_the_sweeper_keeps_its_window(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    from worker.runs.sweeper import sweep

    clock, client = Clock(), StubClient()
    settings = make_settings(**{**SETTINGS.model_dump(), "sweep_grace": 5.0})
    ctx = Context.from_settings(
        settings,
        redis_client=fake_redis,
        client=client,  # type: ignore[arg-type]
        clock=clock,
    )
    for seconds in stable(20):
        record_duration(fake_redis, ctx.keys, "app", Duration(seconds), ttl=100)
    run_id, _ = ctx.ledger.create({"app_id": "app", "inputs": {"topic": "t"}})
    submit_step(ctx, run_id, 0)
    clock.now += 30.0  # the first poll's message was lost

    (rearmed,) = sweep(ctx).steps
    (step,) = poll_step(ctx, run_id, int(rearmed.args[1]), *rearmed.args[2:])

    # The re-armed poll read the record: its next poll is still the jump to the window.
    window = Window.decode(ctx.ledger.require(run_id)["poll_window"])
    assert window is not None
    assert step.countdown == pytest.approx(window.start + window.spacing - 30.0)


@pytest.mark.parametrize("backoff", [1.0, 1.5])
def test_the_replay_counts_long_runs_at_once_as_the_polls_would_add_up(backoff: float) -> None:
    from worker.runs.poll_plan import seen_at

    settings = make_settings(
        poll_initial_delay=2.0, poll_interval=5.0, poll_backoff=backoff, poll_max_interval=60.0
    )
    rng = random.Random(6)
    windows = [None, Window(((58.0, 61.0),), 0.5), Window(((300.0, 320.0), (900.0, 960.0)), 2.0)]
    for _ in range(300):
        duration = rng.choice([rng.uniform(0, 100), rng.uniform(0, 2000)])
        window = rng.choice(windows)

        times = poll_times(duration, window, settings)

        calls, last = seen_at(duration, window, settings)
        assert calls == len(times)
        assert last == pytest.approx(times[-1])
