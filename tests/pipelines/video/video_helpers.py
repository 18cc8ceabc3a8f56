"""Helpers for the video pipeline tests: tiny random models in the real folder formats, frames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import WanTransformer3DModel

from streamserve.core.frames import VideoFrame
from streamserve.core.plan import Batch, StepOutput, WorkItem
from streamserve.pipelines.video.demo_config import DemoConfig
from streamserve.pipelines.video.model import CausalWanDiT, tiny_wan_config
from streamserve.pipelines.video.train_demo import save_demo
from streamserve.pipelines.video.vae import TinyAutoencoder

TINY = DemoConfig(dim=32, heads=2, layers=2, ffn=64, latent_channels=8, vae_hidden=16, text_dim=16,
                  width=64, height=64, min_size=32, max_size=256)


def make_demo_folder(folder: Path, cfg: DemoConfig = TINY, seed: int = 0) -> Path:
    """A demo-format model folder with random weights (PCA-initialised autoencoder)."""
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**tiny_wan_config(
        dim=cfg.dim, heads=cfg.heads, layers=cfg.layers, ffn=cfg.ffn, channels=cfg.latent_channels,
        text_dim=cfg.text_dim))
    ae = TinyAutoencoder(cfg.latent_channels, cfg.vae_factor, cfg.vae_hidden)
    ae.init_pca(torch.rand(4, 3, 64, 64) * 2 - 1)
    styles = torch.randn(len(cfg.styles), cfg.style_tokens, cfg.text_dim)
    save_demo(folder, cfg, CausalWanDiT(transformer), ae, styles)
    return folder


def frames(n: int, h: int = 64, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Moving gradient frames [H, W, 3] uint8 (no dev dependencies needed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, size=3)
    out = []
    for i in range(n):
        img = np.stack([(xx * 3 + i * 4 + base[0]) % 256, (yy * 2 + base[1]) % 256,
                        ((xx + yy) + i * 2 + base[2]) % 256], axis=2)
        out.append(img.astype(np.uint8))
    return out


def step_one(pipe: object, sid: str, frame: np.ndarray, i: int) -> StepOutput:
    vf = VideoFrame(frame, i, i / 30, i / 30 + 1.0)
    (res,) = pipe.step(Batch("video", (WorkItem(sid, vf),)))  # type: ignore[attr-defined]
    return res  # type: ignore[no-any-return]


def make_wan_folder(folder: Path, seed: int = 0) -> Path:
    """A diffusers Wan2.1 T2V folder (transformer/, vae/, text_encoder/, tokenizer/) with tiny random
    weights, written with ``save_pretrained`` exactly as a downloaded checkpoint is laid out."""
    from diffusers import AutoencoderKLWan
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    transformer: Any = WanTransformer3DModel(**tiny_wan_config(dim=32, heads=2, layers=2, ffn=64, channels=4,
                                                                text_dim=16))
    transformer.save_pretrained(folder / "transformer")
    vae: Any = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                     temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
                     )
    vae.save_pretrained(folder / "vae")
    UMT5EncoderModel(UMT5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                relative_attention_num_buckets=8)).save_pretrained(folder / "text_encoder")
    words = ["<pad>", "</s>", "<unk>", "a", "watercolor", "painting", "pencil", "sketch", "cat", "dog", "of"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
                            ).save_pretrained(folder / "tokenizer")
    return folder
