"""Train the embedded demo model: live stylization of camera video into the named styles.

    python -m streamserve.pipelines.video.train_demo [--out DIR] [--iters N] [--threads 2] [--guide-threads 1]

Everything is made locally (see :mod:`.data`): scikit-image photos seen through a moving virtual
camera, with moving shapes and sensor noise; each style's target is its classical filter
(:mod:`.styles`) applied per frame. Stages, each with a progress bar, all from a fixed seed:

1. **data** -- clips of ``FRAMES`` frames at 256x256 and their targets for every style (the filter
   set :data:`DIT_TARGETS` for stages 2-4, :data:`GUIDE_TARGETS` for stage 5);
2. **autoencoder** -- PCA initialisation, then a short end-to-end fit (pixels -> 16x32x32 latents);
3. **encode** -- every input and target frame to latents, once;
4. **DiT** -- the causal Wan-architecture DiT learns ``noisy input latent -> target latent`` for each
   style (a learned style embedding is its prompt), with per-frame noise levels and the block-causal
   sink+window mask the rolling cache reproduces when serving;
5. **guide** -- the guided decoder (:mod:`.guided`, :mod:`.train_guide`) learns ``(DiT latent, camera
   frame, style) -> target`` on the latents the trained DiT produces when serving;
6. **save** -- the demo-format folder (:mod:`.demo_config`), then a held-out evaluation.

Resumable: each finished stage is kept in ``--work`` (default ``<out>.work``: the clips and targets, the
autoencoder + DiT folder, the DiT latents, the decoder's checkpoint every few minutes); a rerun
skips what is there. ``--from-weights DIR`` takes the autoencoder, DiT and styles of an existing
demo folder and runs only the guide stage.

On 2 idle CPU cores stages 1-4 took 19 minutes (two threads); the guide stage (one thread) is timed in
docs/video.md. On a busy machine two torch threads spin-wait: use ``--threads 1`` there.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file
from tqdm import tqdm

from .data import TRAIN_IMAGES, Motion, make_clip
from .demo_config import WEIGHTS_DIR, DemoConfig
from .model import CausalWanDiT, parameter_count, tiny_wan_config
from .sampler import add_noise, predict_x0
from .styles import apply_style
from .vae import TinyAutoencoder

FRAMES = 5  # frames per training clip: sink + window + two more
SIGMA_RANGE = (0.03, 0.5)  # noise levels trained for (serving strength <= ~0.5)
STYLE_WEIGHTS = {"watercolor": 1.5, "sketch": 1.5, "cartoon": 1.5, "sepia": 0.5, "noir": 0.5, "thermal": 1.0}
"""How often each style is drawn: the colour maps are learnt quickly, the spatial filters need more."""


@dataclasses.dataclass
class TrainArgs:
    out: Path = WEIGHTS_DIR
    seed: int = 0
    clips: int = 150
    ae_iters: int = 2000
    iters: int = 4000
    lr: float = 1.5e-3
    batch_tokens: int = 2560  # tokens per DiT iteration
    threads: int = 2  # stages 2-4 (the committed DiT was trained with 2)
    device: str = "cpu"
    guide_iters: int = 12000
    guide_clips: int = 150  # the first clips of the data train the guided decoder
    guide_threads: int = 1  # the guide stage (what the committed decoder was trained with)
    work: Path | None = None
    from_weights: Path | None = None


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """[..., H, W, 3] uint8 -> [..., 3, H, W] float in [-1, 1]."""
    x = torch.from_numpy(frames).float().div_(127.5).sub_(1.0)
    return x.movedim(-1, -3)


DIT_TARGETS = "v1"
"""Filter set the autoencoder and DiT stages learn (:data:`.styles.FILTER_VERSIONS`). The committed
DiT was trained on the first set; the guided decoder, which is told the style and sees the camera
frame, learns the current targets (``v2``) from its latents (see docs/video.md, "Quality")."""
GUIDE_TARGETS = "v2"


def build_inputs(args: TrainArgs) -> np.ndarray:
    """Input clips [N, T, H, W, 3] (uint8): the first clips are the same whatever N."""
    rng = np.random.default_rng(args.seed)
    n = args.clips
    inputs = np.empty((n, FRAMES, 256, 256, 3), np.uint8)
    motions: tuple[Motion, ...] = ("static", "slow", "fast", "mixed")
    for i in tqdm(range(n), desc="data: clips", unit="clip"):
        image = TRAIN_IMAGES[i % len(TRAIN_IMAGES)]
        inputs[i] = make_clip(image, FRAMES, (256, 256), seed=int(rng.integers(1 << 31)), motion=motions[i % 4],
                              shapes=int(rng.integers(0, 4)), noise=float(rng.uniform(0, 3)), jitter=i % 3 != 0)
    return inputs


def build_targets(inputs: np.ndarray, styles: tuple[str, ...], version: str) -> np.ndarray:
    """Each style's filter target of every input frame: [N, S, T, H, W, 3] (uint8)."""
    n, t = inputs.shape[:2]
    targets = np.empty((n, len(styles), *inputs.shape[1:]), np.uint8)
    for i in tqdm(range(n), desc=f"data: {version} targets (clips x styles)", unit="clip"):
        for j, style in enumerate(styles):
            targets[i, j] = np.stack([apply_style(style, inputs[i, k], version) for k in range(t)])
    return targets


