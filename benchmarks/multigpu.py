"""Pipeline-parallel benchmark: the stage ring against one process, in the same run.

A random-weight Wan transformer is saved to a temporary folder; every rank loads only its blocks from
it (as `video-pp` does). Frames are DiT forwards of ``--streams`` independent streams, each forward
carrying a stream batch of ``--steps`` blocks against the stream's rolling KV (the serving shape).

Measured, for each stage count N (``--stages`` on CPU, ``--gpus`` with ``--gpu``):

- **depth 1** (one forward in the ring at a time): per forward, stage compute seconds, round trip on
  rank 0, *transfer* = round trip - sum of stage compute (wire + (un)pickling + waits), and the
  ratio transfer / compute;
- **pipelined** (one forward per stream in flight, so N stages work on different streams at once):
  FPS (frames of all streams per second), bubble fraction = 1 - busy stage-seconds / (N x wall),
  time to first frame, and deadline misses (a frame whose submit -> result exceeds ``--budget-ms``);
- scaling efficiency FPS(N) / (N x FPS(1)).

CPU (default): a tiny DiT (dim 256, 8 blocks) at 128x128, gloo, N in {1, 2}. Every rank is a
process on the same cores, so on a 2-core machine the figures measure the mechanism (transfer cost,
bubbles), not a speed-up. GPU (``--gpu``): a Wan2.1-1.3B-shaped DiT (dim 1536, 30 blocks, 12 heads)
at 512x512 (1024 tokens per latent frame), bf16, NCCL, N in ``--gpus`` (default 1,2,4), ``--steps``
1-4 (StreamDiffusionV2: 64.5 FPS on 4 H100 for 1.3B).

**Server** (``--server``): the `video-pp` pipeline itself, stepped as the engine steps it (one chunk
per stream per step, VAE and sampler included), against the single-process `video` pipeline on the
same demo-format model: ``inflight 1`` (one forward in the ring at a time: the memory split, no
speed-up) and ``inflight N`` (each tick's stream-batch items and streams as N micro-batches in the
ring at once). FPS, bubble fraction (1 - stage compute / (N x tick wall)) and the largest
difference to the single-process output (it must stay <= 1 grey level).

**Memory** (``--memory``): peak RSS while loading, per rank, in fresh processes: rank 0 as before
(the whole model, then the other stages' blocks freed) and now (stage 0's blocks only), and rank 1.
Weights are stored fp32 and loaded as bf16 (as on a GPU), so every loaded tensor is a real copy
(fp32 on CPU would stay memory-mapped from the file and never show in RSS).

Run ``python benchmarks/multigpu.py`` (or ``streamserve bench multigpu``); prints markdown tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import WanTransformer3DModel

from streamserve.pipelines.video.model import tiny_wan_config
from streamserve.pipelines.video.parallel.ring import GroupSpec, StageGroup
from streamserve.pipelines.video.parallel.split import split_layers
from streamserve.pipelines.video.parallel.stage import PoolArgs, load_stage_dit


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    dim: int
    heads: int
    layers: int
    ffn: int
    channels: int
    text_dim: int
    size: int  # video pixels per side (latent = size / 8, tokens = (size / 16)^2)
    prompt_tokens: int


CPU_SHAPE = Shape("tiny DiT (dim 256, 8 blocks), 128x128", 256, 4, 8, 768, 16, 64, 128, 16)
GPU_SHAPE = Shape("Wan2.1-1.3B-shaped (dim 1536, 30 blocks), 512x512", 1536, 12, 30, 8960, 16, 4096, 512, 512)


def save_model(shape: Shape, folder: Path) -> Path:
    torch.manual_seed(0)
    cfg = tiny_wan_config(dim=shape.dim, heads=shape.heads, layers=shape.layers, ffn=shape.ffn,
                          channels=shape.channels, text_dim=shape.text_dim, freq_dim=256,
                          rope_max_seq_len=1024)
    WanTransformer3DModel(**cfg).save_pretrained(folder)  # type: ignore[operator,attr-defined]
    return folder


def run(shape: Shape, folder: Path, stages: int, devices: tuple[str, ...], dtype: torch.dtype, args: Any,
        depth: int) -> dict[str, float]:
    """Run ``args.frames`` frames of ``args.streams`` streams with up to ``depth`` forwards in flight."""
    dit = load_stage_dit(folder, range(shape.layers), devices[0], dtype)
    ranges = split_layers(shape.layers, stages)
    spec = GroupSpec(str(folder), tuple((r.start, r.stop) for r in ranges), devices, str(dtype), window=3,
                     backend="nccl" if devices[0].startswith("cuda") else "gloo", timeout_s=120)
    group = StageGroup(dit, spec)
    lat = shape.size // 8
    grid = (lat // 2, lat // 2)
    pool = PoolArgs(max(4, args.streams), 1, 3 + args.steps - 1, grid[0] * grid[1], "refresh", 50)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randn(1, shape.prompt_tokens, shape.dim, generator=gen).to(devices[0], dtype)
               for _ in range(args.streams)]
    sent: set[int] = set()
    latencies: list[float] = []
    first_frame = None
    t_start = time.perf_counter()
    inflight: list[float] = []
    busy = 0.0
    try:
        for f in range(args.frames):
            for s in range(args.streams):
                blocks = [f - k for k in range(args.steps) if f - k >= 0]
                x = torch.randn(len(blocks), shape.channels, 1, lat, lat, generator=gen).to(devices[0], dtype)
                meta = {"items": [(f"s{s}", b) for b in blocks], "sigma": [0.9 - 0.2 * k for k in range(len(blocks))],
                        "key": (lat, lat, args.steps - 1), "grid": grid, "pool": pool.__dict__,
                        "prompt_sessions": [] if s in sent else [f"s{s}"]}
                inflight.append(time.perf_counter())
                group.submit(meta, x, [] if s in sent else [prompts[s]])
                sent.add(s)
                while group.pending >= depth:
                    before = group.stats["stage_seconds"]
                    group.collect()
                    busy += group.stats["stage_seconds"] - before
                    done = time.perf_counter()
                    latencies.append(done - inflight.pop(0))
                    if first_frame is None:
                        first_frame = done - t_start
        while group.pending:
            before = group.stats["stage_seconds"]
            group.collect()
            busy += group.stats["stage_seconds"] - before
            latencies.append(time.perf_counter() - inflight.pop(0))
        if devices[0].startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - t_start
        n = group.stats["forwards"]
        compute = group.stats["stage_seconds"] / n
        rtt = group.stats["round_trip_seconds"] / n
        skip = min(len(latencies) // 5, 10)  # warm-up
        return {
            "fps": args.frames * args.streams / wall,
            "compute_ms": compute * 1e3,
            "rtt_ms": rtt * 1e3,
            "transfer_ms": max(0.0, rtt - compute) * 1e3 if depth == 1 else float("nan"),
            "bubble": 1 - busy / (stages * wall),
            "ttff_s": first_frame or float("nan"),
            "p50_ms": statistics.median(latencies[skip:]) * 1e3,
            "misses": sum(lat_s > args.budget_ms / 1e3 for lat_s in latencies[skip:]),
            "frames": len(latencies[skip:]),
        }
    finally:
        group.shutdown()


SERVER_CFG = dict(dim=256, heads=4, layers=8, ffn=768, latent_channels=16, vae_hidden=32, text_dim=64,
                  width=128, height=128, min_size=64, max_size=256, num_sinks=1, window=3)


MEMORY_CFG = {**SERVER_CFG, "dim": 1024, "heads": 8, "ffn": 4096}  # ~67 MB of fp32 weights per block


def save_demo_model(folder: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A demo-format folder (VAE, styles, transformer) with random weights, the CPU shape's DiT."""
    from streamserve.pipelines.video.demo_config import DemoConfig
    from streamserve.pipelines.video.model import CausalWanDiT
    from streamserve.pipelines.video.train_demo import save_demo
    from streamserve.pipelines.video.vae import TinyAutoencoder

    torch.manual_seed(0)
    cfg = DemoConfig(**(overrides or SERVER_CFG))  # type: ignore[arg-type]
    transformer = WanTransformer3DModel(**tiny_wan_config(dim=cfg.dim, heads=cfg.heads, layers=cfg.layers, ffn=cfg.ffn,
                                                          channels=cfg.latent_channels, text_dim=cfg.text_dim))
    ae = TinyAutoencoder(cfg.latent_channels, cfg.vae_factor, cfg.vae_hidden)
    ae.init_pca(torch.rand(4, 3, 64, 64) * 2 - 1)
    save_demo(folder, cfg, CausalWanDiT(transformer), ae, torch.randn(len(cfg.styles), cfg.style_tokens, cfg.text_dim))
    return folder


