"""``hatz-worker doctor``: check a deployment's settings, Redis, timing and Hatz API access.

Each check is a plain function returning :class:`Check` values (ok, warn or
fail, with a message saying what to do); :func:`run_doctor` runs them all and
the CLI prints the report and exits non-zero on any fail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import redis

from config import ConfigError, Settings, load_settings
from worker.context import redis_from_settings
from worker.errors import HatzAuthError, HatzError, HatzTransportError
from worker.hatz.client import HatzClient
from worker.ops import health, queues
from worker.store.keys import Keys


class Level(StrEnum):
    """How bad a finding is."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    """One finding: which check, how bad, and what it means."""

    name: str
    level: Level
    message: str


def _ok(name: str, message: str) -> Check:
    return Check(name, Level.OK, message)


def _warn(name: str, message: str) -> Check:
    return Check(name, Level.WARN, message)


def _fail(name: str, message: str) -> Check:
    return Check(name, Level.FAIL, message)


def check_settings(load: Callable[[], Settings] = load_settings) -> tuple[Settings | None, Check]:
    """Load the settings; a fail names every bad variable."""
    try:
        settings = load()
    except ConfigError as exc:
        return None, _fail("settings", str(exc))
    if not settings.api_key.get_secret_value():
        return settings, _fail("settings", "HATZ_API_KEY is not set")
    return settings, _ok("settings", "valid")


def check_redis(client: redis.Redis) -> list[Check]:
    """Reachable, and configured not to lose data: AOF on, no eviction."""
    try:
        info = client.info("server")
    except redis.RedisError as exc:
        return [_fail("redis", f"cannot reach Redis: {exc}")]
    checks = [_ok("redis", f"reachable (Redis {info.get('redis_version', '?')})")]
    try:
        config = {
            **client.config_get("appendonly"),
            **client.config_get("maxmemory-policy"),
        }
    except redis.RedisError as exc:
        # Managed Redis often disables CONFIG; say so rather than guess.
        return [*checks, _warn("redis persistence", f"cannot read CONFIG ({exc}); check by hand")]
    if config.get("appendonly") == "yes":
        checks.append(_ok("redis persistence", "appendonly yes"))
    else:
        checks.append(
            _warn(
                "redis persistence",
                "appendonly no: a Redis restart loses queued tasks and recent ledger writes "
                "(set appendonly yes, appendfsync everysec)",
            )
        )
    policy = config.get("maxmemory-policy", "")
    if policy == "noeviction":
        checks.append(_ok("redis eviction", "maxmemory-policy noeviction"))
    else:
        checks.append(
            _warn(
                "redis eviction",
                f"maxmemory-policy {policy}: under memory pressure Redis deletes keys, "
                "i.e. queued tasks and run records (set noeviction)",
            )
        )
    return checks


def check_timing(settings: Settings) -> list[Check]:
    """The visibility timeout must outlast every countdown (else tasks run twice)."""
    longest = settings.longest_countdown()
    vt = settings.visibility_timeout
    if vt < 2 * longest:
        return [
            _fail(
                "visibility timeout",
                f"HATZ_VISIBILITY_TIMEOUT {vt} s < 2 x the longest countdown ({longest:g} s): "
                "countdown tasks would be redelivered as duplicates",
            )
        ]
    return [
        _ok(
            "visibility timeout",
            f"{vt} s >= 2 x the longest countdown ({longest:g} s); longer delays wait in the "
            f"ledger (over {settings.max_countdown():g} s)",
        )
    ]


def check_signing(settings: Settings) -> list[Check]:
    """Callbacks should be signed, or receivers cannot tell them from forgeries."""
    if not settings.webhook_secrets():
        return [
            _warn(
                "webhook signing",
                "HATZ_WEBHOOK_SECRET is not set: callbacks go out unsigned",
            )
        ]
    count = len(settings.webhook_secrets())
    return [_ok("webhook signing", f"{count} active secret(s)")]


def check_api(client: HatzClient, base_url: str) -> list[Check]:
    """One cheap authenticated call (``GET /app/list?limit=1``)."""
    try:
        client.list_apps(limit=1)
    except HatzAuthError as exc:
        return [_fail("hatz api", f"API key rejected (HTTP {exc.status_code}): check HATZ_API_KEY")]
    except HatzTransportError as exc:
        return [_fail("hatz api", f"cannot reach {base_url}: {exc}")]
    except HatzError as exc:
        return [_fail("hatz api", f"{base_url} answered with an error: {exc}")]
    return [_ok("hatz api", f"{base_url} reachable, API key accepted")]


def check_processes(client: redis.Redis, keys: Keys) -> list[Check]:
    """Workers and beat alive (heartbeats); warnings only: doctor may run before they start."""
    try:
        beats = health.all_heartbeats(client, keys)
    except redis.RedisError:
        return []
    workers = [b for b in beats if b.name.startswith("worker:")]
    checks = []
    if workers:
        names = ", ".join(b.name.removeprefix("worker:") for b in workers)
        checks.append(_ok("workers", f"{len(workers)} alive: {names}"))
    else:
        checks.append(_warn("workers", "no worker heartbeat: is `celery -A worker worker` up?"))
    if any(b.name == health.BEAT for b in beats):
        checks.append(_ok("beat", "alive"))
    else:
        checks.append(_warn("beat", "no beat heartbeat: the sweeper only runs under beat"))
    return checks


def check_queues(client: redis.Redis, keys: Keys) -> list[Check]:
    """Messages waiting in queues that no live worker consumes: they would wait forever."""
    try:
        waiting = queues.unconsumed(client, keys)
    except redis.RedisError:
        return []
    if not waiting:
        return [_ok("queues", "no messages wait in a queue that no worker consumes")]
    listed = ", ".join(f"{q.name} ({q.messages} message(s))" for q in waiting)
    return [
        _warn(
            "queues",
            f"messages wait in queues no live worker consumes: {listed}; start a worker "
            "for them (celery -A worker worker -Q NAME) or send to a hatz.* queue",
        )
    ]


def run_doctor(
    settings: Settings | None = None,
    *,
    redis_client: redis.Redis | None = None,
    hatz_client: HatzClient | None = None,
) -> list[Check]:
    """Every check, in order; later checks are skipped when the settings are invalid."""
    if settings is None:
        settings, first = check_settings()
    else:
        given = settings
        settings, first = check_settings(lambda: given)
    checks = [first]
    if settings is None:
        return checks
    checks += check_timing(settings)
    checks += check_signing(settings)
    r = redis_client if redis_client is not None else redis_from_settings(settings)
    client = hatz_client or HatzClient.from_settings(settings)
    try:
        redis_checks = check_redis(r)
        checks += redis_checks
        if redis_checks[0].level is not Level.FAIL:
            checks += check_processes(r, Keys(settings.key_prefix))
            checks += check_queues(r, Keys(settings.key_prefix))
        checks += check_api(client, str(settings.base_url))
    finally:
        if hatz_client is None:
            client.close()
        if redis_client is None:
            r.close()
    return checks


def exit_code(checks: list[Check]) -> int:
    """1 if any check failed, else 0 (warnings do not fail)."""
    return 1 if any(c.level is Level.FAIL for c in checks) else 0
