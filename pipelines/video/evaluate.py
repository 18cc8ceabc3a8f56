"""Quality figures of a video model on held-out video: PSNR and SSIM against the filter target,
blockiness (an 8-pixel grid), chroma (monochrome styles) and flicker on a static camera.

The targets are the current filters (``v2``); PSNR and SSIM against the first filter set (``v1``,
whose sketch and cartoon were ill-conditioned: see docs/video.md) are reported next to them, and
:func:`conditioning` measures how much each filter's own output moves under invisible sensor noise.

Used by ``train_demo`` (figures stored in ``streamserve.json``), the quality tests and the benchmark.
Needs the dev dependencies (scikit-image, OpenCV) for the clips and the filter targets.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from streamserve.core.frames import VideoFrame
from streamserve.core.plan import Batch, WorkItem

from .data import face_clip, make_clip, scene_clip
from .params import VideoParams
from .pipeline import VideoDiffusionPipeline
from .styles import FILTER_VERSIONS, STYLES, apply_style


def run_clip(pipe: VideoDiffusionPipeline, frames: np.ndarray, params: VideoParams, fps: float = 30.0,
             session_id: str = "eval") -> dict[int, np.ndarray]:
    """Stream ``frames [T, H, W, 3]`` through one session; returns output frames by input index."""
    pipe.open_session(session_id, params)
    out: dict[int, np.ndarray] = {}
    try:
        for i, frame in enumerate(frames):
            t = i / fps
            res = pipe.step(Batch(pipe.name, (WorkItem(session_id, VideoFrame(frame, i, t, t + 1.0)),)))
            if res[0].error:
                raise RuntimeError(res[0].error)
            for media in res[0].media:
                out[int(media.pts)] = media.data  # type: ignore[assignment]
    finally:
        pipe.close_session(session_id)
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10.0 * math.log10(255.0**2 / max(mse, 1e-10))


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def blockiness(rgb: np.ndarray, block: int = 8) -> float:
    """Mean absolute luma step across ``block``-pixel boundaries over the mean step elsewhere, both
    directions (a natural image or a filter target: ~1.0; a visible block grid: well above)."""
    y = luma(rgb)
    dx = np.abs(np.diff(y, axis=1))  # step between column x and x + 1
    dy = np.abs(np.diff(y, axis=0))
    on_x = (np.arange(dx.shape[1]) + 1) % block == 0
    on_y = (np.arange(dy.shape[0]) + 1) % block == 0
    at = np.concatenate([dx[:, on_x].ravel(), dy[on_y, :].ravel()])
    off = np.concatenate([dx[:, ~on_x].ravel(), dy[~on_y, :].ravel()])
    return float(at.mean() / max(off.mean(), 1e-6))


def chroma(rgb: np.ndarray) -> float:
    """Mean chroma, max(R, G, B) - min(R, G, B), in 8-bit levels (0 for a grey image)."""
    x = rgb.astype(np.int16)
    return float((x.max(axis=2) - x.min(axis=2)).mean())


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two RGB frames (scikit-image, 8-bit range)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


@dataclasses.dataclass
class StyleFigures:
    """Quality of one style on one clip (means over its output frames)."""

    psnr: float
    ssim: float
    blockiness: float
    chroma: float
    target_blockiness: float
    psnr_v1: float  # against the first filter set (v1)
    ssim_v1: float

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in dataclasses.asdict(self).items()}


def style_figures(pipe: VideoDiffusionPipeline, clip: np.ndarray, style: str, **params: Any) -> StyleFigures:
    """PSNR/SSIM to ``style``'s filter target, blockiness and chroma of the output over a clip."""
    outs = run_clip(pipe, clip, VideoParams(style=style, **params))  # type: ignore[arg-type]
    targets = {i: apply_style(style, clip[i]) for i in outs}
    old = {i: apply_style(style, clip[i], "v1") for i in outs}
    return StyleFigures(
        psnr=float(np.mean([psnr(o, targets[i]) for i, o in outs.items()])),
        ssim=float(np.mean([ssim(o, targets[i]) for i, o in outs.items()])),
        blockiness=float(np.mean([blockiness(o) for o in outs.values()])),
        chroma=float(np.mean([chroma(o) for o in outs.values()])),
        target_blockiness=float(np.mean([blockiness(t) for t in targets.values()])),
        psnr_v1=float(np.mean([psnr(o, old[i]) for i, o in outs.items()])),
        ssim_v1=float(np.mean([ssim(o, old[i]) for i, o in outs.items()])),
    )


def conditioning(clips: dict[str, np.ndarray], styles: tuple[str, ...] = STYLES, version: str = "v2",
                 sigma: float = 1.0, seed: int = 0) -> dict[str, dict[str, float]]:
    """How well-posed each filter is as a camera target: PSNR of ``filter(frame)`` against
    ``filter(frame + N(0, sigma))`` (invisible extra sensor noise), mean over each clip's frames.
    A filter far below the quality goal here cannot be matched on a real camera (its target flickers)."""
    if version not in FILTER_VERSIONS:
        raise ValueError(f"unknown filter version {version!r}; versions: {', '.join(FILTER_VERSIONS)}")
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, float]] = {}
    for s in styles:
        out[s] = {}
        for name, clip in clips.items():
            vals = []
            for f in clip:
                noisy = np.clip(f + rng.normal(0.0, sigma, f.shape), 0, 255).round().astype(np.uint8)
                vals.append(psnr(apply_style(s, f, version), apply_style(s, noisy, version)))
            out[s][name] = round(float(np.mean(vals)), 2)
    return out


