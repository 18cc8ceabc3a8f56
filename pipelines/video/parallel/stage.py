"""One pipeline stage: a contiguous range of the causal DiT's blocks, their rolling KV and prompt keys.

A stage runs ``embed`` (stage 0), its blocks, and ``head`` (the last stage) of a
:class:`~streamserve.pipelines.video.model.CausalWanDiT` whose other blocks are left on the ``meta``
device (no memory). It keeps, per session:

* the rolling KV of its own blocks only (one single-layer :class:`KVPool` per block and resolution,
  so a block and its KV move together when the stages rebalance);
* the session's prompt states, and the cross-attention keys/values of its own blocks, recomputed
  when a new prompt arrives in a forward message (so a prompt change takes effect in stream order).

Shapes: x ``[N, C, 1, h, w]``; hidden ``[N, S, dim]``; velocity ``[N, C, 1, h, w]``.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, cast

import torch

from streamserve.kv_rolling import BatchedKV, KVPool, SessionKV

from ..attention import cross_kv
from ..checkpoint import _read_state_dict, load_causal_state_dict, map_causvid_key
from ..model import CausalWanDiT, CrossKV
from ..prefill import PrefillAttention
from ..stream_attention import StreamAttention


@dataclasses.dataclass(frozen=True)
class PoolArgs:
    """Geometry of one resolution's rolling caches (the same on every stage)."""

    max_sessions: int
    num_sinks: int
    window: int  # attention window + extra blocks for the lag
    block_tokens: int
    position_policy: str
    refresh_every: int
    restart_at: int | None = None  # the preset's RoPE restart (None: num_sinks + window - 1)
    sink_refresh_threshold: float | None = None  # the preset's adaptive sink refresh (None: off)


class LayerPools:
    """A stage's KV for one resolution: ``{layer: KVPool(num_layers=1)}``, with the pool API that
    :class:`StreamAttention` uses (``view``, ``gather(layer)``, ``write(layer)``)."""

    def __init__(self, layers: Sequence[int], args: PoolArgs, dit: CausalWanDiT) -> None:
        self.args = args
        self.pools = {layer: self._new(args, dit) for layer in layers}
        self.deferred: list[tuple[int, Sequence[Hashable], Sequence[int], torch.Tensor, torch.Tensor]] | None = None

    @staticmethod
    def _new(args: PoolArgs, dit: CausalWanDiT) -> KVPool:
        return KVPool(1, args.max_sessions, args.num_sinks, args.window, args.block_tokens, dit.heads,
                      dit.head_dim, dtype=dit.dtype, device=dit.device,
                      position_policy=args.position_policy,  # type: ignore[arg-type]
                      refresh_every=args.refresh_every, restart_at=args.restart_at,
                      sink_refresh_threshold=args.sink_refresh_threshold)

    def _any(self) -> KVPool:
        return self.pools[min(self.pools)]

    @property
    def position_policy(self) -> str:
        return self._any().position_policy

    @property
    def capacity_tokens(self) -> int:
        return self._any().capacity_tokens

    def view(self, session_id: Hashable) -> SessionKV:
        views = [p.view(session_id) for p in self.pools.values()]  # opens the session in every layer
        return views[0]

    def gather(self, layer: int, session_ids: Sequence[Hashable], *, rope: Any = None) -> BatchedKV:
        return self.pools[layer].gather(0, session_ids, rope=rope)

    def write(self, layer: int, session_ids: Sequence[Hashable], blocks: Sequence[int], k: torch.Tensor,
              v: torch.Tensor) -> None:
        if self.deferred is not None:  # a micro-batch of a tick: written when the tick ends
            self.deferred.append((layer, list(session_ids), list(blocks), k, v))
            return
        self.pools[layer].write(0, session_ids, blocks, k, v)

    def flush(self) -> None:
        """Apply the deferred writes in the order they were made (the batched forward's order)."""
        writes, self.deferred = self.deferred or [], None
        for layer, session_ids, blocks, k, v in writes:
            self.pools[layer].write(0, session_ids, blocks, k, v)

    def release(self, session_id: Hashable) -> None:
        """Free the session's caches: its own id, or ``(id, step)`` with one cache per step."""
        for p in self.pools.values():
            for cid in p.sessions:
                if cid == session_id or (isinstance(cid, tuple) and cid and cid[0] == session_id):
                    p.release(cid)

    @property
    def sessions(self) -> list[Hashable]:
        return self._any().sessions

    @property
    def nbytes(self) -> int:
        return sum(p.total_bytes for p in self.pools.values())


