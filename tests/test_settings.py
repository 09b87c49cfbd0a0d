"""Settings: defaults from the issue, fail-fast validation naming the variable, docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


#: Valid secrets (24-byte keys): settings refuse shorter keys.
NEW_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"


def test_defaults_match_the_documented_ones() -> None:
    s = Settings(_env_file=None)

    assert str(s.base_url) == "https://ai.hatz.ai/v1"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.poll_initial_delay == 2.0
    assert s.presign_expires_in == 3600
    assert s.callback_allow_private is False
    assert s.webhook_secret is None


def test_values_come_from_hatz_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HATZ_POLL_INTERVAL", "7.5")
    monkeypatch.setenv("HATZ_API_KEY", "k-123")

    s = load_settings(_env_file=None)

    assert s.poll_interval == 7.5
    assert s.api_key.get_secret_value() == "k-123"


def test_env_file_is_read(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("HATZ_POLL_MAX_INTERVAL=90\n")

    assert load_settings(_env_file=str(env)).poll_max_interval == 90


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"poll_interval": -1}, "HATZ_POLL_INTERVAL"),
        ({"poll_initial_delay": -0.5}, "HATZ_POLL_INITIAL_DELAY"),
        ({"base_url": "not a url"}, "HATZ_BASE_URL"),
        ({"webhook_secret": "plainsecret"}, "HATZ_WEBHOOK_SECRET"),
        ({"redis_url": "http://127.0.0.1:6379"}, "HATZ_REDIS_URL"),
        ({"callback_retry_delays": "1,soon"}, "HATZ_CALLBACK_RETRY_DELAYS"),
        ({"presign_expires_in": 0}, "HATZ_PRESIGN_EXPIRES_IN"),
        ({"poll_interval": 10, "poll_max_interval": 5}, "HATZ_POLL_MAX_INTERVAL"),
        ({"visibility_timeout": 60, "poll_max_interval": 120}, "HATZ_VISIBILITY_TIMEOUT"),
    ],
)
def test_a_wrong_value_fails_fast_naming_the_variable(
    overrides: dict[str, object], variable: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None, **overrides)

    assert variable in str(info.value)
    assert "Traceback" not in str(info.value)


def test_secrets_are_hidden_in_reprs() -> None:
    s = load_settings(
        _env_file=None,
        api_key="k-secret-1",
        webhook_secret=NEW_SECRET,
    )

    assert "k-secret-1" not in repr(s)
    assert NEW_SECRET not in repr(s)
    assert s.webhook_secrets() == [NEW_SECRET]


def test_several_webhook_secrets_for_rotation() -> None:
    s = load_settings(
        _env_file=None,
        webhook_secret=f"{NEW_SECRET}, {OLD_SECRET}",
    )

    assert s.webhook_secrets() == [
        NEW_SECRET,
        OLD_SECRET,
    ]


def test_settings_reference_documents_every_setting() -> None:
    reference = (ROOT / "docs" / "settings.md").read_text()
    documented = set(re.findall(r"`(HATZ_[A-Z0-9_]+)`", reference))

    missing = {f"HATZ_{name.upper()}" for name in Settings.model_fields} - documented

    assert missing == set()
