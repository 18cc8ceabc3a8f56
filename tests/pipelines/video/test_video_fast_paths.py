"""The serving fast paths compute what the plain ones do: complex RoPE, the inference block forward,
the stream attention that reads the KV pool in place (slot order) instead of gathering it, the folded
cross-attention to a short prompt, the guided decoder's planar bilinear upsampling, and bf16 attention
on CPU as two products around a softmax."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel

from streamserve.kv_rolling import BatchedKV, KVPool, SessionKV
from streamserve.pipelines.video import attention
from streamserve.pipelines.video.attention import FoldedCrossAttention, out_proj, sdpa, split_heads
from streamserve.pipelines.video.block import block_forward, fast_block_ok, gelu_tanh
from streamserve.pipelines.video.guided import GuidedDecoder, guide_features, upsample_bilinear
from streamserve.pipelines.video.model import CausalWanDiT, tiny_wan_config
from streamserve.pipelines.video.rope import RopeTable, apply_rope
from streamserve.pipelines.video.stream_attention import StreamAttention


def _dit(seed: int = 0) -> CausalWanDiT:
    torch.manual_seed(seed)
    cfg = tiny_wan_config(dim=48, heads=4, layers=2, ffn=64, channels=4, text_dim=16)
    model: Any = WanTransformer3DModel
    return CausalWanDiT(model(**cfg).eval()).eval()


def _real_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The four real products, as diffusers writes them."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[:, None], sin[:, None]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2).type_as(x)


def test_complex_rope_equals_the_real_rotation() -> None:
    torch.manual_seed(0)
    base = torch.randn(2, 10, 4 * 8)
    x = base.unflatten(2, (4, -1)).transpose(1, 2)  # [2, 4, 10, 8], heads split as the model does
    ang = torch.rand(2, 10, 4) * 6.0
    table = RopeTable(ang.cos(), ang.sin())  # no complex form given: built on use
    expected = _real_rope(x, table.cos, table.sin)
    torch.testing.assert_close(apply_rope(x, table), expected, rtol=0, atol=1e-6)
    # Into a slice of a larger buffer (how the stream attention assembles its keys).
    buf = torch.zeros(2, 4, 13, 8)
    apply_rope(x, table, out=buf[:, :, 3:])
    torch.testing.assert_close(buf[:, :, 3:], expected, rtol=0, atol=1e-6)
    assert torch.count_nonzero(buf[:, :, :3]) == 0
    # An odd storage offset cannot be viewed as complex pairs: copied first, same numbers.
    odd = torch.randn(1, 1, 10 * 8 + 1)[..., 1:].reshape(1, 1, 10, 8)
    torch.testing.assert_close(apply_rope(odd, RopeTable(ang[:1].cos(), ang[:1].sin())),
                               _real_rope(odd, ang[:1].cos(), ang[:1].sin()), rtol=0, atol=1e-6)
    # Gradients flow (training uses the same function).
    xg = x.detach().clone().requires_grad_(True)
    apply_rope(xg, table).square().sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_gelu_tanh_matches_aten() -> None:
    x = torch.linspace(-12, 12, 20001)
    torch.testing.assert_close(gelu_tanh(x), F.gelu(x, approximate="tanh"), rtol=0, atol=2e-6)


@torch.no_grad()
def test_block_forward_equals_diffusers_block() -> None:
    dit = _dit(3)
    block = dit.transformer.blocks[0]
    assert fast_block_ok(block)
    hidden, context = torch.randn(2, 20, 48), torch.randn(2, 5, 48)
    _, proj = dit.time_embedding(torch.tensor([250.0, 900.0]))  # [2, 6, 48]
    expected = block(hidden, context, proj, None)  # no strategy set: diffusers' processors
    torch.testing.assert_close(block_forward(block, hidden, context, proj), expected, rtol=0, atol=1e-5)
    assert not fast_block_ok(torch.nn.Linear(2, 2))


class _GatherOnly:
    """A pool with only the API video-pp's stage pools have: StreamAttention takes its gather path."""

    def __init__(self, pool: KVPool) -> None:
        self.pool = pool
        self.position_policy = pool.position_policy
        self.capacity_tokens = pool.capacity_tokens

    def view(self, session_id: Hashable) -> SessionKV:
        return self.pool.view(session_id)

    def gather(self, layer: int, session_ids: Sequence[Hashable], *, rope: Any = None) -> BatchedKV:
        return self.pool.gather(layer, session_ids, rope=rope)

    def write(self, layer: int, session_ids: Sequence[Hashable], blocks: Sequence[int], k: torch.Tensor,
              v: torch.Tensor) -> None:
        self.pool.write(layer, session_ids, blocks, k, v)


