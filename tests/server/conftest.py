"""A server running the slow passthrough pipeline (tests/server/slow_pipeline.py)."""

from __future__ import annotations

import pytest

from streamserve.core.config import ServerConfig
from streamserve.pipelines import registry
from tests.server.slow_pipeline import SlowPassthrough


@pytest.fixture
def slow_server(server_factory):  # type: ignore[no-untyped-def]
    registry.register(SlowPassthrough, replace=True)
    try:
        yield server_factory(ServerConfig(pipeline="slowpass", port=0, max_batch=8, idle_timeout_s=5.0))
    finally:
        registry.unregister("slowpass")
