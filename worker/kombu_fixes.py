"""A small, version-guarded workaround for a kombu Redis-transport crash.

The trap (reproduced here with celery 5.7.0, kombu 5.7.0, redis-py 8.1.0, and
by ``bench.chaos``'s "Redis killed and restarted" row): Redis goes away while
the worker holds unacknowledged countdown messages. Celery's consumer handles
the connection error by calling ``Connection.collect()`` (which sets the
transport's ``client`` to None) and then ``Connection.close()``; closing the
default channel again runs ``QoS.restore_unacked_once()``, which needs a fresh
connection pool, and ``Channel._connparams`` dereferences the transport's
``client``: ``AttributeError: 'NoneType' object has no attribute 'hostname'``.
That is not a connection error, so it escapes ``ignore_errors`` and the worker
exits with "Unrecoverable error". Related upstream threads: celery/celery#10205
(worker stops consuming after a connection reset), celery/celery#8030 (stops
consuming after reconnection), celery/kombu#2007 (the reconnect fix in 5.4),
celery/kombu#970 and #582 (the same ``hostname`` error on other close paths).

The fix: when the transport is already detached, skip the restore instead of
crashing. Nothing is lost by skipping: with the Redis transport every
unacknowledged message also sits in the ``unacked`` hash in Redis (persisted
with AOF), and kombu's ``restore_visible`` puts it back on its queue once it
is older than ``visibility_timeout``. hatz-worker's sweeper re-arms the runs
long before that, with a bumped token, so the late copies are no-ops.

Applied once, in the worker's main process at start (:mod:`worker.celery_app`'s
``worker_init`` handler), only to kombu 5.x where the method it wraps exists.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger(__name__)

_APPLIED_MARK = "_hatz_detached_restore_guard"


def kombu_version() -> tuple[int, ...]:
    """kombu's version as a tuple of ints (``(5, 7, 0)``)."""
    import kombu

    parts: list[int] = []
    for piece in str(kombu.__version__).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def affected() -> bool:
    """True when this kombu has the Redis ``QoS.restore_unacked`` path this guard wraps."""
    try:
        from kombu.transport import redis as kombu_redis
    except ImportError:  # pragma: no cover - kombu without the redis extra
        return False
    return kombu_version()[0] == 5 and hasattr(kombu_redis.QoS, "restore_unacked")


def _detached(qos: Any) -> bool:
    channel = getattr(qos, "channel", None)
    transport = getattr(channel, "connection", None)
    return transport is None or getattr(transport, "client", None) is None


def apply() -> bool:
    """Install the guard (idempotent); True when it is in place."""
    if not affected():
        return False
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.QoS.restore_unacked
    if getattr(original, _APPLIED_MARK, False):
        return True

    @functools.wraps(original)
    def restore_unacked(self: Any, client: Any = None) -> Any:
        if client is None and _detached(self):
            count = len(getattr(self, "_delivered", {}) or {})
            log.warning(
                "broker connection already closed: leaving %d unacknowledged message(s) in "
                "Redis's unacked hash (restored after visibility_timeout; the sweeper "
                "re-arms their runs sooner)",
                count,
            )
            self._delivered.clear()
            return None
        return original(self, client)  # type: ignore[no-untyped-call]

    setattr(restore_unacked, _APPLIED_MARK, True)
    setattr(kombu_redis.QoS, "restore_unacked", restore_unacked)  # noqa: B010
    return True
