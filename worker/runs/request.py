"""A run request checked locally, before anything is recorded: inputs, files, metadata, events.

Shared by :func:`worker.api.runs.enqueue_run` and batch creation (every row).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config import Settings
from worker.errors import FileRefusedError
from worker.files.refs import RefKind, check_url_form, kind_of
from worker.runs.file_roots import allowed_path

MAX_INPUTS_BYTES = 64 * 1024
MAX_METADATA_BYTES = 8 * 1024
#: Event filter names a run may ask for (see README "Callbacks").
KNOWN_EVENTS = frozenset(
    {
        "workflow_run.started",
        "workflow_run.completed",
        "workflow_run.failed",
        "workflow_run.timed_out",
        "workflow_run.rejected",
        "workflow_run.canceled",
    }
)


def _json_size(value: Any, what: str, limit: int, problems: list[str]) -> None:
    try:
        size = len(json.dumps(value))
    except (TypeError, ValueError):
        problems.append(f"{what} must be JSON-serialisable")
        return
    if size > limit:
        problems.append(f"{what} is {size} bytes; the limit is {limit} (pass ids, not payloads)")


@dataclass(frozen=True)
class CheckedRequest:
    """A request after the local checks: inputs, resolved file paths, every problem found.

    ``refused``: the problems that are files refused by ``HATZ_FILE_ROOTS``
    (:mod:`worker.runs.file_roots`), also listed in ``problems``.
    """

    inputs: dict[str, Any]
    files: dict[str, str]
    problems: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def _check_files(
    files: Mapping[Any, Any], inputs: Mapping[str, Any], settings: Settings, out: CheckedRequest
) -> None:
    """Each file exists, is readable and lies inside ``HATZ_FILE_ROOTS``: ``out.files``."""
    for name, path in files.items():
        if not isinstance(name, str) or not isinstance(path, str | os.PathLike):
            out.problems.append(f"files[{name!r}] must be a path")
            continue
        if name in inputs:
            out.problems.append(f"input {name!r} given both as a value and as a file")
        if isinstance(path, str) and kind_of(path) is not RefKind.LOCAL:
            out.problems.extend(check_url_form(name, path))  # read by the uploader (worker.files)
            out.files[name] = path
            continue
        try:
            real = allowed_path(path, settings)
        except FileRefusedError as exc:
            message = f"file for input {name!r}: {exc}"
            out.problems.append(message)
            out.refused.append(message)
            continue
        p = Path(path).expanduser()
        if not real.is_file():
            out.problems.append(f"file for input {name!r} not found: {p}")
        elif not os.access(real, os.R_OK):
            out.problems.append(f"file for input {name!r} is not readable: {p}")
        else:
            out.files[name] = str(real)


def check_request(
    app_id: Any,
    inputs: Any,
    files: Any,
    metadata: Any,
    events: Any,
    *,
    settings: Settings,
) -> CheckedRequest:
    """Check an enqueue request locally.

    Local file inputs come back resolved (symlinks and ``..``), checked against
    ``settings.file_roots``; URL file inputs (``https://``, ``s3://``, …) as they
    are, their form checked (they are read when uploaded).
    """
    problems: list[str] = []
    if not isinstance(app_id, str) or not app_id.strip():
        problems.append("app_id must be a non-empty string")
    if not isinstance(inputs, Mapping):
        problems.append("inputs must be an object of variable_name -> value")
        inputs = {}
    if not isinstance(files, Mapping):
        problems.append("files must be an object of variable_name -> path or URL")
        files = {}
    checked = CheckedRequest({}, {}, problems)
    _check_files(files, inputs, settings, checked)
    if not all(isinstance(k, str) for k in inputs):
        problems.append("input names must be strings")
    _json_size(dict(inputs), "inputs", MAX_INPUTS_BYTES, problems)
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            problems.append("metadata must be an object")
        else:
            _json_size(dict(metadata), "metadata", MAX_METADATA_BYTES, problems)
    if events is not None:
        unknown = sorted(set(events) - KNOWN_EVENTS) if isinstance(events, list) else ["?"]
        if unknown:
            problems.append(f"unknown callback events {unknown}; known: {sorted(KNOWN_EVENTS)}")
    return CheckedRequest(dict(inputs), checked.files, problems, checked.refused)
