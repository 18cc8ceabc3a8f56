"""Rank 0's model for `video-pp`: only stage 0's DiT blocks, plus what every stage shares.

The single-process loader (:func:`~..checkpoint.load_model`) reads the whole transformer; rank 0 of
the ring needs only its own blocks (the patch embedding, the condition embedder and the output head
are small and shared), the VAE and the prompt encoder. Other ranks load their blocks themselves
(:func:`~.stage.load_stage_dit`); a rebalance carries a moved block's weights with it, so no rank
needs blocks beyond its own. Peak memory on rank 0 is then its share of the DiT, not the whole
model (measured by ``benchmarks/multigpu.py --memory``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint import (
    CAUSAL_WAN_DEFAULTS,
    CAUSAL_WEIGHT_NAMES,
    WAN_DEFAULTS,
    LoadedModel,
    ModelDefaults,
    default_dtype,
    folder_kind,
    from_pretrained,
    load_demo_parts,
)
from ..demo_config import WEIGHTS_DIR
from ..prompts import PromptEncoder, T5PromptEncoder
from ..vae import StreamingVAE
from .split import split_layers
from .stage import load_stage_causal, load_stage_dit


def transformer_layers(folder: Path) -> int:
    """Blocks of the transformer in ``folder/transformer`` (from its config, without loading it)."""
    cfg = folder / "transformer" / "config.json"
    try:
        return int(json.loads(cfg.read_text())["num_layers"])
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{cfg}: cannot read num_layers ({exc})") from exc


def causal_weights_of(folder: Path, causal_weights: str | None) -> Path | None:
    """The causal (CausVid / StreamDiffusionV2) weights a Wan folder is served with: ``causal_weights``,
    else a ``model.pt`` (or another :data:`CAUSAL_WEIGHT_NAMES` file) in the folder, else None."""
    if causal_weights:
        path = Path(causal_weights)
        if not path.is_file():
            raise ValueError(f"causal weights {path} do not exist")
        return path
    return next((folder / n for n in CAUSAL_WEIGHT_NAMES if (folder / n).is_file()), None)


def load_rank0(model: str | None, device: str, dtype: torch.dtype | None, stages: int,
               causal_weights: str | None = None, checkpoint_key: str = "generator",
               ) -> tuple[LoadedModel, list[range], Path | None]:
    """Rank 0's :class:`LoadedModel` (DiT with stage 0's blocks only; the others on ``meta``), the
    stage ranges and the causal weights applied (None: none). ``model``: a demo-format or diffusers
    Wan2.1 folder (``None``: the embedded demo). Causal weights -- ``causal_weights``, or a
    ``model.pt`` in a Wan folder -- are loaded for stage 0's blocks (each rank loads its own) and
    select the StreamDiffusionV2 preset, as in the single-process loader."""
    folder = Path(model) if model is not None else WEIGHTS_DIR
    kind = folder_kind(folder)
    if dtype is None:
        dtype = default_dtype(device, kind)  # as the single-process loader
    ranges = split_layers(transformer_layers(folder), stages)
    vae: StreamingVAE
    prompts: PromptEncoder
    weights = None
    if kind == "demo":
        if causal_weights:
            raise ValueError("causal_weights applies to diffusers Wan folders, not to a demo model folder")
        vae, prompts, defaults = load_demo_parts(folder, device, dtype)
    else:
        weights = causal_weights_of(folder, causal_weights)
        vae, prompts, defaults = _wan_parts(folder, device, dtype)
        if weights is not None:
            defaults = CAUSAL_WAN_DEFAULTS
    dit = load_stage_dit(folder / "transformer", ranges[0], device, dtype)
    if weights is not None:
        load_stage_causal(dit, weights, ranges[0], checkpoint_key)
    if prompts.text_dim != dit.text_dim:
        raise ValueError(f"text encoder width {prompts.text_dim} != transformer text_dim {dit.text_dim}")
    return LoadedModel(dit, vae, prompts, defaults, str(folder)), ranges, weights


def _wan_parts(folder: Path, device: str, dtype: torch.dtype) -> tuple[StreamingVAE, PromptEncoder, ModelDefaults]:
    from diffusers import AutoencoderKLWan

    from ..wan_vae import WanStreamingVAE

    vae = from_pretrained(AutoencoderKLWan, folder / "vae", dtype).to(device)
    return WanStreamingVAE(vae), T5PromptEncoder(folder, device, dtype), WAN_DEFAULTS
