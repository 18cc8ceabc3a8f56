"""The committed demo model: it loads by default, fits its budget and actually stylizes held-out video."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from streamserve.pipelines.video import VideoDiffusionPipeline
from streamserve.pipelines.video.data import make_clip, scene_clip
from streamserve.pipelines.video.demo_config import WEIGHTS_DIR, DemoConfig
from streamserve.pipelines.video.evaluate import flicker_ratio, psnr, run_clip, style_psnr, untrained
from streamserve.pipelines.video.params import VideoParams
from streamserve.pipelines.video.styles import STYLES, apply_style


def test_committed_weights_fit_the_budget_and_load_by_default() -> None:
    files = [p for p in WEIGHTS_DIR.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".json", ".safetensors"}
    total = sum(p.stat().st_size for p in files)
    assert total <= 25 * 2**20, f"committed weights are {total / 2**20:.1f} MiB"
    cfg = DemoConfig.from_json((WEIGHTS_DIR / "streamserve.json").read_text())
    assert cfg.styles == STYLES
    assert json.loads((WEIGHTS_DIR / "transformer" / "config.json").read_text())["_class_name"] == \
        "WanTransformer3DModel"
    pipe = VideoDiffusionPipeline()  # model=None: the embedded demo model
    assert pipe.loaded.defaults.kind == "demo" and pipe.loaded.source == str(WEIGHTS_DIR)


@pytest.mark.slow
def test_trained_model_beats_untrained_by_6db_on_held_out_video() -> None:
    """PSNR against the filter targets on the held-out scene (a photo never trained on): at least
    6 dB above the same network untrained over the styles, and every style clearly better.

    Measured with the committed weights: +6.6 (watercolor), +8.2 (sketch), +2.5 (cartoon), +9.9
    (sepia), +10.6 (noir), +9.9 (thermal) dB; cartoon is the weak style (see docs/video.md)."""
    torch.set_num_threads(2)
    clip = scene_clip(8, seed=21)
    pipe = VideoDiffusionPipeline()
    trained = {s: style_psnr(pipe, clip, s) for s in STYLES}
    base = untrained(VideoDiffusionPipeline(), seed=1)
    baseline = {s: style_psnr(base, clip, s) for s in STYLES}
    gain = {s: round(trained[s] - baseline[s], 2) for s in STYLES}
    assert np.mean(list(gain.values())) >= 6.0, gain
    assert min(gain.values()) >= 2.0, gain
    assert sum(g >= 6.0 for g in gain.values()) >= len(STYLES) - 1, gain


@pytest.mark.slow
def test_output_is_closer_to_the_style_than_to_the_camera() -> None:
    """What the browser test checks on the page: the output follows the filter, not the input."""
    torch.set_num_threads(2)
    clip = scene_clip(6, seed=22)
    pipe = VideoDiffusionPipeline()
    for style in ("sketch", "thermal", "sepia"):
        outs = run_clip(pipe, clip, VideoParams(style=style))  # type: ignore[arg-type]
        to_target = np.mean([psnr(o, apply_style(style, clip[i])) for i, o in outs.items()])
        to_input = np.mean([psnr(o, clip[i]) for i, o in outs.items()])
        assert to_target > to_input + 2.0, (style, to_target, to_input)


@pytest.mark.slow
def test_static_camera_does_not_flicker() -> None:
    """On a still camera (moving shapes only) the output changes no more than 1.5x the target does."""
    torch.set_num_threads(2)
    still = make_clip("rocket", 10, seed=23, motion="static", shapes=2, noise=1.5)
    pipe = VideoDiffusionPipeline()
    ratios = {s: flicker_ratio(pipe, still, s) for s in STYLES}
    assert max(ratios.values()) <= 1.5, ratios
