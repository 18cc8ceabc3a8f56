"""What the streamserve OBS script does, as plain functions (no `obspython`): tests import this file.

Given the script's settings it computes the exact WHIP service settings OBS should use, the Browser
Source that shows the processed output, and the HTTP request that changes the prompt of the live
stream. Standard library only: OBS's embedded Python has nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

WHIP_SERVICE_ID = "whip_custom"  # OBS 30+: Settings > Stream > Service "WHIP"
BROWSER_SOURCE_ID = "browser_source"
# OBS's own default Browser Source CSS: transparent page, no margins, no scroll bars.
TRANSPARENT_CSS = "body { background-color: rgba(0, 0, 0, 0); margin: 0px auto; overflow: hidden; }"
STREAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LIVE_PARAMS = ("prompt", "style")  # the parameters the script sends while streaming


class SettingsError(ValueError):
    """A setting the user must fix; the message says which and how."""


@dataclasses.dataclass(frozen=True)
class ScriptSettings:
    """The script's properties, as the user typed them."""

    server_url: str = "http://127.0.0.1:8000"
    token: str = ""
    stream: str = "obs"
    pipeline: str = "video"
    prompt: str = ""
    style: str = ""
    width: int = 1280
    height: int = 720
    view_audio: bool = False

    def base_url(self) -> str:
        """`http(s)://host[:port][/prefix]` without a trailing slash. Raises SettingsError."""
        url = self.server_url.strip().rstrip("/")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(f"Server URL must look like http://host:8000, got {self.server_url!r}")
        if parts.query or parts.fragment:
            raise SettingsError("Server URL must not have a query string or fragment")
        return url

    def stream_name(self) -> str:
        name = self.stream.strip()
        if not STREAM_NAME.match(name):
            raise SettingsError(f"Stream name must be 1-64 letters, digits, '.', '_' or '-', got {self.stream!r}")
        return name

    def live_params(self) -> dict[str, str]:
        """The pipeline parameters the user set (empty fields are left to the server's defaults)."""
        values = {"prompt": self.prompt.strip(), "style": self.style.strip()}
        return {name: value for name, value in values.items() if value}


def whip_url(settings: ScriptSettings) -> str:
    """The WHIP endpoint with the pipeline and parameters in its query string (OBS sends no body options)."""
    query: dict[str, str] = {}
    if settings.pipeline.strip():
        query["pipeline"] = settings.pipeline.strip()
    query.update(settings.live_params())
    stream = urllib.parse.quote(settings.stream_name(), safe="")
    suffix = "?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote) if query else ""
    return f"{settings.base_url()}/whip/{stream}{suffix}"


def whip_service_settings(settings: ScriptSettings) -> dict[str, str]:
    """The settings of OBS's `whip_custom` service: Server and Bearer Token."""
    return {"server": whip_url(settings), "bearer_token": settings.token.strip()}


def view_url(settings: ScriptSettings) -> str:
    stream = urllib.parse.quote(settings.stream_name(), safe="")
    return f"{settings.base_url()}/view/{stream}" + ("?audio=1" if settings.view_audio else "")


def browser_source_name(settings: ScriptSettings) -> str:
    return f"streamserve output ({settings.stream_name()})"


def browser_source_settings(settings: ScriptSettings) -> dict[str, Any]:
    """The Browser Source's settings (OBS's keys): the viewer page, transparent, always live."""
    if not (16 <= settings.width <= 7680 and 16 <= settings.height <= 4320):
        raise SettingsError(f"Width and Height must be 16..7680 x 16..4320, got {settings.width}x{settings.height}")
    return {
        "url": view_url(settings),
        "width": settings.width,
        "height": settings.height,
        "css": TRANSPARENT_CSS,
        "reroute_audio": settings.view_audio,  # "Control audio via OBS"
        "shutdown": False,  # "Shutdown source when not visible": keep playing, reconnects are slow
        "restart_when_active": False,  # "Refresh browser when scene becomes active"
    }


@dataclasses.dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None


def param_update_request(settings: ScriptSettings, params: Mapping[str, Any]) -> HttpRequest:
    """`PATCH /v1/streams/{stream}` with the parameters to change (the stream's control endpoint)."""
    stream = urllib.parse.quote(settings.stream_name(), safe="")
    headers = {"Content-Type": "application/json"}
    if settings.token.strip():
        headers["Authorization"] = f"Bearer {settings.token.strip()}"
    return HttpRequest("PATCH", f"{settings.base_url()}/v1/streams/{stream}", headers,
                       json.dumps(dict(params)).encode())


def changed_params(before: ScriptSettings | None, after: ScriptSettings) -> dict[str, str]:
    """The live parameters that differ between two versions of the settings (all of them at first)."""
    if before is None:
        return after.live_params()
    old, new = before.live_params(), after.live_params()
    return {name: new[name] for name in LIVE_PARAMS if name in new and new.get(name) != old.get(name)}


@dataclasses.dataclass(frozen=True)
class HttpResult:
    status: int  # 0 when the server could not be reached
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def describe(self) -> str:
        if self.ok:
            return f"ok ({self.status})"
        if self.status == 0:
            return f"server unreachable: {self.body.get('message')}"
        return f"{self.status} {self.body.get('error', '')}: {self.body.get('message', '')}".strip()


def send(request: HttpRequest, timeout: float = 3.0) -> HttpResult:
    """Perform `request` with urllib; never raises for HTTP or network errors."""
    req = urllib.request.Request(request.url, data=request.body, headers=request.headers, method=request.method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as reply:
            return HttpResult(reply.status, _json_body(reply.read()))
    except urllib.error.HTTPError as exc:
        return HttpResult(exc.code, _json_body(exc.read()))
    except (urllib.error.URLError, OSError) as exc:
        return HttpResult(0, {"message": str(getattr(exc, "reason", exc))})


def _json_body(data: bytes) -> dict[str, Any]:
    try:
        body = json.loads(data or b"{}")
    except ValueError:
        return {"message": data.decode("utf-8", "replace")[:200]}
    return body if isinstance(body, dict) else {"value": body}


class LatestSender:
    """Sends parameter changes off OBS's UI thread, one at a time; the freshest change wins.

    Typing a prompt fires an update per keystroke: while one request is in flight, later changes are
    merged and only the latest values go out next.
    """

    def __init__(self, transport: Callable[[HttpRequest], HttpResult] = send,
                 on_result: Callable[[dict[str, Any], HttpResult], None] | None = None) -> None:
        self._transport = transport
        self._on_result = on_result
        self._lock = threading.Lock()
        self._pending: tuple[ScriptSettings, dict[str, Any]] | None = None
        self._worker: threading.Thread | None = None
        self.sent: list[tuple[dict[str, Any], HttpResult]] = []

    def submit(self, settings: ScriptSettings, params: Mapping[str, Any]) -> None:
        if not params:
            return
        with self._lock:
            merged = {**(self._pending[1] if self._pending else {}), **params}
            self._pending = (settings, merged)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="streamserve-params", daemon=True)
                self._worker.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._pending is None:
                    self._worker = None
                    return
                settings, params = self._pending
                self._pending = None
            result = self._transport(param_update_request(settings, params))
            self.sent.append((params, result))
            if self._on_result is not None:
                self._on_result(params, result)

    def join(self, timeout: float = 5.0) -> None:
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
