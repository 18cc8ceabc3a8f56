"""`passthrough`: returns every frame unchanged, keeping its pts. The transport's latency baseline."""

from __future__ import annotations

import dataclasses
from typing import Any

from streamserve.core.frames import MediaKind
from streamserve.core.plan import Batch, StepOutput
from streamserve.pipelines.base import Pipeline


@dataclasses.dataclass(frozen=True)
class PassthroughParams:
    """Passthrough has no knobs that change pixels; `mirror` exists to exercise live updates."""

    mirror: bool = False


class PassthroughPipeline(Pipeline):
    name = "passthrough"
    description = "Returns each frame unchanged (transport latency baseline)."
    Params = PassthroughParams
    inputs = frozenset({MediaKind.VIDEO, MediaKind.AUDIO})
    outputs = frozenset({MediaKind.VIDEO, MediaKind.AUDIO})

    def __init__(self, device: str = "cpu", **options: Any) -> None:
        super().__init__(device, **options)
        self._params: dict[str, PassthroughParams] = {}

    def open_session(self, session_id: str, params: Any) -> None:
        self._params[session_id] = params

    def update_params(self, session_id: str, params: Any) -> None:
        self._params[session_id] = params

    def close_session(self, session_id: str) -> None:
        self._params.pop(session_id, None)

    def step(self, batch: Batch) -> list[StepOutput]:
        outputs = []
        for item in batch.items:
            media = item.media
            params = self._params.get(item.session_id, PassthroughParams())
            if params.mirror and media.kind is MediaKind.VIDEO:
                media = media.with_data(media.data[:, ::-1].copy())  # type: ignore[arg-type]
            outputs.append(StepOutput(item.session_id, (media,)))
        return outputs
