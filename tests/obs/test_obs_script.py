"""The OBS script: the exact WHIP settings and Browser Source it applies, and live prompt changes.

`web_demo/obs/streamserve_obs_logic.py` is imported without OBS; the obspython layer runs against a
recording stand-in for `obspython`; prompt changes go to a real server.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamserve.core.config import ServerConfig
from streamserve.core.plan import Batch, StepOutput
from streamserve.pipelines import registry
from streamserve.pipelines.passthrough import PassthroughPipeline
from streamserve.transport.whip import WhipTransport
from tests.conftest import LiveServer
from tests.transport.whip_clients import OBS_OFFER

OBS_DIR = Path(__file__).resolve().parents[2] / "web_demo" / "obs"


def load(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, OBS_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import would: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


logic: Any = load("streamserve_obs_logic")

SETTINGS = logic.ScriptSettings(server_url="http://192.168.1.20:8000/", token="obs-t0ken", stream="live1",
                                pipeline="video", prompt="a watercolor fox", style="", width=1280, height=720)


def test_whip_service_settings_are_exact() -> None:
    assert logic.WHIP_SERVICE_ID == "whip_custom"
    assert logic.whip_service_settings(SETTINGS) == {
        "server": "http://192.168.1.20:8000/whip/live1?pipeline=video&prompt=a%20watercolor%20fox",
        "bearer_token": "obs-t0ken",
    }
    styled = dataclasses.replace(SETTINGS, prompt="", style="sketch", pipeline="")
    assert logic.whip_url(styled) == "http://192.168.1.20:8000/whip/live1?style=sketch"
    bare = dataclasses.replace(SETTINGS, prompt="", pipeline=" ", server_url="https://gpu.example.com/ss")
    assert logic.whip_url(bare) == "https://gpu.example.com/ss/whip/live1"


def test_browser_source_is_exact() -> None:
    assert logic.BROWSER_SOURCE_ID == "browser_source"
    assert logic.browser_source_name(SETTINGS) == "streamserve output (live1)"
    assert logic.browser_source_settings(SETTINGS) == {
        "url": "http://192.168.1.20:8000/view/live1",
        "width": 1280,
        "height": 720,
        "css": "body { background-color: rgba(0, 0, 0, 0); margin: 0px auto; overflow: hidden; }",
        "reroute_audio": False,
        "shutdown": False,
        "restart_when_active": False,
    }
    with_audio = dataclasses.replace(SETTINGS, view_audio=True)
    assert logic.view_url(with_audio) == "http://192.168.1.20:8000/view/live1?audio=1"
    assert logic.browser_source_settings(with_audio)["reroute_audio"] is True


@pytest.mark.parametrize(("field", "value", "match"), [
    ("server_url", "192.168.1.20:8000", "Server URL"),
    ("server_url", "ftp://host", "Server URL"),
    ("server_url", "http://host:8000/?x=1", "query"),
    ("stream", "", "Stream name"),
    ("stream", "a/b", "Stream name"),
    ("stream", "x" * 65, "Stream name"),
    ("width", 8, "Width"),
])
def test_settings_errors_name_the_field(field: str, value: Any, match: str) -> None:
    bad = dataclasses.replace(SETTINGS, **{field: value})
    with pytest.raises(logic.SettingsError, match=match):
        logic.whip_service_settings(bad)
        logic.browser_source_settings(bad)


def test_param_update_request_and_changes() -> None:
    request = logic.param_update_request(SETTINGS, {"prompt": "a fox"})
    assert (request.method, request.url) == ("PATCH", "http://192.168.1.20:8000/v1/streams/live1")
    assert request.headers == {"Content-Type": "application/json", "Authorization": "Bearer obs-t0ken"}
    assert request.body == b'{"prompt": "a fox"}'
    assert "Authorization" not in logic.param_update_request(dataclasses.replace(SETTINGS, token=""), {}).headers
    assert logic.changed_params(None, SETTINGS) == {"prompt": "a watercolor fox"}
    after = dataclasses.replace(SETTINGS, style="noir", token="other")
    assert logic.changed_params(SETTINGS, after) == {"style": "noir"}
    assert logic.changed_params(SETTINGS, dataclasses.replace(SETTINGS, width=640)) == {}


# --- the obspython layer, against a recording stand-in ------------------------------------------

class FakeObs(types.ModuleType):
    """The slice of `obspython` the script uses; records what it does to OBS."""

    LOG_WARNING, LOG_INFO = 200, 300
    OBS_TEXT_DEFAULT, OBS_TEXT_PASSWORD, OBS_TEXT_MULTILINE = 0, 1, 2
    OBS_COMBO_TYPE_EDITABLE, OBS_COMBO_FORMAT_STRING = 1, 3

    def __init__(self) -> None:
        super().__init__("obspython")
        self.service: dict[str, Any] | None = None
        self.saved = 0
        self.sources: dict[str, dict[str, Any]] = {}
        self.scene: list[str] = []
        self.streaming = False
        self.logs: list[tuple[int, str]] = []
        self.buttons: dict[str, Callable[[Any, Any], bool]] = {}
        self.properties: list[str] = []
        for name in ("obs_service_release", "obs_data_release", "obs_source_release"):
            setattr(self, name, lambda *_: None)

    def script_log(self, level: int, message: str) -> None:
        self.logs.append((level, message))

    def obs_data_create(self) -> dict[str, Any]:
        return {}

    def obs_data_set_string(self, d: dict[str, Any], k: str, v: str) -> None:
        d[k] = v

    obs_data_set_int = obs_data_set_bool = obs_data_set_string

    def obs_data_set_default_string(self, d: dict[str, Any], k: str, v: Any) -> None:
        d.setdefault(k, v)

    obs_data_set_default_int = obs_data_set_default_string

    def obs_data_get_string(self, d: dict[str, Any], k: str) -> str:
        return str(d.get(k, ""))

    def obs_data_get_int(self, d: dict[str, Any], k: str) -> int:
        return int(d.get(k, 0))

    def obs_data_get_bool(self, d: dict[str, Any], k: str) -> bool:
        return bool(d.get(k, False))

    def obs_service_create(self, kind: str, name: str, data: dict[str, Any], hotkeys: Any) -> dict[str, Any]:
        return {"id": kind, "name": name, "settings": dict(data)}

    def obs_frontend_set_streaming_service(self, service: dict[str, Any]) -> None:
        self.service = service

    def obs_frontend_save_streaming_service(self) -> None:
        self.saved += 1

    def obs_frontend_streaming_active(self) -> bool:
        return self.streaming

    def obs_get_source_by_name(self, name: str) -> dict[str, Any] | None:
        return self.sources.get(name)

    def obs_source_create(self, kind: str, name: str, data: dict[str, Any], hotkeys: Any) -> dict[str, Any]:
        self.sources[name] = {"id": kind, "name": name, "settings": dict(data)}
        return self.sources[name]

    def obs_source_update(self, source: dict[str, Any], data: dict[str, Any]) -> None:
        source["settings"].update(data)

    def obs_frontend_get_current_scene(self) -> str:
        return "Scene"

    def obs_scene_from_source(self, source: str) -> list[str]:
        return self.scene

    def obs_scene_add(self, scene: list[str], source: dict[str, Any]) -> None:
        scene.append(source["name"])

    def obs_properties_create(self) -> list[str]:
        return self.properties

    def obs_properties_add_text(self, props: list[str], name: str, *_: Any) -> str:
        props.append(name)
        return name

    obs_properties_add_list = obs_properties_add_int = obs_properties_add_bool = obs_properties_add_text

    def obs_property_list_add_string(self, prop: str, label: str, value: str) -> None:
        return None

    def obs_properties_add_button(self, props: list[str], name: str, text: str, cb: Any) -> str:
        self.buttons[name] = cb
        return self.obs_properties_add_text(props, name)


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, FakeObs]]:
    fake = FakeObs()
    monkeypatch.setitem(sys.modules, "obspython", fake)
    monkeypatch.setitem(sys.modules, "streamserve_obs_logic", logic)
    monkeypatch.setitem(sys.modules, "streamserve_obs", types.ModuleType("placeholder"))  # removed after
    yield load("streamserve_obs"), fake


def test_set_up_button_configures_obs(script: tuple[Any, FakeObs]) -> None:
    module, fake = script
    data: dict[str, Any] = {"server_url": "http://10.0.0.2:8000", "token": "t", "stream": "cam",
                            "prompt": "neon city", "view_audio": True}
    module.script_defaults(data)
    module.script_properties()
    assert {"server_url", "token", "stream", "pipeline", "prompt", "style", "set_up"} <= set(fake.properties)
    module.script_update(data)
    assert fake.buttons["set_up"](None, None) is False
    assert fake.service == {"id": "whip_custom", "name": "streamserve", "settings": {
        "server": "http://10.0.0.2:8000/whip/cam?pipeline=video&prompt=neon%20city", "bearer_token": "t"}}
    assert fake.saved == 1
    source = fake.sources["streamserve output (cam)"]
    assert source["id"] == "browser_source" and fake.scene == ["streamserve output (cam)"]
    assert source["settings"]["url"] == "http://10.0.0.2:8000/view/cam?audio=1"
    assert (source["settings"]["width"], source["settings"]["height"]) == (1280, 720)

    # Pressing it again updates the same source; while live the service is left alone.
    data["width"] = 640
    module.script_update(data)
    fake.streaming = True
    fake.buttons["set_up"](None, None)
    assert fake.scene == ["streamserve output (cam)"] and source["settings"]["width"] == 640
    assert fake.saved == 1 and any("stop streaming first" in m for _, m in fake.logs)


def test_bad_settings_are_logged_not_raised(script: tuple[Any, FakeObs]) -> None:
    module, fake = script
    module.script_update({"server_url": "nonsense", "stream": "x"})
    fake.buttons.clear()
    module.script_properties()
    fake.buttons["set_up"](None, None)
    assert fake.service is None and fake.logs and "Server URL" in fake.logs[-1][1]


# --- live prompt changes against a real server --------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PromptParams:
    prompt: str = ""
    style: str = "watercolor"


class PromptedPipeline(PassthroughPipeline):
    name = "obs-test"
    Params = PromptParams

    def step(self, batch: Batch) -> list[StepOutput]:
        return [StepOutput(item.session_id, (item.media,)) for item in batch.items]


@pytest.fixture
def prompted_pipeline() -> Iterator[None]:
    """`obs-test` registered for this test only (other tests list the available pipelines)."""
    registry.register(PromptedPipeline)
    yield
    registry.unregister(PromptedPipeline.name)


@pytest.mark.usefixtures("prompted_pipeline")
def test_prompt_changes_reach_the_live_stream(server_factory: Callable[..., LiveServer],
                                              script: tuple[Any, FakeObs]) -> None:
    server = server_factory(ServerConfig(pipeline="passthrough", port=0, tokens=("tok",)),
                            transports=[WhipTransport])
    settings = logic.ScriptSettings(server_url=server.url, token="tok", stream="live", pipeline="obs-test",
                                    prompt="first light")
    service = logic.whip_service_settings(settings)
    # Exactly what OBS does with those settings: POST the offer to Server with the Bearer Token.
    created = httpx.post(service["server"], content=OBS_OFFER, timeout=20,
                         headers={"Content-Type": "application/sdp",
                                  "Authorization": f"Bearer {service['bearer_token']}"})
    assert created.status_code == 201, created.text
    stats = httpx.get(f"{server.url}/v1/streams/live").json()
    assert stats["pipeline"] == "obs-test" and stats["params"] == {"prompt": "first light", "style": "watercolor"}

    sender = logic.LatestSender()
    sender.submit(settings, {"prompt": "dusk"})
    sender.submit(settings, {"style": "noir"})  # merged with anything still pending
    sender.join()
    assert all(result.ok for _, result in sender.sent)
    assert httpx.get(f"{server.url}/v1/streams/live").json()["params"] == {"prompt": "dusk", "style": "noir"}

    # The obspython layer sends a change typed while streaming.
    module, fake = script
    fake.streaming = True
    data = {"server_url": server.url, "token": "tok", "stream": "live", "pipeline": "obs-test", "prompt": "dusk",
            "style": "noir"}
    module.script_update(data)
    module.script_update({**data, "prompt": "dawn"})
    module.script_unload()
    assert httpx.get(f"{server.url}/v1/streams/live").json()["params"]["prompt"] == "dawn"
    assert any("'prompt'" in m and m.endswith("ok (200)") for _, m in fake.logs), fake.logs

    wrong = logic.LatestSender()
    wrong.submit(dataclasses.replace(settings, token="nope"), {"prompt": "x"})
    wrong.join()
    assert wrong.sent[0][1].status == 401 and "unauthorized" in wrong.sent[0][1].describe()
    gone = logic.send(logic.param_update_request(dataclasses.replace(settings, server_url="http://127.0.0.1:9"),
                                                 {"prompt": "x"}), timeout=2)
    assert gone.status == 0 and "unreachable" in gone.describe()
    assert httpx.delete(server.url + created.headers["location"], headers={"Authorization": "Bearer tok"}) \
        .status_code == 200