@torch.no_grad()
@pytest.mark.parametrize("policy", ["reposition", "refresh"])
def test_in_place_pool_reads_equal_the_gather(policy: str) -> None:
    """Two sessions at different points of their streams, with a stream-batch pair, for more blocks
    than the window holds (the ring wraps): reading the pool in slot order gives the gather's output."""
    dit = _dit(4)
    cross = dit.cross_kv(dit.embed_prompt(torch.randn(1, 5, 16)))
    xs = torch.randn(9, 1, 4, 1, 8, 8)
    pools = [KVPool(dit.num_layers, 2, 1, 3, 16, dit.heads, dit.head_dim, dtype=torch.float32,
                    position_policy=policy) for _ in range(2)]  # type: ignore[arg-type]
    for i in range(9):
        items = [("a", i)] + ([("b", i - 3)] if i >= 3 else []) + ([("a", i - 1)] if i >= 1 else [])
        x = torch.cat([xs[b] for _, b in items])
        t = torch.full((len(items),), 400.0)
        cr = [(k.expand(len(items), -1, -1, -1), v.expand(len(items), -1, -1, -1)) for k, v in cross]
        fast = StreamAttention(pools[0], items, cr, dit.rope, (4, 4), 2)
        slow = StreamAttention(_GatherOnly(pools[1]), items, cr, dit.rope, (4, 4), 2)  # type: ignore[arg-type]
        assert fast.direct and not slow.direct
        got, expected = dit.forward_stream(x, t, fast), dit.forward_stream(x, t, slow)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        assert fast.positions == slow.positions


