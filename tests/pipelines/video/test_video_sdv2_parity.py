"""The "streamdiffusionv2" preset, rule by rule, on tiny random weights (see pipelines/video/presets.py).

Each test states StreamDiffusionV2's behaviour (read from its code) and checks ours against a
reference computed independently: a whole-clip forward of the same DiT with the attention pattern
that behaviour implies.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel

from streamserve.core.frames import VideoFrame
from streamserve.pipelines.video import VideoDiffusionPipeline, VideoParams
from streamserve.pipelines.video.attention import ClipAttention, block_causal_mask
from streamserve.pipelines.video.checkpoint import load_causal_state_dict, load_model
from streamserve.pipelines.video.model import tiny_wan_config
from streamserve.pipelines.video.presets import make_rules, streamdiffusionv2_rules, window_from_cache_size
from streamserve.pipelines.video.resize import fit_frame
from streamserve.pipelines.video.sampler import Schedule, SigmaTable, add_noise, predict_x0
from tests.pipelines.video.video_helpers import frames, step_one

SIZE = 32  # 2x2 latent tokens per frame with the tiny demo model


def sdv2_pipe(folder: Path, **rules: object) -> VideoDiffusionPipeline:
    torch.manual_seed(0)
    # fp32: the references are fp32 and the rules are checked to 1e-5 (a demo folder's CPU default may be bf16)
    pipe = VideoDiffusionPipeline(device="cpu", model=str(folder), preset="streamdiffusionv2", num_sinks=3, window=2,
                                  dtype="float32")
    if rules:
        pipe.rules = dataclasses.replace(pipe.rules, **rules)  # type: ignore[arg-type]
    return pipe


def stream(pipe: VideoDiffusionPipeline, sid: str, clip: list[np.ndarray]) -> list[list[np.ndarray]]:
    outs = []
    for i, f in enumerate(clip):
        res = step_one(pipe, sid, f, i)
        assert res.error is None, res.error
        outs.append([m.data for m in res.media if isinstance(m, VideoFrame)])
    return outs


def stream_latents(pipe: VideoDiffusionPipeline, sid: str, clip: list[np.ndarray]) -> torch.Tensor:
    """The denoised latents the pipeline decodes, in stream order: [C, F_out, h, w]."""
    seen: list[torch.Tensor] = []
    decode = pipe.vae.decode

    def recording(latents: torch.Tensor, states: list[object]) -> list[torch.Tensor]:
        seen.extend(latents.unbind(0))  # [C, 1, h, w] each
        return decode(latents, states)

    pipe.vae.decode = recording  # type: ignore[method-assign]
    try:
        stream(pipe, sid, clip)
    finally:
        del pipe.vae.decode
    return torch.cat(seen, dim=1)


def reference_clip(
    pipe: VideoDiffusionPipeline, clip: list[np.ndarray], params: VideoParams, mask: torch.Tensor | None,
) -> torch.Tensor:
    """All frames of ``clip`` denoised in whole-clip forwards, one per step, under ``mask``: each step's
    queries see the other frames' keys *of the same step* (StreamDiffusionV2's per-step caches)."""
    dit, vae = pipe.dit, pipe.vae
    pixels = torch.stack([fit_frame(f, SIZE, SIZE, "letterbox") for f in clip], dim=1)  # [3, F, H, W]
    z = torch.cat([vae.encode([pixels[:, i : i + 1]], [None]) for i in range(len(clip))], dim=2)  # [1, C, F, h, w]
    prompt = dit.embed_prompt(pipe.loaded.prompts.encode(params.style))
    sched = Schedule(pipe.rules.timesteps[: params.num_steps], pipe.loaded.defaults.shift).effective()
    table = SigmaTable(8.0)
    gen = torch.Generator().manual_seed(params.seed)
    noise = [torch.randn((vae.latent_channels, 1, *z.shape[-2:]), generator=gen) for _ in range(params.num_steps)]
    x = add_noise(z, noise[0][None], table.sigma(1000 * sched[0]))
    h, w = dit.token_grid(*z.shape[-2:])
    rope = dit.rope.table(torch.arange(len(clip)), h, w)
    for k, s in enumerate(sched):
        sigma = table.sigma(1000 * s)
        if k:
            x = add_noise(x, noise[k][None], sigma)
        temb, proj = dit._time(torch.tensor([1000.0 * s]))
        v = dit._run(x, temb, proj, prompt, ClipAttention(rope, mask))
        x = predict_x0(x, v, sigma)
    return x[0]  # [C, F, h, w]


@pytest.fixture
def pipe(tiny_demo_dir: Path) -> VideoDiffusionPipeline:
    torch.set_num_threads(1)
    return sdv2_pipe(tiny_demo_dir)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------- selection and loading


def test_causal_weights_select_the_preset_and_generator_is_preferred(tmp_path: Path, tiny_wan_dir: Path) -> None:
    """StreamDiffusionV2 loads ``generator`` from a checkpoint holding both; so do we, unless told."""
    cfg = tiny_wan_config(dim=32, heads=2, layers=2, ffn=64, channels=4, text_dim=16)
    torch.manual_seed(1)
    model: Any = WanTransformer3DModel(**cfg)
    gen = model.state_dict()
    ema = {k: v + 1.0 for k, v in gen.items()}
    ckpt = tmp_path / "model.pt"
    torch.save({"generator": gen, "generator_ema": ema}, ckpt)
    for key, want in (("generator", gen), ("generator_ema", ema)):
        tr: Any = WanTransformer3DModel(**cfg)
        kw = {} if key == "generator" else {"checkpoint_key": key}
        load_causal_state_dict(tr, ckpt, **kw)
        name = "blocks.0.attn1.to_q.weight"
        assert torch.equal(tr.state_dict()[name], want[name]), key
    with pytest.raises(ValueError, match="checkpoint_key must be one of .*'generator_ema'.*got 'ema'"):
        load_causal_state_dict(WanTransformer3DModel(**cfg), ckpt, checkpoint_key="ema")
    plain = load_model(tiny_wan_dir)
    assert plain.defaults.preset == "streamserve" and plain.defaults.window == 3
    causal = load_model(tiny_wan_dir, causal_weights=str(ckpt))
    assert causal.defaults.preset == "streamdiffusionv2" and causal.defaults.window == 2
    pipe = VideoDiffusionPipeline.from_loaded(causal)
    assert pipe.rules == streamdiffusionv2_rules() and pipe.window == 2
    assert VideoDiffusionPipeline.from_loaded(causal, preset="streamserve").rules.sink_refresh_threshold is None
    with pytest.raises(ValueError, match="preset must be one of .* got 'sdv3'"):
        VideoDiffusionPipeline.from_loaded(causal, preset="sdv3")


# ---------------------------------------------------------------------------- cache counting, reset


def test_cache_counting_includes_the_generated_block(pipe: VideoDiffusionPipeline) -> None:
    """num_kv_cache=6 with 3 sinks: a block sees the 3 sinks and the 2 blocks before it (6 - 3 - 1)."""
    assert window_from_cache_size(6, 3) == 2
    with pytest.raises(ValueError, match="num_kv_cache=4 leaves no window after 3 sinks"):
        window_from_cache_size(4, 3)
    assert make_rules("streamdiffusionv2", 3, 2) == streamdiffusionv2_rules(num_kv_cache=6, num_sinks=3)
    pipe.rules = dataclasses.replace(pipe.rules, sink_refresh_threshold=None)
    params = VideoParams(width=SIZE, height=SIZE, motion_aware=False)
    pipe.open_session("s", params)
    clip = frames(8, SIZE, SIZE)
    got = stream_latents(pipe, "s", clip)
    assert pipe.session_stats("s")["kv_blocks"] == 5  # 3 sinks + 2 earlier blocks held for the next one
    # Reference: a clip forward where frames 0,1 see each other (first chunk) and frame n >= 2 sees
    # frames 0-2 and n-2, n-1 -- and it must differ from seeing 3 earlier blocks.
    for window, same in ((2, True), (3, False)):
        ref = reference_clip(pipe, clip, params, first_chunk_mask(len(clip), (2, 2), window))
        err = rel_err(got, ref)
        assert (err < 1e-5) is same, (window, err)


def test_rope_restarts_at_cache_size_minus_one(pipe: VideoDiffusionPipeline) -> None:
    """After frame 49 StreamDiffusionV2 puts the next block at num_kv_cache - 1 = 5 (we used to say 4)."""
    pipe.open_session("s", VideoParams(width=SIZE, height=SIZE))
    stream(pipe, "s", frames(52, SIZE, SIZE))  # blocks 0..51 (the first chunk holds 0 and 1)
    st = pipe._sessions["s"]
    cache = pipe._pools[st.pool_key].view(st.caches[0]).layer(0)
    assert cache.block_indices()[-2:] == [50, 51]
    assert cache.block_positions().tolist()[-2:] == [5, 6]


# ---------------------------------------------------------------------------- first chunk, per-step caches


def first_chunk_mask(n: int, grid: tuple[int, int], window: int) -> torch.Tensor:
    s = grid[0] * grid[1]
    mask = block_causal_mask(n, s, 3, window)
    mask[:s, s : 2 * s] = True  # frame 0 sees frame 1: the first chunk attends both ways
    return mask


def test_first_chunk_is_two_frames_attending_both_ways(pipe: VideoDiffusionPipeline) -> None:
    params = VideoParams(width=SIZE, height=SIZE, motion_aware=False)
    pipe.open_session("s", params)
    clip = frames(3, SIZE, SIZE, seed=3)
    got = stream(pipe, "s", clip[:2])
    assert [len(o) for o in got] == [0, 2]  # the first output waits for the second frame, then both
    pipe.close_session("s")
    pipe.open_session("s", params)
    lat = stream_latents(pipe, "s", clip)
    assert rel_err(lat, reference_clip(pipe, clip, params, first_chunk_mask(3, (2, 2), 2))) < 1e-5
    causal = reference_clip(pipe, clip, params, block_causal_mask(3, 4, 3, 2))
    assert rel_err(lat[:, :1], causal[:, :1]) > 1e-3  # frame 0 saw frame 1


def test_stream_batch_keeps_one_cache_per_step(pipe: VideoDiffusionPipeline, tiny_demo_dir: Path) -> None:
    """Two steps, stream batch: step k of block n sees blocks < n as they were at step k -- exactly a
    whole-clip forward per step. (First chunk off here: it isolates this rule.)"""
    params = VideoParams(width=SIZE, height=SIZE, steps=2, motion_aware=False)
    clip = frames(7, SIZE, SIZE, seed=5)
    ref = reference_clip(pipe, clip, params, block_causal_mask(7, 4, 3, 2))
    for per_step in (True, False):
        p = sdv2_pipe(tiny_demo_dir, sink_refresh_threshold=None, first_chunk_blocks=1, cache_per_step=per_step)
        p.open_session("s", params)
        st = p._sessions["s"]
        assert st.caches == ([("s", 0), ("s", 1)] if per_step else ["s"])
        got = stream_latents(p, "s", clip)
        assert got.shape[1] == 6  # lag 1 block
        err = rel_err(got, ref[:, :6])
        assert (err < 1e-5) is per_step, (per_step, err)  # one cache per session: earlier blocks' later-step keys
        assert st.last_sigma == pytest.approx(SigmaTable(8.0).sigma(700.0))
        assert p.session_stats("s")["kv_blocks"] == 5 + (0 if per_step else 1)  # one cache: + lag


def test_sigma_table_is_nearest_of_1000_shifted_sigmas() -> None:
    table = SigmaTable(8.0)
    s = 1 - torch.arange(1000, dtype=torch.float64) / 1000
    sig = 8 * s / (1 + 7 * s)
    for t in (700.0, 500.0, 400.0, 200.0, 613.0):
        want = float(sig[int(torch.argmin((sig * 1000 - t).abs()))])
        assert table.sigma(t) == pytest.approx(want, abs=1e-7)
        assert abs(table.sigma(t) - t / 1000) < 2e-3  # close to t / 1000, not equal
    assert table.sigma(700.0) != 0.7


def test_sink_refresh_is_on_with_threshold_0_2(pipe: VideoDiffusionPipeline, tiny_demo_dir: Path) -> None:
    """A scene change makes a block unlike the sinks: the preset swaps the least similar sink."""
    assert pipe.rules.sink_refresh_threshold == 0.2
    black = [np.zeros((SIZE, SIZE, 3), np.uint8)] * 6
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(6)]
    replaced = {}
    for name, p in (("sdv2", pipe), ("streamserve", VideoDiffusionPipeline(device="cpu", model=str(tiny_demo_dir)))):
        p.open_session("s", VideoParams(width=SIZE, height=SIZE, timesteps=(0.05,)))  # input dominates
        stream(p, "s", black + noise)
        st = p._sessions["s"]
        pool = p._pools[st.pool_key]
        replaced[name] = sum(pool.view(st.caches[0]).layer(i).sink_replacements for i in range(p.dit.num_layers))
    assert replaced["streamserve"] == 0
    assert replaced["sdv2"] > 0, replaced


def test_wan_first_chunk_is_one_plus_four_frames(tmp_path: Path, tiny_wan_dir: Path) -> None:
    """With Wan's VAE the first chunk is 1 + 4 video frames (2 latent frames), then 4 per block."""
    torch.set_num_threads(1)
    pipe = VideoDiffusionPipeline(device="cpu", model=str(tiny_wan_dir), preset="streamdiffusionv2", max_sessions=1)
    pipe.open_session("s", VideoParams(width=64, height=64, prompt="a cat"))
    got = stream(pipe, "s", frames(9, 64, 64))
    assert [len(o) for o in got] == [0, 0, 0, 0, 5, 0, 0, 0, 4]
    assert all(f.shape == (64, 64, 3) for o in got for f in o)
    assert pipe.session_stats("s")["blocks_out"] == 3
