"""The "sla" attention backend: SLA sparse-linear attention from `streamserve.kernels`.

SLA attends exactly to each query block's top key blocks (by pooled score) and linearly to the rest.
Its kernels take whole key sequences with an optional causal/frame-causal mask, not an arbitrary
key mask, so for a stream forward each item's *visible* keys (its sinks, its window blocks and its
own tokens; see :mod:`.stream_attention`) are gathered first; items with as many visible keys run
together.

The linear branch needs a projection learned by fine-tuning with SLA; checkpoints here are trained
or distilled with dense attention, so the branch is left out (``proj=None``, which equals SLA with a
zero-initialised projection). The critical fraction is the SLA paper's 5% of key blocks, but at least
``MIN_CRITICAL_BLOCKS``: short caches (the demo's four 256-token frames) keep enough exact attention.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

import torch

from .model import CausalWanDiT
from .stream_attention import AttendFn

KH, KL = 0.05, 0.10
MIN_CRITICAL_BLOCKS = 4
BLOCK = 64


def make_sla_attend(dit: CausalWanDiT) -> AttendFn:
    """An :data:`~.stream_attention.AttendFn` running SLA; ValueError when the kernels are missing."""
    try:
        from streamserve.kernels import SUPPORTED_HEAD_DIMS, sla_attention
    except ImportError as exc:  # pragma: no cover - kernels ship with the package
        raise ValueError(f"attention='sla' needs streamserve.kernels: {exc}") from exc
    impl: Literal["triton", "reference"] = "triton" if dit.device.type == "cuda" and dit.head_dim in SUPPORTED_HEAD_DIMS else "reference"

    def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # q: [N, H, S, D]; k, v: [N, H, Lk, D]; mask: [N, 1, 1, Lk]
        visible = mask[:, 0, 0]  # [N, Lk]
        groups: dict[int, list[int]] = defaultdict(list)
        for i, n in enumerate(visible.sum(1).tolist()):
            groups[int(n)].append(i)
        out = torch.empty_like(q)
        for n, rows in groups.items():
            idx = torch.stack([visible[i].nonzero()[:, 0] for i in rows])  # [n_rows, n]
            sel = idx[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            rows_t = torch.tensor(rows, device=q.device)
            kk = k.index_select(0, rows_t).gather(2, sel)  # [n_rows, H, n, D]
            vv = v.index_select(0, rows_t).gather(2, sel)
            blocks = -(-n // BLOCK)
            kh = min(1.0, max(KH, MIN_CRITICAL_BLOCKS / blocks))
            res = sla_attention(q.index_select(0, rows_t), kk, vv, kh=kh, kl=min(KL, 1.0 - kh) if kh < 1 else 0.0,
                                block_q=BLOCK, block_k=BLOCK, impl=impl)
            out[rows_t] = res  # type: ignore[assignment]
        return out

    return attend
