"""Our Standard Webhooks signing, checked by the unmodified ``standardwebhooks`` library.

Each test breaks one thing and expects the one error it causes.
"""

from __future__ import annotations

import time

import pytest
import standardwebhooks

from worker import WebhookVerificationError, verify
from worker.webhooks.signing import headers

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
BODY = b'{"type":"workflow_run.completed","sequence":1,"data":{"run_id":"r1"}}'
MSG_ID = "msg_r1_completed"


def test_library_verifies_our_signature_and_returns_the_payload() -> None:
    signed = headers([SECRET], MSG_ID, BODY)

    payload = standardwebhooks.Webhook(SECRET).verify(BODY, signed)

    assert payload["data"]["run_id"] == "r1"
    assert signed["webhook-id"] == MSG_ID
    assert signed["webhook-signature"].startswith("v1,")


def test_library_rejects_a_tampered_body() -> None:
    signed = headers([SECRET], MSG_ID, BODY)

    with pytest.raises(standardwebhooks.WebhookVerificationError, match="No matching"):
        standardwebhooks.Webhook(SECRET).verify(BODY.replace(b"r1", b"r2"), signed)


def test_library_rejects_a_wrong_secret() -> None:
    signed = headers([SECRET], MSG_ID, BODY)

    with pytest.raises(standardwebhooks.WebhookVerificationError, match="No matching"):
        standardwebhooks.Webhook(OLD_SECRET).verify(BODY, signed)


def test_library_rejects_an_old_timestamp() -> None:
    signed = headers([SECRET], MSG_ID, BODY, now=time.time() - 600)

    with pytest.raises(standardwebhooks.WebhookVerificationError, match="too old"):
        standardwebhooks.Webhook(SECRET).verify(BODY, signed)


def test_library_rejects_a_changed_webhook_id() -> None:
    signed = {**headers([SECRET], MSG_ID, BODY), "webhook-id": "msg_r1_failed"}

    with pytest.raises(standardwebhooks.WebhookVerificationError, match="No matching"):
        standardwebhooks.Webhook(SECRET).verify(BODY, signed)


def test_rotation_puts_one_signature_per_secret_and_each_verifies() -> None:
    signed = headers([SECRET, OLD_SECRET], MSG_ID, BODY)

    assert len(signed["webhook-signature"].split(" ")) == 2
    standardwebhooks.Webhook(SECRET).verify(BODY, signed)
    standardwebhooks.Webhook(OLD_SECRET).verify(BODY, signed)


def test_our_helper_accepts_any_active_secret_during_a_rotation() -> None:
    signed = headers([SECRET], MSG_ID, BODY)

    verify([OLD_SECRET, SECRET], BODY, signed)
    verify(SECRET, BODY, {k.upper(): v for k, v in signed.items()})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"body": BODY + b" "}, "no matching signature"),
        ({"secret": OLD_SECRET}, "no matching signature"),
        ({"now": time.time() + 3600}, "outside the tolerance"),
        ({"drop": "webhook-signature"}, "missing"),
    ],
)
def test_our_helper_rejects_what_the_library_rejects(
    change: dict[str, object], message: str
) -> None:
    signed = headers([SECRET], MSG_ID, BODY)
    if "drop" in change:
        signed.pop(str(change["drop"]))
    body = change.get("body", BODY)
    assert isinstance(body, bytes)

    with pytest.raises(WebhookVerificationError, match=message):
        verify(str(change.get("secret", SECRET)), body, signed, now=change.get("now"))  # type: ignore[arg-type]
