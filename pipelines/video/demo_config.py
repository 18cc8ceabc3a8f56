"""The embedded demo model's shape and serving defaults, in one place (read by training and loading).

The folder `weights/` next to this file holds the trained model in the same layout any demo-format
``--model DIR`` uses::

    streamserve.json                 this config + training/eval figures ("format": "streamserve-demo")
    transformer/                     diffusers WanTransformer3DModel (config.json + safetensors)
    vae/                             TinyAutoencoder (config.json + model.safetensors)
    styles.safetensors               "embeddings": [num_styles, style_tokens, text_dim]
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .styles import STYLES

DEMO_FORMAT = "streamserve-demo"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Architecture and serving defaults of a demo-format model folder."""

    styles: tuple[str, ...] = STYLES
    style_tokens: int = 4  # "prompt" length of a style embedding
    text_dim: int = 64
    dim: int = 128
    heads: int = 4
    layers: int = 4
    ffn: int = 512
    latent_channels: int = 16
    vae_factor: int = 8
    vae_hidden: int = 96
    # streaming
    num_sinks: int = 1
    window: int = 2
    position_policy: str = "reposition"
    # sampler defaults
    strength: float = 0.2
    steps: int = 1  # recommended (the params default); informational
    shift: float = 1.0
    # resolution
    width: int = 256
    height: int = 256
    min_size: int = 64
    max_size: int = 512
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # training/eval figures

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["styles"] = list(self.styles)
        return json.dumps({"format": DEMO_FORMAT, **data}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> DemoConfig:
        data = json.loads(text)
        if data.pop("format", None) != DEMO_FORMAT:
            raise ValueError(f"not a {DEMO_FORMAT} config")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown keys in demo config: {unknown}")
        data["styles"] = tuple(data.get("styles", STYLES))
        return cls(**data)
