"""Real checkpoint formats: diffusers Wan2.1 folders (through the user's path) and CausVid weights."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel

from streamserve.pipelines.video import VideoDiffusionPipeline, VideoParams
from streamserve.pipelines.video.checkpoint import folder_kind, load_causal_state_dict, map_causvid_key
from streamserve.pipelines.video.model import tiny_wan_config
from tests.pipelines.video.video_helpers import step_one

# diffusers name -> original Wan / CausVid name (written out, independent of the code under test)
_TO_ORIGINAL = (
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    (".attn1.", ".self_attn."), (".attn2.", ".cross_attn."),
    (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."), (".to_out.0.", ".o."),
    (".norm2.", ".norm3."), (".ffn.net.0.proj.", ".ffn.0."), (".ffn.net.2.", ".ffn.2."),
    (".scale_shift_table", ".modulation"), ("proj_out.", "head.head."),
)


def to_original(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    for new, old in _TO_ORIGINAL:
        key = key.replace(new, old)
    return key


def _tiny() -> Any:
    model: Any = WanTransformer3DModel
    return model(**tiny_wan_config(dim=32, heads=2, layers=2, ffn=64, channels=4, text_dim=16))


def test_causvid_keys_map_onto_diffusers_names() -> None:
    assert map_causvid_key("model.blocks.3.self_attn.q.weight") == "blocks.3.attn1.to_q.weight"
    assert map_causvid_key("model.blocks.0.cross_attn.o.bias") == "blocks.0.attn2.to_out.0.bias"
    assert map_causvid_key("module._orig_mod.blocks.1.norm3.weight") == "blocks.1.norm2.weight"
    assert map_causvid_key("model.head.modulation") == "scale_shift_table"
    assert map_causvid_key("blocks.2.modulation") == "blocks.2.scale_shift_table"
    assert map_causvid_key("blocks.0.attn1.to_q.weight") == "blocks.0.attn1.to_q.weight"  # already diffusers


def test_causvid_checkpoint_loads_in_place(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = _tiny()
    ckpt = {"generator": {"model." + to_original(k): v.clone() for k, v in src.state_dict().items()},
            "step": torch.tensor(1000)}
    torch.save(ckpt, tmp_path / "model.pt")
    torch.manual_seed(2)
    dst = _tiny()
    ptr = dst.blocks[0].attn1.to_q.weight.data_ptr()
    report = load_causal_state_dict(dst, tmp_path / "model.pt")
    assert report.missing == () and report.unexpected == ()
    assert report.loaded == len(src.state_dict())
    for k, v in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[k], v, rtol=0, atol=0)
    assert dst.blocks[0].attn1.to_q.weight.data_ptr() == ptr  # copied into the same tensor


def test_causvid_report_names_missing_unexpected_and_shapes() -> None:
    src = {("model." + to_original(k)): v for k, v in _tiny().state_dict().items()}
    src.pop("model.blocks.1.ffn.2.weight")
    src["model.blocks.0.extra_thing.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match=r"missing weights.*1 missing: blocks\.1\.ffn\.net\.2\.weight"):
        load_causal_state_dict(_tiny(), src)
    report = load_causal_state_dict(_tiny(), src, strict=False)
    assert report.missing == ("blocks.1.ffn.net.2.weight",)
    assert report.unexpected == ("model.blocks.0.extra_thing.weight",)
    assert "1 unexpected: model.blocks.0.extra_thing.weight" in report.summary()
    bad = {"model.patch_embedding.weight": torch.zeros(1, 2, 3)}
    with pytest.raises(ValueError, match="does not fit the model: patch_embedding.weight"):
        load_causal_state_dict(_tiny(), bad, strict=False)


def test_folder_detection_errors(tmp_path: Path, tiny_wan_dir: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        folder_kind(tmp_path / "nope")
    with pytest.raises(ValueError, match="neither a diffusers Wan2.1 folder"):
        folder_kind(tmp_path)
    partial = tmp_path / "partial"
    shutil.copytree(tiny_wan_dir / "transformer", partial / "transformer")
    with pytest.raises(ValueError, match="without vae/, text_encoder/, tokenizer/"):
        folder_kind(partial)
    assert folder_kind(tiny_wan_dir) == "wan"


@pytest.mark.slow
def test_wan_folder_through_the_cli_path(tiny_wan_dir: Path) -> None:
    """`streamserve serve --pipeline video --model DIR`: the CLI's config, the manager's constructor
    call, then a stream with Wan's chunking (1 frame, then 4) and a text prompt."""
    from streamserve.cli import build_parser, config_from_args
    from streamserve.manager import SessionManager

    args = build_parser().parse_args(["serve", "--pipeline", "video", "--in-process", "--model", str(tiny_wan_dir)])
    config = config_from_args(args)
    assert config.model == str(tiny_wan_dir)
    pipe = SessionManager(config)._create_pipeline("video")  # what the engine thread runs; warms up
    assert isinstance(pipe, VideoDiffusionPipeline)
    assert pipe.loaded.defaults.kind == "wan"
    pipe.open_session("s", VideoParams(prompt="a watercolor painting of a cat", steps=1, width=64, height=64))
    rng = np.random.default_rng(0)
    counts = []
    for i in range(9):
        res = step_one(pipe, "s", rng.integers(0, 255, (48, 80, 3), dtype=np.uint8), i)
        assert res.error is None
        counts.append(len(res.media))
        for m in res.media:
            assert m.data.shape == (64, 64, 3)
    assert counts == [1, 0, 0, 0, 4, 0, 0, 0, 4]  # the first latent frame is 1 video frame, then 4
    assert pipe.session_stats("s")["blocks_out"] == 3


