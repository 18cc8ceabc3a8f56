"""Model folders -> a ready causal DiT, streaming VAE and prompt encoder.

Two folder formats, told apart by their files:

* **diffusers Wan2.1 text-to-video** (``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``):
  loaded with diffusers/transformers ``from_pretrained``; the causal DiT wraps the loaded transformer
  (same tensors, no second copy). A causal-distilled state dict (CausVid / StreamDiffusionV2
  ``model.pt``) in the folder, or passed as ``causal_weights``, is then copied into those tensors by
  key mapping (:func:`load_causal_state_dict`).
* **streamserve demo** (``streamserve.json`` + ``transformer/`` + ``vae/`` + ``styles.safetensors``):
  the embedded default model (:mod:`.demo_config`), also what ``train_demo`` writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from streamserve.core.cpu import has_native_bf16

from .demo_config import WEIGHTS_DIR, DemoConfig
from .guided import GuidedDecoder
from .model import CausalWanDiT
from .prompts import PromptEncoder, StyleTable, T5PromptEncoder
from .vae import DemoVAE, StreamingVAE, TinyAutoencoder

log = logging.getLogger(__name__)

CAUSAL_WEIGHT_NAMES = ("model.pt", "causal_model.pt", "generator.pt")
"""Files in a Wan folder that are loaded on top of ``transformer/`` when present."""


@dataclasses.dataclass(frozen=True)
class ModelDefaults:
    """Serving defaults and limits of a loaded model."""

    kind: str  # "demo" | "wan"
    num_sinks: int
    window: int
    position_policy: str
    strength: float
    shift: float
    width: int
    height: int
    min_size: int
    max_size: int
    refresh_every: int = 50
    preset: str = "streamserve"  # streaming rules (:mod:`.presets`); causal weights: "streamdiffusionv2"


WAN_DEFAULTS = ModelDefaults(kind="wan", num_sinks=3, window=3, position_policy="refresh", strength=0.7,
                             shift=5.0, width=512, height=512, min_size=64, max_size=1280)
CAUSAL_WAN_DEFAULTS = dataclasses.replace(WAN_DEFAULTS, preset="streamdiffusionv2", window=2, shift=1.0)
"""A Wan folder with causal (CausVid / StreamDiffusionV2) weights: StreamDiffusionV2's streaming rules."""


