"""App definitions (``GET /app/{id}``), cached in Redis for every worker and in this process."""

from __future__ import annotations

from pydantic import TypeAdapter

from worker.context import Context
from worker.hatz.types import App

_APP_CACHE_SIZE = 1024
_APP_LIST = TypeAdapter(list[App])


def cached_app(ctx: Context, app_id: str) -> App | None:
    """``app_id``'s definition if this process holds it and it is still fresh (no I/O)."""
    local = ctx.apps.get(app_id)
    return local[1] if local is not None and local[0] > ctx.clock() else None


def fetch_app(ctx: Context, app_id: str) -> App:
    """``GET /app/{id}``, cached for ``HATZ_APP_CACHE_TTL`` seconds: in Redis for every
    worker, and in this process until the Redis entry expires (no round trip per submit)."""
    ttl = ctx.settings.app_cache_ttl
    if ttl <= 0:
        return ctx.client.get_app(app_id)
    now = ctx.clock()
    local = cached_app(ctx, app_id)
    if local is not None:
        return local
    key = ctx.keys.app(app_id)
    pipe = ctx.redis.pipeline(transaction=False)
    pipe.get(key)
    pipe.pttl(key)
    cached, left_ms = pipe.execute()
    if cached and int(left_ms) > 0:
        app = App.model_validate_json(cached)
        expires = now + int(left_ms) / 1000
    else:
        app = ctx.client.get_app(app_id)
        ctx.redis.set(key, app.model_dump_json(), ex=max(1, int(ttl)))
        expires = now + max(1, int(ttl))
    if len(ctx.apps) >= _APP_CACHE_SIZE:
        ctx.apps.clear()
    ctx.apps[app_id] = (expires, app)
    return app


def fetch_apps(ctx: Context) -> list[App]:
    """Every app and workflow (``GET /app/list``, every page), cached in Redis for
    ``HATZ_APP_CACHE_TTL`` seconds like :func:`fetch_app`. It does not fill the
    per-app cache: a list entry need not carry everything ``GET /app/{id}`` does."""
    ttl = ctx.settings.app_cache_ttl
    if ttl <= 0:
        return list(ctx.client.iter_apps())
    key = ctx.keys.app_list
    cached = ctx.redis.get(key)
    if cached:
        return _APP_LIST.validate_json(cached)
    apps = list(ctx.client.iter_apps())
    ctx.redis.set(key, _APP_LIST.dump_json(apps), ex=max(1, int(ttl)))
    return apps
