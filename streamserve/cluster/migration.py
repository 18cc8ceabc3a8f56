"""Recompute migration: a drained session's recent input is replayed on its new node.

A session's state (its rolling KV cache above all) is not shipped between machines: it is rebuilt.
Each node keeps, per session, the first ``sinks`` video frames and the last ``recent`` ones
(:class:`InputHistory`). Draining a node exports that history with the stream's name; the director
hands it to the node it places the stream on (:class:`Adoption`), and when the client reconnects
(WHIP through the front, redirected there) the new session first runs those frames through its
pipeline, outputs discarded, so the sink blocks and the recent window are in its cache before the
first live frame. WebSocket and WebRTC-offer sessions (no stream name) are moved the same way: the
drained node sends their client a ``migrate`` event (WebSocket ``event`` message / data-channel
message) naming the new node and a one-time resume credential; the client (the Python SDK, the demo
page) reconnects there with ``params.resume`` and the new node replays the history first.
"""

from __future__ import annotations

import collections
import dataclasses
import time
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
    """What a node needs to continue a drained session: its pipeline, params and input history.

    A named stream (WHIP) is found again by its name when its publisher reconnects through the front.
    A WebSocket or WebRTC-offer session has no name: it gets a one-time ``resume`` credential, sent
    to its client with the new node's URL (a ``migrate`` event), and presented there as the
    ``resume`` parameter of the new session."""

    stream: str | None
    pipeline: str
    params: dict[str, object]
    frames: list[Media]
    from_node: str
    resume: str | None = None  # the credential (WS / offer sessions)
    session_id: str | None = None  # the session on the drained node
    created: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def key(self) -> str:
        """Where the adopting node files it: the stream's name, or ``resume:<credential>``."""
        if self.stream is not None:
            return self.stream
        if self.resume is None:
            raise ValueError("an adoption needs a stream name or a resume credential")
        return f"resume:{self.resume}"


def replay(engine: Engine, pipeline: str, session_id: str, frames: Sequence[Media]) -> int:
    """Run ``frames`` through the session's pipeline on the engine thread (outputs dropped). Returns
    how many were replayed. Call through ``engine.call``."""
    pipe = engine.pipeline(pipeline)
    for media in frames:
        (out,) = pipe.step(Batch(pipeline, (WorkItem(session_id, media),)))
        if out.error is not None:
            raise RuntimeError(f"replaying input for {session_id} failed: {out.error}")
    return len(frames)
