"""The API reference page needs nothing but the service: /schema (and /schema/swagger) is HTML
whose every script, stylesheet and icon is a path of the service, each answered with its
content type. (Rendered in a real browser, offline: tests/api/test_e2e_serve.py.)"""

from __future__ import annotations

import re

import pytest

from tests.api.conftest import Api

pytestmark = pytest.mark.anyio

MEDIA_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


@pytest.mark.parametrize("page", ["/schema", "/schema/swagger"])
async def test_the_page_loads_only_the_services_own_files(api: Api, page: str) -> None:
    r = await api.client.get(page)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    addresses = re.findall(r"<(?:script|link)\b[^>]*\b(?:src|href)=['\"]([^'\"]+)['\"]", r.text)
    assert len(addresses) == 4, addresses  # the bundle, the preset, the stylesheet, the icon
    for address in addresses:
        assert address.startswith("/schema/assets/"), address
        asset = await api.client.get(address)
        assert asset.status_code == 200, address
        suffix = address[address.rindex(".") :]
        assert asset.headers["content-type"].startswith(MEDIA_TYPES[suffix]), address
        assert len(asset.content) > 500, address
    assert "SwaggerUIBundle(" in r.text and '"/v1/debits"' in r.text  # the document, inline
    # ... the same one /schema/openapi.json serves, exact (an exactly-one rule litestar lacks)
    assert "exactly one of `resource_id` and `wallet_id`" in r.text


async def test_only_the_pages_files_are_served(api: Api) -> None:
    r = await api.client.get("/schema/assets/index.html")
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    r = await api.client.get("/schema/assets/..%2F..%2F__init__.py")
    assert r.status_code == 404


async def test_the_document_is_served_beside_the_page(api: Api) -> None:
    document = await api.client.get("/schema/openapi.json")
    assert document.status_code == 200 and "/v1/debits" in document.json()["paths"]
