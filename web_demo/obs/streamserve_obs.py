"""streamserve for OBS Studio 30+ (Tools > Scripts > +, pick this file). See docs/obs.md.

A thin layer over `streamserve_obs_logic` (which holds every decision and is tested without OBS):

- properties: Server URL, Bearer token, Stream name, Pipeline, Prompt, Style, output size;
- "Set up OBS for this stream": sets Settings > Stream to the WHIP service (Server + Bearer Token)
  and adds or updates a Browser Source showing the processed output (`/view/{stream}`);
- while streaming, a changed Prompt or Style is sent to the server at once
  (`PATCH /v1/streams/{stream}`), from a background thread so OBS never stalls.

OBS puts this file's folder on `sys.path`, so the logic module next to it imports by name.
"""

from __future__ import annotations

from typing import Any

import obspython as obs  # type: ignore[import-not-found]
import streamserve_obs_logic as logic  # type: ignore[import-not-found]

PIPELINES = ("video", "passthrough")
STYLES = ("", "watercolor", "sketch", "cartoon", "sepia", "noir", "thermal")

_current: logic.ScriptSettings | None = None


def _log(level: int, message: str) -> None:
    obs.script_log(level, f"[streamserve] {message}")


def _on_result(params: dict[str, Any], result: logic.HttpResult) -> None:
    level = obs.LOG_INFO if result.ok else obs.LOG_WARNING
    _log(level, f"update {sorted(params)}: {result.describe()}")


_sender = logic.LatestSender(on_result=_on_result)


def read_settings(data: Any) -> logic.ScriptSettings:
    return logic.ScriptSettings(
        server_url=obs.obs_data_get_string(data, "server_url"),
        token=obs.obs_data_get_string(data, "token"),
        stream=obs.obs_data_get_string(data, "stream"),
        pipeline=obs.obs_data_get_string(data, "pipeline"),
        prompt=obs.obs_data_get_string(data, "prompt"),
        style=obs.obs_data_get_string(data, "style"),
        width=obs.obs_data_get_int(data, "width"),
        height=obs.obs_data_get_int(data, "height"),
        view_audio=obs.obs_data_get_bool(data, "view_audio"),
    )


def _obs_data(values: dict[str, Any]) -> Any:
    data = obs.obs_data_create()
    for key, value in values.items():
        if isinstance(value, bool):
            obs.obs_data_set_bool(data, key, value)
        elif isinstance(value, int):
            obs.obs_data_set_int(data, key, value)
        else:
            obs.obs_data_set_string(data, key, str(value))
    return data


def apply_whip_service(settings: logic.ScriptSettings) -> None:
    """Settings > Stream: Service "WHIP", Server and Bearer Token."""
    data = _obs_data(logic.whip_service_settings(settings))
    service = obs.obs_service_create(logic.WHIP_SERVICE_ID, "streamserve", data, None)
    obs.obs_frontend_set_streaming_service(service)
    obs.obs_frontend_save_streaming_service()
    obs.obs_service_release(service)
    obs.obs_data_release(data)


def apply_browser_source(settings: logic.ScriptSettings) -> None:
    """Update the Browser Source of this stream, or create it in the current scene."""
    name = logic.browser_source_name(settings)
    data = _obs_data(logic.browser_source_settings(settings))
    source = obs.obs_get_source_by_name(name)
    if source is not None:
        obs.obs_source_update(source, data)
    else:
        source = obs.obs_source_create(logic.BROWSER_SOURCE_ID, name, data, None)
        scene_source = obs.obs_frontend_get_current_scene()
        obs.obs_scene_add(obs.obs_scene_from_source(scene_source), source)
        obs.obs_source_release(scene_source)
    obs.obs_source_release(source)
    obs.obs_data_release(data)


def on_set_up(props: Any, prop: Any) -> bool:
    if _current is None:
        return False
    try:
        if obs.obs_frontend_streaming_active():
            _log(obs.LOG_WARNING, "stop streaming first: OBS cannot change the stream service while live")
        else:
            apply_whip_service(_current)
        apply_browser_source(_current)
        _log(obs.LOG_INFO, f"WHIP server {logic.whip_url(_current)}; viewer {logic.view_url(_current)}")
    except logic.SettingsError as exc:
        _log(obs.LOG_WARNING, str(exc))
    return False


def on_send_now(props: Any, prop: Any) -> bool:
    if _current is not None:
        try:
            _sender.submit(_current, _current.live_params())
        except logic.SettingsError as exc:
            _log(obs.LOG_WARNING, str(exc))
    return False


# --- the obspython entry points -----------------------------------------------------------------

def script_description() -> str:
    return ("<b>streamserve</b>: stream to a streamserve server over WHIP and show its processed "
            "output in a Browser Source. Prompt and Style changes go live while streaming.")


def script_defaults(data: Any) -> None:
    defaults = logic.ScriptSettings()
    obs.obs_data_set_default_string(data, "server_url", defaults.server_url)
    obs.obs_data_set_default_string(data, "stream", defaults.stream)
    obs.obs_data_set_default_string(data, "pipeline", defaults.pipeline)
    obs.obs_data_set_default_int(data, "width", defaults.width)
    obs.obs_data_set_default_int(data, "height", defaults.height)


def script_properties() -> Any:
    props = obs.obs_properties_create()
    obs.obs_properties_add_text(props, "server_url", "Server URL", obs.OBS_TEXT_DEFAULT)
    obs.obs_properties_add_text(props, "token", "Bearer token", obs.OBS_TEXT_PASSWORD)
    obs.obs_properties_add_text(props, "stream", "Stream name", obs.OBS_TEXT_DEFAULT)
    pipelines = obs.obs_properties_add_list(props, "pipeline", "Pipeline", obs.OBS_COMBO_TYPE_EDITABLE,
                                            obs.OBS_COMBO_FORMAT_STRING)
    for name in PIPELINES:
        obs.obs_property_list_add_string(pipelines, name, name)
    obs.obs_properties_add_text(props, "prompt", "Prompt", obs.OBS_TEXT_MULTILINE)
    styles = obs.obs_properties_add_list(props, "style", "Style", obs.OBS_COMBO_TYPE_EDITABLE,
                                         obs.OBS_COMBO_FORMAT_STRING)
    for name in STYLES:
        obs.obs_property_list_add_string(styles, name or "(server default)", name)
    obs.obs_properties_add_int(props, "width", "Output width", 16, 7680, 2)
    obs.obs_properties_add_int(props, "height", "Output height", 16, 4320, 2)
    obs.obs_properties_add_bool(props, "view_audio", "Play the output's audio (Control audio via OBS)")
    obs.obs_properties_add_button(props, "set_up", "Set up OBS for this stream", on_set_up)
    obs.obs_properties_add_button(props, "send_now", "Send prompt and style now", on_send_now)
    return props


def script_update(data: Any) -> None:
    global _current
    new = read_settings(data)
    if obs.obs_frontend_streaming_active():
        try:
            _sender.submit(new, logic.changed_params(_current, new))
        except logic.SettingsError as exc:
            _log(obs.LOG_WARNING, str(exc))
    _current = new


def script_unload() -> None:
    _sender.join(timeout=2.0)
