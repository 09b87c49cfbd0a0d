"""``python -m worker.fake_hatz``: serve the fake Hatz API in the foreground."""

from worker.fake_hatz.cli import serve

raise SystemExit(serve())
