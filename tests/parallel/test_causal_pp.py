"""`video-pp` with CausVid / StreamDiffusionV2 weights: each rank loads its blocks' causal tensors, the
StreamDiffusionV2 preset runs over the ring (per-step caches, the two-frame first chunk, its sigma
table), and the output equals the single-process `video` pipeline with the same weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel

from streamserve.pipelines.video import VideoDiffusionPipeline
from streamserve.pipelines.video.model import tiny_wan_config
from streamserve.pipelines.video.parallel.pipeline import PipelinedVideoPipeline
from streamserve.pipelines.video.params import VideoParams
from tests.pipelines.video.test_video_checkpoint import to_original
from tests.pipelines.video.video_helpers import frames, make_wan_folder, step_one

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def causal(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    """A tiny Wan folder and random causal weights for it (CausVid key names, a training checkpoint)."""
    tmp = tmp_path_factory.mktemp("causal_pp")
    folder = make_wan_folder(tmp / "wan")
    torch.manual_seed(11)
    src: Any = WanTransformer3DModel(**tiny_wan_config(dim=32, heads=2, layers=2, ffn=64, channels=4, text_dim=16))
    weights = tmp / "causal.pt"
    torch.save({"generator": {"model." + to_original(k): v for k, v in src.state_dict().items()}}, weights)
    return folder, weights, src


def test_two_ranks_with_causal_weights_equal_single_process(causal: tuple[Path, Path, Any]) -> None:
    folder, weights, src = causal
    torch.set_num_threads(1)
    ref = VideoDiffusionPipeline("cpu", str(folder), causal_weights=str(weights))
    pp = PipelinedVideoPipeline("cpu", str(folder), stages=2, causal_weights=str(weights), rebalance=False)
    try:
        assert pp.rules == ref.rules and pp.rules.preset == "streamdiffusionv2" and pp.rules.cache_per_step
        # Rank 0 holds stage 0's block with the causal weights (not the folder's), and no other block.
        torch.testing.assert_close(pp.dit.transformer.blocks[0].ffn.net[2].weight, src.blocks[0].ffn.net[2].weight,
                                   rtol=0, atol=0)
        assert next(pp.dit.transformer.blocks[1].parameters()).device.type == "meta"
        params = VideoParams(prompt="a cat", steps=2, width=64, height=64)
        for pipe in (ref, pp):
            pipe.open_session("s", params)
        out_ref: list[np.ndarray] = []
        out_pp: list[np.ndarray] = []
        n = 5 + 4 * 21  # the first chunk (1 + 4 frames, two latent frames) then 21 chunks of 4 frames
        for i, f in enumerate(frames(n)):
            if i == 45:  # a prompt change travels the ring with the data
                for pipe in (ref, pp):
                    pipe.update_params("s", dataclasses.replace(params, prompt="a dog"))
            a, b = step_one(ref, "s", f, i), step_one(pp, "s", f, i)
            assert a.error is None and b.error is None, (a.error, b.error)
            out_ref += [m.data for m in a.media]  # type: ignore[misc]
            out_pp += [m.data for m in b.media]  # type: ignore[misc]
        # The stages run the new prompt (its states reached stage 0 in order with the data).
        torch.testing.assert_close(pp.group.stage.prompts["s"], ref._sessions["s"].prompt.current(), rtol=0, atol=0)
        assert ref._sessions["s"].prompt.text == "a dog"
        stats = ref.session_stats("s")
        assert stats["blocks_in"] == 23 > ref.num_sinks + ref.window + 2  # the per-step caches rolled
        assert len(out_ref) == len(out_pp) >= 80  # all but one chunk of lag
        for x, y in zip(out_ref, out_pp, strict=True):
            assert x.shape == y.shape == (64, 64, 3)
            assert np.abs(x.astype(int) - y.astype(int)).max() <= 1
        assert np.abs(out_ref[10].astype(int) - out_ref[-1].astype(int)).mean() > 1.0  # not a constant
        # Rank 0's stage keeps one cache per denoising step per session (StreamDiffusionV2's layout).
        (pools,) = pp.group.stage.pools.values()
        assert sorted(pools.sessions) == [("s", 0), ("s", 1)]  # type: ignore[type-var]
        assert pp.kv_held_bytes() == pp.kv_bytes_for(params) > 0
        pp.close_session("s")
        assert not pp.group.stage.pools
    finally:
        pp.close()
    assert all(not p.is_alive() for p in pp.group.processes)


def test_causal_options_reach_video_pp(tiny_pp_dir: Path, causal: tuple[Path, Path, Any]) -> None:
    import inspect

    from streamserve.pipelines.video.parallel.pipeline import with_stages

    # The server passes a pipeline only the options its constructor names (`serve --pp-stages N`).
    assert {"causal_weights", "checkpoint_key"} <= set(inspect.signature(with_stages(2).__init__).parameters)
    with pytest.raises(ValueError, match="causal_weights applies to diffusers Wan folders"):
        PipelinedVideoPipeline("cpu", str(tiny_pp_dir), stages=2, causal_weights=str(causal[1]))
    with pytest.raises(ValueError, match="causal weights .* do not exist"):
        PipelinedVideoPipeline("cpu", str(causal[0]), stages=2, causal_weights=str(causal[0] / "nope.pt"))
