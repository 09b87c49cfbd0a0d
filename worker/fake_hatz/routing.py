"""Path routing with Starlette's semantics, so 404 and 405 answers match a FastAPI server.

Routes are tried in order; the first route matching both path and method wins.
A path matched only with other methods gives 405 (with ``Allow``), and no
match gives 404. Hence ``GET /v1/workflows/run`` reaches the job-status route
(``{job_id}`` = ``run``) exactly as it would on the real server.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .messages import Response, json_response

H = TypeVar("H")

_PARAM = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class Route(Generic[H]):
    """One method + path pattern (``/v1/workflows/{job_id}``) and what serves it."""

    method: str
    pattern: str
    name: str
    target: H
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Compile the pattern; a ``{name}`` segment matches one path segment."""
        parts = _PARAM.split(self.pattern)
        # split() alternates literal text and parameter names.
        regex = "".join(
            re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts)
        )
        object.__setattr__(self, "regex", re.compile(f"^{regex}$"))


@dataclass(frozen=True)
class Match(Generic[H]):
    """The outcome of routing: a route and its parameters, or why there is none."""

    route: Route[H] | None
    params: dict[str, str]
    #: Methods the path accepts, when it matched only with another method.
    allowed: tuple[str, ...] = ()

    def error(self) -> Response:
        """The 404 or 405 response for an unmatched request."""
        if self.allowed:
            return json_response(
                405, {"detail": "Method Not Allowed"}, {"Allow": ", ".join(self.allowed)}
            )
        return json_response(404, {"detail": "Not Found"})


class Router(Generic[H]):
    """An ordered table of routes."""

    def __init__(self, routes: Sequence[Route[H]]) -> None:
        """Keep ``routes`` in priority order."""
        self._routes = tuple(routes)

    def match(self, method: str, path: str) -> Match[H]:
        """Find the route for ``method`` and ``path`` (see the module docstring)."""
        allowed: list[str] = []
        for route in self._routes:
            found = route.regex.match(path)
            if found is None:
                continue
            if route.method == method:
                return Match(route, found.groupdict())
            if route.method not in allowed:
                allowed.append(route.method)
        return Match(None, {}, tuple(allowed))
