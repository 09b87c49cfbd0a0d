"""A batch's results: one line per row (status, outputs, document URLs), optionally with
every document downloaded.

Downloads go through urllib3, the one HTTP library of every outgoing request;
the proxy and CA bundle come from the environment as for the Hatz client
(:func:`worker.hatz.transport.environment_proxy`, ``REQUESTS_CA_BUNDLE``/
``CURL_CA_BUNDLE``, else certifi's bundle). Before downloading, presigned URLs
that have expired (or are about to) are renewed; a failed download's error
names the URL without its query string, where the signature is.

CSV cells that start with ``=``, ``+``, ``-`` or ``@`` (or a tab or carriage
return) get a leading ``'`` so that a spreadsheet shows them as text instead
of running them as formulas (OWASP "CSV injection"): row inputs and outputs
come from users and models.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import certifi
import urllib3

from worker.batches.records import row_run_ids
from worker.context import Context
from worker.errors import InvalidBatchError
from worker.hatz.transport import check_proxy_url, environment_ca_bundle, environment_proxy
from worker.ops.redaction import safe_url
from worker.runs.documents import refresh_documents
from worker.store.ledger import Run

#: Seconds to connect to, and between bytes from, a document's host.
_DOWNLOAD_TIMEOUT = urllib3.Timeout(connect=5, read=60)
#: Redirects are followed (a presigned URL may move); nothing is retried.
_DOWNLOAD_RETRIES = urllib3.Retry(total=10, connect=0, read=0, other=0, status=0, redirect=10)
_COLUMNS = ["row", "run_id", "status", "error", "job_id", "inputs", "outputs", "documents"]
#: Renew presigned URLs that expire within this many seconds before downloading them.
_RENEW_MARGIN = 120.0
#: What a spreadsheet may read as the start of a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
#: A query string in an error text (a presigned URL's signature is there).
_QUERY = re.compile(r"\?[^\s'\")]*")


class DocumentDownloadError(InvalidBatchError, urllib3.exceptions.HTTPError):
    """Raised when a document cannot be downloaded; the message names its URL without
    the query string (the signature), and no exception carrying it is chained."""


def result_rows(ctx: Context, batch_id: str, *, renew: bool = False) -> list[dict[str, Any]]:
    """One dict per batch row, in row order: row, run_id, status, error, outputs, documents.

    ``renew``: presigned URLs that expire within :data:`_RENEW_MARGIN` are renewed first.
    """
    out: list[dict[str, Any]] = []
    for run_id in row_run_ids(ctx, batch_id):
        run = ctx.ledger.get(run_id)
        if run is None:
            out.append({"row": None, "run_id": run_id, "status": "expired"})
            continue
        if renew:
            run = refresh_documents(ctx, run, margin=_RENEW_MARGIN)
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
    target = Path(out)
    suffix = target.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise InvalidBatchError([f"{target}: results go to a .csv or .jsonl file"])
    # A file beside the target first: a bad --out fails before any download, and a
    # failed run leaves an earlier results file as it was.
    partial = target.with_name(f".{target.name}.partial")
    try:
        handle = partial.open("w", newline="", encoding="utf-8")
    except OSError as exc:
        raise InvalidBatchError([f"{target}: cannot write it ({exc.strerror or exc})"]) from None
    try:
        with handle:
            rows = result_rows(ctx, batch_id, renew=bool(download))
            if download:
                _download_documents(rows, Path(download))
            if suffix == ".csv":
                _write_csv(handle, rows, [*_COLUMNS, "files"] if download else _COLUMNS)
            else:
                for row in rows:
                    handle.write(json.dumps(row, sort_keys=True, default=str) + "\n")
        os.replace(partial, target)
    except OSError as exc:
        raise InvalidBatchError([f"{target}: cannot write it ({exc.strerror or exc})"]) from None
    finally:
        partial.unlink(missing_ok=True)
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


def _write_csv(handle: TextIO, rows: Sequence[dict[str, Any]], columns: list[str]) -> None:
    writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: csv_cell(json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v)
                for k, v in row.items()
            }
        )


def csv_cell(value: Any) -> Any:
    """``value`` as a CSV cell: text a spreadsheet would run as a formula gets a ``'``."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _download_documents(rows: Sequence[dict[str, Any]], folder: Path) -> None:
    """Fetch every row's documents into ``folder``; add their paths as ``files``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidBatchError(
            [f"{folder}: cannot make the folder ({exc.strerror or exc})"]
        ) from None
    pools: dict[str, urllib3.PoolManager] = {}
    try:
        for row in rows:
            files: dict[str, str] = {}
            for step_id, url in (row.get("documents") or {}).items():
                ext = Path(str(url).split("?", 1)[0]).suffix[:10]
                target = folder / f"row{row['row']:05d}-{step_id}{ext}"
                _save(target, _fetch(pools, str(url)))
                files[step_id] = str(target)
            row["files"] = files
    finally:
        for pool in pools.values():
            pool.clear()


def _save(target: Path, data: bytes) -> None:
    try:
        target.write_bytes(data)
    except OSError as exc:
        raise InvalidBatchError([f"{target}: cannot write it ({exc.strerror or exc})"]) from None


def _fetch(pools: dict[str, urllib3.PoolManager], url: str) -> bytes:
    """``GET url``'s body; raise :class:`InvalidBatchError` on no answer or an error
    status, naming the URL without its query (the signature) and keeping urllib3's
    exception, whose text carries it, out of the chain."""
    try:
        return _get(pools, url)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        reason = _QUERY.sub("?[REDACTED]", str(exc))[:300]
        problem = f"cannot download {safe_url(url)}: {reason}"
    raise DocumentDownloadError([problem])


def _get(pools: dict[str, urllib3.PoolManager], url: str) -> bytes:
    proxy = environment_proxy(url) or ""
    if proxy:
        check_proxy_url(proxy)
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
