"""The server describes itself truthfully: `/openapi.json` validates and describes every mounted
route; each WHIP/WHEP status it documents is produced by a request below (and nothing else is);
`/asyncapi.json` is well formed and real WebSocket messages match its payload schemas."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import jsonschema
import pytest
import websockets
from openapi_spec_validator import validate
from starlette.routing import Mount, WebSocketRoute

from streamserve.api_docs import mounted_routes
from streamserve.core.config import ServerConfig
from streamserve.core.ports import SessionFactory
from streamserve.server import default_transports
from streamserve.transport import wsproto as wp
from streamserve.transport.sdp import MAX_SDP_BYTES
from streamserve.transport.whip import WhipTransport
from tests.conftest import LiveServer
from tests.transport.whip_clients import ObsLikePublisher, WhepViewer

TOKEN = "docs-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FASTAPI_OWN = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}  # the documentation itself


@pytest.fixture
def server(server_factory: Callable[..., LiveServer]) -> LiveServer:
    """Every built-in transport; the WHIP one is kept as `server.whip` (its viewer limit is lowered)."""
    transports = default_transports()
    whip_at = next(i for i, make in enumerate(transports) if make is WhipTransport)
    built: list[WhipTransport] = []

    def make_whip(sessions: SessionFactory, config: ServerConfig) -> WhipTransport:
        built.append(WhipTransport(sessions, config))
        return built[-1]

    transports[whip_at] = make_whip
    live = server_factory(ServerConfig(pipeline="passthrough", port=0, tokens=(TOKEN,), max_sessions=2),
                          transports=transports)
    live.whip = built[0]  # type: ignore[attr-defined]
    return live


async def test_openapi_validates_and_describes_every_mounted_route(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        schema = (await http.get("/openapi.json")).json()
    validate(schema)  # OpenAPI 3.1 meta-schema and references
    paths = schema["paths"]
    for route in mounted_routes(server.app):
        path = getattr(route, "path", "")
        if isinstance(route, Mount) or path in FASTAPI_OWN:
            continue
        methods = {"get"} if isinstance(route, WebSocketRoute) else \
            {m.lower() for m in getattr(route, "methods", set())} - {"head"}
        assert path in paths, f"{path} is mounted but not described"
        assert methods <= set(paths[path]), f"{path}: {methods - set(paths[path])} not described"
    whip = paths["/whip/{stream}"]["post"]
    assert set(whip["requestBody"]["content"]) == {"application/sdp"}
    assert set(whip["responses"]["201"]["content"]) == {"application/sdp"}
    assert {"Location", "ETag", "Link", "Accept-Patch"} <= set(whip["responses"]["201"]["headers"])
    assert whip["security"] == [{"bearer": []}]
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    patch = paths["/whip/{stream}/{resource}"]["patch"]
    assert set(patch["requestBody"]["content"]) == {"application/trickle-ice-sdpfrag"}
    assert "204" in patch["responses"] and "200" not in patch["responses"]
    assert paths["/v1/ws"]["get"]["x-asyncapi"] == "/asyncapi.json"


def documented_statuses(schema: dict[str, Any]) -> set[tuple[str, str, int]]:
    return {(method.upper(), path, int(status))
            for path, methods in schema["paths"].items() if path.startswith(("/whip/", "/whep/"))
            for method, operation in methods.items() for status in operation["responses"]}


async def test_every_documented_whip_whep_status_is_produced(server: LiveServer) -> None:
    produced: set[tuple[str, str, int]] = set()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        schema = (await http.get("/openapi.json")).json()

        async def call(method: str, template: str, url: str, expect: int, **kwargs: Any) -> httpx.Response:
            reply = await http.request(method, url, **kwargs)
            assert reply.status_code == expect, f"{method} {url}: {reply.status_code} {reply.text[:300]}"
            if expect >= 400 and expect != 405:  # 405 is documented with an `Allow` header, no body
                assert reply.json()["error"] and reply.json()["message"]
            produced.add((method, template, expect))
            return reply

        endpoint, resource = "/{kind}/{{stream}}", "/{kind}/{{stream}}/{{resource}}"
        wp_, wr = endpoint.format(kind="whip"), resource.format(kind="whip")
        ep, er = endpoint.format(kind="whep"), resource.format(kind="whep")
        publisher, other = ObsLikePublisher(server.url), ObsLikePublisher(server.url)
        offer = await publisher.offer()
        sdp = {"Content-Type": "application/sdp"}
        frag = {"Content-Type": "application/trickle-ice-sdpfrag"}
        try:
            # --- WHIP endpoint
            await call("POST", wp_, "/whip/a", 401, content=offer, headers=sdp)
            await call("POST", wp_, "/whip/a", 415, content=offer, headers={**AUTH, "Content-Type": "text/plain"})
            await call("POST", wp_, "/whip/a", 413, content="v" * (MAX_SDP_BYTES + 1), headers={**AUTH, **sdp})
            await call("POST", wp_, "/whip/a", 400, content="v=0\r\nnonsense", headers={**AUTH, **sdp})
            await call("POST", wp_, "/whip/a?no_such_param=1", 422, content=offer, headers={**AUTH, **sdp})
            created = await publisher.publish(http, "/whip/a", TOKEN)
            assert created.status_code == 201
            produced.add(("POST", wp_, 201))
            location = created.headers["location"]
            await call("POST", wp_, "/whip/a", 409, content=await other.offer(), headers={**AUTH, **sdp})
            assert (await other.publish(http, "/whip/b", TOKEN)).status_code == 201
            await call("POST", wp_, "/whip/c", 503, content=offer, headers={**AUTH, **sdp})
            await call("OPTIONS", wp_, "/whip/a", 204)
            # --- WHIP resource
            await call("OPTIONS", wr, location, 204)
            for method in ("GET", "POST", "PUT"):
                await call(method, wr, location, 405)
            await call("PATCH", wr, location, 401, content="a=end-of-candidates", headers=frag)
            await call("PATCH", wr, location, 415, content="x", headers={**AUTH, "Content-Type": "text/plain"})
            await call("PATCH", wr, location, 412, content="a=end-of-candidates",
                       headers={**AUTH, **frag, "If-Match": '"not-the-etag"'})
            await call("PATCH", wr, location, 400, content="a=candidate:garbage", headers={**AUTH, **frag})
            await call("PATCH", wr, location, 422, content="a=ice-ufrag:restart\r\na=ice-pwd:anotherpassword",
                       headers={**AUTH, **frag})
            await call("PATCH", wr, location, 204, content="a=end-of-candidates", headers={**AUTH, **frag})
            await call("PATCH", wr, "/whip/a/nope", 404, content="a=end-of-candidates", headers={**AUTH, **frag})
            # --- WHEP
            viewer = WhepViewer()
            watch_offer = (await viewer.pc.createOffer()).sdp
            await call("POST", ep, "/whep/a", 415, content=watch_offer, headers={"Content-Type": "text/plain"})
            await call("POST", ep, "/whep/a", 413, content="v" * (MAX_SDP_BYTES + 1), headers=sdp)
            await call("POST", ep, "/whep/a", 400, content="v=0\r\nnonsense", headers=sdp)
            await call("POST", ep, "/whep/nobody", 404, content=watch_offer, headers=sdp)
            await call("OPTIONS", ep, "/whep/a", 204)
            watched = await viewer.watch(http, "/whep/a")
            assert watched.status_code == 201
            produced.add(("POST", ep, 201))
            viewer_location = watched.headers["location"]
            server.whip.whep.max_viewers = 1  # type: ignore[attr-defined]
            await call("POST", ep, "/whep/a", 503, content=(await WhepViewer().pc.createOffer()).sdp, headers=sdp)
            await call("OPTIONS", er, viewer_location, 204)
            await call("PATCH", er, viewer_location, 415, content="x", headers={"Content-Type": "text/plain"})
            await call("PATCH", er, viewer_location, 412, content="a=end-of-candidates",
                       headers={**frag, "If-Match": '"not-the-etag"'})
            await call("PATCH", er, viewer_location, 400, content="a=candidate:garbage", headers=frag)
            await call("PATCH", er, viewer_location, 422, content="a=ice-ufrag:restart\r\na=ice-pwd:anotherpasswd",
                       headers=frag)
            await call("PATCH", er, viewer_location, 204, content="a=end-of-candidates", headers=frag)
            await call("PATCH", er, "/whep/a/nope", 404, content="a=end-of-candidates", headers=frag)
            await call("DELETE", er, viewer_location, 200)
            await call("DELETE", er, "/whep/a/nope", 404)
            await viewer.close()
            # --- ending a WHIP session
            await call("DELETE", wr, location, 401)
            await call("DELETE", wr, "/whip/a/nope", 404, headers=AUTH)
            await call("DELETE", wr, location, 200, headers=AUTH)
        finally:
            await publisher.close()
            await other.close()
    assert produced == documented_statuses(schema)


def check_refs(node: Any, root: dict[str, Any]) -> int:
    """Every local `$ref` in `node` resolves in `root`; the number of references."""
    count = 0
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            target: Any = root
            for part in ref.removeprefix("#/").split("/"):
                assert part in target, f"unresolved $ref {ref}"
                target = target[part]
            count += 1
        for value in node.values():
            count += check_refs(value, root)
    elif isinstance(node, list):
        for value in node:
            count += check_refs(value, root)
    return count


async def test_asyncapi_document_matches_the_real_websocket_messages(server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        doc = (await http.get("/asyncapi.json")).json()
        openapi = (await http.get("/openapi.json")).json()
    assert "/asyncapi.json" in openapi["paths"]
    # Structure (no AsyncAPI validator ships on PyPI here): version, channel, resolvable references,
    # and every payload is itself a valid JSON Schema.
    assert doc["asyncapi"] == "2.6.0" and doc["info"]["title"] and doc["info"]["version"]
    channel = doc["channels"]["/v1/ws"]
    assert channel["x-subprotocol"] == wp.SUBPROTOCOL
    assert check_refs(doc, doc) == len(wp.CLIENT_TYPES) + len(wp.SERVER_TYPES) + 2
    messages = doc["components"]["messages"]
    for message in messages.values():
        jsonschema.Draft202012Validator.check_schema(message["payload"])
    assert {n.removeprefix("client_") for n in messages if n.startswith("client_")} == wp.CLIENT_TYPES | {"media"}
    assert {n.removeprefix("server_") for n in messages if n.startswith("server_")} == wp.SERVER_TYPES | {"media"}
    assert messages["server_media"]["x-header"]["size"] == wp.HEADER_SIZE == 36

    def check(message: dict[str, Any], side: str = "server") -> None:
        schema = messages[f"{side}_{message['type']}"]["payload"]
        jsonschema.validate(message, schema)

    # A real conversation: each server message validates against its documented payload.
    url = server.url.replace("http", "ws") + "/v1/ws"
    sent: list[dict[str, Any]] = [{"type": "hello", "version": 1, "token": TOKEN},
            {"type": "start", "pipeline": "passthrough", "output": {"video": "rgb24", "kinds": ["video"]}},
            {"type": "update", "params": {"no_such": 1}, "id": 7},
            {"type": "stats", "id": "s"}]
    for message in sent:
        check(message, "client")
    async with websockets.connect(url, subprotocols=[websockets.Subprotocol(wp.SUBPROTOCOL)]) as ws:
        await ws.send(json.dumps(sent[0]))
        check(json.loads(await ws.recv()))
        await ws.send(json.dumps(sent[1]))
        check(json.loads(await ws.recv()))
        await ws.send(json.dumps(sent[2]))
        error = json.loads(await ws.recv())
        assert error["code"] == "invalid_params" and error["id"] == 7
        check(error)
        await ws.send(json.dumps(sent[3]))
        stats = json.loads(await ws.recv())
        check(stats)
        await ws.send(json.dumps({"type": "end"}))
        ended = json.loads(await asyncio.wait_for(ws.recv(), 10))
        check(ended)
