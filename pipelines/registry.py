"""Pipeline registry: name -> class. Built-ins register lazily so importing the registry stays cheap."""

from __future__ import annotations

import importlib
from typing import Any

from streamserve.core.errors import UnknownPipeline
from streamserve.pipelines.base import Pipeline, PipelineInfo

# name -> "module:Class" for built-ins (imported on first use), or the class once loaded.
_BUILTINS: dict[str, str] = {
    "passthrough": "streamserve.pipelines.passthrough:PassthroughPipeline",
    "video": "streamserve.pipelines.video:VideoDiffusionPipeline",
    "voice": "streamserve.pipelines.voice:VoicePipeline",
    "video-pp": "streamserve.pipelines.video.parallel.pipeline:PipelinedVideoPipeline",
}


class _Registry:
    def __init__(self) -> None:
        self._classes: dict[str, type[Pipeline]] = {}
        self._lazy: dict[str, str] = dict(_BUILTINS)

    def register(self, cls: type[Pipeline], *, replace: bool = False) -> type[Pipeline]:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{cls!r} has no `name`")
        if not replace and name in self._classes and self._classes[name] is not cls:
            raise ValueError(f"a pipeline named {name!r} is already registered")
        self._classes[name] = cls
        self._lazy.pop(name, None)
        return cls

    def unregister(self, name: str) -> None:
        """Forget `name` (a plugin unloading, or a test cleaning up). Built-ins stay loadable."""
        self._classes.pop(name, None)
        if name in _BUILTINS:
            self._lazy[name] = _BUILTINS[name]

    def available(self) -> list[str]:
        return sorted(set(self._classes) | set(self._lazy))

    def get_class(self, name: str) -> type[Pipeline]:
        if name in self._classes:
            return self._classes[name]
        target = self._lazy.get(name)
        if target is None:
            raise UnknownPipeline(name, self.available())
        module, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        self._classes[name] = cls
        self._lazy.pop(name, None)
        return cls


_REGISTRY = _Registry()


def register(cls: type[Pipeline], *, replace: bool = False) -> type[Pipeline]:
    """Register a Pipeline subclass under its `name` (usable as a class decorator)."""
    return _REGISTRY.register(cls, replace=replace)


def unregister(name: str) -> None:
    _REGISTRY.unregister(name)


def available() -> list[str]:
    return _REGISTRY.available()


def get_class(name: str) -> type[Pipeline]:
    """The class registered as `name`. Raises UnknownPipeline listing the available ones."""
    return _REGISTRY.get_class(name)


def info(name: str) -> PipelineInfo:
    return get_class(name).describe()


def create(name: str, device: str = "cpu", **options: Any) -> Pipeline:
    return get_class(name)(device=device, **options)
