"""Plans, alerts, top-ups and webhooks together, as a user runs them: `credit-ledger serve
--test-clock`, its own jobs (the plans' allocations on the clock's advance, the projection, the
alerts deriver, the webhooks' ticks), and a real receiver on 127.0.0.1 that checks every
signature with the Standard Webhooks library.

A subscription started on January 31 gets its credits on February 28; a run of debits that
crosses the wallet's threshold sends one `balance.low` and issues one automatic top-up, whose
`top_up.issued` arrives signed; the receiver fails its first answer, and the retry delivers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from tests.api import served
from tests.jobs.webhook_support import Receiver, receiver


class Client:
    def __init__(self, service: served.Served) -> None:
        self.url = service.url
        self.headers = {"Authorization": f"Bearer {service.key}"}
        self.keys = 0

    def post(self, path: str, body: Any, *, idem: bool = True) -> dict[str, Any]:
        headers = dict(self.headers)
        if idem:
            self.keys += 1
            headers["Idempotency-Key"] = f"k-{self.keys}"
        r = httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=60)
        assert r.status_code in (200, 201), f"{path}: {r.status_code} {r.text}"
        result: dict[str, Any] = r.json()
        return result

    def put(self, path: str, body: Any) -> dict[str, Any]:
        self.keys += 1
        headers = {**self.headers, "Idempotency-Key": f"k-{self.keys}"}
        r = httpx.put(f"{self.url}{path}", json=body, headers=headers, timeout=60)
        assert r.status_code in (200, 201), f"{path}: {r.status_code} {r.text}"
        result: dict[str, Any] = r.json()
        return result

    def get(self, path: str) -> dict[str, Any]:
        r = httpx.get(f"{self.url}{path}", headers=self.headers, timeout=60)
        assert r.status_code == 200, f"{path}: {r.status_code} {r.text}"
        result: dict[str, Any] = r.json()
        return result


def _wait(what: str, found: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"waited {timeout_s} s for {what}")


def _verified(hooks: Receiver, secret: str) -> list[dict[str, Any]]:
    """Every delivery the receiver answered with 2xx, verified (a bad signature raises)."""
    verifier = Webhook(secret)
    with hooks.lock:
        got = list(hooks.got)
    return [verifier.verify(r.body, r.headers) for r in got]


def _of_type(hooks: Receiver, secret: str, type_: str) -> list[dict[str, Any]]:
    return [e for e in _verified(hooks, secret) if e["type"] == type_]


def test_a_plan_a_crossing_and_a_top_up_reach_a_webhook_signed(tmp_path: Path) -> None:
    # The receiver's first answer is a 503: that delivery is retried (its backoff is at most
    # 2 minutes of the service's clock, which the test moves).
    with (
        receiver(statuses=[503]) as hooks,
        served.serve(tmp_path, "--test-clock=2025-01-31T00:00:00Z") as service,
    ):
        api = Client(service)
        endpoint = api.post("/v1/webhook-endpoints", {"url": hooks.url})
        secret = endpoint["secret"]
        assert secret.startswith("whsec_")

        api.post("/v1/credit-types", {"code": "tokens", "name": "Tokens"})
        customer = api.post("/v1/customers", {"name": "Acme"})
        sub_resource = api.post(
            "/v1/resources", {"customer_id": customer["id"], "kind": "subscription"}
        )
        plan = api.post(
            "/v1/plans",
            {
                "code": "basic",
                "name": "Basic",
                "allocations": [
                    {
                        "credit_type": "tokens",
                        "amount": 1000,
                        "period": "month",
                        "category": "paid",
                        "consideration_minor": 1000,
                        "currency": "USD",
                    }
                ],
            },
        )
        subscription = api.post(
            "/v1/subscriptions", {"resource_id": sub_resource["id"], "plan_id": plan["id"]}
        )
        wallets = api.get(f"/v1/wallets?resource_id={sub_resource['id']}")["items"]
        (wallet,) = wallets
        assert api.get(f"/v1/wallets/{wallet['id']}")["available"] == 1000

        # The clock reaches February 28: the second month's allocation, with its own dates (the
        # first month's block expires then: an allocation lives one period by default).
        api.post("/v1/test-clock/advance", {"to": "2025-02-28T00:00:00Z"}, idem=False)
        allocations = api.get(f"/v1/subscriptions/{subscription['id']}")["allocations"]
        assert sorted(a["period_start"] for a in allocations) == [
            "2025-01-31T00:00:00Z",
            "2025-02-28T00:00:00Z",
        ]

        # Below 300 credits: one balance.low, one top-up of 500 for $5.00.
        api.post(f"/v1/wallets/{wallet['id']}/thresholds", {"amount": 300})
        api.put(
            f"/v1/wallets/{wallet['id']}/top-up",
            {"threshold": 300, "amount": 500, "consideration_minor": 500, "currency": "USD"},
        )
        spend = {"resource_id": sub_resource["id"], "credit_type": "tokens", "amount": 100}
        assert api.get(f"/v1/wallets/{wallet['id']}")["available"] == 1000
        for _ in range(8):  # 1000 -> 200, crossing 300 once
            api.post("/v1/debits", spend)

        top_ups = _wait(
            "the top-up",
            lambda: [
                t
                for t in api.get(f"/v1/wallets/{wallet['id']}/top-ups")["items"]
                if t["state"] == "issued"
            ],
        )
        assert len(top_ups) == 1 and top_ups[0]["amount"] == 500
        assert api.get(f"/v1/wallets/{wallet['id']}")["available"] == 200 + 500

        # Moving the clock makes the 503's retry due; every event arrives, signed.
        def arrived() -> bool:
            api.post("/v1/test-clock/advance", {"seconds": 120}, idem=False)
            types = [e["type"] for e in _verified(hooks, secret)]
            return all(t in types for t in ("allocation.issued", "balance.low", "top_up.issued"))

        _wait("the events at the receiver", arrived, timeout_s=90)
        issued = _of_type(hooks, secret, "allocation.issued")
        assert len({e["id"] for e in issued}) == 2
        assert len({e["id"] for e in _of_type(hooks, secret, "balance.low")}) == 1
        (top_up_event,) = {e["id"]: e for e in _of_type(hooks, secret, "top_up.issued")}.values()
        assert top_up_event["data"]["grant_id"] == top_ups[0]["grant_id"]
        assert top_up_event["data"]["consideration_minor"] == "500"
        assert top_up_event["customer_id"] == customer["id"]

        # The delivery log tells the failed attempt and its retry.
        log = api.get(f"/v1/webhook-endpoints/{endpoint['id']}/deliveries?limit=100")["items"]
        attempts = [a for d in log for a in d["attempt_log"]]
        assert any(a["status_code"] == 503 for a in attempts)
        assert all(d["state"] == "delivered" for d in log), json.dumps(log)[:2000]
