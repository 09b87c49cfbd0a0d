"""`hatz-worker doctor` against real private Redis servers (well and badly
configured) and the fake Hatz server with the right and a wrong API key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from config import Settings
from tests.conftest import API_KEY, make_settings
from worker.cli.main import main
from worker.context import redis_from_url
from worker.fake_hatz import FakeHatz
from worker.local.stack import LocalRedis, free_port
from worker.ops.doctor import Check, Level, check_timing, exit_code, run_doctor

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeHatz]:
    with FakeHatz(api_key=API_KEY, port=0) as server:
        yield server


@pytest.fixture(scope="module")
def good_redis() -> Iterator[LocalRedis]:
    with LocalRedis(appendonly=True) as redis:
        yield redis


@pytest.fixture(scope="module")
def bad_redis() -> Iterator[LocalRedis]:
    with LocalRedis(appendonly=False, extra_args=["--maxmemory-policy", "allkeys-lru"]) as redis:
        yield redis


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_a_well_configured_deployment_has_no_failure(
    good_redis: LocalRedis, fake: FakeHatz
) -> None:
    settings = make_settings(redis_url=good_redis.url, base_url=fake.url)

    checks = _by_name(run_doctor(settings))

    assert checks["settings"].level is Level.OK
    assert checks["redis"].level is Level.OK
    assert checks["redis persistence"].level is Level.OK
    assert checks["redis eviction"].level is Level.OK
    assert checks["visibility timeout"].level is Level.OK
    assert checks["hatz api"].level is Level.OK
    # No worker or beat runs in this test: warned, not failed.
    assert checks["workers"].level is Level.WARN
    assert exit_code(list(checks.values())) == 0


def test_redis_without_aof_and_with_eviction_is_warned_about(
    bad_redis: LocalRedis, fake: FakeHatz
) -> None:
    settings = make_settings(redis_url=bad_redis.url, base_url=fake.url)

    checks = _by_name(run_doctor(settings))

    assert checks["redis persistence"].level is Level.WARN
    assert "appendonly no" in checks["redis persistence"].message
    assert checks["redis eviction"].level is Level.WARN
    assert "allkeys-lru" in checks["redis eviction"].message


def test_a_wrong_api_key_fails_with_api_key_rejected(
    good_redis: LocalRedis, fake: FakeHatz
) -> None:
    settings = make_settings(redis_url=good_redis.url, base_url=fake.url, api_key="wrong-key-123")

    checks = run_doctor(settings)

    api = _by_name(checks)["hatz api"]
    assert api.level is Level.FAIL
    assert "API key rejected" in api.message
    assert exit_code(checks) == 1


def test_unreachable_redis_fails(fake: FakeHatz) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", base_url=fake.url)

    checks = _by_name(run_doctor(settings, redis_client=redis_from_url(settings.redis_url)))

    assert checks["redis"].level is Level.FAIL
    assert "cannot reach Redis" in checks["redis"].message


def test_visibility_timeout_shorter_than_twice_the_longest_countdown_fails() -> None:
    valid = Settings(_env_file=None)  # longest countdown: 60 s + 10 % jitter
    # Settings refuse this at load time; doctor still reports it for any Settings it is given.
    too_short = valid.model_copy(update={"visibility_timeout": 100})

    (check,) = check_timing(too_short)

    assert check.level is Level.FAIL
    assert "redelivered as duplicates" in check.message


def test_cli_prints_a_report_and_exits_1_on_a_failure(
    bad_redis: LocalRedis, fake: FakeHatz, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(redis_url=bad_redis.url, base_url=fake.url, api_key="wrong-key-123")

    code = main(["doctor"], settings=settings)

    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL  hatz api" in out
    assert "WARN  redis persistence" in out
    assert "failed" in out.splitlines()[-1]
