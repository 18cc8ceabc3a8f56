"""Model pipelines and their registry. Importing this package registers the built-in pipelines."""

from streamserve.pipelines.base import Pipeline, PipelineInfo
from streamserve.pipelines.registry import available, create, get_class, info, register, unregister

__all__ = ["Pipeline", "PipelineInfo", "available", "create", "get_class", "info", "register", "unregister"]
