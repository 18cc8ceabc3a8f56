"""Bounded memory: 10,000 frames through one session leave memory flat (KV and positions bounded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from streamserve.pipelines.video import VideoDiffusionPipeline, VideoParams
from tests.pipelines.video.video_helpers import frames, step_one


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.slow
@pytest.mark.parametrize(("policy", "n"), [("refresh", 10_000), ("reposition", 2_000)])
def test_ten_thousand_frames_keep_memory_flat(tiny_demo_dir: Path, policy: str, n: int) -> None:
    """StreamDiffusionV2's refresh policy for the full 10,000 frames (its positions wrap every 50
    blocks); the demo's reposition policy for fewer, as its positions never grow at all."""
    torch.set_num_threads(1)
    pipe = VideoDiffusionPipeline(device="cpu", model=str(tiny_demo_dir), position_policy=policy)
    pipe.open_session("s", VideoParams(steps=2, width=32, height=32))  # stream batch: 2 blocks in flight
    clip = frames(16, 24, 40)
    rss, kv, max_pos = {}, {}, 0
    for i in range(n):
        res = step_one(pipe, "s", clip[i % len(clip)], i)
        assert res.error is None
        stats = pipe.session_stats("s")
        max_pos = max(max_pos, stats["kv_max_position"])
        if i + 1 in (n // 10, n):
            rss[i + 1], kv[i + 1] = rss_bytes(), pipe.kv_bytes
    stats = pipe.session_stats("s")
    assert stats["blocks_out"] == n - 1  # one block in flight (lag 1)
    assert kv[n // 10] == kv[n] > 0  # KV storage allocated once
    assert stats["kv_blocks"] == 1 + 2 + 1  # sink + window + one for the block in flight
    bound = 1 + 2 + 1 if policy == "reposition" else 50  # cache-relative vs refreshed every 50 blocks
    assert max_pos < bound
    growth = rss[n] - rss[n // 10]
    assert growth < 16 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over {n - n // 10} frames"
