"""The OpenAPI description of WHIP/WHEP (RFC 9725 and the WHEP draft), as the routes really behave.

FastAPI derives a JSON operation from each handler's signature; WHIP and WHEP speak SDP, answer
`201` with headers, `204` to trickle, and typed JSON errors. `describe(schema)` replaces those
operations in a generated schema with the truth, from the same constants the handlers use.
"""

from __future__ import annotations

from typing import Any

from streamserve.transport.whip_http import ENDED_GRACE_S, ENDPOINT_METHODS, RESOURCE_METHODS, SDP, TRICKLE

ERROR_REF = {"$ref": "#/components/schemas/Error"}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "machine-readable code, e.g. `unauthorized`"},
        "message": {"type": "string", "description": "what was wrong, for a person"},
        "field": {"type": "string", "description": "the offending parameter (`invalid_params`)"},
        "available": {"type": "array", "items": {"type": "string"},
                      "description": "registered pipelines (`unknown_pipeline`)"},
    },
}
BEARER_SCHEME = {"type": "http", "scheme": "bearer",
                 "description": "a token given to `streamserve serve --token` (no tokens: open server)"}

_STREAM = {"name": "stream", "in": "path", "required": True, "schema": {"type": "string"},
           "description": "the stream name (one live WHIP session per name)"}
_RESOURCE = {"name": "resource", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "the id in the `Location` of the `201`"}
_QUERY = {"name": "pipeline", "in": "query", "required": False, "schema": {"type": "string"},
          "description": "pipeline for the session (`GET /v1/pipelines`); any other query parameter "
                         "is a pipeline parameter, JSON-decoded when it parses (`?steps=2&prompt=fox`)"}


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


_CORS = {"Access-Control-Allow-Origin": _header("`*`"),
         "Access-Control-Expose-Headers": _header("the headers a cross-origin script may read")}


def _error(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "headers": {**_CORS, **headers},
            "content": {"application/json": {"schema": ERROR_REF}}}


def _created(what: str) -> dict[str, Any]:
    return {
        "description": f"{what}: the SDP answer, its ICE candidates included",
        "headers": {
            **_CORS,
            "Location": _header("the resource URL (`PATCH` to trickle, `DELETE` to end)"),
            "ETag": _header("the ICE session tag, for `If-Match` on `PATCH`"),
            "Accept-Patch": _header(f"`{TRICKLE}`"),
            "Link": _header('one per configured ICE server: `<turn:host:3478>; rel="ice-server"`, with '
                            '`username` and `credential` attributes for TURN (RFC 9725 section 4.6)'),
        },
        "content": {SDP: {"schema": {"type": "string"}}},
    }


_SDP_BODY = {"required": True, "content": {SDP: {"schema": {"type": "string"}}},
             "description": "an SDP offer"}
_FRAG_BODY = {"required": True, "content": {TRICKLE: {"schema": {"type": "string"}}},
              "description": "trickled ICE candidates (RFC 8840 SDP fragment)"}
_UNAUTHORIZED = _error("missing or wrong bearer token", **{"WWW-Authenticate": _header('`Bearer realm="streamserve"`')})
_TOO_LARGE = _error("the SDP is larger than the server accepts")
_UNSUPPORTED = _error(f"the body is not `{SDP}`")


def _options(allow: str, *, endpoint: bool) -> dict[str, Any]:
    headers = {**_CORS, "Allow": _header(f"`{allow}`"),
               "Access-Control-Max-Age": _header("how long a browser may cache this preflight")}
    if endpoint:
        headers["Accept-Post"] = _header(f"`{SDP}`")
        headers["Link"] = _header("the ICE servers, as on the `201`")
    else:
        headers["Accept-Patch"] = _header(f"`{TRICKLE}`")
    return {"summary": "CORS preflight and discovery", "tags": ["whip/whep"],
            "parameters": [_STREAM] + ([] if endpoint else [_RESOURCE]),
            "responses": {"204": {"description": "the allowed methods and accepted types", "headers": headers}}}


