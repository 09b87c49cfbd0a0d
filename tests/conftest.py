"""Shared fixtures. Settings are always passed explicitly; HATZ_* variables of the
surrounding shell never leak into tests."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest

from config import Settings
from worker.context import Context
from worker.hatz.client import HatzClient

API_KEY = "test-key-0123456789"
#: HATZ_FILE_ROOTS for tests and their worker processes: tests write their input
#: files under the temporary directory (tmp_path).
FILE_ROOTS = f".,{tempfile.gettempdir()}"

for _name in [n for n in os.environ if n.startswith("HATZ_")]:
    del os.environ[_name]


def make_settings(**overrides: Any) -> Settings:
    """Settings for tests: fast polling, no .env file, explicit values only."""
    values: dict[str, Any] = {
        "api_key": API_KEY,
        "base_url": "http://127.0.0.1:9/v1",
        "redis_url": "redis://127.0.0.1:6379/15",
        "poll_initial_delay": 0.05,
        "poll_interval": 0.05,
        "poll_max_interval": 0.2,
        "poll_backoff": 1.0,
        "http_connect_timeout": 2.0,
        "http_read_timeout": 2.0,
        "http_retries": 2,
        "http_retry_base_delay": 0.01,
        "http_retry_max_delay": 0.05,
        "overage_pause": 0.2,
        "visibility_timeout": 600,
        "app_cache_ttl": 0,
        "callback_allow_private": True,
        "callback_retry_delays": "0,0.05,0.1",
        "file_roots": FILE_ROOTS,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def settings_factory() -> Callable[..., Settings]:
    """Build test settings with overrides."""
    return make_settings


@pytest.fixture
def fake_redis() -> fakeredis.FakeRedis:
    """An in-memory Redis for unit tests (Lua supported)."""
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def context_factory(
    fake_redis: fakeredis.FakeRedis,
) -> Iterator[Callable[..., Context]]:
    """Build a Context on fakeredis with explicit settings."""
    made: list[Context] = []

    def build(settings: Settings | None = None, **overrides: Any) -> Context:
        s = settings or make_settings(**overrides)
        ctx = Context.from_settings(s, redis_client=fake_redis, client=HatzClient.from_settings(s))
        made.append(ctx)
        return ctx

    yield build
    for ctx in made:
        ctx.client.close()
