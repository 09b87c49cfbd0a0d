"""Operating the worker, end to end: two real worker processes and a beat on one
private Redis, the fake Hatz server, callbacks. One set of runs is done once;
the tests then check the scale-out (one submit per run), the metrics endpoint,
the JSON logs (identifiers present, no secret) and the health probes."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from config import Settings
from tests.conftest import API_KEY, FILE_ROOTS, make_settings
from worker.api.runs import enqueue_run, wait_for_run
from worker.cli.main import main
from worker.context import Context
from worker.fake_hatz import FakeApp, FakeHatz, FakeInput, FakeStep
from worker.local.stack import CallbackReceiver, CeleryProcess, LocalRedis, free_port, wait_until
from worker.ops.metrics import start_metrics_server
from worker.store.ledger import Run, RunState
from worker.taskqueue.app import create_app

pytestmark = pytest.mark.integration

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HOST = socket.gethostname()
VALUES: dict[str, Any] = {
    "poll_initial_delay": 0.2,
    "poll_interval": 0.2,
    "poll_max_interval": 0.5,
    "poll_backoff": 1.0,
    "http_retries": 1,
    "http_retry_base_delay": 0.05,
    "http_retry_max_delay": 0.2,
    "overage_pause": 0.5,
    "app_cache_ttl": 0,
    "webhook_secret": SECRET,
    "callback_allow_private": True,
    "callback_retry_delays": "0,0.2",
    "heartbeat_interval": 0.5,
    "sweep_interval": 1.0,
}


@dataclass
class Ops:
    settings: Settings
    context: Context
    fake: FakeHatz
    workers: list[CeleryProcess]
    beat: CeleryProcess
    runs: list[Run] = field(default_factory=list)
    app_ids: list[str] = field(default_factory=list)

    def logs(self) -> str:
        return "".join(p.log_text() for p in [*self.workers, self.beat])


def _app(fake: FakeHatz, steps: list[FakeStep], **kw: Any) -> FakeApp:
    return fake.add_app(
        FakeApp(
            id=str(uuid.uuid4()),
            name="ops",
            steps=steps,
            duration=0.4,
            pending_seconds=0.1,
            **kw,
        )
    )


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    with (
        LocalRedis(appendonly=True) as redis,
        FakeHatz(api_key=API_KEY, port=0) as fake,
        CallbackReceiver() as receiver,
    ):
        values = {**VALUES, "redis_url": redis.url, "base_url": fake.url, "file_roots": FILE_ROOTS}
        settings = make_settings(**values)
        env = {**values, "api_key": API_KEY, "log_json": "true", "log_level": "DEBUG"}
        workers = [
            CeleryProcess(
                env,
                args=[
                    "-n",
                    f"w{i}@%h",
                    "--concurrency",
                    "2",
                    "--without-gossip",
                    "--without-mingle",
                ],
            )
            for i in (1, 2)
        ]
        beat = CeleryProcess(env, kind="beat")
        context = Context.from_settings(settings)
        celery = create_app(settings)
        state = Ops(settings, context, fake, workers, beat)
        for process in [*workers, beat]:
            process.start()
        try:
            for process in [*workers, beat]:
                process.wait_ready()
            docs = _app(
                fake,
                [FakeStep(output_type="dump"), FakeStep(output_type="document")],
                user_inputs=[FakeInput("report", variable_type="file_upload", required=True)],
            )
            plain = _app(fake, [FakeStep(output_type="dump")])
            failing = _app(fake, [FakeStep(), FakeStep()], fail=True)
            report = tmp_path_factory.mktemp("ops") / "report.csv"
            report.write_text("a,b\n1,2\n")
            requests_: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
                (docs.id, {}, {"files": {"report": str(report)}, "callback_url": receiver.url}),
                (docs.id, {}, {"files": {"report": str(report)}}),
                (plain.id, {}, {"callback_url": receiver.url}),
                (plain.id, {}, {}),
                (failing.id, {}, {}),
                (str(uuid.uuid4()), {}, {}),  # unknown app -> REJECTED after a 404
            ]
            ids = [
                enqueue_run(app_id, inputs, context=context, celery=celery, **kw)
                for app_id, inputs, kw in requests_
            ]
            state.app_ids = [r[0] for r in requests_]
            state.runs = [wait_for_run(i, timeout=30, interval=0.05, context=context) for i in ids]
            wait_until(lambda: len(receiver.successful()) >= 2, timeout=10, message="two callbacks")
            yield state
        finally:
            codes = [p.stop() for p in [*workers, beat]]
            context.client.close()
            celery.close()
            assert codes == [0, 0, 0], "a process did not shut down cleanly"


def _states(ops: Ops) -> list[RunState]:
    return [r.state for r in ops.runs]


def test_two_workers_on_one_redis_complete_every_run_with_one_submit_each(ops: Ops) -> None:
    assert _states(ops) == [
        RunState.COMPLETED,
        RunState.COMPLETED,
        RunState.COMPLETED,
        RunState.COMPLETED,
        RunState.FAILED,
        RunState.REJECTED,
    ]
    submits = [c for c in ops.fake.calls("run") if c["status"] == 200]
    assert len(submits) == 5  # one per submitted run, none for the rejected one
    for app_id in set(ops.app_ids[:5]):
        expected = ops.app_ids[:5].count(app_id)
        assert len([c for c in submits if c.get("app_id") == app_id]) == expected


def _scrape(ops: Ops) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    port = free_port()
    server, _thread = start_metrics_server(
        ops.context.redis, ops.context.keys, host="127.0.0.1", port=port
    )
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        server.shutdown()
        server.server_close()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_endpoint_counts_the_runs_calls_and_callbacks(ops: Ops) -> None:
    # Given every run finished and both callbacks were delivered
    wait_until(
        lambda: all(
            (r := ops.context.ledger.get(run.run_id)) is not None
            and r.get("callback_state") in (None, "delivered")
            for run in ops.runs
        ),
        timeout=10,
        message="callbacks recorded",
    )

    # When Prometheus scrapes the exporter
    metrics = _scrape(ops)

    def value(name: str, **labels: str) -> float:
        return metrics.get((name, frozenset(labels.items())), 0.0)

    # Then runs by state match what happened
    assert value("hatz_redis_up") == 1
    assert value("hatz_runs_total", state="QUEUED") == 6
    assert value("hatz_runs_total", state="SUBMITTED") == 5
    assert value("hatz_runs_total", state="COMPLETED") == 4
    assert value("hatz_runs_total", state="FAILED") == 1
    assert value("hatz_runs_total", state="REJECTED") == 1
    for state in ("QUEUED", "UPLOADING", "SUBMITTING", "SUBMITTED", "RUNNING"):
        assert value("hatz_runs_in_flight", state=state) == 0
    # API calls agree with the fake server's own call log
    polls = ops.fake.calls("status")
    assert value("hatz_submits_total", outcome="ok") == 5
    assert value("hatz_polls_total", outcome="ok") == len(polls)
    assert value("hatz_api_requests_total", endpoint="app_get", outcome="HatzNotFoundError") == 1
    assert value("hatz_api_requests_total", endpoint="upload", outcome="ok") == 2
    assert value("hatz_api_requests_total", endpoint="presign", outcome="ok") == 2
    # one lateness observation per poll, and two delivered callbacks
    assert value("hatz_poll_lateness_seconds_count") == len(polls)
    assert value("hatz_poll_lateness_seconds_bucket", le="+Inf") == len(polls)
    assert value("hatz_callback_attempts_total", outcome="2xx") == 2
    assert value("hatz_callbacks_dead_lettered") == 0
    assert value("hatz_breaker_open") == 0
    beats = {dict(labels)["process"] for (name, labels) in metrics if name.startswith("hatz_heart")}
    assert {f"worker:w1@{HOST}", f"worker:w2@{HOST}", "beat"} <= beats


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_json_logs_carry_run_identifiers_and_no_secret(ops: Ops) -> None:
    text = ops.logs()
    lines = _json_lines(text)

    # Every task line names its task and run; pipeline lines name the app too.
    assert len(lines) > 50
    task_lines = [e for e in lines if e.get("task") in ("hatz.submit", "hatz.poll")]
    assert task_lines
    assert all(e.get("run_id") for e in task_lines)
    pipeline = [
        e
        for e in lines
        if e["logger"] in ("worker.runs.submit", "worker.runs.finish", "worker.runs.documents")
    ]
    assert pipeline
    assert all(e.get("run_id") and e.get("app_id") for e in pipeline)
    submitted = [e for e in pipeline if "submitted as job" in e["message"]]
    assert submitted
    assert all(e.get("job_id") for e in submitted)

    # No secret anywhere: API key, webhook secret, presigned URL query strings.
    documents = [d for run in ops.runs for d in (run.get("documents") or {}).values()]
    assert len(documents) == 2
    assert API_KEY not in text
    assert SECRET not in text
    assert SECRET.removeprefix("whsec_") not in text
    for document in documents:
        query = urlsplit(document["url"]).query
        assert query
        assert query not in text
        assert "X-Amz-Signature=" not in text


def test_health_probes_pass_for_live_processes_and_fail_for_unknown_ones(
    ops: Ops, capsys: pytest.CaptureFixture[str]
) -> None:
    wait_until(
        lambda: ops.context.redis.exists(ops.context.keys.heartbeat("beat")),
        timeout=10,
        message="beat heartbeat",
    )

    assert main(["health", "--worker", "--name", f"w1@{HOST}"], settings=ops.settings) == 0
    assert main(["health", "--worker", "--name", f"w2@{HOST}"], settings=ops.settings) == 0
    assert main(["health", "--beat"], settings=ops.settings) == 0
    assert main(["health", "--worker", "--name", "nobody@nowhere"], settings=ops.settings) == 1
    out = capsys.readouterr().out
    assert "alive" in out
    assert "nobody@nowhere: no heartbeat" in out


def test_doctor_sees_both_workers_and_beat(ops: Ops, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["doctor"], settings=ops.settings)

    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 alive" in out
    assert "all good" in out