def test_causal_weights_through_the_cli_path(tmp_path: Path, tiny_wan_dir: Path) -> None:
    """`serve --model DIR --causal-weights PT --checkpoint-key generator_ema`: the options reach the
    video pipeline, which loads that state dict and runs the StreamDiffusionV2 preset."""
    from streamserve.cli import build_parser, config_from_args
    from streamserve.manager import SessionManager

    torch.manual_seed(7)
    src = _tiny()
    weights = tmp_path / "causal.pt"
    torch.save({"generator": {}, "generator_ema": {"model." + to_original(k): v for k, v in src.state_dict().items()}},
               weights)
    args = build_parser().parse_args(["serve", "--pipeline", "video", "--in-process", "--model", str(tiny_wan_dir),
                                      "--causal-weights", str(weights), "--checkpoint-key", "generator_ema"])
    config = config_from_args(args)
    assert dict(config.pipeline_options) == {"causal_weights": str(weights), "checkpoint_key": "generator_ema"}
    pipe = SessionManager(config)._create_pipeline("video")
    assert isinstance(pipe, VideoDiffusionPipeline) and pipe.rules.cache_per_step  # the SDV2 preset
    torch.testing.assert_close(pipe.dit.transformer.blocks[1].ffn.net[2].weight, src.blocks[1].ffn.net[2].weight)


def test_wan_folder_loads_causal_weights_from_the_folder(tmp_path: Path, tiny_wan_dir: Path) -> None:
    folder = tmp_path / "wan"
    shutil.copytree(tiny_wan_dir, folder)
    torch.manual_seed(5)
    src = _tiny()
    torch.save({"generator_ema": {"model." + to_original(k): v for k, v in src.state_dict().items()}},
               folder / "model.pt")
    pipe = VideoDiffusionPipeline(device="cpu", model=str(folder))
    torch.testing.assert_close(pipe.dit.transformer.blocks[1].ffn.net[2].weight, src.blocks[1].ffn.net[2].weight)
    with pytest.raises(ValueError, match="causal weights .* do not exist"):
        VideoDiffusionPipeline(device="cpu", model=str(tiny_wan_dir), causal_weights=str(tmp_path / "x.pt"))


def test_a_wan_folder_streams_in_bf16(tiny_wan_dir: Path) -> None:
    """`serve --model DIR --dtype bfloat16` (CUDA's default): diffusers keeps the time embedder (and the
    norms) in fp32 while the rest is bf16; a stream runs and matches the fp32 one to bf16's precision."""
    from streamserve.cli import build_parser, config_from_args
    from streamserve.manager import SessionManager

    args = build_parser().parse_args(["serve", "--pipeline", "video", "--in-process", "--model", str(tiny_wan_dir),
                                      "--dtype", "bfloat16"])
    assert dict(config_from_args(args).pipeline_options) == {"dtype": "bfloat16"}
    pipe = SessionManager(config_from_args(args))._create_pipeline("video")
    assert isinstance(pipe, VideoDiffusionPipeline)
    ce = pipe.dit.transformer.condition_embedder
    assert pipe.dit.dtype == torch.bfloat16 and next(ce.time_embedder.parameters()).dtype == torch.float32
    ref = VideoDiffusionPipeline(device="cpu", model=str(tiny_wan_dir), dtype="float32")
    rng = np.random.default_rng(0)
    clip = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(5)]
    outs = []
    for p in (pipe, ref):
        p.open_session("s", VideoParams(prompt="a cat", steps=1, width=64, height=64, fixed_noise=True, seed=3))
        media = []
        for i, frame in enumerate(clip):
            res = step_one(p, "s", frame, i)
            assert res.error is None, res.error
            media += [m.data.astype(np.float64) for m in res.media]
        outs.append(np.stack(media))
    assert outs[0].shape == outs[1].shape == (5, 64, 64, 3)
    err = np.abs(outs[0] - outs[1]).mean()
    assert 0 < err < 4.0, err  # mean absolute difference in 8-bit levels: bf16, not another model