def operations() -> dict[str, dict[str, dict[str, Any]]]:
    """path -> method -> operation, for every WHIP/WHEP route."""
    whip_post = {
        "summary": "WHIP ingest: SDP offer in, SDP answer out (RFC 9725)", "tags": ["whip/whep"],
        "operationId": "whip_publish", "security": BEARER, "parameters": [_STREAM, _QUERY],
        "requestBody": _SDP_BODY,
        "responses": {
            "201": _created("a new session named `stream`"),
            "400": _error("malformed or unusable SDP, no media sent, or an unknown pipeline"),
            "401": _UNAUTHORIZED,
            "409": _error("a session with this stream name is live"),
            "413": _TOO_LARGE,
            "415": _UNSUPPORTED,
            "422": _error("a pipeline parameter is unknown, of the wrong type or out of range"),
            "503": _error("the server is at its session limit"),
        },
    }
    whep_post = {
        "summary": "WHEP egress: one more viewer of the stream's processed output", "tags": ["whip/whep"],
        "operationId": "whep_watch", "security": [], "parameters": [_STREAM], "requestBody": _SDP_BODY,
        "responses": {
            "201": _created("a new viewer"),
            "400": _error("malformed or unusable SDP, or nothing received"),
            "404": _error("the stream is not live"),
            "413": _TOO_LARGE,
            "415": _UNSUPPORTED,
            "503": _error("the stream has its maximum of viewers"),
        },
    }

    def delete(kind: str) -> dict[str, Any]:
        return {
            "summary": f"End a {kind.upper()} {'session' if kind == 'whip' else 'viewer'}", "tags": ["whip/whep"],
            "operationId": f"{kind}_end", "security": BEARER if kind == "whip" else [],
            "parameters": [_STREAM, _RESOURCE],
            "responses": {
                "200": {"description": f"ended (also for a resource that ended within {ENDED_GRACE_S:g} s "
                                       "because the client closed its peer first)", "headers": _CORS},
                **({"401": _UNAUTHORIZED} if kind == "whip" else {}),
                "404": _error("no such resource under this stream"),
            },
        }

    def patch(kind: str) -> dict[str, Any]:
        return {
            "summary": "Trickle ICE candidates", "tags": ["whip/whep"], "operationId": f"{kind}_trickle",
            "security": BEARER if kind == "whip" else [], "parameters": [
                _STREAM, _RESOURCE,
                {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
                 "description": "the `ETag` of the `201`, or `*`"}],
            "requestBody": _FRAG_BODY,
            "responses": {
                "204": {"description": "candidates added", "headers": {**_CORS, "ETag": _header("unchanged")}},
                "400": _error("a malformed candidate line"),
                **({"401": _UNAUTHORIZED} if kind == "whip" else {}),
                "404": _error("no such resource under this stream"),
                "412": _error("`If-Match` does not match the resource's `ETag`"),
                "415": _error(f"the body is not `{TRICKLE}`", **{"Accept-Patch": _header(f"`{TRICKLE}`")}),
                "422": _error("an ICE restart (new ufrag): not supported, start a new session"),
            },
        }

    not_allowed = {"405": {"description": "only PATCH, DELETE and OPTIONS apply to a resource",
                           "headers": {**_CORS, "Allow": _header(f"`{RESOURCE_METHODS}`")}}}
    resource_other = {method: {"summary": "Not allowed on a resource", "tags": ["whip/whep"],
                               "operationId": f"whip_resource_{method}", "parameters": [_STREAM, _RESOURCE],
                               "responses": not_allowed} for method in ("get", "post", "put")}
    return {
        "/whip/{stream}": {"post": whip_post, "options": _options(ENDPOINT_METHODS, endpoint=True)},
        "/whep/{stream}": {"post": whep_post, "options": _options(ENDPOINT_METHODS, endpoint=True)},
        "/whip/{stream}/{resource}": {"delete": delete("whip"), "patch": patch("whip"),
                                      "options": _options(RESOURCE_METHODS, endpoint=False), **resource_other},
        "/whep/{stream}/{resource}": {"delete": delete("whep"), "patch": patch("whep"),
                                      "options": _options(RESOURCE_METHODS, endpoint=False)},
    }


def describe(schema: dict[str, Any]) -> None:
    """Replace the generated WHIP/WHEP operations in `schema` (an OpenAPI 3.1 dict) by the real ones."""
    for path, methods in operations().items():
        schema.setdefault("paths", {}).setdefault(path, {}).update(methods)
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    components.setdefault("securitySchemes", {})["bearer"] = BEARER_SCHEME
