"""A tiny demo-format model folder (4 DiT blocks, a short rolling window) shared by the parallel tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.pipelines.video.video_helpers import TINY, make_demo_folder

TINY_PP = dataclasses.replace(TINY, layers=4, num_sinks=1, window=2)


@pytest.fixture(scope="session")
def tiny_pp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_folder(tmp_path_factory.mktemp("tiny_pp"), TINY_PP)
