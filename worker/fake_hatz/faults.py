"""Fault injection: which requests fail, hang, are rate limited, and how.

Every random decision comes from one seedable :class:`random.Random`, and a
rate of 0 never draws from it, so enabling faults on one endpoint does not
change the decisions made for another run with the same seed.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from .messages import Response, json_response

#: Endpoint names used by fault configuration, stats and the call log.
ENDPOINTS: frozenset[str] = frozenset(
    {"upload", "run", "status", "presign", "app_list", "app_get", "app_query", "download"}
)

#: The 429 detail the Hatz documentation gives for an organisation over its credit limit.
OVERAGE_DETAIL = "Workflows have been rate limited for your organization due to a credit overage."

#: The 429 detail of an ordinary (non-credit) rate limit.
RATE_LIMIT_DETAIL = "Rate limit exceeded"

FaultKind = Literal["error", "timeout", "rate_limit"]

_RATES = (
    "error_rate",
    "timeout_rate",
    "rate_limit_rate",
    "overage_rate",
    "fault_after_create_rate",
    "lose_jobs",
)


@dataclass(frozen=True)
class FaultConfig:
    """What goes wrong, and how often. Immutable: replace it to change faults.

    Rates are fractions of requests in ``[0, 1]``. ``timeout_rate``,
    ``error_rate`` and ``rate_limit_rate`` share one random draw per request
    (in that order), so each is exactly its own fraction of requests.

    Attributes:
        latency: seconds added before answering each request.
        error_rate: fraction answered 500/502/503 with a JSON, truncated-JSON or HTML body.
        timeout_rate: fraction held ``hang_seconds`` and then closed with no response.
        hang_seconds: how long a "timeout" request is held.
        rate_limit_rate: fraction answered 429 ``Rate limit exceeded`` with ``Retry-After: 1``.
        overage: credit overage on: every request to ``overage_endpoints`` gets the 429
            overage answer (organisation-wide: the global flag applies to every app).
        overage_rate: fraction of ``overage_endpoints`` requests given the overage 429.
        fault_after_create_rate: fraction of successful submits that create the job and
            then answer 502, so the caller cannot know the job exists.
        lose_jobs: fraction of new jobs the server "loses": their status answers 404
            ``Job not found`` (``True`` means all of them).
        endpoints: endpoint names that latency, errors, hangs and rate limits apply to
            (None = all of :data:`ENDPOINTS`).
        overage_endpoints: endpoint names subject to the credit overage (default ``run``).

    Faults on ``run`` are decided before the job is created, so a retried
    submit never duplicates a job; only ``fault_after_create_rate`` creates one.
    """

    latency: float = 0.0
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    hang_seconds: float = 5.0
    rate_limit_rate: float = 0.0
    overage: bool = False
    overage_rate: float = 0.0
    fault_after_create_rate: float = 0.0
    lose_jobs: float = 0.0
    endpoints: Collection[str] | None = None
    overage_endpoints: Collection[str] = frozenset({"run"})

    def __post_init__(self) -> None:
        """Validate the knobs and freeze the endpoint sets."""
        for name in _RATES:
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"FaultConfig.{name} must be between 0 and 1, got {value!r}")
        # Accept lose_jobs=True as "lose every job".
        object.__setattr__(self, "lose_jobs", float(self.lose_jobs))
        if self.latency < 0 or self.hang_seconds < 0:
            raise ValueError("FaultConfig.latency and hang_seconds must not be negative")
        if self.endpoints is not None:
            object.__setattr__(self, "endpoints", _endpoint_set("endpoints", self.endpoints))
        object.__setattr__(
            self, "overage_endpoints", _endpoint_set("overage_endpoints", self.overage_endpoints)
        )

    def applies_to(self, endpoint: str) -> bool:
        """True when latency, errors, hangs and rate limits apply to ``endpoint``."""
        return self.endpoints is None or endpoint in self.endpoints

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as JSON-ready data (endpoint sets as sorted lists)."""
        data = asdict(self)
        data["endpoints"] = None if self.endpoints is None else sorted(self.endpoints)
        data["overage_endpoints"] = sorted(self.overage_endpoints)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultConfig:
        """Build a configuration from JSON data; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in ("endpoints", "overage_endpoints"):
                if value is not None and not isinstance(value, list | tuple):
                    raise ValueError(f"{key} must be a list of endpoint names")
            elif key == "overage":
                if not isinstance(value, bool):
                    raise ValueError("overage must be true or false")
            elif not isinstance(value, int | float) or (
                isinstance(value, bool) and key != "lose_jobs"
            ):
                raise ValueError(f"{key} must be a number")
            kwargs[key] = value
        return cls(**kwargs)


def _endpoint_set(name: str, value: Collection[str]) -> frozenset[str]:
    if isinstance(value, str):
        # A lone string would silently become a set of letters.
        raise ValueError(f"FaultConfig.{name} must be a collection of names, not a string")
    names = frozenset(value)
    unknown = sorted(names - ENDPOINTS)
    if unknown:
        raise ValueError(
            f"FaultConfig.{name}: unknown endpoint(s) {unknown}; known: {sorted(ENDPOINTS)}"
        )
    return names


_HTML_502 = b"""<html>
<head><title>502 Bad Gateway</title></head>
<body>
<center><h1>502 Bad Gateway</h1></center>
<hr><center>nginx</center>
</body>
</html>
"""

_HTML_503 = b"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Service Unavailable</title></head>
<body><h1>503 Service Unavailable</h1>
<p>The server is temporarily unable to service your request. Please try again later.</p>
</body></html>
"""

