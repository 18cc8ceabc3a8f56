"""Training stage of the demo model's guided decoder (:mod:`.guided`), resumable.

Run by :mod:`.train_demo` after the DiT stage. The decoder learns ``(DiT latent, camera frame) ->
style target`` where the latent is what the trained DiT actually produces when serving (the input
latent noised at the default strength with fixed noise, one block-causal clip forward), so it is
trained on the distribution it will decode. The decoder is also told the style: the DiT's projected
style embedding averaged over its tokens (:func:`style_vectors`, what the pipeline hands it from the
session's blended prompt state). Loss: L1 + MSE on pixels (MSE is what PSNR measures)
plus L1 on horizontal and vertical pixel differences (edge-aware: blur and block seams cost too).

A checkpoint (decoder, optimiser, scheduler, random state, iteration) is written to ``work`` every
``checkpoint_s`` seconds and at the end; a rerun with the same ``work`` folder resumes from it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .demo_config import DemoConfig
from .guided import GuidedDecoder
from .model import CausalWanDiT
from .sampler import add_noise, predict_x0
from .vae import TinyAutoencoder

CROP = 128  # training crop (pixels); latents are cropped to CROP / factor


@dataclasses.dataclass
class GuideArgs:
    iters: int = 12000
    batch: int = 8
    lr: float = 2e-3
    hidden: int = 48
    features: str = "v2"  # the decoder's feature basis (guided.FEATURE_SETS)
    seed: int = 0
    checkpoint_s: float = 180.0


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """[..., H, W, 3] uint8 -> [..., 3, H, W] float in [-1, 1]."""
    return torch.from_numpy(frames).float().div_(127.5).sub_(1.0).movedim(-1, -3)


@torch.no_grad()
def predict_latents(
    dit: CausalWanDiT, ae: TinyAutoencoder, styles: torch.Tensor, inputs: np.ndarray, cfg: DemoConfig, seed: int,
) -> torch.Tensor:
    """What the DiT outputs when serving each training clip in each style.

    inputs: [N, T, H, W, 3] uint8 -> latents [N, S, T, C, h, w] (float16)."""
    gen = torch.Generator().manual_seed(seed)
    n, t = inputs.shape[:2]
    s = styles.shape[0]
    out: torch.Tensor | None = None
    sig = cfg.strength
    for i in tqdm(range(n), desc="guide: DiT latents", unit="clip"):
        zi = ae.encode(to_tensor(inputs[i]))  # [T, C, h, w]
        noise = torch.randn(zi.shape[1:], generator=gen)  # fixed noise, as served
        x = add_noise(zi, noise[None], sig).transpose(0, 1)[None]  # [1, C, T, h, w]
        if out is None:
            out = torch.empty(n, s, t, *zi.shape[1:], dtype=torch.float16)
        for j in range(s):
            states = dit.embed_prompt(styles[j : j + 1])
            v = dit.forward_clip(x, torch.full((1,), sig * 1000.0), states, num_sinks=cfg.num_sinks,
                                 window=cfg.window)
            out[i, j] = predict_x0(x, v, sig)[0].transpose(0, 1).half()
    assert out is not None
    return out


@torch.no_grad()
def style_vectors(dit: CausalWanDiT, styles: torch.Tensor) -> torch.Tensor:
    """The decoder's style input per style: the DiT's prompt states averaged over tokens -> [S, dim]."""
    return torch.cat([dit.embed_prompt(styles[j : j + 1]).mean(1) for j in range(styles.shape[0])]).float()


def _diff_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between the horizontal and vertical pixel differences of a and b ([B, 3, H, W])."""
    dy = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    dx = (a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])
    return dy.abs().mean() + dx.abs().mean()


def train_guide(
    args: GuideArgs, inputs: np.ndarray, targets: np.ndarray, latents: torch.Tensor, work: Path, factor: int = 8,
    styles: torch.Tensor | None = None,
) -> GuidedDecoder:
    """inputs [N, T, H, W, 3], targets [N, S, T, H, W, 3] (uint8), latents [N, S, T, C, h, w]; styles
    [S, D]: the decoder's style input per style (:func:`style_vectors`; None: no style input)."""
    torch.manual_seed(args.seed)
    n, s, t = targets.shape[:3]
    hh, ww = inputs.shape[2:4]
    style_dim = 0 if styles is None else int(styles.shape[1])
    guide = GuidedDecoder(int(latents.shape[3]), factor, args.hidden, style_dim, args.features)
    opt = torch.optim.Adam(guide.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * i / args.iters)))
    gen = torch.Generator().manual_seed(args.seed + 2)
    ckpt = work / "guide_checkpoint.pt"
    start = 0
    if ckpt.is_file():
        state = torch.load(str(ckpt), weights_only=False)
        if state["args"] != dataclasses.asdict(args):
            raise ValueError(f"{ckpt} was written with {state['args']}, not {dataclasses.asdict(args)}; "
                             f"delete it or use another work folder")
        guide.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["iter"])

    def save(it: int) -> None:
        work.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"args": dataclasses.asdict(args), "model": guide.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
                    "iter": it}, str(tmp))
        tmp.replace(ckpt)  # atomic: a crash never leaves half a checkpoint

    last_save = time.monotonic()
    bar = tqdm(range(start, args.iters), desc="guide: decoder", unit="it", initial=start, total=args.iters)
    ema = None
    cl = CROP // factor
    for it in bar:
        b = args.batch
        ci = torch.randint(0, n, (b,), generator=gen).tolist()
        si = torch.randint(0, s, (b,), generator=gen).tolist()
        ti = torch.randint(0, t, (b,), generator=gen).tolist()
        ys = (torch.randint(0, (hh - CROP) // factor + 1, (b,), generator=gen) * factor).tolist()
        xs = (torch.randint(0, (ww - CROP) // factor + 1, (b,), generator=gen) * factor).tolist()
        z = torch.stack([latents[c, j, k, :, y // factor : y // factor + cl, x // factor : x // factor + cl]
                         for c, j, k, y, x in zip(ci, si, ti, ys, xs, strict=True)]).float()  # [B, C, cl, cl]
        frame = to_tensor(np.stack([inputs[c, k, y : y + CROP, x : x + CROP]
                                    for c, k, y, x in zip(ci, ti, ys, xs, strict=True)]))  # [B, 3, CROP, CROP]
        target = to_tensor(np.stack([targets[c, j, k, y : y + CROP, x : x + CROP]
                                     for c, j, k, y, x in zip(ci, si, ti, ys, xs, strict=True)]))
        out = guide(z, frame, None if styles is None else styles[si])
        err = out - target
        loss = 0.5 * err.abs().mean() + 2.0 * (err * err).mean() + 0.5 * _diff_l1(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema:.4f}")
        if time.monotonic() - last_save > args.checkpoint_s:
            save(it + 1)
            last_save = time.monotonic()
    save(args.iters)
    return guide.eval()
