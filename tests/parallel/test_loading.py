"""Rank 0 of `video-pp` reads only stage 0's DiT blocks (plus the shared parts), never the whole model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from streamserve.pipelines.video.checkpoint import load_model
from streamserve.pipelines.video.parallel import loading
from streamserve.pipelines.video.parallel.loading import load_rank0


def _bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters() if p.device.type != "meta")


def test_rank0_reads_only_its_blocks(tiny_pp_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []
    real = loading.load_stage_dit

    def spy(folder: object, layers: range, device: str, dtype: torch.dtype) -> object:
        read.append(f"{layers.start}-{layers.stop}")
        return real(folder, layers, device, dtype)  # type: ignore[arg-type]

    monkeypatch.setattr(loading, "load_stage_dit", spy)
    # fp32 here: the byte count assumes one dtype (in bf16 the norms stay fp32, as diffusers keeps them)
    loaded, ranges, weights = load_rank0(str(tiny_pp_dir), "cpu", torch.float32, 2)
    assert weights is None
    assert ranges == [range(0, 2), range(2, 4)] and read == ["0-2"]
    devices = [next(b.parameters()).device.type for b in loaded.dit.transformer.blocks]
    assert devices == ["cpu", "cpu", "meta", "meta"]
    full = load_model(str(tiny_pp_dir), "cpu", torch.float32)
    # Same serving defaults, VAE and styles as the single-process loader; about half the DiT's bytes.
    assert loaded.defaults == full.defaults
    assert torch.equal(loaded.prompts.encode("sketch"), full.prompts.encode("sketch"))
    blocks = _bytes(full.dit.transformer.blocks)
    assert _bytes(loaded.dit) == pytest.approx(_bytes(full.dit) - blocks / 2)
    for name, p in loaded.dit.transformer.named_parameters():
        if p.device.type != "meta":
            assert torch.equal(p, full.dit.transformer.get_parameter(name)), name
    # Left to choose, both loaders pick the same precision.
    assert load_rank0(str(tiny_pp_dir), "cpu", None, 1)[0].dit.dtype == load_model(str(tiny_pp_dir), "cpu").dit.dtype


def test_rank0_loader_names_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_rank0(str(tmp_path / "nope"), "cpu", None, 2)
