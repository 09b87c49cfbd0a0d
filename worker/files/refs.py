"""What a file input names: a local path, an ``https://`` URL or an object-store URL.

A file input (``files={"report": ...}``) is one of:

* a local path, read by whichever process uploads it (:func:`local_path` is the
  one place in this package that turns an input into a path on this machine);
* an ``https://`` URL, fetched through the callbacks' SSRF guard
  (:mod:`worker.files.https`);
* an object-store URL (``s3://``, ``gs://``, ``az://``, ``abfs://``, … any
  protocol fsspec knows), read through fsspec with that store's own standard
  credentials (:mod:`worker.files.store`).

This module only classifies and checks the form (no I/O), for enqueue time.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from urllib.parse import urlsplit

from fsspec.registry import known_implementations

#: Object-store protocols refused as inputs: they would read this machine or run code.
_NOT_STORES = frozenset(
    {"file", "local", "memory", "http", "https", "ftp", "sftp", "ssh", "smb", "webhdfs"}
)


class RefKind(Enum):
    """Where a file input's bytes come from."""

    LOCAL = "local"
    HTTPS = "https"
    STORE = "store"


def protocol(ref: str) -> str:
    """The URL scheme of ``ref`` in lower case ("" for a plain path)."""
    if "://" not in ref:
        return ""
    return ref.split("://", 1)[0].lower()


def kind_of(ref: str | os.PathLike[str]) -> RefKind:
    """Classify a file input (a path-like object is always local)."""
    if not isinstance(ref, str):
        return RefKind.LOCAL
    scheme = protocol(ref)
    if not scheme:
        return RefKind.LOCAL
    return RefKind.HTTPS if scheme in ("https", "http") else RefKind.STORE


def local_path(ref: str | os.PathLike[str]) -> Path:
    """The absolute path a local file input names (``~`` expanded).

    The one place where a file input becomes a path on this machine. The paths
    that reach it were checked against ``HATZ_FILE_ROOTS`` and resolved by
    :mod:`worker.runs.file_roots` (at enqueue, and in the worker right before
    the upload); this package knows nothing of run settings.
    """
    return Path(ref).expanduser().resolve()


def display(ref: str) -> str:
    """A file input URL for messages and logs: no credentials, no query string."""
    if kind_of(ref) is RefKind.LOCAL:
        return ref
    parts = urlsplit(ref)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


def check_url_form(name: str, ref: str) -> list[str]:
    """Problems with a URL file input's form (no I/O): scheme, host, path."""
    scheme = protocol(ref)
    where = f"file URL for input {name!r}"
    if scheme == "http":
        return [f"{where} must use https:// (plain http is refused): {display(ref)}"]
    try:
        parts = urlsplit(ref)
    except ValueError as exc:
        return [f"{where} is malformed ({exc})"]
    if scheme == "https":
        return [] if parts.hostname else [f"{where} has no host: {display(ref)}"]
    if scheme in _NOT_STORES or scheme not in known_implementations:
        return [
            f"{where} has an unsupported scheme {scheme!r} "
            "(a local path, https://, or an object store such as s3://, gs://, az://)"
        ]
    if not parts.netloc or not parts.path.strip("/"):
        return [f"{where} must name a bucket and an object: {display(ref)}"]
    return []
