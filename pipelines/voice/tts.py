"""Text to speech by clause: the first audio leaves before the sentence is written.

`HibariTts` (default) runs hibari's ONNX model from its wheel (Apache-2.0; about 100x real time on
one core, 24 kHz). `EspeakTts` drives libespeak-ng from the `espeakng-loader` wheel (GPL-3.0,
robotic, any language) as the fallback. Any other TTS plugs in behind `Synthesizer`.
`ClauseSplitter` cuts a stream of LLM text into clauses worth synthesizing on their own.
"""

from __future__ import annotations

import ctypes
import re
import threading
from typing import Protocol

import numpy as np


class Synthesizer(Protocol):
    sample_rate: int

    def __call__(self, text: str) -> np.ndarray:
        """[samples] float32 speech for `text`."""
        ...


class HibariTts:
    def __init__(self, voice: str = "heart", threads: int = 1) -> None:
        from hibari import SAMPLE_RATE, Hibari

        self.sample_rate = int(SAMPLE_RATE)
        self._tts = Hibari(voice=voice, threads=threads)
        self._seed = 0

    def __call__(self, text: str) -> np.ndarray:
        if not re.search(r"[A-Za-z0-9]", text):
            return np.zeros(0, np.float32)
        return np.asarray(self._tts(text, seed=self._seed), dtype=np.float32)


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_ESPEAK_LOCK = threading.Lock()  # libespeak-ng keeps global state: one synthesis at a time


class EspeakTts:
    """libespeak-ng through ctypes, synchronous mode (the wheel ships the library and its data)."""

    _lib: ctypes.CDLL | None = None

    def __init__(self, voice: str = "en-us", rate_wpm: int = 175) -> None:
        import espeakng_loader

        with _ESPEAK_LOCK:
            if EspeakTts._lib is None:
                lib = ctypes.CDLL(espeakng_loader.get_library_path())
                data = espeakng_loader.get_data_path()
                lib.espeak_Initialize.restype = ctypes.c_int
                rate = lib.espeak_Initialize(2, 0, str(data).encode(), 0)  # AUDIO_OUTPUT_SYNCHRONOUS
                if rate <= 0:
                    raise RuntimeError(f"espeak_Initialize failed ({rate})")
                EspeakTts._lib = lib
                EspeakTts._rate = rate
        self.sample_rate = int(EspeakTts._rate)
        self._voice = voice.encode()
        self._wpm = rate_wpm
        self._chunks: list[np.ndarray] = []
        self._cb = _SynthCallback(self._collect)  # keep a reference: ctypes frees unreferenced callbacks

    _rate = 22050

    def _collect(self, wav: ctypes._Pointer[ctypes.c_short], n: int, events: int) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).astype(np.float32) / 32768.0)
        return 0

    def __call__(self, text: str) -> np.ndarray:
        lib = EspeakTts._lib
        assert lib is not None
        data = text.encode("utf-8") + b"\0"
        with _ESPEAK_LOCK:
            self._chunks = []
            lib.espeak_SetSynthCallback(self._cb)
            lib.espeak_SetVoiceByName(self._voice)
            lib.espeak_SetParameter(1, self._wpm, 0)  # espeakRATE
            lib.espeak_Synth(data, len(data), 0, 0, 0, 0, None, None)  # espeakCHARS_AUTO, POS_CHARACTER
            lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")
_CLAUSE_END = re.compile(r"[,;:](?=\s)")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)$")
# A full stop after these, an initial ("J.") or a dotted abbreviation ("U.S.") does not end the
# sentence ("Dr. Smith").
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "mt", "vs", "etc", "approx", "fig",
                            "inc", "ltd", "dept", "sgt", "capt", "lt", "col"})


def _full_stop_ends_sentence(text: str) -> bool | None:
    """Whether the full stop that `text` ends with ends a sentence: False after an abbreviation or
    an initial, None after no word (a number: "3." ends a sentence only if a space follows)."""
    m = _WORD_BEFORE.search(text[:-1])
    if m is None:
        return None
    word = m.group(1)
    return len(word) >= 2 and "." not in word and word.lower() not in _ABBREVIATIONS


class ClauseSplitter:
    """Feed LLM text deltas; get clauses back as soon as each is complete.

    A clause ends at sentence punctuation, or at , ; : once it holds `min_chars` (the first clause of a
    reply may be short so speech starts early: `first_min_chars`), or at a space past `max_chars`.
    """

    def __init__(self, first_min_chars: int = 8, min_chars: int = 24, max_chars: int = 160) -> None:
        if not 1 <= first_min_chars <= max_chars or not 1 <= min_chars <= max_chars:
            raise ValueError(f"need 1 <= first_min_chars, min_chars <= max_chars, got {first_min_chars}, "
                             f"{min_chars}, {max_chars}")
        self.first_min_chars, self.min_chars, self.max_chars = first_min_chars, min_chars, max_chars
        self._buf = ""
        self.emitted = 0

    def feed(self, delta: str) -> list[str]:
        self._buf += delta
        out: list[str] = []
        while True:
            cut = self._cut()
            if cut <= 0:
                return out
            clause, self._buf = self._buf[:cut].strip(), self._buf[cut:]
            if clause:
                out.append(clause)
                self.emitted += 1

    def _cut(self) -> int:
        need = self.first_min_chars if self.emitted == 0 else self.min_chars
        for m in _SENTENCE_END.finditer(self._buf):
            if len(self._buf[:m.end()].strip()) >= 2 and (
                    m.group() != "." or _full_stop_ends_sentence(self._buf[:m.end()]) is not False):
                return m.end()
        for m in _CLAUSE_END.finditer(self._buf):
            if m.end() >= need:
                return m.end()
        # A sentence that ends the text so far ends there: its audio need not wait for the next
        # token to bring the space after it (the first clause is out one token sooner).
        if len(self._buf.strip()) >= 2 and (self._buf.endswith(("?", "!"))
                                            or self._buf.endswith(".") and _full_stop_ends_sentence(self._buf)):
            return len(self._buf)
        if len(self._buf) > self.max_chars:
            space = self._buf.rfind(" ", 0, self.max_chars)
            return space if space > 0 else self.max_chars
        return 0

    def flush(self) -> list[str]:
        rest, self._buf = self._buf.strip(), ""
        if rest:
            self.emitted += 1
            return [rest]
        return []
