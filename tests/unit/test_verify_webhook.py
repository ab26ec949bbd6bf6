"""The client's `verify_webhook` (standard library only) against the `standardwebhooks`
library and the service's own signing: the same signatures, both ways."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import standardwebhooks
from credit_ledger_client import WebhookVerificationError, verify_webhook

from wallets.webhooks import new_secret, signed_headers

BODY = json.dumps({"id": "e1", "type": "balance.low", "data": {"available": "5"}}).encode()
NOW_S = 1_767_225_600  # 2026-01-01T00:00:00Z


def test_a_signature_of_the_service_verifies_with_the_client_and_the_library() -> None:
    secret = new_secret()
    headers = signed_headers([secret], "msg_1", NOW_S, BODY)
    assert verify_webhook(secret, headers, BODY, now_s=NOW_S + 10)["type"] == "balance.low"
    # The library signs the same bytes the same way.
    library = standardwebhooks.Webhook(secret)
    at = dt.datetime.fromtimestamp(NOW_S, dt.UTC)
    assert library.sign("msg_1", at, BODY.decode()) == headers["webhook-signature"]


def test_a_signature_of_the_library_verifies_with_the_client() -> None:
    secret = new_secret()
    at = dt.datetime.fromtimestamp(NOW_S, dt.UTC)
    signature = standardwebhooks.Webhook(secret).sign("msg_2", at, BODY.decode())
    headers = {
        "Webhook-Id": "msg_2",
        "Webhook-Timestamp": str(NOW_S),
        "Webhook-Signature": signature,
    }
    assert verify_webhook(secret, headers, BODY.decode(), now_s=NOW_S)["id"] == "e1"


def test_either_secret_of_a_rotation_verifies() -> None:
    old, new = new_secret(), new_secret()
    headers = signed_headers([new, old], "msg_3", NOW_S, BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    verify_webhook(old, headers, BODY, now_s=NOW_S)
    verify_webhook(new, headers, BODY, now_s=NOW_S)
    with pytest.raises(WebhookVerificationError, match="no signature"):
        verify_webhook(new_secret(), headers, BODY, now_s=NOW_S)


def test_a_tampered_body_an_old_timestamp_and_missing_headers_are_refused() -> None:
    secret = new_secret()
    headers = signed_headers([secret], "msg_4", NOW_S, BODY)
    with pytest.raises(WebhookVerificationError, match="no signature"):
        verify_webhook(secret, headers, BODY.replace(b"5", b"6"), now_s=NOW_S)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(secret, headers, BODY, 300, now_s=NOW_S + 301)
    assert verify_webhook(secret, headers, BODY, 600, now_s=NOW_S + 301)["id"] == "e1"
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify_webhook(secret, {"webhook-id": "msg_4"}, BODY, now_s=NOW_S)
    forged = {**headers, "webhook-timestamp": str(NOW_S + 1)}
    with pytest.raises(WebhookVerificationError, match="no signature"):
        verify_webhook(secret, forged, BODY, now_s=NOW_S)
