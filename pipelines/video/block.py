"""An inference forward of one diffusers `WanTransformerBlock` with fewer passes over the tokens.

`WanTransformerBlock.forward` spends much of a small model's CPU step on elementwise work: each
modulation is two passes (``norm * (1 + scale)``, ``+ shift``), each gated residual two more, and
the feed-forward's tanh-GELU is ATen's slowest activation on CPU (its ``tanh`` is ~3x a
``sigmoid``). :func:`block_forward` computes the same function from the block's own submodules
(``norm1..3``, ``attn1``, ``attn2``, ``ffn``, ``scale_shift_table``; no weight is copied) with

* every ``a * b + c`` as one ``addcmul``;
* the tanh-GELU as ``x * sigmoid(2u)`` (``0.5 * (1 + tanh(u)) == sigmoid(2u)``), four passes.

The results agree with diffusers' forward to float rounding (a few ulp; tests compare them). It is
used for inference only (no autograd graph to keep): :meth:`CausalWanDiT.run_blocks` calls it when
gradients are off and the modulation is per sample, and the diffusers forward otherwise.

Shapes: hidden ``[B, L, dim]``; prompt states ``[B, Lc, dim]``; modulation ``proj [B, 6, dim]``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

_C2 = 2.0 * math.sqrt(2.0 / math.pi)  # 2u = x * (_C2 + _C3 * x^2) for tanh-GELU's u
_C3 = _C2 * 0.044715


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """``F.gelu(x, approximate="tanh")`` as ``x * sigmoid(2u)``, ``u = sqrt(2/pi) (x + 0.044715 x^3)``."""
    u = torch.addcmul(x.new_tensor(_C2), x, x, value=_C3).mul_(x)  # 2u
    return u.sigmoid_().mul_(x)


def fast_block_ok(block: Any) -> bool:
    """Whether ``block`` has the layout :func:`block_forward` computes (diffusers' Wan block with a
    tanh-GELU feed-forward); anything else runs its own forward."""
    ffn = getattr(block, "ffn", None)
    net = getattr(ffn, "net", None)
    if net is None or len(net) != 3:
        return False
    act = net[0]
    return getattr(act, "approximate", None) == "tanh" and hasattr(act, "proj") and isinstance(net[2], torch.nn.Linear)


def block_forward(block: Any, hidden: torch.Tensor, context: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """``block(hidden, context, proj, None)`` for per-sample modulation ``proj [B, 6, dim]``, inference."""
    mod = block.scale_shift_table + proj.float()  # [B, 6, dim]
    shift, scale, gate, c_shift, c_scale, c_gate = mod.chunk(6, dim=1)  # each [B, 1, dim]
    dtype = hidden.dtype

    wide = hidden.float()  # one cast per residual (a no-op view in fp32)
    normed = torch.addcmul(shift, block.norm1(wide), 1 + scale).to(dtype)
    attn = block.attn1(normed, None, None, None)
    hidden = torch.addcmul(wide, attn.float(), gate).to(dtype)

    normed = block.norm2(hidden.float()).to(dtype)
    hidden = hidden + block.attn2(normed, context, None, None)

    wide = hidden.float()
    normed = torch.addcmul(c_shift, block.norm3(wide), 1 + c_scale).to(dtype)
    net = block.ffn.net
    ff = net[2](gelu_tanh(net[0].proj(normed)))
    return torch.addcmul(wide, ff.float(), c_gate).to(dtype)

