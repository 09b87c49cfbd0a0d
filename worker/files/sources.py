"""Uploading a file input from wherever it is: a path, an ``https://`` URL, an object store.

:func:`upload_input` is what the submit step (in a worker) and ``enqueue_run(...,
upload_here=True)`` (in the caller's process) call: the bytes go from their
source through the Hatz client's ``POST /files/upload`` a chunk at a time, never
whole in memory. :func:`check_files` is the enqueue-time check (no I/O for URLs
beyond their form and literal address).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager

from config import Settings
from worker.errors import FileSourceError, InvalidRunError
from worker.files.https import HttpsSource, check_file_url
from worker.files.refs import RefKind, check_url_form, kind_of, local_path
from worker.files.store import StoreSource
from worker.hatz.client import HatzClient
from worker.hatz.types import UploadedFile
from worker.webhooks.ssrf import Resolver


def open_remote(
    ref: str, settings: Settings, resolver: Resolver | None = None
) -> AbstractContextManager[HttpsSource | StoreSource]:
    """Open a URL file input as an upload source (a context manager).

    Raises :class:`FileSourceError` when it cannot be read.
    """
    if kind_of(ref) is RefKind.HTTPS:
        return HttpsSource(ref, settings, resolver)
    return StoreSource(ref, settings)


def upload_input(
    client: HatzClient,
    ref: str,
    settings: Settings,
    *,
    scope_id: str,
    resolver: Resolver | None = None,
) -> UploadedFile:
    """Upload one file input (``POST /files/upload``, workflow scope); its ``file_uuid``.

    Raises :class:`FileSourceError` (the input cannot be read), ``OSError`` (a
    local file that cannot be read) or the client's :class:`HatzError`.
    """
    if kind_of(ref) is RefKind.LOCAL:
        return client.upload_file(local_path(ref), scope_type="workflow", scope_id=scope_id)
    with open_remote(ref, settings, resolver) as source:
        return client.upload_source(source, scope_type="workflow", scope_id=scope_id)


def check_urls(files: Mapping[str, str | os.PathLike[str]], settings: Settings) -> list[str]:
    """Enqueue-time problems of the URL file inputs: their form, and for ``https://``
    the SSRF guard's check of a literal address (names are resolved at fetch time)."""
    problems: list[str] = []
    for name, ref in files.items():
        if not isinstance(ref, str) or kind_of(ref) is RefKind.LOCAL:
            continue
        form = check_url_form(name, ref)
        problems += form
        if not form and kind_of(ref) is RefKind.HTTPS:
            try:
                check_file_url(name, ref, settings)
            except InvalidRunError as exc:
                problems += exc.problems
    return problems


def upload_here(
    client: HatzClient, files: Mapping[str, str], settings: Settings, *, scope_id: str
) -> dict[str, str]:
    """Upload every file input from this process; ``{input name: file_uuid}``.

    Raises :class:`InvalidRunError` listing the inputs that cannot be read; a
    Hatz API failure raises the client's :class:`HatzError`.
    """
    uploaded: dict[str, str] = {}
    problems: list[str] = []
    for name, ref in sorted(files.items()):
        try:
            uploaded[name] = upload_input(client, ref, settings, scope_id=scope_id).file_uuid
        except FileSourceError as exc:
            problems.append(f"cannot read file for input {name!r}: {exc}")
        except OSError as exc:
            problems.append(f"cannot read file for input {name!r}: {exc.strerror or exc}")
    if problems:
        raise InvalidRunError(problems)
    return uploaded
