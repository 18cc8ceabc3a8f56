"""Prompt encoders: text (or a style name) -> prompt embeddings ``[1, L, text_dim]`` for the DiT.

* :class:`StyleTable` -- the demo model's "prompts" are its style names; each has a learned embedding.
* :class:`T5PromptEncoder` -- a real Wan checkpoint's UMT5 text encoder and tokenizer, encoding the way
  diffusers' `WanPipeline` does (pad/truncate to 512 tokens, zero the embeddings past the prompt).

Both cache recent prompts, so switching back and forth between styles costs nothing after the first.
"""

from __future__ import annotations

import abc
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch


class PromptEncoder(abc.ABC):
    """Encodes prompts; ``choices`` lists the accepted prompts when the set is closed (demo styles)."""

    choices: tuple[str, ...] | None = None
    text_dim: int

    def __init__(self, cache_size: int = 32) -> None:
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size

    def check(self, prompt: str) -> None:
        """Raise ValueError for a prompt this encoder cannot take."""
        if self.choices is not None and prompt not in self.choices:
            raise ValueError(f"prompt {prompt!r} is not one of this model's styles: {', '.join(self.choices)}")

    def encode(self, prompt: str) -> torch.Tensor:
        """``[1, L, text_dim]`` embeddings of ``prompt`` (cached)."""
        self.check(prompt)
        hit = self._cache.get(prompt)
        if hit is not None:
            self._cache.move_to_end(prompt)
            return hit
        out = self._encode(prompt)
        self._cache[prompt] = out
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return out

    @abc.abstractmethod
    def _encode(self, prompt: str) -> torch.Tensor: ...


class StyleTable(PromptEncoder):
    """Learned style embeddings: ``embeddings [num_styles, L, text_dim]``, one row per name."""

    def __init__(self, names: tuple[str, ...], embeddings: torch.Tensor) -> None:
        super().__init__()
        if embeddings.dim() != 3 or embeddings.shape[0] != len(names):
            raise ValueError(f"style embeddings {tuple(embeddings.shape)} do not match {len(names)} style names")
        self.names = tuple(names)
        self.choices = self.names
        self.embeddings = embeddings
        self.text_dim = int(embeddings.shape[-1])

    def _encode(self, prompt: str) -> torch.Tensor:
        return self.embeddings[self.names.index(prompt)][None]


class T5PromptEncoder(PromptEncoder):
    """A diffusers Wan folder's ``text_encoder/`` (UMT5) and ``tokenizer/``."""

    def __init__(self, folder: str | Path, device: str, dtype: torch.dtype, max_length: int = 512) -> None:
        super().__init__()
        from transformers import AutoTokenizer, UMT5EncoderModel

        folder = Path(folder)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
        encoder: Any = UMT5EncoderModel  # transformers' typing of from_pretrained confuses mypy
        self.model: Any = encoder.from_pretrained(str(folder / "text_encoder"), torch_dtype=dtype).to(device)
        self.model.eval()
        self.max_length = max_length
        self.text_dim = int(self.model.config.d_model)
        self.device = device

    @torch.inference_mode()
    def _encode(self, prompt: str) -> torch.Tensor:
        tok = self.tokenizer(
            [prompt], padding="max_length", max_length=self.max_length, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        n = int(mask.sum())
        hidden = self.model(ids, mask).last_hidden_state  # [1, max_length, text_dim]
        out = torch.zeros_like(hidden)
        out[:, :n] = hidden[:, :n]  # as WanPipeline: embeddings past the prompt are zero
        return out
