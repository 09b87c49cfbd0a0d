"""The Hatz API client: the only module that knows URLs, headers and status codes.

Every call goes through :meth:`HatzClient._request`, which sets auth and
timeouts, retries what is safe to retry, and turns every failure into a
:class:`~worker.errors.HatzError` subclass via :func:`error_from_response`.

Retry rule (there is no idempotency key in the Hatz API):

* ``GET`` endpoints, file uploads and presigned-URL requests are idempotent in
  effect: transient failures (connection errors, timeouts, 5xx, plain 429) are
  retried here with exponential backoff, jitter and ``Retry-After``. A repeated
  upload at worst leaves an unused file; it costs no credits.
* ``POST /workflows/run`` and ``POST /app/{id}/query`` spend credits: they are
  retried here only when the request provably never left this machine
  (:class:`~worker.errors.HatzConnectError`) or the API refused it with a plain
  429. Everything else is raised for the caller to decide (the run pipeline
  treats a lost answer as *ambiguous*, never as "try again").
"""

from __future__ import annotations

import itertools
import json as jsonlib
import logging
import mimetypes
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, unquote, urlencode, urlsplit

from pydantic import BaseModel, SecretStr, ValidationError

from config import Settings
from worker.errors import (
    CREDIT_OVERAGE_TEXT,
    FileSourceError,
    HatzAPIError,
    HatzAuthError,
    HatzConnectError,
    HatzCreditOverageError,
    HatzError,
    HatzNotFoundError,
    HatzRateLimitError,
    HatzResponseError,
    HatzServerError,
    HatzTimeoutError,
    HatzTransportError,
    HatzValidationError,
)
from worker.hatz.transport import (
    Body,
    ConnectFailed,
    ConnectTimedOut,
    HttpPool,
    ReadTimedOut,
    Response,
    TransportError,
    environment_ca_bundle,
    environment_proxy,
)
from worker.hatz.types import App, Job, PresignedURL, QueryResult, SubmittedJob, UploadedFile
from worker.retry_after import parse_retry_after

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
Observer = Callable[[str, str, "int | None", "str | None", float], None]

_CHUNK = 256 * 1024
_MAX_DETAIL = 300
USER_AGENT = "hatz-worker/0.1"


