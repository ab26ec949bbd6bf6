"""The API reference at /schema, readable offline.

litestar's pages (Redoc at /schema, Swagger UI, Elements, RapiDoc) load their scripts, styles and
favicon from CDNs: without internet, /schema was a blank page. Here Swagger UI comes from an
installed package (`swagger-ui-bundle-v2`: Swagger UI 5, which reads OpenAPI 3.1) and the service
serves its files itself, under `ASSETS_PATH`; the page embeds the OpenAPI document, so it needs
nothing but the service.

- /schema and /schema/swagger: Swagger UI, every operation with its schemas and examples;
- /schema/assets/<file>: the UI's files (only those the page uses);
- /schema/openapi.json, the document itself, is api.openapi's.
"""

from __future__ import annotations

import functools
from importlib.resources.abc import Traversable
from typing import Any, Final

from litestar import Request, Response, get
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import OpenAPIRenderPlugin, SwaggerRenderPlugin
from litestar.params import FromPath
from swagger_ui_bundle import swagger_ui_path

from api.openapi import exact

SCHEMA_PATH: Final = "/schema"
ASSETS_PATH: Final = f"{SCHEMA_PATH}/assets"
# The files the page loads, and their media types.
ASSETS: Final = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
_FILES: Final[Traversable] = swagger_ui_path
# The files change only with the package: a browser may keep them for an hour.
_CACHE = CacheControlHeader(public=True, max_age=3600)


class ExactSwaggerRenderPlugin(SwaggerRenderPlugin):
    """Swagger UI showing the document /schema/openapi.json serves (`api.openapi.refine`d)."""

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, exact(self, request, openapi_schema))


def render_plugins() -> list[OpenAPIRenderPlugin]:
    """The pages under `SCHEMA_PATH`, beside the document's own."""
    return [
        ExactSwaggerRenderPlugin(
            js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            css_url=f"{ASSETS_PATH}/swagger-ui.css",
            standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
            favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
            path=["/", "/swagger"],
        ),
    ]


@functools.cache
def _read(name: str) -> bytes:
    return (_FILES / name).read_bytes()


@get(
    f"{ASSETS_PATH}/{{name:str}}",
    include_in_schema=False,
    cache_control=_CACHE,
    sync_to_thread=False,
)
def asset(name: FromPath[str]) -> Response[bytes]:
    """A file of Swagger UI, read from the installed package once."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFoundException(f"no asset {name!r}")
    return Response(_read(name), media_type=media_type)
