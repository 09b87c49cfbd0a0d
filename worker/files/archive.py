"""The output archive: each document of a completed run copied to ``HATZ_ARCHIVE_URL``.

A presigned URL expires (``HATZ_PRESIGN_EXPIRES_IN``); the archived copy stays
as long as the store keeps it (its own lifecycle rules). The copy streams: the
document is read from its presigned URL through the Hatz client and written to
the archive a chunk at a time, its sha256 and size computed on the way.

Layout, under the archive URL (``s3://bucket/prefix/`` or ``file:///path/``)::

    <run_id>/<step_id>/<file name>

the file name being the one the presigned URL's answer gives
(``Content-Disposition``), else the last part of its path. On a local file
system the copy is written under a temporary name and renamed when complete;
an object store shows an object only once its upload completed.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from typing import Any

from worker.errors import ArchiveError, FileSourceError, HatzError
from worker.files.refs import display, protocol
from worker.files.store import filesystem
from worker.hatz.client import HatzClient

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 200


def archive_root(url: str) -> str:
    """The archive URL as a folder (one trailing ``/``)."""
    return url.rstrip("/") + "/"


def _segment(value: str, fallback: str) -> str:
    """One path segment: unsafe characters replaced, no ``.``/``..``, bounded length."""
    cleaned = _UNSAFE.sub("_", value).strip("._")[:_MAX_NAME]
    return cleaned or fallback


def archive_key(run_id: str, step_id: str, filename: str) -> str:
    """Where a document goes under the archive root: ``<run_id>/<step_id>/<file name>``."""
    return f"{_segment(run_id, 'run')}/{_segment(step_id, 'step')}/{_segment(filename, 'document')}"


def copy_document(
    client: HatzClient, url: str, root: str, run_id: str, step_id: str
) -> dict[str, Any]:
    """Copy one document from its presigned ``url`` into the archive at ``root``.

    Returns ``{"url", "sha256", "size"}`` of the archived copy. Raises
    :class:`ArchiveError` when the download or the write fails (nothing is left
    at the final key then).
    """
    try:
        with client.open_document(url) as document:
            dest = archive_root(root) + archive_key(run_id, step_id, document.filename)
            fs, path = filesystem(dest)
            local = protocol(dest) in ("file", "local")
            partial = path + ".partial" if local else path
            digest = hashlib.sha256()
            size = 0
            try:
                with fs.open(partial, "wb") as out:
                    for chunk in document.chunks:
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
                    if document.size is not None and size != document.size:
                        raise ArchiveError(
                            f"read {size} bytes where {document.size} were announced"
                        )
                if local:
                    fs.mv(partial, path)
            except BaseException:
                with contextlib.suppress(Exception):
                    fs.rm(partial)
                raise
    except ArchiveError:
        raise
    except (HatzError, FileSourceError) as exc:
        raise ArchiveError(f"step {step_id}: {exc}") from None
    except Exception as exc:  # a store's own errors (OSError, botocore's) as one type
        raise ArchiveError(f"step {step_id}: {type(exc).__name__}: {exc}") from None
    return {"url": dest, "sha256": digest.hexdigest(), "size": size}


def read_archived(url: str) -> bytes:
    """An archived copy's bytes (tests, the benchmark, ``hatz-worker`` users checking one)."""
    fs, path = filesystem(url)
    try:
        data: bytes = fs.cat_file(path)
    except Exception as exc:
        raise ArchiveError(f"{display(url)}: {type(exc).__name__}: {exc}") from None
    return data
