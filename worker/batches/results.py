"""A batch's results: one line per row (status, outputs, document URLs), optionally with
every document downloaded.

Downloads go through urllib3, the one HTTP library of every outgoing request;
the proxy and CA bundle come from the environment as for the Hatz client
(:func:`worker.hatz.transport.environment_proxy`, ``REQUESTS_CA_BUNDLE``/
``CURL_CA_BUNDLE``, else certifi's bundle).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import certifi
import urllib3

from worker.batches.records import row_run_ids
from worker.context import Context
from worker.errors import InvalidBatchError
from worker.hatz.transport import environment_ca_bundle, environment_proxy
from worker.store.ledger import Run

#: Seconds to connect to, and between bytes from, a document's host.
_DOWNLOAD_TIMEOUT = urllib3.Timeout(connect=5, read=60)
#: Redirects are followed (a presigned URL may move); nothing is retried.
_DOWNLOAD_RETRIES = urllib3.Retry(total=10, connect=0, read=0, other=0, status=0, redirect=10)
_COLUMNS = ["row", "run_id", "status", "error", "job_id", "inputs", "outputs", "documents"]


def result_rows(ctx: Context, batch_id: str) -> list[dict[str, Any]]:
    """One dict per batch row, in row order: row, run_id, status, error, outputs, documents."""
    out: list[dict[str, Any]] = []
    for run_id in row_run_ids(ctx, batch_id):
        run = ctx.ledger.get(run_id)
        if run is None:
            out.append({"row": None, "run_id": run_id, "status": "expired"})
            continue
        documents = run.get("documents") or {}
        out.append(
            {
                "row": int(run.get("row") or 0),
                "run_id": run_id,
                "status": run.state.value,
                "error": run.get("error") or "",
                "job_id": run.get("job_id") or "",
                "inputs": run.get("inputs") or {},
                "outputs": _outputs(run),
                "documents": {k: v.get("url") for k, v in sorted(documents.items())},
            }
        )
    return out


def write_results(
    ctx: Context, batch_id: str, out: str | os.PathLike[str], *, download: str | None = None
) -> int:
    """Write one line per row to ``out`` (``.csv`` or ``.jsonl``); return the rows written.

    With ``download``, every document is fetched into that folder as
    ``row<N>-<step_id><ext>`` and the local path is added (``files``).
    """
    rows = result_rows(ctx, batch_id)
    if download:
        _download_documents(rows, Path(download))
    target = Path(out)
    suffix = target.suffix.lower()
    if suffix == ".csv":
        _write_csv(target, rows, [*_COLUMNS, "files"] if download else _COLUMNS)
    elif suffix in (".jsonl", ".ndjson"):
        with target.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, sort_keys=True, default=str) + "\n")
    else:
        raise InvalidBatchError([f"{target}: results go to a .csv or .jsonl file"])
    return len(rows)


def _outputs(run: Run) -> list[dict[str, Any]]:
    return [
        {
            "step_id": s.get("step_id"),
            "output_type": s.get("output_type"),
            "output": s.get("output_data"),
        }
        for s in run.get("step_outputs") or []
        if s.get("output_type") not in ("dump",)
    ]


def _write_csv(target: Path, rows: Sequence[dict[str, Any]], columns: list[str]) -> None:
    with target.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: (json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v)
                    for k, v in row.items()
                }
            )


def _download_documents(rows: Sequence[dict[str, Any]], folder: Path) -> None:
    """Fetch every row's documents into ``folder``; add their paths as ``files``."""
    folder.mkdir(parents=True, exist_ok=True)
    pools: dict[str, urllib3.PoolManager] = {}
    try:
        for row in rows:
            files: dict[str, str] = {}
            for step_id, url in (row.get("documents") or {}).items():
                ext = Path(str(url).split("?", 1)[0]).suffix[:10]
                target = folder / f"row{row['row']:05d}-{step_id}{ext}"
                target.write_bytes(_fetch(pools, str(url)))
                files[step_id] = str(target)
            row["files"] = files
    finally:
        for pool in pools.values():
            pool.clear()


def _fetch(pools: dict[str, urllib3.PoolManager], url: str) -> bytes:
    """``GET url``'s body; raise :class:`urllib3.exceptions.HTTPError` on no answer or
    an error status."""
    proxy = environment_proxy(url) or ""
    pool = pools.get(proxy)
    if pool is None:
        options: dict[str, Any] = {
            "timeout": _DOWNLOAD_TIMEOUT,
            "retries": _DOWNLOAD_RETRIES,
            "ca_certs": environment_ca_bundle() or certifi.where(),
        }
        pool = urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
        pools[proxy] = pool
    response = pool.request("GET", url)
    if response.status >= 400:
        where = urlsplit(url)._replace(query="", fragment="").geturl()
        raise urllib3.exceptions.HTTPError(f"GET {where}: HTTP {response.status}")
    return response.data
