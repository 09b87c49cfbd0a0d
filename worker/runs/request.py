"""A run request checked locally, before anything is recorded: inputs, files, metadata, events.

Shared by :func:`worker.api.runs.enqueue_run` and batch creation (every row).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.files.refs import RefKind, check_url_form, kind_of

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


def _check_local(
    name: str, path: str | os.PathLike[str], resolved: dict[str, str], problems: list[str]
) -> None:
    """A local file input: it must be a readable file; record its absolute path."""
    p = Path(path).expanduser()
    if not p.is_file():
        problems.append(f"file for input {name!r} not found: {p}")
    elif not os.access(p, os.R_OK):
        problems.append(f"file for input {name!r} is not readable: {p}")
    else:
        resolved[name] = str(p.resolve())


def check_request(
    app_id: Any,
    inputs: Any,
    files: Any,
    metadata: Any,
    events: Any,
) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Check an enqueue request locally; return (inputs, files, problems).

    Local file inputs come back as absolute paths; URL file inputs (``https://``,
    ``s3://``, …) as they are, their form checked (they are read when uploaded).
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
    resolved: dict[str, str] = {}
    for name, path in files.items():
        if not isinstance(name, str) or not isinstance(path, str | os.PathLike):
            problems.append(f"files[{name!r}] must be a path")
            continue
        if isinstance(path, str) and kind_of(path) is not RefKind.LOCAL:
            problems += check_url_form(name, path)  # read by the uploader (worker.files)
            resolved[name] = path
        else:
            _check_local(name, path, resolved, problems)
        if name in inputs:
            problems.append(f"input {name!r} given both as a value and as a file")
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
    return dict(inputs), resolved, problems
