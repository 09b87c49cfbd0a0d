"""The catalogue the fake serves: apps and workflows, their inputs and steps.

These dataclasses describe both the metadata returned by ``/v1/app/*`` and the
behaviour of runs (how long a workflow takes, which step fails). They are
written from the Hatz documentation alone and share nothing with the client's
models, so a client that misreads the documentation fails against the fake.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

from .faults import FaultConfig

#: Model name reported for steps and apps that do not set one.
DEFAULT_MODEL = "gpt-4o"

#: ``kind`` of a :class:`FakeApp`: a multi-step workflow, or an App Builder app.
AppKind = Literal["workflow", "app"]

# Namespace of the step ids derived from an app id, so seeded apps keep stable ids.
_STEP_NAMESPACE = uuid.UUID("6f1c2a4e-8d0b-4c3e-9a57-2b1e0d9c8f7a")


@dataclass
class FakeInput:
    """One user input field of an app or workflow (an item of ``user_inputs``).

    ``variable_name`` is the key callers use in ``inputs``. ``variable_type`` is
    free text as in Hatz (``short_answer``, ``long_answer``, ``file_upload``,
    ...); only ``file_upload`` changes behaviour: its value must be the
    ``file_uuid`` of a file uploaded to this fake. ``object_id`` is filled in
    from the app id when left empty.
    """

    variable_name: str
    variable_type: str = "short_answer"
    required: bool = False
    display_name: str = ""
    description: str = ""
    object_id: str = ""

    def __post_init__(self) -> None:
        """Validate the name and default the display name to it."""
        if not self.variable_name:
            raise ValueError("FakeInput.variable_name must not be empty")
        if not self.display_name:
            self.display_name = self.variable_name

    @property
    def is_file(self) -> bool:
        """True for a ``file_upload`` input, whose value must be an uploaded file's uuid."""
        return self.variable_type == "file_upload"

    def to_item(self, position: int) -> dict[str, Any]:
        """Render as an item of an app's ``user_inputs`` list."""
        return {
            "position": position,
            "required": self.required,
            "object_id": self.object_id,
            "description": self.description,
            "display_name": self.display_name,
            "variable_name": self.variable_name,
            "variable_type": self.variable_type,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FakeInput:
        """Build from JSON data (the fields of this class); raise ``ValueError`` if invalid."""
        return _from_dict(cls, data, {})


@dataclass
class FakeStep:
    """One workflow step.

    ``output_type`` ``dump`` is plain text in ``output_data``; any other value
    (``document`` by convention) makes a document step, whose output can be
    downloaded through ``POST /v1/workflows/presigned-url``.

    Attributes:
        output_type: ``dump`` or a document type.
        display_name: shown in app listings; defaults to ``Prompt N``.
        step_type: ``prompt`` in the documentation's examples.
        model: reported in the step's ``config``.
        prompt: prompt text listed in ``prompt_sections``.
        output: template for ``output_data`` of a dump step; ``{{inputs.name}}``
            is replaced by that input. Empty: a deterministic text naming the inputs.
        filename: name of a document step's file; ``.pdf`` (the default) serves a
            real PDF, any other extension plain text.
        id: step id; derived from the app id when empty.
    """

    output_type: str = "dump"
    display_name: str = ""
    step_type: str = "prompt"
    model: str = DEFAULT_MODEL
    prompt: str = ""
    output: str = ""
    filename: str = ""
    id: str = ""

    @property
    def is_document(self) -> bool:
        """True when the step produces a downloadable document rather than text."""
        return self.output_type != "dump"

    def to_item(self, position: int) -> dict[str, Any]:
        """Render as an item of a workflow's ``steps`` list."""
        return {
            "id": self.id,
            "config": {"model": self.model},
            "position": position,
            "step_type": self.step_type,
            "display_name": self.display_name,
            "prompt_sections": _prompt_sections(self.prompt),
            "output_type": self.output_type,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FakeStep:
        """Build from JSON data (the fields of this class); raise ``ValueError`` if invalid."""
        return _from_dict(cls, data, {})


@dataclass
class FakeApp:
    """A workflow (``kind="workflow"``) or an App Builder app (``kind="app"``).

    A workflow run waits ``pending_seconds`` in ``pending``, then runs its steps
    one after another, each taking ``duration / len(steps)`` seconds, so it
    finishes ``pending_seconds + duration`` after submission. With
    ``fail_at_step=k`` (1-based) step k fails and the job ends ``failed`` when
    that step would have ended; ``fail=True`` fails the last step.

    ``faults``, when set, replaces the global :class:`FaultConfig` for every
    request about this app (its runs, their status and downloads, its
    ``/v1/app`` endpoints), except that a global credit overage still applies.

    Inputs and steps are copied, and empty ids are derived from the app id so
    they are stable across runs. A workflow without steps gets one dump step.
    """

    id: str = ""
    name: str = "Fake Workflow"
    kind: AppKind = "workflow"
    description: str = ""
    user_inputs: list[FakeInput] = field(default_factory=list)
    steps: list[FakeStep] = field(default_factory=list)
    duration: float = 1.0
    pending_seconds: float = 0.2
    #: When set, successive runs take these durations in turn (the n-th run of the app
    #: ``durations[n % len]``) instead of ``duration``: an app whose runs vary.
    durations: list[float] = field(default_factory=list)
    fail: bool = False
    fail_at_step: int | None = None
    faults: FaultConfig | None = None
    default_model: str = DEFAULT_MODEL
    #: App Builder prompt; ``{{inputs.name}}`` is replaced in ``/query`` responses.
    prompt: str = ""

    def __post_init__(self) -> None:
        """Validate the definition and fill in derived ids and names."""
        if not self.id:
            self.id = str(uuid.uuid4())
        if self.kind not in ("workflow", "app"):
            raise ValueError(f"FakeApp.kind must be 'workflow' or 'app', got {self.kind!r}")
        if self.duration < 0 or self.pending_seconds < 0:
            raise ValueError("FakeApp.duration and pending_seconds must not be negative")
        self.durations = [float(d) for d in self.durations]
        if any(not d >= 0 for d in self.durations):
            raise ValueError("FakeApp.durations must not be negative")
        self.user_inputs = [dataclasses.replace(i) for i in self.user_inputs]
        self.steps = [dataclasses.replace(s) for s in self.steps]
        if self.kind == "workflow" and not self.steps:
            self.steps = [FakeStep()]
        if self.fail_at_step is not None and not 1 <= self.fail_at_step <= len(self.steps):
            raise ValueError(f"FakeApp.fail_at_step must be between 1 and {len(self.steps)}")
        names = [i.variable_name for i in self.user_inputs]
        if len(set(names)) != len(names):
            raise ValueError("FakeApp.user_inputs have duplicate variable_name values")
        for position, step in enumerate(self.steps):
            step.id = step.id or str(uuid.uuid5(_STEP_NAMESPACE, f"{self.id}/{position}"))
            step.display_name = step.display_name or f"Prompt {position + 1}"
        for item in self.user_inputs:
            if not item.object_id:
                digest = hashlib.sha256(f"{self.id}/{item.variable_name}".encode()).hexdigest()
                item.object_id = "id" + digest[:18]

    @property
    def failing_step(self) -> int | None:
        """0-based index of the step that fails, or None for a succeeding workflow."""
        if self.fail_at_step is not None:
            return self.fail_at_step - 1
        return len(self.steps) - 1 if self.fail and self.steps else None

    def input(self, variable_name: str) -> FakeInput | None:
        """Return the input field named ``variable_name``, if the app has one."""
        return next((i for i in self.user_inputs if i.variable_name == variable_name), None)

    def to_item(self) -> dict[str, Any]:
        """Render as returned by ``GET /v1/app/{id}`` and in ``/v1/app/list``.

        Apps carry ``description``, ``default_model`` and ``prompt_sections``;
        workflows carry ``steps`` and ``dependencies``, as in the documentation.
        The documentation does not show a dependency's shape, and steps here run
        in ``position`` order, so ``dependencies`` is always empty.
        """
        inputs = [item.to_item(position) for position, item in enumerate(self.user_inputs)]
        if self.kind == "app":
            return {
                "id": self.id,
                "name": self.name,
                "description": self.description,
                "default_model": self.default_model,
                "files": [],
                "constants": [],
                "user_inputs": inputs,
                "prompt_sections": _prompt_sections(self.prompt),
            }
        return {
            "id": self.id,
            "name": self.name,
            "files": [],
            "constants": [],
            "user_inputs": inputs,
            "steps": [step.to_item(position) for position, step in enumerate(self.steps)],
            "dependencies": [],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FakeApp:
        """Build from JSON data, e.g. the body of ``POST /_fake/apps``.

        Keys are this class's fields; ``user_inputs`` and ``steps`` are lists of
        objects with :class:`FakeInput` / :class:`FakeStep` fields and ``faults``
        an object with :class:`FaultConfig` fields. Raises ``ValueError`` if invalid.
        """
        return _from_dict(
            cls,
            data,
            {
                "user_inputs": lambda v: [FakeInput.from_dict(_mapping(x)) for x in _list(v)],
                "steps": lambda v: [FakeStep.from_dict(_mapping(x)) for x in _list(v)],
                "faults": lambda v: None if v is None else FaultConfig.from_dict(_mapping(v)),
                "durations": _numbers,
            },
        )


def _prompt_sections(prompt: str) -> list[dict[str, Any]]:
    return [{"body": prompt, "position": 0}] if prompt else []


T = TypeVar("T")

# Types JSON data must have for each scalar field (bool is not a number here).
_SCALARS: dict[str, tuple[type, ...]] = {
    "required": (bool,),
    "fail": (bool,),
    "duration": (int, float),
    "pending_seconds": (int, float),
    "fail_at_step": (int, type(None)),
}


def _from_dict(cls: type[T], data: Mapping[str, Any], nested: dict[str, Callable[[Any], Any]]) -> T:
    known = {f.name for f in dataclasses.fields(cast(Any, cls))}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown field(s) for {cls.__name__}: {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in nested:
            kwargs[key] = nested[key](value)
            continue
        expected = _SCALARS.get(key, (str,))
        if (isinstance(value, bool) and bool not in expected) or not isinstance(value, expected):
            raise ValueError(f"{cls.__name__}.{key} has the wrong type: {value!r}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ValueError(f"{cls.__name__}: {exc}") from exc


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected an object, got {value!r}")
    return value


def _numbers(value: Any) -> list[float]:
    items = _list(value)
    if any(isinstance(x, bool) or not isinstance(x, int | float) for x in items):
        raise ValueError(f"expected a list of numbers, got {value!r}")
    return [float(x) for x in items]


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {value!r}")
    return value
