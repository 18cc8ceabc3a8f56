"""Data parallel: one engine per device, sessions placed by headroom, their work stays on their engine."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from streamserve.cli import build_parser, config_from_args
from streamserve.core import MediaKind, SessionLimitReached, VideoFrame
from streamserve.core.clock import SYSTEM_CLOCK
from streamserve.core.config import ServerConfig, SessionConfig
from streamserve.devices import engine_names
from streamserve.manager import SessionManager
from streamserve.schedulers.placement import EngineLoad, FewestSessions, choose
from tests.conftest import LiveServer


def frame(i: int) -> VideoFrame:
    now = SYSTEM_CLOCK.now()
    return VideoFrame(np.full((8, 8, 3), i, np.uint8), i * 3000, now, now + 30.0)  # never expires under load


@pytest.fixture
async def manager():
    m = SessionManager(ServerConfig(pipeline="passthrough", devices=("cpu", "cpu"), max_sessions=4,
                                    session=SessionConfig(inbox_size=64, outbox_size=64)))
    await m.start(warm=False)
    yield m
    await m.stop()


def test_engine_names_and_config() -> None:
    assert engine_names(["cpu", "cpu"]) == ["cpu:0", "cpu:1"]
    assert engine_names(["cuda:0", "cuda:1"]) == ["cuda:0", "cuda:1"]
    assert engine_names(["cuda:0", "cuda:0"]) == ["cuda:0#0", "cuda:0#1"]
    args = build_parser().parse_args(["serve", "--devices", "cpu,cpu", "--pipeline", "passthrough"])
    assert config_from_args(args).devices == ("cpu", "cpu")
    with pytest.raises(SystemExit, match="empty entry"):
        config_from_args(build_parser().parse_args(["serve", "--devices", "cpu,,cpu"]))
    with pytest.raises(SystemExit, match="device must be cpu, cuda or cuda:N, got 'tpu'"):
        config_from_args(build_parser().parse_args(["serve", "--devices", "cpu,tpu"]))


def test_placement_picks_most_headroom() -> None:
    loads = [EngineLoad(0, "cuda:0", 3, 4), EngineLoad(1, "cuda:1", 1, 4), EngineLoad(2, "cuda:2", 1, 4)]
    assert choose(FewestSessions(), loads).index == 1  # type: ignore[union-attr]  # tie -> lowest index
    draining = [EngineLoad(0, "a", 0, 4, draining=True), EngineLoad(1, "b", 2, 4)]
    assert choose(FewestSessions(), draining).index == 1  # type: ignore[union-attr]
    assert choose(FewestSessions(), [EngineLoad(0, "a", 4, 4)]) is None

    class FreeKV:  # a cost model plugs in behind the same protocol
        def headroom(self, engine: EngineLoad) -> float:
            return float(engine.kv_free_bytes or 0)

    kv = [EngineLoad(0, "a", 0, 4, kv_free_bytes=10), EngineLoad(1, "b", 3, 4, kv_free_bytes=99)]
    assert choose(FreeKV(), kv).index == 1  # type: ignore[union-attr]


async def test_sessions_spread_over_devices_and_run_there(manager: SessionManager) -> None:
    sessions = [await manager.open(None, {"mirror": i % 2 == 0}, source="test") for i in range(4)]
    assert [s.device for s in sessions] == ["cpu:0", "cpu:1", "cpu:0", "cpu:1"]
    assert [s.stats()["device"] for s in sessions] == ["cpu:0", "cpu:1", "cpu:0", "cpu:1"]
    with pytest.raises(SessionLimitReached):
        await manager.open(None, None, source="test")
    subs = [s.subscribe(MediaKind.VIDEO) for s in sessions]
    for s in sessions:
        for i in range(10):
            s.push(frame(i))
    for sub in subs:
        got = [await asyncio.wait_for(sub.get(), 5) for _ in range(10)]
        assert [g.pts for g in got] == [i * 3000 for i in range(10)]  # type: ignore[union-attr]
    # Each session's pipeline state lives on its own engine: the other engine never saw it.
    e0, e1 = manager.devices.engines
    pipe0 = await asyncio.wrap_future(e0.call(lambda: e0.pipeline("passthrough")))
    pipe1 = await asyncio.wrap_future(e1.call(lambda: e1.pipeline("passthrough")))
    assert set(pipe0._params) == {sessions[0].id, sessions[2].id}  # type: ignore[attr-defined]
    assert set(pipe1._params) == {sessions[1].id, sessions[3].id}  # type: ignore[attr-defined]
    assert e0.steps > 0 and e1.steps > 0
    # A live update reaches the right engine.
    await sessions[1].update({"mirror": True})
    await asyncio.wrap_future(e1.call(lambda: None))  # the update ran before this call
    assert pipe1._params[sessions[1].id].mirror is True  # type: ignore[attr-defined]
    # Ending a session frees its device: the next one goes there.
    await manager.close(sessions[2].id, "test")
    assert sessions[2].id not in pipe0._params  # type: ignore[attr-defined]
    nxt = await manager.open(None, None, source="test")
    assert nxt.device == "cpu:0"
    text = manager.metrics.render().decode()
    assert 'streamserve_device_sessions{device="cpu:0"} 2.0' in text
    assert 'streamserve_device_sessions{device="cpu:1"} 2.0' in text
    assert 'streamserve_device_steps_total{device="cpu:1"}' in text


async def test_a_failing_open_does_not_leak_a_slot(manager: SessionManager) -> None:
    from streamserve.core import InvalidParams

    with pytest.raises(InvalidParams):
        await manager.open(None, {"mirror": 3}, source="test")
    assert [ld.sessions for ld in manager.devices.loads()] == [0, 0]


def test_http_shows_devices(server_factory) -> None:
    server: LiveServer = server_factory(ServerConfig(pipeline="passthrough", devices=("cpu", "cpu")),
                                        transports=[])
    loop = server.manager._loop
    opened = [asyncio.run_coroutine_threadsafe(server.manager.open("passthrough", None, source="test"),
                                               loop).result(10) for _ in range(3)]
    with httpx.Client(base_url=server.url, timeout=10) as http:
        health = http.get("/healthz").json()
        assert health["status"] == "ok" and health["devices"] == ["cpu:0", "cpu:1"]
        # Each session's stats (read with its own secret) name its device.
        devices = [http.get(f"/v1/sessions/{s.id}", headers={"Authorization": f"Bearer {s.secret}"}).json()["device"]
                   for s in opened]
        assert sorted(devices) == ["cpu:0", "cpu:0", "cpu:1"]
        text = http.get("/metrics").text
        assert 'streamserve_device_sessions{device="cpu:0"} 2.0' in text
        assert 'streamserve_device_sessions{device="cpu:1"} 1.0' in text
