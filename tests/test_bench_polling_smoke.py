"""Keeps the polling benchmark alive: ``python -m bench.polling --quick`` runs end to end.

No figure is asserted (timings belong in benchmarks, not tests): only that every
mix and arm is measured and the goals and the replayed table are printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
def test_quick_polling_bench_measures_every_mix_and_arm(tmp_path: Path) -> None:
    # Given a JSON path; When the quick polling benchmark runs
    out = tmp_path / "polling.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.polling", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )

    # Then it exits 0 and reports every mix for every arm, the goals and the replay
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())["live"]["figures"]
    assert set(figures) == {"stable", "bimodal", "heavy-tailed"}
    for arms in figures.values():
        assert set(arms) == {"learned", "fixed", "fixed again"}
        assert all(arm["callbacks"] == arm["runs"] > 0 for arm in arms.values())
    for text in ("Goals:", "stable, learned:", "bimodal:", "heavy-tailed:", "Replayed"):
        assert text in done.stdout, text
