"""The chaos suite's CI subset (``python -m bench.chaos --quick``): real redis-server,
celery worker and beat processes, the fake Hatz server and a callback receiver.
The full scorecard is ``python -m bench.chaos`` (README "Reliability")."""

from __future__ import annotations

import pytest

from bench.chaos import QUICK

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("scenario", list(QUICK))
def test_chaos_row_meets_its_goal(scenario: str) -> None:
    # Given a private stack, when the scenario breaks it, then the row is at goal
    row = QUICK[scenario]()

    assert row.ok, f"{row.scenario}: {row.result} (goal: {row.goal})"