def run_server(folder: Path, stages: int, inflight: int, args: Any) -> tuple[dict[str, float], list[Any]]:
    """Step the pipeline (``stages`` 0: the single-process `video` pipeline) as the engine does."""
    import numpy as np

    from streamserve.core.frames import VideoFrame
    from streamserve.core.plan import Batch, WorkItem
    from streamserve.pipelines.video import VideoDiffusionPipeline
    from streamserve.pipelines.video.parallel.pipeline import PipelinedVideoPipeline
    from streamserve.pipelines.video.params import VideoParams

    pipe: Any = (VideoDiffusionPipeline("cpu", str(folder)) if stages == 0
                 else PipelinedVideoPipeline.from_folder(str(folder), stages=stages, inflight=inflight))
    params = VideoParams(steps=args.steps)
    sids = [f"s{k}" for k in range(args.streams)]
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (128, 128, 3), dtype=np.uint8) for _ in range(8)]
    outs: list[Any] = []
    try:
        for sid in sids:
            pipe.open_session(sid, params)
        warm = 3
        t0 = time.perf_counter()
        for f in range(args.frames + warm):
            if f == warm:
                t0 = time.perf_counter()
                if stages:
                    pipe.group.stats["stage_seconds"] = 0.0
                    pipe.tick_stats.update(wall_s=0.0)
            batch = Batch("video", tuple(WorkItem(sid, VideoFrame(imgs[(f + k) % 8], f, f / 30, f / 30 + 60.0))
                                         for k, sid in enumerate(sids)))
            for o in pipe.step(batch):
                assert o.error is None, o.error
                outs += [m.data for m in o.media]
        wall = time.perf_counter() - t0
        r = {"fps": args.frames * args.streams / wall}
        if stages:
            st = pipe.parallel_stats()
            r.update(bubble=st["bubble"], max_in_flight=st["max_in_flight"])
        return r, outs
    finally:
        for sid in sids:
            pipe.close_session(sid)
        if stages:
            pipe.close()


