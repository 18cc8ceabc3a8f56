"""The linear (marginal-block) part of SLA, with pre-aggregation.

For query block ``i`` with marginal key blocks ``M_i`` and feature map ``phi = softmax over D``::

    h_j = phi(K_j)^T V_j               [D, D]   per key block (padding tokens contribute 0)
    z_j = colsum phi(K_j)              [D]
    H_i = sum_{j in M_i} h_j,  Z_i = sum_{j in M_i} z_j
    O_l = phi(Q_i) H_i / (phi(Q_i) . Z_i + eps)           (0 for a row with no marginal block)

Layout: a block state is ``[h_j | z_j]`` as one ``[D, D+1]`` matrix, ``phi(K_j)^T [V_j | 1]``, so one
GEMM builds both and one GEMM ``phi(Q_i) [H_i | Z_i]`` gives numerator and denominator together.

Pre-aggregation: marginal blocks are the majority, so ``[H_i | Z_i]`` is the total over the query
block's fully visible prefix ``[0, n_full)`` minus its critical and negligible blocks (all inside that
prefix; the always-critical partial blocks lie past it). The subtraction is one batched
``[nq, nk] @ [nk, D*(D+1)]`` product over a 0/1 matrix (tensor cores on a GPU; ``nk*D^2`` per row
is ~1.6% of dense attention's FLOPs at D=128, block 64), and autograd differentiates it. GEMMs run
in the input dtype when that is fp16/bf16 (fp32 accumulation inside), in fp32 otherwise; totals and
the normalisation are fp32. :func:`marginal_state_explicit` sums the marginal blocks directly;
tests check that the two agree.
"""

from __future__ import annotations

import torch

from .block_map import CRITICAL, MARGINAL, NEGLIGIBLE, BlockMap

LINEAR_EPS = 1e-5


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = softmax over the head dimension, in fp32."""
    return torch.softmax(x, dim=-1, dtype=torch.float32)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """GEMM dtype of the linear branch: fp16/bf16 inputs keep their dtype, anything else is fp32."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32


def block_states(k: torch.Tensor, v: torch.Tensor, block_k: int) -> torch.Tensor:
    """Per key block ``phi(K_j)^T [V_j | 1]`` flattened: [B, H, nk, D*(D+1)] in the compute dtype."""
    b, h, lk, d = k.shape
    nk = (lk + block_k - 1) // block_k
    cd = compute_dtype(k.dtype)
    phk = torch.zeros(b, h, nk * block_k, d, dtype=cd, device=k.device)  # padding tokens stay 0
    phk[:, :, :lk] = feature_map(k).to(cd)
    ve = torch.zeros(b, h, nk * block_k, d + 1, dtype=cd, device=k.device)
    ve[:, :, :lk, :d] = v.to(cd)
    ve[:, :, :lk, d] = 1.0
    hz = phk.view(b, h, nk, block_k, d).transpose(-1, -2) @ ve.view(b, h, nk, block_k, d + 1)
    return hz.flatten(-2)  # [B, H, nk, D*(D+1)]


def marginal_state(states: torch.Tensor, bm: BlockMap) -> torch.Tensor:
    """Pre-aggregated ``[H_i | Z_i]`` per query block: [B, H, nq, D*(D+1)] fp32."""
    n_full = bm.n_full  # [nq]
    if bool((n_full == bm.nk).all()):
        total = states.sum(dim=2, keepdim=True, dtype=torch.float32)  # [B, H, 1, E]: one total for all rows
    else:
        prefix = torch.nn.functional.pad(states.cumsum(dim=2, dtype=torch.float32), (0, 0, 1, 0))
        total = prefix[:, :, n_full]  # [B, H, nq, E]
    sub = (bm.classes == CRITICAL) | (bm.classes == NEGLIGIBLE)
    full = torch.arange(bm.nk, device=n_full.device)[None, :] < n_full[:, None]  # [nq, nk]
    sub = (sub & full).to(states.dtype)  # [B, H, nq, nk]
    return total - (sub @ states).float()


def marginal_state_explicit(states: torch.Tensor, bm: BlockMap) -> torch.Tensor:
    """``[H_i | Z_i]`` summed over the marginal blocks directly (the complement, for tests): fp32."""
    return (bm.classes == MARGINAL).float() @ states.float()


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bm: BlockMap,
                     *, pre_aggregate: bool = True) -> torch.Tensor:
    """O_l: [B, H, Lq, D] fp32, linear attention of each query over its marginal key blocks."""
    b, h, lq, d = q.shape
    cd = compute_dtype(q.dtype)
    states = block_states(k, v, bm.block_k)
    agg = marginal_state(states, bm) if pre_aggregate else marginal_state_explicit(states, bm)
    hz = agg.to(cd).view(b, h, bm.nq, d, d + 1)  # [B, H, nq, D, D+1]
    bq = bm.block_q
    phq = torch.zeros(b, h, bm.nq * bq, d, dtype=cd, device=q.device)
    phq[:, :, :lq] = feature_map(q).to(cd)
    nd = (phq.view(b, h, bm.nq, bq, d) @ hz).float()  # [B, H, nq, bq, D+1]: numerator | denominator
    o = nd[..., :d] / (nd[..., d:] + LINEAR_EPS)
    has_marginal = (bm.classes == MARGINAL).any(dim=-1)[:, :, :, None, None]  # [B, H, nq, 1, 1]
    o = torch.where(has_marginal, o, torch.zeros_like(o))
    return o.reshape(b, h, bm.nq * bq, d)[:, :, :lq]


def apply_proj(proj: torch.nn.Module, o_l: torch.Tensor) -> torch.Tensor:
    """``proj(O_l)`` in the projection's parameter dtype, returned as fp32."""
    p = next(proj.parameters(), None)
    x = o_l if p is None else o_l.to(p.dtype)
    out: torch.Tensor = proj(x)
    return out.float()
