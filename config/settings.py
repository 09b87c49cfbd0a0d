"""The one settings class of hatz-worker.

Every knob is an environment variable with the ``HATZ_`` prefix (or a line in
``.env``). Celery's own configuration is derived from these values in
:mod:`worker.taskqueue.app`; nothing else reads the environment.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "HATZ_"
WEBHOOK_SECRET_PREFIX = "whsec_"
#: The Standard Webhooks key length range, in bytes.
MIN_WEBHOOK_KEY_BYTES = 24
MAX_WEBHOOK_KEY_BYTES = 64

#: Svix-like schedule: roughly immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
DEFAULT_CALLBACK_RETRY_DELAYS = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


class ConfigError(Exception):
    """Raised when settings are missing or invalid; the message names each variable."""


def _parse_float_list(value: Any) -> Any:
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        return [float(p) for p in parts]
    return value


def _secret_problem(secret: str) -> str:
    """What is wrong with one ``whsec_`` secret ('' when nothing), never quoting it.

    Decoded strictly (the standard base64 alphabet; missing padding is allowed,
    as the Standard Webhooks libraries add it), and the key must be 24 to 64
    bytes: an empty or short key would let anyone forge signatures.
    """
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        return f"must start with '{WEBHOOK_SECRET_PREFIX}'"
    body = secret.removeprefix(WEBHOOK_SECRET_PREFIX)
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except binascii.Error:
        return f"is not valid base64 after '{WEBHOOK_SECRET_PREFIX}'"
    if not MIN_WEBHOOK_KEY_BYTES <= len(key) <= MAX_WEBHOOK_KEY_BYTES:
        return (
            f"decodes to a {len(key)}-byte key; it must be {MIN_WEBHOOK_KEY_BYTES} to "
            f"{MAX_WEBHOOK_KEY_BYTES} bytes (e.g. whsec_ + base64 of 32 random bytes)"
        )
    return ""


def _parse_str_list(value: Any) -> Any:
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    return value


class Settings(BaseSettings):
    """hatz-worker settings; see docs/settings.md for each variable."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # --- Hatz API -----------------------------------------------------------
    api_key: SecretStr = Field(default=SecretStr(""), description="Hatz API key (X-API-Key).")
    base_url: AnyHttpUrl = Field(
        default=AnyHttpUrl("https://ai.hatz.ai/v1"), description="Hatz API base URL."
    )
    http_connect_timeout: float = Field(default=5.0, gt=0, description="Connect timeout, s.")
    http_read_timeout: float = Field(default=30.0, gt=0, description="Read timeout, s.")
    http_retries: int = Field(
        default=3, ge=0, le=20, description="Retries of idempotent GETs on transient errors."
    )
    http_retry_base_delay: float = Field(default=0.5, ge=0, description="First retry delay, s.")
    http_retry_max_delay: float = Field(default=10.0, ge=0, description="Largest retry delay, s.")
    app_cache_ttl: float = Field(
        default=60.0, ge=0, description="How long an app definition is cached, s."
    )

    # --- Redis (broker, result store, run ledger) ----------------------------
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis URL: Celery broker, result backend and run ledger.",
    )
    redis_sentinel_master: str = Field(
        default="",
        description="With a sentinel:// HATZ_REDIS_URL: the monitored master's name.",
    )
    key_prefix: str = Field(default="hatz", description="Prefix of every ledger key.")
    visibility_timeout: int = Field(
        default=3600,
        gt=0,
        description="Broker/result-backend visibility_timeout, s; must exceed every countdown.",
    )
    run_retention: int = Field(
        default=30 * 86400, gt=0, description="How long terminal runs stay in the ledger, s."
    )
    idempotency_ttl: int = Field(
        default=7 * 86400, gt=0, description="How long an idempotency key maps to its run, s."
    )

    # --- Local files ------------------------------------------------------------
    file_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["."],
        description=(
            "Folders local input files may come from, comma-separated; relative ones are "
            "taken from the working directory. /proc, /sys and /dev are refused anyway."
        ),
    )

    # --- Polling --------------------------------------------------------------
    poll_initial_delay: float = Field(default=2.0, ge=0, description="First poll after submit, s.")
    poll_interval: float = Field(default=5.0, gt=0, description="Poll interval, s.")
    poll_backoff: float = Field(
        default=1.5, ge=1.0, description="Interval multiplier per poll while the job is unchanged."
    )
    poll_max_interval: float = Field(default=60.0, gt=0, description="Largest poll interval, s.")
    poll_jitter: float = Field(
        default=0.1, ge=0, le=1, description="Relative jitter added to each countdown."
    )
    countdown_horizon: float = Field(
        default=2.0,
        ge=0,
        description=(
            "Polls due further off than this wait in Redis and become countdowns once "
            "within it (worker RAM and Redis hold no far-off messages); 0: always countdowns, s."
        ),
    )
    poll_target_latency: float = Field(
        default=0.5,
        ge=0,
        description=(
            "Learned poll schedules: the poll spacing around an app's predicted completion "
            "(from its recent durations), so about the detection delay there; 0: off, s."
        ),
    )
    run_timeout: float = Field(
        default=6 * 3600.0, gt=0, description="Give up polling after this long (TIMED_OUT), s."
    )
    not_found_limit: int = Field(
        default=3, ge=1, description="Consecutive 404 'Job not found' polls before FAILED."
    )
    submit_retry_deadline: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="Stop retrying a submit (credit overage, 5xx) after this long, s.",
    )
    submit_retry_5xx: bool = Field(
        default=True,
        description=(
            "Retry a submit the API answered 5xx (assumes no job was created); "
            "false marks such runs AMBIGUOUS instead."
        ),
    )
    overage_pause: float = Field(
        default=60.0, gt=0, description="Pause after a 429 credit overage before retrying, s."
    )
    presign_expires_in: int = Field(
        default=3600, gt=0, le=7 * 86400, description="Presigned URL lifetime, s."
    )
    document_output_types: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"],
        description=(
            "Step output_type values that may carry a document, comma-separated; "
            "'*' = every type except dump/text. A 4xx from presigned-url means no document."
        ),
    )

    # --- Callbacks ------------------------------------------------------------
    webhook_secret: SecretStr | None = Field(
        default=None, description="Signing secret(s), whsec_..., comma-separated for rotation."
    )
    callback_allow_private: bool = Field(
        default=False, description="Allow callbacks to loopback/private addresses."
    )
    callback_allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Hosts/CIDRs allowed despite the SSRF guard."
    )
    callback_connect_timeout: float = Field(default=5.0, gt=0, description="Connect timeout, s.")
    callback_timeout: float = Field(default=15.0, gt=0, description="Total callback timeout, s.")
    callback_retry_delays: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_CALLBACK_RETRY_DELAYS),
        description="Callback retry schedule, s, comma-separated.",
    )

    # --- File inputs and the output archive --------------------------------------
    file_max_bytes: int = Field(
        default=512 * 1024 * 1024,
        gt=0,
        description="Largest file input read from a URL or an object store, bytes.",
    )
    file_fetch_timeout: float = Field(
        default=300.0,
        gt=0,
        description="Total deadline of one https:// file input's download (and its upload), s.",
    )
    file_url_allow_private: bool = Field(
        default=False, description="Allow https:// file inputs from loopback/private addresses."
    )
    file_url_allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts/CIDRs that https:// file inputs may come from despite the SSRF guard.",
    )
    file_url_ca_bundle: str = Field(
        default="",
        description=(
            "CA bundle (file or directory) for https:// file inputs "
            "('' = REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE, else the system's)."
        ),
    )
    archive_url: str = Field(
        default="",
        description=(
            "Copy every document of a completed run here: s3://bucket/prefix/, "
            "file:///path/ or any fsspec URL ('' = no archive)."
        ),
    )
    archive_retry_delays: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [2.0, 10.0, 30.0],
        description="Delays between archive copy attempts, s, comma-separated.",
    )

    # --- Reliability ----------------------------------------------------------
    sweep_interval: float = Field(default=30.0, gt=0, description="Sweeper period (beat), s.")
    sweep_grace: float = Field(
        default=60.0,
        ge=0,
        description="A run overdue by more than this is re-armed by the sweeper, s.",
    )
    sweep_batch: int = Field(
        default=500, ge=1, le=100_000, description="Runs the sweeper handles per batch."
    )
    stall_after: float = Field(
        default=3600.0,
        gt=0,
        description="A non-terminal run no task has worked on for this long is stalled, s.",
    )
    internal_error_limit: int = Field(
        default=5,
        ge=1,
        description="Unexpected task errors on one run before the sweeper fails it.",
    )
    worker_eta_task_limit: int = Field(
        default=100_000,
        ge=1,
        description=(
            "Countdown tasks one worker holds in memory at most (worker_eta_task_limit); "
            "keep it above the runs in flight per worker, or polls wait in Redis and run late."
        ),
    )

    # --- Batches, schedules, breaker, API budget ---------------------------------
    batch_max_in_flight: int = Field(
        default=10, ge=1, description="Default runs of one batch submitted/in flight at once."
    )
    schedules_file: str = Field(
        default="", description="TOML file of [[schedule]] tables for celery beat ('' = none)."
    )
    schedules: str = Field(
        default="", description="Schedules as a JSON list of objects (added to the file's)."
    )
    breaker_max_backoff: float = Field(
        default=600.0,
        gt=0,
        description="Longest pause of the credit-overage breaker; it starts at OVERAGE_PAUSE, s.",
    )
    api_max_rps: float = Field(
        default=0.0, ge=0, description="Shared Hatz API request budget, requests/s (0 = none)."
    )

    # --- Worker ---------------------------------------------------------------
    log_json: bool = Field(default=False, description="Log one JSON object per line.")
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR.")
    consume_celery_queue: bool = Field(
        default=True,
        description=(
            "Workers also consume Celery's default queue 'celery', where a send_task "
            "without queue= lands (a Redis database shared with another Celery app: set false)."
        ),
    )
    heartbeat_interval: float = Field(
        default=10.0, gt=0, description="Worker/beat heartbeat period (health probes), s."
    )

    # --- HTTP API (hatz-worker serve) -----------------------------------------
    client_rate_limit: float = Field(
        default=20.0, gt=0, description="HTTP API requests/s each client token may make."
    )
    client_rate_burst: float = Field(
        default=40.0, ge=1, description="HTTP API requests a client may make at once (bucket)."
    )
    upload_max_bytes: int = Field(
        default=100 * 1024 * 1024, gt=0, description="Largest file one HTTP API upload may be."
    )
    console_sample_interval: float = Field(
        default=10.0,
        gt=0,
        description="Web console: seconds between two samples of the counters its charts draw.",
    )

    @field_validator(
        "document_output_types",
        "callback_allow_hosts",
        "file_url_allow_hosts",
        "file_roots",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        return _parse_str_list(value)

    @field_validator("callback_retry_delays", "archive_retry_delays", mode="before")
    @classmethod
    def _split_delays(cls, value: Any) -> Any:
        return _parse_float_list(value)

    @field_validator("callback_retry_delays", "archive_retry_delays")
    @classmethod
    def _delays_non_negative(cls, value: list[float]) -> list[float]:
        if not value or any(d < 0 for d in value):
            raise ValueError("must be a non-empty comma-separated list of seconds >= 0")
        return value

    @field_validator("file_roots")
    @classmethod
    def _roots_given(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one folder ('.' is the working directory)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in {"redis", "rediss", "unix", "sentinel"}:
            raise ValueError("must be a redis://, rediss://, unix:// or sentinel:// URL")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        parts = value.get_secret_value().split(",")
        for number, part in enumerate(parts, start=1):
            problem = _secret_problem(part.strip())
            if problem:
                which = f"secret {number} of {len(parts)}" if len(parts) > 1 else "the secret"
                raise ValueError(f"{which} {problem}")
        return value

    @field_validator("archive_url")
    @classmethod
    def _archive_url(cls, value: str) -> str:
        if value and "://" not in value:
            raise ValueError("must be a URL such as s3://bucket/prefix/ or file:///var/lib/hatz/")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.poll_max_interval < self.poll_interval:
            raise ValueError(
                f"{ENV_PREFIX}POLL_MAX_INTERVAL ({self.poll_max_interval}) must be >= "
                f"{ENV_PREFIX}POLL_INTERVAL ({self.poll_interval})"
            )
        if urlsplit(self.redis_url).scheme == "sentinel" and not self.redis_sentinel_master:
            raise ValueError(
                f"{ENV_PREFIX}REDIS_SENTINEL_MASTER is required with a sentinel:// "
                f"{ENV_PREFIX}REDIS_URL (the name the sentinels monitor)"
            )
        if self.archive_retry_delays and max(self.archive_retry_delays) > self.max_countdown():
            raise ValueError(
                f"{ENV_PREFIX}ARCHIVE_RETRY_DELAYS: each delay must be at most half of "
                f"{ENV_PREFIX}VISIBILITY_TIMEOUT ({self.max_countdown():.0f} s)"
            )
        if self.longest_countdown() * 2 > self.visibility_timeout:
            raise ValueError(
                f"{ENV_PREFIX}VISIBILITY_TIMEOUT ({self.visibility_timeout}) must be at least "
                f"twice the longest countdown ({self.longest_countdown():.0f} s): a countdown "
                "longer than the visibility timeout is redelivered as a duplicate"
            )
        return self

    # --- derived --------------------------------------------------------------
    def longest_countdown(self) -> float:
        """The longest countdown any task schedules, jitter included, in seconds."""
        return max(
            self.poll_initial_delay,
            self.poll_max_interval,
            self.overage_pause,
            self.http_retry_max_delay,
        ) * (1 + self.poll_jitter)

    def task_lease(self) -> float:
        """How long one task may hold a run before the sweeper may assume it died, s.

        The worst case of one task's HTTP calls (every retry timing out) plus a
        quarter of that as slack for Redis round trips.
        """
        http = (self.http_connect_timeout + self.http_read_timeout) * (self.http_retries + 1)
        budget = http + self.http_retry_max_delay * self.http_retries
        return budget + max(2.0, budget / 4)

    def max_countdown(self) -> float:
        """The longest delay handed to Celery as a countdown: half the visibility timeout.

        Longer delays (late callback retries) wait in the ledger's schedule
        instead, and the sweeper publishes them when due.
        """
        return self.visibility_timeout / 2

    def webhook_secrets(self) -> list[str]:
        """The active signing secrets, newest first (several during a rotation)."""
        if self.webhook_secret is None:
            return []
        return [s.strip() for s in self.webhook_secret.get_secret_value().split(",") if s.strip()]


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        loc = [str(p) for p in item.get("loc", ()) if p != "__root__"]
        name = f"{ENV_PREFIX}{loc[0].upper()}" if loc else "settings"
        message = str(item.get("msg", "invalid value")).removeprefix("Value error, ")
        lines.append(f"{name}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Build :class:`Settings` from the environment/.env plus ``overrides``.

    Raises :class:`ConfigError` with one line per bad variable instead of a
    pydantic traceback.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
