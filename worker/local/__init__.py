"""Private processes on loopback (redis-server, Celery workers) for the demo, tests, benchmarks."""
