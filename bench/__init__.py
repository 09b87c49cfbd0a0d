"""Benchmarks: ``make bench`` (``python -m bench``; ``--quick`` for a smoke run).

Everything runs locally: a private redis-server, real Celery worker processes
and the fake Hatz server in its own process. Every figure is printed next to
its baseline from the same run (see README "Performance").
"""
