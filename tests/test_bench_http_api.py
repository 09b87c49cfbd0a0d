"""Keeps ``python -m bench.http_api`` alive: a short run prints every row of its table.

No figure is asserted (timings belong in benchmarks, not tests).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
def test_a_short_http_api_bench_prints_its_table() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.http_api", "--seconds", "0.3", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    for row in ("direct enqueue_run", "HTTP API, 8 conn.", "2 processes", "HTTP API, 1 conn."):
        assert row in done.stdout, done.stdout
    assert "goal (one API process >= half of direct):" in done.stdout
    assert "goal (issue 18, the API on the two cores: serve --workers 2 >= half" in done.stdout
