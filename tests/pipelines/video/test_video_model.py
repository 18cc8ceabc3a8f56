"""The causal DiT wraps diffusers' Wan transformer exactly, and streaming equals the masked clip."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers import WanTransformer3DModel

from streamserve.kv_rolling import KVPool
from streamserve.pipelines.video.attention import block_causal_mask
from streamserve.pipelines.video.model import CausalWanDiT, tiny_wan_config
from streamserve.pipelines.video.stream_attention import StreamAttention


def _pair(seed: int = 0) -> tuple[Any, CausalWanDiT]:
    torch.manual_seed(seed)
    cfg = tiny_wan_config(dim=48, heads=4, layers=2, ffn=64, channels=4, text_dim=16)
    model: Any = WanTransformer3DModel
    ref, wrapped = model(**cfg).eval(), model(**cfg).eval()
    wrapped.load_state_dict(ref.state_dict())
    return ref, CausalWanDiT(wrapped).eval()


@torch.no_grad()
def test_full_attention_clip_equals_diffusers_forward() -> None:
    ref, dit = _pair()
    x, t, e = torch.randn(2, 4, 3, 8, 12), torch.tensor([300.0, 700.0]), torch.randn(2, 5, 16)
    expected = ref(x, t, e).sample
    got = dit.forward_clip(x, t, dit.embed_prompt(e), causal=False)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # The wrapped model's own forward still works: processors fall back to diffusers' math.
    torch.testing.assert_close(dit.transformer(x, t, e).sample, expected, rtol=0, atol=1e-5)
    # Per-frame timesteps equal to the clip timestep give the same result.
    per_frame = dit.forward_clip(x, t[:, None].expand(2, 3), dit.embed_prompt(e), causal=False)
    torch.testing.assert_close(per_frame, expected, rtol=0, atol=1e-5)


def test_weights_are_shared_not_copied() -> None:
    ref, dit = _pair()
    p = dit.transformer.blocks[0].attn1.to_q.weight
    assert dit.transformer.blocks[0].attn1.processor.__class__.__name__ == "SelfAttnProcessor"
    assert sum(x.data_ptr() == p.data_ptr() for x in dit.parameters()) == 1


def test_block_causal_mask_pattern() -> None:
    m = block_causal_mask(5, 1, num_sinks=1, window=2)
    expected = torch.tensor([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 0, 1, 1, 1],  # frame 4 sees the sink, frames 2-3 and itself
    ], dtype=torch.bool)
    assert torch.equal(m, expected)
    assert block_causal_mask(2, 3).shape == (6, 6)


@torch.no_grad()
@pytest.mark.parametrize("steps", [1, 2])
def test_streaming_equals_masked_clip(steps: int) -> None:
    """Frame by frame through the rolling cache (refresh policy: absolute positions) gives the
    clip forward's numbers, also when a block is rewritten by a second denoising step."""
    _, dit = _pair(1)
    f, sinks, window = 6, 1, 2
    x, t, e = torch.randn(1, 4, f, 8, 8), torch.full((1, f), 400.0), torch.randn(1, 5, 16)
    states = dit.embed_prompt(e)
    expected = dit.forward_clip(x, t, states, num_sinks=sinks, window=window)
    extra = 1 if steps > 1 else 0  # a re-run block is already cached: one more slot keeps its window
    pool = KVPool(dit.num_layers, 1, sinks, window + extra, 16, dit.heads, dit.head_dim, dtype=torch.float32,
                  position_policy="refresh")
    cross = dit.cross_kv(states)
    for i in range(f):
        for _ in range(steps):  # later steps overwrite block i with the same input here
            strategy = StreamAttention(pool, [("s", i)], cross, dit.rope, (4, 4), window)
            got = dit.forward_stream(x[:, :, i : i + 1], t[:, i], strategy)
        torch.testing.assert_close(got[:, :, 0], expected[:, :, i], rtol=0, atol=1e-5)


@torch.no_grad()
def test_stream_batch_items_see_only_earlier_blocks() -> None:
    """Two blocks of one session in one forward: the older must not see the newer one."""
    _, dit = _pair(2)
    x, states = torch.randn(1, 4, 3, 8, 8), dit.embed_prompt(torch.randn(1, 5, 16))
    t = torch.full((1,), 500.0)
    cross = dit.cross_kv(states)
    pool = KVPool(dit.num_layers, 1, 1, 3, 16, dit.heads, dit.head_dim, dtype=torch.float32,
                  position_policy="refresh")
    for i in range(2):
        dit.forward_stream(x[:, :, i : i + 1], t, StreamAttention(pool, [("s", i)], cross, dit.rope, (4, 4), 2))
    # Block 1 again (as step 2) together with the new block 2.
    both = torch.cat([x[:, :, 2:3], x[:, :, 1:2]])
    cross2 = [(k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1)) for k, v in cross]
    strategy = StreamAttention(pool, [("s", 2), ("s", 1)], cross2, dit.rope, (4, 4), 2)
    out = dit.forward_stream(both, t.expand(2), strategy)
    expected = dit.forward_clip(x, t[:, None].expand(1, 3), states, num_sinks=1, window=2)
    torch.testing.assert_close(out[1, :, 0], expected[0, :, 1], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[0, :, 0], expected[0, :, 2], rtol=0, atol=1e-5)
    assert strategy.positions == [2, 1]


def test_bad_inputs_raise() -> None:
    _, dit = _pair()
    with pytest.raises(ValueError, match="divisible by the patch"):
        dit.token_grid(7, 8)
    with pytest.raises(ValueError, match=r"prompt embeddings must be \[B, L, 16\]"):
        dit.embed_prompt(torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="x must be"):
        dit.forward_clip(torch.randn(1, 3, 2, 8, 8), torch.ones(1), torch.randn(1, 2, 48))
    cfg = tiny_wan_config(dim=48, heads=4, layers=1, ffn=64, channels=4, text_dim=16)
    model: Any = WanTransformer3DModel
    with pytest.raises(ValueError, match="temporal patch"):
        CausalWanDiT(model(**{**cfg, "patch_size": (2, 2, 2)}))
