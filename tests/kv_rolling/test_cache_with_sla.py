"""SLA over a rolling cache: a query frame against sinks + window, straight from the cache views."""

from __future__ import annotations

import os

import pytest
import torch

from streamserve.kv_rolling import RollingKVCache

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1 (set in tests/kv_rolling/conftest.py)",
)


def test_sla_over_cache_views_matches_reference() -> None:
    from streamserve.kernels import sla_attention, sla_reference

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t, h, d = 48, 2, 64  # 48-token frames; 2 sinks + 3 window frames
    cache = RollingKVCache(2, 3, t, h, d, dtype=torch.float32, device=dev)
    g = torch.Generator().manual_seed(0)
    proj = torch.nn.Linear(d, d).to(dev)
    for i in range(4):  # not full: the cache hands out strided views of its storage
        cache.write(i, torch.randn(1, h, t, d, generator=g).to(dev), torch.randn(1, h, t, d, generator=g).to(dev))
    for step in range(2):
        if step:
            for i in range(4, 8):  # wrap the ring: ordered reads come from the copy buffer
                cache.write(i, torch.randn(1, h, t, d, generator=g).to(dev),
                            torch.randn(1, h, t, d, generator=g).to(dev))
        q = torch.randn(1, h, t, d, generator=g).to(dev)  # the newest frame's queries
        k, v = cache.keys_values()
        out, bm = sla_attention(q, k, v, kh=0.3, kl=0.2, block_q=16, block_k=16, proj=proj, impl="triton",
                                return_block_map=True)
        torch.testing.assert_close(out, sla_reference(q, k, v, bm, proj), atol=2e-5, rtol=1e-4)