@dataclasses.dataclass
class LoadedModel:
    dit: CausalWanDiT
    vae: StreamingVAE
    prompts: PromptEncoder
    defaults: ModelDefaults
    source: str


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What a state-dict load did: keys loaded, model keys it lacked, keys the model does not have."""

    loaded: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]

    def summary(self, limit: int = 8) -> str:
        def few(keys: tuple[str, ...]) -> str:
            more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        parts = [f"{self.loaded} tensors loaded"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {few(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {few(self.unexpected)}")
        return "; ".join(parts)


# ---------------------------------------------------------------------------- key mapping

_PREFIXES = ("model.diffusion_model.", "_fsdp_wrapped_module.", "_orig_mod.", "module.", "model.")
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
    (r"^text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
    (r"^time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
    (r"^time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
    (r"^time_projection\.1\.", "condition_embedder.time_proj."),
    (r"^head\.head\.", "proj_out."),
    (r"^head\.modulation$", "scale_shift_table"),
    (r"^blocks\.(\d+)\.self_attn\.", r"blocks.\1.attn1."),
    (r"^blocks\.(\d+)\.cross_attn\.", r"blocks.\1.attn2."),
    (r"\.attn([12])\.q\.", r".attn\1.to_q."),
    (r"\.attn([12])\.k\.", r".attn\1.to_k."),
    (r"\.attn([12])\.v\.", r".attn\1.to_v."),
    (r"\.attn([12])\.o\.", r".attn\1.to_out.0."),
    (r"^blocks\.(\d+)\.norm3\.", r"blocks.\1.norm2."),  # Wan's affine cross-attention norm
    (r"^blocks\.(\d+)\.ffn\.0\.", r"blocks.\1.ffn.net.0.proj."),
    (r"^blocks\.(\d+)\.ffn\.2\.", r"blocks.\1.ffn.net.2."),
    (r"^blocks\.(\d+)\.modulation$", r"blocks.\1.scale_shift_table"),
)


def strip_prefix(key: str) -> str:
    """Remove wrapper prefixes (``model.``, ``module.``, FSDP/compile wrappers), repeatedly."""
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def map_causvid_key(key: str) -> str:
    """A CausVid / original-Wan parameter name -> the diffusers `WanTransformer3DModel` name.

    Names already in diffusers form pass through unchanged.
    """
    key = strip_prefix(key)
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return key


CHECKPOINT_KEYS = ("generator", "generator_ema")


def _read_state_dict(path: Path, prefer: str = "generator") -> Mapping[str, torch.Tensor]:
    """The state dict in ``path``. A training checkpoint holding both ``generator`` and
    ``generator_ema`` gives ``prefer`` (StreamDiffusionV2 loads ``generator``)."""
    if prefer not in CHECKPOINT_KEYS:
        raise ValueError(f"checkpoint_key must be one of {list(CHECKPOINT_KEYS)}, got {prefer!r}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    obj = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    if isinstance(obj, Mapping):
        other = "generator_ema" if prefer == "generator" else "generator"
        for name in (prefer, other, "state_dict", "model"):
            inner = obj.get(name)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                log.info("%s: using its %r state dict", path, name)
                return inner
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise ValueError(f"{path} holds no state dict (expected tensors, or a 'generator'/'generator_ema' entry)")


@torch.no_grad()
def load_causal_state_dict(
    transformer: torch.nn.Module, source: str | Path | Mapping[str, torch.Tensor], *, strict: bool = True,
    checkpoint_key: str = "generator",
) -> LoadReport:
    """Copy a CausVid / StreamDiffusionV2 generator state dict into ``transformer`` in place.

    Keys are mapped with :func:`map_causvid_key`. Tensors are copied into the existing parameters
    (cast to their dtype/device), so nothing is duplicated. With ``strict`` a missing key or a shape
    mismatch raises ValueError naming them; unexpected keys are only reported. ``checkpoint_key``:
    which entry of a checkpoint holding both ``generator`` and ``generator_ema`` to load.
    """
    state = _read_state_dict(Path(source), checkpoint_key) if isinstance(source, str | Path) else source
    own = transformer.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        name = map_causvid_key(key)
        if name in own:
            mapped[name] = value
        else:
            unexpected.append(key)
    bad_shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in mapped.items() if tuple(v.shape) != tuple(own[k].shape)]
    missing = tuple(sorted(set(own) - set(mapped)))
    report = LoadReport(len(mapped), missing, tuple(sorted(unexpected)))
    if bad_shapes:
        raise ValueError(f"causal checkpoint does not fit the model: {'; '.join(bad_shapes[:8])}")
    if strict and missing:
        raise ValueError(f"causal checkpoint is missing weights the model needs: {report.summary()}")
    for name, value in mapped.items():
        own[name].copy_(value)  # state_dict() tensors share storage with the parameters
    if unexpected:
        log.warning("causal checkpoint: %s", report.summary())
    return report


# ---------------------------------------------------------------------------- folders


def from_pretrained(cls: type, folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """``cls.from_pretrained`` for a diffusers model folder, also without `accelerate`.

    diffusers loads models that keep some modules in fp32 (Wan's transformer) only through
    accelerate's low-memory path. Without accelerate this builds the model from its config and copies
    the safetensors weights into it (a transient second copy while loading), then applies the same
    fp32 exceptions.
    """
    try:
        return cls.from_pretrained(str(folder), torch_dtype=dtype)  # type: ignore[attr-defined,no-any-return]
    except ValueError as exc:
        if "low_cpu_mem_usage" not in str(exc):
            raise
    log.warning("accelerate is not installed: loading %s without the low-memory path", folder)
    model = cls.from_config(cls.load_config(str(folder)))  # type: ignore[attr-defined]
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else [
        "diffusion_pytorch_model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(folder / name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"{folder}: weights missing for {len(missing)} parameters, e.g. {missing[:5]}")
    if unexpected:
        log.warning("%s: %d unexpected weights ignored, e.g. %s", folder, len(unexpected), unexpected[:5])
    del state
    torch.nn.Module.to(model, dtype)  # ModelMixin.to warns about the fp32 modules restored below
    keep = getattr(cls, "_keep_in_fp32_modules", None) or []
    for name, module in model.named_modules():
        if any(k in name.split(".") for k in keep):
            module.float()
    return model.eval()  # type: ignore[no-any-return]


def folder_kind(folder: Path) -> str:
    """``"demo"`` or ``"wan"``; ValueError naming what is missing otherwise."""
    if not folder.is_dir():
        raise ValueError(f"model folder {folder} does not exist")
    if (folder / "streamserve.json").is_file():
        return "demo"
    cfg = folder / "transformer" / "config.json"
    if cfg.is_file():
        name = json.loads(cfg.read_text()).get("_class_name")
        if name != "WanTransformer3DModel":
            raise ValueError(f"{cfg}: expected a WanTransformer3DModel, got {name!r}")
        missing = [d for d in ("vae", "text_encoder", "tokenizer") if not (folder / d).is_dir()]
        if missing:
            raise ValueError(f"{folder} is a Wan folder without {', '.join(d + '/' for d in missing)} (a diffusers Wan2.1 T2V "
                             f"folder has transformer/, vae/, text_encoder/, tokenizer/)")
        return "wan"
    raise ValueError(f"{folder} is neither a diffusers Wan2.1 folder (transformer/config.json ...) nor a "
                     f"streamserve demo folder (streamserve.json)")


def load_demo(folder: Path, device: str, dtype: torch.dtype) -> LoadedModel:
    from diffusers import WanTransformer3DModel

    transformer = from_pretrained(WanTransformer3DModel, folder / "transformer", dtype)
    dit = CausalWanDiT(transformer).to(device).eval()  # type: ignore[arg-type]
    vae, prompts, defaults = load_demo_parts(folder, device, dtype)
    return LoadedModel(dit, vae, prompts, defaults, str(folder))


def load_demo_parts(folder: Path, device: str, dtype: torch.dtype) -> tuple[DemoVAE, StyleTable, ModelDefaults]:
    """Everything of a demo folder but the DiT: its VAE (+ guide), style table and defaults."""
    cfg = DemoConfig.from_json((folder / "streamserve.json").read_text())
    ae = TinyAutoencoder.load(folder / "vae").to(device=device, dtype=dtype)
    styles = load_file(str(folder / "styles.safetensors"))["embeddings"].to(device=device, dtype=dtype)
    defaults = ModelDefaults(
        kind="demo", num_sinks=cfg.num_sinks, window=cfg.window, position_policy=cfg.position_policy,
        strength=cfg.strength, shift=cfg.shift, width=cfg.width, height=cfg.height,
        min_size=cfg.min_size, max_size=cfg.max_size,
    )
    guide = GuidedDecoder.load(folder / "guide").to(device=device, dtype=dtype) if (folder / "guide").is_dir() else None
    return DemoVAE(ae, guide), StyleTable(cfg.styles, styles), defaults


def load_wan(
    folder: Path, device: str, dtype: torch.dtype, causal_weights: str | None, checkpoint_key: str = "generator",
) -> LoadedModel:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from .wan_vae import WanStreamingVAE

    transformer = from_pretrained(WanTransformer3DModel, folder / "transformer", dtype)
    weights = Path(causal_weights) if causal_weights else next(
        (folder / n for n in CAUSAL_WEIGHT_NAMES if (folder / n).is_file()), None)
    if weights is not None:
        if not weights.is_file():
            raise ValueError(f"causal weights {weights} do not exist")
        report = load_causal_state_dict(transformer, weights, checkpoint_key=checkpoint_key)
        log.info("loaded causal weights %s: %s", weights, report.summary())
        defaults = CAUSAL_WAN_DEFAULTS
    else:
        defaults = WAN_DEFAULTS
    dit = CausalWanDiT(transformer).to(device).eval()  # type: ignore[arg-type]
    vae = from_pretrained(AutoencoderKLWan, folder / "vae", dtype).to(device)
    prompts = T5PromptEncoder(folder, device, dtype)
    if prompts.text_dim != dit.text_dim:
        raise ValueError(f"text encoder width {prompts.text_dim} != transformer text_dim {dit.text_dim}")
    return LoadedModel(dit, WanStreamingVAE(vae), prompts, defaults, str(folder))


def default_dtype(device: str, kind: str) -> torch.dtype:
    """bf16 on CUDA; on CPU fp32, except the demo model on a CPU with native bf16 (measured there:
    1.07-1.11x the fp32 frame rate at batch 1, 1.18x at 4; held-out PSNR 32.9 vs 33.2 dB, and 49-52
    dB from the fp32 output)."""
    if str(device).startswith("cuda"):
        return torch.bfloat16
    return torch.bfloat16 if kind == "demo" and has_native_bf16() else torch.float32


def load_model(
    path: str | Path | None, device: str = "cpu", dtype: torch.dtype | None = None,
    causal_weights: str | None = None, checkpoint_key: str = "generator",
) -> LoadedModel:
    """Load a model folder (``None``: the embedded demo model). Causal weights select the
    ``"streamdiffusionv2"`` streaming preset (:mod:`.presets`)."""
    folder = Path(path) if path is not None else WEIGHTS_DIR
    kind = folder_kind(folder)
    if dtype is None:
        dtype = default_dtype(device, kind)
    if kind == "demo":
        if causal_weights:
            raise ValueError("causal_weights applies to diffusers Wan folders, not to a demo model folder")
        return load_demo(folder, device, dtype)
    return load_wan(folder, device, dtype, causal_weights, checkpoint_key)
