"""`video`: live video-to-video diffusion with a causal streaming Wan DiT (see docs/video.md).

The pipeline class loads lazily, so ``streamserve.pipelines.video.styles`` and ``.data`` (used by
tests and the training script) stay importable without building a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pipeline import VideoDiffusionPipeline, VideoParams

__all__ = ["VideoDiffusionPipeline", "VideoParams"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
