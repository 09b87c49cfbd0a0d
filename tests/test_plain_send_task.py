"""A plain ``send_task`` from another team's app, with no ``queue=``, is not lost.

The producer runs in its own process that never imports hatz-worker: only
Celery, as another application would. Its message lands in Celery's default
queue ``celery``, which the worker consumes for the public entry points. And a
message left in a queue no worker consumes is reported by doctor and the metrics.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.stack import Stack, running_stack
from worker.local.stack import free_port, wait_until
from worker.ops import health
from worker.ops.doctor import Level, check_queues
from worker.ops.metrics import start_metrics_server
from worker.store.ledger import RunState

pytestmark = pytest.mark.integration

PRODUCER = textwrap.dedent(
    """
    import json, sys
    from celery import Celery

    broker, app_id, queue = sys.argv[1], sys.argv[2], sys.argv[3]
    hatz = Celery(broker=broker, backend=broker)
    options = {"queue": queue} if queue else {}
    result = hatz.send_task(
        "hatz.run_workflow", kwargs={"app_id": app_id, "inputs": {}}, **options
    )
    run_id = result.get(timeout=30)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("worker", "tasks", "config"))
    print(json.dumps({"run_id": run_id, "project_modules": leaked}))
    """
)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack(values={"app_cache_ttl": 0}) as s:
        yield s


def _send_from_another_app(stack: Stack, app_id: str, tmp_path: Path, queue: str = "") -> Any:
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    done = subprocess.run(
        [sys.executable, str(script), stack.redis.url, app_id, queue],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=str(tmp_path),  # not the repository: nothing of the project is importable by path
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_send_task_without_queue_runs_the_workflow(stack: Stack, tmp_path: Path) -> None:
    # Given a workflow and another application that knows only the task's name
    app = stack.app()

    # When it sends hatz.run_workflow with no queue=
    answer = _send_from_another_app(stack, app.id, tmp_path)

    # Then the worker took it: the run id came back and the run completes
    assert answer["project_modules"] == []
    run = stack.wait(answer["run_id"])
    assert run.state is RunState.COMPLETED, run.get("error")


def test_a_send_task_to_the_submit_queue_keeps_working(stack: Stack, tmp_path: Path) -> None:
    app = stack.app()

    answer = _send_from_another_app(stack, app.id, tmp_path, queue="hatz.submit")

    assert stack.wait(answer["run_id"]).state is RunState.COMPLETED


def test_messages_in_a_queue_no_worker_consumes_are_reported(stack: Stack) -> None:
    # Given a message published to a queue that no worker consumes
    stray = f"nobody.listens.{uuid.uuid4().hex[:6]}"
    stack.celery.send_task("hatz.run_workflow", kwargs={"app_id": "x"}, queue=stray)
    ctx = stack.context
    wait_until(lambda: ctx.redis.llen(stray) == 1, timeout=10, message="message published")

    # When doctor runs and the metrics are scraped
    checks = check_queues(ctx.redis, ctx.keys)
    port = free_port()
    server, _thread = start_metrics_server(ctx.redis, ctx.keys, host="127.0.0.1", port=port)
    try:
        scraped = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        server.shutdown()
        server.server_close()

    # Then both name the queue and its waiting message; the worker's own queues are fine
    assert [c.level for c in checks] == [Level.WARN]
    assert f"{stray} (1 message(s))" in checks[0].message
    assert f'hatz_queue_unconsumed_messages{{queue="{stray}"}} 1.0' in scraped
    assert 'queue="celery"' not in scraped
    assert 'queue="hatz.submit"' not in scraped
    ctx.redis.delete(stray)


def test_a_worker_heartbeat_names_the_queues_it_consumes(stack: Stack) -> None:
    ctx = stack.context

    def named() -> bool:
        beats = [b for b in health.all_heartbeats(ctx.redis, ctx.keys) if b.queues]
        return bool(beats)

    wait_until(named, timeout=30, message="a heartbeat naming its queues")
    (beat,) = [
        b for b in health.all_heartbeats(ctx.redis, ctx.keys) if b.name.startswith("worker:")
    ]
    assert beat.queues is not None
    assert {"celery", "hatz.submit", "hatz.poll", "hatz.callback", "hatz.default"} <= set(
        beat.queues
    )
