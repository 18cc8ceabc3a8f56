"""The `Pipeline` interface every model implements.

The engine owns a pipeline: every method below runs on the engine's thread, one call at a time, so a
pipeline keeps per-session state (KV caches, prompt embeddings) without locks. The event loop never
calls a pipeline directly.

Life of a session, as the pipeline sees it::

    open_session(sid, params)      # validate what only the model can (resolution...); raise ValueError
    step(batch) -> [StepOutput]    # many times; batch holds at most one unit per session
    update_params(sid, params)     # live changes, between steps
    close_session(sid)             # free per-session state
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from streamserve.core.frames import MediaKind
from streamserve.core.params import params_schema
from streamserve.core.plan import Batch, StepOutput


@dataclasses.dataclass(frozen=True)
class PipelineInfo:
    name: str
    description: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict[str, Any]


class Pipeline(abc.ABC):
    #: Registry name, e.g. "passthrough" or "video".
    name: ClassVar[str]
    #: One line for the demo page and `/v1/pipelines`.
    description: ClassVar[str] = ""
    #: A dataclass of this pipeline's parameters, validated in its `__post_init__`.
    Params: ClassVar[type]
    #: Media kinds the pipeline consumes (others are passed through by the transport).
    inputs: ClassVar[frozenset[MediaKind]] = frozenset({MediaKind.VIDEO})
    #: Media kinds the pipeline produces.
    outputs: ClassVar[frozenset[MediaKind]] = frozenset({MediaKind.VIDEO})
    #: Set by the server: `ticker(session_id)` asks the engine for a step of that session with no
    #: new input, from any thread (an empty audio chunk marked ``meta["tick"]``; `Session.tick`). A
    #: pipeline whose background work finished between input units calls it so the result goes out
    #: now rather than with the next unit. None outside a server.
    ticker: Callable[[str], None] | None = None
    #: Whether the server runs this pipeline in a child process (`pipelines/process.py`; `streamserve
    #: serve`'s default, `--in-process` keeps it in the server): for a model whose step makes many
    #: torch calls. Not for one that needs the server's process (the `ticker`, threads on several
    #: devices) or has no model to move.
    own_process: ClassVar[bool] = False

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        if options:
            raise ValueError(f"{type(self).__name__} takes no options, got {sorted(options)}")
        self.device = device

    @classmethod
    def describe(cls) -> PipelineInfo:
        return PipelineInfo(
            name=cls.name,
            description=cls.description,
            inputs=tuple(sorted(cls.inputs)),
            outputs=tuple(sorted(cls.outputs)),
            params=params_schema(cls.Params),
        )

    def warmup(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Load weights and run a first forward so the first session does not pay for it."""

    def work_shape(self, params: Any) -> dict[str, Any]:
        """What one step of a session with `params` asks of the device, for the cost model and the
        degradation tiers: any of ``width``, ``height`` (the resolution it renders, defaults
        resolved), ``steps``, ``stream_batch``, ``audio_ms``, and ``min_size``/``size_multiple``
        (the smallest resolution and the multiple a lower tier may use). Empty: no such knobs."""
        return {}

    def check_params(self, params: Any) -> None:  # noqa: B027 - optional hook, accepts by default
        """Raise ValueError naming the field if this pipeline cannot run `params` as requested. The SLO
        gate calls it before it maps params to a lower tier (whose resolution may differ), so a request
        is judged as the user sent it, whatever tier the load puts it on."""

    def open_pieces(self, session_id: str, params: Any) -> list[tuple[str, Callable[[], None]]]:
        """Opening a session as named pieces the scheduler runs between other sessions' steps (each
        short; same names = same cost class). Default: one piece, `open_session`."""
        return [("open", lambda: self.open_session(session_id, params))]

    @abc.abstractmethod
    def open_session(self, session_id: str, params: Any) -> None:
        """Prepare per-session state. Raise ValueError for a session the model cannot serve."""

    @abc.abstractmethod
    def update_params(self, session_id: str, params: Any) -> None:
        """Apply already validated params to a live session."""

    @abc.abstractmethod
    def close_session(self, session_id: str) -> None:
        """Free per-session state. Must not raise for an unknown id."""

    @abc.abstractmethod
    def step(self, batch: Batch) -> list[StepOutput]:
        """Process one unit per session of `batch`; one StepOutput per item, in the batch's order."""
