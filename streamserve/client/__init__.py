"""Async Python client for the WebSocket streaming API (`/v1/ws`, docs/protocol.md).

:mod:`.sdk` holds :class:`StreamClient`; :mod:`.convert` runs `streamserve client` (a video file through
a pipeline). Everything public is importable from here.
"""

from .convert import ConvertResult, add_client_arguments, convert, main_client, parse_param_args
from .sdk import DEFAULT_URL, OutputFrame, ServerError, SessionEnded, StreamClient

__all__ = [
    "DEFAULT_URL",
    "ConvertResult",
    "OutputFrame",
    "ServerError",
    "SessionEnded",
    "StreamClient",
    "add_client_arguments",
    "convert",
    "main_client",
    "parse_param_args",
]
