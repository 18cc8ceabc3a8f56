"""Quality of service: the session params the scheduler reads, and the bridge from a pipeline's
params to a `SessionSpec` (what admission and the degradation policy reason about) and back.

Any session may carry, next to its pipeline's own params, when it starts and in live updates (a
PATCH or WS `params`; a change that raises the session's work is re-admitted, streamserve.gate):

- ``priority`` (0-9, default 0): higher keeps its quality longer and is admitted first;
- ``fps``: the rate the client sends at (default 30 for video, 50 audio chunks a second for voice);
- ``min_fps`` (default 10): the lowest frame rate a tier may drop to;
- ``degrade``: the order of knobs the server may lower, a list of "fps", "resolution", "steps"
  (default all three in that order; ``[]`` = never degrade: refuse instead).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from streamserve.core.config import SessionConfig
from streamserve.core.errors import InvalidParams
from streamserve.core.frames import MediaKind
from streamserve.pipelines.base import Pipeline
from streamserve.schedulers import SessionSpec, Tier, WorkShape
from streamserve.schedulers.spec import DEGRADE_KNOBS

QOS_KEYS = ("priority", "fps", "min_fps", "degrade")
DEFAULT_VIDEO_FPS = 30.0
DEFAULT_VOICE_FPS = 50.0  # 20 ms audio chunks


@dataclasses.dataclass(frozen=True, slots=True)
class Qos:
    priority: int = 0
    fps: float | None = None
    min_fps: float = 10.0
    degrade: tuple[str, ...] = DEGRADE_KNOBS


def _number(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise InvalidParams(name, f"expected a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def split_qos(params: Mapping[str, Any] | None) -> tuple[Qos, dict[str, Any]]:
    """Take the QoS keys out of a session's params; the rest goes to the pipeline."""
    if params is not None and not isinstance(params, Mapping):
        raise InvalidParams("params", f"expected an object, got {type(params).__name__}")
    rest = dict(params or {})
    raw = {k: rest.pop(k) for k in QOS_KEYS if k in rest}
    priority = raw.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise InvalidParams("priority", f"expected an integer in [0, 9], got {priority!r}")
    fps = None if raw.get("fps") is None else _number("fps", raw["fps"], 0.1, 1000)
    min_fps = _number("min_fps", raw.get("min_fps", 10.0), 0.1, 1000)
    degrade = raw.get("degrade", list(DEGRADE_KNOBS))
    if isinstance(degrade, str):
        degrade = [k.strip() for k in degrade.split(",") if k.strip() and k.strip() != "none"]
    if not isinstance(degrade, list | tuple) or any(k not in DEGRADE_KNOBS for k in degrade) \
            or len(set(degrade)) != len(degrade):
        raise InvalidParams("degrade", f"expected distinct knobs of {list(DEGRADE_KNOBS)}, got {degrade!r}")
    return Qos(priority, fps, min_fps, tuple(degrade)), rest


def update_qos(current: Qos, changes: Mapping[str, Any]) -> Qos:
    """`current` with the QoS keys of a live update (a PATCH or WS `params`) applied and checked."""
    unknown = sorted(set(changes) - set(QOS_KEYS))
    if unknown:
        raise InvalidParams(unknown[0], f"not a QoS key; known: {', '.join(QOS_KEYS)}")
    base: dict[str, Any] = {"priority": current.priority, "min_fps": current.min_fps,
                            "degrade": list(current.degrade), "fps": current.fps}
    qos, _ = split_qos({**base, **changes})
    return qos


def build_spec(pipe: Pipeline, pipeline: str, params: Any, qos: Qos, session: SessionConfig) -> SessionSpec:
    """The session as the scheduler sees it (engine thread: asks the pipeline for its work shape)."""
    info = pipe.work_shape(params)
    voice = MediaKind.AUDIO in pipe.inputs and MediaKind.VIDEO not in pipe.inputs
    shape = WorkShape(width=int(info.get("width", 0)), height=int(info.get("height", 0)),
                      steps=int(info.get("steps", 1)), stream_batch=bool(info.get("stream_batch", False)),
                      audio_ms=float(info.get("audio_ms", 0.0)))
    degrade = qos.degrade
    if getattr(params, "timesteps", None) is not None:  # an explicit schedule: steps are the user's
        degrade = tuple(k for k in degrade if k != "steps")
    fps = qos.fps or (DEFAULT_VOICE_FPS if voice else DEFAULT_VIDEO_FPS)
    try:
        return SessionSpec(pipeline, shape, fps=fps, budget_s=session.latency_budget_s, priority=qos.priority,
                           lane="voice" if voice else "video", degrade=degrade, min_fps=min(qos.min_fps, fps),
                           min_size=int(info.get("min_size", 64)), size_multiple=int(info.get("size_multiple", 16)))
    except ValueError as exc:
        raise InvalidParams("params", str(exc)) from exc


def params_for_tier(params: Any, spec: SessionSpec, tier: Tier | None) -> Any:
    """The pipeline params that run `tier`: the user's params with resolution/steps lowered where
    the tier lowered them (frame rate is the scheduler's business, not the pipeline's)."""
    if tier is None or not dataclasses.is_dataclass(params) or isinstance(params, type):
        return params
    names = {f.name for f in dataclasses.fields(params)}
    changes: dict[str, Any] = {}
    if (tier.shape.width, tier.shape.height) != (spec.shape.width, spec.shape.height) \
            and {"width", "height"} <= names:
        changes.update(width=tier.shape.width, height=tier.shape.height)
    if tier.shape.steps != spec.shape.steps and "steps" in names:
        changes["steps"] = tier.shape.steps
    return dataclasses.replace(params, **changes) if changes else params
