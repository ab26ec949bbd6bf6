"""Verifying the service's webhooks (Standard Webhooks signatures), with the standard library
only: no server code, no other dependency.

A request carries `webhook-id` (the event's id: dedupe on it, a retry or a replay sends it
again), `webhook-timestamp` (Unix seconds) and `webhook-signature`: one or more
space-separated `v1,<base64>` signatures, each an HMAC-SHA256 over `{id}.{timestamp}.{body}`
with the key that the endpoint's secret (`whsec_<base64>`) holds. After a rotation the service
signs with the new and the previous secret for a while, so either secret verifies.

    from credit_ledger_client import verify_webhook

    event = verify_webhook(secret, request.headers, raw_body)  # raises WebhookVerificationError
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["WebhookVerificationError", "verify_webhook"]

_PREFIX = "whsec_"


class WebhookVerificationError(Exception):
    """The request is not a webhook signed with this secret within the tolerance."""


def _key(secret: str) -> bytes:
    text = secret[len(_PREFIX) :] if secret.startswith(_PREFIX) else secret
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the secret is not whsec_ followed by base64") from None
    if not key:
        raise ValueError("the secret is empty")
    return key


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance_s: int = 300,
    *,
    now_s: float | None = None,
) -> dict[str, Any]:
    """The event (the body's JSON) when one of the request's signatures is this secret's and
    its timestamp is within `tolerance_s` of now (`now_s`, default the clock); otherwise
    WebhookVerificationError. Pass the raw body, exactly as received."""
    lowered = {k.lower(): v for k, v in headers.items()}
    message_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (message_id and timestamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or -signature")
    if not timestamp.isdigit():
        raise WebhookVerificationError("webhook-timestamp is not Unix seconds")
    now = time.time() if now_s is None else now_s
    if abs(now - int(timestamp)) > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance")
    raw = body.encode() if isinstance(body, str) else body
    signed = f"{message_id}.{timestamp}.".encode() + raw
    expected = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    for versioned in signatures.split(" "):
        version, _, encoded = versioned.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, given):
            event: dict[str, Any] = json.loads(raw)
            return event
    raise WebhookVerificationError("no signature matches this secret")