def mean_change(frames: list[np.ndarray]) -> float:
    """Mean absolute frame-to-frame change (8-bit levels)."""
    diffs = [np.mean(np.abs(b.astype(np.float32) - a.astype(np.float32))) for a, b in zip(frames, frames[1:], strict=False)]
    return float(np.mean(diffs)) if diffs else 0.0


def style_psnr(pipe: VideoDiffusionPipeline, clip: np.ndarray, style: str, **params: Any) -> float:
    """Mean PSNR of the pipeline's output against ``style``'s filter target over a clip."""
    outs = run_clip(pipe, clip, VideoParams(style=style, **params))  # type: ignore[arg-type]
    return float(np.mean([psnr(o, apply_style(style, clip[i])) for i, o in outs.items()]))


def flicker_ratio(pipe: VideoDiffusionPipeline, clip: np.ndarray, style: str, **params: Any) -> float:
    """Output's mean frame-to-frame change over the target's (1.0: as steady as the filter)."""
    outs = run_clip(pipe, clip, VideoParams(style=style, **params))  # type: ignore[arg-type]
    idx = sorted(outs)[2:]  # after the cache has warmed up
    out_change = mean_change([outs[i] for i in idx])
    tgt_change = mean_change([apply_style(style, clip[i]) for i in idx])
    return out_change / max(tgt_change, 1e-6)


def held_out_clips(frames: int = 8, seed: int = 21) -> dict[str, np.ndarray]:
    """The held-out evaluation clips: the rocket scene and a portrait with a face (never trained on)."""
    return {"rocket": scene_clip(frames, seed=seed), "face": face_clip(frames, seed=seed)}


def quality_report(
    pipe: VideoDiffusionPipeline, clips: dict[str, np.ndarray], styles: tuple[str, ...] = STYLES,
) -> dict[str, dict[str, StyleFigures]]:
    """Figures per clip and style (default parameters)."""
    return {name: {s: style_figures(pipe, clip, s) for s in styles} for name, clip in clips.items()}


def summary(report: dict[str, dict[str, StyleFigures]]) -> dict[str, Any]:
    """Per style: PSNR/SSIM/blockiness/chroma averaged over the clips; the mean PSNR over styles."""
    styles = list(next(iter(report.values())))
    per_style = {
        s: {k: round(float(np.mean([getattr(report[c][s], k) for c in report])), 3)
            for k in ("psnr", "ssim", "blockiness", "chroma", "target_blockiness", "psnr_v1", "ssim_v1")}
        for s in styles
    }
    return {"per_style": per_style, "mean_psnr": round(float(np.mean([v["psnr"] for v in per_style.values()])), 3),
            "mean_psnr_v1": round(float(np.mean([v["psnr_v1"] for v in per_style.values()])), 3),
            "per_clip": {c: {s: f.rounded() for s, f in r.items()} for c, r in report.items()}}


def evaluate_folder(folder: str | Path | None, device: str = "cpu", frames: int = 8,
                    styles: tuple[str, ...] = STYLES) -> dict[str, Any]:
    """Held-out figures (PSNR, SSIM, blockiness, chroma per clip and style) and static-camera flicker."""
    still = make_clip("rocket", 10, seed=8, motion="static", shapes=2, noise=1.5)
    pipe = VideoDiffusionPipeline(device=device, model=str(folder) if folder else None)
    out = summary(quality_report(pipe, held_out_clips(frames), styles))
    out["flicker"] = {s: round(flicker_ratio(pipe, still, s), 3) for s in styles}
    out["lines"] = [
        f"{s:>10}: PSNR {v['psnr']:5.2f} dB  SSIM {v['ssim']:.3f}  blockiness {v['blockiness']:.2f} "
        f"(target {v['target_blockiness']:.2f})  chroma {v['chroma']:5.1f}  flicker {out['flicker'][s]:.2f}x  "
        f"[v1 targets: PSNR {v['psnr_v1']:5.2f} dB  SSIM {v['ssim_v1']:.3f}]"
        for s, v in out["per_style"].items()
    ] + [f"mean PSNR {out['mean_psnr']:.2f} dB  [v1 targets: {out['mean_psnr_v1']:.2f} dB]"]
    return out


def style_grid(pipe: VideoDiffusionPipeline, clips: dict[str, np.ndarray], frame: int = -1) -> np.ndarray:
    """One row per clip: its camera frame, then that frame in every style (``[rows*H, 7*W, 3]``)."""
    rows = []
    for clip in clips.values():
        cells = [clip[frame]]
        for s in STYLES:
            outs = run_clip(pipe, clip, VideoParams(style=s))  # type: ignore[arg-type]
            cells.append(outs[sorted(outs)[frame]])
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Held-out quality figures of a demo-format model folder.")
    parser.add_argument("--model", default=None, help="model folder (default: the embedded demo model)")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--grid", default=None, help="write a PNG grid of held-out frames in every style here")
    parser.add_argument("--conditioning", action="store_true",
                        help="print each filter's PSNR under sigma=1 extra sensor noise (v2 and v1 filters)")
    ns = parser.parse_args(argv)
    if ns.conditioning:
        clips = held_out_clips()
        for version in FILTER_VERSIONS:
            for s, per_clip in conditioning(clips, version=version).items():
                print(f"{version} {s:>10}: " + "  ".join(f"{c} {v:5.1f} dB" for c, v in per_clip.items()))
        return 0
    if ns.grid:
        from PIL import Image

        pipe = VideoDiffusionPipeline(model=ns.model)
        Image.fromarray(style_grid(pipe, held_out_clips(frames=6))).save(ns.grid)
        return 0
    report = evaluate_folder(ns.model)
    print("\n".join(report["lines"]))
    if ns.json:
        Path(ns.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
