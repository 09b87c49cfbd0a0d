"""Unit tests of the operations code: log redaction and JSON lines, the metrics
collector, heartbeats, and Sentinel settings (fakeredis; no processes)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import fakeredis
import pytest

from config import ConfigError, load_settings
from tests.conftest import make_settings
from worker.context import sentinel_addresses
from worker.ops import health, log_context
from worker.ops.logs import configure_logging
from worker.ops.metrics import HatzCollector, Metrics, endpoint_name
from worker.ops.redaction import Redactor
from worker.store.keys import Keys
from worker.store.ledger import Ledger
from worker.taskqueue.config import celery_config

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
API_KEY = "test-key-0123456789"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure_logging(
        make_settings(log_json=True, webhook_secret=SECRET, api_key=API_KEY), stream=stream
    )
    try:
        yield stream
    finally:
        logging.getLogger().removeHandler(handler)
        log_context.clear()


def test_redactor_masks_keys_secrets_and_url_query_strings() -> None:
    redact = Redactor([API_KEY, SECRET])
    url = "https://files.example/doc.pdf?X-Amz-Expires=60&X-Amz-Signature=abc123"

    text = redact(f"key={API_KEY} secret={SECRET} url={url} header X-API-Key: other-key-9")

    assert API_KEY not in text
    assert "MfKQ9r8G" not in text
    assert "abc123" not in text
    assert "other-key-9" not in text
    assert "https://files.example/doc.pdf?[REDACTED]" in text


def test_json_lines_carry_the_bound_run_identifiers_and_are_redacted(
    captured: io.StringIO,
) -> None:
    log_context.bind(run_id="r1", job_id="j1", app_id="a1", task="hatz.poll")

    logging.getLogger("worker.test").warning("got %s from %s", API_KEY, "https://x/y?sig=1")

    entry = json.loads(captured.getvalue().splitlines()[-1])
    assert entry["run_id"] == "r1"
    assert entry["job_id"] == "j1"
    assert entry["app_id"] == "a1"
    assert entry["task"] == "hatz.poll"
    assert entry["level"] == "WARNING"
    assert API_KEY not in entry["message"]
    assert "sig=1" not in entry["message"]


def test_exception_text_is_redacted_too(captured: io.StringIO) -> None:
    try:
        raise ValueError(f"bad secret {SECRET}")
    except ValueError:
        logging.getLogger("worker.test").exception("failed")

    assert "MfKQ9r8G" not in captured.getvalue()
    assert "ValueError" in captured.getvalue()


def test_endpoint_labels_never_contain_ids() -> None:
    assert endpoint_name("GET", "/workflows/abc-123") == "status"
    assert endpoint_name("POST", "/workflows/run") == "run"
    assert endpoint_name("GET", "/app/xyz/") == "app_get"
    assert endpoint_name("POST", "/app/xyz/query") == "app_query"


def _samples(collector: HatzCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in collector.collect()
        for s in family.samples
    }


def test_collector_exports_counters_histogram_and_breaker(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    keys = Keys("t")
    metrics = Metrics(fake_redis, keys)
    metrics.api_call("POST", "/workflows/run", 200, None, 0.1)
    metrics.api_call("GET", "/workflows/j1", 503, "HatzServerError", 0.1)
    metrics.poll_lateness(0.3)
    metrics.poll_lateness(400.0)
    metrics.callback_attempt(503)
    metrics.callback_attempt(None)
    fake_redis.hset(keys.breaker, mapping={"state": "open"})

    samples = _samples(HatzCollector(fake_redis, keys))

    assert samples[("hatz_submits_total", (("outcome", "ok"),))] == 1
    assert samples[("hatz_polls_total", (("outcome", "HatzServerError"),))] == 1
    assert samples[("hatz_poll_lateness_seconds_bucket", (("le", "0.5"),))] == 1
    assert samples[("hatz_poll_lateness_seconds_bucket", (("le", "300.0"),))] == 1
    assert samples[("hatz_poll_lateness_seconds_bucket", (("le", "+Inf"),))] == 2
    assert samples[("hatz_poll_lateness_seconds_count", ())] == 2
    assert samples[("hatz_callback_attempts_total", (("outcome", "5xx"),))] == 1
    assert samples[("hatz_callback_attempts_total", (("outcome", "error"),))] == 1
    assert samples[("hatz_breaker_open", ())] == 1
    assert samples[("hatz_polls_parked", ())] == 0
    fake_redis.zadd(keys.parked, {"r1": 1.0, "r2": 2.0})
    assert _samples(HatzCollector(fake_redis, keys))[("hatz_polls_parked", ())] == 2


def test_buffered_counters_ride_on_the_next_compare_and_set_and_flush_writes_the_rest(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    keys = Keys("t")
    metrics = Metrics(fake_redis, keys, buffered=True)
    ledger = Ledger(fake_redis, keys=keys)
    ledger.counters = metrics.drain
    run_id, _ = ledger.create({"app_id": "a"})
    metrics.api_call("GET", "/workflows/j1", 200, None, 0.1)
    metrics.poll_lateness(0.3)
    metrics.poll_lateness(0.25)
    metrics.poll_lateness(0.0)  # a float sum stays a float: HINCRBY on "0.55" would fail

    assert fake_redis.hget(keys.metrics, "api|status|ok") is None  # nothing sent yet
    # A compare-and-set that fails (wrong token) still carries the counters.
    assert not ledger.cas(run_id, states=None, token=7, fields={"x": 1})
    raw = fake_redis.hgetall(keys.metrics)
    assert raw["api|status|ok"] == "1"
    assert raw["lateness|count"] == "3"
    assert float(raw["lateness|sum"]) == pytest.approx(0.55)
    assert raw["lateness|bucket|0.5"] == "1"
    assert raw["lateness|bucket|0.1"] == "1"
    assert raw["lateness|bucket|0.25"] == "1"
    assert raw["state|QUEUED"] == "1"

    # A counter Redis cannot add to never fails the compare-and-set it rides on.
    fake_redis.hset(keys.metrics, "callback|2xx", "not a number")
    metrics.callback_attempt(200)
    assert ledger.cas(run_id, states=None, fields={"x": 2})
    assert fake_redis.hget(keys.run(run_id), "x") == "2"
    fake_redis.hdel(keys.metrics, "callback|2xx")

    metrics.callback_attempt(503)
    metrics.flush()
    metrics.flush()  # nothing left: no double count
    assert fake_redis.hget(keys.metrics, "callback|5xx") == "1"
    samples = _samples(HatzCollector(fake_redis, keys))
    assert samples[("hatz_polls_total", (("outcome", "ok"),))] == 1
    assert samples[("hatz_poll_lateness_seconds_count", ())] == 3


def test_collector_reports_redis_down_instead_of_failing_the_scrape() -> None:
    server = fakeredis.FakeServer()
    server.connected = False
    client = fakeredis.FakeRedis(server=server)

    samples = _samples(HatzCollector(client, Keys()))

    assert samples == {("hatz_redis_up", ()): 0}


def test_heartbeat_probe_is_fresh_after_a_beat_and_missing_otherwise(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    keys = Keys()
    health.beat(fake_redis, keys, "worker:w1@h", interval=10)

    ok, _ = health.probe(fake_redis, keys, "worker:w1@h", max_age=30)
    missing, message = health.probe(fake_redis, keys, "worker:w2@h", max_age=30)

    assert ok
    assert not missing
    assert "no heartbeat" in message
    assert fake_redis.ttl(keys.heartbeat("worker:w1@h")) > 0


def test_sentinel_urls_need_a_master_name() -> None:
    with pytest.raises(ConfigError, match="HATZ_REDIS_SENTINEL_MASTER"):
        load_settings(_env_file=None, redis_url="sentinel://127.0.0.1:26379/0")


def test_sentinel_master_name_reaches_broker_and_backend_options() -> None:
    settings = make_settings(
        redis_url="sentinel://:pw@10.0.0.1:26379/2;sentinel://10.0.0.2:26380/2",
        redis_sentinel_master="main",
    )

    config = celery_config(settings)

    assert config["broker_transport_options"]["master_name"] == "main"
    assert config["result_backend_transport_options"]["master_name"] == "main"
    assert sentinel_addresses(settings.redis_url) == (
        [("10.0.0.1", 26379), ("10.0.0.2", 26380)],
        2,
        "pw",
    )
