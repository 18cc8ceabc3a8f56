"""When the server refuses, the pages say so: the demo page at the session limit (503), and the
`/view` page at the viewer limit (503), instead of a black or transparent picture."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from websockets.sync.client import connect

from streamserve.core.config import ServerConfig
from streamserve.core.ports import SessionFactory
from streamserve.server import default_transports
from streamserve.transport.whip import WhipTransport
from tests.browser.test_view_page import PublisherThread
from tests.conftest import LiveServer


def test_demo_page_says_the_server_is_full(server_factory: Callable[..., LiveServer], browser: Any) -> None:
    # idle_timeout_s: the WebSocket session sends no media while the page loads; it must not be reaped.
    server = server_factory(ServerConfig(pipeline="passthrough", port=0, max_sessions=1, idle_timeout_s=600))
    with connect(server.url.replace("http", "ws") + "/v1/ws") as ws:  # takes the only session slot
        ws.send(json.dumps({"type": "hello", "version": 1}))
        ws.recv(timeout=10)
        ws.send(json.dumps({"type": "start", "pipeline": "passthrough"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "started"
        page = browser.new_page()
        page.goto(f"{server.url}/?pipeline=passthrough")
        page.wait_for_selector("#start:not([disabled])", timeout=60_000)
        page.click("#start")
        page.wait_for_selector("#status[data-state=error]", timeout=30_000)
        status = page.text_content("#status") or ""
        assert "503" in status and "limit of 1 concurrent sessions" in status, status


def test_view_page_says_the_viewer_limit_is_reached(server_factory: Callable[..., LiveServer],
                                                    browser: Any) -> None:
    def whip_without_viewers(sessions: SessionFactory, config: ServerConfig) -> WhipTransport:
        transport = WhipTransport(sessions, config)
        transport.whep.max_viewers = 0  # every WHEP request for a live stream gets 503 viewer_limit
        return transport

    transports = [whip_without_viewers if make is WhipTransport else make for make in default_transports()]
    server = server_factory(ServerConfig(pipeline="passthrough", port=0), transports=transports)
    publisher = PublisherThread(server.url, "full")
    try:
        publisher.start()
        page = browser.new_page()
        page.goto(f"{server.url}/view/full")
        page.wait_for_selector("body[data-state=refused]", timeout=20_000)
        notice = page.text_content("#notice") or ""
        assert page.is_visible("#notice")
        assert "HTTP 503" in notice and "viewer_limit" in notice and "limit of 0 viewers" in notice, notice
    finally:
        publisher.close()
