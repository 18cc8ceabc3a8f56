"""Per-session state and KV-pool bookkeeping of the video pipeline (see docs/video.md).

Sessions that share a resolution, lag and caches-per-session share one :class:`~streamserve.kv_rolling.KVPool`;
a session holds one slot (or one per denoising step, StreamDiffusionV2's layout) and gives it back on close.
:class:`SessionCache` is mixed into :class:`~.pipeline.VideoDiffusionPipeline`, which sets the attributes
declared here; subclasses (the pipelined variant) override :meth:`SessionCache._pool`.
"""

from __future__ import annotations

import abc
from typing import Any

import torch

from streamserve.kv_rolling import KVPool

from .checkpoint import LoadedModel
from .model import CausalWanDiT
from .params import VideoParams
from .presets import StreamRules
from .session import PromptBlend, SessionState
from .vae import StreamingVAE


class SessionCache:
    """Opens, sizes and releases session state and the KV pools behind it."""

    loaded: LoadedModel
    dit: CausalWanDiT
    vae: StreamingVAE
    rules: StreamRules
    max_sessions: int
    num_sinks: int
    window: int
    position_policy: str
    _pools: dict[tuple[int, int, int, int], KVPool]
    _sessions: dict[str, SessionState]

    @abc.abstractmethod
    def _prompt_for(self, params: VideoParams) -> str:
        """The text handed to the prompt encoder (the pipeline defines it)."""

    def _mono_for(self, params: VideoParams) -> float:
        """1 for the demo model's monochrome styles (its grayscale head), 0 for anything else."""
        from .styles import MONOCHROME

        return 1.0 if self.loaded.prompts.choices is not None and self._prompt_for(params) in MONOCHROME else 0.0

    def _new_prompt(self, params: VideoParams) -> PromptBlend:
        """The session's prompt state for ``params``, encoded and labelled."""
        prompt = PromptBlend(self.dit, self.loaded.prompts.encode(self._prompt_for(params)), self._mono_for(params))
        prompt.text = params.prompt_text()
        return prompt

    def _new_state(self, session_id: str, params: VideoParams, prompt: PromptBlend | None = None) -> SessionState:
        d = self.loaded.defaults
        width, height = params.width or d.width, params.height or d.height
        f = self.vae.spatial_factor
        lh, lw = height // f, width // f
        grid = self.dit.token_grid(lh, lw)
        per_step = self.rules.cache_per_step and params.stream_batch
        copies = params.num_steps if per_step else 1  # StreamDiffusionV2: one cache per denoising step
        key = (lh, lw, 0 if per_step else params.extra_cache_blocks, copies)
        pool = self._pool(key, grid)
        caches: list[Any] = [(session_id, k) for k in range(copies)] if per_step else [session_id]
        if caches[0] not in pool:
            if pool.num_free < copies:
                raise ValueError(f"the video pipeline holds at most {self.max_sessions} sessions at "
                                 f"{width}x{height} with {params.num_steps} step(s); all are in use")
            for cid in caches:
                pool.view(cid)
        if prompt is None:
            prompt = self._new_prompt(params)
        gen = torch.Generator(device=self.dit.device).manual_seed(params.seed)
        shape = (self.vae.latent_channels, 1, lh, lw)
        noise = [torch.randn(shape, generator=gen, device=self.dit.device, dtype=self.dit.dtype)
                 for _ in range(params.num_steps)]
        return SessionState(session_id, params, width, height, (lh, lw), grid, key, self.vae.new_state(),
                            prompt, gen, noise, caches=caches)

    def _pool(self, key: tuple[int, int, int, int], grid: tuple[int, int]) -> KVPool:
        """The pool of one resolution/lag; ``key[3]`` caches per session (one per step or one)."""
        pool = self._pools.get(key)
        if pool is None:
            pool = KVPool(
                self.dit.num_layers, self.max_sessions * key[3], self.num_sinks, self.window + key[2],
                grid[0] * grid[1], self.dit.heads, self.dit.head_dim, dtype=self.dit.dtype, device=self.dit.device,
                position_policy=self.position_policy,  # type: ignore[arg-type]
                refresh_every=self.loaded.defaults.refresh_every, restart_at=self.rules.restart_at,
                sink_refresh_threshold=self.rules.sink_refresh_threshold,
            )
            self._pools[key] = pool
        return pool

    def close_session(self, session_id: str) -> None:
        st = self._sessions.pop(session_id, None)
        if st is None:
            return
        pool = self._pools.get(st.pool_key)
        if pool is not None:
            for cid in st.caches:
                if cid in pool:
                    pool.release(cid)
            if not pool.sessions:
                del self._pools[st.pool_key]

    def session_stats(self, session_id: str) -> dict[str, Any]:
        """Live figures of one session (blocks, lag, noise level, motion, KV memory and positions)."""
        st = self._sessions[session_id]
        pool = self._pools[st.pool_key]
        view = pool.view(st.caches[0])
        return {
            "blocks_in": st.next_block,
            "blocks_out": st.blocks_done,
            "lag_blocks": st.params.lag_blocks,
            "sigma": st.last_sigma,
            "motion": st.motion.motion,
            "prompt_blend": st.prompt.alpha,
            "kv_blocks": view.fill_blocks,
            "kv_bytes_per_session": pool.bytes_per_session,
            "kv_max_position": int(view.layer(0).block_positions().max()) if view.fill_blocks else 0,
            "resolution": (st.width, st.height),
        }

    @property
    def kv_bytes(self) -> int:
        """All KV memory the pipeline holds (every pool)."""
        return sum(p.total_bytes for p in self._pools.values())

    # ------------------------------------------------------------------ KV memory for placement

    def kv_bytes_for(self, params: VideoParams) -> int:
        """Bytes of K/V storage one session with ``params`` holds (its cache slots, every layer), from
        the model's shape: what placement checks a device's free KV memory against."""
        d = self.loaded.defaults
        lh, lw = (params.height or d.height) // self.vae.spatial_factor, (params.width or d.width) // self.vae.spatial_factor
        gh, gw = self.dit.token_grid(lh, lw)
        per_step = self.rules.cache_per_step and params.stream_batch
        copies = params.num_steps if per_step else 1
        extra = 0 if per_step else params.extra_cache_blocks
        tokens = (self.num_sinks + self.window + extra) * gh * gw
        elem = torch.empty((), dtype=self.dit.dtype).element_size()
        return copies * 2 * self.dit.num_layers * self.dit.heads * tokens * self.dit.head_dim * elem

    def kv_held_bytes(self) -> int:
        """K/V bytes the live sessions' caches hold, measured from their tensors (each cache's slot
        storage in every layer). Safe to call from another thread than the engine's: it reads copies
        of the pool and session lists (a session opening meanwhile is counted or not, never half)."""
        return held_bytes(list(self._pools.values()))


def held_bytes(pools: list[KVPool]) -> int:
    """Bytes of the slot storage (K and V, every layer) of the sessions live in ``pools``."""
    total = 0
    for pool in pools:
        for view in pool.live_views():
            for layer in range(pool.num_layers):
                k, v = view.layer(layer).storage
                total += k.numel() * k.element_size() + v.numel() * v.element_size()
    return total
