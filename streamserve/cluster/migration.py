"""Recompute migration: a drained session's recent input is replayed on its new node.

A session's state (its rolling KV cache above all) is not shipped between machines: it is rebuilt.
Each node keeps, per session, the first ``sinks`` video frames and the last ``recent`` ones
(:class:`InputHistory`). Draining a node exports that history with the stream's name; the director
hands it to the node it places the stream on (:class:`Adoption`), and when the client reconnects
(WHIP through the front, redirected there) the new session first runs those frames through its
pipeline, outputs discarded, so the sink blocks and the recent window are in its cache before the
first live frame.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

from streamserve.core.frames import Media, MediaKind
from streamserve.core.plan import Batch, WorkItem
from streamserve.engine import Engine


class InputHistory:
    """The first ``sinks`` and the last ``recent`` video frames a session took in."""

    def __init__(self, sinks: int, recent: int) -> None:
        if sinks < 0 or recent < 1:
            raise ValueError(f"sinks must be >= 0 and recent >= 1, got {sinks} and {recent}")
        self.sinks: list[Media] = []
        self._sinks = sinks
        self.recent: collections.deque[Media] = collections.deque(maxlen=recent)
        self.seen = 0

    def record(self, media: Media) -> None:
        if media.kind is not MediaKind.VIDEO:
            return
        self.seen += 1
        if len(self.sinks) < self._sinks:
            self.sinks.append(media)
        else:
            self.recent.append(media)

    def frames(self) -> list[Media]:
        """Sinks then recent frames, oldest first."""
        return [*self.sinks, *self.recent]


@dataclasses.dataclass
class Adoption:
    """What a node needs to continue a drained stream: its pipeline, params and input history."""

    stream: str
    pipeline: str
    params: dict[str, object]
    frames: list[Media]
    from_node: str


def replay(engine: Engine, pipeline: str, session_id: str, frames: Sequence[Media]) -> int:
    """Run ``frames`` through the session's pipeline on the engine thread (outputs dropped). Returns
    how many were replayed. Call through ``engine.call``."""
    pipe = engine.pipeline(pipeline)
    for media in frames:
        (out,) = pipe.step(Batch(pipeline, (WorkItem(session_id, media),)))
        if out.error is not None:
            raise RuntimeError(f"replaying input for {session_id} failed: {out.error}")
    return len(frames)
