"""Quality figures of a video model on held-out synthetic video: PSNR against the filter target,
compared with the same network with untrained weights, and flicker on a static camera.

Used by ``train_demo`` (figures stored in ``streamserve.json``), the quality tests and the benchmark.
Needs the dev dependencies (scikit-image, OpenCV) for the clips and the filter targets.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamserve.core.frames import VideoFrame
from streamserve.core.plan import Batch, WorkItem

from .data import make_clip, scene_clip
from .params import VideoParams
from .pipeline import VideoDiffusionPipeline
from .styles import STYLES, apply_style


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


@torch.no_grad()
def untrained(pipe: VideoDiffusionPipeline, seed: int = 0, keep_vae: bool = True) -> VideoDiffusionPipeline:
    """The same network with untrained weights, in place: the DiT and the style embeddings are
    re-initialised as their constructors do. ``keep_vae`` (default) keeps the trained autoencoder,
    the stricter baseline (an untrained autoencoder alone makes the output unrecognisable);
    ``keep_vae=False`` re-initialises it too."""
    from diffusers import WanTransformer3DModel

    from .prompts import StyleTable
    from .vae import DemoVAE, TinyAutoencoder

    torch.manual_seed(seed)
    fresh: Any = WanTransformer3DModel(**dict(pipe.dit.transformer.config))
    pipe.dit.transformer.load_state_dict(fresh.state_dict())
    table = pipe.loaded.prompts
    if isinstance(table, StyleTable):
        pipe.loaded.prompts = StyleTable(table.names, torch.randn_like(table.embeddings))
    if not keep_vae and isinstance(pipe.vae, DemoVAE):
        ae = pipe.vae.model
        ae.load_state_dict(TinyAutoencoder(**ae.config).state_dict())
    return pipe


@dataclasses.dataclass
class Report:
    psnr_trained: dict[str, float]
    psnr_untrained: dict[str, float]  # the whole network untrained
    psnr_untrained_dit: dict[str, float]  # DiT and styles untrained, trained autoencoder
    flicker: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        lines = [f"{s:>10}: PSNR {t:5.2f} dB; untrained network {self.psnr_untrained[s]:5.2f} "
                 f"(+{t - self.psnr_untrained[s]:.2f}); untrained DiT, trained VAE {self.psnr_untrained_dit[s]:5.2f} "
                 f"(+{t - self.psnr_untrained_dit[s]:.2f}); static flicker {self.flicker[s]:.2f}x target"
                 for s, t in self.psnr_trained.items()]
        return {**dataclasses.asdict(self), "lines": lines}


def evaluate_folder(folder: str | Path | None, device: str = "cpu", frames: int = 12,
                    styles: tuple[str, ...] = STYLES) -> dict[str, Any]:
    """PSNR on the held-out scene (trained vs untrained network, vs untrained DiT with the trained
    autoencoder) and static-camera flicker, per style."""
    clip = scene_clip(frames, seed=7)
    still = make_clip("rocket", frames, seed=8, motion="static", shapes=2, noise=1.5)
    model = str(folder) if folder else None
    pipe = VideoDiffusionPipeline(device=device, model=model)
    trained = {s: style_psnr(pipe, clip, s) for s in styles}
    flicker = {s: flicker_ratio(pipe, still, s) for s in styles}
    base_dit = untrained(VideoDiffusionPipeline(device=device, model=model))
    untrained_dit = {s: style_psnr(base_dit, clip, s) for s in styles}
    base = untrained(VideoDiffusionPipeline(device=device, model=model), keep_vae=False)
    untrained_all = {s: style_psnr(base, clip, s) for s in styles}
    return Report(trained, untrained_all, untrained_dit, flicker).as_dict()
