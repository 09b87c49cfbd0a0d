"""Two small, version-guarded patches to kombu's Redis transport: a crash fix and a cost fix.

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

The cost fix (:func:`apply_client_reuse`): the transport builds a new
``redis.Redis`` object for every synchronous command it sends outside its
event loop (``Channel.conn_or_acquire()`` -> ``_create_client()``): the ack
and the unacked bookkeeping of every message in the worker's main process, and
every publish in a pool child. Building one costs about 50 microseconds with
redis-py 8 (it fills a table of ~300 response callbacks), about 4 % of a
poll's whole CPU. The patch reuses one client per channel and connection pool;
a new pool (after a reconnect) gets a new client. The client is thread-safe
and holds no connection itself, so nothing else changes.

Applied once, in the worker's main process at start (:mod:`worker.taskqueue.app`'s
``worker_init`` handler), only to the kombu versions they were tested on
(:data:`TESTED_FROM` up to, not including, :data:`TESTED_BELOW`: the suite runs
the lock's kombu, and ``nox -s integration`` the oldest and newest in
``pyproject.toml``'s range) and only where the methods they wrap exist. On any
other kombu they are skipped with a warning in the worker's log saying so: a
patch to another version's internals could do more harm than the bug it fixes.
Widen the range after running the nox sessions on the new version.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger(__name__)

_APPLIED_MARK = "_hatz_detached_restore_guard"

#: The oldest kombu the patches were tested on (pyproject.toml's floor).
TESTED_FROM = (5, 5, 2)
#: The first kombu they were not tested on.
TESTED_BELOW = (5, 8)


def kombu_version() -> tuple[int, ...]:
    """kombu's version as a tuple of ints (``(5, 7, 0)``)."""
    import kombu

    parts: list[int] = []
    for piece in str(kombu.__version__).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def tested() -> bool:
    """True when this kombu lies in the range the patches were tested on."""
    return TESTED_FROM <= kombu_version() < TESTED_BELOW


def _range() -> str:
    return f"{'.'.join(map(str, TESTED_FROM))} up to {'.'.join(map(str, TESTED_BELOW))}"


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


_REUSE_MARK = "_hatz_reuses_sync_client"
_CACHED = "_hatz_sync_client"


def apply_client_reuse() -> bool:
    """Reuse one synchronous ``redis.Redis`` per channel and pool (idempotent)."""
    try:
        from kombu.transport import redis as kombu_redis
    except ImportError:  # pragma: no cover - kombu without the redis extra
        return False
    original = getattr(kombu_redis.Channel, "_create_client", None)
    if not tested() or original is None:
        return False
    if getattr(original, _REUSE_MARK, False):
        return True

    @functools.wraps(original)
    def _create_client(self: Any, asynchronous: bool = False) -> Any:
        if asynchronous:
            return original(self, asynchronous)
        pool = self.pool
        cached = self.__dict__.get(_CACHED)
        if cached is None or cached.connection_pool is not pool:
            cached = original(self, False)
            self.__dict__[_CACHED] = cached
        return cached

    setattr(_create_client, _REUSE_MARK, True)
    setattr(kombu_redis.Channel, "_create_client", _create_client)  # noqa: B010
    return True


def apply() -> bool:
    """Install both patches (idempotent); True when the restore guard is in place.

    Outside the tested range, or where kombu lacks what a patch wraps, nothing is
    patched and a warning says which patch was skipped and why.
    """
    version = ".".join(map(str, kombu_version()))
    if not tested():
        log.warning(
            "kombu %s is outside the versions hatz-worker's Redis transport patches were "
            "tested on (%s): not applied; a Redis restart may stop this worker "
            "(worker.taskqueue.kombu_fixes)",
            version,
            _range(),
        )
        return False
    if not apply_client_reuse():
        log.warning("kombu %s has no Channel._create_client: client reuse not applied", version)
    if not affected():
        log.warning(
            "kombu %s has no Redis QoS.restore_unacked: the detached-restore guard not applied",
            version,
        )
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
