"""Dependencies: the floors in pyproject.toml are the set the nox session tests, the lock
lies inside the ranges, and the kombu patches apply only on the range they were tested on."""

from __future__ import annotations

import ast
import logging
import tomllib
from pathlib import Path
from typing import Any

import pytest
from kombu.transport import redis as kombu_redis
from packaging.requirements import Requirement
from packaging.version import Version

from worker.taskqueue import kombu_fixes

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    return {r.name: r for r in reqs}


def _floor(req: Requirement) -> Version:
    (floor,) = [Version(s.version) for s in req.specifier if s.operator == ">="]
    return floor


def _locked(name: str) -> Version:
    for line in (ROOT / "requirements/dev.txt").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return Version(line.split("==")[1].split()[0])
    raise AssertionError(f"{name} not in the lock")


def _nox_oldest() -> dict[str, Version]:
    """``OLDEST`` in noxfile.py (read, not imported: nox need not be installed)."""
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
            if isinstance(target, ast.Name) and target.id == "OLDEST":
                pins = [Requirement(p) for p in ast.literal_eval(node.value)]  # type: ignore[arg-type]
                return {r.name: Version(next(iter(r.specifier)).version) for r in pins}
    raise AssertionError("no OLDEST in noxfile.py")


def test_celery_kombu_and_redis_have_the_floors_the_nox_session_tests() -> None:
    reqs = _requirements()
    oldest = _nox_oldest()
    for name in ("celery", "kombu", "redis"):
        assert name in reqs, f"{name} has no range of its own in pyproject.toml"
        assert _floor(reqs[name]) == oldest[name], name
    assert "hiredis" in reqs["redis"].extras


def test_the_lock_lies_inside_the_ranges_and_the_tested_kombu_range() -> None:
    reqs = _requirements()
    for name in ("celery", "kombu", "redis"):
        assert _locked(name) in reqs[name].specifier, name
    kombu = tuple(_locked("kombu").release)
    assert kombu_fixes.TESTED_FROM <= kombu < kombu_fixes.TESTED_BELOW
    # The patches' tested range starts at pyproject's kombu floor.
    assert tuple(_floor(reqs["kombu"]).release) == kombu_fixes.TESTED_FROM


@pytest.fixture
def unpatched(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Plain stand-ins for the two kombu methods the patches wrap (restored after)."""

    def restore_unacked(self: Any, client: Any = None) -> None:
        return None

    def _create_client(self: Any, asynchronous: bool = False) -> None:
        return None

    monkeypatch.setattr(kombu_redis.QoS, "restore_unacked", restore_unacked)
    monkeypatch.setattr(kombu_redis.Channel, "_create_client", _create_client)
    return {"restore_unacked": restore_unacked, "_create_client": _create_client}


@pytest.mark.parametrize("version", [(5, 8, 0), (6, 0, 0), (5, 5, 1), (5, 4, 7)])
def test_outside_the_tested_range_nothing_is_patched_and_the_log_says_so(
    version: tuple[int, ...],
    unpatched: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(kombu_fixes, "kombu_version", lambda: version)

    with caplog.at_level(logging.WARNING, logger=kombu_fixes.__name__):
        assert kombu_fixes.apply() is False
        assert kombu_fixes.apply_client_reuse() is False

    assert kombu_redis.QoS.restore_unacked is unpatched["restore_unacked"]
    assert kombu_redis.Channel._create_client is unpatched["_create_client"]
    (record,) = caplog.records
    assert ".".join(map(str, version)) in record.getMessage()
    assert "not applied" in record.getMessage()
    assert "5.5.2 up to 5.8" in record.getMessage()


@pytest.mark.parametrize("version", [(5, 5, 2), (5, 6, 0), (5, 7, 0), (5, 7, 9)])
def test_inside_the_tested_range_both_patches_apply_quietly(
    version: tuple[int, ...],
    unpatched: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(kombu_fixes, "kombu_version", lambda: version)

    with caplog.at_level(logging.WARNING, logger=kombu_fixes.__name__):
        assert kombu_fixes.apply() is True

    assert kombu_redis.QoS.restore_unacked is not unpatched["restore_unacked"]
    assert kombu_redis.Channel._create_client is not unpatched["_create_client"]
    assert caplog.records == []


def test_a_missing_method_is_skipped_with_a_warning(
    unpatched: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delattr(kombu_redis.Channel, "_create_client")

    with caplog.at_level(logging.WARNING, logger=kombu_fixes.__name__):
        assert kombu_fixes.apply() is True  # the restore guard still applies

    assert "_create_client" in caplog.text
    assert "not applied" in caplog.text
    assert not hasattr(kombu_redis.Channel, "_create_client")
