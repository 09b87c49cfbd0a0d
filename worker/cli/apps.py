"""``hatz-worker apps``, ``app`` and ``query``: the Hatz apps and workflows, asked directly."""

from __future__ import annotations

import click

from worker.cli.output import clip, print_json, table
from worker.cli.params import json_option, parse_pairs
from worker.cli.runtime import EXIT_OK, Runtime
from worker.hatz.types import App

#: Where an App Builder answer's text may be, in order of preference.
_ANSWER_FIELDS = ("response", "output", "answer", "content", "text", "message", "result")


def _kind(app: App) -> str:
    return "workflow" if app.is_workflow else "app"


@click.command("apps", short_help="list apps and workflows", help="List apps.")
@click.option("--name", metavar="X", help="only apps whose name matches X")
@json_option()
@click.pass_obj
def apps_command(rt: Runtime, name: str | None, as_json: bool) -> int:
    """``apps``: every app and workflow (paged through ``/app/list``)."""
    apps = list(rt.client.iter_apps(name=name))
    if as_json:
        print_json([a.model_dump(mode="json") for a in apps])
        return EXIT_OK
    if not apps:
        print("no apps" + (f" matching {name!r}" if name else ""))
        return EXIT_OK
    rows = [
        [
            a.id,
            _kind(a),
            clip(a.name, 40),
            clip(", ".join(ui.variable_name for ui in a.user_inputs) or "-", 50),
        ]
        for a in apps
    ]
    print("\n".join(table(["ID", "KIND", "NAME", "INPUTS"], rows)))
    return EXIT_OK


@click.command("app", short_help="show one app and its inputs", help="Show one app.")
@click.argument("app_id", metavar="APP_ID")
@json_option()
@click.pass_obj
def app_command(rt: Runtime, app_id: str, as_json: bool) -> int:
    """``app``: one app and its ``user_inputs``."""
    app = rt.client.get_app(app_id)
    if as_json:
        print_json(app.model_dump(mode="json"))
        return EXIT_OK
    print(f"{'id':<12}  {app.id}")
    print(f"{'name':<12}  {app.name}")
    print(f"{'kind':<12}  {_kind(app)}")
    if app.description:
        print(f"{'description':<12}  {clip(app.description, 100)}")
    if app.steps is not None:
        print(f"{'steps':<12}  {len(app.steps)}")
    if not app.user_inputs:
        print(f"{'inputs':<12}  none")
        return EXIT_OK
    print("inputs:")
    rows = [
        [
            ui.variable_name,
            ui.variable_type,
            "yes" if ui.required else "no",
            clip(ui.display_name or "", 40),
        ]
        for ui in sorted(app.user_inputs, key=lambda u: u.position)
    ]
    lines = table(["NAME", "TYPE", "REQUIRED", "DISPLAY NAME"], rows)
    print("\n".join("  " + line for line in lines))
    return EXIT_OK


@click.command(
    "query",
    short_help="query an App Builder app (synchronous)",
    help="POST /app/{id}/query with stream=false and print the answer.",
)
@click.argument("app_id", metavar="APP_ID")
@click.option("-i", "--input", "inputs", multiple=True, metavar="KEY=VALUE", help="an input value")
@json_option()
@click.pass_obj
def query_command(rt: Runtime, app_id: str, inputs: tuple[str, ...], as_json: bool) -> int:
    """``query``: an App Builder query; prints the answer (the whole JSON with ``--json``)."""
    result = rt.client.query_app(app_id, parse_pairs(inputs, "--input")).model_dump(mode="json")
    if as_json:
        print_json(result)
        return EXIT_OK
    for name in _ANSWER_FIELDS:
        if isinstance(result.get(name), str):
            print(result[name])
            return EXIT_OK
    print_json(result)
    return EXIT_OK


COMMANDS = (apps_command, app_command, query_command)