class Stage:
    """Blocks ``layers`` of ``dit`` as stage ``index`` of ``count`` (see the module doc).

    ``window``: blocks each item attends to (the caches hold more, see :class:`PoolArgs`).
    """

    def __init__(self, dit: CausalWanDiT, layers: range, index: int, count: int, window: int) -> None:
        self.dit = dit
        self.layers = layers
        self.index, self.count = index, count
        self.window = window
        self.pools: dict[Any, LayerPools] = {}
        self.prompts: dict[str, torch.Tensor] = {}  # session -> prompt states [1, Lc, dim]
        self.cross: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}

    @property
    def first(self) -> bool:
        return self.index == 0

    @property
    def last(self) -> bool:
        return self.index == self.count - 1

    # ------------------------------------------------------------------ prompts and sessions

    def set_prompt(self, session_id: str, states: torch.Tensor) -> None:
        """New prompt states ``[1, Lc, dim]`` for a session: recompute this stage's cross keys/values."""
        states = states.to(device=self.dit.device, dtype=self.dit.dtype)
        self.prompts[session_id] = states
        blocks = self.dit.transformer.blocks
        self.cross[session_id] = {layer: cross_kv(blocks[layer].attn2, states) for layer in self.layers}

    def close_session(self, session_id: str) -> None:
        self.prompts.pop(session_id, None)
        self.cross.pop(session_id, None)
        for key in list(self.pools):
            self.pools[key].release(session_id)
            if not self.pools[key].sessions:
                del self.pools[key]

    # ------------------------------------------------------------------ forward

    @torch.inference_mode()
    def forward(self, meta: dict[str, Any], data: torch.Tensor) -> torch.Tensor:
        """Stage 0 takes latents ``x``, later stages the previous stage's hidden states. Returns hidden
        states for the next stage, or (last stage) the velocity.

        A *tick* (one batched forward of the single-process pipeline) may arrive as several
        micro-batches (``meta["tick_end"]`` False on all but the last): their KV writes are deferred
        until the tick's last micro-batch has run, so every micro-batch reads the cache as it was
        before the tick -- what the batched forward does (all reads before the writes) -- and the
        writes land in the batched order. Messages reach a stage in order, so a tick is never
        interleaved with another message."""
        items: list[tuple[Hashable, int]] = [tuple(i) for i in meta["items"]]  # type: ignore[misc]
        key, grid = tuple(meta["key"]), tuple(meta["grid"])
        pools = self.pools.get(key)
        if pools is None:
            pools = self.pools[key] = LayerPools(self.layers, PoolArgs(**meta["pool"]), self.dit)
        if pools.deferred is None:
            pools.deferred = []
        try:
            out = self._run(meta, data, items, pools, grid)
        except BaseException:
            pools.deferred = None  # a failed tick writes nothing (the group is broken anyway)
            raise
        if meta.get("tick_end", True):
            pools.flush()
        return out

    def _run(self, meta: dict[str, Any], data: torch.Tensor, items: list[tuple[Hashable, int]], pools: LayerPools,
             grid: tuple[Any, ...]) -> torch.Tensor:
        """``meta``: ``items`` (cache id, block) per item and ``sessions`` (whose prompt each item uses;
        default: the cache ids), ``timestep`` (what the model is told, 0..1000; default: ``sigma`` x
        1000), and for StreamDiffusionV2's first chunk ``prefill`` ({"session", "caches"}: one item of
        several latent frames, attending to each other, written to every cache of the session)."""
        if "timestep" in meta:
            timestep = torch.tensor(meta["timestep"], device=self.dit.device)
        else:
            timestep = torch.tensor(meta["sigma"], device=self.dit.device) * 1000.0
        temb, proj = self.dit.time_embedding(timestep)  # [N, dim], [N, 6, dim]
        hidden = self.dit.embed(data) if self.first else data.to(self.dit.dtype)  # [N, S, dim]
        hw = (int(grid[0]), int(grid[1]))
        prefill = meta.get("prefill")
        strategy: Any
        if prefill is not None:
            sid = prefill["session"]
            strategy = PrefillAttention(pools, list(prefill["caches"]), cast(CrossKV, self.cross[sid]),  # type: ignore[arg-type]
                                        self.dit.rope, hw, int(meta["x_shape"][2]))
        else:
            sessions = meta.get("sessions") or [cid for cid, _ in items]
            layer_cross = {
                layer: (torch.cat([self.cross[sid][layer][0] for sid in sessions]),
                        torch.cat([self.cross[sid][layer][1] for sid in sessions]))
                for layer in self.layers
            }
            strategy = StreamAttention(pools, items, cast(CrossKV, layer_cross), self.dit.rope,  # type: ignore[arg-type]
                                       hw, self.window)
        empty_context = torch.empty(len(items), 0, self.dit.dim, dtype=self.dit.dtype, device=self.dit.device)
        hidden = self.dit.run_blocks(hidden, proj, empty_context, strategy, self.layers)
        if self.last:
            return self.dit.head(hidden, temb, tuple(meta["x_shape"]))
        return hidden

    # ------------------------------------------------------------------ rebalancing

    def give_block(self, layer: int) -> bytes:
        """Remove boundary block ``layer`` from this stage: its weights and KV, serialized."""
        if layer not in (self.layers.start, self.layers.stop - 1) or len(self.layers) < 2:
            raise ValueError(f"stage {self.index} ({self.layers}) cannot give block {layer}")
        if any(p.deferred for p in self.pools.values()):
            raise ValueError(f"stage {self.index}: a block moves between ticks only (KV writes pending)")
        block = self.dit.transformer.blocks[layer]
        payload = {"layer": layer, "weights": block.state_dict(),
                   "kv": {key: pools.pools.pop(layer) for key, pools in self.pools.items()}}
        buf = io.BytesIO()
        torch.save(payload, buf)
        block.to("meta")  # frees the weights
        self.layers = (range(self.layers.start + 1, self.layers.stop) if layer == self.layers.start
                       else range(self.layers.start, self.layers.stop - 1))
        for per_layer in self.cross.values():
            per_layer.pop(layer, None)
        return buf.getvalue()

    def take_block(self, blob: bytes) -> int:
        """Install a block given by a neighbouring stage (weights, KV of every resolution)."""
        payload = torch.load(io.BytesIO(blob), map_location=self.dit.device, weights_only=False)
        layer = int(payload["layer"])
        if layer == self.layers.start - 1:
            self.layers = range(layer, self.layers.stop)
        elif layer == self.layers.stop:
            self.layers = range(self.layers.start, layer + 1)
        else:
            raise ValueError(f"stage {self.index} ({self.layers}) cannot take block {layer}: not adjacent")
        block = self.dit.transformer.blocks[layer]
        block.load_state_dict(payload["weights"], assign=True)
        for key, pool in payload["kv"].items():
            self.pools[key].pools[layer] = pool
        for sid, states in self.prompts.items():
            self.cross[sid][layer] = cross_kv(block.attn2, states)
        return layer

    @property
    def kv_bytes(self) -> int:
        return sum(p.nbytes for p in self.pools.values())


