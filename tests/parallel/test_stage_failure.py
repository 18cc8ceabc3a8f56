"""A killed stage rank ends the sessions on its pipeline with a typed error; the server keeps serving."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from streamserve.core import MediaKind, VideoFrame
from streamserve.core.clock import SYSTEM_CLOCK
from streamserve.core.config import ServerConfig, SessionConfig
from streamserve.manager import SessionManager
from streamserve.pipelines.video.parallel import StageFailed

pytestmark = pytest.mark.slow


def frame(i: int) -> VideoFrame:
    now = SYSTEM_CLOCK.now()
    img = np.full((64, 64, 3), (i * 10) % 256, np.uint8)
    return VideoFrame(img, i * 3000, now, now + 30.0)


async def test_killed_rank_ends_its_sessions_and_the_server_stays_up(tiny_pp_dir: Path) -> None:
    manager = SessionManager(ServerConfig(pipeline="passthrough", model=str(tiny_pp_dir), idle_timeout_s=120,
                                          session=SessionConfig(latency_budget_s=10.0, inbox_size=64, outbox_size=64)))
    await manager.start(warm=False)
    try:
        video = await manager.open("video-pp", None, source="test")
        other = await manager.open("passthrough", None, source="test")
        vsub, osub = video.subscribe(MediaKind.VIDEO), other.subscribe(MediaKind.VIDEO)
        for i in range(3):
            video.push(frame(i))
            got = await asyncio.wait_for(vsub.get(), 60)
            assert got is not None and got.data.shape == (64, 64, 3)
        engine = manager.devices.engine_of(video.id)
        pipe = await asyncio.wrap_future(engine.call(lambda: engine.pipeline("video-pp")))
        (rank1,) = pipe.group.processes
        rank1.kill()
        await asyncio.to_thread(rank1.join, 10)
        video.push(frame(3))
        reason = await asyncio.wait_for(video.wait_closed(), 60)
        assert "StageFailed" in reason and "rank 1" in reason
        assert await asyncio.wait_for(vsub.get(), 5) is None  # the subscriber sees the end
        assert video.id not in [s.id for s in manager.list()]
        # The server keeps serving: the other session still streams, a new passthrough one opens.
        for i in range(5):
            other.push(frame(i))
        assert [(await asyncio.wait_for(osub.get(), 5)).pts for _ in range(5)] == [i * 3000 for i in range(5)]  # type: ignore[union-attr]
        assert (await manager.open("passthrough", None, source="test")).device == "cpu"
        # The broken group takes no new sessions: a typed 503, not a hang.
        with pytest.raises(StageFailed, match="pipeline-parallel group is down") as info:
            await manager.open("video-pp", None, source="test")
        assert info.value.status == 503 and info.value.code == "pipeline_stage_failed"
    finally:
        await manager.stop()
