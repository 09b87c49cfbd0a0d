"""Redis Sentinel, locally: a sentinel process in front of a private redis-server;
the ledger client, the broker and the result backend all find the master through it,
and a run goes end to end."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_errors

from tests.conftest import API_KEY, make_settings
from worker.api.runs import enqueue_run, wait_for_run
from worker.context import Context, redis_from_url
from worker.fake_hatz import FakeApp, FakeHatz, FakeStep
from worker.local.stack import CeleryProcess, LocalRedis, free_port, wait_until
from worker.store.ledger import RunState
from worker.taskqueue.app import create_app

pytestmark = pytest.mark.integration
MASTER = "hatzmaster"


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[LocalRedis, str]]:
    with LocalRedis(appendonly=True) as redis:
        port = free_port()
        conf = tmp_path / "sentinel.conf"  # sentinel rewrites its config file: must be writable
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {redis.port} 1\n"
        )
        process = subprocess.Popen(
            ["redis-server", str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            probe = redis_from_url(f"redis://127.0.0.1:{port}/0")

            def knows_master() -> bool:
                try:
                    return bool(probe.execute_command("SENTINEL", "MASTERS"))  # type: ignore[no-untyped-call]
                except redis_errors.RedisError:  # not listening yet
                    return False

            wait_until(knows_master, timeout=10, message="sentinel up")
            probe.close()
            yield redis, f"sentinel://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)


def test_a_run_completes_through_sentinel(sentinel: tuple[LocalRedis, str]) -> None:
    redis, url = sentinel
    with FakeHatz(api_key=API_KEY, port=0) as fake:
        app = fake.add_app(
            FakeApp(id=str(uuid.uuid4()), name="s", steps=[FakeStep()], duration=0.3)
        )
        values = {
            "redis_url": url,
            "redis_sentinel_master": MASTER,
            "base_url": fake.url,
            "poll_initial_delay": 0.2,
            "poll_interval": 0.2,
            "poll_max_interval": 0.5,
        }
        settings = make_settings(**values)
        context = Context.from_settings(settings)
        celery = create_app(settings)
        worker = CeleryProcess(
            {**values, "api_key": API_KEY}, args=["--without-gossip", "--without-mingle"]
        ).start()
        try:
            worker.wait_ready()
            run_id = enqueue_run(app.id, {}, context=context, celery=celery)
            run = wait_for_run(run_id, timeout=30, interval=0.05, context=context)
        finally:
            code = worker.stop()
            context.client.close()
            celery.close()

    assert run.state is RunState.COMPLETED
    assert code == 0
    # The ledger really lives on the master the sentinel pointed at.
    direct = redis_from_url(redis.url)
    assert direct.hget(context.keys.run(run_id), "state") == "COMPLETED"
    direct.close()
