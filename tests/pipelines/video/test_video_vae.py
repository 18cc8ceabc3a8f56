"""Streaming autoencoders: the demo patch autoencoder and Wan's causal VAE chunk by chunk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan

from streamserve.pipelines.video.vae import DemoVAE, TinyAutoencoder
from streamserve.pipelines.video.wan_vae import WanStreamingVAE


def tiny_wan_vae() -> Any:
    torch.manual_seed(0)
    vae: Any = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True], latents_mean=[0.1] * 4,
                            latents_std=[2.0] * 4)
    return vae.eval()


@torch.no_grad()
def test_wan_streaming_encode_decode_equals_offline() -> None:
    """1 frame, then chunks of 4: the same latents and frames as one offline call on the clip."""
    vae = tiny_wan_vae()
    x = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    offline = (vae.encode(x).latent_dist.mean - 0.1) / 2.0  # normalised like the pipeline
    decoded = vae.decode(vae.encode(x).latent_dist.mean).sample
    stream = WanStreamingVAE(vae)
    enc_state, dec_state = stream.new_state(), stream.new_state()
    assert stream.frames_needed(enc_state) == 1
    latents, frames = [], []
    for chunk in (x[0, :, :1], x[0, :, 1:5], x[0, :, 5:9]):
        assert stream.frames_needed(enc_state) == chunk.shape[1]
        z = stream.encode([chunk], [enc_state])  # [1, C, 1, h, w]
        latents.append(z)
        frames.append(stream.decode(z, [dec_state])[0])
    assert [f.shape[1] for f in frames] == [1, 4, 4]
    torch.testing.assert_close(torch.cat(latents, 2), offline, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.cat(frames, 1), decoded[0], rtol=0, atol=1e-5)


def test_wan_streaming_rejects_wrong_chunk() -> None:
    stream = WanStreamingVAE(tiny_wan_vae())
    with pytest.raises(ValueError, match=r"chunk 0 needs 1 frame\(s\), got 4"):
        stream.encode([torch.zeros(3, 4, 32, 32)], [stream.new_state()])


@torch.no_grad()
def test_tiny_autoencoder_pca_roundtrip_and_files(tmp_path: Path) -> None:
    images = torch.rand(6, 3, 32, 32) * 2 - 1
    ae = TinyAutoencoder(latent_channels=16, factor=4, hidden=8)
    ae.init_pca(images)
    z = ae.encode(images)
    assert z.shape == (6, 16, 8, 8)
    assert z.std(dim=(0, 2, 3)).mean().item() == pytest.approx(1.0, abs=0.1)  # unit variance per channel
    # Images made of the first basis patches reconstruct exactly.
    inside = ae.decode(ae.encode(ae.decode(z)))
    torch.testing.assert_close(inside, ae.decode(z), rtol=0, atol=1e-4)
    ae.save(tmp_path / "vae")
    loaded = TinyAutoencoder.load(tmp_path / "vae")
    torch.testing.assert_close(loaded.encode(images), z)
    stream = DemoVAE(loaded)
    lat = stream.encode([images[0][:, None]], [None])
    assert lat.shape == (1, 16, 1, 8, 8) and stream.frames_needed(None) == 1
    (out,) = stream.decode(lat, [None])
    assert out.shape == (3, 1, 32, 32) and out.abs().max() <= 1.0


def test_tiny_autoencoder_bad_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a TinyAutoencoder folder"):
        TinyAutoencoder.load(tmp_path)


def test_guided_decoder_decodes_each_block_with_its_own_camera_frame() -> None:
    """With stream-batch lag, block n is decoded after later frames were encoded: the guide must
    still be frame n (a per-session FIFO), and a fresh decoder starts as the identity colour map."""
    from streamserve.pipelines.video.guided import GuidedDecoder
    from streamserve.pipelines.video.vae import DemoVAE, TinyAutoencoder

    torch.manual_seed(0)
    guide = GuidedDecoder(8, 8, 16, features="v1")  # its colour features are the frame's own RGB
    vae = DemoVAE(TinyAutoencoder(8, 8, 16), guide)
    frames = [torch.rand(3, 1, 32, 32) * 2 - 1 for _ in range(3)]
    state = vae.new_state()
    z = [vae.encode([f], [state]) for f in frames]  # [1, C, 1, 4, 4] each, 3 frames queued
    assert len(state) == 3
    first = vae.decode(z[0], [state])[0][:, 0]  # [3, H, W]
    assert torch.allclose(first, frames[0][:, 0].clamp(-1, 1), atol=1e-5)  # identity map of frame 0
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.01 * torch.randn_like(p))
        second = vae.decode(z[1], [state])[0][:, 0]
        want = guide(z[1][:, :, 0], frames[1][:, 0][None])[0].clamp(-1, 1)
    assert torch.allclose(second, want, atol=1e-5) and len(state) == 1


def test_guided_decoder_fast_path_matches_the_reference() -> None:
    """The channels-last upsampling + per-pixel bmm computes exactly the documented map,
    ``out_c = sum_k bilinear(A)_ck * phi_k`` (NCHW reference), batched and at a non-square size."""
    import torch.nn.functional as F

    from streamserve.pipelines.video.guided import NUM_FEATURES, GuidedDecoder, guide_features

    torch.manual_seed(0)
    guide = GuidedDecoder(8, 8, 16)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.05 * torch.randn_like(p))
        z, frame = torch.randn(2, 8, 4, 6), torch.rand(2, 3, 32, 48) * 2 - 1
        phi = guide_features(frame)
        coeff = F.interpolate(guide.head(torch.cat([z, F.avg_pool2d(phi, 8)], 1)), scale_factor=8,
                              mode="bilinear", align_corners=False)
        want = (coeff.view(2, 3, NUM_FEATURES, 32, 48) * phi[:, None]).sum(2)
        got = guide(z, frame)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)


def test_style_conditioned_guide_reads_the_sessions_blended_prompt(tmp_path: Path) -> None:
    """A guide with ``style_dim`` is modulated (FiLM) by the session's prompt states averaged over
    tokens, which the pipeline hands to the VAE before decoding; without them it refuses clearly."""
    from streamserve.pipelines.video.guided import GuidedDecoder
    from streamserve.pipelines.video.vae import DemoVAE, TinyAutoencoder

    torch.manual_seed(0)
    guide = GuidedDecoder(8, 8, 16, style_dim=12)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vae = DemoVAE(TinyAutoencoder(8, 8, 16), guide)
    frame = torch.rand(3, 1, 32, 32) * 2 - 1
    state = vae.new_state()
    z = vae.encode([frame], [state])
    with pytest.raises(ValueError, match="needs each session's style"):
        vae.decode(z, [state])
    assert len(state) == 1  # the refused decode left the queue as it was
    a, b = torch.randn(1, 4, 12), torch.randn(1, 4, 12)
    vae.set_prompt(state, a)
    got = vae.decode(z, [state])[0][:, 0]
    with torch.no_grad():
        want = guide(z[:, :, 0], frame[:, 0][None], a.mean(1))[0].clamp(-1, 1)
        other = guide(z[:, :, 0], frame[:, 0][None], b.mean(1))[0].clamp(-1, 1)
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(want, other, atol=1e-3)
    with pytest.raises(ValueError, match=r"needs a style \[B, 12\]"):
        guide(z[:, :, 0], frame[:, 0][None])
    guide.save(tmp_path / "guide")
    loaded = GuidedDecoder.load(tmp_path / "guide")
    assert loaded.style_dim == 12
    with torch.no_grad():
        x, f = z[:, :, 0], frame[:, 0][None]
        assert torch.allclose(loaded(x, f, a.mean(1)), guide(x, f, a.mean(1)))


def test_guide_feature_sets_load_honestly(tmp_path: Path) -> None:
    """A guide folder written before the ``features`` field decodes with the basis it was trained on
    (``v1``); a new one records its set; an unknown set is refused with the sets that exist."""
    import json

    from streamserve.pipelines.video.guided import GuidedDecoder, guide_features

    torch.manual_seed(0)
    guide = GuidedDecoder(8, 8, 16, features="v1")
    guide.save(tmp_path / "old")
    cfg_path = tmp_path / "old" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["features"] == "v1"
    del cfg["features"]  # as the folders written before the field
    cfg_path.write_text(json.dumps(cfg))
    assert GuidedDecoder.load(tmp_path / "old").features == "v1"
    GuidedDecoder(8, 8, 16).save(tmp_path / "new")
    assert GuidedDecoder.load(tmp_path / "new").features == "v2"
    cfg["features"] = "v9"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unknown guide feature set 'v9'; sets: v1, v2"):
        GuidedDecoder.load(tmp_path / "old")
    frame = torch.rand(1, 3, 32, 32) * 2 - 1  # white noise
    old, new = guide_features(frame, "v1"), guide_features(frame, "v2")  # [1, 8, H, W] each
    assert old.shape == new.shape == (1, 8, 32, 32)
    rgb = (frame + 1) * 0.5
    assert torch.allclose(old[:, 1:4], rgb) and torch.equal(old[:, 6], new[:, 6])  # sharp colour; same stroke
    assert torch.equal(old[:, 4], new[:, 5]) and torch.allclose(new[:, 5], new[:, 1] ** 2)  # L^2 of luma
    # v2's colour is blurred (sigma 1.22): white noise keeps ~1/(2 sqrt(pi) 1.22) = 0.23 of its spread
    spread = (new[:, 2:5].std() / rgb.std()).item()
    assert 0.15 < spread < 0.35, spread
    with torch.no_grad():  # a fresh v2 decoder starts as the identity map of the blurred colour
        start = GuidedDecoder(8, 8, 16)(torch.randn(1, 8, 4, 4), frame)
    assert torch.allclose(start, new[:, 2:5] * 2 - 1, atol=1e-5)


def test_v2_outline_feature_is_the_cartoon_filters_outline() -> None:
    """Feature set ``v2``'s outline (the last map) is the cartoon target's (``styles._cartoon``: smoothstep
    of the Sobel magnitude of Gaussian-blurred luma, sigma 1.2) up to the blur, a 7-tap binomial here."""
    import cv2

    from streamserve.pipelines.video.data import face_clip
    from streamserve.pipelines.video.guided import guide_features

    rgb = face_clip(1, seed=21)[0]
    lum = (rgb.astype(np.float32) / 255.0) @ np.array([0.299, 0.587, 0.114], np.float32)
    g = cv2.GaussianBlur(lum, (0, 0), 1.2)
    mag = np.sqrt(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) ** 2 + cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) ** 2)
    x = np.clip((mag - 0.10) / 0.2, 0.0, 1.0)
    want = x * x * (3.0 - 2.0 * x)
    frame = torch.from_numpy(rgb).float().div(127.5).sub(1.0).permute(2, 0, 1)[None]
    got, old = guide_features(frame, "v2")[0, 7].numpy(), guide_features(frame, "v1")[0, 7].numpy()
    assert 0.05 < want.mean() < 0.5  # the face has outlines to compare
    err = np.abs(got - want)
    assert err.mean() < 0.01 and np.percentile(err, 99) < 0.15, (err.mean(), np.percentile(err, 99))
    assert np.abs(old - want).mean() > 0.1  # v1's outline is another map (measured 0.18; v2: 0.006)
