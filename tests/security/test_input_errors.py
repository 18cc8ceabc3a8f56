"""Valid-looking input that used to get a 500: deep JSON, params the pipeline refuses, odd stream names."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from streamserve.core.config import ServerConfig
from streamserve.pipelines import registry
from streamserve.pipelines.passthrough import PassthroughPipeline
from tests.conftest import LiveServer
from tests.security.conftest import ADMIN, AUTH
from tests.transport.whip_clients import OBS_OFFER

SDP = {"Content-Type": "application/sdp"}
DEEP = "[" * 100_000 + "]" * 100_000


def open_session(server: LiveServer, pipeline: str, params: dict[str, Any] | None = None) -> Any:
    fut = asyncio.run_coroutine_threadsafe(server.manager.open(pipeline, params, source="test"), server.manager._loop)
    return fut.result(60)


@dataclasses.dataclass(frozen=True)
class SizedParams:
    width: int = 256
    mirror: bool = False


class SizedPipeline(PassthroughPipeline):
    """Passthrough that, like the video model, only renders multiples of 16 (checked when applied)."""

    name = "sized-test"
    Params = SizedParams  # type: ignore[assignment]

    def update_params(self, session_id: str, params: Any) -> None:
        if params.width % 16:
            raise ValueError(f"width {params.width}: this model renders multiples of 16")
        super().update_params(session_id, params)


@pytest.fixture
def sized() -> Iterator[None]:
    registry.register(SizedPipeline)
    yield
    registry.unregister(SizedPipeline.name)


def test_params_the_pipeline_refuses_get_422_and_are_never_reported(server_factory: Any, sized: None) -> None:
    server: LiveServer = server_factory(ServerConfig(pipeline="passthrough", port=0, tokens=(ADMIN,)))
    session = open_session(server, "sized-test")
    with httpx.Client(base_url=server.url, timeout=10, headers=AUTH) as http:
        refused = http.patch(f"/v1/sessions/{session.id}", json={"width": 500})
        assert refused.status_code == 422, refused.text
        assert refused.json()["field"] == "width" and "multiples of 16" in refused.json()["message"]
        assert http.get(f"/v1/sessions/{session.id}").json()["params"] == {"width": 256, "mirror": False}
        ok = http.patch(f"/v1/sessions/{session.id}", json={"width": 512})
        assert ok.status_code == 200 and ok.json()["params"]["width"] == 512
        assert http.get(f"/v1/sessions/{session.id}").json()["params"]["width"] == 512


@pytest.mark.slow
def test_video_session_width_500_is_refused_before_the_answer(server_factory: Any) -> None:
    server: LiveServer = server_factory(ServerConfig(pipeline="passthrough", port=0, tokens=(ADMIN,)))
    session = open_session(server, "video")
    with httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as http:
        before = http.get(f"/v1/sessions/{session.id}").json()["params"]
        refused = http.patch(f"/v1/sessions/{session.id}", json={"width": 500})
        assert refused.status_code == 422 and refused.json()["field"] == "width", refused.text
        assert "multiples of 16" in refused.json()["message"]
        assert http.get(f"/v1/sessions/{session.id}").json()["params"] == before


def test_deeply_nested_json_is_a_400_naming_the_problem(server_factory: Any) -> None:
    server: LiveServer = server_factory(ServerConfig(pipeline="passthrough", port=0, tokens=(ADMIN,)))
    session = open_session(server, "passthrough")
    with httpx.Client(base_url=server.url, timeout=20, headers=AUTH) as http:
        whip = http.post("/whip/cam", params={"mirror": "[" * 5000 + "]" * 5000}, content=OBS_OFFER, headers=SDP)
        assert whip.status_code == 400 and "nested more than 16 levels" in whip.json()["message"]
        assert http.post("/whip/cam", content=OBS_OFFER, headers=SDP).status_code == 201
        for path in ("/v1/streams/cam", f"/v1/sessions/{session.id}"):
            deep = http.patch(path, content=DEEP, headers={"Content-Type": "application/json"})
            assert deep.status_code == 400, (path, deep.text)
            assert "nested 100000 levels deep; at most 16" in deep.json()["message"]
        ok = http.patch("/v1/streams/cam", json={"mirror": True})
        assert ok.status_code == 200 and ok.json()["params"] == {"mirror": True}


@pytest.mark.parametrize("name", ["a%0aFORGED", "a%0d%0a", "a%20b", "a%2Fb", "x" * 65, "caf%C3%A9"])
def test_stream_names_outside_the_safe_alphabet_are_refused(live_server: LiveServer, name: str) -> None:
    with httpx.Client(base_url=live_server.url, timeout=10) as http:
        for method, path in (("POST", "/whip/"), ("POST", "/whep/"), ("GET", "/view/"), ("GET", "/v1/streams/"),
                             ("PATCH", "/v1/streams/")):
            reply = http.request(method, path + name, content=OBS_OFFER if method == "POST" else b"{}",
                                 headers=SDP if method == "POST" else {"Content-Type": "application/json"})
            if "%2F" in name:  # decoded to a path with one more segment: no such route
                assert reply.status_code in (404, 405), (method, path, reply.status_code)
                continue
            assert reply.status_code == 400, (method, path, reply.status_code)
            assert "A-Z a-z 0-9" in reply.json()["message"]
    assert live_server.manager.list() == []