# (status, content type, body): the shapes a client meets when a proxy or the
# app itself fails. The truncated JSON mimics a response cut off mid-stream;
# its Content-Length is still correct, so only the JSON parser notices.
_ERROR_VARIANTS: tuple[tuple[int, str, bytes], ...] = (
    (500, "application/json", b'{"detail":"Internal Server Error"}'),
    (502, "text/html", _HTML_502),
    (503, "text/html; charset=utf-8", _HTML_503),
    (500, "application/json", b'{"detail":"Internal Serv'),
    (503, "application/json", b'{"detail":"Service Unavailable"}'),
    (502, "application/json", b'{"message": "Internal server error"}'),
)


def overage_response() -> Response:
    """The documented 429 answer for an organisation over its credit limit."""
    return json_response(429, {"detail": OVERAGE_DETAIL})


def rate_limit_response() -> Response:
    """A plain 429 rate limit, distinct from the credit overage, with ``Retry-After``."""
    return json_response(429, {"detail": RATE_LIMIT_DETAIL}, {"Retry-After": "1"})


class FaultInjector:
    """Makes the random fault decisions, from one seedable generator."""

    def __init__(self, seed: int | None) -> None:
        """Seed the generator; ``None`` seeds from the OS."""
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def reseed(self, seed: int | None) -> None:
        """Restart the sequence of decisions from ``seed``."""
        with self._lock:
            self._rng.seed(seed)

    def draw(self, config: FaultConfig) -> FaultKind | None:
        """Decide whether this request hangs, errors, is rate limited, or goes through."""
        rates = (config.timeout_rate, config.error_rate, config.rate_limit_rate)
        if not any(rates):
            return None
        with self._lock:
            x = self._rng.random()
        edge = 0.0
        kinds: tuple[FaultKind, ...] = ("timeout", "error", "rate_limit")
        for kind, rate in zip(kinds, rates, strict=True):
            edge += rate
            if x < edge:
                return kind
        return None

    def chance(self, rate: float) -> bool:
        """True with probability ``rate``; rates of 0 and 1 do not draw."""
        if rate <= 0:
            return False
        if rate >= 1:
            return True
        with self._lock:
            return self._rng.random() < rate

    def error_response(self) -> Response:
        """A 500/502/503 in one of several body shapes (JSON, truncated JSON, HTML)."""
        with self._lock:
            status, content_type, body = self._rng.choice(_ERROR_VARIANTS)
        return Response(status, body, content_type)
