"""Every Redis key hatz-worker uses, built in this one module.

Layout (``P`` is ``HATZ_KEY_PREFIX``, default ``hatz``):

==============================  ======  ==================================================
key                             type    what
==============================  ======  ==================================================
``P:run:<run_id>``              hash    the run record: the source of truth (see ledger)
``P:runs``                      zset    every run id, scored by creation time
``P:schedule``                  zset    non-terminal run ids, scored by ``next_at``: when
                                        the run's next task is due (sweeper input)
``P:idem:<key>``                string  idempotency key -> run id and parameter hash
``P:app:<app_id>``              string  cached app definition (JSON, short TTL)
``P:callbacks:failed``          zset    dead-lettered callbacks (run ids by time)
``P:breaker``                   hash    org-wide credit-overage breaker
``P:batch:<batch_id>``          hash    a batch record
``P:batch:<batch_id>:rows``     list    run ids of a batch, in row order
``P:lease:<name>``              string  a short lease (e.g. the sweeper) held by one owner
``P:heartbeat:<name>``          string  liveness heartbeat of a worker or beat process
``P:metrics``                   hash    cluster-wide Prometheus counters (``worker.metrics``)
==============================  ======  ==================================================

Celery's own keys (broker queues, ``unacked``, results) use Celery's names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Builds keys under one prefix."""

    prefix: str = "hatz"

    def run(self, run_id: str) -> str:
        """The run record hash."""
        return f"{self.prefix}:run:{run_id}"

    @property
    def runs(self) -> str:
        """Index of all runs by creation time."""
        return f"{self.prefix}:runs"

    @property
    def schedule(self) -> str:
        """Non-terminal runs by the time their next task is due."""
        return f"{self.prefix}:schedule"

    def idempotency(self, key: str) -> str:
        """Idempotency key -> run id."""
        return f"{self.prefix}:idem:{key}"

    def app(self, app_id: str) -> str:
        """Cached app definition."""
        return f"{self.prefix}:app:{app_id}"

    @property
    def failed_callbacks(self) -> str:
        """Dead-lettered callbacks."""
        return f"{self.prefix}:callbacks:failed"

    @property
    def breaker(self) -> str:
        """Org-wide credit-overage breaker."""
        return f"{self.prefix}:breaker"

    def batch(self, batch_id: str) -> str:
        """A batch record."""
        return f"{self.prefix}:batch:{batch_id}"

    def batch_rows(self, batch_id: str) -> str:
        """Run ids of a batch in row order."""
        return f"{self.prefix}:batch:{batch_id}:rows"

    def lease(self, name: str) -> str:
        """A named lease."""
        return f"{self.prefix}:lease:{name}"

    def heartbeat(self, name: str) -> str:
        """A process heartbeat."""
        return f"{self.prefix}:heartbeat:{name}"

    def heartbeat_pattern(self) -> str:
        """A SCAN pattern matching every heartbeat key."""
        return f"{self.prefix}:heartbeat:*"

    @property
    def metrics(self) -> str:
        """Counters shared by every worker process, exported by ``worker.metrics``."""
        return f"{self.prefix}:metrics"
