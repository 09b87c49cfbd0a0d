"""Static checks of the deployment files (Docker cannot run where tests run):
docker-compose.yml, Procfile, Dockerfile and .env.example against our real
entry points and settings."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from celery import Celery

from config.settings import ENV_PREFIX, Settings
from worker.cli.main import parse_command_line

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {"redis", "worker", "beat", "flower"}
CELERY_SUBCOMMANDS = {"worker", "beat", "flower"}


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _argv(command: Any) -> list[str]:
    return list(command) if isinstance(command, list) else shlex.split(str(command))


def _procfile() -> dict[str, list[str]]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line)
        if match:
            entries[match.group(1)] = shlex.split(match.group(2))
    return entries


def assert_entry_point(argv: list[str]) -> None:
    """``celery -A worker <sub>`` with our Celery app, or an existing ``hatz-worker`` command."""
    if argv[0] == "celery":
        assert argv[1:3] == ["-A", "worker"], argv
        assert argv[3] in CELERY_SUBCOMMANDS, argv
        import worker

        assert isinstance(worker.app, Celery)
    elif argv[0] == "hatz-worker":
        try:
            parse_command_line(argv[1:])
        except click.UsageError as exc:  # pragma: no cover - the assertion message
            pytest.fail(f"{argv}: {exc}")
    else:
        pytest.fail(f"unknown entry point {argv}")


def _env_names(text: str) -> set[str]:
    return set(re.findall(rf"\b{ENV_PREFIX}[A-Z0-9_]+\b", text))


def _setting_names() -> set[str]:
    return {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}


def test_compose_has_redis_worker_beat_and_flower_from_one_image() -> None:
    services = _services()

    assert set(services) >= SERVICES
    app_services = [s for name, s in services.items() if name != "redis"]
    assert {s["image"] for s in app_services} == {"hatz-worker:latest"}
    assert all(s.get("build") == "." for s in app_services)
    assert all(s.get("env_file") == ".env" for s in app_services)


def test_compose_commands_resolve_to_our_entry_points() -> None:
    for name, service in _services().items():
        if name == "redis":
            continue
        assert_entry_point(_argv(service["command"]))
        probe = _argv(service["healthcheck"]["test"])[1:]
        if probe[0] == "hatz-worker":
            assert_entry_point(probe)


def test_every_service_has_a_healthcheck_and_a_restart_policy() -> None:
    for name, service in _services().items():
        assert service.get("healthcheck", {}).get("test"), name
        assert service.get("restart") == "unless-stopped", name


def test_worker_and_beat_probes_use_the_heartbeat_health_command() -> None:
    services = _services()

    assert services["worker"]["healthcheck"]["test"] == ["CMD", "hatz-worker", "health", "--worker"]
    assert services["beat"]["healthcheck"]["test"] == ["CMD", "hatz-worker", "health", "--beat"]


def test_redis_persists_with_aof_and_never_evicts() -> None:
    redis = _services()["redis"]
    argv = _argv(redis["command"])

    def option(name: str) -> str:
        return argv[argv.index(name) + 1]

    assert argv[0] == "redis-server"
    assert option("--appendonly") == "yes"
    assert option("--appendfsync") == "everysec"
    assert option("--maxmemory-policy") == "noeviction"
    volume = redis["volumes"][0].split(":")
    assert volume[1] == "/data"
    assert volume[0] in _compose()["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_worker_and_beat_wait_for_a_healthy_redis() -> None:
    services = _services()

    for name in ("worker", "beat"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_exactly_one_beat_and_graceful_stops() -> None:
    services = _services()

    assert services["beat"]["deploy"]["replicas"] == 1
    for name in ("worker", "beat"):
        assert services[name]["stop_signal"] == "SIGTERM"
        assert services[name]["stop_grace_period"]
    # The worker's grace outlasts one task's HTTP timeouts with the default settings.
    grace = services["worker"]["stop_grace_period"]
    seconds = int(grace[:-1]) * (60 if grace.endswith("m") else 1)
    defaults = Settings(_env_file=None)
    assert seconds > defaults.http_connect_timeout + defaults.http_read_timeout


def test_procfile_runs_worker_beat_and_flower_without_remapping_sigterm() -> None:
    entries = _procfile()

    assert {"worker", "beat", "flower"} <= set(entries)
    for argv in entries.values():
        assert_entry_point(argv)
    text = (ROOT / "Procfile").read_text()
    assert "REMAP_SIGTERM=" not in text  # warm shutdown on SIGTERM: README explains


def test_dockerfile_installs_the_package_and_runs_as_non_root() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]

    assert "RUN pip install --require-hashes -r requirements/main.txt" in lines
    assert any(re.match(r'RUN pip install --no-deps "?\.(\[flower\])?"?$', line) for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users
    assert users[-1] not in {"root", "0"}


def test_every_env_name_in_the_deploy_files_is_a_real_setting() -> None:
    used = set()
    for name in ("docker-compose.yml", ".env.example", "Procfile", "Dockerfile"):
        used |= _env_names((ROOT / name).read_text())

    assert used - _setting_names() == set()


def test_env_example_lists_every_setting() -> None:
    listed = _env_names((ROOT / ".env.example").read_text())

    assert _setting_names() - listed == set()


def test_flower_is_an_optional_extra_not_a_dependency() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    assert not any(d.startswith("flower") for d in project["dependencies"])
    assert any(d.startswith("flower") for d in project["optional-dependencies"]["flower"])


def test_compose_serves_the_http_api_on_loopback_with_a_health_probe() -> None:
    api = _services()["api"]
    argv = _argv(api["command"])

    assert argv[:2] == ["hatz-worker", "serve"]
    assert_entry_point(argv)
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    port = argv[argv.index("--port") + 1]
    assert api["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(api["healthcheck"]["test"])
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["stop_signal"] == "SIGTERM"
    grace = api["stop_grace_period"]
    assert grace.endswith("s")
    assert int(grace[:-1]) > 30  # outlasts uvicorn's own graceful shutdown


def test_procfile_web_serves_the_http_api_on_the_platforms_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    web = _procfile()["web"]

    assert web[:2] == ["hatz-worker", "serve"]
    assert web[web.index("--host") + 1] == "0.0.0.0"
    assert "--port" not in web  # the port comes from $PORT, as Heroku-style platforms set it
    monkeypatch.setenv("PORT", "5123")
    assert parse_command_line(web[1:]).params["port"] == 5123


def test_procfile_web_starts_the_processes_the_platform_asks_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    web = _procfile()["web"]

    assert "--workers" not in web  # from $WEB_CONCURRENCY, which such platforms set by size
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert parse_command_line(web[1:]).params["workers"] == 3
    monkeypatch.delenv("WEB_CONCURRENCY")
    assert parse_command_line(web[1:]).params["workers"] == 1
