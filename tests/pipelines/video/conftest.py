"""Fixtures for the video pipeline tests (helpers live in video_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from streamserve.pipelines.video import VideoDiffusionPipeline
from tests.pipelines.video.video_helpers import make_demo_folder, make_wan_folder


@pytest.fixture(scope="session")
def tiny_demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo-format folder with a tiny random model (64x64 default resolution)."""
    return make_demo_folder(tmp_path_factory.mktemp("tiny_demo"))


@pytest.fixture
def tiny_pipe(tiny_demo_dir: Path) -> VideoDiffusionPipeline:
    torch.set_num_threads(1)
    return VideoDiffusionPipeline(device="cpu", model=str(tiny_demo_dir))


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers Wan2.1 T2V folder with tiny random weights."""
    return make_wan_folder(tmp_path_factory.mktemp("tiny_wan"))
