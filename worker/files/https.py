"""``https://`` file inputs: fetched through the callbacks' SSRF guard, streamed, capped.

No second guard and no second transport: the URL is checked, resolved, every
address checked and the connection pinned to the checked address by
:func:`worker.webhooks.ssrf.resolve_url` (with the file inputs' own allowance,
``HATZ_FILE_URL_ALLOW_PRIVATE`` / ``HATZ_FILE_URL_ALLOW_HOSTS``), and the bytes
come through :func:`worker.webhooks.transport.get_stream`, whose timer ends the
exchange at the total deadline (``HATZ_FILE_FETCH_TIMEOUT``) whatever the server
does. Redirects are not followed (a redirect could lead past the guard).

An answer with a Content-Length is streamed straight into the upload; one
without is spooled to a temporary file first (the upload needs its size and is
never sent chunked), at most ``HATZ_FILE_MAX_BYTES`` either way. A retried
upload fetches again, within what is left of the same deadline.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
import time
from collections.abc import Iterator
from typing import IO
from urllib.parse import unquote, urlsplit

from config import Settings
from worker.errors import FileSourceError, UnsafeCallbackURLError, UnsafeFileURLError
from worker.files.refs import display
from worker.webhooks.ssrf import Allowance, Resolver, check_url, resolve_url
from worker.webhooks.transport import DeliveryError, StreamedResponse, get_stream

_CHUNK = 256 * 1024
#: Bytes of an answer without a Content-Length kept in memory before spooling to disk.
_SPOOL_IN_MEMORY = 1024 * 1024


def check_file_url(name: str, url: str, settings: Settings) -> None:
    """Refuse an ``https://`` file input by its form and literal address (no DNS).

    Raises :class:`UnsafeFileURLError` with the reason.
    """
    try:
        check_url(url, Allowance.file_urls(settings))
    except UnsafeCallbackURLError as exc:
        raise UnsafeFileURLError(name, exc.reason) from None


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS for file URLs: ``HATZ_FILE_URL_CA_BUNDLE``, else the environment's bundle
    (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``), else the system's trust store."""
    bundle = (
        settings.file_url_ca_bundle
        or os.environ.get("REQUESTS_CA_BUNDLE")
        or os.environ.get("CURL_CA_BUNDLE")
    )
    if not bundle:
        return ssl.create_default_context()
    if os.path.isdir(bundle):
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context(cafile=bundle)


class HttpsSource:
    """An ``https://`` file input as an upload source (:class:`worker.hatz.client.UploadSource`).

    Opening it sends the ``GET`` (to learn the size); use it as a context manager
    so the connection and any spooled copy are released.
    """

    def __init__(self, url: str, settings: Settings, resolver: Resolver | None = None) -> None:
        self.url = url
        self.name = unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or "file"
        self._settings = settings
        self._resolver = resolver
        self._deadline = time.monotonic() + settings.file_fetch_timeout
        self._stack = contextlib.ExitStack()
        self._pending: Iterator[bytes] | None = None
        self._spool: IO[bytes] | None = None
        try:
            self.size = self._start()
        except BaseException:
            self._stack.close()
            raise

    def __enter__(self) -> HttpsSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the connection and the spooled copy, if any."""
        self._stack.close()

    def chunks(self) -> Iterator[bytes]:
        """The file's bytes: the open answer first, a fresh ``GET`` for a retry."""
        if self._spool is not None:
            self._spool.seek(0)
            while chunk := self._spool.read(_CHUNK):
                yield chunk
            return
        pending, self._pending = self._pending, None
        if pending is None:
            answer = self._open()
            if self._length(answer) != self.size:
                raise FileSourceError(f"{display(self.url)} changed while it was read")
            pending = answer.chunks
        yield from self._guarded(pending)

    # --- steps ----------------------------------------------------------------------

    def _start(self) -> int:
        answer = self._open()
        length = self._length(answer)
        if length is not None:
            self._pending = answer.chunks
            return length
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
        self._spool = self._stack.enter_context(spool)
        for chunk in self._guarded(answer.chunks):
            spool.write(chunk)
        return spool.tell()

    def _open(self) -> StreamedResponse:
        """Check, resolve and pin the URL, send the ``GET``; the answer, status 200 only."""
        left = self._deadline - time.monotonic()
        where = display(self.url)
        if left <= 0:
            raise FileSourceError(f"{where}: past the fetch deadline", transient=True)
        try:
            target = resolve_url(self.url, Allowance.file_urls(self._settings), self._resolver)
        except UnsafeCallbackURLError as exc:
            raise FileSourceError(f"{where} refused: {exc.reason}") from None
        except OSError as exc:
            raise FileSourceError(
                f"{where}: host does not resolve ({exc})", transient=True
            ) from None
        fetch = get_stream(
            target,
            {"Accept": "*/*", "User-Agent": "hatz-worker/0.1"},
            connect_timeout=min(self._settings.http_connect_timeout, left),
            total_timeout=left,
            chunk_size=_CHUNK,
            ssl_context=ssl_context(self._settings),
        )
        try:
            answer = self._stack.enter_context(fetch)
        except DeliveryError as exc:
            raise FileSourceError(f"{where}: {exc}", transient=exc.kind != "tls") from None
        if answer.status != 200:
            moved = " (redirects are not followed)" if 300 <= answer.status < 400 else ""
            transient = answer.status >= 500 or answer.status == 429
            raise FileSourceError(f"{where} answered {answer.status}{moved}", transient=transient)
        return answer

    def _length(self, answer: StreamedResponse) -> int | None:
        value = answer.headers.get("content-length")
        if value is None or not value.strip().isdigit():
            return None
        length = int(value)
        if length > self._settings.file_max_bytes:
            raise FileSourceError(
                f"{display(self.url)} is {length} bytes; HATZ_FILE_MAX_BYTES is "
                f"{self._settings.file_max_bytes}"
            )
        return length

    def _guarded(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """``chunks`` under the size cap, a transport failure as :class:`FileSourceError`."""
        total = 0
        limit = self._settings.file_max_bytes
        try:
            for chunk in chunks:
                total += len(chunk)
                if total > limit:
                    raise FileSourceError(
                        f"{display(self.url)} is larger than HATZ_FILE_MAX_BYTES ({limit})"
                    )
                yield chunk
        except DeliveryError as exc:
            raise FileSourceError(f"{display(self.url)}: {exc}", transient=True) from None