def drop_other_blocks(dit: CausalWanDiT, layers: range) -> None:
    """Free every block outside ``layers`` (moved to the ``meta`` device: shapes kept, no memory)."""
    for i, block in enumerate(dit.transformer.blocks):
        if i not in layers:
            block.to("meta")


def load_stage_causal(dit: CausalWanDiT, weights: str | Path, layers: range, checkpoint_key: str = "generator") -> int:
    """Copy a CausVid / StreamDiffusionV2 generator's tensors for a stage -- its blocks and the shared
    parts -- into ``dit`` (the single-process loader's key mapping; the checkpoint is memory-mapped,
    so other blocks' tensors are never read). Returns how many tensors were loaded; ValueError when
    one the stage needs is missing."""
    path = Path(weights)
    if not path.is_file():
        raise ValueError(f"causal weights {path} do not exist")

    def ours(name: str) -> bool:
        return not name.startswith("blocks.") or int(name.split(".")[1]) in layers

    state = {k: v for k, v in _read_state_dict(path, checkpoint_key).items() if ours(map_causvid_key(k))}
    report = load_causal_state_dict(dit.transformer, state, strict=False)
    missing = [n for n in report.missing if ours(n) and not n.startswith("rope.")]
    if missing:
        raise ValueError(f"causal checkpoint {path} lacks weights of stage blocks {layers}: {missing[:5]}")
    return report.loaded


def load_stage_dit(folder: str | Path, layers: range, device: str, dtype: torch.dtype) -> CausalWanDiT:
    """Load a diffusers ``WanTransformer3DModel`` folder reading only the tensors a stage needs: its
    blocks plus the small shared parts (patch embedding, condition embedder, output head)."""
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
    from safetensors import safe_open

    folder = Path(folder)
    config = WanTransformer3DModel.load_config(folder)
    with torch.device("meta"):
        transformer: Any = WanTransformer3DModel.from_config(config)
    cfg = transformer.config
    transformer.rope = WanRotaryPosEmbed(int(cfg.attention_head_dim), tuple(cfg.patch_size), int(cfg.rope_max_seq_len))
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    files = (sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()}) if index.is_file()
             else [folder / "diffusion_pytorch_model.safetensors"])
    wanted: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if name.startswith("blocks.") and int(name.split(".")[1]) not in layers:
                    continue
                wanted[name] = f.get_tensor(name).to(device=device, dtype=dtype)
    missing = [n for n in transformer.state_dict() if n not in wanted and not n.startswith("blocks.")
               and not n.startswith("rope.")]
    if missing:
        raise ValueError(f"{folder} lacks tensors {missing[:5]} needed by every stage")
    transformer.load_state_dict(wanted, strict=False, assign=True)
    if dtype != torch.float32:  # the modules diffusers keeps in fp32 (as the single-process loader does)
        keep = getattr(WanTransformer3DModel, "_keep_in_fp32_modules", None) or []
        for mod_name, module in transformer.named_modules():
            if any(k in mod_name.split(".") for k in keep):
                module.float()
    transformer.rope.to(device)
    dit = CausalWanDiT(transformer)
    dit.rope.to(device)
    return dit.eval()
