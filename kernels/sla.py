"""Triton kernels for the sparse (critical-block) part of SLA: block-sparse softmax attention.

Each query block attends exactly to the key blocks its lookup table lists (see
:mod:`streamserve.kernels.block_map`), with an online softmax (FlashAttention-2 style) and the token
mask (key padding, causal / frame-causal) applied inside the block. Forward stores the output and the
row log-sum-exp; backward recomputes probabilities: one kernel for dQ (loops over the row's critical
key blocks), one for dK/dV (loops over the query blocks that hold the key block as critical, from the
inverse lookup table). No atomics: results are deterministic.

:func:`sparse_attention` is the checked entry point: q ``[B, H, Lq, D]``, k/v ``[B, H, Lk, D]``,
fp16/bf16/fp32 (bf16 only on CUDA: ``tl.dot`` in bf16 is wrong under the interpreter), ``D`` in
{64, 128}, last dimension contiguous. It runs on CUDA, or on CPU under ``TRITON_INTERPRET=1``.
The PyTorch reference is :func:`streamserve.kernels.reference.sla_reference`.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from .block_map import BlockMap, num_blocks

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_BLOCKS = (16, 32, 64, 128)
_LOG2E = 1.4426950408889634


@triton.jit
def _sla_fwd_kernel(
    Q, K, V, Out, LSE, LUT, CNT,
    sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sob, soh, sol,
    slb, slh, slq,
    H, NQ, LQ, LK, OFFSET, FRAME, qk_scale,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, D: tl.constexpr,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
):
    iq = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_q = iq * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, D)
    offs_kb = tl.arange(0, BLOCK_K)
    q_ok = offs_q < LQ
    # q: [BLOCK_Q, D]
    q = tl.load(Q + b * sqb + h * sqh + offs_q[:, None] * sql + offs_d[None, :], mask=q_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_Q], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_Q], dtype=tl.float32)
    acc = tl.zeros([BLOCK_Q, D], dtype=tl.float32)
    n = tl.load(CNT + bh * NQ + iq)
    lut = LUT + b * slb + h * slh + iq * slq
    for t in range(0, n):
        j = tl.load(lut + t)
        offs_k = j * BLOCK_K + offs_kb
        k_ok = offs_k < LK
        # k, v: [BLOCK_K, D]
        k = tl.load(K + b * skb + h * skh + offs_k[:, None] * skl + offs_d[None, :], mask=k_ok[:, None], other=0.0)
        v = tl.load(V + b * svb + h * svh + offs_k[:, None] * svl + offs_d[None, :], mask=k_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # [BLOCK_Q, BLOCK_K], log2 units
        vis = k_ok[None, :]
        if CAUSAL:
            vis = vis & ((offs_k[None, :] // FRAME) <= ((offs_q[:, None] + OFFSET) // FRAME))
        s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    tl.store(Out + b * sob + h * soh + offs_q[:, None] * sol + offs_d[None, :], o.to(Out.dtype.element_ty),
             mask=q_ok[:, None])
    lse = tl.where(l_i == 0.0, float("inf"), m_i + tl.log2(l_safe))  # log2 units; +inf: row saw nothing
    tl.store(LSE + bh * LQ + offs_q, lse, mask=q_ok)


@triton.jit
def _sla_bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA, LUT, CNT,
    sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sdb, sdh, sdl,
    slb, slh, slq,
    H, NQ, LQ, LK, OFFSET, FRAME, qk_scale, sm_scale,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, D: tl.constexpr,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
):
    iq = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_q = iq * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, D)
    offs_kb = tl.arange(0, BLOCK_K)
    q_ok = offs_q < LQ
    q = tl.load(Q + b * sqb + h * sqh + offs_q[:, None] * sql + offs_d[None, :], mask=q_ok[:, None], other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + offs_q[:, None] * sdl + offs_d[None, :], mask=q_ok[:, None], other=0.0)
    lse = tl.load(LSE + bh * LQ + offs_q, mask=q_ok, other=float("inf"))
    delta = tl.load(DELTA + bh * LQ + offs_q, mask=q_ok, other=0.0)
    dq = tl.zeros([BLOCK_Q, D], dtype=tl.float32)
    n = tl.load(CNT + bh * NQ + iq)
    lut = LUT + b * slb + h * slh + iq * slq
    for t in range(0, n):
        j = tl.load(lut + t)
        offs_k = j * BLOCK_K + offs_kb
        k_ok = offs_k < LK
        k = tl.load(K + b * skb + h * skh + offs_k[:, None] * skl + offs_d[None, :], mask=k_ok[:, None], other=0.0)
        v = tl.load(V + b * svb + h * svh + offs_k[:, None] * svl + offs_d[None, :], mask=k_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        vis = k_ok[None, :]
        if CAUSAL:
            vis = vis & ((offs_k[None, :] // FRAME) <= ((offs_q[:, None] + OFFSET) // FRAME))
        p = tl.where(vis, tl.exp2(s - lse[:, None]), 0.0)  # [BLOCK_Q, BLOCK_K]
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    dq = dq * sm_scale
    tl.store(DQ + b * sqb + h * sqh + offs_q[:, None] * sql + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=q_ok[:, None])


@triton.jit
def _sla_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, KV_LUT, KV_CNT,
    sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sdb, sdh, sdl,
    slb, slh, slk,
    H, NK, LQ, LK, OFFSET, FRAME, qk_scale, sm_scale,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, D: tl.constexpr,
    CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
):
    jk = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_k = jk * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, D)
    offs_qb = tl.arange(0, BLOCK_Q)
    k_ok = offs_k < LK
    k = tl.load(K + b * skb + h * skh + offs_k[:, None] * skl + offs_d[None, :], mask=k_ok[:, None], other=0.0)
    v = tl.load(V + b * svb + h * svh + offs_k[:, None] * svl + offs_d[None, :], mask=k_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_K, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_K, D], dtype=tl.float32)
    n = tl.load(KV_CNT + bh * NK + jk)
    lut = KV_LUT + b * slb + h * slh + jk * slk
    for t in range(0, n):
        i = tl.load(lut + t)
        offs_q = i * BLOCK_Q + offs_qb
        q_ok = offs_q < LQ
        q = tl.load(Q + b * sqb + h * sqh + offs_q[:, None] * sql + offs_d[None, :], mask=q_ok[:, None], other=0.0)
        do = tl.load(DO + b * sdb + h * sdh + offs_q[:, None] * sdl + offs_d[None, :], mask=q_ok[:, None],
                     other=0.0)
        lse = tl.load(LSE + bh * LQ + offs_q, mask=q_ok, other=float("inf"))
        delta = tl.load(DELTA + bh * LQ + offs_q, mask=q_ok, other=0.0)
        st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # s^T: [BLOCK_K, BLOCK_Q]
        vis = k_ok[:, None] & q_ok[None, :]
        if CAUSAL:
            vis = vis & ((offs_k[:, None] // FRAME) <= ((offs_q[None, :] + OFFSET) // FRAME))
        pt = tl.where(vis, tl.exp2(st - lse[None, :]), 0.0)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # [BLOCK_K, BLOCK_Q]
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
    dk = dk * sm_scale
    tl.store(DK + b * skb + h * skh + offs_k[:, None] * skl + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=k_ok[:, None])
    tl.store(DV + b * svb + h * svh + offs_k[:, None] * svl + offs_d[None, :], dv.to(DV.dtype.element_ty),
             mask=k_ok[:, None])


# ---------------------------------------------------------------------------------------------- wrapper


# Whether @triton.jit built interpreted kernels: decided by TRITON_INTERPRET when this module was
# imported, not when a kernel is called.
KERNELS_INTERPRETED: bool = type(_sla_fwd_kernel).__name__ == "InterpretedFunction"


def interpreter_active() -> bool:
    """True when the kernels of this module run under the Triton interpreter (numpy, on the host)."""
    return KERNELS_INTERPRETED


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_q: int, block_k: int) -> None:
    """Raise ``ValueError`` unless q/k/v can run through the Triton kernels."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 4:
            raise ValueError(f"{name} must be [B, H, L, D], got shape {tuple(x.shape)}")
    (b, h, _, d), (bk, hk, lk, dk) = q.shape, k.shape
    if (bk, hk, dk) != (b, h, d) or tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                         f"(need q [B, H, Lq, D] and k, v [B, H, Lk, D])")
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim D={d} is not supported by the SLA kernels; supported: {SUPPORTED_HEAD_DIMS}")
    if q.shape[2] == 0 or lk == 0:
        raise ValueError(f"empty sequence: Lq={q.shape[2]}, Lk={lk}")
    for name, blk in (("block_q", block_q), ("block_k", block_k)):
        if blk not in SUPPORTED_BLOCKS:
            raise ValueError(f"{name}={blk} is not supported; use one of {SUPPORTED_BLOCKS}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"dtype {q.dtype} is not supported; use float16, bfloat16 or float32")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v are on different devices: {q.device}, {k.device}, {v.device}")
    if q.device.type != "cuda" and not interpreter_active():
        raise ValueError(
            f"the Triton SLA kernels need a CUDA device, or TRITON_INTERPRET=1 (set before "
            f"streamserve.kernels is imported) to run on {q.device.type}; use impl='reference' instead"
        )
    if interpreter_active() and q.dtype == torch.bfloat16:
        raise ValueError("bfloat16 tl.dot is silently wrong under the Triton interpreter; use float16/float32 on CPU")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension (stride {x.stride(-1)}); "
                             f"call .contiguous() first")


