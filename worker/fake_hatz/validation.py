"""Request validation answering exactly like a FastAPI server (422 with a list ``detail``).

The Hatz API is served by FastAPI (its errors are ``{"detail": ...}``), so
body and query validation errors here use pydantic v2's error items:
``{"type", "loc", "msg", "input"[, "ctx"]}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .messages import Request, Response, json_response

#: Largest JSON body accepted; JSON requests to this API are tiny.
MAX_JSON_BYTES = 1024 * 1024

_INT_TEXT = re.compile(r"^\s*[+-]?\d+\s*$")
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def error_item(
    type_: str, loc: list[str | int], msg: str, input_: Any, ctx: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One pydantic-style validation error item."""
    item: dict[str, Any] = {"type": type_, "loc": loc, "msg": msg, "input": input_}
    if ctx is not None:
        item["ctx"] = ctx
    return item


def unprocessable(errors: list[dict[str, Any]]) -> Response:
    """The 422 response FastAPI gives for failed request validation."""
    return json_response(422, {"detail": errors})


def missing(loc: list[str | int], input_: Any) -> dict[str, Any]:
    """The error item of a required field that is absent."""
    return error_item("missing", loc, "Field required", input_)


@dataclass
class JsonBody:
    """A parsed JSON object body, or the validation errors that prevented it."""

    value: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)


def read_json(request: Request, *, optional: bool = False) -> JsonBody:
    """Read and parse the request's JSON object body once (memoised on the request).

    Raises :class:`PayloadTooLarge` beyond :data:`MAX_JSON_BYTES`. With
    ``optional``, an empty body is an empty object instead of an error.
    """
    cached = request.cache.get("json")
    if isinstance(cached, JsonBody):
        return cached
    raw = request.body.read_all(MAX_JSON_BYTES)
    parsed = _parse(raw, request.header("Content-Type"), optional=optional)
    request.cache["json"] = parsed
    return parsed


def _parse(raw: bytes, content_type: str | None, *, optional: bool) -> JsonBody:
    if not raw.strip():
        if optional:
            return JsonBody()
        return JsonBody(errors=[missing(["body"], None)])
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        # FastAPI does not parse a non-JSON body; the model then gets raw text.
        text = raw.decode("utf-8", "replace")
        return JsonBody(errors=[_not_an_object(text)])
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        pos = exc.pos if isinstance(exc, json.JSONDecodeError) else exc.start
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "Invalid UTF-8"
        item = error_item("json_invalid", ["body", pos], "JSON decode error", {}, {"error": msg})
        return JsonBody(errors=[item])
    if not isinstance(value, dict):
        return JsonBody(errors=[_not_an_object(value)])
    return JsonBody(value=value)


def _not_an_object(value: Any) -> dict[str, Any]:
    return error_item(
        "model_attributes_type",
        ["body"],
        "Input should be a valid dictionary or object to extract fields from",
        value,
    )


class Fields:
    """Typed access to a JSON object's fields, collecting pydantic-style errors."""

    def __init__(self, body: dict[str, Any]) -> None:
        """Validate fields of ``body`` (the whole request body)."""
        self.body = body
        self.errors: list[dict[str, Any]] = []

    def string(self, name: str) -> str | None:
        """A required string field."""
        if name not in self.body:
            self.errors.append(missing(["body", name], self.body))
            return None
        value = self.body[name]
        if not isinstance(value, str):
            self.errors.append(
                error_item("string_type", ["body", name], "Input should be a valid string", value)
            )
            return None
        return value

    def mapping(self, name: str) -> dict[str, Any] | None:
        """A required object field."""
        if name not in self.body:
            self.errors.append(missing(["body", name], self.body))
            return None
        value = self.body[name]
        if not isinstance(value, dict):
            self.errors.append(
                error_item("dict_type", ["body", name], "Input should be a valid dictionary", value)
            )
            return None
        return value

    def boolean(self, name: str, default: bool) -> bool:
        """An optional boolean, with pydantic's lax coercions ("true", 1, ...)."""
        value = self.body.get(name, default)
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, str | int | float):
            msg = "Input should be a valid boolean, unable to interpret input"
            self.errors.append(error_item("bool_parsing", ["body", name], msg, value))
        else:
            msg = "Input should be a valid boolean"
            self.errors.append(error_item("bool_type", ["body", name], msg, value))
        return default

    def integer(self, name: str, default: int, *, ge: int, le: int) -> int | None:
        """An optional integer within ``[ge, le]``."""
        if name not in self.body:
            return default
        value = self.body[name]
        loc: list[str | int] = ["body", name]
        number = _as_int(value, loc, self.errors)
        if number is None:
            return None
        return _check_bounds(number, value, loc, ge, le, self.errors)


def query_int(
    request: Request,
    name: str,
    default: int,
    errors: list[dict[str, Any]],
    *,
    ge: int,
    le: int | None = None,
) -> int | None:
    """An integer query parameter within bounds; appends errors and returns None if invalid."""
    raw = request.query_value(name)
    if raw is None:
        return default
    loc: list[str | int] = ["query", name]
    if not _INT_TEXT.match(raw):
        msg = "Input should be a valid integer, unable to parse string as an integer"
        errors.append(error_item("int_parsing", loc, msg, raw))
        return None
    return _check_bounds(int(raw), raw, loc, ge, le, errors)


def _as_int(value: Any, loc: list[str | int], errors: list[dict[str, Any]]) -> int | None:
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        msg = "Input should be a valid integer, got a number with a fractional part"
        errors.append(error_item("int_from_float", loc, msg, value))
        return None
    if isinstance(value, str) and _INT_TEXT.match(value):
        return int(value)
    if isinstance(value, str):
        msg = "Input should be a valid integer, unable to parse string as an integer"
        errors.append(error_item("int_parsing", loc, msg, value))
        return None
    errors.append(error_item("int_type", loc, "Input should be a valid integer", value))
    return None


def _check_bounds(
    number: int,
    raw: Any,
    loc: list[str | int],
    ge: int,
    le: int | None,
    errors: list[dict[str, Any]],
) -> int | None:
    if number < ge:
        msg = f"Input should be greater than or equal to {ge}"
        errors.append(error_item("greater_than_equal", loc, msg, raw, {"ge": ge}))
        return None
    if le is not None and number > le:
        msg = f"Input should be less than or equal to {le}"
        errors.append(error_item("less_than_equal", loc, msg, raw, {"le": le}))
        return None
    return number
