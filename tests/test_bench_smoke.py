"""Keeps the benchmark harness alive: ``python -m bench --quick`` runs end to end.

No figure is asserted (timings belong in benchmarks, not tests): only that every
section of the table and of the JSON is there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("1 ceiling", "2 polls", "3 in flight", "3 knee", "4 naive", "5 detection", "6 API")
KEYS = (
    "machine",
    "rounds",
    "ceiling",
    "first_poll",
    "poll_throughput",
    "inflight",
    "knee",
    "scale_inflight",
    "scale_lateness",
    "naive",
    "detection",
    "rate_budget",
    "table",
)


@pytest.mark.timeout(180)
def test_quick_bench_prints_every_section_and_writes_json(tmp_path: Path) -> None:
    # Given a JSON path; When the quick benchmark runs
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )

    # Then it exits 0, prints the machine and every section, and writes them all as JSON
    assert done.returncode == 0, done.stderr[-3000:]
    for section in (*SECTIONS, "7 scaling"):
        assert f"| {section} |" in done.stdout, section
    assert all(name in done.stdout for name in ("cores", "Python", "Celery", "kombu", "Redis"))
    results = json.loads(out.read_text())
    for key in KEYS:
        assert key in results, key
