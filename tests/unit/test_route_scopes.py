"""Every /v1 route declares its scopes once (the app's guard enforces them before the body is
read); only health, metrics and the schema are open."""

from __future__ import annotations

from api.auth import SCOPES
from api.routes import ROUTES


def test_every_v1_route_declares_its_scopes() -> None:
    for handler in ROUTES:
        for path in handler.paths:
            scopes = handler.opt.get("scopes")
            if path.startswith("/v1/"):
                assert scopes and set(scopes) <= SCOPES, (path, scopes)
            else:
                assert path in ("/healthz", "/readyz") and scopes is None, path
