"""Every Redis key hatz-worker uses, built in this one module.

Layout (``P`` is ``HATZ_KEY_PREFIX``, default ``hatz``). Every key has a bounded
life, the last column: ``RETENTION`` is ``HATZ_RUN_RETENTION``; "trimmed" means
the sweeper drops entries scored before ``now - RETENTION`` on every sweep
(:mod:`worker.store.retention`), whether or not anyone lists them.

==============================  ======  ==================================  ====================
key                             type    what                                life
==============================  ======  ==================================  ====================
``P:run:<run_id>``              hash    the run record: the source of       RETENTION after the
                                        truth (see ledger)                  run ends
``P:runs``                      zset    every run id, by creation time      trimmed
``P:schedule``                  zset    non-terminal run ids, scored by     an entry leaves when
                                        ``next_at``: when the run's next    its run ends (or its
                                        task is due (sweeper input)         record is gone)
``P:parked``                    zset    runs whose next poll is further     as ``P:schedule``
                                        off than ``HATZ_COUNTDOWN_HORIZON``
                                        (``worker.runs.dispatcher``)
``P:idem:<key>``                string  idempotency key -> run id and       ``HATZ_IDEMPOTENCY_TTL``
                                        parameter hash
``P:app:<app_id>``              string  cached app definition (JSON)        ``HATZ_APP_CACHE_TTL``
``P:apps``                      string  cached list of every app (JSON)     ``HATZ_APP_CACHE_TTL``
``P:callbacks:failed``          zset    dead-lettered callbacks (run ids    trimmed (by when
                                        by time)                            dead-lettered)
``P:breaker``                   hash    org-wide credit-overage breaker     one key, fixed fields
``P:batch:<batch_id>``          hash    a batch record                      RETENTION after it
                                                                            finishes or is
                                                                            abandoned
``P:batch:<batch_id>:rows``     list    run ids of a batch, in row order    as its record
``P:batch:<batch_id>:pending``  list    run ids not yet released (held)     emptied by releases;
                                                                            as its record if
                                                                            abandoned
``P:batch:<batch_id>:inflight`` set     run ids released, not yet terminal  emptied as runs end;
                                                                            as its record if
                                                                            abandoned
``P:batch:<batch_id>:created``  list    runs made by a creation in          deleted when the
                                        progress                            creation ends or is
                                                                            abandoned
``P:batches``                   zset    every batch id, by creation time    trimmed
``P:batches:active``            zset    batches not yet finished            an entry leaves when
                                                                            its batch ends
``P:batchkey:<key>``            hash    ``--batch-key`` resume map: row     RETENTION after its
                                        hash -> run id                      last write (set with
                                                                            each write)
``P:api-budget``                hash    shared token bucket for Hatz calls  1 h after last use
``P:sched:<name>``              hash    a schedule's state: last batch,     one per schedule
                                        fire counts                         name configured
``P:sched-fire:<name>:<slot>``  string  SET NX guard: one firing per slot   the slot's length
``P:lease:<name>``              string  a short lease (e.g. the sweeper)    the lease
``P:heartbeat:<name>``          string  liveness heartbeat of a process     a few heartbeats
``P:metrics``                   hash    cluster-wide Prometheus counters    one key, fixed fields
``P:client:<name>``             hash    an HTTP API client: ``admin``,      until ``tokens
                                        ``token_hash`` (SHA-256),           revoke``
                                        ``created_at``
``P:clients``                   zset    every HTTP API client name, by      an entry leaves with
                                        creation time                       ``tokens revoke``
``P:token:<sha256>``            string  a client token's hash ->            until ``tokens
                                        ``{"name", "admin"}``               revoke``
``P:ratelimit:<sha256>``        hash    a client token's request bucket     1 h after last use
``P:client-runs:<name>``        zset    run ids a client created, by        trimmed past
                                        creation time                       RETENTION on every
                                                                            page read and about
                                                                            one add in 32
``P:console-session:<sha256>``  hash    a web console session: the admin    12 h
                                        client, its token's hash, the CSRF
                                        token
``P:console:samples``           list    the console's chart samples,        trimmed to 24 h of
                                        newest first                        samples
``P:durations:<app_id>``        list    an app's recent run durations,      RETENTION after the
                                        newest first, trimmed to 64         last write
                                        (``worker.store.durations``)
``P:batch-callbacks``           zset    finished batches whose callback is  an entry leaves when
                                        still due, scored by when its next  it is delivered or
                                        delivery is due (sweeper input)     dead-lettered
``P:batch-callbacks:failed``    zset    dead-lettered batch callbacks       trimmed (by when
                                        (batch ids by time)                 dead-lettered)
==============================  ======  ==================================  ====================

Celery's own keys (broker queues, ``unacked``, results) use Celery's names;
results expire after a day (``result_expires``), the rest empty as tasks are
acknowledged.
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
    def app_list(self) -> str:
        """Cached list of every app and workflow."""
        return f"{self.prefix}:apps"

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
    def time_indexes(self) -> tuple[str, ...]:
        """The sorted sets scored by a time that the sweeper trims after ``HATZ_RUN_RETENTION``
        (:mod:`worker.store.retention`). A new index scored by a time belongs here."""
        return (self.runs, self.batches, self.failed_callbacks, self.failed_batch_callbacks)

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

    def client(self, name: str) -> str:
        """An HTTP API client's record."""
        return f"{self.prefix}:client:{name}"

    @property
    def clients(self) -> str:
        """Every HTTP API client name, by creation time."""
        return f"{self.prefix}:clients"

    def client_token(self, token_hash: str) -> str:
        """A client token's hash -> the client it belongs to."""
        return f"{self.prefix}:token:{token_hash}"

    def rate_limit(self, bucket: str) -> str:
        """A request token bucket (an HTTP API client's: named by its token's hash)."""
        return f"{self.prefix}:ratelimit:{bucket}"

    def client_runs(self, name: str) -> str:
        """Run ids one HTTP API client created, by creation time."""
        return f"{self.prefix}:client-runs:{name}"

    def console_session(self, session_hash: str) -> str:
        """A web console session (by the SHA-256 of its cookie)."""
        return f"{self.prefix}:console-session:{session_hash}"

    @property
    def console_samples(self) -> str:
        """The web console's chart samples, newest first."""
        return f"{self.prefix}:console:samples"

    def durations(self, app_id: str) -> str:
        """An app's recent run durations (the learned poll schedule's input)."""
        return f"{self.prefix}:durations:{app_id}"

    @property
    def batch_callbacks(self) -> str:
        """Finished batches whose callback is still due, by when its next delivery is due."""
        return f"{self.prefix}:batch-callbacks"

    @property
    def failed_batch_callbacks(self) -> str:
        """Dead-lettered batch callbacks."""
        return f"{self.prefix}:batch-callbacks:failed"
