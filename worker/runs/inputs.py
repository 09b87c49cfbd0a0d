"""Checks of a run's inputs and files against the app's declared ``user_inputs``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from worker.hatz.types import App

_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)


def looks_like_file_uuid(value: Any) -> bool:
    """True for a string shaped like the ``file_uuid`` the upload endpoint returns."""
    return isinstance(value, str) and bool(_UUID.match(value))


def validate_inputs(app: App, inputs: Mapping[str, Any], files: Mapping[str, str]) -> list[str]:
    """Every problem with ``inputs``/``files`` against the app's ``user_inputs`` (empty = ok)."""
    problems: list[str] = []
    declared = {ui.variable_name: ui for ui in app.user_inputs}
    for name in sorted(set(inputs) | set(files)):
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            problems.append(f"unknown input {name!r} (the app's inputs: {known})")
    for name, ui in sorted(declared.items()):
        given_file = name in files
        given_value = name in inputs and inputs[name] not in (None, "")
        if ui.required and not (given_file or given_value):
            problems.append(f"missing required input {name!r}")
        if ui.is_file and given_value and not looks_like_file_uuid(inputs[name]):
            problems.append(f"input {name!r} is a file_upload input: pass a file, not a value")
        if given_file and not ui.is_file:
            problems.append(f"input {name!r} is not a file_upload input ({ui.variable_type})")
    return problems
