"""`video-pp`: the `video` pipeline with its DiT split over devices (pipeline parallel).

Everything but the DiT forward is the `video` pipeline's own code (frames in, VAE, noise schedule,
stream batch, decode, live params): :meth:`PipelinedVideoPipeline._forward` hands each batched DiT
forward to a :class:`~.ring.StageGroup` instead of running all blocks here. So a session's output is
the same, frame for frame, as on one device (tested), while each device holds only its blocks and
their KV. New prompt states ride in the forward message (every stage updates its cross-attention
keys before running that forward); a session's end travels the ring in order too.

Options: ``stages`` (ranks, default 2), ``stage_devices`` (one per stage; default: ``cuda:0..`` on
CUDA, the pipeline's device otherwise), ``timeout_s`` (a transfer that takes longer fails the
group), ``rebalance`` (move blocks between stages from measured stage times), ``inflight`` (how many
micro-batches of one tick are in the ring at once; default: ``stages``; 1 = one forward at a time),
``causal_weights`` / ``checkpoint_key`` (a CausVid / StreamDiffusionV2 ``.pt`` for a Wan folder, as for
`video`: each rank loads the tensors of its own blocks, and the StreamDiffusionV2 preset applies --
one cache per denoising step on every stage, the two-frame first chunk sent around the ring as one
forward, its sigma table and RoPE restart). ``attention`` must be "dense".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from streamserve.kv_rolling import KVPool

from ..demo_config import WEIGHTS_DIR
from ..params import VideoParams
from ..pipeline import VideoDiffusionPipeline, set_cpu_threads
from ..sampler import add_noise, predict_x0
from ..session import SessionState, Work
from ..session_cache import held_bytes
from .loading import load_rank0
from .ring import GroupSpec, StageGroup
from .split import Balancer, BalancerConfig, even_ranges, split_layers
from .stage import PoolArgs
from .wire import StageFailed

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_stage_devices(device: str, stages: int) -> tuple[str, ...]:
    if device.startswith("cuda"):
        if torch.cuda.device_count() < stages:
            raise ValueError(f"{stages} stages need {stages} GPUs; {torch.cuda.device_count()} visible")
        return tuple(f"cuda:{i}" for i in range(stages))
    return (device,) * stages


class PipelinedVideoPipeline(VideoDiffusionPipeline):
    name = "video-pp"
    description = "Live video diffusion with the DiT's blocks split over devices (pipeline parallel)."
    own_process = False  # its stage threads and devices live with the server's engines

    def __init__(
        self, device: str = "cpu", model: str | None = None, *, stages: int = 2,
        stage_devices: Sequence[str] | None = None, timeout_s: float = 30.0, rebalance: bool = True,
        balancer: BalancerConfig | None = None, inflight: int | None = None, max_sessions: int | None = None,
        num_sinks: int | None = None, window: int | None = None, position_policy: str | None = None,
        dtype: str | None = None, preset: str | None = None, threads: int | None = None,
        causal_weights: str | None = None, checkpoint_key: str = "generator", **options: Any,
    ) -> None:
        super(VideoDiffusionPipeline, self).__init__(device, **options)  # unknown options -> ValueError
        set_cpu_threads(device, threads)
        if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}")
        if dtype is not None and dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if not 1 <= stages <= 64:
            raise ValueError(f"stages must be in [1, 64], got {stages}")
        # Rank 0 reads only stage 0's blocks (never the whole DiT); the other ranks read their own.
        loaded, _, weights = load_rank0(model, device, _DTYPES[dtype] if dtype else None, stages, causal_weights,
                                        checkpoint_key)
        self._causal = (str(weights), checkpoint_key) if weights is not None else None
        self._setup(loaded, max_sessions, num_sinks, window, position_policy, preset)
        self.inflight = stages if inflight is None else int(inflight)
        if not 1 <= self.inflight <= 64:
            raise ValueError(f"inflight must be in [1, 64] micro-batches, got {inflight}")
        self.tick_stats: dict[str, float] = {"ticks": 0, "micro_batches": 0, "wall_s": 0.0, "max_in_flight": 0}
        self._start_group(stages, stage_devices, timeout_s, rebalance, balancer)

    def _start_group(self, stages: int, stage_devices: Sequence[str] | None, timeout_s: float, rebalance: bool,
                     balancer: BalancerConfig | None) -> None:
        folder = Path(self.loaded.source) / "transformer" if self.loaded.source else WEIGHTS_DIR / "transformer"
        ranges = split_layers(self.dit.num_layers, stages)
        devices = tuple(stage_devices) if stage_devices else default_stage_devices(self.device, stages)
        spec = GroupSpec(
            transformer_dir=str(folder), ranges=tuple((r.start, r.stop) for r in ranges), devices=devices,
            dtype=str(self.dit.dtype), window=self.window, timeout_s=timeout_s,
            backend="nccl" if devices[0].startswith("cuda") else "gloo",
            causal_weights=self._causal[0] if self._causal else None,
            checkpoint_key=self._causal[1] if self._causal else "generator",
        )
        # Prompt keys/values are computed per stage (Stage.set_prompt), not for every block here.
        self.dit.cross_kv = lambda prompt_states: []  # type: ignore[method-assign]
        self.group = StageGroup(self.dit, spec, Balancer(balancer) if rebalance and stages > 1 else None)
        self._sent_prompt: dict[str, torch.Tensor] = {}

    @classmethod
    def from_folder(cls, folder: str, *, stages: int, stage_devices: Sequence[str] | None = None,
                    timeout_s: float = 30.0, rebalance: bool = False, balancer: BalancerConfig | None = None,
                    max_sessions: int | None = None, num_sinks: int | None = None, window: int | None = None,
                    inflight: int | None = None, dtype: str | None = None) -> PipelinedVideoPipeline:
        """Tests and benchmarks: a model folder with explicit cache geometry."""
        return cls("cpu", folder, stages=stages, stage_devices=stage_devices, timeout_s=timeout_s,
                   rebalance=rebalance, balancer=balancer, max_sessions=max_sessions, num_sinks=num_sinks,
                   window=window, inflight=inflight, dtype=dtype)

    # ------------------------------------------------------------------ sessions

    def _check(self, params: Any) -> VideoParams:
        self.group._check()  # a broken group takes no new sessions (StageFailed -> 503)
        checked = super()._check(params)
        if checked.attention != "dense":
            raise ValueError(f"video-pp runs attention='dense' only, got {checked.attention!r}")
        return checked

    def close_session(self, session_id: str) -> None:
        super().close_session(session_id)
        self._sent_prompt.pop(session_id, None)
        self.group.close_session(session_id)

    def close(self) -> None:
        self.group.shutdown()

    def _pool(self, key: tuple[int, int, int, int], grid: tuple[int, int]) -> KVPool:
        """Rank 0's slot ledger (one layer): the KV itself lives on the stages, per block."""
        pool = self._pools.get(key)
        if pool is None:
            pool = KVPool(1, self.max_sessions * key[3], self.num_sinks, self.window + key[2], grid[0] * grid[1],
                          self.dit.heads, self.dit.head_dim, dtype=self.dit.dtype, device=self.dit.device,
                          position_policy=self.position_policy,  # type: ignore[arg-type]
                          refresh_every=self.loaded.defaults.refresh_every, restart_at=self.rules.restart_at,
                          sink_refresh_threshold=self.rules.sink_refresh_threshold)
            self._pools[key] = pool
        return pool

    def kv_bytes_for(self, params: VideoParams) -> int:
        """KV bytes a session needs on this process's device: stage 0's share of the blocks."""
        return super().kv_bytes_for(params) * len(self.group.stage.layers) // self.dit.num_layers

    def kv_held_bytes(self) -> int:
        """KV bytes the live sessions hold on this process's device (stage 0's blocks; rank 0's slot
        ledger holds no KV of its own), measured from the caches' tensors."""
        return held_bytes([p for pools in list(self.group.stage.pools.values()) for p in list(pools.pools.values())])

    # ------------------------------------------------------------------ the forward, over the ring

    def _forward(self, group: Sequence[tuple[SessionState, Work]]) -> None:
        """One tick of the single-process pipeline, sent as up to ``inflight`` micro-batches that are
        all in the ring at once (stage ``i`` runs micro-batch ``j`` while stage ``i+1`` runs ``j-1``):
        the items of a stream batch -- one stream's blocks at different denoising steps -- and the
        items of different streams are independent within a tick, and the stages defer the tick's KV
        writes to its end (:meth:`~.stage.Stage.forward`), so the result equals the batched forward."""
        st0 = group[0][0]
        new_prompt = self._new_prompts([st for st, _ in group])
        pool = self._pool_args(st0)
        timestep = (torch.tensor([w.t for _, w in group]) * 1000.0).tolist()  # as the one-process forward
        parts = micro_batches(len(group), self.inflight)
        t0 = time.perf_counter()
        try:
            for i, part in enumerate(parts):
                sub = [group[j] for j in part]
                sids = list(dict.fromkeys(st.session_id for st, _ in sub))
                prompt_sessions = [sid for sid in sids if sid in new_prompt]  # with its first micro-batch
                prompts = [new_prompt.pop(sid) for sid in prompt_sessions]
                for sid, states in zip(prompt_sessions, prompts, strict=True):
                    self._sent_prompt[sid] = states
                meta = {"items": [(st.cache_for(w), w.block) for st, w in sub], "sigma": [w.sigma for _, w in sub],
                        "sessions": [st.session_id for st, _ in sub], "timestep": [timestep[j] for j in part],
                        "key": st0.pool_key, "grid": st0.grid, "pool": pool.__dict__,
                        "prompt_sessions": prompt_sessions, "tick_end": i == len(parts) - 1}
                self.group.submit(meta, torch.stack([w.x for _, w in sub]), prompts)  # [n, C, 1, h, w]
            self.tick_stats["max_in_flight"] = max(self.tick_stats["max_in_flight"], self.group.pending)
            for part in parts:
                v = self.group.collect()
                sub = [group[j] for j in part]
                x = torch.stack([w.x for _, w in sub])
                sig = torch.tensor([w.sigma for _, w in sub], device=x.device)
                x0 = predict_x0(x, v.to(x.dtype), sig)
                for (_, w), xi in zip(sub, x0.unbind(0), strict=True):
                    w.x = xi
        except StageFailed:
            for st, _ in group:  # the next forward must resend the prompt (to a rebuilt group)
                self._sent_prompt.pop(st.session_id, None)
            raise
        self.tick_stats["ticks"] += 1
        self.tick_stats["micro_batches"] += len(parts)
        self.tick_stats["wall_s"] += time.perf_counter() - t0

    def _new_prompts(self, states: Sequence[SessionState]) -> dict[str, torch.Tensor]:
        """Prompt states the stages have not seen yet, per session (sent with its next forward)."""
        new: dict[str, torch.Tensor] = {}
        for st in states:
            current = st.prompt.current()  # [1, Lc, dim]
            last = self._sent_prompt.get(st.session_id)
            if st.session_id not in new and (last is None or not torch.equal(last, current)):
                new[st.session_id] = current
        return new

    def _pool_args(self, st: SessionState) -> PoolArgs:
        """The stages' cache geometry for ``st``'s pool (its key: resolution, lag, caches per session)."""
        key = st.pool_key
        return PoolArgs(self.max_sessions * key[3], self.num_sinks, self.window + key[2], st.grid[0] * st.grid[1],
                        self.position_policy, self.loaded.defaults.refresh_every, self.rules.restart_at,
                        self.rules.sink_refresh_threshold)

    def _prefill(self, st: SessionState) -> Work:
        """StreamDiffusionV2's first chunk (two latent frames, both ways, all steps) over the ring: one
        forward per step, written to every per-step cache of the session on every stage."""
        w, st.prefill = st.prefill, None
        assert w is not None
        try:
            while True:
                prompts = self._new_prompts([st])
                self._sent_prompt.update(prompts)
                meta = {"items": [], "sigma": [w.sigma], "timestep": [w.t * 1000.0], "key": st.pool_key,
                        "grid": st.grid, "pool": self._pool_args(st).__dict__, "prompt_sessions": list(prompts),
                        "prefill": {"session": st.session_id, "caches": list(st.caches)}, "tick_end": True}
                x = w.x[None]  # [1, C, 2, h, w]
                v = self.group.forward(meta, x, list(prompts.values()))
                w.x = predict_x0(x, v.to(x.dtype), w.sigma)[0]
                if w.last:
                    break
                w.step += 1
                w.x = add_noise(w.x, st.noise_for(w.step, w.x), w.sigma)
        except StageFailed:
            self._sent_prompt.pop(st.session_id, None)
            raise
        st.blocks_done += w.x.shape[1]
        return w

    def session_stats(self, session_id: str) -> dict[str, Any]:
        """The `video` figures, with the KV ones replaced: the KV lives on the stages, not on rank 0."""
        stats = super().session_stats(session_id)
        for key in ("kv_blocks", "kv_bytes_per_session", "kv_max_position"):
            stats[key] = None
        stats["parallel"] = self.parallel_stats()
        return stats

    def parallel_stats(self) -> dict[str, Any]:
        """Stage ranges, measured stage seconds (EMA), transfers and moves."""
        g = self.group
        n = max(1.0, g.stats["forwards"])
        t = self.tick_stats
        busy = g.stats["stage_seconds"]  # stage compute seconds, all stages
        return {
            "stages": [(r.start, r.stop) for r in g.ranges], "devices": list(g.spec.devices),
            "stage_seconds": g.stage_times, "forwards": int(g.stats["forwards"]), "moves": int(g.stats["moves"]),
            "round_trip_s": g.stats["round_trip_seconds"] / n, "compute_s": g.stats["stage_seconds"] / n,
            "broken": g.broken, "inflight": self.inflight, "max_in_flight": int(t["max_in_flight"]),
            "ticks": int(t["ticks"]), "micro_batches_per_tick": t["micro_batches"] / max(1.0, t["ticks"]),
            "bubble": 1.0 - busy / (len(g.ranges) * t["wall_s"]) if t["wall_s"] > 0 else None,
        }


