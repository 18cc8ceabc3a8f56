"""Shared memory, registers and stack of the SLA kernels compiled for sm_90, without a GPU.

Triton compiles ahead of time for a named target; the ``cuobjdump`` that Triton's NVIDIA backend
ships reads the resources of the resulting cubin. This prints one line per kernel and launch
configuration (docs/gpu.md has the table for Triton 3.9), so a change to the kernels or to their
launch options can be checked against sm_90's limits (227 KB of shared memory per block, 255
registers per thread) on a CPU-only machine. Several seconds per configuration.

    python benchmarks/sla_resources.py                       # the default configurations
    python benchmarks/sla_resources.py --warps 8 --stages 2  # override the launch options
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from streamserve.kernels import sla

CONSTEXPRS = ("BLOCK_Q", "BLOCK_K", "D", "CAUSAL", "PRECISION")
TENSORS = ("Q", "K", "V", "Out", "DO", "DQ", "DK", "DV")
KERNELS = {"forward": sla._sla_fwd_kernel, "dQ": sla._sla_bwd_dq_kernel, "dK/dV": sla._sla_bwd_dkdv_kernel}
CONFIGS = [("bf16", 128, 64, 64), ("bf16", 64, 64, 64), ("bf16", 128, 128, 64), ("bf16", 128, 128, 128),
           ("fp16", 64, 128, 128), ("fp32", 128, 64, 64)]


def signature(kernel: Any, dtype: str) -> dict[str, str]:
    sig = {}
    for name in kernel.arg_names:
        if name in CONSTEXPRS:
            sig[name] = "constexpr"
        elif name in TENSORS:
            sig[name] = f"*{dtype}"
        elif name in ("LSE", "DELTA"):
            sig[name] = "*fp32"
        elif name in ("LUT", "CNT", "KV_LUT", "KV_CNT"):
            sig[name] = "*i32"
        elif name in ("qk_scale", "sm_scale"):
            sig[name] = "fp32"
        else:  # strides, sizes, offsets
            sig[name] = "i32"
    return sig


def resources(kernel: Any, dtype: str, d: int, block_q: int, block_k: int, warps: int, stages: int,
              arch: int = 90) -> tuple[int, int, int]:
    """(shared memory bytes, registers, stack bytes) of one compiled configuration (causal mask)."""
    const = {"BLOCK_Q": block_q, "BLOCK_K": block_k, "D": d, "CAUSAL": True,
             "PRECISION": "ieee" if dtype == "fp32" else "tf32"}
    src = ASTSource(fn=kernel, signature=signature(kernel, dtype),
                    constexprs={(kernel.arg_names.index(k),): v for k, v in const.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": warps, "num_stages": stages})
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
    regs, stack = re.search(r"REG:(\d+)", usage), re.search(r"STACK:(\d+)", usage)
    if regs is None or stack is None:
        raise RuntimeError(f"cannot read the resource usage:\n{usage}")
    return int(compiled.metadata.shared), int(regs.group(1)), int(stack.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warps", type=int, default=None, help="default: 8 at D=128, 4 at D=64 (as kernels/sla.py)")
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--kernels", nargs="+", choices=sorted(KERNELS), default=list(KERNELS))
    args = p.parse_args(argv)
    print(f"triton {triton.__version__}, sm_90, causal mask\n")
    print("| kernel | dtype, D, blocks | warps, stages | shared memory | registers | stack |\n|---|---|---|---|---|---|")
    for name in args.kernels:
        for dtype, d, bq, bk in CONFIGS:
            warps = args.warps or (4 if d == 64 else 8)
            shared, regs, stack = resources(KERNELS[name], dtype, d, bq, bk, warps, args.stages)
            print(f"| {name} | {dtype}, {d}, {bq}x{bk} | {warps}, {args.stages} | {shared / 1024:.0f} KB | {regs} "
                  f"| {stack} B |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
