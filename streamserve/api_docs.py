"""The server's self-description: `/openapi.json` as the routes really behave, and `/asyncapi.json`.

FastAPI generates an operation per JSON route from the handler signatures. This module (called once
by `server.create_app`) completes that document with what a signature cannot say: WHIP/WHEP's SDP
bodies, headers and statuses (`transport/whip_openapi.py`), the WebSocket upgrade `GET /v1/ws`
(whose messages are the AsyncAPI document, `transport/ws_asyncapi.py`), the pages, the bearer
security scheme, and the 404 of the session routes.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.routing import BaseRoute, WebSocketRoute

import streamserve
from streamserve.transport import whip_openapi, ws_asyncapi

ERROR = {"content": {"application/json": {"schema": whip_openapi.ERROR_REF}}}
_HTML = {"content": {"text/html": {"schema": {"type": "string"}}}}
PAGES: dict[str, dict[str, Any]] = {  # routes left out of FastAPI's schema, described here
    "/": {"get": {"summary": "The demo page", "tags": ["pages"], "operationId": "demo_page",
                  "responses": {"200": {"description": "HTML", **_HTML}}}},
    "/view": {"get": {"summary": "`/view?stream=NAME` redirects to `/view/NAME`", "tags": ["pages"],
                      "operationId": "view_form",
                      "parameters": [{"name": "stream", "in": "query", "schema": {"type": "string"}}],
                      "responses": {"303": {"description": "to `/view/{stream}`",
                                            "headers": {"Location": {"schema": {"type": "string"}}}},
                                    "400": {"description": "no stream named", **ERROR}}}},
}


def mounted_routes(app: FastAPI) -> list[BaseRoute]:
    """Every route of `app`, routers included with `include_router` flattened (FastAPI >= 0.1xx keeps
    them as one entry holding the original router)."""
    found: list[BaseRoute] = []

    def walk(routes: list[BaseRoute]) -> None:
        for route in routes:
            inner = getattr(route, "original_router", None)
            if inner is not None:
                walk(list(inner.routes))
            else:
                found.append(route)

    walk(list(app.routes))
    return found


def _mounted(app: FastAPI, path: str) -> bool:
    return any(getattr(route, "path", None) == path for route in mounted_routes(app))


def build_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    paths: dict[str, Any] = schema.setdefault("paths", {})
    if _mounted(app, "/whip/{stream}"):
        whip_openapi.describe(schema)
    else:  # the shared pieces still apply to the session routes
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {})["Error"] = whip_openapi.ERROR_SCHEMA
        components.setdefault("securitySchemes", {})["bearer"] = whip_openapi.BEARER_SCHEME
    if any(isinstance(r, WebSocketRoute) and r.path == "/v1/ws" for r in mounted_routes(app)):
        paths["/v1/ws"] = {"get": ws_asyncapi.openapi_operation()}
    for path, methods in PAGES.items():
        if _mounted(app, path):
            paths.setdefault(path, {}).update(methods)
    for path, methods in paths.items():
        if "{session_id}" in path:
            for operation in methods.values():
                operation["responses"].setdefault("404", {"description": "no such session", **ERROR})
    return schema


def install(app: FastAPI) -> None:
    """Serve the completed `/openapi.json` and `/asyncapi.json` for `app`."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override

    async def asyncapi() -> JSONResponse:
        return JSONResponse(ws_asyncapi.asyncapi_document(streamserve.__version__))

    app.add_api_route("/asyncapi.json", asyncapi, methods=["GET"], tags=["ops"],
                      summary="The WebSocket API as an AsyncAPI 2.6 document")
