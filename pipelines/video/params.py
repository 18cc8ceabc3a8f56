"""Per-session parameters of the `video` pipeline (validated here; model limits at session start)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

from .attention import ATTENTION_BACKENDS
from .sampler import MAX_STEPS, validate_timesteps
from .styles import STYLES

Style = Literal["watercolor", "sketch", "cartoon", "sepia", "noir", "thermal"]
Resize = Literal["letterbox", "crop", "stretch"]

if set(typing.get_args(Style)) != set(STYLES):  # one list of names, checked at import
    raise RuntimeError(f"params.Style {typing.get_args(Style)} must list exactly styles.STYLES {STYLES}")


@dataclasses.dataclass(frozen=True)
class VideoParams:
    """Live-changeable knobs of one video session.

    style: one of the demo model's styles (a text model gets that style's prompt).
    prompt: free text for text-encoder models; for the demo model a style name. Overrides ``style``.
    steps: denoising steps per block (1-4); ``strength``: the first noise level in (0, 1] (``None``:
        the model's default); ``timesteps``: an explicit decreasing sigma list (overrides both).
    motion_aware: lower the first noise level when the camera moves fast.
    blend_frames: frames over which a new prompt/style fades in (0 = at once); the KV cache is kept.
    attention: "dense" (exact SDPA) or "sla" (sparse-linear attention).
    stream_batch: run the steps of consecutive blocks as one batched forward (lag: steps - 1 blocks).
    fixed_noise: reuse the same noise every frame (no flicker on still scenes); ``seed`` picks it.
    width/height: output size (``None``: the model's default); checked against the model at open.
    resize: how an input of another shape is fitted: "letterbox" (pad), "crop" (fill) or "stretch".
    """

    style: Style = "watercolor"
    prompt: str = ""
    steps: int = 1
    strength: float | None = None
    timesteps: tuple[float, ...] | None = None
    motion_aware: bool = True
    blend_frames: int = 8
    attention: Literal["dense", "sla"] = "dense"
    stream_batch: bool = True
    fixed_noise: bool = True
    seed: int = 0
    width: int | None = None
    height: int | None = None
    resize: Resize = "letterbox"

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"style {self.style!r} is not one of {list(STYLES)}")
        if len(self.prompt) > 2000:
            raise ValueError(f"prompt is {len(self.prompt)} characters; at most 2000")
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be in [1, {MAX_STEPS}], got {self.steps}")
        if self.strength is not None and not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if self.timesteps is not None:
            try:
                object.__setattr__(self, "timesteps", validate_timesteps(self.timesteps))
            except ValueError as exc:
                raise ValueError(f"timesteps {list(self.timesteps)}: {exc}") from None
        if not 0 <= self.blend_frames <= 300:
            raise ValueError(f"blend_frames must be in [0, 300], got {self.blend_frames}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {list(ATTENTION_BACKENDS)}, got {self.attention!r}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and not 16 <= v <= 4096:
                raise ValueError(f"{name} must be in [16, 4096], got {v}")
        if self.resize not in ("letterbox", "crop", "stretch"):
            raise ValueError(f"resize must be letterbox, crop or stretch, got {self.resize!r}")

    @property
    def num_steps(self) -> int:
        """Steps actually run: the explicit list's length, else ``steps``."""
        return len(self.timesteps) if self.timesteps is not None else self.steps

    @property
    def lag_blocks(self) -> int:
        """Blocks between a block's input and its output: ``steps - 1`` with stream batch, else 0."""
        return self.num_steps - 1 if self.stream_batch else 0

    @property
    def extra_cache_blocks(self) -> int:
        """Blocks the rolling cache holds beyond the window so that every step of a block still sees
        a full window: ``steps - 1`` with stream batch (older blocks in flight), 1 for sequential
        multi-step (the block itself is already cached after its first step), else 0."""
        if self.stream_batch:
            return self.num_steps - 1
        return 1 if self.num_steps > 1 else 0

    def prompt_text(self) -> str:
        return self.prompt or self.style
