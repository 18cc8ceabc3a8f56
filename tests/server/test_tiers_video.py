"""Degradation tiers reach the real video pipeline: a lower resolution tier renders smaller frames,
and the policy restoring the tier (the device is idle) brings the requested size back."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from streamserve.core import MediaKind, VideoFrame
from streamserve.core.clock import SYSTEM_CLOCK
from streamserve.core.config import ServerConfig, SessionConfig
from streamserve.core.errors import InvalidParams
from streamserve.manager import SessionManager


async def next_frame(sub, session, i: int) -> VideoFrame:  # type: ignore[no-untyped-def]
    for _ in range(10):
        now = SYSTEM_CLOCK.now()
        session.push(VideoFrame(np.full((128, 128, 3), 100, np.uint8), i * 3000, now, now + 2.0))
        try:
            return await asyncio.wait_for(sub.get(), 5)
        except TimeoutError:
            continue
    raise AssertionError("no output")


@pytest.mark.slow
async def test_resolution_tier_changes_the_rendered_size() -> None:
    manager = SessionManager(ServerConfig(pipeline="video", session=SessionConfig(latency_budget_s=2.0)))
    await manager.start(warm=False)
    try:
        s = await manager.open("video", {"width": 128, "height": 128, "fps": 5}, source="test")
        sub = s.subscribe(MediaKind.VIDEO)
        first = await next_frame(sub, s, 0)
        assert (first.width, first.height) == (128, 128)
        info = s.stats()["slo"]
        assert info["level"] == 0 and info["width"] == 128 and info["tiers"] == 3  # 5 fps: no fps rungs
        adm = manager.scheduler.admission  # type: ignore[attr-defined]
        tiers = adm.tiers(s.id)
        assert [(t.knob, t.shape.width) for t in tiers] == [("requested", 128), ("resolution", 96),
                                                            ("resolution", 64)]  # 64 = the model's minimum
        adm.set_level(s.id, 1)  # what admission does to make room for a higher priority (restores wait 3 s)
        sizes = set()
        for i in range(1, 8):
            out = await next_frame(sub, s, i)
            sizes.add((out.width, out.height))
            if (out.width, out.height) == (96, 96):
                break
        assert (96, 96) in sizes
        # The device is idle, so the policy restores the requested tier by itself (after its hold).
        for i in range(8, 200):
            out = await next_frame(sub, s, i)
            if (out.width, out.height) == (128, 128):
                break
            await asyncio.sleep(0.05)
        assert (out.width, out.height) == (128, 128)
        assert s.stats()["slo"]["level"] == 0 and "load fell" in s.stats()["slo"]["reason"]
        # A size the model cannot render is refused as sent, even when the load would put the change
        # on a lower-resolution tier whose size it can render (500x512 at 10 fps fits no CPU here).
        with pytest.raises(InvalidParams, match="width 500: this model renders sizes that are multiples of 16"):
            await s.update({"width": 500, "height": 512, "fps": 10})
        assert (s.params.width, s.params.height) == (128, 128)
        text = manager.metrics.render().decode()
        assert 'streamserve_tier_changes_total{direction="down",pipeline="video"} 1.0' in text
        assert 'streamserve_tier_changes_total{direction="up",pipeline="video"} 1.0' in text
    finally:
        await manager.stop()
