"""Free KV memory: measured from the live sessions' cache tensors, reported per device and per node,
and placement skips a device (or node) whose free KV memory cannot hold a new session's cache."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import pytest

from streamserve.cluster.director import Director
from streamserve.core import OverCapacity
from streamserve.core.config import ServerConfig
from streamserve.manager import SessionManager
from streamserve.pipelines.video import VideoDiffusionPipeline
from streamserve.pipelines.video.params import VideoParams
from streamserve.schedulers.placement import EngineLoad

MIB = 2**20


def slot_bytes(pipe: VideoDiffusionPipeline) -> dict[str, int]:
    """Per session: the bytes of its K and V slot rows in every pool tensor (independent of the views)."""
    out: dict[str, int] = {}
    for pool in pipe._pools.values():
        for view in pool.live_views():
            row_k = pool._k[:, view.slot]  # [layers, H, cap, D]
            row_v = pool._v[:, view.slot]
            sid = view.session_id if isinstance(view.session_id, str) else view.session_id[0]
            out[sid] = out.get(sid, 0) + row_k.numel() * row_k.element_size() + row_v.numel() * row_v.element_size()
    return out


def test_held_bytes_equal_the_cache_tensors(tiny_pp_dir: Path) -> None:
    pipe = VideoDiffusionPipeline("cpu", str(tiny_pp_dir))
    assert pipe.kv_held_bytes() == 0
    small, big = VideoParams(width=64, height=64), VideoParams(width=128, height=64, steps=2)
    pipe.open_session("a", small)
    pipe.open_session("b", big)
    rows = slot_bytes(pipe)
    assert rows["a"] == pipe.kv_bytes_for(small) > 0
    assert rows["b"] == pipe.kv_bytes_for(big)
    assert pipe.kv_bytes_for(big) == pipe.kv_bytes_for(small) * 2 * 4 // 3  # 2x tokens, 4 of 3 blocks
    assert pipe.kv_held_bytes() == rows["a"] + rows["b"]
    pipe.close_session("a")
    assert pipe.kv_held_bytes() == rows["b"]
    pipe.close_session("b")
    assert pipe.kv_held_bytes() == 0


async def test_a_device_without_kv_room_is_skipped(tiny_pp_dir: Path) -> None:
    probe = VideoDiffusionPipeline("cpu", str(tiny_pp_dir))
    need = probe.kv_bytes_for(VideoParams(width=64, height=64))
    budget = need * 3 // 2  # one session's cache fits per device, not two
    manager = SessionManager(ServerConfig(pipeline="video", model=str(tiny_pp_dir), devices=("cpu", "cpu"),
                                          scheduler="fifo", kv_budget_mb=budget / MIB, max_sessions=8))
    await manager.start(warm=False)
    try:
        for e in manager.devices.engines:  # load the pipeline so it can tell a session's bytes
            await asyncio.wrap_future(e.call(functools.partial(e.pipeline, "video")))
        assert [ld.kv_free_bytes for ld in manager.devices.loads("video")] == [budget, budget]
        a = await manager.open("video", {"width": 64, "height": 64}, source="test")
        b = await manager.open("video", {"width": 64, "height": 64}, source="test")
        assert (a.device, b.device) == ("cpu:0", "cpu:1")
        assert [ld.kv_free_bytes for ld in manager.devices.loads("video")] == [budget - need, budget - need]
        with pytest.raises(OverCapacity, match="KV memory") as refused:  # free slots, no KV room
            await manager.open("video", {"width": 64, "height": 64}, source="test")
        assert refused.value.limit == "kv_memory"
        await manager.close(a.id, "test")
        c = await manager.open("video", {"width": 64, "height": 64}, source="test")
        assert c.device == "cpu:0"  # the device whose KV came back (cpu:1 still holds b's)
        # A bigger session than any device can hold is refused even on an empty device.
        await manager.close(c.id, "test")
        with pytest.raises(OverCapacity, match="KV memory"):
            await manager.open("video", {"width": 128, "height": 128}, source="test")
    finally:
        await manager.stop()


class FixedLoads(Director):
    """The director's placement over given node reports (the Ray round trip is tested in tests/cluster)."""

    def __init__(self, reports: list[dict[str, Any]]) -> None:
        super().__init__()
        self.reports = reports

    def loads(self) -> list[dict[str, Any]]:
        return self.reports


def node(node_id: str, sessions: int, kv_free: int | None, kv_need: int | None) -> dict[str, Any]:
    return {"node_id": node_id, "url": f"http://{node_id}", "sessions": sessions, "max_sessions": 4,
            "draining": False, "more_sessions": None, "free_utilization": None,
            "kv_free_bytes": kv_free, "kv_session_bytes": kv_need}


def test_the_director_skips_a_node_without_kv_room() -> None:
    # node a has the fewest sessions but cannot hold a session's cache: b is chosen
    d = FixedLoads([node("a", 0, 10 * MIB, 12 * MIB), node("b", 3, 40 * MIB, 12 * MIB)])
    assert d.place()["node_id"] == "b"  # type: ignore[index]
    d.reports[1]["kv_free_bytes"] = 11 * MIB
    assert d.place() is None  # nowhere to put it
    d.reports[0]["kv_free_bytes"] = None  # a node that does not report is not excluded
    assert d.place()["node_id"] == "a"  # type: ignore[index]
    assert EngineLoad(0, "a", 0, 4, kv_free_bytes=5).kv_free_bytes == 5
