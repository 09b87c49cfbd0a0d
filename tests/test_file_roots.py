"""Local files only from HATZ_FILE_ROOTS: the check itself, at enqueue, in the worker right
before the upload, for batch sources, and at the CLI. Fakeredis and a stub client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from celery import Celery

from config import Settings
from tests.conftest import make_settings
from worker.api.runs import enqueue_run, enqueue_run_rejecting_refused_files
from worker.batches.create import create_batch
from worker.batches.request import BatchRequest
from worker.cli.main import main
from worker.context import Context
from worker.errors import FileRefusedError, InvalidBatchError, InvalidRunError
from worker.hatz.types import App, SubmittedJob, UploadedFile, UserInput
from worker.runs.file_roots import allowed_path
from worker.runs.submit import submit_step
from worker.store.ledger import RunState
from worker.taskqueue.app import create_app

APP = App(
    id="app",
    user_inputs=[
        UserInput(variable_name="topic"),
        UserInput(variable_name="doc", variable_type="file_upload"),
        UserInput(variable_name="zdoc", variable_type="file_upload"),
    ],
)


class StubClient:
    """Knows one app; records every upload and submit."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def get_app(self, app_id: str) -> App:
        return APP

    def upload_file(self, path: str, **_: Any) -> UploadedFile:
        self.calls.append(f"upload {path}")
        return UploadedFile(file_uuid="8fb5bc1d-5a8d-4015-86a6-b0ca394e7793")

    def run_workflow(self, app_id: str, inputs: dict[str, Any], **_: Any) -> SubmittedJob:
        self.calls.append("run")
        return SubmittedJob(job_id="job-1")

    def close(self) -> None:
        pass


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The one allowed folder, with a readable file in it; outside it a secret."""
    inside = tmp_path / "root"
    inside.mkdir()
    (inside / "report.pdf").write_bytes(b"%PDF")
    (tmp_path / "secret.txt").write_text("API key")
    return inside


@pytest.fixture
def settings(root: Path) -> Settings:
    return make_settings(file_roots=str(root))


@pytest.fixture
def client() -> StubClient:
    return StubClient()


@pytest.fixture
def ctx(fake_redis: fakeredis.FakeRedis, settings: Settings, client: StubClient) -> Context:
    return Context.from_settings(
        settings,
        redis_client=fake_redis,
        client=client,  # type: ignore[arg-type]
    )


@pytest.fixture
def celery_app(settings: Settings) -> Iterator[Celery]:
    """Publishes to an in-memory broker: nothing consumes it."""
    app = create_app(settings)
    app.conf.update(broker_url="memory://")
    yield app
    app.close()


# --- the check ------------------------------------------------------------------------------


def test_a_file_inside_a_root_is_allowed_and_resolved(root: Path, settings: Settings) -> None:
    assert allowed_path(root / "sub" / ".." / "report.pdf", settings) == root / "report.pdf"


@pytest.mark.parametrize(
    "path",
    ["/proc/self/environ", "/sys/kernel/hostname", "/dev/null", "/dev/fd/0", "/proc/1/../self"],
)
def test_proc_sys_and_dev_are_refused_even_inside_a_root(path: str) -> None:
    settings = make_settings(file_roots="/")
    with pytest.raises(FileRefusedError, match="never uploaded"):
        allowed_path(path, settings)


def test_dot_dot_and_absolute_paths_outside_the_roots_are_refused(
    root: Path, settings: Settings
) -> None:
    for path in (root / ".." / "secret.txt", root.parent / "secret.txt", Path("/etc/passwd")):
        with pytest.raises(FileRefusedError, match="outside the allowed folders") as caught:
            allowed_path(path, settings)
        assert str(path) in str(caught.value)


def test_a_symlink_inside_a_root_pointing_outside_is_refused(
    root: Path, settings: Settings
) -> None:
    (root / "link.pdf").symlink_to(root.parent / "secret.txt")
    (root / "environ").symlink_to("/proc/self/environ")

    with pytest.raises(FileRefusedError, match=r"it leads to .*secret\.txt"):
        allowed_path(root / "link.pdf", settings)
    with pytest.raises(FileRefusedError, match="/proc"):
        allowed_path(root / "environ", settings)


def test_a_symlinked_folder_inside_a_root_is_followed_to_where_it_leads(
    root: Path, settings: Settings
) -> None:
    (root / "escape").symlink_to(root.parent)
    with pytest.raises(FileRefusedError):
        allowed_path(root / "escape" / "secret.txt", settings)


def test_a_symlink_loop_is_refused_clearly(root: Path, settings: Settings) -> None:
    (root / "a").symlink_to(root / "b")
    (root / "b").symlink_to(root / "a")
    with pytest.raises(FileRefusedError, match="refused"):
        allowed_path(root / "a", settings)


def test_the_default_root_is_the_working_directory(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(_env_file=None)
    assert settings.file_roots == ["."]
    monkeypatch.chdir(root)
    assert allowed_path("report.pdf", settings) == root / "report.pdf"
    assert allowed_path("./report.pdf", settings) == root / "report.pdf"
    with pytest.raises(FileRefusedError):
        allowed_path("../secret.txt", settings)


def test_an_empty_file_roots_setting_is_refused_naming_the_variable() -> None:
    from config.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match="HATZ_FILE_ROOTS"):
        load_settings(_env_file=None, file_roots=" , ")


# --- at enqueue -------------------------------------------------------------------------------


def test_enqueue_refuses_a_file_outside_the_roots_and_records_nothing(
    ctx: Context, celery_app: Celery
) -> None:
    with pytest.raises(FileRefusedError) as caught:
        enqueue_run("app", {}, files={"doc": "/proc/self/environ"}, context=ctx, celery=celery_app)
    assert "/proc/self/environ" in str(caught.value)
    assert ctx.ledger.run_ids() == []


def test_a_refused_file_next_to_another_problem_is_a_plain_invalid_run(
    ctx: Context, celery_app: Celery
) -> None:
    with pytest.raises(InvalidRunError) as caught:
        enqueue_run(
            "app", {}, files={"doc": "/etc/passwd"}, timeout=-1, context=ctx, celery=celery_app
        )
    assert not isinstance(caught.value, FileRefusedError)
    assert len(caught.value.problems) == 2


def test_send_task_with_a_refused_file_records_a_rejected_run_and_uploads_nothing(
    ctx: Context, celery_app: Celery, client: StubClient, root: Path
) -> None:
    run_id = enqueue_run_rejecting_refused_files(
        context=ctx,
        celery=celery_app,
        app_id="app",
        inputs={"topic": "t"},
        files={"doc": str(root / ".." / "secret.txt")},
        idempotency_key="k1",
    )

    run = ctx.ledger.require(run_id)
    assert run.state is RunState.REJECTED
    assert "secret.txt" in run["error"]
    assert "outside the allowed folders" in run["error"]
    assert run["files"] == {}
    assert client.calls == []
    # The same message again (a redelivery) gives the same run.
    again = enqueue_run_rejecting_refused_files(
        context=ctx,
        celery=celery_app,
        app_id="app",
        inputs={"topic": "t"},
        files={"doc": str(root / ".." / "secret.txt")},
        idempotency_key="k1",
    )
    assert again == run_id


def test_send_task_with_other_bad_input_still_raises(ctx: Context, celery_app: Celery) -> None:
    with pytest.raises(InvalidRunError):
        enqueue_run_rejecting_refused_files(
            context=ctx, celery=celery_app, app_id="", files={"doc": "/proc/self/environ"}
        )
    assert ctx.ledger.run_ids() == []


# --- in the worker, right before the upload -----------------------------------------------


def test_the_worker_checks_again_before_uploading_and_uploads_nothing(
    ctx: Context, client: StubClient, root: Path
) -> None:
    # A run recorded with paths the enqueue-time check never saw (an older producer, a
    # record written by hand, a root narrowed since): one good file, one refused.
    run_id, _ = ctx.ledger.create(
        {
            "app_id": "app",
            "inputs": {},
            "files": {"doc": str(root / "report.pdf"), "zdoc": "/proc/self/environ"},
        }
    )
    submit_step(ctx, run_id, 0)

    run = ctx.ledger.require(run_id)
    assert run.state is RunState.REJECTED
    assert "/proc/self/environ" in run["error"]
    assert client.calls == []  # not even the allowed file went up


def test_the_worker_uploads_the_resolved_path(ctx: Context, client: StubClient, root: Path) -> None:
    (root / "alias.pdf").symlink_to(root / "report.pdf")
    run_id, _ = ctx.ledger.create(
        {"app_id": "app", "inputs": {}, "files": {"doc": str(root / "alias.pdf")}}
    )
    submit_step(ctx, run_id, 0)

    assert client.calls == [f"upload {root / 'report.pdf'}", "run"]


# --- batch sources ---------------------------------------------------------------------------


def test_csv_and_jsonl_file_columns_outside_the_roots_are_bad_rows(
    ctx: Context, root: Path
) -> None:
    csv_source = root / "rows.csv"
    csv_source.write_text(
        f"topic,doc\nok,report.pdf\nup,../secret.txt\nabs,{root.parent / 'secret.txt'}\n"
        "proc,/proc/self/environ\n"
    )
    jsonl_source = root / "rows.jsonl"
    jsonl_source.write_text('{"topic": "ok", "doc": "report.pdf"}\n{"doc": "../secret.txt"}\n')

    for source, bad_rows in ((csv_source, [3, 4, 5]), (jsonl_source, [2])):
        with pytest.raises(InvalidBatchError) as caught:
            create_batch(ctx, BatchRequest("app", source, file_input="doc"))
        problems = caught.value.problems
        assert [int(p.split(":")[0].removeprefix("row ")) for p in problems] == bad_rows
        assert all("refused" in p for p in problems)
    assert ctx.ledger.run_ids() == []


def test_a_folder_source_whose_entries_are_symlinks_out_is_refused_row_by_row(
    ctx: Context, root: Path
) -> None:
    folder = root / "inbox"
    folder.mkdir()
    (folder / "a.pdf").write_bytes(b"%PDF")
    (folder / "b.pdf").symlink_to(root.parent / "secret.txt")
    (folder / "c.txt").symlink_to("/proc/self/environ")

    with pytest.raises(InvalidBatchError) as caught:
        create_batch(ctx, BatchRequest("app", folder, file_input="doc"))

    problems = caught.value.problems
    assert [p.split(":")[0] for p in problems] == ["row 2", "row 3"]
    assert "secret.txt" in problems[0]
    assert "/proc" in problems[1]


def test_a_batch_source_outside_the_roots_is_refused(ctx: Context, root: Path) -> None:
    outside = root.parent / "rows.csv"
    outside.write_text("topic\nx\n")
    (root / "rows.csv").symlink_to(outside)

    with pytest.raises(InvalidBatchError, match=r"source file .* refused"):
        create_batch(ctx, BatchRequest("app", root / "rows.csv"))


# --- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/proc/self/environ", "../secret.txt"])
def test_the_cli_refuses_with_exit_2_and_one_line(
    ctx: Context,
    celery_app: Celery,
    root: Path,
    path: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(root)
    code = main(["run", "app", "--file", f"doc={path}"], context=ctx, celery=celery_app)
    out, err = capsys.readouterr()

    assert code == 2
    assert out == ""
    assert err.startswith("hatz-worker: ")
    assert "refused" in err
    assert path in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert ctx.ledger.run_ids() == []


def test_the_cli_accepts_a_relative_file_in_the_working_directory(
    ctx: Context, celery_app: Celery, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(root)
    assert main(["run", "app", "--file", "doc=./report.pdf"], context=ctx, celery=celery_app) == 0
    (run_id,) = ctx.ledger.run_ids()
    assert ctx.ledger.require(run_id)["files"] == {"doc": str(root / "report.pdf")}
