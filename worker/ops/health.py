"""Liveness of worker and beat processes: heartbeat keys in Redis, and the probe that reads them.

* A worker writes ``Keys.heartbeat("worker:<nodename>")`` every
  ``HATZ_HEARTBEAT_INTERVAL`` seconds from a consumer bootstep on the
  consumer's own timer (:mod:`worker.taskqueue.heartbeat`): the heartbeat
  stops when the consumer's event loop is stuck or it lost its broker connection.
* Beat writes ``Keys.heartbeat("beat")`` from its scheduler loop
  (:class:`worker.taskqueue.heartbeat.HeartbeatScheduler`, ``beat_scheduler`` in
  :mod:`worker.taskqueue.config`): the heartbeat stops when beat stops ticking.

Times are Redis server time (``TIME``), so a probe on another host with a
skewed clock still reads ages right. Each key expires after a few intervals,
so a dead process leaves nothing behind. ``hatz-worker health --worker|--beat``
exits 0 when the heartbeat is fresh: a compose/Kubernetes probe.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from worker.store.keys import Keys

BEAT = "beat"
#: Default ``--max-age`` in heartbeat intervals: two missed beats are tolerated.
MAX_AGE_INTERVALS = 3


def worker_name(nodename: str) -> str:
    """The heartbeat name of a worker node (``celery@host`` by default)."""
    return f"worker:{nodename}"


def default_nodename() -> str:
    """Celery's default node name on this host (``celery@<hostname>``)."""
    return f"celery@{socket.gethostname()}"


def server_time(client: redis.Redis) -> float:
    """Redis' clock, seconds."""
    seconds, micros = client.time()
    return float(seconds) + float(micros) / 1e6


def beat(
    client: redis.Redis,
    keys: Keys,
    name: str,
    interval: float,
    *,
    queues: Sequence[str] | None = None,
) -> None:
    """Write one heartbeat for ``name``; it expires after a few intervals.

    A worker's heartbeat also names the queues it consumes, so doctor and the
    metrics can tell messages that no live worker will ever take.
    """
    value: dict[str, object] = {
        "at": server_time(client),
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
    if queues is not None:
        value["queues"] = sorted(queues)
    ttl = max(1, int(interval * MAX_AGE_INTERVALS * 2))
    client.set(keys.heartbeat(name), json.dumps(value), ex=ttl)


@dataclass(frozen=True)
class Heartbeat:
    """A heartbeat as read: who, how old, from which process."""

    name: str
    age: float
    pid: int | None = None
    host: str | None = None
    #: The queues a worker consumes (None: not said, e.g. beat or an older worker).
    queues: tuple[str, ...] | None = None


def read(client: redis.Redis, keys: Keys, name: str) -> Heartbeat | None:
    """The heartbeat of ``name``, or None when missing (never written, or expired)."""
    raw = client.get(keys.heartbeat(name))
    if not raw:
        return None
    try:
        data = json.loads(raw)
        age = max(0.0, server_time(client) - float(data["at"]))
    except (ValueError, KeyError, TypeError):
        return None
    queues = data.get("queues")
    named = tuple(str(q) for q in queues) if isinstance(queues, list) else None
    return Heartbeat(name, age, data.get("pid"), data.get("host"), named)


def all_heartbeats(client: redis.Redis, keys: Keys) -> list[Heartbeat]:
    """Every heartbeat present, by name."""
    prefix = keys.heartbeat("")
    found = []
    for key in client.scan_iter(match=keys.heartbeat_pattern(), count=100):
        text = key.decode() if isinstance(key, bytes) else str(key)
        hb = read(client, keys, text.removeprefix(prefix))
        if hb is not None:
            found.append(hb)
    return sorted(found, key=lambda h: h.name)


def probe(client: redis.Redis, keys: Keys, name: str, max_age: float) -> tuple[bool, str]:
    """``(healthy, message)`` for the probe: the heartbeat exists and is at most ``max_age`` old."""
    hb = read(client, keys, name)
    if hb is None:
        return False, f"{name}: no heartbeat (not running, or not connected to Redis)"
    if hb.age > max_age:
        return False, f"{name}: last heartbeat {hb.age:.1f} s ago (> {max_age:g} s)"
    return True, f"{name}: alive, last heartbeat {hb.age:.1f} s ago (pid {hb.pid} on {hb.host})"
