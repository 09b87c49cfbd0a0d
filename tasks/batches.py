"""Batch tasks (``hatz.run_batch`` and friends)."""
