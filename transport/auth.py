"""Who may do what: admin (operator/ingest) tokens, per-session secrets and viewer tokens.

The model (docs/security.md has the full table):

- Admin tokens (`ServerConfig.tokens`): when any are configured, opening a session (WebRTC offer,
  WHIP, WebSocket start) needs one, and one reads, changes and ends any session and lists them all.
  With none configured anyone may open sessions, but nobody is admin.
- Session secret (`SessionHandle.secret`, `secrets.token_urlsafe`): returned only to the session's
  creator (offer answer, WHIP 201 header, WebSocket `started`); it reads, changes and ends that one
  session (`Authorization: Bearer <secret>`).
- Viewer tokens (`ServerConfig.viewer_tokens`): when configured, WHEP, `/view` and the stream
  stats need one (or an admin token); otherwise watching a live stream is open.

Every comparison is constant-time (`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from streamserve.core.config import ServerConfig
from streamserve.core.errors import StreamserveError
from streamserve.core.ports import SessionHandle


class Unauthorized(StreamserveError):
    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="streamserve"'}


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, if any."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def token_ok(token: str | None, tokens: tuple[str, ...]) -> bool:
    """Whether `token` is one of `tokens` (constant-time); any token will do when `tokens` is empty."""
    if not tokens:
        return True
    if token is None:
        return False
    return any(hmac.compare_digest(token.encode(), t.encode()) for t in tokens)


def request_token(headers: Mapping[str, str], query: Mapping[str, str] | None = None) -> str | None:
    """The bearer token of a request: the Authorization header, else `?token=` when `query` is given."""
    token = bearer_token(headers.get("authorization"))
    if token is None and query is not None:
        token = query.get("token") or None
    return token


def is_admin(token: str | None, config: ServerConfig) -> bool:
    """An admin (operator/ingest) token. With no tokens configured nobody is admin."""
    return bool(config.tokens) and token_ok(token, config.tokens)


def may_open(token: str | None, config: ServerConfig) -> bool:
    """May open a session: anyone on an open server, an admin token otherwise."""
    return not config.tokens or token_ok(token, config.tokens)


def may_view(token: str | None, config: ServerConfig) -> bool:
    """May watch a stream: anyone unless viewer tokens are configured; admin tokens always."""
    return not config.viewer_tokens or token_ok(token, config.viewer_tokens) or is_admin(token, config)


def owns(token: str | None, handle: SessionHandle, config: ServerConfig) -> bool:
    """May read, change or end `handle`: its own session secret or an admin token."""
    if token is not None and hmac.compare_digest(token.encode(), handle.secret.encode()):
        return True
    return is_admin(token, config)


def require_open(token: str | None, config: ServerConfig) -> None:
    if not may_open(token, config):
        given = "a wrong" if token else "no"
        raise Unauthorized(f"{given} bearer token: opening a session needs `Authorization: Bearer <token>`")


def require_view(token: str | None, config: ServerConfig) -> None:
    if not may_view(token, config):
        given = "a wrong" if token else "no"
        raise Unauthorized(f"{given} viewer token: send `Authorization: Bearer <token>` or `?token=`")


def require_owner(token: str | None, handle: SessionHandle, config: ServerConfig) -> None:
    if not owns(token, handle, config):
        given = "a wrong" if token else "no"
        raise Unauthorized(f"{given} credential for session {handle.id}: send `Authorization: Bearer "
                           f"<session secret>` (returned when the session was opened) or an admin token")
