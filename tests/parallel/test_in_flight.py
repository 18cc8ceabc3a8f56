"""Micro-batched ticks in one process (no ranks): the in-flight path's arithmetic and KV semantics.

`video-pp` with one stage runs the same code as with several (micro-batches submitted together, KV
writes deferred to the tick's end), so the single-process reference must be matched exactly here too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamserve.pipelines.video import VideoDiffusionPipeline
from streamserve.pipelines.video.parallel.pipeline import PipelinedVideoPipeline, micro_batches
from streamserve.pipelines.video.params import VideoParams
from tests.pipelines.video.video_helpers import frames, step_one


def test_micro_batches_split_in_order() -> None:
    assert micro_batches(5, 2) == [range(0, 3), range(3, 5)]
    assert micro_batches(2, 4) == [range(0, 1), range(1, 2)]
    assert micro_batches(3, 1) == [range(0, 3)]
    with pytest.raises(ValueError, match="at least one item"):
        micro_batches(0, 2)


def test_inflight_option_is_checked(tiny_pp_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"inflight must be in \[1, 64\]"):
        PipelinedVideoPipeline.from_folder(str(tiny_pp_dir), stages=1, inflight=0)


def test_one_item_per_micro_batch_equals_the_batched_forward(tiny_pp_dir: Path) -> None:
    """A stream batch of 3 steps as 3 micro-batches: each reads the cache as it was before the tick
    (block n's append and n-1's overwrite wait for the tick's end), over 20 chunks with the KV
    rolling past its window."""
    torch.set_num_threads(1)
    # fp32: in bf16 a 1-item batch and a 3-item one may round differently (measured; in fp32 they do not)
    ref = VideoDiffusionPipeline("cpu", str(tiny_pp_dir), dtype="float32")
    pp = PipelinedVideoPipeline.from_folder(str(tiny_pp_dir), stages=1, inflight=3, dtype="float32")
    try:
        params = VideoParams(steps=3)
        for pipe in (ref, pp):
            pipe.open_session("s", params)
        out_ref: list[np.ndarray] = []
        out_pp: list[np.ndarray] = []
        for i, f in enumerate(frames(20)):
            a, b = step_one(ref, "s", f, i), step_one(pp, "s", f, i)
            assert a.error is None and b.error is None, (a.error, b.error)
            out_ref += [m.data for m in a.media]  # type: ignore[misc]
            out_pp += [m.data for m in b.media]  # type: ignore[misc]
        assert len(out_ref) == len(out_pp) == 18
        for x, y in zip(out_ref, out_pp, strict=True):
            assert np.array_equal(x, y)  # same process, same kernels: bit for bit
        stats = pp.parallel_stats()
        assert stats["micro_batches_per_tick"] > 2.8 and stats["ticks"] == 20
    finally:
        pp.close()


def test_without_deferred_writes_the_micro_batches_would_differ(tiny_pp_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The deferral is what keeps the equality: writing each micro-batch's KV at once changes the output."""
    from streamserve.pipelines.video.parallel import stage

    torch.set_num_threads(1)
    monkeypatch.setattr(stage.LayerPools, "write", lambda self, layer, sids, blocks, k, v:
                        self.pools[layer].write(0, sids, blocks, k, v))
    ref = VideoDiffusionPipeline("cpu", str(tiny_pp_dir))
    pp = PipelinedVideoPipeline.from_folder(str(tiny_pp_dir), stages=1, inflight=3)
    try:
        params = VideoParams(steps=3)
        for pipe in (ref, pp):
            pipe.open_session("s", params)
        differing = 0
        for i, f in enumerate(frames(10)):
            a, b = step_one(ref, "s", f, i), step_one(pp, "s", f, i)
            for x, y in zip(a.media, b.media, strict=True):
                differing += not np.array_equal(x.data, y.data)  # type: ignore[arg-type]
        assert differing >= 3  # once block n's append and n-1's overwrite are seen by the older items
    finally:
        pp.close()
