"""SLA vs dense attention: speed-up ratios measured in one run.

GPU mode (default when CUDA is present): the Triton SLA path vs ``scaled_dot_product_attention``
forced to the flash backend, forward and forward+backward, in bf16, at

* ``paper``:  B=2, H=16, L=32760, D=128 (the SLA paper's kernel benchmark shape);
* ``wan``:    B=1, H=12, L=32760, D=128 (Wan2.1-1.3B, 21 latent frames x 1,560 tokens);
* ``stream``: B=1, H=12, one 1,560-token frame against 3 sink + 3 window frames (Lk=9,360).

CPU mode (``--cpu``, or no CUDA): the interpreter-free PyTorch reference vs dense SDPA at the
streaming shape (fewer heads by default: the reference materialises [H, Lq, Lk] score maps).

Dry run (``--dry-run``): the same three shapes scaled down (H=1, D=64, 40-token "frames", L=200),
forward and forward+backward, fp32 on CPU, one timed run each, through the Triton kernels when
``TRITON_INTERPRET=1`` is set (else the reference). It checks that the script and the kernels run
end to end (``benchmarks/gpu_check.sh --dry-run``); its times mean nothing.

Usage::

    python benchmarks/attention.py                       # GPU: all shapes, kh 0.05/0.1/0.2
    python benchmarks/attention.py --shapes stream --kh 0.05 --no-backward
    python benchmarks/attention.py --cpu --heads 2       # CPU reference vs SDPA
    python benchmarks/attention.py --json out.json       # also write the rows as JSON (after each row)
    TRITON_INTERPRET=1 python benchmarks/attention.py --dry-run   # tiny shapes, CPU, a few seconds

Numbers are medians over ``--iters`` timed runs after ``--warmup`` runs; ratios are dense/SLA.
Dense SDPA is timed once per shape and pass and shared by that shape's kh rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from streamserve.kernels import sla_attention
from streamserve.kernels.sla import interpreter_active

FRAME = 1560  # Wan2.1 480p: 30 x 52 latent patches per frame


@dataclass(frozen=True)
class Shape:
    name: str
    b: int
    h: int
    lq: int
    lk: int
    d: int = 128


SHAPES = {
    "paper": Shape("paper B2 H16 L32760", 2, 16, 32760, 32760),
    "wan": Shape("wan1.3B H12 L32760", 1, 12, 21 * FRAME, 21 * FRAME),
    "stream": Shape("stream 1 frame vs 3+3 frames", 1, 12, FRAME, 6 * FRAME),
}
DRY_FRAME = 40  # not a multiple of the 64-token block, like 1,560: the last block is short
DRY_SHAPES = {
    "paper": Shape("paper (dry run) B2 H1 L200 D64", 2, 1, 5 * DRY_FRAME, 5 * DRY_FRAME, 64),
    "wan": Shape("wan (dry run) H1 L200 D64", 1, 1, 5 * DRY_FRAME, 5 * DRY_FRAME, 64),
    "stream": Shape("stream (dry run) 1 frame vs 3+3 frames D64", 1, 1, DRY_FRAME, 6 * DRY_FRAME, 64),
}


@dataclass
class Row:
    shape: str
    kh: float
    kl: float
    mode: str  # "fwd" or "fwd+bwd"
    dense_ms: float
    sla_ms: float
    sla_sparse_only_ms: float
    speedup: float
    speedup_sparse_only: float
    critical_fraction: float
    device: str
    impl: str
    dtype: str


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], dev: torch.device, warmup: int, iters: int) -> float:
    """Median wall time of ``fn`` in milliseconds (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    _sync(dev)
    times = []
    for _ in range(iters):
        if dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def flash_context(dev: torch.device) -> AbstractContextManager[object]:
    if dev.type != "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def _inputs(shape: Shape, dev: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(shape.b, shape.h, shape.lq, shape.d, device=dev, dtype=dtype, generator=g)
    k = torch.randn(shape.b, shape.h, shape.lk, shape.d, device=dev, dtype=dtype, generator=g)
    v = torch.randn(shape.b, shape.h, shape.lk, shape.d, device=dev, dtype=dtype, generator=g)
    return q, k, v


def _timed(f: Callable[[], torch.Tensor], qkv: tuple[torch.Tensor, ...], with_grad: bool) -> Callable[[], None]:
    """``f`` as a timed callable: forward under no_grad, or forward + backward through q, k, v."""
    if not with_grad:
        def fwd() -> None:
            with torch.no_grad():
                f()
        return fwd

    def fwd_bwd() -> None:
        for x in qkv:
            x.requires_grad_(True)
        f().sum().backward()
        for x in qkv:
            x.grad = None
            x.requires_grad_(False)
    return fwd_bwd


def bench_shape(shape: Shape, khs: list[float], kl: float, backward: bool, dev: torch.device, dtype: torch.dtype,
                impl: str, warmup: int, iters: int, on_row: Callable[[Row], None] | None = None) -> list[Row]:
    """Rows for every kh (and pass) of one shape; dense SDPA is timed once per pass and shared."""
    q, k, v = _inputs(shape, dev, dtype)
    proj = torch.nn.Linear(shape.d, shape.d, device=dev)  # the linear branch runs (zero init skips nothing)

    def dense() -> torch.Tensor:
        with flash_context(dev):
            return F.scaled_dot_product_attention(q, k, v)

    rows = []
    modes: list[tuple[str, bool]] = [("fwd", False)] + ([("fwd+bwd", True)] if backward else [])
    for mode, with_grad in modes:
        dense_ms = time_ms(_timed(dense, (q, k, v), with_grad), dev, warmup, iters)
        for kh in khs:
            _, bm = sla_attention(q, k, v, kh=kh, kl=kl, impl=impl, return_block_map=True)  # type: ignore[arg-type]

            def sla(kh: float = kh) -> torch.Tensor:
                out = sla_attention(q, k, v, kh=kh, kl=kl, proj=proj, impl=impl)  # type: ignore[arg-type]
                assert isinstance(out, torch.Tensor)
                return out

            def sla_sparse(kh: float = kh) -> torch.Tensor:
                out = sla_attention(q, k, v, kh=kh, kl=kl, proj=None, impl=impl)  # type: ignore[arg-type]
                assert isinstance(out, torch.Tensor)
                return out

            sla_ms = time_ms(_timed(sla, (q, k, v), with_grad), dev, warmup, iters)
            sparse_ms = time_ms(_timed(sla_sparse, (q, k, v), with_grad), dev, warmup, iters)
            row = Row(shape.name, kh, kl, mode, dense_ms, sla_ms, sparse_ms, dense_ms / sla_ms,
                      dense_ms / sparse_ms, bm.sparsity(), _device_name(dev), impl, str(dtype).removeprefix("torch."))
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def _device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def markdown(rows: list[Row]) -> str:
    head = ("| shape | kh | kl | pass | dense ms | SLA ms | speed-up | SLA sparse-only ms | speed-up (sparse-only) "
            "| critical pairs |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r.shape} | {r.kh} | {r.kl} | {r.mode} | {r.dense_ms:.2f} | {r.sla_ms:.2f} | "
                     f"{r.speedup:.2f}x | {r.sla_sparse_only_ms:.2f} | {r.speedup_sparse_only:.2f}x | "
                     f"{100 * r.critical_fraction:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["paper", "wan", "stream"])
    p.add_argument("--kh", nargs="+", type=float, default=[0.05, 0.1, 0.2])
    p.add_argument("--kl", type=float, default=0.10)
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                   help="default: bf16 on a GPU, fp32 on CPU")
    p.add_argument("--cpu", action="store_true", help="CPU mode: PyTorch reference vs dense SDPA")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny shapes on CPU, fp32, one run each (Triton under TRITON_INTERPRET=1)")
    p.add_argument("--heads", type=int, default=None, help="override H (CPU default: 2)")
    p.add_argument("--no-backward", dest="backward", action="store_false")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--json", default=None, help="write the rows to this JSON file (rewritten after each row)")
    args = p.parse_args(argv)

    dry = args.dry_run
    cpu = dry or args.cpu or not torch.cuda.is_available()
    dev = torch.device("cpu" if cpu else "cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("fp32" if cpu else "bf16")]
    if dry:
        impl = "triton" if interpreter_active() else "reference"
    else:
        impl = "reference" if cpu else "triton"
    shapes = ["stream"] if cpu and not dry and args.shapes == ["paper", "wan", "stream"] else args.shapes
    warmup = args.warmup if args.warmup is not None else (0 if dry else 1 if cpu else 5)
    iters = args.iters if args.iters is not None else (1 if dry else 3 if cpu else 20)
    heads = args.heads if args.heads is not None else (2 if cpu and not dry else None)
    backward = args.backward and (dry or not cpu)  # the CPU reference is timed forward only
    table = DRY_SHAPES if dry else SHAPES

    rows: list[Row] = []

    def on_row(r: Row) -> None:  # progress on stderr; the JSON is rewritten so a killed run keeps its rows
        rows.append(r)
        print(f"{r.shape} kh={r.kh} {r.mode}: {r.speedup:.2f}x (dense {r.dense_ms:.2f} ms, SLA {r.sla_ms:.2f} ms)",
              file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump([asdict(x) for x in rows], f, indent=2)

    print(f"device: {_device_name(dev)}; impl: {impl}; dtype: {dtype}; torch {torch.__version__}", flush=True)
    for name in shapes:
        shape = table[name]
        if heads is not None:
            shape = Shape(f"{shape.name} (H={heads})", shape.b, heads, shape.lq, shape.lk, shape.d)
        bench_shape(shape, args.kh, args.kl, backward, dev, dtype, impl, warmup, iters, on_row)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
