"""What the console's runs page reads: one page of the runs table, filtered and searched.

Why not :func:`worker.api.runs.page_runs`: it reads whole records one round
trip at a time, which is right for the API's full answers, but a table of 50
rows filtered over 100,000 runs must look at thousands of records per page.
Here the ids come from the same creation-time indexes (``P:runs`` or a
client's ``P:client-runs:<name>``), newest first, and only the table's
columns are read, one pipelined ``HMGET`` per chunk of ids. A filter on state
or app, and a search for a job id, is checked inside Redis by one small Lua
script per chunk of ids (:data:`_MATCH`, the ids passed as its keys): a
pipelined ``HMGET`` per run costs the client ~60 us a run, which made a rare
filter over 20,000 runs take over a second. A page looks at no more than
:data:`MAX_SCAN` runs; a rare filter may give a short page with a cursor to
carry on from, as the API's pages do.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

from worker.context import Context
from worker.store.ledger import RunState

#: Columns of the runs table (fields of the run record).
COLUMNS = (
    "run_id",
    "state",
    "app_id",
    "client",
    "job_id",
    "created_at",
    "updated_at",
    "poll_count",
    "error",
    "batch_id",
)
#: Runs looked at for one page, at most.
MAX_SCAN = 10_000
#: Runs looked at when searching for a job id, at most (newest first).
MAX_JOB_SEARCH = 100_000
_CHUNK = 500
_MATCH_CHUNK = 2000

# KEYS: run hashes. ARGV: field, wanted value ("" = any), field, wanted value ("" = any).
# Returns the 1-based positions of the runs whose fields hold the wanted values.
_MATCH = """
local hits = {}
for i, key in ipairs(KEYS) do
  local a, b = unpack(redis.call('HMGET', key, ARGV[1], ARGV[3]))
  if a and (ARGV[2] == '' or a == ARGV[2]) and (ARGV[4] == '' or b == ARGV[4]) then
    hits[#hits + 1] = i
  end
end
return hits
"""


@dataclass(frozen=True)
class RunFilter:
    """The runs table's filters; empty fields match everything."""

    state: str = ""
    app_id: str = ""
    client: str = ""
    since: float | None = None
    until: float | None = None

    def matches(self, row: dict[str, str]) -> bool:
        """Whether a row (the table's columns) passes the filters."""
        if self.state and row.get("state") != self.state:
            return False
        return not (self.app_id and row.get("app_id") != self.app_id)


@dataclass
class RunsPage:
    """One page: its rows, the cursor of the next (None: last), how many runs it read."""

    rows: list[dict[str, str]] = field(default_factory=list)
    next_cursor: str | None = None
    scanned: int = 0
    #: The oldest run a filtered chunk looked at (where the next chunk starts).
    last: tuple[float, str] | None = None
    #: Whether older runs may match: the page is full, or it stopped at the scan limit.
    more: bool = False


def _matching(
    ctx: Context,
    ids: list[tuple[str, float]],
    field_a: str,
    value_a: str,
    field_b: str,
    value_b: str,
    page: RunsPage | None = None,
) -> list[tuple[str, float]]:
    """The ``ids`` whose two fields hold the wanted values ("" = any), checked in Redis."""
    script = ctx.redis.register_script(_MATCH)
    hits = script(keys=[ctx.keys.run(i) for i, _ in ids], args=[field_a, value_a, field_b, value_b])
    if page is not None:
        page.last = (ids[-1][1], ids[-1][0])
    return [ids[int(h) - 1] for h in hits]


def runs_page(
    ctx: Context,
    filters: RunFilter,
    *,
    limit: int = 50,
    cursor: str | None = None,
    max_scan: int = MAX_SCAN,
) -> RunsPage:
    """Runs newest first that pass ``filters``, ``limit`` at most, from ``cursor`` on."""
    index = ctx.keys.client_runs(filters.client) if filters.client else ctx.keys.runs
    position = decode_cursor(cursor) if cursor else None
    if position is None and filters.until is not None:
        position = (filters.until, "")
    page = RunsPage()
    filtered = bool(filters.state or filters.app_id)
    while len(page.rows) < limit and page.scanned < max_scan:
        # Unfiltered, a chunk is what the page still needs (only expired runs are skipped).
        chunk = _MATCH_CHUNK if filtered else min(_CHUNK, limit - len(page.rows))
        ids = ctx.ledger.ids_before(
            index, before=position, limit=min(chunk, max_scan - page.scanned)
        )
        if filters.since is not None:
            ids = [(run_id, at) for run_id, at in ids if at >= filters.since]
        if not ids:
            return page
        page.scanned += len(ids)
        if filtered:
            ids = _matching(ctx, ids, "state", filters.state, "app_id", filters.app_id, page)
        for (run_id, created), row in zip(ids, read_rows(ctx, [i for i, _ in ids]), strict=True):
            position = (created, run_id)
            if row is None or not filters.matches(row):
                continue
            page.rows.append(row)
            if len(page.rows) >= limit:
                break
        else:
            if page.last is not None:
                position = page.last
    if position is not None:
        page.next_cursor = encode_cursor(position)
        page.more = len(page.rows) >= limit or page.scanned >= max_scan
    return page


def read_rows(ctx: Context, run_ids: list[str]) -> list[dict[str, str] | None]:
    """The table's columns of each run (None for an expired one), one pipelined round trip."""
    pipe = ctx.redis.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.hmget(ctx.keys.run(run_id), COLUMNS)
    rows: list[dict[str, str] | None] = []
    for values in pipe.execute():
        if values[0] is None:
            rows.append(None)
            continue
        rows.append({name: value or "" for name, value in zip(COLUMNS, values, strict=True)})
    return rows


def find_run(ctx: Context, query: str, *, max_scan: int = MAX_JOB_SEARCH) -> str | None:
    """The run whose id or Hatz job id is ``query`` (runs newest first, ``max_scan`` at most)."""
    query = query.strip()
    if not query or len(query) > 200:
        return None
    if ctx.redis.exists(ctx.keys.run(query)):
        return query
    position: tuple[float, str] | None = None
    scanned = 0
    while scanned < max_scan:
        ids = ctx.ledger.ids_before(ctx.keys.runs, before=position, limit=_MATCH_CHUNK)
        if not ids:
            return None
        scanned += len(ids)
        hits = _matching(ctx, ids, "job_id", query, "job_id", "")
        if hits:
            return hits[0][0]
        position = (ids[-1][1], ids[-1][0])
    return None


def states() -> list[str]:
    """Every run state, in lifecycle order (the state filter's choices)."""
    return [s.value for s in RunState]


def encode_cursor(position: tuple[float, str]) -> str:
    """An opaque cursor for ``(created_at, run_id)``."""
    raw = json.dumps([position[0], position[1]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str] | None:
    """The position of a cursor; None for anything this module did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, run_id = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        return None
    if isinstance(when, bool) or not isinstance(when, int | float) or not isinstance(run_id, str):
        return None
    return float(when), run_id
