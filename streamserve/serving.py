"""Running the app under uvicorn with the connection-level limits of docs/security.md.

- `GuardedH11Protocol`: uvicorn's h11 protocol plus a request-head timeout (an idle or half-sent
  request head is closed after `header_timeout_s`; uvicorn's h11 has none, so slowloris clients
  would hold a socket forever) and a hard cap on open connections (`max_connections`).
- `SafeLogFilter`: every log line, uvicorn's access log included, has secret-bearing query values
  (`?token=`) redacted and control characters escaped, so no URL can put a token in the log or forge a
  line.
- `serve`: builds the uvicorn server (keep-alive timeout, concurrency limit, graceful shutdown) and
  exits 0 after a SIGTERM or SIGINT once sessions have ended.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from streamserve.core.config import ServerConfig
from streamserve.core.limits import LimitsConfig

log = logging.getLogger(__name__)

SECRET_QUERY_KEYS = ("token", "access_token", "secret", "session_secret", "password", "key")
_SECRET_QUERY = re.compile(r"(?i)([?&;](?:" + "|".join(SECRET_QUERY_KEYS) + r")=)[^&\s\"']*")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\u2028\u2029]")
WS_MAX_QUEUE = 8  # incoming WebSocket messages buffered per connection (the reader drains them at once)
GRACEFUL_SHUTDOWN_S = 10.0
# permessage-deflate (RFC 7692) is never negotiated: media payloads are raw (RGB24, PCM) or already
# compressed (JPEG, Opus), and deflating one 256x256 RGB24 frame costs ~5 ms of CPU on the event loop
# for ~18% fewer bytes (docs/protocol.md, section 1).
WS_PER_MESSAGE_DEFLATE = False


def redact(text: str) -> str:
    """`text` with secret query values replaced by `[redacted]` and control characters escaped."""
    text = _SECRET_QUERY.sub(r"\1[redacted]", text)
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class SafeLogFilter(logging.Filter):
    """Runs each record through `redact` (put on handlers, it covers every logger that reaches them).

    String arguments are redacted in place (uvicorn's access formatter reads `record.args` as a
    tuple); whatever still formats to something unsafe is collapsed into one redacted message.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if record.name != "uvicorn.access":
            message = record.getMessage()
            clean = redact(message)
            if clean != message:
                record.msg, record.args = clean, None
        return True


def install_log_filter(names: tuple[str, ...] = ("", "uvicorn", "uvicorn.error", "uvicorn.access")) -> None:
    """Put one `SafeLogFilter` on every handler of the named loggers (the root logger is "")."""
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, SafeLogFilter) for f in handler.filters):
                handler.addFilter(SafeLogFilter())


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head timeout and a connection cap (set by `guarded`)."""

    header_timeout_s: float = 10.0  # LimitsConfig's defaults; `guarded` sets the configured ones
    max_connections: int = 1024
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            log.warning("connection limit of %d reached: closing a new connection", self.max_connections)
            transport.abort()
            return
        self._watch_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _waiting_for_head(self) -> bool:
        return (self.conn.their_state is h11.IDLE and not self.transport.is_closing()
                and self.transport.get_protocol() is self)

    def _watch_head(self) -> None:
        """Arm the timer while a request head is due (from connect, or from a request's first byte)."""
        if not self._waiting_for_head():
            self._stop_head_timer()
        elif self._head_timer is None and self.timeout_keep_alive_task is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._waiting_for_head():
            log.info("closing a connection from %s: no complete request head within %g s",
                     self.client[0] if self.client else "?", self.header_timeout_s)
            self.transport.abort()


def guarded(limits: LimitsConfig) -> type[GuardedH11Protocol]:
    """A `GuardedH11Protocol` subclass carrying `limits` (uvicorn instantiates the class itself)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {
        "header_timeout_s": limits.header_timeout_s, "max_connections": limits.max_connections})


def uvicorn_config(app: Any, config: ServerConfig, **overrides: Any) -> uvicorn.Config:
    limits = config.limits
    options: dict[str, Any] = {
        "host": config.host, "port": config.port, "log_level": config.log_level,
        "http": guarded(limits), "timeout_keep_alive": limits.keep_alive_s,
        "limit_concurrency": limits.max_connections, "ws_max_queue": WS_MAX_QUEUE,
        "ws_per_message_deflate": WS_PER_MESSAGE_DEFLATE,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S, **overrides}
    return uvicorn.Config(app, **options)


def serve(app: Any, config: ServerConfig) -> int:
    """Run until SIGTERM/SIGINT; every session is ended on the way out, and the exit status is 0."""
    server = uvicorn.Server(uvicorn_config(app, config))
    install_log_filter()
    # uvicorn re-raises the signal it caught once it has shut down; with no-op handlers in place that
    # re-raise is a no-op, so a graceful stop exits 0 instead of 128+SIGTERM.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if server.started else 1