def _unfolded_cross(attn: Any, hidden: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    q = split_heads(attn.norm_q(attn.to_q(hidden)), int(attn.heads))
    return out_proj(attn, F.scaled_dot_product_attention(q, k, v), hidden)


class _FixedCross:
    """A strategy serving one prompt's cross-attention keys/values."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.kv = (k, v)

    def cross_kv(self, layer: int, attn: Any, encoder_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.kv

    def self_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise AssertionError("not used")


@torch.no_grad()
def test_folded_cross_attention_equals_sdpa() -> None:
    dit = _dit(5)
    prompts = dit.embed_prompt(torch.randn(2, 3, 16))  # two sessions, 3 prompt tokens each
    for layer, block in enumerate(dit.transformer.blocks):
        attn = block.attn2
        with torch.no_grad():  # give the norm and the output projection non-trivial weights
            attn.norm_q.weight.uniform_(0.5, 1.5)
            attn.to_out[0].bias.normal_()
        k, v = dit.cross_kv(prompts)[layer]  # [2, H, 3, D]
        hidden = torch.randn(2, 20, 48) * 3.0
        fold = FoldedCrossAttention()
        assert fold.applies(attn, hidden, k)
        folded = fold.prepare(attn, k, v)
        assert folded is not None
        expected = _unfolded_cross(attn, hidden, k, v)
        torch.testing.assert_close(fold(attn, hidden, folded), expected, rtol=0, atol=2e-5)
        assert fold.prepare(attn, k, v) is folded  # cached while the prompt's tensors live
        k2 = k.clone()
        assert fold.prepare(attn, k2, v) is not folded  # another prompt: its own matrices
        # Keys whose scores could overflow exp without the max subtraction are not folded.
        big = k * 1e3
        assert fold.prepare(attn, big, v) is None
        processor = attn.processor
        dit.router.strategy = _FixedCross(big, v)
        try:
            got = processor(attn, hidden, prompts)
        finally:
            dit.router.strategy = None
        torch.testing.assert_close(got, _unfolded_cross(attn, hidden, big, v), rtol=0, atol=1e-5)
    # Where it does not apply: autograd, half precision, long prompts.
    attn = dit.transformer.blocks[0].attn2
    k, v = dit.cross_kv(prompts)[0]
    hidden = torch.randn(2, 20, 48)
    with torch.enable_grad():
        assert not FoldedCrossAttention().applies(attn, hidden, k)
    assert not FoldedCrossAttention().applies(attn, hidden.half(), k.half())
    long_k = torch.randn(2, 4, 40, 12)
    assert not FoldedCrossAttention().applies(attn, hidden, long_k)


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 8])
def test_planar_upsampling_equals_interpolate(factor: int) -> None:
    torch.manual_seed(factor)
    for shape in [(1, 24, 32, 32), (2, 5, 7, 9), (1, 3, 1, 1)]:
        x = torch.randn(*shape)
        expected = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        with torch.inference_mode():
            got = upsample_bilinear(x, factor)
        assert got.shape == expected.shape and got.is_contiguous()
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-5)
    # With autograd on it is ATen's kernel, so training gets gradients.
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    w = torch.randn(1, 2, 4 * factor, 4 * factor)
    (upsample_bilinear(x, factor) * w).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    (F.interpolate(x2, scale_factor=factor, mode="bilinear", align_corners=False) * w).sum().backward()
    assert x.grad is not None and x2.grad is not None
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("features", ["v1", "v2"])
def test_guided_decoder_serving_path_equals_the_training_path(features: str) -> None:
    """Inference runs planar features, upsampling and product; training (autograd on) the reference
    computation the committed decoder was trained with. Same maps and output to float rounding."""
    torch.manual_seed(7)
    guide = GuidedDecoder(8, 8, 16, style_dim=4, features=features)
    with torch.no_grad():
        for p in guide.parameters():  # a decoder that does something (the last layer starts at zero)
            p.add_(torch.randn_like(p) * 0.1)
    z, frame, style = torch.randn(2, 8, 6, 5), torch.rand(2, 3, 48, 40) * 2 - 1, torch.randn(2, 4)
    reference_maps = guide_features(frame, features)  # autograd on: the training computation
    expected = guide(z, frame, style)
    with torch.inference_mode():
        maps, got = guide_features(frame, features), guide(z, frame, style)
    torch.testing.assert_close(maps, reference_maps, rtol=0, atol=1e-5)
    torch.testing.assert_close(got, expected.detach(), rtol=0, atol=1e-5)


def test_bf16_attention_on_cpu_equals_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo model's shapes (and a batch of 2 with a key mask): the bf16 products equal fp32 SDPA to
    bf16's precision, as one batched product within the score budget and head by head in tiles above
    it (never the flash kernel); in fp32 SDPA itself runs."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 32) for n in (256, 1024, 1024))
    mask = torch.ones(2, 1, 1, 1024, dtype=torch.bool)
    mask[1, ..., 256:512] = False  # item 1 does not see one block
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    b16 = [t.bfloat16() for t in (q, k, v)]
    calls: list[int] = []
    real = F.scaled_dot_product_attention

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", counted)
    with torch.no_grad():
        out = sdpa(*b16, mask)
        assert out.dtype == torch.bfloat16 and not calls  # the two products, not the kernel
        torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
        monkeypatch.setattr(attention, "MATH_ATTENTION_SCORES", 1024)
        for tile in (1 << 20, 100 * 1024):  # one tile per head; 100 query rows a tile (the last 56)
            monkeypatch.setattr(attention, "TILE_SCORES", tile)
            tiled = sdpa(*b16, mask)
            assert tiled.dtype == torch.bfloat16 and not calls
            torch.testing.assert_close(tiled.float(), ref, atol=2e-2, rtol=2e-2)
        monkeypatch.setattr(attention, "TILE_SCORES", 1)  # one query row a product
        first = sdpa(b16[0][:, :, :8], b16[1], b16[2], mask)  # the first 8 queries, a product each
        torch.testing.assert_close(first.float(), ref[:, :, :8], atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(sdpa(q, k, v, mask), ref)  # fp32: SDPA itself
        assert calls == [1]