def _launch_opts(d: int) -> dict[str, Any]:
    if interpreter_active():
        return {}
    return {"num_warps": 4 if d == 64 else 8, "num_stages": 3}


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bm: BlockMap, sm_scale: float
         ) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, lq, d = q.shape
    lk = k.shape[2]
    o = torch.empty_like(q)  # [B, H, Lq, D]
    lse = torch.empty((b, h, lq), device=q.device, dtype=torch.float32)
    lut = bm.lut
    grid = (bm.nq, b * h)
    _sla_fwd_kernel[grid](
        q, k, v, o, lse, lut, bm.counts,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        lut.stride(0), lut.stride(1), lut.stride(2),
        h, bm.nq, lq, lk, bm.mask.offset, bm.mask.frame, sm_scale * _LOG2E,
        BLOCK_Q=bm.block_q, BLOCK_K=bm.block_k, D=d, CAUSAL=bm.mask.causal, PRECISION=_precision(q.dtype),
        **_launch_opts(d),
    )
    return o, lse


def _bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
         lse: torch.Tensor, bm: BlockMap, sm_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # dq/dk/dv reuse these strides
    b, h, lq, d = q.shape
    lk = k.shape[2]
    do = do.contiguous() if do.stride(-1) != 1 else do
    delta = (do.float() * o.float()).sum(-1).contiguous()  # [B, H, Lq]
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    common = dict(BLOCK_Q=bm.block_q, BLOCK_K=bm.block_k, D=d, CAUSAL=bm.mask.causal,
                  PRECISION=_precision(q.dtype), **_launch_opts(d))
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2))
    lut = bm.lut
    _sla_bwd_dq_kernel[(bm.nq, b * h)](
        q, k, v, do, dq, lse, delta, lut, bm.counts, *strides,
        lut.stride(0), lut.stride(1), lut.stride(2),
        h, bm.nq, lq, lk, bm.mask.offset, bm.mask.frame, sm_scale * _LOG2E, sm_scale, **common,
    )
    kv_lut, kv_cnt = bm.kv_lut()
    _sla_bwd_dkdv_kernel[(bm.nk, b * h)](
        q, k, v, do, dk, dv, lse, delta, kv_lut, kv_cnt, *strides,
        kv_lut.stride(0), kv_lut.stride(1), kv_lut.stride(2),
        h, bm.nk, lq, lk, bm.mask.offset, bm.mask.frame, sm_scale * _LOG2E, sm_scale, **common,
    )
    return dq, dk, dv


