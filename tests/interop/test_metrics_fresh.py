"""`/metrics` on a fresh server: every family has samples, all zero, for each registered pipeline."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from streamserve.metrics import DROP_REASONS, SOURCES
from streamserve.pipelines import registry
from tests.conftest import LiveServer


async def test_fresh_server_exports_zero_valued_series(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        text = (await http.get("/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families and all(family.samples for family in families.values()), \
        [name for name, family in families.items() if not family.samples]
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in families.values() for s in family.samples if not s.name.endswith("_created")}
    assert set(samples.values()) == {0.0}  # nothing happened yet
    for pipeline in registry.available():
        for kind in ("video", "audio"):
            assert samples[("streamserve_frames_in_total", (("kind", kind), ("pipeline", pipeline)))] == 0
        for reason in DROP_REASONS:
            assert ("streamserve_frames_dropped_total", (("pipeline", pipeline), ("reason", reason))) in samples
        for source in SOURCES:
            assert ("streamserve_sessions_total", (("pipeline", pipeline), ("source", source))) in samples
        assert samples[("streamserve_active_sessions", (("pipeline", pipeline),))] == 0
        assert samples[("streamserve_step_latency_seconds_count", (("pipeline", pipeline),))] == 0
