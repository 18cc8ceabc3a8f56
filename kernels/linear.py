"""The linear (marginal-block) part of SLA, with pre-aggregation.

For query block ``i`` with marginal key blocks ``M_i`` and feature map ``phi = softmax over D``::

    h_j = phi(K_j)^T V_j               [D, D]   per key block (padding tokens contribute 0)
    z_j = colsum phi(K_j)              [D]
    H_i = sum_{j in M_i} h_j,  Z_i = sum_{j in M_i} z_j
    O_l = phi(Q_i) H_i / (phi(Q_i) . Z_i + eps)           (0 for a row with no marginal block)

Pre-aggregation: marginal blocks are the majority, so ``H_i`` is built as the total over the query
block's fully visible prefix ``[0, n_full)`` minus its critical and negligible blocks (all inside that
prefix except the always-critical partial blocks, which lie past it). The subtraction is one batched
``[nq, nk] @ [nk, D*D + D]`` product over a 0/1 matrix (tensor cores on a GPU; ``nk*D^2`` per row is
~1.6% of dense attention's FLOPs at D=128, block 64), and autograd differentiates it. The GEMMs run
in the input dtype when that is fp16/bf16 (fp32 accumulation), in fp32 otherwise; sums and the
normalisation stay fp32.
:func:`marginal_state_explicit` sums the marginal blocks directly; tests check the two agree.
"""

from __future__ import annotations

import torch

from .block_map import CRITICAL, MARGINAL, NEGLIGIBLE, BlockMap

LINEAR_EPS = 1e-5


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = softmax over the head dimension, in fp32."""
    return torch.softmax(x.float(), dim=-1)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """GEMM dtype of the linear branch: half-precision inputs use their own dtype (tensor cores, fp32
    accumulation inside the GEMM); fp32 inputs stay fp32."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32


def block_states(k: torch.Tensor, v: torch.Tensor, block_k: int) -> torch.Tensor:
    """Per key block ``[h_j | z_j]``. k, v: [B, H, Lk, D] -> [B, H, nk, D*D + D] (fp32 values)."""
    b, h, lk, d = k.shape
    nk = (lk + block_k - 1) // block_k
    pad = nk * block_k - lk
    cd = compute_dtype(k.dtype)
    phk = feature_map(k)  # [B, H, Lk, D] fp32
    zj = torch.nn.functional.pad(phk, (0, 0, 0, pad)).view(b, h, nk, block_k, d).sum(dim=3)  # [B, H, nk, D]
    phk_c = torch.nn.functional.pad(phk.to(cd), (0, 0, 0, pad)).view(b, h, nk, block_k, d)
    vc = torch.nn.functional.pad(v.to(cd), (0, 0, 0, pad)).view(b, h, nk, block_k, d)
    hj = (phk_c.transpose(-1, -2) @ vc).float()  # [B, H, nk, D, D]
    return torch.cat([hj.flatten(-2), zj], dim=-1)


def marginal_state(states: torch.Tensor, bm: BlockMap, gemm_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pre-aggregated ``[H_i | Z_i]`` per query block: [B, H, nq, D*D + D] (fp32).

    The totals are fp32 sums; the subtracted part is one ``[nq, nk] @ [nk, E]`` GEMM in
    ``gemm_dtype`` (0/1 left operand, so only the states are rounded)."""
    n_full = bm.n_full  # [nq]
    if bool((n_full == bm.nk).all()):
        total = states.sum(dim=2, keepdim=True)  # [B, H, 1, E]: no mask, one total for every row
    else:
        prefix = torch.nn.functional.pad(states.cumsum(dim=2), (0, 0, 1, 0))  # [B, H, nk+1, E]
        total = prefix[:, :, n_full]  # [B, H, nq, E]
    sub = (bm.classes == CRITICAL) | (bm.classes == NEGLIGIBLE)
    full = torch.arange(bm.nk, device=n_full.device)[None, :] < n_full[:, None]  # [nq, nk]
    sub = (sub & full).to(gemm_dtype)  # [B, H, nq, nk]
    return total - (sub @ states.to(gemm_dtype)).float()


def marginal_state_explicit(states: torch.Tensor, bm: BlockMap) -> torch.Tensor:
    """``[H_i | Z_i]`` summed over the marginal blocks directly (the complement, for tests)."""
    return (bm.classes == MARGINAL).to(states.dtype) @ states


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bm: BlockMap,
                     *, pre_aggregate: bool = True) -> torch.Tensor:
    """O_l: [B, H, Lq, D] fp32, linear attention of each query over its marginal key blocks."""
    b, h, lq, d = q.shape
    states = block_states(k, v, bm.block_k)
    if pre_aggregate:
        agg = marginal_state(states, bm, compute_dtype(q.dtype))
    else:
        agg = marginal_state_explicit(states, bm)
    hi = agg[..., : d * d].reshape(b, h, bm.nq, d, d)  # [B, H, nq, D, D]
    zi = agg[..., d * d :]  # [B, H, nq, D]
    bq = bm.block_q
    phq = torch.nn.functional.pad(feature_map(q), (0, 0, 0, bm.nq * bq - lq)).view(b, h, bm.nq, bq, d)
    cd = compute_dtype(q.dtype)
    num = (phq.to(cd) @ hi.to(cd)).float()  # [B, H, nq, bq, D]
    den = (phq * zi[:, :, :, None, :]).sum(-1, keepdim=True) + LINEAR_EPS
    has_marginal = (bm.classes == MARGINAL).any(dim=-1)[:, :, :, None, None]  # [B, H, nq, 1, 1]
    o = torch.where(has_marginal, num / den, torch.zeros_like(num))
    return o.view(b, h, bm.nq * bq, d)[:, :, :lq]


def apply_proj(proj: torch.nn.Module, o_l: torch.Tensor) -> torch.Tensor:
    """``proj(O_l)`` in the projection's parameter dtype, returned as fp32."""
    p = next(proj.parameters(), None)
    x = o_l if p is None else o_l.to(p.dtype)
    out: torch.Tensor = proj(x)
    return out.float()