def main_server(args: Any) -> None:
    import numpy as np

    torch.set_num_threads(1)
    counts = [int(c) for c in args.stages.split(",") if int(c) > 1]
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_demo_model(Path(tmp) / "model")
        print(f"## server: `video-pp` vs `video`, tiny DiT (dim 256, 8 blocks), 128x128, {args.streams} stream(s), "
              f"{args.steps} step(s) (stream batch), {args.frames} chunks each\n")
        print("| pipeline | stages | inflight | FPS | vs single process | bubble | max in flight | max diff |")
        print("|---|---|---|---|---|---|---|---|")
        ref, ref_out = run_server(folder, 0, 1, args)
        print(f"| video | 1 | - | {ref['fps']:.1f} | 1.00 | - | - | - |", flush=True)
        for n in counts:
            for inflight in (1, n):
                r, out = run_server(folder, n, inflight, args)
                diff = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(ref_out, out, strict=True))
                print(f"| video-pp | {n} | {inflight} | {r['fps']:.1f} | {r['fps'] / ref['fps']:.2f} | "
                      f"{r['bubble']:.2f} | {r['max_in_flight']} | {diff} |", flush=True)


def _status_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident of this process image) in MB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _load_peak(how: str, folder: str, stages: int, queue: Any) -> None:
    """Child process: load the way ``how`` says; report (peak RSS increase, resident after) in MB."""
    from streamserve.pipelines.video.checkpoint import load_model
    from streamserve.pipelines.video.parallel.loading import load_rank0, transformer_layers
    from streamserve.pipelines.video.parallel.stage import drop_other_blocks

    torch.set_num_threads(1)
    base = _status_mb("VmRSS")
    ranges = split_layers(transformer_layers(Path(folder)), stages)
    if how == "rank 0, before (full model, then free)":
        dit = load_model(folder, "cpu", torch.bfloat16).dit
        drop_other_blocks(dit, ranges[0])
    elif how == "rank 0, now (stage 0 only)":
        dit = load_rank0(folder, "cpu", torch.bfloat16, stages)[0].dit
    else:  # rank 1
        dit = load_stage_dit(Path(folder) / "transformer", ranges[1], "cpu", torch.bfloat16)
    import gc

    gc.collect()
    held = sum(p.numel() * p.element_size() for p in dit.parameters() if p.device.type != "meta") / 2**20
    queue.put((_status_mb("VmHWM") - base, _status_mb("VmRSS") - base, held))


