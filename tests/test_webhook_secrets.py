"""HATZ_WEBHOOK_SECRET is decoded strictly when settings load: a key anyone could guess
(empty, short) or a body that is not base64 is refused, naming the variable."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest

from config import ConfigError, load_settings

GOOD = "whsec_" + base64.b64encode(b"k" * 32).decode()
OLD = "whsec_" + base64.b64encode(b"o" * 24).decode()


def _secret(n: int) -> str:
    return "whsec_" + base64.b64encode(b"x" * n).decode()


@pytest.mark.parametrize(
    ("secret", "says"),
    [
        ("whsec_", "0-byte key"),
        (_secret(16), "16-byte key"),
        (_secret(65), "65-byte key"),
        ("whsec_not*base64!at$all", "not valid base64"),
        ("whsec_" + "A" * 33, "not valid base64"),
        ("nope", "must start with 'whsec_'"),
        (f"{GOOD},whsec_", "secret 2 of 2"),
    ],
)
def test_a_guessable_or_garbled_secret_is_refused_naming_the_variable(
    secret: str, says: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None, webhook_secret=secret)

    message = str(info.value)
    assert "HATZ_WEBHOOK_SECRET" in message
    assert says in message
    body = secret.split(",")[-1].removeprefix("whsec_")
    assert not body or len(body) < 4 or body not in message  # the secret is never echoed


@pytest.mark.parametrize("n", [24, 32, 64])
def test_keys_of_24_to_64_bytes_are_accepted(n: int) -> None:
    settings = load_settings(_env_file=None, webhook_secret=_secret(n))

    assert settings.webhook_secrets() == [_secret(n)]


def test_unpadded_base64_is_accepted_as_the_reference_libraries_do() -> None:
    unpadded = _secret(25).rstrip("=")

    assert load_settings(_env_file=None, webhook_secret=unpadded).webhook_secrets() == [unpadded]


def test_rotated_secrets_get_the_same_check() -> None:
    settings = load_settings(_env_file=None, webhook_secret=f"{GOOD}, {OLD}")
    assert settings.webhook_secrets() == [GOOD, OLD]

    with pytest.raises(ConfigError, match="HATZ_WEBHOOK_SECRET: secret 2 of 2"):
        load_settings(_env_file=None, webhook_secret=f"{GOOD}, whsec_c2VjcmV0")


def test_the_cli_says_so_without_a_traceback(tmp_path: object) -> None:
    env = {**os.environ, "HATZ_WEBHOOK_SECRET": "whsec_", "HATZ_REDIS_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli.main", "runs"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=str(tmp_path),
        check=False,
    )

    assert done.returncode != 0
    assert "HATZ_WEBHOOK_SECRET" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout
