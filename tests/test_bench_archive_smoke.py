"""Keeps the archive benchmark alive: ``python -m bench.archive`` runs end to end.

No figure is asserted (timings belong in benchmarks, not tests): only that every
row of its table is printed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
def test_archive_bench_prints_the_archive_copy_beside_the_plain_copy() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.archive", "--mb", "2", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert "plain copy -> local file" in done.stdout
    assert "archive copy -> file:// (sha256)" in done.stdout
    assert "peak Python allocation" in done.stdout