def cached(path: Path, make: Callable[[], np.ndarray]) -> np.ndarray:
    """``make()``, kept in ``path`` (.npy) so a rerun resumes."""
    if path.is_file():
        return np.load(path)
    arr = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)  # atomic: a crash never leaves half a file
    return arr


def train_autoencoder(args: TrainArgs, cfg: DemoConfig, inputs: np.ndarray, targets: np.ndarray) -> TinyAutoencoder:
    gen = torch.Generator().manual_seed(args.seed)
    ae = TinyAutoencoder(cfg.latent_channels, cfg.vae_factor, cfg.vae_hidden)
    # PCA over inputs and targets: the latent space must hold both.
    pick = torch.randperm(inputs.shape[0], generator=gen)[:48]
    sample = np.concatenate([inputs[pick, 0], targets[pick, :, 0].reshape(-1, 256, 256, 3)])
    ae.init_pca(to_tensor(sample))
    ae.to(args.device)
    opt = torch.optim.Adam(ae.parameters(), lr=2e-3)
    flat_in = inputs.reshape(-1, 256, 256, 3)
    flat_tg = targets.reshape(-1, 256, 256, 3)
    bar = tqdm(range(args.ae_iters), desc="autoencoder", unit="it")
    for it in bar:
        src = flat_in if it % 2 == 0 else flat_tg
        idx = torch.randint(0, src.shape[0], (8,), generator=gen).numpy()
        y0, x0 = (int(v) * 8 for v in torch.randint(0, 17, (2,), generator=gen))
        x = to_tensor(src[idx, y0 : y0 + 128, x0 : x0 + 128]).to(args.device)
        loss = F.mse_loss(ae.decode(ae.encode(x)), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 20 == 0:
            bar.set_postfix(psnr=f"{10 * math.log10(4 / max(loss.item(), 1e-10)):.1f}dB")
    return ae.eval()


@torch.no_grad()
def encode_all(ae: TinyAutoencoder, frames: np.ndarray, device: str) -> torch.Tensor:
    """[..., H, W, 3] uint8 -> latents [..., C, h, w] (float16 to save memory)."""
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = []
    for i in tqdm(range(0, flat.shape[0], 64), desc="encode", unit="batch"):
        out.append(ae.encode(to_tensor(flat[i : i + 64]).to(device)).half().cpu())
    z = torch.cat(out)
    return z.reshape(*frames.shape[:-3], *z.shape[1:])


def channel_weights(ae: TinyAutoencoder) -> torch.Tensor:
    """Loss weight per latent channel: half uniform, half by its pixel energy (PCA scale squared)."""
    s2 = ae.scale.detach().float() ** 2
    return 0.5 + 0.5 * s2 / s2.mean()


def make_batch(
    z_in: torch.Tensor, z_tg: torch.Tensor, gen: torch.Generator, batch_tokens: int, cfg: DemoConfig,
) -> dict[str, torch.Tensor]:
    """One training batch: noisy latents, per-frame sigmas, style ids, targets and RoPE positions.

    z_in: [N, T, C, H, W]; z_tg: [N, S, T, C, H, W]. Most batches are 16x16-latent crops (cheap), one in
    four is full size so long-range relative positions are seen too.
    """
    n, t, c, hh, ww = z_in.shape
    full = bool(torch.rand((), generator=gen) < 0.25)
    size = hh if full else 16
    tokens_per_clip = t * (size // 2) ** 2
    b = max(1, batch_tokens // tokens_per_clip)
    clip = torch.randint(0, n, (b,), generator=gen)
    weights = torch.tensor([STYLE_WEIGHTS.get(s, 1.0) for s in cfg.styles])
    style = torch.multinomial(weights, b, replacement=True, generator=gen)
    y0 = torch.randint(0, hh - size + 1, (b,), generator=gen)
    x0 = torch.randint(0, ww - size + 1, (b,), generator=gen)
    zi = torch.stack([z_in[clip[i], :, :, y0[i] : y0[i] + size, x0[i] : x0[i] + size] for i in range(b)]).float()
    zt = torch.stack([z_tg[clip[i], style[i], :, :, y0[i] : y0[i] + size, x0[i] : x0[i] + size]
                      for i in range(b)]).float()  # [B, T, C, s, s]
    lo, hi = SIGMA_RANGE
    sig = lo + (hi - lo) * torch.rand(b, t, generator=gen)
    around_default = torch.rand(b, 1, generator=gen) < 0.5  # half the clips near the serving default
    sig = torch.where(around_default, cfg.strength + 0.08 * (2 * torch.rand(b, t, generator=gen) - 1), sig)
    same = torch.rand(b, generator=gen) < 0.5  # one sigma for the clip (a fixed serving schedule)
    sig = torch.where(same[:, None], sig[:, :1].expand(b, t), sig)
    noise = torch.randn(zi.shape, generator=gen)
    fixed = torch.rand(b, generator=gen) < 0.5  # the same noise every frame (fixed-noise serving)
    noise = torch.where(fixed[:, None, None, None, None], noise[:, :1].expand_as(noise), noise)
    # Later denoising steps start from the model's own estimate: near the target, a bit of the input.
    later = torch.rand(b, t, generator=gen) < 0.35
    lam = 0.3 * torch.rand(b, t, 1, 1, 1, generator=gen)
    start = torch.where(later[..., None, None, None], zt + lam * (zi - zt), zi)
    x = add_noise(start, noise, sig.reshape(b, t, 1, 1, 1))
    gap = torch.randint(0, 40, (), generator=gen) if torch.rand((), generator=gen) < 0.5 else torch.tensor(0)
    pos = torch.arange(t)
    pos = torch.where(pos >= cfg.num_sinks, pos + gap, pos)  # sinks first, then a gap, like the cache
    return {"x": x.transpose(1, 2), "sigma": sig, "style": style, "target": zt.transpose(1, 2), "pos": pos}


def train_dit(
    args: TrainArgs, cfg: DemoConfig, z_in: torch.Tensor, z_tg: torch.Tensor, weights: torch.Tensor,
) -> tuple[CausalWanDiT, torch.Tensor]:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    transformer = WanTransformer3DModel(**tiny_wan_config(
        dim=cfg.dim, heads=cfg.heads, layers=cfg.layers, ffn=cfg.ffn, channels=cfg.latent_channels,
        text_dim=cfg.text_dim))
    dit = CausalWanDiT(transformer).to(args.device).train()
    styles = torch.nn.Parameter(torch.randn(len(cfg.styles), cfg.style_tokens, cfg.text_dim, device=args.device))
    opt = torch.optim.AdamW([*dit.parameters(), styles], lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = 200
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(i, args.iters) / args.iters))))
    w = weights.to(args.device)[None, :, None, None, None]
    bar = tqdm(range(args.iters), desc=f"DiT ({parameter_count(dit) / 1e6:.2f}M params)", unit="it")
    ema = None
    for _ in bar:
        batch = {k: v.to(args.device) for k, v in make_batch(z_in, z_tg, gen, args.batch_tokens, cfg).items()}
        states = dit.embed_prompt(styles[batch["style"]])
        v = dit.forward_clip(batch["x"], batch["sigma"] * 1000.0, states, frame_positions=batch["pos"],
                             num_sinks=cfg.num_sinks, window=cfg.window)
        sig = batch["sigma"][:, None, :, None, None]
        x0 = predict_x0(batch["x"], v, sig)
        loss = ((x0 - batch["target"]) ** 2 * w).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*dit.parameters(), styles], 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema:.4f}")
    return dit.eval(), styles.detach()


