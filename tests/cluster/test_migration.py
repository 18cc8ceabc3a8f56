"""Recompute migration pieces without Ray: the input history and the replay that rebuilds a session's KV."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import numpy as np

from streamserve.cluster.migration import InputHistory, replay
from streamserve.core import AudioChunk, VideoFrame
from streamserve.core.config import ServerConfig
from streamserve.manager import SessionManager
from tests.pipelines.video.video_helpers import frames, make_demo_folder


def vf(i: int, img: np.ndarray | None = None) -> VideoFrame:
    return VideoFrame(img if img is not None else np.full((8, 8, 3), i, np.uint8), i, float(i), i + 30.0)


def test_history_keeps_sinks_and_the_recent_window() -> None:
    h = InputHistory(sinks=2, recent=3)
    for i in range(10):
        h.record(vf(i))
    h.record(AudioChunk(np.zeros((1, 160), np.int16), 16000, 0, 0.0, 1.0))  # audio is not replayed
    assert [f.pts for f in h.frames()] == [0, 1, 7, 8, 9] and h.seen == 10


async def test_replay_rebuilds_the_rolling_kv_of_a_video_session(tmp_path: Path) -> None:
    folder = make_demo_folder(tmp_path / "m")
    manager = SessionManager(ServerConfig(pipeline="passthrough", model=str(folder)))
    await manager.start(warm=False)
    try:
        session = await manager.open("video", {"width": 64, "height": 64}, source="test")
        engine = manager.devices.engine_of(session.id)
        history = [vf(i, img) for i, img in enumerate(frames(5))]
        count = await asyncio.wrap_future(engine.call(functools.partial(replay, engine, "video", session.id, history)))
        assert count == 5
        stats = await asyncio.wrap_future(engine.call(lambda: engine.pipeline("video").session_stats(session.id)))  # type: ignore[attr-defined]
        assert stats["blocks_in"] == 5 and stats["kv_blocks"] >= 2  # sinks + window rebuilt before live input
    finally:
        await manager.stop()
