"""`video`: live video-to-video diffusion with a causal streaming DiT (see docs/video.md).

One call of :meth:`VideoDiffusionPipeline.step` takes at most one camera frame per session and:

1. fits each frame to the session's resolution (:mod:`.resize`) and collects it into a chunk; a full
   chunk (1 frame for the demo VAE, 1 then 4 for Wan's) is encoded to one latent block;
2. measures motion and picks the block's noise schedule (:mod:`.motion`, :mod:`.sampler`), noises the
   input latent to the first level (video-to-video);
3. runs the DiT on every block in flight -- all sessions that share a resolution, lag and attention
   backend in one batched forward -- against each session's rolling KV cache;
4. decodes finished blocks and returns them with the timing (pts, arrival, deadline) of the frames
   they answer.

Everything runs on the engine thread; per-session state lives in :class:`~.session.SessionState`, opened
and released (with its KV-pool slots) by :class:`~.session_cache.SessionCache`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from streamserve.core.cpu import limit_blas_threads, usable_cores
from streamserve.core.frames import MediaKind, VideoFrame
from streamserve.core.plan import Batch, StepOutput, WorkItem
from streamserve.kv_rolling import KVPool
from streamserve.pipelines.base import Pipeline

from .checkpoint import LoadedModel, load_model
from .params import VideoParams
from .prefill import PrefillAttention
from .presets import StreamRules, make_rules
from .resize import fit_frame, stack, to_rgb
from .sampler import Schedule, SigmaTable, add_noise, predict_x0
from .session import SessionState, Work
from .session_cache import SessionCache
from .stream_attention import AttendFn, StreamAttention, dense_attend

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PATCH_PIXELS = 16  # VAE factor 8 x patch 2: sizes must be multiples of this


def set_cpu_threads(device: str, threads: int | None) -> None:
    """On CPU, give torch all cores but one (at least one): the transport's decoders and encoders
    and the event loop need a core, and an oversubscribed OpenMP pool stalls (busy-waiting threads).
    ``threads`` overrides; it is process-wide (``torch.set_num_threads``), like the engine thread.
    numpy's BLAS gets one thread on every device (`limit_blas_threads`: its pool busy-waits)."""
    limit_blas_threads(1)
    if device != "cpu" and threads is None:
        return
    n = threads if threads is not None else max(1, usable_cores() - 1)
    if not 1 <= n <= 1024:
        raise ValueError(f"threads must be in [1, 1024], got {threads}")
    torch.set_num_threads(n)


