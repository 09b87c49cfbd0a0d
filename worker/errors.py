"""Every exception hatz-worker raises, under one root: :class:`HatzError`.

The Hatz client (:mod:`worker.hatz.client`) is the only module that maps HTTP
status codes onto these classes; everything else catches the classes.
"""

from __future__ import annotations

CREDIT_OVERAGE_TEXT = "credit overage"


class HatzError(Exception):
    """Root of every hatz-worker error; catch this to catch them all."""


# --- Hatz API answered with an error ------------------------------------------------


class HatzAPIError(HatzError):
    """Raised when the Hatz API answers with a non-2xx status.

    ``detail`` is the API's own explanation (its ``{"detail": ...}`` body, or a
    short excerpt of a non-JSON body); ``retry_after`` is the parsed
    ``Retry-After`` header in seconds, when the API sent one.
    """

    def __init__(
        self,
        status_code: int,
        detail: str,
        *,
        method: str = "",
        path: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.detail = detail
        self.method = method
        self.path = path
        self.retry_after = retry_after
        where = f" ({method} {path})" if method else ""
        super().__init__(f"{status_code}: {detail}{where}")


class HatzAuthError(HatzAPIError):
    """Raised when the API key is missing, wrong or lacks access (401/403)."""


class HatzNotFoundError(HatzAPIError):
    """Raised when the API answers 404, e.g. ``{"detail": "Job not found"}``."""


class HatzCreditOverageError(HatzAPIError):
    """Raised when the organisation exceeded its credit limit (429 "...credit overage.").

    Organisation-wide and long-lived: pause and retry much later; never a reason
    to drop a run. Distinct from :class:`HatzRateLimitError`.
    """


class HatzRateLimitError(HatzAPIError):
    """Raised when the API answers a plain 429 (request rate); honour ``retry_after``."""


class HatzValidationError(HatzAPIError):
    """Raised when the API rejects a request as invalid (400, 409, 413, 422 and other 4xx)."""


class HatzServerError(HatzAPIError):
    """Raised when the API answers 5xx; transient unless it keeps happening."""


# --- no usable answer -----------------------------------------------------------------


class HatzTransportError(HatzError):
    """Raised when no HTTP answer arrived, and the request may have reached the server.

    (Connection reset after sending, truncated response, read timeout.) A
    non-idempotent request that fails this way is *ambiguous*.
    """


class HatzTimeoutError(HatzTransportError):
    """Raised when the server accepted the request but did not answer within the read timeout."""


class HatzConnectError(HatzTransportError):
    """Raised when the connection could not be opened: the request was never sent.

    Always safe to retry, even for ``POST /workflows/run``.
    """


class HatzBudgetError(HatzConnectError):
    """Raised when the shared API budget (``HATZ_API_MAX_RPS``) has no token soon enough.

    Nothing was sent, so it is as safe to retry as a refused connection;
    ``retry_after`` says when a token is expected. Callers reschedule instead of sleeping.
    """

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"shared API budget exhausted; next token in {retry_after:.2f} s")


class HatzResponseError(HatzError):
    """Raised when a 2xx answer's body is not what the API spec promises.

    (Not JSON, or a required field such as ``file_uuid`` or ``job_id`` missing.)
    """


# --- hatz-worker's own errors -------------------------------------------------------


class InvalidRunError(HatzError):
    """Raised when a run request is invalid before anything is enqueued.

    ``problems`` lists every problem found, not just the first.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class FileRefusedError(InvalidRunError):
    """Raised when a local file lies outside ``HATZ_FILE_ROOTS`` or under /proc, /sys or /dev.

    ``path`` is the path as given, ``resolved`` where it really leads (symlinks
    and ``..`` resolved).
    """

    def __init__(self, problems: str | list[str], *, path: str = "", resolved: str = "") -> None:
        super().__init__([problems] if isinstance(problems, str) else problems)
        self.path = path
        self.resolved = resolved


class IdempotencyConflictError(HatzError):
    """Raised when an idempotency key is reused with different run parameters."""


class RunNotFoundError(HatzError):
    """Raised when no run with the given id is in the ledger (unknown or expired)."""


class InvalidBatchError(HatzError):
    """Raised when a batch cannot be created: bad source, unknown app, or bad rows with abort.

    ``problems`` lists every problem, each bad row prefixed with its row number;
    nothing was enqueued.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems[:20]) + (" …" if len(problems) > 20 else ""))


class BatchNotFoundError(HatzError):
    """Raised when no batch with the given id is in Redis (unknown or expired)."""


class ScheduleError(HatzError):
    """Raised when a schedule declaration is invalid or a schedule name is unknown."""


class FileSourceError(HatzError):
    """Raised when a file input cannot be read: a missing object or path, a refused or
    failing URL, more bytes than ``HATZ_FILE_MAX_BYTES``, or past ``HATZ_FILE_FETCH_TIMEOUT``.

    Never a Hatz API failure: an upload that meets it is not retried as one.
    ``transient`` is True when trying again later may succeed (a timeout, a store
    that did not answer), False when the input itself is wrong.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class ArchiveError(HatzError):
    """Raised when a document cannot be copied into ``HATZ_ARCHIVE_URL``.

    The copy is retried with backoff; it never fails the run.
    """


class UnsafeFileURLError(InvalidRunError):
    """Raised when an ``https://`` file input is refused by the SSRF guard."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__([f"file URL for input {name!r} refused: {reason}"])
        self.reason = reason


class UnsafeCallbackURLError(InvalidRunError):
    """Raised when a callback URL is refused by the SSRF guard."""

    def __init__(self, reason: str) -> None:
        super().__init__([f"callback_url refused: {reason}"])
        self.reason = reason


class CallbackReplayError(HatzError):
    """Raised when a callback replay is asked for a run whose callback is not dead-lettered."""
