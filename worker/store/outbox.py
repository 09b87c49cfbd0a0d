"""The transactional outbox: a step's next task is published by the same script that
records the step, so the ledger write and the publish happen together or not at all.

Without it a poll costs two writes to Redis in a row (the compare-and-set that
reschedules the run, then kombu's ``LPUSH`` of the countdown message), and a
worker dying between them loses the chain until the sweeper re-arms it. With
it, :func:`encode` builds the message exactly as kombu would send it (Celery's
``send_task`` runs as usual; only the final ``LPUSH`` is captured, through
kombu's own publish-batch hook ``_put(..., _publish_batch=...)``), and the
ledger's compare-and-set script pushes it onto the queue when, and only when,
the compare-and-set succeeds. A stale or duplicate step therefore publishes
nothing at all.

Building a message through Celery costs about 0.4 ms of CPU (more than the
poll's ledger write): ``send_task`` builds a producer, a ``saferepr`` of the
arguments, the ETA and kombu's envelope. So the first message for each task
name is built that way and kept as a *template*; later ones copy it and fill in
only what differs between two messages of one task in one process (the
arguments, the task and delivery ids, the parent task, the ETA).
``tests/test_outbox.py`` checks a filled-in template against Celery's own
message field by field.

Used only where it is exact: kombu's Redis transport with the publish-batch
hook (kombu >= 5.7), a message that is one ``LPUSH``, and a ledger on the same
Redis as the broker (``HATZ_REDIS_URL`` is both). Anything else makes
:func:`encode` return None and the step publishes the usual way afterwards.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)


def argsrepr(args: Sequence[Any]) -> str:
    """What a message shows of its arguments (Flower, logs): the ids only, i.e. the
    run or batch id and the token, not a poll's hint."""
    return repr(list(args[:2]))


@dataclass(frozen=True)
class Next:
    """A task to publish after a step: ``task`` by name, ``args``, ``countdown`` s."""

    task: str
    args: tuple[Any, ...]
    countdown: float = 0.0


def send_step(celery: Any, step: Next, producer: Any = None) -> Any:
    """``send_task`` of one step, with the options every publish of ours uses (the
    outbox's templates are built this way, so they must be the same everywhere)."""
    return celery.send_task(
        step.task,
        args=list(step.args),
        countdown=step.countdown or None,
        producer=producer,
        argsrepr=argsrepr(step.args),
        ignore_result=True,  # no result is stored: not even a subscription
    )


class _Collector:
    """Stands in for kombu's ``PublishBatch``: records the Redis commands of a publish."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def add(self, name: str, *args: Any) -> None:
        self.commands.append((name, args))


def supported() -> bool:
    """Whether this kombu routes Redis publishes through the publish-batch hook."""
    try:
        from kombu.transport import redis as kombu_redis
    except ImportError:  # pragma: no cover - kombu without the redis extra
        return False
    return hasattr(kombu_redis, "PublishBatch")


@dataclass(frozen=True)
class _Template:
    """One message of a task as Celery built it, its body's fixed parts decoded once."""

    queue: str
    message: dict[str, Any]
    kwargs: Any
    embed: Any

    @classmethod
    def of(cls, queue: str, payload: str) -> _Template:
        message = json.loads(payload)
        _, kwargs, embed = json.loads(base64.b64decode(message["body"]))
        return cls(queue, message, kwargs, embed)


class Outbox:
    """Encodes :class:`Next` steps into ``(queue key, payload)`` pushes."""

    def __init__(self, celery: Any) -> None:
        self.celery = celery
        self.enabled = supported()
        self._templates: dict[str, _Template] = {}

    def encode(self, steps: Sequence[Next]) -> list[tuple[str, str]] | None:
        """The ``LPUSH`` of each step's message, or None (then publish the usual way)."""
        if not self.enabled:
            return None
        pushes: list[tuple[str, str]] = []
        for step in steps:
            template = self._templates.get(step.task)
            if template is None:
                built = self._through_celery([step])
                if built is None:
                    return None
                pushes += built
                self._templates[step.task] = _Template.of(*built[0])
            else:
                pushes.append((template.queue, self._fill(template, step)))
        return pushes

    def _fill(self, template: _Template, step: Next) -> str:
        """``template`` (one message of ``step.task``) made into ``step``'s message, as
        ``send_task`` would build it (celery.app.amqp ``as_task_v2``)."""
        task_id = str(uuid.uuid4())
        root_id, parent_id = task_id, None
        parent = self.celery.current_worker_task
        if parent:
            parent_id = parent.request.id
            root_id = parent.request.root_id or parent_id
        eta = None
        if step.countdown:
            eta = (datetime.now(UTC) + timedelta(seconds=step.countdown)).isoformat()
        message = template.message
        body = json.dumps([list(step.args), template.kwargs, template.embed])
        shown = argsrepr(step.args)
        properties = {
            **message["properties"],
            "correlation_id": task_id,
            "delivery_tag": str(uuid.uuid4()),
        }
        if "argsrepr" in properties:  # send_task passes its options on as properties too
            properties["argsrepr"] = shown
        filled = {
            **message,
            "body": base64.b64encode(body.encode(message["content-encoding"])).decode(),
            "headers": {
                **message["headers"],
                "id": task_id,
                "root_id": root_id,
                "parent_id": parent_id,
                "eta": eta,
                "argsrepr": shown,
            },
            "properties": properties,
        }
        return json.dumps(filled)

    def _through_celery(self, steps: Sequence[Next]) -> list[tuple[str, str]] | None:
        """Celery's ``send_task`` with kombu's final ``LPUSH`` captured, not sent."""
        from kombu.transport import redis as kombu_redis

        collector = _Collector()
        try:
            with self.celery.producer_or_acquire() as producer:
                if not isinstance(producer.channel, kombu_redis.Channel):
                    return None
                channel: Any = producer.channel
                put = channel._put
                own = channel.__dict__.get("_put")  # an instance override to put back

                def capture(queue: str, message: Any, **kwargs: Any) -> Any:
                    kwargs["_publish_batch"] = collector
                    return put(queue, message, **kwargs)

                channel._put = capture
                try:
                    for step in steps:
                        send_step(self.celery, step, producer)
                finally:
                    if own is None:
                        del channel._put  # back to the class's method
                    else:
                        channel._put = own
        except Exception as exc:  # never fail a step over the fast path
            log.debug("outbox: publishing the usual way: %s", exc)
            return None
        pushes = [(str(args[0]), str(args[1])) for name, args in collector.commands]
        if len(pushes) != len(steps) or any(n != "lpush" for n, _ in collector.commands):
            return None
        return pushes
