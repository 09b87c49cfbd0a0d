"""The quick Redis soak (the full one: ``python -m bench.soak``): many runs through to
completion with a two-second retention, then Redis back to its baseline, key count and
``used_memory``, with only celery beat's sweeper trimming: nobody lists anything."""

from __future__ import annotations

import pytest

from bench.soak import soak

pytestmark = pytest.mark.integration

#: Keys that come and go whatever the load: the sweeper's lease.
_VOLATILE = {"hatz:lease:sweeper"}


def test_redis_returns_to_its_baseline_after_many_runs_expire() -> None:
    figures = soak(runs=150, retention=3, concurrency=2, drain_timeout=40)
    baseline, peak, after = figures["baseline"], figures["peak"], figures["after"]

    # The round was measured while it was there (the highest key count seen)...
    assert peak["keys"] > baseline["keys"] + 100
    assert figures["callbacks_delivered"] >= 105
    # ...and nothing of it is left: the same keys as before, about the same memory.
    assert after["run_records"] == 0
    assert set(after["names"]) - _VOLATILE == set(baseline["names"]) - _VOLATILE
    assert after["persistent_keys"] <= baseline["persistent_keys"]
    # used_memory is mostly Redis's own overhead (about 2 MB); it moves by a few
    # tens of KiB with client buffers and table sizes whatever the data.
    assert after["used_memory"] <= baseline["used_memory"] * 1.05, figures
