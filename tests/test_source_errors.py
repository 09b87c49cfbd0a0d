"""Batch sources that cannot be read are one clear error at the CLI (exit 2), never a
traceback: a CSV or JSONL that is not UTF-8, a CSV cell over the CSV field limit, a folder
or a file the process may not read. Nothing is enqueued."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery

from tests.conftest import make_settings
from worker.batches.sources import read_source
from worker.cli.main import main
from worker.context import Context
from worker.errors import InvalidBatchError
from worker.taskqueue.app import create_app


@pytest.fixture
def ctx(context_factory: Callable[..., Context]) -> Context:
    return context_factory()


@pytest.fixture
def celery_app() -> Iterator[Celery]:
    app = create_app(make_settings())
    app.conf.update(broker_url="memory://")
    yield app
    app.close()


def _batch_run(
    ctx: Context, celery_app: Celery, source: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str]:
    code = main(["batch", "run", str(source), "--app", "a", *extra], context=ctx, celery=celery_app)
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    assert err.rstrip().endswith("nothing was enqueued")
    assert ctx.ledger.run_ids() == []
    assert ctx.redis.zcard(ctx.keys.batches) == 0
    return code, err


def _deny(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` unreadable: chmod 000, and as root (whom chmod does not stop) the
    PermissionError the kernel gives anyone else, from the same calls."""
    path.chmod(0)
    if os.geteuid() != 0:
        return
    denied = PermissionError(13, "Permission denied", str(path))
    real_open, real_iterdir = Path.open, Path.iterdir

    def open_(self: Path, *args: object, **kwargs: object) -> object:
        if self == path:
            raise denied
        return real_open(self, *args, **kwargs)  # type: ignore[call-overload]

    def iterdir(self: Path) -> Iterator[Path]:
        if self == path:
            raise denied
        return real_iterdir(self)

    monkeypatch.setattr(Path, "open", open_)
    monkeypatch.setattr(Path, "iterdir", iterdir)


def test_a_csv_that_is_not_utf8_names_the_line_and_the_fix(
    ctx: Context, celery_app: Celery, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "rows.csv"
    source.write_bytes(b"topic\nok\nD\xfcsseldorf\n")  # Latin-1, as Excel saves a plain CSV

    code, err = _batch_run(ctx, celery_app, source, capsys)

    assert code == 2
    assert "line 3: byte 0xfc at column 2: not UTF-8 text" in err
    assert "save the file as UTF-8" in err


def test_a_jsonl_that_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    source = tmp_path / "rows.jsonl"
    source.write_bytes(b'{"topic": "a"}\n' * 3000 + b'{"topic": "\xff"}\n')

    with pytest.raises(InvalidBatchError, match="line 3001: byte 0xff") as caught:
        read_source(source)
    assert len(caught.value.problems) == 1


def test_a_csv_cell_over_the_field_limit_is_one_clear_error(
    ctx: Context, celery_app: Celery, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "rows.csv"
    huge = "x" * (csv.field_size_limit() + 1)
    source.write_text(f'topic\nok\n"{huge}"\n')

    code, err = _batch_run(ctx, celery_app, source, capsys)

    assert code == 2
    assert f"line 3: a cell is longer than {csv.field_size_limit()} characters" in err


def test_an_unreadable_folder_is_one_clear_error(
    ctx: Context,
    celery_app: Celery,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "a.pdf").write_bytes(b"%PDF")
    _deny(folder, monkeypatch)
    try:
        code, err = _batch_run(ctx, celery_app, folder, capsys, "--file-input", "doc")
    finally:
        folder.chmod(0o755)

    assert code == 2
    assert f"{folder}: cannot read it: Permission denied" in err


def test_an_unreadable_csv_is_one_clear_error(
    ctx: Context,
    celery_app: Celery,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = tmp_path / "rows.csv"
    source.write_text("topic\nok\n")
    _deny(source, monkeypatch)
    try:
        code, err = _batch_run(ctx, celery_app, source, capsys)
    finally:
        source.chmod(0o644)

    assert code == 2
    assert f"{source}: cannot read it: Permission denied" in err