class VideoDiffusionPipeline(SessionCache, Pipeline):
    """Causal streaming video diffusion. ``model``: a diffusers Wan2.1 T2V folder or a demo-format
    folder; ``None`` loads the embedded demo model (camera stylization, trained offline on CPU).

    Options (all optional): ``max_sessions`` (KV slots per resolution), ``num_sinks``/``window``
    (rolling cache, in blocks), ``position_policy`` ("refresh" | "reposition"), ``dtype``
    ("float32" | "float16" | "bfloat16"), ``causal_weights`` (a CausVid/StreamDiffusionV2 ``.pt`` to
    load onto a Wan folder's transformer), ``checkpoint_key`` ("generator", StreamDiffusionV2's choice
    and the default, or "generator_ema": which entry of a training checkpoint to load), ``preset``
    ("streamserve" | "streamdiffusionv2": the streaming rules of :mod:`.presets`; default: the model's,
    "streamdiffusionv2" when causal weights are loaded), ``threads`` (CPU: torch threads; default all
    cores but one).
    """

    name = "video"
    description = "Live video-to-video diffusion (causal Wan DiT, rolling KV); default: camera stylization."
    Params = VideoParams
    inputs = frozenset({MediaKind.VIDEO})
    outputs = frozenset({MediaKind.VIDEO})
    own_process = True  # `streamserve serve` runs it in a child process (docs/architecture.md)

    def __init__(
        self,
        device: str = "cpu",
        model: str | None = None,
        *,
        max_sessions: int | None = None,
        num_sinks: int | None = None,
        window: int | None = None,
        position_policy: str | None = None,
        dtype: str | None = None,
        causal_weights: str | None = None,
        checkpoint_key: str = "generator",
        preset: str | None = None,
        threads: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(device, **options)  # unknown options -> ValueError
        set_cpu_threads(device, threads)
        if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}")
        if dtype is not None and dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        loaded = load_model(model, device, _DTYPES[dtype] if dtype else None, causal_weights, checkpoint_key)
        self._setup(loaded, max_sessions, num_sinks, window, position_policy, preset)

    @classmethod
    def from_loaded(
        cls, loaded: LoadedModel, device: str = "cpu", *, max_sessions: int | None = None,
        num_sinks: int | None = None, window: int | None = None, position_policy: str | None = None,
        preset: str | None = None,
    ) -> VideoDiffusionPipeline:
        """A pipeline over modules already in memory (benchmarks with random weights, tests)."""
        self = cls.__new__(cls)
        Pipeline.__init__(self, device)
        self._setup(loaded, max_sessions, num_sinks, window, position_policy, preset)
        return self

    def _setup(
        self, loaded: LoadedModel, max_sessions: int | None, num_sinks: int | None, window: int | None,
        position_policy: str | None, preset: str | None = None,
    ) -> None:
        self.loaded = loaded
        d = loaded.defaults
        self.num_sinks = d.num_sinks if num_sinks is None else num_sinks
        self.window = d.window if window is None else window
        self.rules: StreamRules = make_rules(preset or d.preset, self.num_sinks, self.window)
        shift = self.rules.sigma_table_shift
        self._sigma_table = SigmaTable(shift) if shift is not None else None
        sdv2 = self.rules.preset == "streamdiffusionv2"  # StreamDiffusionV2 stores rotated keys, refreshes
        self.position_policy = position_policy or ("refresh" if sdv2 else d.position_policy)
        self.max_sessions = max_sessions or (16 if d.kind == "demo" else 4)
        if self.num_sinks < 1 or self.window < 1:
            raise ValueError(f"num_sinks and window must be >= 1 block, got {self.num_sinks} and {self.window}")
        if self.position_policy not in ("refresh", "reposition"):
            raise ValueError(f"position_policy must be refresh or reposition, got {self.position_policy!r}")
        if not 1 <= self.max_sessions <= 1024:
            raise ValueError(f"max_sessions must be in [1, 1024], got {self.max_sessions}")
        self.dit = loaded.dit.requires_grad_(False)
        self.vae = loaded.vae
        self._pools: dict[tuple[int, int, int, int], KVPool] = {}
        self._sessions: dict[str, SessionState] = {}
        self._attend: dict[str, AttendFn] = {"dense": dense_attend}

    # ------------------------------------------------------------------ lifecycle

    def warmup(self) -> None:
        """Run a few frames through a throwaway session (first-call allocations, kernel selection).

        On a GPU at the model's default resolution (kernels are picked per shape); on CPU, where only
        first-call allocations are warmed, at no more than 256x256 so a big VAE starts quickly."""
        import numpy as np

        sid = "__warmup__"
        d = self.loaded.defaults
        size: dict[str, Any] = {} if self.dit.device.type != "cpu" else {
            "width": max(d.min_size, min(d.width, 256)), "height": max(d.min_size, min(d.height, 256))}
        self.open_session(sid, VideoParams(**size))
        try:
            st = self._sessions[sid]
            frame = np.zeros((st.height, st.width, 3), np.uint8)
            for i in range(self.vae.temporal_factor + 1):
                self.step(Batch(self.name, (WorkItem(sid, VideoFrame(frame, i, 0.0, 1.0)),)))
        finally:
            self.close_session(sid)

    def work_shape(self, params: Any) -> dict[str, Any]:
        d, p = self.loaded.defaults, params
        return {"width": p.width or d.width, "height": p.height or d.height, "steps": p.num_steps,
                "stream_batch": p.stream_batch, "min_size": d.min_size, "size_multiple": PATCH_PIXELS}

    def open_pieces(self, session_id: str, params: Any) -> list[tuple[str, Callable[[], None]]]:
        """Two pieces the scheduler runs between other sessions' steps: check + prompt encoding (a
        real text encoder is the expensive part), then the session's KV slot and noise."""
        ready: dict[str, Any] = {}

        def encode() -> None:
            if session_id in self._sessions:
                raise ValueError(f"session {session_id!r} is already open")
            checked = self._check(params)
            ready.update(params=checked, prompt=self._new_prompt(checked))

        def allocate() -> None:
            self._sessions[session_id] = self._new_state(session_id, ready["params"], prompt=ready["prompt"])

        return [("prompt", encode), ("state", allocate)]

    def check_params(self, params: Any) -> None:
        self._check(params)

    def open_session(self, session_id: str, params: Any) -> None:
        if session_id in self._sessions:
            raise ValueError(f"session {session_id!r} is already open")
        st = self._new_state(session_id, self._check(params))
        self._sessions[session_id] = st

    def update_params(self, session_id: str, params: Any) -> None:
        st = self._sessions.get(session_id)
        if st is None:
            raise ValueError(f"no open video session {session_id!r}")
        new = self._check(params)
        old = st.params
        restart = (new.width, new.height, new.extra_cache_blocks, new.lag_blocks, new.num_steps, new.seed) != (
            old.width, old.height, old.extra_cache_blocks, old.lag_blocks, old.num_steps, old.seed)
        if restart:  # resolution, lag or noise changed: a fresh stream (the cache layout differs)
            self.close_session(session_id)
            self._sessions[session_id] = self._new_state(session_id, new, prompt=st.prompt)
            log.info("video session %s restarted its stream for new params", session_id)
            st = self._sessions[session_id]
        st.params = new
        if new.prompt_text() != st.prompt.text:  # live prompt change: blend, keep the KV cache
            st.prompt.start(self.loaded.prompts.encode(self._prompt_for(new)), new.blend_frames, self._mono_for(new))
            st.prompt.text = new.prompt_text()

    # ------------------------------------------------------------------ validation

    def _prompt_for(self, params: VideoParams) -> str:
        """The text handed to the prompt encoder: the demo takes style names, text models prompts."""
        if params.prompt or self.loaded.prompts.choices is not None:
            return params.prompt_text()
        from .styles import STYLE_PROMPTS

        return STYLE_PROMPTS[params.style]

    def _check(self, params: Any) -> VideoParams:
        """Model-dependent checks (resolution, prompt, backend). Raises ValueError."""
        if not isinstance(params, VideoParams):
            raise ValueError(f"expected VideoParams, got {type(params).__name__}")
        d = self.loaded.defaults
        for name, value in (("width", params.width or d.width), ("height", params.height or d.height)):
            if value % PATCH_PIXELS or not d.min_size <= value <= d.max_size:
                raise ValueError(
                    f"{name} {value}: this model renders sizes that are multiples of {PATCH_PIXELS} in "
                    f"[{d.min_size}, {d.max_size}] (default {d.width}x{d.height})"
                )
        self.loaded.prompts.check(self._prompt_for(params))
        if params.attention not in self._attend:
            self._attend[params.attention] = self._load_backend(params.attention)
        return params

    def _load_backend(self, name: str) -> AttendFn:
        from .sla import make_sla_attend

        return make_sla_attend(self.dit)

    def schedule(self, st: SessionState) -> Schedule:
        p, d = st.params, self.loaded.defaults
        if p.timesteps is not None:
            return Schedule(p.timesteps, d.shift)
        if p.strength is None and self.rules.timesteps is not None:  # the preset's step list
            return Schedule(self.rules.timesteps[: p.steps], d.shift)
        return Schedule.even(p.steps, p.strength if p.strength is not None else d.strength, d.shift)

    # ------------------------------------------------------------------ step

    def step(self, batch: Batch) -> list[StepOutput]:
        out: dict[str, list[VideoFrame]] = {sid: [] for sid in batch.session_ids}
        errors: dict[str, str] = {}
        chunks: list[tuple[SessionState, list[VideoFrame], torch.Tensor]] = []
        for item in batch.items:
            st = self._sessions.get(item.session_id)
            media = item.media
            if st is None:
                errors[item.session_id] = f"no open video session {item.session_id!r}"
                continue
            if not isinstance(media, VideoFrame):
                errors[item.session_id] = f"the video pipeline takes video frames, got {media.kind}"
                continue
            st.pending.append((media, fit_frame(media.data, st.width, st.height, st.params.resize)))
            if len(st.pending) >= self._frames_needed(st):
                frames = [f for f, _ in st.pending]
                pixels = stack([x for _, x in st.pending], dim=1)  # [3, F, H, W]
                st.pending.clear()
                chunks.append((st, frames, pixels))
        if chunks:
            self._guarded([c[0] for c in chunks], errors, lambda: self._admit(chunks))
            active = [c[0] for c in chunks if c[0].session_id not in errors]
            self._guarded(active, errors, lambda: self._denoise(active, out))
        return [StepOutput(sid, tuple(out[sid]), errors.get(sid)) for sid in batch.session_ids]

    def _frames_needed(self, st: SessionState) -> int:
        """Video frames of the session's next chunk (the first of StreamDiffusionV2's is 2 latent frames)."""
        need = self.vae.frames_needed(st.vae_state)
        if st.next_block == 0 and self.rules.first_chunk_blocks == 2:
            need += self.vae.temporal_factor  # Wan: 1 + 4 frames; the demo VAE: 1 + 1
        return need

    def _guarded(self, states: list[SessionState], errors: dict[str, str], fn: Callable[[], None]) -> None:
        """Run ``fn``; on failure report it for these sessions only (the others keep streaming)."""
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - isolate sessions: report, do not crash the engine
            log.exception("video pipeline step failed for %s", [s.session_id for s in states])
            for s in states:
                errors[s.session_id] = f"video pipeline failed: {type(exc).__name__}: {exc}"

    @torch.inference_mode()
    def _admit(self, chunks: list[tuple[SessionState, list[VideoFrame], torch.Tensor]]) -> None:
        """Encode full chunks and put each new block in flight at its first noise level."""
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (st, _, _) in enumerate(chunks):
            groups[(st.height, st.width)].append(i)
        for idx in groups.values():
            first = [i for i in idx if chunks[i][2].shape[1] > self.vae.frames_needed(chunks[i][0].vae_state)]
            idx = [i for i in idx if i not in first]
            for i in first:  # StreamDiffusionV2's first chunk: its latent frames one VAE call each
                st, frames, pixels = chunks[i]
                n0 = self.vae.frames_needed(st.vae_state)
                z0 = self.vae.encode([pixels[:, :n0]], [st.vae_state])  # [1, C, 1, h, w]
                z1 = self.vae.encode([pixels[:, n0:]], [st.vae_state])
                self._enqueue(st, frames, pixels, torch.cat([z0, z1], dim=2)[0], blocks=2)
            if not idx:
                continue
            sts = [chunks[i][0] for i in idx]
            latents = self.vae.encode([chunks[i][2] for i in idx], [s.vae_state for s in sts])  # [N, C, 1, h, w]
            for i, z in zip(idx, latents.unbind(0), strict=True):
                st, frames, pixels = chunks[i]
                self._enqueue(st, frames, pixels, z)

    def _enqueue(
        self, st: SessionState, frames: list[VideoFrame], pixels: torch.Tensor, z: torch.Tensor, blocks: int = 1,
    ) -> None:
        """Noise latent ``z [C, blocks, h, w]`` to its first level and put it in flight."""
        sched = self.schedule(st)
        motion = st.motion.update(pixels)
        if st.params.motion_aware:
            sched = sched.scaled(st.motion.first_sigma(sched.sigmas[0]))
        ts = sched.effective()  # what the model is told (t = 1000 * s)
        table = self._sigma_table
        sigmas = tuple(table.sigma(1000.0 * s) for s in ts) if table is not None else ts
        st.last_sigma = sigmas[0]
        z = z.to(self.dit.dtype)
        x = add_noise(z, st.noise_for(0, z), sigmas[0])
        work = Work(st.next_block, x, sigmas, frames, timesteps=ts)
        if blocks > 1:
            st.prefill = work
        else:
            st.inflight.appendleft(work)
        st.next_block += blocks
        st.prompt.advance(len(frames))
        log.debug("session %s block %d motion %.2f sigmas %s", st.session_id, st.next_block - 1,
                  motion, sigmas)

    @torch.inference_mode()
    def _denoise(self, states: list[SessionState], out: dict[str, list[VideoFrame]]) -> None:
        """Run the denoising rounds for sessions with a new block, then decode finished blocks."""
        finished: list[tuple[SessionState, Work]] = []
        for st in states:
            if st.prefill is not None:
                finished.append((st, self._prefill(st)))
        rounds = max(s.params.num_steps for s in states)
        for k in range(rounds):
            items: list[tuple[SessionState, Work]] = []
            for st in states:
                if st.params.stream_batch:
                    if k == 0:
                        items += [(st, w) for w in st.inflight]
                elif st.inflight and st.inflight[0].step == k:
                    items.append((st, st.inflight[0]))
            if not items:
                break
            groups: dict[tuple[Any, ...], list[tuple[SessionState, Work]]] = defaultdict(list)
            for st, w in items:
                groups[(st.pool_key, st.params.attention, st.prompt.length)].append((st, w))
            for group in groups.values():
                self._forward(group)
            for st, w in items:
                if w.last:
                    st.inflight.remove(w)
                    st.blocks_done += 1
                    finished.append((st, w))
                else:
                    w.step += 1
                    w.x = add_noise(w.x, st.noise_for(w.step, w.x), w.sigma)  # w.x holds x0 here
        self._decode(finished, out)

    def _prefill(self, st: SessionState) -> Work:
        """Run StreamDiffusionV2's first chunk (two latent frames, both ways) through all its steps."""
        w, st.prefill = st.prefill, None
        assert w is not None
        pool = self._pools[st.pool_key]
        cross = st.prompt.cross
        while True:
            strategy = PrefillAttention(pool, st.caches, cross, self.dit.rope, st.grid, w.x.shape[1])
            x = w.x[None]  # [1, C, 2, h, w]
            v = self.dit.forward_chunk(x, torch.tensor([w.t * 1000.0], device=x.device), strategy)
            w.x = predict_x0(x, v.to(x.dtype), w.sigma)[0]
            if w.last:
                break
            w.step += 1
            w.x = add_noise(w.x, st.noise_for(w.step, w.x), w.sigma)
        st.blocks_done += w.x.shape[1]
        return w

    def _forward(self, group: Sequence[tuple[SessionState, Work]]) -> None:
        """One batched DiT forward; leaves each work's predicted x0 in ``work.x``."""
        st0 = group[0][0]
        x = stack([w.x for _, w in group])  # [N, C, 1, h, w]
        sig = torch.tensor([w.sigma for _, w in group], device=x.device)
        t = torch.tensor([w.t for _, w in group], device=x.device)
        if len(group) == 1:  # one item: its prompt's keys/values as they are (no copy)
            cross = list(st0.prompt.cross)
        else:
            cross = [
                (torch.cat([st.prompt.cross[layer][0] for st, _ in group]),
                 torch.cat([st.prompt.cross[layer][1] for st, _ in group]))
                for layer in range(self.dit.num_layers)
            ]
        strategy = StreamAttention(
            self._pools[st0.pool_key], [(st.cache_for(w), w.block) for st, w in group], cross,
            self.dit.rope, st0.grid, self.window, self._attend[st0.params.attention],
        )
        v = self.dit.forward_stream(x, t * 1000.0, strategy)
        x0 = predict_x0(x, v.to(x.dtype), sig)
        for (_, w), xi in zip(group, x0.unbind(0), strict=True):
            w.x = xi

    def _decode(self, finished: list[tuple[SessionState, Work]], out: dict[str, list[VideoFrame]]) -> None:
        groups: dict[tuple[int, int], list[tuple[SessionState, Work]]] = defaultdict(list)
        for st, w in finished:
            groups[(st.height, st.width)].append((st, w))
        for group in groups.values():
            for st, _ in group:  # the style-conditioned decoder reads the session's (blended) prompt
                self.vae.set_prompt(st.vae_state, st.prompt.current())
            videos = self._decode_group(group)  # [3, F, H, W] each
            for (st, w), video in zip(group, videos, strict=True):
                video = grey_head(video, st.prompt.mono())
                frames = video.unbind(1)
                if len(frames) != len(w.frames):
                    log.warning("session %s: block %d decoded to %d frames for %d inputs", st.session_id,
                                w.block, len(frames), len(w.frames))
                for src, frame in zip(w.frames, frames, strict=False):
                    out[st.session_id].append(src.with_data(to_rgb(frame)))

    def _decode_group(self, group: list[tuple[SessionState, Work]]) -> list[torch.Tensor]:
        """Decode works of one resolution; a multi-frame work (a first chunk) frame by frame, in order."""
        single = [i for i, (_, w) in enumerate(group) if w.x.shape[1] == 1]
        videos: dict[int, torch.Tensor] = {}
        if single:
            latents = stack([group[i][1].x for i in single])  # [N, C, 1, h, w]
            decoded = self.vae.decode(latents, [group[i][0].vae_state for i in single])
            videos.update(zip(single, decoded, strict=True))
        for i, (st, w) in enumerate(group):
            if i not in videos:
                parts = [self.vae.decode(z[None], [st.vae_state])[0] for z in w.x.split(1, dim=1)]
                videos[i] = torch.cat(parts, dim=1)
        return [videos[i] for i in range(len(group))]


_LUMA = (0.299, 0.587, 0.114)


def grey_head(video: torch.Tensor, mono: float) -> torch.Tensor:
    """The demo model's grayscale head: ``video [3, ...]`` moved towards its luma by ``mono`` in [0, 1].

    Monochrome styles (noir, sketch) are grey by definition; a decoder that reads the camera frame
    leaks its colour into them, so their output is projected to luma (fading with a style blend).
    """
    if mono <= 0.0:
        return video
    luma = _LUMA[0] * video[0] + _LUMA[1] * video[1] + _LUMA[2] * video[2]
    if mono >= 1.0:  # the luma itself (what lerp gives at weight 1, exactly), without the pass
        return luma.expand_as(video)
    return torch.lerp(video, luma.expand_as(video), mono)