class SparseAttentionFn(torch.autograd.Function):
    """Autograd wrapper: ``O_s = softmax(q k^T * scale, restricted to critical blocks) v``."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bm: BlockMap,
                sm_scale: float) -> torch.Tensor:
        o, lse = _fwd(q, k, v, bm, sm_scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.bm = bm
        ctx.sm_scale = sm_scale
        return o

    @staticmethod
    def backward(ctx: Any, do: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _bwd(do, q, k, v, o, lse, ctx.bm, ctx.sm_scale)
        return dq, dk, dv, None, None


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bm: BlockMap,
                     sm_scale: float | None = None) -> torch.Tensor:
    """Exact softmax attention restricted to each query block's critical key blocks (Triton).

    q: [B, H, Lq, D]; k, v: [B, H, Lk, D]; ``bm`` from :func:`~streamserve.kernels.block_map.sla_block_map`
    for the same q/k and block sizes. Returns O_s: [B, H, Lq, D] in q's dtype. Differentiable.
    """
    check_inputs(q, k, v, bm.block_q, bm.block_k)
    if (bm.nq, bm.nk) != (num_blocks(q.shape[2], bm.block_q), num_blocks(k.shape[2], bm.block_k)):
        raise ValueError(f"block map is {bm.nq}x{bm.nk} blocks, inputs need "
                         f"{num_blocks(q.shape[2], bm.block_q)}x{num_blocks(k.shape[2], bm.block_k)}")
    scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    out: torch.Tensor = SparseAttentionFn.apply(q, k, v, bm, scale)
    return out
