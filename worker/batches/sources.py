"""Batch sources: a CSV, a JSON Lines file or a folder, read into numbered input rows."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config import Settings
from worker.errors import InvalidBatchError
from worker.files.refs import RefKind, kind_of
from worker.files.sources import check_urls
from worker.hatz.types import App
from worker.runs.inputs import validate_inputs
from worker.runs.request import check_request
from worker.store.ledger import fingerprint


@dataclass(frozen=True)
class Row:
    """One input row: its 1-based number in the source, input values and local files."""

    number: int
    inputs: dict[str, Any]
    files: dict[str, str]

    def content_hash(self, app_id: str) -> str:
        """A stable hash of what this row would submit (the resume key of the row)."""
        return fingerprint({"app_id": app_id, "inputs": self.inputs, "files": self.files})


@dataclass(frozen=True)
class BadRow:
    """A row that failed validation, with every problem found."""

    number: int
    problems: list[str]

    def describe(self) -> str:
        """``row N: problem; problem``."""
        return f"row {self.number}: " + "; ".join(self.problems)


Rows = tuple[list[Row], list[BadRow]]


def read_source(
    source: str | os.PathLike[str] | None,
    *,
    inputs: Mapping[str, Any] | None = None,
    file_input: str | None = None,
) -> Rows:
    """Read a batch source into rows and rows that could not be parsed.

    A row's number is its line in the file (in a CSV the header is row 1, as in
    a spreadsheet; blank lines are skipped but keep the count); in a folder,
    its 1-based position by name.

    * ``*.csv``: one row per line after the header; columns are variable names,
      an empty cell leaves that input unset.
    * ``*.jsonl`` / ``*.ndjson``: one JSON object per non-blank line.
    * a folder: one row per regular, non-hidden file (sorted by name), given as
      the ``file_input`` variable.
    * ``None``: a single row of the fixed ``inputs`` alone.

    ``inputs`` are fixed values for every row (a row's own value wins). With
    ``file_input``, that column (CSV/JSONL) holds a local path, relative to the
    source file's folder, or a URL (``https://``, ``s3://``, …), to upload.
    """
    fixed = dict(inputs or {})
    if source is None:
        return [Row(1, fixed, {})], []
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_folder(path, fixed, file_input)
    if not path.is_file():
        raise InvalidBatchError([f"source not found: {path}"])
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return _read_csv(path, fixed, file_input)
        if suffix in {".jsonl", ".ndjson"}:
            return _read_json_lines(path, fixed, file_input)
    except UnicodeDecodeError as exc:
        raise InvalidBatchError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    except csv.Error as exc:
        raise InvalidBatchError([f"{path}: not a readable CSV file: {exc}"]) from None
    raise InvalidBatchError([f"{path}: unknown source type (use .csv, .jsonl or a folder)"])


def _unreadable(path: Path, exc: OSError) -> InvalidBatchError:
    """A source the process may not read (permissions, I/O), as one clear problem."""
    return InvalidBatchError([f"{path}: cannot read it: {exc.strerror or exc}"])


def _not_utf8(path: Path) -> InvalidBatchError:
    """A source that is not UTF-8 text: the first line that is not, and what to do."""
    where = ""
    with path.open("rb") as raw:  # decoding happens in chunks: find the line itself
        for number, line in enumerate(raw, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                where = f"line {number}: "
                where += f"byte 0x{line[exc.start]:02x} at column {exc.start + 1}: "
                break
    return InvalidBatchError(
        [f"{path}: {where}not UTF-8 text; save the file as UTF-8 (in a spreadsheet: CSV UTF-8)"]
    )


def _read_folder(path: Path, fixed: Mapping[str, Any], file_input: str | None) -> Rows:
    """One row per regular, non-hidden file, by name."""
    if not file_input:
        raise InvalidBatchError(["a folder source needs --file-input VAR (the file's input)"])
    try:
        entries = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as exc:
        raise _unreadable(path, exc) from None
    rows = [
        Row(number, dict(fixed), {file_input: str(entry.resolve())})
        for number, entry in enumerate(entries, start=1)
    ]
    return rows, []


def _read_csv(path: Path, fixed: Mapping[str, Any], file_input: str | None) -> Rows:
    """One row per line after the header; the row number is the spreadsheet's."""
    rows: list[Row] = []
    bad: list[BadRow] = []
    base_dir = path.resolve().parent
    reader: csv.DictReader[str] | None = None
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames:
                raise InvalidBatchError([f"{path}: no header row"])
            for record in reader:
                number = reader.line_num  # the spreadsheet row: the header is row 1
                if None in record:
                    bad.append(BadRow(number, ["more cells than header columns"]))
                    continue
                rows.append(_row_from_mapping(number, record, fixed, file_input, base_dir))
    except OSError as exc:
        raise _unreadable(path, exc) from None
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except csv.Error as exc:
        raise InvalidBatchError([_csv_problem(path, reader, exc)]) from None
    return rows, bad


def _csv_problem(path: Path, reader: csv.DictReader[str] | None, exc: csv.Error) -> str:
    """A CSV the parser gave up on, in words: where, and why."""
    line = reader.reader.line_num if reader else 0  # DictReader.line_num lags at an error
    if "field larger than field limit" in str(exc):
        limit = csv.field_size_limit()
        return (
            f"{path}: line {line}: a cell is longer than {limit} characters (the CSV "
            "limit); pass large values as files (--file-input) instead"
        )
    return f"{path}: line {line}: not valid CSV: {exc}"


def _read_json_lines(path: Path, fixed: Mapping[str, Any], file_input: str | None) -> Rows:
    """One row per non-blank line holding a JSON object; the row number is the line's."""
    rows: list[Row] = []
    bad: list[BadRow] = []
    base_dir = path.resolve().parent
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except ValueError as exc:
                    bad.append(BadRow(number, [f"not JSON: {exc}"]))
                    continue
                if not isinstance(value, dict):
                    bad.append(BadRow(number, ["not a JSON object"]))
                    continue
                rows.append(_row_from_mapping(number, value, fixed, file_input, base_dir))
    except OSError as exc:
        raise _unreadable(path, exc) from None
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    return rows, bad


def _row_from_mapping(
    number: int,
    values: Mapping[str, Any],
    fixed: Mapping[str, Any],
    file_input: str | None,
    base_dir: Path,
) -> Row:
    inputs: dict[str, Any] = dict(fixed)
    files: dict[str, str] = {}
    for key, value in values.items():
        if value is None or value == "":
            continue  # an empty cell leaves an optional input unset
        if key == file_input:
            if kind_of(str(value)) is not RefKind.LOCAL:
                files[key] = str(value)  # https://, s3://, …: read when uploaded
            else:
                path = Path(str(value)).expanduser()
                files[key] = str(path if path.is_absolute() else base_dir / path)
            inputs.pop(key, None)
        else:
            inputs[key] = value
    return Row(number, inputs, files)


def validate_rows(app: App, rows: Iterable[Row], settings: Settings) -> Rows:
    """Split rows into good ones and bad ones (local checks, files against
    ``HATZ_FILE_ROOTS``, and the app's ``user_inputs``)."""
    good: list[Row] = []
    bad: list[BadRow] = []
    for row in rows:
        checked = check_request(app.id, row.inputs, row.files, None, None, settings=settings)
        problems = checked.problems + check_urls(checked.files, settings)
        problems += validate_inputs(app, checked.inputs, {**row.files, **checked.files})
        if problems:
            bad.append(BadRow(row.number, problems))
        else:
            good.append(Row(row.number, checked.inputs, checked.files))
    return good, bad
