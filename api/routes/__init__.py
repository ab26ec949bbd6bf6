"""The litestar routes: thin. The app's guard (`authorize`) authenticates from the in-process key
cache and checks the route's scopes; each handler checks the customer boundary, converts wire
ids, calls the service, and shapes the answer. One module per part of the API:

- `spending`: check, debits, reservations. The hot lane (`api.lane`) serves these paths in
  front of litestar; their handlers here document them and call the same `api.spending`. They
  never touch Postgres: their idempotency rides on TigerBeetle.
- `catalog`, `grants`, `budgets`, `prices`: admin and read routes, lists among them (served
  from Postgres, paged by `api.paging`); admin writes keep their idempotency in Postgres
  through the control plane.
- `alerts`: thresholds on wallets and budgets, automatic top-up rules and top-ups.
- `usage`: cost attribution, read from the projection's usage rollups (JSON or CSV).
- `finance`: the finance reports (JSON or CSV), periods (list, close, lock), breakage policies.
- `health`: liveness and readiness.
- `plans`: plans (recurring allocations) and subscriptions: subscribe, change plan, pause,
  resume, cancel.
- `clock`: a sandbox's test clock (`serve --test-clock`): read it, advance it.
- `webhooks`: webhook endpoints, their delivery log and replays; the outbox of events.
"""

from __future__ import annotations

from api.routes import (
    alerts,
    budgets,
    catalog,
    clock,
    finance,
    grants,
    health,
    plans,
    prices,
    spending,
    usage,
    webhooks,
)
from api.routes.shared import authorize

ROUTES = [
    *spending.ROUTES,
    *catalog.ROUTES,
    *grants.ROUTES,
    *budgets.ROUTES,
    *alerts.ROUTES,
    *plans.ROUTES,
    *prices.ROUTES,
    *usage.ROUTES,
    *finance.ROUTES,
    *health.ROUTES,
    *clock.ROUTES,
    *webhooks.ROUTES,
]

__all__ = ["ROUTES", "authorize"]
