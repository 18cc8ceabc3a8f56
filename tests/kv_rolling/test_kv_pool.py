"""KVPool: per-session views, batching sessions at different fill levels, reset, memory accounting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from streamserve.kv_rolling import KVPool, RollingKVCache, block_rope_1d

L, H, T, D = 2, 2, 4, 8


def make_pool(**kw: object) -> KVPool:
    args: dict = dict(dtype=torch.float32)
    args.update(kw)
    return KVPool(L, 4, 2, 3, T, H, D, **args)


def block(seed: int) -> torch.Tensor:
    return torch.randn(1, H, T, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout", ["ring", "shift"])
@pytest.mark.parametrize("ordered", [True, False])
def test_batched_sessions_with_different_fill_levels(layout: str, ordered: bool) -> None:
    pool = make_pool(layout=layout)
    fills = {"a": 1, "b": 4, "c": 9}  # not full, not full, wrapped around
    refs = {}
    for n, (sid, count) in enumerate(fills.items()):
        view = pool.view(sid)
        ref = RollingKVCache(2, 3, T, H, D, dtype=torch.float32)  # the same stream, standalone
        for i in range(count):
            for layer in range(L):
                k, v = block(1000 * n + 10 * i + layer), block(1000 * n + 10 * i + layer + 5)
                view.write(layer, i, k, v)
                if layer == 1:
                    ref.write(i, k, v)
        refs[sid] = ref
    sids = ["c", "a", "b"]
    got = pool.gather(1, sids, ordered=ordered)
    assert got.k.shape == (3, H, 5 * T, D)
    assert got.lengths.tolist() == [5 * T, 1 * T, 4 * T]
    assert got.mask.sum(1).tolist() == [5 * T, 1 * T, 4 * T]
    q = torch.randn(3, H, T, D)
    out = F.scaled_dot_product_attention(q, got.k, got.v, attn_mask=got.attn_mask())
    for i, sid in enumerate(sids):
        k, v = refs[sid].keys_values()
        torch.testing.assert_close(out[i : i + 1], F.scaled_dot_product_attention(q[i : i + 1], k, v))
        if ordered:  # the per-session view reads the same keys as the standalone cache
            assert torch.equal(pool.view(sid).keys_values(1).k, k)


def test_gather_with_rope_for_reposition_policy() -> None:
    rope = block_rope_1d(T)
    pool = make_pool(position_policy="reposition")
    for n, (sid, count) in enumerate({"x": 3, "y": 8}.items()):
        for i in range(count):
            pool.view(sid).write(0, i, block(100 * n + i), block(100 * n + i + 50))
    got = pool.gather(0, ["x", "y"], rope=rope)
    for i, sid in enumerate(["x", "y"]):
        want = pool.view(sid).rotated_keys(0, rope)
        n = want.shape[2]
        torch.testing.assert_close(got.k[i : i + 1, :, :n], want, rtol=0, atol=0)
    refresh = make_pool()
    refresh.view("z").write(0, 0, block(1), block(2))
    with pytest.raises(ValueError, match="needs position_policy='reposition'"):
        refresh.gather(0, ["z"], rope=rope)


def test_reset_and_release_reuse_slots() -> None:
    pool = make_pool()
    a = pool.view("a")
    for i in range(6):
        a.write(0, i, block(i), block(i))
        a.write(1, i, block(i), block(i))
    assert a.fill_blocks == 5 and a.next_index == 6
    pool.reset("a")
    assert a.fill_blocks == 0 and a.next_index == 0 and pool.view("a") is a
    pool.release("a")
    assert "a" not in pool and pool.num_free == 4
    b = pool.view("b")
    assert b.fill_blocks == 0 and b.session_id == "b"
    b.write(0, 0, block(7), block(8))
    assert torch.equal(b.keys_values(0).k, block(7))


def test_memory_accounting_and_constant_memory() -> None:
    pool = KVPool(3, 2, 3, 3, 2, 2, 4, dtype=torch.float16)
    per = 2 * 3 * 2 * (6 * 2) * 4 * 2  # K+V x layers x H x capacity tokens x D x fp16
    assert pool.bytes_per_session == per
    assert pool.total_bytes >= 2 * per
    total = pool.total_bytes
    ptr = pool._k.data_ptr()
    views = [pool.view(s) for s in ("s0", "s1")]
    nxt = [0, 0]  # each session's own block counter: s1 restarts its stream every 500 blocks
    x = torch.randn(1, 2, 2, 4, dtype=torch.float16)
    for i in range(2000):
        if i % 500 == 499:
            pool.reset("s1")
            nxt[1] = 0
        for s, v in enumerate(views):
            for layer in range(3):
                v.write(layer, nxt[s], x, x)
            nxt[s] += 1
        got = pool.gather(i % 3, ["s0", "s1"])
        assert got.lengths.tolist() == [min(nxt[0], 6) * 2, min(nxt[1], 6) * 2]
    assert pool.total_bytes == total and pool._k.data_ptr() == ptr
    assert [v.fill_blocks for v in views] == [6, 1]
