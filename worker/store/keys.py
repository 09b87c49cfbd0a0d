"""Every Redis key hatz-worker uses, built in this one module.

Layout (``P`` is ``HATZ_KEY_PREFIX``, default ``hatz``):

==============================  ======  ==================================================
key                             type    what
==============================  ======  ==================================================
``P:run:<run_id>``              hash    the run record: the source of truth (see ledger)
``P:runs``                      zset    every run id, scored by creation time
``P:schedule``                  zset    non-terminal run ids, scored by ``next_at``: when
                                        the run's next task is due (sweeper input)
``P:parked``                    zset    runs whose next poll is further off than
                                        ``HATZ_COUNTDOWN_HORIZON``, scored by when it is
                                        due: published by the dispatcher, not yet a
                                        Celery message (``worker.runs.dispatcher``)
``P:idem:<key>``                string  idempotency key -> run id and parameter hash
``P:app:<app_id>``              string  cached app definition (JSON, short TTL)
``P:callbacks:failed``          zset    dead-lettered callbacks (run ids by time)
``P:breaker``                   hash    org-wide credit-overage breaker
``P:batch:<batch_id>``          hash    a batch record
``P:batch:<batch_id>:rows``     list    run ids of a batch, in row order
``P:batch:<batch_id>:pending``  list    run ids of a batch not yet released (held)
``P:batch:<batch_id>:inflight`` set     run ids released and not yet seen terminal
``P:batches``                   zset    every batch id, scored by creation time
``P:batches:active``            zset    batches not yet finished (batch sweep input)
``P:batchkey:<key>``            hash    ``--batch-key`` resume map: row hash -> run id
``P:api-budget``                hash    shared token bucket for Hatz API calls
``P:sched:<name>``              hash    a schedule's state: last batch, fire counts
``P:sched-fire:<name>:<slot>``  string  SET NX guard: one firing per schedule slot
``P:lease:<name>``              string  a short lease (e.g. the sweeper) held by one owner
``P:heartbeat:<name>``          string  liveness heartbeat of a worker or beat process
``P:metrics``                   hash    cluster-wide Prometheus counters (``worker.ops.metrics``)
``P:batch-callbacks``           zset    finished batches whose callback is still due, scored by
                                        when its next delivery is due (sweeper input)
``P:batch-callbacks:failed``    zset    dead-lettered batch callbacks (batch ids by time)
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

    @property
    def parked(self) -> str:
        """Runs whose next poll waits in Redis (not as a countdown), by when it is due."""
        return f"{self.prefix}:parked"

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

    def batch_pending(self, batch_id: str) -> str:
        """Run ids of a batch waiting for a concurrency slot, in row order."""
        return f"{self.prefix}:batch:{batch_id}:pending"

    def batch_created(self, batch_id: str) -> str:
        """Run ids made so far by a batch still being created (to cancel if it never ends)."""
        return f"{self.prefix}:batch:{batch_id}:created"

    def batch_inflight(self, batch_id: str) -> str:
        """Run ids of a batch released (submitted or in flight) and not yet terminal."""
        return f"{self.prefix}:batch:{batch_id}:inflight"

    @property
    def batches(self) -> str:
        """Index of all batches by creation time."""
        return f"{self.prefix}:batches"

    @property
    def active_batches(self) -> str:
        """Batches not yet finished, by creation time."""
        return f"{self.prefix}:batches:active"

    def batch_key(self, key: str) -> str:
        """A ``--batch-key``'s resume map (row hash -> run id)."""
        return f"{self.prefix}:batchkey:{key}"

    @property
    def api_budget(self) -> str:
        """The shared token bucket every Hatz API call takes from."""
        return f"{self.prefix}:api-budget"

    def schedule_state(self, name: str) -> str:
        """A schedule's state (last batch, counters)."""
        return f"{self.prefix}:sched:{name}"

    def schedule_fire(self, name: str, slot: str) -> str:
        """The one-firing guard of a schedule for one slot."""
        return f"{self.prefix}:sched-fire:{name}:{slot}"

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
        """Counters shared by every worker process, exported by ``worker.ops.metrics``."""
        return f"{self.prefix}:metrics"

    @property
    def batch_callbacks(self) -> str:
        """Finished batches whose callback is still due, by when its next delivery is due."""
        return f"{self.prefix}:batch-callbacks"

    @property
    def failed_batch_callbacks(self) -> str:
        """Dead-lettered batch callbacks."""
        return f"{self.prefix}:batch-callbacks:failed"
