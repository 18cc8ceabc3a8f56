"""A real `streamserve serve` process: what its log shows, and how it stops."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from streamserve.serving import SafeLogFilter, redact
from tests.security.conftest import ADMIN

pytestmark = pytest.mark.slow  # starts a server process (a few seconds)


def test_tokens_stay_out_of_the_log_no_line_can_be_forged_and_sigterm_exits_0(serve_process: Any) -> None:
    server = serve_process("--token", ADMIN, "--viewer-token", "viewer-9c2e")
    ws = connect(server.url.replace("http://", "ws://") + f"/v1/ws?token={ADMIN}", open_timeout=20)
    ws.send(json.dumps({"type": "hello", "version": 1}))
    assert json.loads(ws.recv(timeout=10))["type"] == "hello"
    ws.send(json.dumps({"type": "start", "pipeline": "passthrough"}))
    started = json.loads(ws.recv(timeout=10))
    assert started["type"] == "started"
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/view/cam?token=viewer-9c2e").status_code == 200
        assert http.get(f"/healthz?a=1&token={ADMIN}&b=2").status_code == 200
        assert http.get(f"/v1/sessions/{started['session_id']}?session_secret={started['session_secret']}") \
            .status_code == 401
        assert http.get("/v1/streams/x%0a2026-01-01 00:00:00 INFO FORGED: admin logged in").status_code == 400
        assert http.post("/whip/y%0d%0aFORGED", content=b"v=0", headers={"Content-Type": "application/sdp"}) \
            .status_code == 400
    status = server.terminate()
    with pytest.raises(ConnectionClosed):
        while True:
            ws.recv(timeout=10)
    log = server.log()
    assert status == 0, log
    assert ws.close_code == 1012, ws.close_code  # service restart
    assert f"session {started['session_id']} (passthrough) ended" in log
    for secret in (ADMIN, "viewer-9c2e", started["session_secret"]):
        assert secret not in log
    assert "token=[redacted]" in log and "session_secret=[redacted]" in log
    assert not [line for line in log.splitlines() if line.startswith(("2026-01-01", "FORGED"))]
    assert "%0a2026-01-01" in log.lower()


def test_log_filter_escapes_untrusted_strings() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SafeLogFilter())
    logger = logging.getLogger("tests.security.forge")
    logger.addHandler(handler)
    try:
        logger.warning("WHIP %s: session %s", "cam\n2026-01-01 INFO FORGED", "abc")
        logger.warning("GET /v1/ws?token=%s", "s3cr3t")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines == ["WHIP cam\\n2026-01-01 INFO FORGED: session abc", "GET /v1/ws?token=[redacted]"]


def test_redact() -> None:
    assert redact("GET /v1/ws?token=abc&x=1 HTTP/1.1") == "GET /v1/ws?token=[redacted]&x=1 HTTP/1.1"
    assert redact("/view/a?fit=cover&TOKEN=s3cr3t") == "/view/a?fit=cover&TOKEN=[redacted]"
    assert redact("stream 'a\nFORGED\r'") == "stream 'a\\nFORGED\\r'"
    assert redact("tab\tstays") == "tab\tstays"