class Pool(Protocol):
    """What the client sends through: :class:`~worker.hatz.transport.HttpPool` (tests pass a fake).

    ``urlopen`` returns every answer, whatever its status, and raises a
    :class:`~worker.hatz.transport.TransportError` when none arrived; it never retries
    and never follows redirects.
    """

    def urlopen(
        self,
        method: str,
        url: str,
        *,
        body: Body = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response: ...

    def clear(self) -> None: ...


def _pool_for(
    base_url: str, connect_timeout: float, read_timeout: float, maxsize: int = 32
) -> HttpPool:
    """Keep-alive connections for ``base_url``, proxy and CA bundle read from the
    environment once (``HTTPS_PROXY``/``NO_PROXY``, ``REQUESTS_CA_BUNDLE``/
    ``CURL_CA_BUNDLE``, else certifi's bundle), as ``requests`` would read them.
    """
    return HttpPool(
        connect_timeout,
        read_timeout,
        maxsize=maxsize,
        proxy=environment_proxy(base_url),
        ca_bundle=environment_ca_bundle(),
    )


def _detail(response: Response) -> str:
    """The API's explanation: ``detail`` of a JSON body, else a short excerpt of the text."""
    data = response.data or b""
    try:
        body = jsonlib.loads(data)
    except ValueError:
        text = " ".join(data.decode("utf-8", "replace").split())
        return text[:_MAX_DETAIL] or response.reason or "no detail"
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail[:_MAX_DETAIL]
    if isinstance(detail, list):  # FastAPI validation errors
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
        return "; ".join(parts)[:_MAX_DETAIL] or "validation error"
    return str(body)[:_MAX_DETAIL]


def error_from_response(response: Response, method: str, path: str) -> HatzAPIError:
    """Build the typed error for a non-2xx answer: the one place that reads status codes."""
    status = response.status
    detail = _detail(response)
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    cls: type[HatzAPIError]
    if status in (401, 403):
        cls = HatzAuthError
    elif status == 404:
        cls = HatzNotFoundError
    elif status == 429:
        overage = CREDIT_OVERAGE_TEXT in detail.lower()
        cls = HatzCreditOverageError if overage else HatzRateLimitError
    elif 400 <= status < 500:
        cls = HatzValidationError
    else:
        cls = HatzServerError
    return cls(status, detail, method=method, path=path, retry_after=retry_after)


def _mapped(chunks: Iterator[bytes], where: str) -> Iterator[bytes]:
    """``chunks``, a transport failure raised as :class:`HatzTransportError`."""
    try:
        yield from chunks
    except (TransportError, OSError) as exc:
        raise _transport_error(exc, "GET", where) from None


def _transport_error(exc: Exception, method: str, path: str) -> HatzError:
    """Map a transport failure onto whether the request may have reached the server."""
    where = f"{method} {path}"
    if isinstance(exc, ConnectTimedOut):  # (a ConnectFailed subclass)
        return HatzConnectError(f"connect timeout ({where})")
    if isinstance(exc, ConnectFailed):
        return HatzConnectError(f"cannot connect ({where})")
    if isinstance(exc, ReadTimedOut):
        return HatzTimeoutError(f"read timeout ({where})")
    inner = exc.cause if isinstance(exc, TransportError) and exc.cause else exc
    return HatzTransportError(f"connection lost: {type(inner).__name__} ({where})")


class UploadSource(Protocol):
    """A file to upload from anywhere: a name, an exact size, and its bytes in chunks.

    ``chunks()`` reads the whole file afresh on every call (a retried upload calls
    it again) and raises :class:`~worker.errors.FileSourceError` when it cannot.
    """

    @property
    def name(self) -> str: ...

    @property
    def size(self) -> int: ...

    def chunks(self) -> Iterator[bytes]: ...


class _PathSource:
    """A local file as an :class:`UploadSource`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        self.size = path.stat().st_size

    def chunks(self) -> Iterator[bytes]:
        with self.path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                yield chunk


class _MultipartFile:
    """A multipart/form-data body that streams one file from its source.

    It has a ``__len__``, so it is sent with a Content-Length instead of chunked
    encoding, and it never holds more than one chunk of the file in memory. A
    source that yields another number of bytes than its size stops the upload
    (:class:`~worker.errors.FileSourceError`) rather than send a broken body.
    """

    def __init__(self, source: UploadSource, fields: Mapping[str, str]) -> None:
        self.source = source
        self.boundary = uuid.uuid4().hex
        ctype = mimetypes.guess_type(source.name)[0] or "application/octet-stream"
        head = "".join(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
            for k, v in fields.items()
        )
        filename = "".join(c if c.isprintable() and c not in '"\\' else "_" for c in source.name)
        head += (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n"
        )
        self._head = head.encode()
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._size = source.size

    @property
    def content_type(self) -> str:
        """The Content-Type header value, with this body's boundary."""
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return len(self._head) + self._size + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self._head
        sent = 0
        for chunk in self.source.chunks():
            sent += len(chunk)
            if sent > self._size:
                break
            yield chunk
        if sent != self._size:
            raise FileSourceError(
                f"{self.source.name}: read {sent} bytes where {self._size} were announced"
            )
        yield self._tail


@dataclass(frozen=True)
class Download:
    """A document behind a presigned URL, being read: its name, size and bytes in chunks."""

    filename: str
    size: int | None
    content_type: str
    chunks: Iterator[bytes]


def _download_name(url: str, disposition: str | None) -> str:
    """The document's file name: the answer's Content-Disposition, else the URL's last part."""
    if disposition:
        message = Message()
        message["content-disposition"] = disposition
        name = message.get_filename()
        if name:
            return name
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or "document"


class HatzClient:
    """A client for the Hatz Workflows and App Builder APIs.

    One :class:`~worker.hatz.transport.HttpPool` (keep-alive connections); connect and read
    timeouts always set; the API key is kept as a :class:`SecretStr` and never
    appears in reprs, logs or exceptions.
    """

    def __init__(
        self,
        *,
        api_key: str | SecretStr,
        base_url: str = "https://ai.hatz.ai/v1",
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        retries: int = 3,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 10.0,
        pool: Pool | None = None,
        sleep: Callable[[float], None] = time.sleep,
        observer: Observer | None = None,
        before_request: Callable[[str, str], None] | None = None,
    ) -> None:
        self._api_key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.retries = retries
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self._sleep = sleep
        #: Called once per HTTP attempt (metrics): method, path, status, error class, seconds.
        self.observer = observer
        # Called before every attempt (e.g. the shared API budget); it may raise a
        # HatzError, which is never retried here since nothing was sent.
        self._before_request = before_request
        self._pool = pool or _pool_for(self.base_url, connect_timeout, read_timeout)
        # Presigned documents live elsewhere (object storage): pools of their own, per proxy.
        self._download_pools: dict[str | None, HttpPool] = {}

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        before_request: Callable[[str, str], None] | None = None,
        observer: Observer | None = None,
    ) -> HatzClient:
        """A client configured from :class:`config.Settings`."""
        return cls(
            before_request=before_request,
            observer=observer,
            api_key=settings.api_key,
            base_url=str(settings.base_url),
            connect_timeout=settings.http_connect_timeout,
            read_timeout=settings.http_read_timeout,
            retries=settings.http_retries,
            retry_base_delay=settings.http_retry_base_delay,
            retry_max_delay=settings.http_retry_max_delay,
        )

    def __repr__(self) -> str:
        return f"HatzClient(base_url={self.base_url!r})"

    def close(self) -> None:
        """Close pooled connections."""
        self._pool.clear()
        for pool in self._download_pools.values():
            pool.clear()

    def _downloads(self, url: str) -> HttpPool:
        """The pool that fetches ``url`` (a presigned document), through its proxy if any."""
        proxy = environment_proxy(url)
        pool = self._download_pools.get(proxy)
        if pool is None:
            connect, read = self.timeout
            pool = HttpPool(
                connect, read, maxsize=4, proxy=proxy, ca_bundle=environment_ca_bundle()
            )
            self._download_pools[proxy] = pool
        return pool

    def __enter__(self) -> HatzClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the one door ---------------------------------------------------------------

    def _backoff(self, attempt: int, retry_after: float | None) -> float | None:
        """Delay before retry ``attempt`` (1-based), or None when it is too long to wait here."""
        if retry_after is not None:
            return retry_after if retry_after <= self.retry_max_delay else None
        delay = min(self.retry_max_delay, self.retry_base_delay * 2.0 ** (attempt - 1))
        return float(delay * random.uniform(0.5, 1.0))  # "equal jitter"

    def _send_once(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None,
        json: Any,
        body: Callable[[], tuple[Iterable[bytes], str]] | None,
    ) -> Response:
        headers = {
            "X-API-Key": self._api_key.get_secret_value(),
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        data: Body = None
        if body is not None:
            data, headers["Content-Type"] = body()
            if isinstance(data, Sized):
                headers["Content-Length"] = str(len(data))
        elif json is not None:
            data = jsonlib.dumps(json).encode()
            headers["Content-Type"] = "application/json"
        url = self.base_url + path
        if params:
            url += "?" + urlencode(params, doseq=True)
        started = time.monotonic()
        try:
            response = self._pool.urlopen(method, url, body=data, headers=headers)
        except (TransportError, OSError) as exc:
            error = _transport_error(exc, method, path)
            self._observe(method, path, None, error, started)
            raise error from None
        log.debug(
            "hatz %s %s -> %s in %.0f ms",
            method,
            path,
            response.status,
            (time.monotonic() - started) * 1000,
        )
        if not 200 <= response.status < 300:
            api_error = error_from_response(response, method, path)
            self._observe(method, path, response.status, api_error, started)
            raise api_error
        self._observe(method, path, response.status, None, started)
        return response

    def _observe(
        self, method: str, path: str, status: int | None, error: HatzError | None, started: float
    ) -> None:
        if self.observer is not None:
            name = type(error).__name__ if error is not None else None
            self.observer(method, path, status, name, time.monotonic() - started)

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        body: Callable[[], tuple[Iterable[bytes], str]] | None = None,
        idempotent: bool,
    ) -> Any:
        """Send one API call; return its JSON body or raise a typed :class:`HatzError`."""
        attempt = 0
        while True:
            if self._before_request is not None:
                self._before_request(method, path)
            try:
                response = self._send_once(method, path, params=params, json=json, body=body)
                data = response.data or b""
                try:
                    return jsonlib.loads(data)
                except ValueError:
                    text = data[:100].decode("utf-8", "replace")
                    raise HatzResponseError(
                        f"{method} {path}: answer is not JSON: {text!r}"
                    ) from None
            except (HatzServerError, HatzRateLimitError, HatzTransportError) as exc:
                safe = idempotent or isinstance(exc, HatzConnectError | HatzRateLimitError)
                attempt += 1
                if not safe or attempt > self.retries:
                    raise
                retry_after = exc.retry_after if isinstance(exc, HatzAPIError) else None
                delay = self._backoff(attempt, retry_after)
                if delay is None:
                    raise
                log.info("hatz %s %s: %s; retry %d in %.2f s", method, path, exc, attempt, delay)
                self._sleep(delay)

    @staticmethod
    def _parse(model: type[M], data: Any, what: str) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            raise HatzResponseError(f"{what}: unexpected answer ({problems})") from None

    # --- Workflows ----------------------------------------------------------------

    def upload_file(
        self, path: str | os.PathLike[str], *, scope_type: str = "workflow", scope_id: str = ""
    ) -> UploadedFile:
        """``POST /files/upload``: stream a local file; return its ``file_uuid``."""
        file_path = Path(path)
        if not file_path.is_file():
            raise FileNotFoundError(f"not a readable file: {file_path}")
        return self.upload_source(_PathSource(file_path), scope_type=scope_type, scope_id=scope_id)

    def upload_source(
        self, source: UploadSource, *, scope_type: str = "workflow", scope_id: str = ""
    ) -> UploadedFile:
        """``POST /files/upload``: stream a file from any :class:`UploadSource`.

        A retry reads the source again. :class:`~worker.errors.FileSourceError`
        from the source is raised as it is (never retried here).
        """
        fields = {"scope_type": scope_type, "scope_id": scope_id} if scope_id else {}

        def body() -> tuple[Iterable[bytes], str]:
            multipart = _MultipartFile(source, fields)
            return multipart, multipart.content_type

        data = self._request("POST", "/files/upload", body=body, idempotent=True)
        return self._parse(UploadedFile, data, "POST /files/upload")

    def run_workflow(
        self, app_id: str, inputs: Mapping[str, Any], *, is_draft_app: bool = False
    ) -> SubmittedJob:
        """``POST /workflows/run``: start a job (spends credits; see the module's retry rule)."""
        payload = {"app_id": app_id, "inputs": dict(inputs), "is_draft_app": is_draft_app}
        data = self._request("POST", "/workflows/run", json=payload, idempotent=False)
        return self._parse(SubmittedJob, data, "POST /workflows/run")

    def get_job(self, job_id: str) -> Job:
        """``GET /workflows/{job_id}``: the job's status and step outputs so far."""
        path = f"/workflows/{quote(job_id, safe='')}"
        return self._parse(Job, self._request("GET", path, idempotent=True), "GET /workflows/{id}")

    def presigned_url(self, job_id: str, step_id: str, *, expires_in: int = 3600) -> PresignedURL:
        """``POST /workflows/presigned-url``: a temporary download URL for a step's document."""
        payload = {"job_id": job_id, "step_id": step_id, "expires_in": expires_in}
        data = self._request("POST", "/workflows/presigned-url", json=payload, idempotent=True)
        return self._parse(PresignedURL, data, "POST /workflows/presigned-url")

    @contextmanager
    def open_document(self, url: str) -> Iterator[Download]:
        """``GET`` a presigned document URL (no API key: it is signed); yield its bytes.

        Raises a typed :class:`HatzError` when the download is refused (an expired
        URL answers 403) or fails; the chunks raise :class:`HatzTransportError`
        when the body breaks off.
        """
        where = urlsplit(url)._replace(query="", fragment="").geturl()
        try:
            with self._downloads(url).stream(url, headers={"User-Agent": USER_AGENT}) as answer:
                if not 200 <= answer.status < 300:
                    excerpt = b"".join(itertools.islice(answer.chunks, 4))[:2048]
                    failed = Response(answer.status, answer.reason, answer.headers, excerpt)
                    raise error_from_response(failed, "GET", where)
                length = answer.headers.get("Content-Length")
                yield Download(
                    filename=_download_name(url, answer.headers.get("Content-Disposition")),
                    size=int(length) if length and length.isdigit() else None,
                    content_type=answer.headers.get("Content-Type") or "application/octet-stream",
                    chunks=_mapped(answer.chunks, where),
                )
        except (TransportError, OSError) as exc:
            raise _transport_error(exc, "GET", where) from None

    # --- App Builder --------------------------------------------------------------

    def list_apps(self, *, name: str | None = None, limit: int = 100, offset: int = 0) -> list[App]:
        """``GET /app/list``: one page of apps and workflows (``limit`` 1 to 1000)."""
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        if offset < 0:
            raise ValueError("offset must be >= 0")
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if name:
            params["name"] = name
        data = self._request("GET", "/app/list", params=params, idempotent=True)
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise HatzResponseError("GET /app/list: answer has no 'data' list")
        return [self._parse(App, item, "GET /app/list") for item in items]

    def iter_apps(self, *, name: str | None = None, page_size: int = 100) -> Iterator[App]:
        """Every app and workflow, paging through ``/app/list``."""
        offset = 0
        while True:
            page = self.list_apps(name=name, limit=page_size, offset=offset)
            yield from page
            if len(page) < page_size:
                return
            offset += len(page)

    def get_app(self, app_id: str) -> App:
        """``GET /app/{id}``: one app or workflow, with its ``user_inputs``."""
        path = f"/app/{quote(app_id, safe='')}"
        return self._parse(App, self._request("GET", path, idempotent=True), "GET /app/{id}")

    def query_app(self, app_id: str, inputs: Mapping[str, Any]) -> QueryResult:
        """``POST /app/{id}/query`` with ``stream: false``."""
        path = f"/app/{quote(app_id, safe='')}/query"
        data = self._request(
            "POST", path, json={"inputs": dict(inputs), "stream": False}, idempotent=False
        )
        if not isinstance(data, dict):
            raise HatzResponseError(f"POST {path}: answer is not a JSON object")
        return QueryResult.model_validate(data)
