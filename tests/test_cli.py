"""The ``hatz-worker`` command line, on fakeredis and the in-process fake Hatz server."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from config import Settings
from tests.conftest import API_KEY, make_settings
from worker.api.runs import get_run
from worker.cli.main import main, parse_command_line
from worker.cli.output import ProgressDrawer, safe_url
from worker.context import Context
from worker.fake_hatz import (
    CODING_APP_ID,
    REPORT_SUMMARIZER_ID,
    TOPIC_BRIEF_ID,
    FakeHatz,
    seed_default_apps,
)
from worker.limits import breaker
from worker.store.ledger import RunState
from worker.taskqueue.app import create_app

SECRET_QUERY = "X-Amz-Signature=deadbeefSECRET"
DOC_URL = f"https://bucket.s3.amazonaws.com/jobs/j1/summary.pdf?{SECRET_QUERY}&X-Amz-Expires=3600"


@pytest.fixture
def fake() -> Iterator[FakeHatz]:
    """The fake Hatz API with its default apps."""
    with FakeHatz(api_key=API_KEY) as server:
        seed_default_apps(server)
        yield server


@pytest.fixture
def settings(fake: FakeHatz) -> Settings:
    """Test settings pointing at the fake."""
    return make_settings(base_url=fake.url)


@pytest.fixture
def ctx(context_factory: Callable[..., Context], settings: Settings) -> Context:
    """A context on fakeredis."""
    return context_factory(settings)


@pytest.fixture
def celery_app(settings: Settings) -> Iterator[Celery]:
    """A Celery app that publishes to an in-memory broker (no Redis, no worker)."""
    app = create_app(settings)
    app.conf.update(broker_url="memory://", task_always_eager=False)
    yield app
    app.close()


Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(ctx: Context, celery_app: Celery, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``main(argv)`` with the test context; return (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv), context=ctx, celery=celery_app)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _create(ctx: Context, **fields: Any) -> str:
    run_id, _ = ctx.ledger.create({"app_id": TOPIC_BRIEF_ID, "inputs": {"topic": "t"}, **fields})
    return run_id


def _finish(ctx: Context, run_id: str, state: RunState, **fields: Any) -> None:
    assert ctx.ledger.cas(run_id, states=None, to=state, fields=fields)


# --- run ------------------------------------------------------------------------------


def test_run_json_prints_only_the_run_id(cli: Cli, ctx: Context) -> None:
    code, out, _ = cli("run", TOPIC_BRIEF_ID, "--input", "topic=tides", "--json")
    assert code == 0
    body = json.loads(out)
    assert list(body) == ["run_id"]
    run = ctx.ledger.require(body["run_id"])
    assert run.state is RunState.QUEUED
    assert run["inputs"] == {"topic": "tides"}


def test_run_plain_prints_the_run_id(cli: Cli, ctx: Context, tmp_path: Path) -> None:
    report = tmp_path / "r.csv"
    report.write_text("a,b\n1,2\n")
    argv = [
        "run",
        REPORT_SUMMARIZER_ID,
        "-f",
        f"report_file={report}",
        "--metadata",
        "order=42",
        "--idempotency-key",
        "k1",
        "--draft",
    ]
    code, out, _ = cli(*argv)
    assert code == 0
    run = ctx.ledger.require(out.strip())
    assert run["files"] == {"report_file": str(report.resolve())}
    assert run["metadata"] == {"order": "42"}
    assert run["is_draft_app"] is True
    # The same idempotency key and parameters give the same run; other parameters are refused.
    assert cli(*argv)[:2] == (0, out)
    code, _, err = cli(*argv[:-1])
    assert code == 2
    assert "idempotency key" in err
    assert len(ctx.ledger.run_ids()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["--input", "topic"],
        ["--input", "=value"],
        ["--input", "topic=a", "--input", "topic=b"],
        ["--metadata", "novalue"],
        ["--file", "report_file=/nonexistent/report.csv"],
        ["--callback-url", "ftp://example.com/hook"],
        ["--bogus-option"],
        ["--timeout", "5"],
    ],
)
def test_run_bad_arguments_exit_2_and_enqueue_nothing(
    cli: Cli, ctx: Context, argv: list[str]
) -> None:
    code, out, err = cli("run", TOPIC_BRIEF_ID, *argv)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("hatz-worker: ")
    assert "Traceback" not in err
    assert ctx.ledger.run_ids() == []


def test_run_missing_file_names_the_path(cli: Cli, ctx: Context) -> None:
    code, _, err = cli("run", REPORT_SUMMARIZER_ID, "--file", "report_file=/no/such/file.csv")
    assert code == 2
    assert "/no/such/file.csv" in err
    assert "nothing was enqueued" in err
    assert ctx.ledger.run_ids() == []


def test_run_upload_here_uploads_from_the_cli_and_records_only_the_file_uuid(
    cli: Cli, ctx: Context, fake: FakeHatz, tmp_path: Path
) -> None:
    report = tmp_path / "r.csv"
    report.write_bytes(b"region,sales\nnorth,10\n")

    code, out, _ = cli("run", REPORT_SUMMARIZER_ID, "-f", f"report_file={report}", "--upload-here")

    assert code == 0
    run = ctx.ledger.require(out.strip())
    assert run["files"] == {}
    info = fake.upload_info(run["inputs"]["report_file"])
    assert info is not None
    assert (info["size"], info["filename"]) == (len(report.read_bytes()), "r.csv")


def test_run_with_a_plain_http_file_url_exits_2_and_enqueues_nothing(
    cli: Cli, ctx: Context
) -> None:
    code, _, err = cli("run", REPORT_SUMMARIZER_ID, "-f", "report_file=http://x.example/r.csv")

    assert code == 2
    assert "must use https://" in err
    assert len(err.strip().splitlines()) == 1
    assert ctx.ledger.run_ids() == []


# --- status ---------------------------------------------------------------------------


def test_status_never_prints_a_presigned_query_string(cli: Cli, ctx: Context) -> None:
    run_id = _create(ctx, callback_url="https://hooks.example.com/hatz?token=hooksecret")
    _finish(
        ctx,
        run_id,
        RunState.COMPLETED,
        job_id="job-1",
        hatz_status="complete",
        steps_done=2,
        number_of_steps=2,
        poll_count=3,
        documents={"step-doc": {"url": DOC_URL, "expires_at": time.time() + 3600}},
        callback_state="delivered",
    )
    code, out, _ = cli("status", run_id)
    assert code == 0
    assert "COMPLETED" in out
    assert "job-1" in out
    assert "2/2" in out
    assert "https://bucket.s3.amazonaws.com/jobs/j1/summary.pdf" in out
    assert "X-Amz" not in out
    assert "SECRET" not in out
    assert "hooksecret" not in out
    assert "delivered" in out
    history = [line for line in out.splitlines() if "QUEUED" in line or "COMPLETED" in line]
    assert len(history) >= 2

    code, out, _ = cli("status", run_id, "--json")
    assert code == 0
    record = json.loads(out)
    assert record["documents"]["step-doc"]["url"] == DOC_URL  # --json is the full record


def test_status_shows_the_archived_copy_beside_the_presigned_url(cli: Cli, ctx: Context) -> None:
    archive = {"url": "s3://acme/hatz/r/step-doc/summary.pdf", "sha256": "ab" * 32, "size": 48213}
    run_id = _create(ctx)
    _finish(
        ctx,
        run_id,
        RunState.COMPLETED,
        documents={
            "step-doc": {"url": DOC_URL, "expires_at": time.time() + 3600, "archive": archive}
        },
        archive_state="done",
    )

    _, plain, _ = cli("status", run_id)
    _, as_json, _ = cli("status", run_id, "--json")

    assert "archived: s3://acme/hatz/r/step-doc/summary.pdf  (48213 bytes" in plain
    assert any(line.split() == ["archive", "done"] for line in plain.splitlines())
    assert json.loads(as_json)["documents"]["step-doc"]["archive"] == archive


def test_run_event_filter_is_recorded(cli: Cli, ctx: Context) -> None:
    code, out, _ = cli(
        "run", TOPIC_BRIEF_ID, "-i", "topic=x", "--event", "workflow_run.failed", "--json"
    )

    assert code == 0
    run = get_run(json.loads(out)["run_id"], context=ctx)
    assert run["events"] == ["workflow_run.failed"]


def test_status_of_a_waiting_run_shows_an_open_breaker(cli: Cli, ctx: Context) -> None:
    run_id = _create(ctx)
    _, before, _ = cli("status", run_id)

    breaker.record_overage(ctx, "429: credit overage")
    code, after, _ = cli("status", run_id)

    assert code == 0
    assert "breaker" not in before
    assert "credit-overage breaker is OPEN" in after


def test_status_of_unknown_run_exits_1(cli: Cli) -> None:
    code, out, err = cli("status", "nope")
    assert code == 1
    assert out == ""
    assert "no run 'nope'" in err


def test_safe_url_keeps_only_scheme_host_and_path() -> None:
    assert safe_url("https://u:p@h.example:8443/a/b?sig=1#f") == "https://h.example:8443/a/b"


# --- wait -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (RunState.COMPLETED, 0),
        (RunState.FAILED, 1),
        (RunState.REJECTED, 1),
        (RunState.CANCELED, 1),
        (RunState.TIMED_OUT, 1),
        (RunState.AMBIGUOUS, 1),
    ],
)
def test_wait_exit_code_follows_the_final_state(
    cli: Cli, ctx: Context, state: RunState, expected: int
) -> None:
    run_id = _create(ctx)
    _finish(ctx, run_id, state, error="" if state is RunState.COMPLETED else "boom")
    code, out, _ = cli("wait", run_id)
    assert code == expected
    assert state.value in out

    code, out, _ = cli("wait", run_id, "--json")
    assert code == expected
    assert json.loads(out)["state"] == state.value


def test_wait_timeout_exits_3(cli: Cli, ctx: Context) -> None:
    run_id = _create(ctx)
    started = time.monotonic()
    code, out, err = cli("wait", run_id, "--timeout", "0.2")
    assert code == 3
    assert time.monotonic() - started < 5
    assert "still QUEUED" in err
    assert out == ""


def test_wait_progress_lines_when_not_a_tty(cli: Cli, ctx: Context) -> None:
    run_id = _create(ctx)
    _finish(ctx, run_id, RunState.COMPLETED, steps_done=3, number_of_steps=3)
    code, _, err = cli("wait", run_id)
    assert code == 0
    assert f"{run_id[:12]}  COMPLETED" in err
    assert "\x1b" not in err


# --- runs and cancel --------------------------------------------------------------------


def test_runs_table_and_filter(cli: Cli, ctx: Context) -> None:
    queued = _create(ctx)
    failed = _create(ctx)
    _finish(ctx, failed, RunState.FAILED, error="step 2 failed")
    code, out, _ = cli("runs")
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["RUN_ID", "STATE", "APP"]
    assert queued in out
    assert failed in out

    code, out, _ = cli("runs", "--state", "failed", "--json")
    assert code == 0
    assert [r["run_id"] for r in json.loads(out)] == [failed]

    code, _, err = cli("runs", "--state", "nonsense")
    assert code == 2
    assert "unknown state" in err


def test_cancel_before_submit(cli: Cli, ctx: Context) -> None:
    run_id = _create(ctx)
    code, out, _ = cli("cancel", run_id)
    assert code == 0
    assert "canceled" in out
    assert "no job was started" in out
    assert ctx.ledger.require(run_id).state is RunState.CANCELED

    code, _, err = cli("cancel", run_id)
    assert code == 1
    assert "already ended (CANCELED)" in err


def test_cancel_of_a_submitted_run_says_the_job_keeps_running(cli: Cli, ctx: Context) -> None:
    run_id = _create(ctx)
    assert ctx.ledger.cas(run_id, states=None, to=RunState.RUNNING, fields={"job_id": "job-9"})
    code, out, _ = cli("cancel", run_id)
    assert code == 0
    assert "job-9" in out
    assert "keeps running remotely" in out


def test_cancel_of_a_finished_run_exits_1(cli: Cli, ctx: Context) -> None:
    run_id = _create(ctx)
    _finish(ctx, run_id, RunState.COMPLETED)
    code, _, _ = cli("cancel", run_id)
    assert code == 1
    assert ctx.ledger.require(run_id).state is RunState.COMPLETED


# --- apps -----------------------------------------------------------------------------


def test_apps_lists_the_catalogue(cli: Cli) -> None:
    code, out, _ = cli("apps")
    assert code == 0
    assert "Report Summarizer" in out
    assert TOPIC_BRIEF_ID in out

    code, out, _ = cli("apps", "--name", "Topic", "--json")
    assert code == 0
    assert [a["id"] for a in json.loads(out)] == [TOPIC_BRIEF_ID]


def test_app_shows_user_inputs(cli: Cli) -> None:
    code, out, _ = cli("app", REPORT_SUMMARIZER_ID)
    assert code == 0
    rows = {line.split()[0]: line.split()[1:3] for line in out.splitlines() if line[:2] == "  "}
    assert rows["report_file"] == ["file_upload", "yes"]
    assert rows["summary_style"] == ["short_answer", "no"]

    code, out, _ = cli("app", REPORT_SUMMARIZER_ID, "--json")
    assert code == 0
    assert json.loads(out)["id"] == REPORT_SUMMARIZER_ID


def test_unknown_app_is_an_api_error_exit_1(cli: Cli) -> None:
    code, out, err = cli("app", "00000000-0000-0000-0000-000000000000")
    assert code == 1
    assert out == ""
    assert err.startswith("hatz-worker: error: 404")
    assert len(err.strip().splitlines()) == 1


def test_query_an_app(cli: Cli) -> None:
    code, out, _ = cli("query", CODING_APP_ID, "--input", "language=Python", "--json")
    assert code == 0
    assert isinstance(json.loads(out), dict)
    code, out, _ = cli("query", CODING_APP_ID, "-i", "language=Python")
    assert code == 0
    assert out.strip()
    code, _, err = cli("query", CODING_APP_ID, "-i", "language")
    assert code == 2
    assert "KEY=VALUE" in err


def test_wrong_api_key_exits_1(fake: FakeHatz, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["apps"], settings=make_settings(base_url=fake.url, api_key="wrong"))
    _, err = capsys.readouterr()
    assert code == 1
    assert "401" in err


# --- configuration, usage ---------------------------------------------------------------


def test_config_error_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.setenv("HATZ_POLL_INTERVAL", "-1")
    code = main(["runs"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert "HATZ_POLL_INTERVAL" in err
    assert "Traceback" not in err


def test_help_and_missing_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out, _ = capsys.readouterr()
    for command in ("run", "status", "wait", "runs", "cancel", "apps", "query", "demo"):
        assert command in out
    assert main([]) == 2
    _, err = capsys.readouterr()
    assert "hatz-worker: error:" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["bogus"],
        ["batch"],
        ["callbacks"],
        ["schedules", "nope"],
        ["health"],
        ["health", "--worker", "--beat"],
        ["runs", "--limit", "0"],
        ["batch", "run", "rows.csv", "--app", "a", "--on-bad-rows", "maybe"],
    ],
)
def test_usage_errors_are_one_line_with_exit_2_before_reading_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    # Given settings that cannot load, so a command that ran would fail differently
    monkeypatch.setenv("HATZ_POLL_INTERVAL", "-1")

    code = main(argv)

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("hatz-worker: error: ")
    assert "--help`" in err


def test_parse_command_line_resolves_a_nested_command_without_running_it() -> None:
    ctx = parse_command_line(["batch", "status", "b1", "--json"])

    assert ctx.command_path == "hatz-worker batch status"
    assert ctx.params["batch_id"] == "b1"
    assert ctx.params["as_json"] is True


def test_fake_hatz_passes_its_arguments_through(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fake-hatz", "--help"]) == 0
    out, _ = capsys.readouterr()
    assert "--api-key" in out


# --- the progress drawer --------------------------------------------------------------


class _Terminal(io.StringIO):
    """A captured stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_redraws_in_place_on_a_terminal_with_said_lines_above() -> None:
    stream = _Terminal()
    drawer = ProgressDrawer(stream)

    drawer.show(["step 1"])
    drawer.say("callback")
    drawer.show(["step 2"])
    drawer.finish(keep=False)

    up_and_clear = "\x1b[1F\x1b[J"
    assert stream.getvalue() == (
        f"step 1\n{up_and_clear}callback\nstep 1\n{up_and_clear}step 2\n{up_and_clear}"
    )


def test_progress_prints_plain_lines_only_on_change_when_not_a_terminal() -> None:
    stream = io.StringIO()
    drawer = ProgressDrawer(stream)

    for line in ("QUEUED", "QUEUED", "RUNNING", "RUNNING"):
        drawer.show([line])
    drawer.finish()

    assert stream.getvalue() == "QUEUED\nRUNNING\n"


# --- the demo -------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_demo_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    from worker.cli.demo import run_demo

    code = run_demo()
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "Demo OK" in out
    assert out.count("signature verified") == 5
    assert "%PDF" in out
