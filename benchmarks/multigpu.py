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
    WanTransformer3DModel(**cfg).save_pretrained(folder)  # type: ignore[operator]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="Wan-1.3B shape on CUDA devices (NCCL)")
    parser.add_argument("--gpus", default="1,2,4", help="GPU counts to run with --gpu")
    parser.add_argument("--stages", default="1,2", help="stage counts on CPU")
    parser.add_argument("--steps", type=int, default=1, help="denoising steps (stream batch), 1-4")
    parser.add_argument("--streams", type=int, default=2, help="independent streams (forwards in flight)")
    parser.add_argument("--frames", type=int, default=30, help="frames per stream")
    parser.add_argument("--budget-ms", type=float, default=250.0, help="deadline after submit")
    args = parser.parse_args()
    if not 1 <= args.steps <= 4:
        raise SystemExit(f"--steps must be in [1, 4], got {args.steps}")
    os.environ.setdefault("STREAMSERVE_STAGE_THREADS", "1")
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
