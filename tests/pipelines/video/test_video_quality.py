"""The committed demo model: it loads by default, fits its budget and meets absolute quality floors on
held-out video (the rocket scene and a portrait with a face, neither trained on).

The floors are the issue's goals, all met by the committed weights (figures in docs/video.md, "Quality")."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from streamserve.pipelines.video import VideoDiffusionPipeline
from streamserve.pipelines.video.data import make_clip, scene_clip
from streamserve.pipelines.video.demo_config import WEIGHTS_DIR, DemoConfig
from streamserve.pipelines.video.evaluate import (
    blockiness,
    chroma,
    flicker_ratio,
    held_out_clips,
    psnr,
    quality_report,
    run_clip,
    summary,
)
from streamserve.pipelines.video.params import VideoParams
from streamserve.pipelines.video.styles import STYLES, apply_style

# Floors: the goals (measured figures, 8 frames per clip, in docs/video.md). Targets: the current
# filters (styles "v2").
MEAN_PSNR_FLOOR = 26.0  # the goal; measured 33.2
STYLE_PSNR_FLOOR = 22.0  # the goal, every style; measured 25.5 / 30.7 / 23.4 / 44.0 / 38.9 / 36.7
BLOCKINESS_CEILING = 1.15  # the goal; measured 0.97-1.00 (the filter targets 0.98-1.04)
FLICKER_CEILING = 1.5  # the goal (static camera: output change / target change); measured 0.87-1.35 on this clip
MONOCHROME_CHROMA_CEILING = 2.0  # the goal; measured 0.0 for both (the grayscale head)


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


def test_quality_metrics_measure_what_they_say() -> None:
    rng = np.random.default_rng(0)
    natural = scene_clip(1, seed=3)[0]
    assert 0.8 < blockiness(natural) < 1.2
    grid = natural.copy()
    grid[:, 7::8] = 0  # a dark line on every 8-pixel boundary
    assert blockiness(grid) > 2.0
    grey = np.repeat(rng.integers(0, 256, (32, 32, 1), dtype=np.uint8), 3, axis=2)
    assert chroma(grey) == 0.0 and chroma(natural) > 10.0
    assert psnr(natural, natural) > 90 and blockiness(apply_style("sketch", natural)) < 1.3


@pytest.mark.slow
def test_held_out_quality_floors() -> None:
    """PSNR to each style's filter target (mean and per style), no block grid, monochrome noir and
    sketch, on the held-out rocket and face clips at 256x256 with default parameters."""
    torch.set_num_threads(2)
    pipe = VideoDiffusionPipeline()
    report = summary(quality_report(pipe, held_out_clips(frames=4)))
    per_style = report["per_style"]
    assert report["mean_psnr"] >= MEAN_PSNR_FLOOR, report
    for s in STYLES:
        assert per_style[s]["psnr"] >= STYLE_PSNR_FLOOR, (s, per_style[s])
        assert per_style[s]["blockiness"] <= BLOCKINESS_CEILING, (s, per_style[s])
    for s in ("noir", "sketch"):
        assert per_style[s]["chroma"] <= MONOCHROME_CHROMA_CEILING, (s, per_style[s])
    for clip in ("rocket", "face"):  # the face clip is held out like the scene and must do as well
        clip_mean = np.mean([f["psnr"] for f in report["per_clip"][clip].values()])
        assert clip_mean >= MEAN_PSNR_FLOOR - 1.5, (clip, report["per_clip"][clip])


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
    assert all(r <= FLICKER_CEILING for r in ratios.values()), ratios
