"""Configuration dataclasses, validated in `__post_init__` with the bad value and the allowed range."""

from __future__ import annotations

import dataclasses
from typing import Literal

from streamserve.core.limits import LimitsConfig

LogLevel = Literal["debug", "info", "warning", "error"]


@dataclasses.dataclass(frozen=True, slots=True)
class SessionConfig:
    """Per-session knobs that do not depend on the pipeline."""

    latency_budget_s: float = 0.25  # deadline = arrival + budget
    inbox_size: int = 2  # bounded: the freshest frames win, older ones are dropped and counted
    outbox_size: int = 4
    audio_inbox_size: int = 256  # audio chunks waiting for an audio model (ordered FIFO; when full, new chunks are refused and counted)
    audio_outbox_size: int = 256  # audio units queued per output subscriber (ordered; flushable on barge-in)

    def __post_init__(self) -> None:
        if not 0.001 <= self.latency_budget_s <= 10.0:
            raise ValueError(f"latency_budget_s must be in [0.001, 10], got {self.latency_budget_s}")
        if not 1 <= self.inbox_size <= 64:
            raise ValueError(f"inbox_size must be in [1, 64], got {self.inbox_size}")
        if not 1 <= self.audio_inbox_size <= 1024:
            raise ValueError(f"audio_inbox_size must be in [1, 1024], got {self.audio_inbox_size}")
        if not 1 <= self.audio_outbox_size <= 4096:
            raise ValueError(f"audio_outbox_size must be in [1, 4096], got {self.audio_outbox_size}")
        if not 1 <= self.outbox_size <= 256:
            raise ValueError(f"outbox_size must be in [1, 256], got {self.outbox_size}")


@dataclasses.dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    pipeline: str = "video"  # default pipeline for sessions that do not name one
    device: str = "cpu"
    log_level: LogLevel = "info"
    max_sessions: int = 16
    max_batch: int = 8
    adapt_batch: bool = True  # slo: video batches only as large as the deadline allows (docs/serving.md)
    spare_frames: bool = True  # slo: a tier's frame rate is a floor; spare device time runs the frames it skips
    # pipelines marked `own_process` (video) run in a child process (pipelines/process.py); on in
    # `streamserve serve` unless --in-process
    model_process: bool = False
    idle_timeout_s: float = 5.0  # a peer gone this long is ended
    tokens: tuple[str, ...] = ()  # operator/ingest (admin) bearer tokens; empty = anyone may open sessions
    ice_servers: tuple[str, ...] = ()  # stun:/turn: URLs, announced in WHIP Link headers
    turn_username: str | None = None  # for every turn:/turns: URL (Link attributes, the server's peer)
    turn_credential: str | None = None
    record_dir: str | None = None  # where recordings go; None: $TMPDIR/streamserve-recordings
    record_max_bytes: int = 512 * 1024 * 1024  # a recording is finalised when it reaches this size
    model: str | None = None  # a model folder for pipelines that load checkpoints
    # extra keyword options for pipelines whose constructor takes them (voice: llm_url, llm_model, ...)
    pipeline_options: tuple[tuple[str, str], ...] = ()
    devices: tuple[str, ...] = ()  # one engine per entry (data parallel); empty = (device,)
    kv_budget_mb: float | None = None  # KV memory one engine may hold (None: its device's free memory)
    session: SessionConfig = dataclasses.field(default_factory=SessionConfig)
    viewer_tokens: tuple[str, ...] = ()  # required by WHEP and /view when set (admin tokens also work)
    limits: LimitsConfig = dataclasses.field(default_factory=LimitsConfig)
    scheduler: str = "slo"  # slo (admission, tiers: docs/serving.md) | edf | fifo (baselines, no admission)
    max_utilization: float = 0.9  # admission: the predicted busy fraction a device may be loaded to
    retry_after_s: float = 5.0  # told to clients refused for capacity

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ValueError(f"log_level must be debug|info|warning|error, got {self.log_level!r}")
        if not 1 <= self.max_sessions <= 10_000:
            raise ValueError(f"max_sessions must be in [1, 10000], got {self.max_sessions}")
        if not 1 <= self.max_batch <= 256:
            raise ValueError(f"max_batch must be in [1, 256], got {self.max_batch}")
        if not 0.1 <= self.idle_timeout_s <= 600:
            raise ValueError(f"idle_timeout_s must be in [0.1, 600], got {self.idle_timeout_s}")
        for dev in (self.device, *self.devices):
            if not (dev == "cpu" or dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit())):
                raise ValueError(f"device must be cpu, cuda or cuda:N, got {dev!r}")
        if self.kv_budget_mb is not None and not 0 <= self.kv_budget_mb <= 2**30:
            raise ValueError(f"kv_budget_mb must be in [0, 2**30], got {self.kv_budget_mb}")
        if len(self.devices) > 64:
            raise ValueError(f"at most 64 devices, got {len(self.devices)}")
        if self.scheduler not in ("slo", "edf", "fifo"):
            raise ValueError(f"scheduler must be slo, edf or fifo, got {self.scheduler!r}")
        if not 0.05 <= self.max_utilization <= 1.0:
            raise ValueError(f"max_utilization must be in [0.05, 1], got {self.max_utilization}")
        if not 0 < self.retry_after_s <= 3600:
            raise ValueError(f"retry_after_s must be in (0, 3600], got {self.retry_after_s}")
        for url in self.ice_servers:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise ValueError(f"ice server URLs start with stun:, turn: or turns:, got {url!r}")
        if not 64 * 1024 <= self.record_max_bytes <= 1 << 40:
            raise ValueError(f"record_max_bytes must be in [65536, 2**40], got {self.record_max_bytes}")
        if (self.turn_username is None) != (self.turn_credential is None):
            raise ValueError("turn_username and turn_credential go together; got only "
                             + ("turn_username" if self.turn_credential is None else "turn_credential"))
        for name in ("turn_username", "turn_credential"):
            value = getattr(self, name)
            if value is not None and (not value or '"' in value or "\\" in value or not value.isprintable()):
                raise ValueError(f"{name} must be non-empty printable text without quotes or backslashes")
