"""Configuration dataclasses, validated in `__post_init__` with the bad value and the allowed range."""

from __future__ import annotations

import dataclasses
from typing import Literal

LogLevel = Literal["debug", "info", "warning", "error"]


@dataclasses.dataclass(frozen=True, slots=True)
class SessionConfig:
    """Per-session knobs that do not depend on the pipeline."""

    latency_budget_s: float = 0.25  # deadline = arrival + budget
    inbox_size: int = 2  # bounded: the freshest frames win, older ones are dropped and counted
    outbox_size: int = 4
    audio_inbox_size: int = 16  # audio chunks waiting for an audio-consuming model (FIFO, bounded)

    def __post_init__(self) -> None:
        if not 0.001 <= self.latency_budget_s <= 10.0:
            raise ValueError(f"latency_budget_s must be in [0.001, 10], got {self.latency_budget_s}")
        if not 1 <= self.inbox_size <= 64:
            raise ValueError(f"inbox_size must be in [1, 64], got {self.inbox_size}")
        if not 1 <= self.audio_inbox_size <= 1024:
            raise ValueError(f"audio_inbox_size must be in [1, 1024], got {self.audio_inbox_size}")
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
    idle_timeout_s: float = 5.0  # a peer gone this long is ended
    tokens: tuple[str, ...] = ()  # bearer tokens for ingest (WHIP); empty = open
    ice_servers: tuple[str, ...] = ()  # stun:/turn: URLs, announced in WHIP Link headers
    turn_username: str | None = None  # for every turn:/turns: URL (Link attributes, the server's peer)
    turn_credential: str | None = None
    record_dir: str | None = None  # where recordings go; None: $TMPDIR/streamserve-recordings
    record_max_bytes: int = 512 * 1024 * 1024  # a recording is finalised when it reaches this size
    model: str | None = None  # a model folder for pipelines that load checkpoints
    session: SessionConfig = dataclasses.field(default_factory=SessionConfig)

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
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
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
