"""Messages that wait in a broker queue no live worker consumes.

A message published to a queue nobody consumes waits there forever, and
nobody is told: a ``send_task`` to a misspelt queue, or a worker started with
``-Q`` leaving a queue out. Doctor and the metrics report them from two
readings of Redis: the queues that hold messages (every queue kombu has bound,
from its ``_kombu.binding.*`` sets, plus ours), and the queues each live
worker says it consumes in its heartbeat (:mod:`worker.ops.health`).

The binding sets are kombu's layout; their names come from kombu's own
Redis channel class rather than being spelt here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis
from kombu.transport.redis import Channel

from worker import task_names
from worker.ops import health
from worker.store.keys import Keys

_BINDING_PREFIX = Channel.keyprefix_queue.replace("%s", "")
_SEP = Channel.sep


@dataclass(frozen=True)
class WaitingQueue:
    """A queue holding messages that no live worker consumes."""

    name: str
    messages: int


def known_queues(client: redis.Redis) -> list[str]:
    """Every queue kombu has bound on this Redis, plus the ones hatz-worker uses."""
    names = {*task_names.ALL_QUEUES, task_names.QUEUE_CELERY}
    for key in client.scan_iter(match=_BINDING_PREFIX + "*", count=100):
        if b"pidbox" in (key if isinstance(key, bytes) else str(key).encode()):
            continue  # remote-control replies: short-lived queues of their own
        for member in client.smembers(key):
            text = member.decode() if isinstance(member, bytes) else str(member)
            queue = text.split(_SEP)[-1]
            if queue:
                names.add(queue)
    return sorted(names)


def queue_lengths(client: redis.Redis, names: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each named queue (one pipelined round trip)."""
    ordered = list(names)
    pipe = client.pipeline(transaction=False)
    for name in ordered:
        pipe.llen(name)
    return {name: int(n) for name, n in zip(ordered, pipe.execute(), strict=True)}


def consumed_queues(client: redis.Redis, keys: Keys) -> set[str]:
    """The queues live workers consume, as their heartbeats say.

    A worker whose heartbeat names no queues (an older version) counts as
    consuming the default set: better to miss a warning than to raise a false one.
    """
    consumed: set[str] = set()
    for hb in health.all_heartbeats(client, keys):
        if not hb.name.startswith("worker:"):
            continue
        consumed.update(hb.queues if hb.queues is not None else task_names.ALL_QUEUES)
    return consumed


def unconsumed(client: redis.Redis, keys: Keys) -> list[WaitingQueue]:
    """Queues with messages waiting that no live worker consumes, by name."""
    consumed = consumed_queues(client, keys)
    lengths = queue_lengths(client, [q for q in known_queues(client) if q not in consumed])
    return [WaitingQueue(name, n) for name, n in sorted(lengths.items()) if n > 0]
