"""When a run's next step happens: poll jitter, retry back-off and the task lease."""

from __future__ import annotations

import random

from worker.context import Context
from worker.errors import HatzAPIError, HatzAuthError, HatzCreditOverageError, HatzError


def jittered(ctx: Context, seconds: float) -> float:
    """``seconds`` spread by ±``HATZ_POLL_JITTER`` so many runs never poll in lockstep."""
    j = ctx.settings.poll_jitter
    return max(0.0, seconds * (1 + random.uniform(-j, j)))


def task_lease(ctx: Context) -> float:
    """How long one task may hold a run before the sweeper may assume it died."""
    return ctx.settings.task_lease()


def retry_delay(ctx: Context, attempt: int, exc: HatzError | None = None) -> float:
    """Delay before retry ``attempt`` (1-based) of a failed step."""
    s = ctx.settings
    if isinstance(exc, HatzCreditOverageError | HatzAuthError):
        return jittered(ctx, s.overage_pause)
    if isinstance(exc, HatzAPIError) and exc.retry_after is not None:
        return min(max(exc.retry_after, 0.0), s.poll_max_interval)
    return jittered(ctx, min(s.poll_max_interval, s.poll_interval * 2 ** (attempt - 1)))
