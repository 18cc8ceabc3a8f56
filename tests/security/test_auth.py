"""Who may do what (docs/security.md): admin tokens, per-session secrets, viewer tokens."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from streamserve.core.config import ServerConfig
from tests.conftest import LiveServer
from tests.security.conftest import ADMIN, AUTH
from tests.transport.client import Client
from tests.transport.whip_clients import OBS_OFFER

SDP = {"Content-Type": "application/sdp"}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def ws_start(server: LiveServer, token: str | None = None) -> tuple[Any, dict[str, Any]]:
    """A WebSocket with a started passthrough session, and its `started` message."""
    ws = connect(server.url.replace("http://", "ws://") + "/v1/ws", open_timeout=10)
    ws.send(json.dumps({"type": "hello", "version": 1, **({"token": token} if token else {})}))
    assert json.loads(ws.recv(timeout=5))["type"] == "hello"
    ws.send(json.dumps({"type": "start", "pipeline": "passthrough"}))
    started = json.loads(ws.recv(timeout=5))
    assert started["type"] == "started", started
    return ws, started


@pytest.fixture
def tokened(server_factory: Any) -> LiveServer:
    return server_factory(ServerConfig(pipeline="passthrough", port=0, tokens=(ADMIN,)))  # type: ignore[no-any-return]


def test_anonymous_clients_cannot_list_read_change_or_end_sessions(tokened: LiveServer) -> None:
    ws_a, a = ws_start(tokened, ADMIN)
    ws_b, b = ws_start(tokened, ADMIN)
    try:
        assert len(a["session_secret"]) >= 32 and a["session_secret"] != b["session_secret"]
        with httpx.Client(base_url=tokened.url, timeout=10) as http:
            sid = a["session_id"]
            assert http.get("/v1/sessions").json() == []
            body: dict[str, Any] | None
            for method, body in (("GET", None), ("PATCH", {"mirror": True}), ("DELETE", None)):
                for headers in ({}, bearer("guess"), bearer(b["session_secret"])):
                    reply = http.request(method, f"/v1/sessions/{sid}", headers=headers, json=body)
                    assert reply.status_code == 401, (method, headers, reply.text)
                    assert reply.json()["error"] == "unauthorized"
                    assert reply.headers["www-authenticate"].startswith("Bearer")
            assert "session_secret" not in json.dumps(http.get("/v1/sessions", headers=AUTH).json())
            # Its own secret sees only its own session; the admin token sees both.
            own = http.get("/v1/sessions", headers=bearer(a["session_secret"])).json()
            assert [s["session_id"] for s in own] == [sid]
            assert {s["session_id"] for s in http.get("/v1/sessions", headers=AUTH).json()} == {sid, b["session_id"]}
            patched = http.patch(f"/v1/sessions/{sid}", json={"mirror": True}, headers=bearer(a["session_secret"]))
            assert patched.status_code == 200 and patched.json()["params"] == {"mirror": True}
            assert http.get(f"/v1/sessions/{b['session_id']}", headers=AUTH).status_code == 200
            ended = http.delete(f"/v1/sessions/{sid}", headers=bearer(a["session_secret"]))
            assert ended.status_code == 200 and ended.json()["ended"] is True
            assert len(tokened.manager.list()) == 1
    finally:
        ws_a.close()
        ws_b.close()


def test_opening_sessions_needs_the_token(tokened: LiveServer) -> None:
    with httpx.Client(base_url=tokened.url, timeout=10) as http:
        for headers in ({}, bearer("wrong")):
            refused = http.post("/v1/webrtc/offer", json={"sdp": "v=0", "type": "offer"}, headers=headers)
            assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
            assert http.post("/whip/cam", content=OBS_OFFER, headers={**SDP, **headers}).status_code == 401
    ws = connect(tokened.url.replace("http://", "ws://") + "/v1/ws", open_timeout=10)
    ws.send(json.dumps({"type": "hello", "version": 1}))
    msg = json.loads(ws.recv(timeout=5))
    assert (msg["type"], msg["code"]) == ("error", "unauthorized")
    ws.close()
    assert tokened.manager.list() == []


async def test_webrtc_offer_with_the_token_returns_the_session_secret(tokened: LiveServer) -> None:
    client = Client(tokened.url, token=ADMIN)
    try:
        sid = await client.connect("passthrough")
        async with httpx.AsyncClient(base_url=tokened.url, timeout=10) as http:
            assert (await http.get(f"/v1/sessions/{sid}")).status_code == 401
            mine = await http.get(f"/v1/sessions/{sid}", headers=bearer(client.session_secret))
            assert mine.status_code == 200 and mine.json()["session_id"] == sid
    finally:
        await client.close()


async def test_whip_creator_controls_its_stream_with_the_session_secret(tokened: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=tokened.url, timeout=20) as http:
        created = await http.post("/whip/cam", content=OBS_OFFER, headers={**SDP, **AUTH})
        other = await http.post("/whip/other", content=OBS_OFFER, headers={**SDP, **AUTH})
        assert created.status_code == 201 and other.status_code == 201
        secret = created.headers["streamserve-session-secret"]
        assert "Streamserve-Session-Secret" in created.headers["access-control-expose-headers"]
        location = created.headers["location"]
        # Stream control: the stream's own secret or an admin token; nobody else.
        for headers in ({}, bearer(other.headers["streamserve-session-secret"])):
            assert (await http.patch("/v1/streams/cam", json={"mirror": True}, headers=headers)).status_code == 401
            assert (await http.delete(location, headers=headers)).status_code == 401
        changed = await http.patch("/v1/streams/cam", json={"mirror": True}, headers=bearer(secret))
        assert changed.status_code == 200 and changed.json()["params"] == {"mirror": True}
        assert (await http.patch("/v1/streams/other", json={"mirror": True}, headers=AUTH)).status_code == 200
        # WHIP DELETE on the Location with the session secret (the creator) ends it.
        assert (await http.delete(location, headers=bearer(secret))).status_code == 200
        assert (await http.delete(other.headers["location"], headers=AUTH)).status_code == 200
        await asyncio.sleep(0)
    assert tokened.manager.by_stream("cam") is None


async def test_viewer_token_guards_whep_view_and_stream_stats(server_factory: Any) -> None:
    server = server_factory(ServerConfig(pipeline="passthrough", port=0, tokens=(ADMIN,),
                                         viewer_tokens=("watch-me",)))
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        assert (await http.post("/whip/show", content=OBS_OFFER, headers={**SDP, **AUTH})).status_code == 201
        for path in ("/view/show", "/v1/streams", "/v1/streams/show"):
            assert (await http.get(path)).status_code == 401, path
            assert (await http.get(path, params={"token": "nope"})).status_code == 401, path
            assert (await http.get(path, params={"token": "watch-me"})).status_code == 200, path
            assert (await http.get(path, headers=bearer("watch-me"))).status_code == 200, path
            assert (await http.get(path, headers=AUTH)).status_code == 200, path
        recvonly = OBS_OFFER.replace("a=sendonly", "a=recvonly")
        assert (await http.post("/whep/show", content=recvonly, headers=SDP)).status_code == 401
        watched = await http.post("/whep/show", content=recvonly, headers={**SDP, **bearer("watch-me")})
        assert watched.status_code == 201
        assert (await http.delete(watched.headers["location"])).status_code == 200


def test_open_server_still_guards_each_session_with_its_secret(live_server: LiveServer) -> None:
    """No token configured: anyone may open a session, but only its creator may touch it."""
    ws, started = ws_start(live_server)
    try:
        sid = started["session_id"]
        with httpx.Client(base_url=live_server.url, timeout=10) as http:
            assert http.get("/v1/sessions").json() == []
            assert http.delete(f"/v1/sessions/{sid}").status_code == 401
            assert http.delete(f"/v1/sessions/{sid}", headers=bearer(started["session_secret"])).status_code == 200
    finally:
        ws.close()
