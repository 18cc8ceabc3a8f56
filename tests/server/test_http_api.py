"""The HTTP surface other than transports: health, metrics, pipelines, the session API."""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import LiveServer


def open_session(server: LiveServer, params: dict | None = None) -> tuple[str, str]:
    """(id, secret) of a new passthrough session."""
    loop = server.manager._loop
    fut = asyncio.run_coroutine_threadsafe(server.manager.open("passthrough", params, source="test"), loop)
    session = fut.result(10)
    return session.id, session.secret


def test_health_metrics_pipelines(server_factory) -> None:
    server = server_factory(transports=[])
    # timeout: the first /v1/pipelines imports torch and diffusers (seconds on a loaded machine)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        health = http.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        metrics = http.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert "streamserve_step_latency_seconds" in metrics.text
        names = {p["name"]: p for p in http.get("/v1/pipelines").json()}
        assert {"passthrough", "video"} <= set(names)
        assert names["passthrough"]["params"]["mirror"] == {"type": "bool", "default": False}
        assert http.get("/docs").status_code == 200
        assert "/v1/sessions/{session_id}" in http.get("/openapi.json").json()["paths"]


def test_session_api(server_factory) -> None:
    server = server_factory(transports=[])
    sid, secret = open_session(server)
    owner = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=server.url, timeout=10, headers=owner) as http:
        listed = http.get("/v1/sessions").json()
        assert [s["session_id"] for s in listed] == [sid]
        assert http.get(f"/v1/sessions/{sid}").json()["params"] == {"mirror": False}

        ok = http.patch(f"/v1/sessions/{sid}", json={"mirror": True})
        assert ok.status_code == 200 and ok.json()["params"] == {"mirror": True}
        bad = http.patch(f"/v1/sessions/{sid}", json={"mirror": "sideways"})
        assert bad.status_code == 422
        assert bad.json() == {"error": "invalid_params", "field": "mirror",
                              "message": "mirror: expected true or false, got 'sideways'"}
        unknown = http.patch(f"/v1/sessions/{sid}", json={"zoom": 2})
        assert unknown.status_code == 422 and unknown.json()["field"] == "zoom"
        assert http.patch(f"/v1/sessions/{sid}", json=[1, 2]).status_code == 422

        gone = http.delete(f"/v1/sessions/{sid}")
        assert gone.status_code == 200 and gone.json()["ended"] is True
        assert http.get(f"/v1/sessions/{sid}").status_code == 404
        assert http.delete(f"/v1/sessions/{sid}").json() == {"error": "session_not_found",
                                                           "message": f"no session '{sid}'"}
        assert 'streamserve_active_sessions{pipeline="passthrough"} 0.0' in http.get("/metrics").text


def test_a_broken_pipeline_does_not_break_the_list(server_factory) -> None:
    from streamserve.pipelines import registry

    class Broken:
        name = "broken"

        @classmethod
        def describe(cls):  # type: ignore[no-untyped-def]
            raise ImportError("missing dependency: nothing")

    registry.register(Broken)  # type: ignore[arg-type]
    try:
        server = server_factory(transports=[])
        names = [p["name"] for p in httpx.get(f"{server.url}/v1/pipelines", timeout=10).json()]
        assert "broken" not in names and "passthrough" in names
    finally:
        registry.unregister("broken")
