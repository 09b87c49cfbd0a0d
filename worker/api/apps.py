"""The Python API for the Hatz apps and workflows, cached for ``HATZ_APP_CACHE_TTL`` seconds.

>>> from worker.api.apps import list_apps, get_app
>>> [app.name for app in list_apps(name="summar")]
>>> get_app("5ae6e9dd-...").user_inputs
"""

from __future__ import annotations

from worker.context import Context, get_context
from worker.hatz.types import App
from worker.runs.apps import fetch_app, fetch_apps


def list_apps(*, name: str | None = None, context: Context | None = None) -> list[App]:
    """Every app and workflow, in Hatz's order; with ``name``, only those whose name
    contains it (case-insensitive, as Hatz's own filter)."""
    apps = fetch_apps(context or get_context())
    if not name:
        return apps
    needle = name.casefold()
    return [app for app in apps if needle in app.name.casefold()]


def get_app(app_id: str, *, context: Context | None = None) -> App:
    """One app or workflow with its ``user_inputs``; raises
    :class:`~worker.errors.HatzNotFoundError` when Hatz does not know it."""
    return fetch_app(context or get_context(), app_id)
