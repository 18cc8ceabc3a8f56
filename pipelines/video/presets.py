"""Streaming rules: how the pipeline runs a causal DiT block by block (cache, positions, sampler).

Two presets:

* ``"streamserve"`` -- the pipeline's own rules (the demo model is trained with them): a rolling
  cache of ``num_sinks`` sink blocks plus ``window`` earlier blocks, *not* counting the block being
  generated; positions restart at ``num_sinks + window - 1`` after a RoPE refresh; ``x0`` with
  ``sigma = t / 1000``; one cache per session; every block starts alone.
* ``"streamdiffusionv2"`` -- what StreamDiffusionV2 (``configs/wan_causal_dmd_v2v.yaml``,
  ``causal_model.py``, ``causal_stream_inference.py``) does at inference, so a CausVid /
  StreamDiffusionV2 generator behaves as it was trained. Selected automatically when causal weights
  are loaded (``causal_weights=`` or a ``model.pt`` in the folder). Rule by rule:

  - *cache counting*: its ``num_kv_cache = 6`` slots hold the block being generated too, so a block
    sees ``num_sinks`` sinks and ``num_kv_cache - num_sinks - 1`` earlier blocks (``window = 2``);
  - *RoPE reset*: once the next block would sit at frame 50 it restarts at ``num_kv_cache - 1`` (5);
  - *sink refresh*: threshold 0.2 on the mean key/value cosine, the least similar sink is replaced;
  - *sigma table*: ``x0 = x_t - sigma * v`` and re-noising use the nearest of the 1,000 sigmas of its
    flow-matching scheduler (shift 8), the model sees ``t = 1000 * s`` for a listed step ``s``; the
    default steps are its list 700, 500, 400, 200 (the first ``steps`` of it);
  - *stream batch*: one cache per denoising step (step ``k``'s queries see earlier blocks' step-``k``
    keys), not one cache per session;
  - *first chunk*: the first two latent frames (1 + 4 video frames with Wan's VAE) run together in one
    forward, attending to each other both ways, all steps at once.

docs/video.md ("StreamDiffusionV2 parity") lists where the two still differ and why.
"""

from __future__ import annotations

import dataclasses

PRESETS: tuple[str, ...] = ("streamserve", "streamdiffusionv2")

SDV2_TIMESTEPS: tuple[float, ...] = (0.7, 0.5, 0.4, 0.2)
"""StreamDiffusionV2's v2v ``denoising_step_list`` (700, 500, 400, 200; the final 0 dropped), / 1000."""


@dataclasses.dataclass(frozen=True)
class StreamRules:
    """How a stream is run. ``window`` never counts the block being generated (see the presets)."""

    preset: str
    num_sinks: int
    window: int
    restart_at: int | None = None  # RoPE refresh restart position (None: num_sinks + window - 1)
    sink_refresh_threshold: float | None = None
    sigma_table_shift: float | None = None  # None: sigma = t / 1000
    timesteps: tuple[float, ...] | None = None  # default step list (sigma units); None: even from strength
    cache_per_step: bool = False
    first_chunk_blocks: int = 1

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {list(PRESETS)}, got {self.preset!r}")
        if self.num_sinks < 1 or self.window < 1:
            raise ValueError(f"num_sinks and window must be >= 1 block, got {self.num_sinks} and {self.window}")
        if self.first_chunk_blocks not in (1, 2):
            raise ValueError(f"first_chunk_blocks must be 1 or 2, got {self.first_chunk_blocks}")


def window_from_cache_size(num_kv_cache: int, num_sinks: int) -> int:
    """Earlier blocks a block sees when a cache of ``num_kv_cache`` slots counts the block itself."""
    window = num_kv_cache - num_sinks - 1
    if window < 1:
        raise ValueError(f"num_kv_cache={num_kv_cache} leaves no window after {num_sinks} sinks and the new block")
    return window


def streamdiffusionv2_rules(num_kv_cache: int = 6, num_sinks: int = 3, sink_threshold: float | None = 0.2) -> StreamRules:
    """StreamDiffusionV2's shipped inference rules (``num_kv_cache`` counts the generated block)."""
    return StreamRules(
        preset="streamdiffusionv2", num_sinks=num_sinks, window=window_from_cache_size(num_kv_cache, num_sinks),
        restart_at=num_kv_cache - 1, sink_refresh_threshold=sink_threshold, sigma_table_shift=8.0,
        timesteps=SDV2_TIMESTEPS, cache_per_step=True, first_chunk_blocks=2,
    )


def streamserve_rules(num_sinks: int, window: int) -> StreamRules:
    return StreamRules(preset="streamserve", num_sinks=num_sinks, window=window)


def make_rules(preset: str, num_sinks: int, window: int) -> StreamRules:
    """The rules of ``preset``; ``num_sinks``/``window`` as the pipeline counts them."""
    if preset == "streamdiffusionv2":
        return streamdiffusionv2_rules(num_kv_cache=num_sinks + window + 1, num_sinks=num_sinks)
    if preset == "streamserve":
        return streamserve_rules(num_sinks, window)
    raise ValueError(f"preset must be one of {list(PRESETS)}, got {preset!r}")