def micro_batches(n: int, parts: int) -> list[range]:
    """Split ``n`` items, in order, into ``min(parts, n)`` contiguous runs as even as possible."""
    if n < 1 or parts < 1:
        raise ValueError(f"need at least one item and one part, got {n} items, {parts} parts")
    return even_ranges(n, min(parts, n))


def with_stages(stages: int, stage_devices: Sequence[str] | None = None,
                timeout_s: float = 30.0) -> type[PipelinedVideoPipeline]:
    """`video-pp` with other defaults (``streamserve serve --pp-stages 4 --pp-devices cuda:0,...``):
    register the returned class to replace the built-in one."""
    if not 1 <= stages <= 64:
        raise ValueError(f"stages must be in [1, 64], got {stages}")
    if stage_devices is not None and len(stage_devices) != stages:
        raise ValueError(f"{stages} stages need {stages} devices, got {list(stage_devices)}")

    class Configured(PipelinedVideoPipeline):
        def __init__(self, device: str = "cpu", model: str | None = None, *, causal_weights: str | None = None,
                     checkpoint_key: str = "generator", **options: Any) -> None:
            # the causal options are named: the server passes a pipeline only the options it names
            options.update(causal_weights=causal_weights, checkpoint_key=checkpoint_key)
            options.setdefault("stages", stages)
            options.setdefault("stage_devices", stage_devices)
            options.setdefault("timeout_s", timeout_s)
            super().__init__(device, model, **options)

    Configured.__name__ = Configured.__qualname__ = f"PipelinedVideoPipeline{stages}"
    return Configured