def save_demo(out: Path, cfg: DemoConfig, dit: CausalWanDiT, ae: TinyAutoencoder, styles: torch.Tensor) -> None:
    out.mkdir(parents=True, exist_ok=True)
    dit.transformer.to("cpu").save_pretrained(out / "transformer", safe_serialization=True)
    ae.to("cpu").save(out / "vae")
    save_file({"embeddings": styles.cpu().contiguous()}, str(out / "styles.safetensors"))
    (out / "streamserve.json").write_text(cfg.to_json() + "\n")


def stages_1_to_4(args: TrainArgs, cfg: DemoConfig, work: Path) -> tuple[np.ndarray, Path]:
    """Data, autoencoder, encode, DiT -- or what ``work`` already holds. Returns the inputs and the demo
    folder holding the autoencoder, DiT and styles."""
    n = min(args.clips, args.guide_clips) if args.from_weights else args.clips
    inputs = cached(work / f"inputs_{n}.npy", lambda: build_inputs(dataclasses.replace(args, clips=n)))
    stage = args.from_weights or work / "dit"
    if not (stage / "streamserve.json").is_file():
        targets = cached(work / f"targets_{DIT_TARGETS}.npy", lambda: build_targets(inputs, cfg.styles, DIT_TARGETS))
        torch.set_num_threads(args.threads)
        ae = train_autoencoder(args, cfg, inputs, targets)
        z_in, z_tg = encode_all(ae, inputs, args.device), encode_all(ae, targets, args.device)
        del targets
        t0 = time.perf_counter()
        dit, styles = train_dit(args, cfg, z_in, z_tg, channel_weights(ae).cpu())
        extra = {"dit_minutes": round((time.perf_counter() - t0) / 60, 1), "iters": args.iters, "seed": args.seed,
                 "dit_targets": DIT_TARGETS}
        save_demo(stage, dataclasses.replace(cfg, extra=extra), dit, ae, styles)
    return inputs, stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = TrainArgs()
    parser.add_argument("--out", type=Path, default=defaults.out, help="model folder to write")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--clips", type=int, default=defaults.clips, help="training clips")
    parser.add_argument("--ae-iters", type=int, default=defaults.ae_iters)
    parser.add_argument("--iters", type=int, default=defaults.iters, help="DiT iterations")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--threads", type=int, default=defaults.threads, help="CPU threads (autoencoder, DiT)")
    parser.add_argument("--guide-threads", type=int, default=defaults.guide_threads, help="CPU threads (guide)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--guide-iters", type=int, default=defaults.guide_iters, help="guided decoder iterations")
    parser.add_argument("--guide-clips", type=int, default=defaults.guide_clips, help="clips that train the guide")
    parser.add_argument("--work", type=Path, default=None, help="stage folder for resuming (default <out>.work)")
    parser.add_argument("--from-weights", type=Path, default=None,
                        help="take the autoencoder, DiT and styles of this demo folder; train only the guide")
    parser.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    ns = parser.parse_args(argv)
    args = TrainArgs(out=ns.out, seed=ns.seed, clips=ns.clips, ae_iters=ns.ae_iters, iters=ns.iters, lr=ns.lr,
                     threads=ns.threads, device=ns.device, guide_iters=ns.guide_iters, guide_clips=ns.guide_clips,
                     from_weights=ns.from_weights, guide_threads=ns.guide_threads)
    work = ns.work or args.out.with_name(args.out.name + ".work")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    inputs, stage = stages_1_to_4(args, DemoConfig(), work)
    torch.set_num_threads(args.guide_threads)
    from .checkpoint import load_demo
    from .train_guide import GuideArgs, predict_latents, style_vectors, train_guide

    loaded = load_demo(stage, "cpu", torch.float32)
    cfg = DemoConfig.from_json((stage / "streamserve.json").read_text())
    ae = loaded.vae.model  # type: ignore[attr-defined]
    styles = loaded.prompts.embeddings  # type: ignore[attr-defined]
    lat_path = work / "latents.pt"
    inputs = inputs[: args.guide_clips]
    targets = cached(work / f"targets_{GUIDE_TARGETS}_{len(inputs)}.npy",
                     functools.partial(build_targets, inputs, cfg.styles, GUIDE_TARGETS))
    if lat_path.is_file():
        latents = torch.load(str(lat_path))
    else:
        latents = predict_latents(loaded.dit, ae, styles, inputs, cfg, args.seed)
        work.mkdir(parents=True, exist_ok=True)
        torch.save(latents, str(lat_path))
    guide = train_guide(GuideArgs(iters=args.guide_iters, seed=args.seed), inputs, targets, latents, work,
                        factor=ae.factor, styles=style_vectors(loaded.dit, styles))
    n_guide = len(inputs)
    del inputs, targets, latents
    minutes = (time.perf_counter() - t0) / 60
    # --from-weights: the autoencoder and DiT were trained elsewhere; keep how they were
    dit_threads = cfg.extra.get("train_threads", args.threads) if args.from_weights else args.threads
    extra = {**cfg.extra, "guide_minutes": round(minutes, 1), "guide_iters": args.guide_iters,
             "train_device": args.device, "train_threads": dit_threads, "guide_threads": args.guide_threads,
             "guide_targets": GUIDE_TARGETS, "guide_clips": n_guide, "seed": args.seed}
    cfg = dataclasses.replace(cfg, extra=extra)
    save_demo(args.out, cfg, loaded.dit, ae, styles)
    guide.save(args.out / "guide")
    print(f"saved {args.out} after {minutes:.1f} min")
    if not ns.no_eval:
        from .evaluate import evaluate_folder

        report = evaluate_folder(args.out, device=args.device)
        cfg = dataclasses.replace(cfg, extra={**cfg.extra, "eval": report})
        (args.out / "streamserve.json").write_text(cfg.to_json() + "\n")
        for line in report.get("lines", []):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