def main_memory(stages: int) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_demo_model(Path(tmp) / "model", MEMORY_CFG)
        size = sum(f.stat().st_size for f in (folder / "transformer").glob("*.safetensors")) / 2**20
        print(f"## peak memory per rank while loading, {stages} stages: demo-format DiT dim 1024, 8 blocks, "
              f"{size:.0f} MB of fp32 weights loaded as bf16 (RSS above the process's baseline, MB)\n")
        print("| rank, loading | peak RSS increase MB | resident after MB | DiT weights held MB |")
        print("|---|---|---|---|")
        for how in ("rank 0, before (full model, then free)", "rank 0, now (stage 0 only)", "rank 1 (its blocks)"):
            q = ctx.Queue()
            p = ctx.Process(target=_load_peak, args=(how, str(folder), stages, q))
            p.start()
            peak, after, held = q.get(timeout=600)
            p.join(60)
            print(f"| {how} | {peak:.0f} | {after:.0f} | {held:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="Wan-1.3B shape on CUDA devices (NCCL)")
    parser.add_argument("--gpus", default="1,2,4", help="GPU counts to run with --gpu")
    parser.add_argument("--stages", default="1,2", help="stage counts on CPU")
    parser.add_argument("--steps", type=int, default=1, help="denoising steps (stream batch), 1-4")
    parser.add_argument("--streams", type=int, default=2, help="independent streams (forwards in flight)")
    parser.add_argument("--frames", type=int, default=30, help="frames per stream")
    parser.add_argument("--budget-ms", type=float, default=250.0, help="deadline after submit")
    parser.add_argument("--server", action="store_true", help="step the video-pp pipeline itself (see above)")
    parser.add_argument("--memory", action="store_true", help="peak memory per rank while loading (CPU)")
    args = parser.parse_args()
    if not 1 <= args.steps <= 4:
        raise SystemExit(f"--steps must be in [1, 4], got {args.steps}")
    os.environ.setdefault("STREAMSERVE_STAGE_THREADS", "1")
    if args.server:
        main_server(args)
        return
    if args.memory:
        main_memory(max(2, int(args.stages.split(",")[-1])))
        return
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs CUDA")
        shape, dtype = GPU_SHAPE, torch.bfloat16
        counts = [int(c) for c in args.gpus.split(",") if int(c) <= torch.cuda.device_count()]
        device_sets = {n: tuple(f"cuda:{i}" for i in range(n)) for n in counts}
    else:
        torch.set_num_threads(1)
        shape, dtype = CPU_SHAPE, torch.float32
        counts = [int(c) for c in args.stages.split(",")]
        device_sets = {n: ("cpu",) * n for n in counts}
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model(shape, Path(tmp) / "transformer")
        print(f"## {shape.name}, {args.streams} streams, {args.steps} step(s), {args.frames} frames each\n")
        print("| stages | mode | FPS | stage compute ms/fwd | round trip ms | transfer ms | transfer/compute "
              "| bubble | TTFF s | p50 ms | misses | scaling eff. |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        fps1 = None
        for n in counts:
            for mode, depth in (("depth 1", 1), ("pipelined", max(1, args.streams))):
                r = run(shape, folder, n, device_sets[n], dtype, args, depth)
                if n == counts[0] and mode == "pipelined":
                    fps1 = r["fps"] if n == 1 else None
                eff = f"{r['fps'] / (n * fps1):.2f}" if fps1 and mode == "pipelined" else "-"
                ratio = r["transfer_ms"] / r["compute_ms"] if depth == 1 else float("nan")
                print(f"| {n} | {mode} | {r['fps']:.1f} | {r['compute_ms']:.1f} | {r['rtt_ms']:.1f} | "
                      f"{r['transfer_ms']:.1f} | {ratio:.2f} | {r['bubble']:.2f} | {r['ttff_s']:.2f} | "
                      f"{r['p50_ms']:.1f} | {r['misses']}/{r['frames']} | {eff} |", flush=True)


if __name__ == "__main__":
    main()
