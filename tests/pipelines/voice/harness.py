"""Feed an agent audio in 20 ms chunks at the pace of a microphone; record what comes out."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from streamserve.pipelines.voice.agent import VoiceAgent
from streamserve.pipelines.voice.audio import MODEL_RATE

CHUNK = 320  # 20 ms at 16 kHz


@dataclasses.dataclass
class Run:
    frames: list[tuple[float, np.ndarray]] = dataclasses.field(default_factory=list)  # (t_in when out, frame)
    pts: list[int] = dataclasses.field(default_factory=list)  # each frame's pts (samples at the output rate)
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    flushes: list[float] = dataclasses.field(default_factory=list)  # t_in of each flush

    def audio(self) -> np.ndarray:
        return np.concatenate([f for _, f in self.frames]) if self.frames else np.zeros(0, np.float32)

    def of(self, name: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == name and all(e.get(k) == v for k, v in match.items())]


def drive(agent: VoiceAgent, audio: np.ndarray, run: Run | None = None, *, realtime: bool = True,
          until: Callable[[Run], bool] | None = None) -> Run:
    """Feed `audio` (16 kHz float32) chunk by chunk; stop early once `until(run)` holds."""
    run = run or Run()
    start = time.monotonic()
    for n, i in enumerate(range(0, len(audio), CHUNK)):
        out = agent.feed(audio[i:i + CHUNK])
        if out.flush:
            run.flushes.append(agent.t_in)
        run.frames += [(agent.t_in, f) for f, _ in out.frames]
        run.pts += [pts for _, pts in out.frames]
        run.events += out.events
        if until is not None and until(run):
            break
        if realtime:
            ahead = start + (n + 1) * CHUNK / MODEL_RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    return run


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * MODEL_RATE), np.float32)
