"""Guided decoding for the demo model: the camera frame carries full-resolution structure to the output.

This is video-to-video: when a latent block is decoded, the camera frame it answers is at hand. The
8x-compressed latent the DiT produces says *what* each 8x8 area should look like (the style, its
colours and tones); the camera frame says *where* the edges and fine detail are. `GuidedDecoder`
combines them as guided upsampling (after HDRnet's bilateral-grid idea, with a plain grid):

1. per pixel of the camera frame, a small basis of 8 features ``phi`` (:func:`guide_features`): a
   constant, luma, its RGB blurred (sigma 1.22 px: sensor noise stays out of flat areas), luma squared,
   a pencil stroke (a dodge ratio of luma over its ~24-pixel mean, clipped at paper white, cubed) and
   an outline computed as the cartoon filter draws it (a soft threshold of the Sobel magnitude of
   blurred luma). That is feature set ``v2``; ``v1`` (sharp RGB, luma cubed, an outline from unblurred
   central differences) decodes the folders written before it (:data:`FEATURE_SETS`);
2. at latent resolution, a small CNN reads the DiT's latent with the pooled features and predicts,
   per latent pixel, a 3 x 8 matrix of coefficients; with ``style_dim > 0`` its hidden features are
   modulated (FiLM: scale and shift per channel) by the session's prompt state -- the DiT's projected
   style embedding, averaged over its tokens, blended as the prompt blends -- so the decoder knows
   which style it is decoding rather than guessing it from the latent;
3. the coefficients are upsampled bilinearly to full resolution and applied to ``phi``:
   ``out_c(p) = sum_k A_ck(p) * phi_k(p)``.

The coefficient maps are smooth, so there is no 8-pixel block grid; edges, faces and text come from
the camera frame through ``phi``; the style (what maps to what) comes from the DiT's latent. Cost at
256x256: ~55 M multiply-adds at latent resolution (channels-last) plus ~1 M per output pixel map
(planar: :func:`upsample_bilinear`, then the product as plane multiply-adds; see ``forward``).

Shapes: latents ``[B, C, h, w]``, frames ``[B, 3, H, W]`` in ``[-1, 1]``, ``H = f * h``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

NUM_FEATURES = 8
_LUMA = (0.299, 0.587, 0.114)


def _local_mean(lum: torch.Tensor, cell: int) -> torch.Tensor:
    """Smooth local mean of ``lum [B, 1, H, W]`` over roughly ``3 * cell`` pixels (cheap: pooled to
    cells, a 3x3 box over the cells, bilinear back up)."""
    h, w = lum.shape[-2:]
    coarse = F.avg_pool2d(lum, cell, ceil_mode=True)
    coarse = F.avg_pool2d(coarse, 3, stride=1, padding=1, count_include_pad=False)
    if h % cell == 0 and w % cell == 0 and not torch.is_grad_enabled():
        return upsample_bilinear(coarse, cell)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def upsample_bilinear(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)`` for an integer
    ``factor``, ``x [B, C, h, w]`` -> ``[B, C, f*h, f*w]`` planar (to float rounding).

    On CPU ATen's planar bilinear kernel is slow (~3 ms for the decoder's 24 maps at 256x256; ~0.7 ms
    channels-last, whose result then needs a layout change or a per-pixel ``bmm``). Here the width
    goes through one product with the ``[w, f*w]`` interpolation matrix and the height through two
    broadcast multiply-adds (the output row phases that lean to the row before, and those that lean to
    the row after): ~0.65 ms, planar. With autograd on (training) it is ATen's kernel.
    """
    if torch.is_grad_enabled() or x.device.type != "cpu":
        return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    b, c, h, w = x.shape
    rows = (x.reshape(-1, w) @ _interpolation_matrix(w, factor, x.dtype)).view(b * c, h, 1, factor * w)
    # Rows j - 1 and j + 1 minus row j, the border rows repeated (the border clamp).
    before = torch.cat([rows[:, :1], rows[:, :-1]], dim=1).sub_(rows)
    after = torch.cat([rows[:, 1:], rows[:, -1:]], dim=1).sub_(rows)
    out = torch.empty(b * c, h, factor, factor * w, dtype=x.dtype)
    lean, weights = _phase_weights(factor, x.dtype)
    torch.addcmul(rows, before, weights[:, :lean], out=out[:, :, :lean])  # phases leaning to row j - 1
    torch.addcmul(rows, after, weights[:, lean:], out=out[:, :, lean:])  # to row j + 1 (or on row j)
    return out.view(b, c, factor * h, factor * w)


@functools.lru_cache(maxsize=16)
def _phase_weights(factor: int, dtype: torch.dtype) -> tuple[int, torch.Tensor]:
    """How many output row phases lean to the row before, and every phase's weight ``[1, f, 1]``."""
    phases = _phases(factor)
    lean = sum(1 for offset, _ in phases if offset < 0)
    return lean, torch.tensor([weight for _, weight in phases], dtype=dtype).view(1, factor, 1)


def _phases(factor: int) -> list[tuple[int, float]]:
    """Per output phase ``r``: the neighbour (-1 or +1 source rows) it leans to and its weight.
    Output ``f*j + r`` samples source ``j + d``, ``d = (r + 0.5) / f - 0.5`` (align_corners=False)."""
    out = []
    for r in range(factor):
        d = (r + 0.5) / factor - 0.5
        out.append((-1, -d) if d < 0 else (1, d))
    return out


@functools.lru_cache(maxsize=16)
def _interpolation_matrix(n: int, factor: int, dtype: torch.dtype) -> torch.Tensor:
    """``[n, f*n]``: column ``f*j + r`` holds the bilinear weights of output ``f*j + r`` (borders clamped)."""
    m = torch.zeros(n, n * factor, dtype=torch.float64)
    for j in range(n):
        for r, (offset, weight) in enumerate(_phases(factor)):
            other = min(max(j + offset, 0), n - 1)
            m[j, factor * j + r] += 1.0 - weight
            m[other, factor * j + r] += weight
    return m.to(dtype)


def _outline_v1(lum: torch.Tensor) -> torch.Tensor:
    """A soft threshold of luma's central-difference gradient magnitude (0 at the border); ``v1``'s outline."""
    dx = lum[..., 1:-1, 2:] - lum[..., 1:-1, :-2]  # central differences (2x the slope per pixel)
    dy = lum[..., 2:, 1:-1] - lum[..., :-2, 1:-1]
    mag = dx.mul_(dx).addcmul_(dy, dy).sqrt_()
    return F.pad(mag.mul_(4.0).sub_(0.08).mul_(4.0).clamp_(0.0, 1.0), (1, 1, 1, 1))  # soft threshold


def _binomial_blur(x: torch.Tensor) -> torch.Tensor:
    """The 7-tap binomial [1, 6, 15, 20, 15, 6, 1] / 64 per axis (sigma 1.22) over ``x [B, C, H, W]``,
    'valid': -> ``[B, C, H - 6, W - 6]``. Shifted slices, not ``conv2d``, which on CPU costs more than
    the rest of the features for maps this thin."""
    w = x.shape[-1] - 6
    h = x[..., 3 : 3 + w] * (20.0 / 64)
    for i, tap in ((0, 1.0 / 64), (1, 6.0 / 64), (2, 15.0 / 64)):
        h.add_(x[..., i : i + w] + x[..., 6 - i : 6 - i + w], alpha=tap)
    n = h.shape[-2] - 6
    out = h[..., 3 : 3 + n, :] * (20.0 / 64)
    for i, tap in ((0, 1.0 / 64), (1, 6.0 / 64), (2, 15.0 / 64)):
        out.add_(h[..., i : i + n, :] + h[..., 6 - i : 6 - i + n, :], alpha=tap)
    return out


def _sobel_outline(g: torch.Tensor) -> torch.Tensor:
    """The cartoon filter's outline from blurred luma padded by one pixel, ``g [B, 1, H + 2, W + 2]``:
    a soft threshold, (m - 0.10) / 0.2, of its Sobel magnitude m -> ``[B, 1, H, W]``."""
    hx = g[..., 2:] - g[..., :-2]  # [B, 1, H + 2, W]
    hy = g[..., 2:, :] - g[..., :-2, :]  # [B, 1, H, W + 2]
    dx = hx[..., 1:-1, :].mul(2.0).add_(hx[..., :-2, :]).add_(hx[..., 2:, :])  # Sobel: [1, 2, 1] across
    dy = hy[..., 1:-1].mul(2.0).add_(hy[..., :-2]).add_(hy[..., 2:])
    mag = dx.mul_(dx).addcmul_(dy, dy).sqrt_()
    return mag.sub_(0.10).mul_(5.0).clamp_(0.0, 1.0)


FEATURE_SETS: dict[str, str] = {
    "v1": "1, R, G, B, L^2, L^3, pencil stroke, outline from luma's central differences",
    "v2": "1, L, blurred R, G, B, L^2, pencil stroke, outline as the cartoon filter draws it (Sobel of blurred luma)",
}
"""The decoder's feature bases (8 maps each). A guide folder whose config names none was trained on ``v1``."""


def guide_features(frame: torch.Tensor, features: str = "v2") -> torch.Tensor:
    """Per-pixel feature basis of camera frames ``[B, 3, H, W]`` in [-1, 1] -> ``[B, 8, H, W]``,
    by ``features`` (:data:`FEATURE_SETS`):

    - ``v2``: 1, L, RGB blurred (the 7-tap binomial, sigma 1.22), L^2, a pencil stroke
      min(1, (L + 0.06) / (local mean + 0.06))^3 over ~24 pixels, and the cartoon filter's outline:
      a smooth step of the Sobel magnitude of the blurred luma (``styles._cartoon`` blurs with a sigma
      1.2 Gaussian). The blurred colour keeps sensor noise out of flat areas; luma stays sharp.
    - ``v1``: 1, R, G, B, L^2, L^3, the same stroke, and a smooth step of the central-difference
      gradient magnitude of unblurred luma.
    """
    if features not in FEATURE_SETS:
        raise ValueError(f"unknown guide feature set {features!r}; sets: {', '.join(FEATURE_SETS)}")
    if features == "v2" and not torch.is_grad_enabled():
        return _features_v2(frame)  # serving: the same maps to float rounding, planar, fewer passes
    # The reference computation, which training runs (so `train_demo` rewrites the committed decoder
    # bit for bit), written channels-last as it always was.
    rgb = (frame + 1.0) * 0.5  # [0, 1]
    w = torch.tensor(_LUMA, dtype=frame.dtype, device=frame.device).view(1, 3, 1, 1)
    lum = (rgb * w).sum(1, keepdim=True)  # [B, 1, H, W]
    stroke = ((lum + 0.06) / (_local_mean(lum, 8) + 0.06)).clamp_(0.0, 1.0)
    stroke = (stroke * stroke).mul_(stroke)
    if features == "v1":
        edge = _outline_v1(lum)
    else:
        soft = _binomial_blur(F.pad(rgb, (4, 4, 4, 4), mode="reflect"))  # [B, 3, H + 2, W + 2], mirrored borders
        edge = _sobel_outline((soft * w).sum(1, keepdim=True))
        soft = soft[..., 1:-1, 1:-1]
    step = edge.mul(-2.0).add_(3.0)
    edge = edge.mul_(edge).mul_(step)  # smoothstep: e * e * (3 - 2 e)
    sq = lum * lum
    if features == "v1":
        maps = (torch.ones_like(lum), rgb, sq, sq * lum, stroke, edge)  # [B, c, H, W] each
    else:
        maps = (torch.ones_like(lum), lum, soft, sq, stroke, edge)
    return torch.cat([m.permute(0, 2, 3, 1) for m in maps], dim=-1).permute(0, 3, 1, 2)


def _features_v2(frame: torch.Tensor) -> torch.Tensor:
    """Feature set ``v2`` written map by map into one ``[B, 8, H, W]`` tensor (no concatenation).

    Luma and the blur work on the frame in [-1, 1] and map to [0, 1] once (the blur is linear and its
    taps sum to one); the Sobel outline reads half the blurred frame's luma (its +0.5 cancels in the
    differences)."""
    b, _, h, w = frame.shape
    phi = frame.new_empty(b, NUM_FEATURES, h, w)
    phi[:, 0].fill_(1.0)
    lum = phi[:, 1:2]
    _half_luma(frame, out=lum).add_(0.5)  # luma of (frame + 1) / 2
    soft = _binomial_blur(F.pad(frame, (4, 4, 4, 4), mode="reflect"))  # [B, 3, H + 2, W + 2] in [-1, 1]
    edge = _sobel_outline(_half_luma(soft))  # [B, 1, H, W]
    torch.mul(soft[..., 1:-1, 1:-1], 0.5, out=phi[:, 2:5]).add_(0.5)
    torch.mul(lum, lum, out=phi[:, 5:6])
    stroke = torch.add(lum, 0.06, out=phi[:, 6:7]).div_(_local_mean(lum, 8).add_(0.06)).clamp_(0.0, 1.0)
    stroke.mul_(stroke * stroke)
    step = edge.mul(-2.0).add_(3.0)
    torch.mul(edge, edge, out=phi[:, 7:8]).mul_(step)  # smoothstep: e * e * (3 - 2 e)
    return phi


def _half_luma(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Half the luma of ``x [B, 3, H, W]`` -> ``[B, 1, H, W]`` (into ``out`` if given), three plane FMAs."""
    out = torch.mul(x[:, 0:1], 0.5 * _LUMA[0], out=out) if out is not None else x[:, 0:1] * (0.5 * _LUMA[0])
    return out.add_(x[:, 1:2], alpha=0.5 * _LUMA[1]).add_(x[:, 2:3], alpha=0.5 * _LUMA[2])


def _apply_reference(coeff: torch.Tensor, phi: torch.Tensor, factor: int) -> torch.Tensor:
    """``out_c = sum_k up(A_ck) phi_k`` as training computes it: channels-last bilinear upsampling of
    ``coeff [B, 3K, h, w]`` and one 3 x K by K x 1 product per pixel -> ``[B, 3, H, W]``."""
    b = coeff.shape[0]
    coeff = F.interpolate(coeff.contiguous(memory_format=torch.channels_last), scale_factor=factor,
                          mode="bilinear", align_corners=False)  # [B, 3K, H, W], channels-last
    hh, ww = phi.shape[-2:]
    a = coeff.permute(0, 2, 3, 1).reshape(b * hh * ww, 3, NUM_FEATURES)  # a view
    p = phi.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(b * hh * ww, NUM_FEATURES, 1)
    return torch.bmm(a, p).view(b, hh, ww, 3).permute(0, 3, 1, 2)


class GuidedDecoder(nn.Module):
    """Latent + camera frame -> output frame by guided upsampling (see the module docstring)."""

    def __init__(self, latent_channels: int = 16, factor: int = 8, hidden: int = 64, style_dim: int = 0,
                 features: str = "v2") -> None:
        super().__init__()
        if latent_channels < 1 or factor < 1 or hidden < 1 or style_dim < 0:
            raise ValueError(f"bad GuidedDecoder config: channels={latent_channels} factor={factor} hidden={hidden} "
                             f"style_dim={style_dim}")
        if features not in FEATURE_SETS:
            raise ValueError(f"unknown guide feature set {features!r}; sets: {', '.join(FEATURE_SETS)}")
        self.config: dict[str, int | str] = {"latent_channels": latent_channels, "factor": factor, "hidden": hidden}
        if style_dim:
            self.config["style_dim"] = style_dim
        self.config["features"] = features
        self.features = features
        self.factor = factor
        self.style_dim = style_dim
        self.hidden = hidden
        k = NUM_FEATURES
        # FiLM: per hidden layer (the first two) a scale and a shift per channel from the style; zero at start
        self.film = nn.Linear(style_dim, 4 * hidden) if style_dim else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        self.head = nn.Sequential(
            nn.Conv2d(latent_channels + k, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, 3 * k, 1),
        )
        last = self.head[-1]
        assert isinstance(last, nn.Conv2d)
        nn.init.zeros_(last.weight)
        red = 1 if features == "v1" else 2  # where phi's (sharp or blurred) RGB starts
        with torch.no_grad():  # start as the identity colour map: out = rgb (v2: blurred)
            bias = torch.zeros(3, k)
            for c in range(3):
                bias[c, red + c] = 2.0
                bias[c, 0] = -1.0  # back to [-1, 1]
            last.bias.copy_(bias.reshape(-1))  # type: ignore[union-attr]

    def _coefficients(self, x: torch.Tensor, style: torch.Tensor | None) -> torch.Tensor:
        if self.film is None:
            return self.head(x)  # type: ignore[no-any-return]
        if style is None or style.shape != (x.shape[0], self.style_dim):
            got = None if style is None else tuple(style.shape)
            raise ValueError(f"this guided decoder needs a style [B, {self.style_dim}] (the session's prompt state), "
                             f"got {got}")
        film = self.film(style.to(x.dtype))[:, :, None, None]  # [B, 4 * hidden, 1, 1]
        g1, b1, g2, b2 = film.split(self.hidden, dim=1)
        conv1, act1, conv2, act2, conv3, act3, out = self.head  # direct calls: slicing builds a module
        x = act1(conv1(x) * (1.0 + g1) + b1)
        x = act2(conv2(x) * (1.0 + g2) + b2)
        return out(act3(conv3(x)))  # type: ignore[no-any-return]

    def forward(self, z: torch.Tensor, frame: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """z: [B, C, h, w] latents; frame: [B, 3, f*h, f*w]; style: [B, style_dim] (a decoder with
        ``style_dim > 0`` needs it) -> [B, 3, f*h, f*w] (not clamped)."""
        _, _, h, w = z.shape
        if frame.shape[-2:] != (h * self.factor, w * self.factor):
            raise ValueError(f"frame {tuple(frame.shape)} does not match latents {tuple(z.shape)} x {self.factor}")
        phi = guide_features(frame.to(z.dtype), self.features)  # [B, K, H, W]
        pooled = F.avg_pool2d(phi, self.factor)  # [B, K, h, w]
        # The head's convolutions run channels-last (~15 % cheaper so on CPU); in inference the
        # full-resolution part runs planar, where the per-pixel product is 8 multiply-adds over planes.
        x = torch.cat([z, pooled], dim=1).contiguous(memory_format=torch.channels_last)
        coeff = self._coefficients(x, style)  # [B, 3K, h, w]
        if torch.is_grad_enabled():  # training: the reference computation, bit for bit (see guide_features)
            return _apply_reference(coeff, phi, self.factor)
        a = upsample_bilinear(coeff, self.factor).unflatten(1, (3, NUM_FEATURES))  # [B, 3, K, H, W]
        out = a[:, :, 0] * phi[:, :1]
        for k in range(1, NUM_FEATURES):
            out = out.addcmul_(a[:, :, k], phi[:, k : k + 1])
        return out  # [B, 3, H, W]

    # ------------------------------------------------------------------ files

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"_class_name": "GuidedDecoder", **self.config}, indent=2))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(folder / "model.safetensors"))

    @classmethod
    def load(cls, folder: str | Path) -> GuidedDecoder:
        folder = Path(folder)
        cfg_path, weights = folder / "config.json", folder / "model.safetensors"
        if not cfg_path.is_file() or not weights.is_file():
            raise ValueError(f"{folder} is not a GuidedDecoder folder (config.json + model.safetensors)")
        cfg = json.loads(cfg_path.read_text())
        if cfg.pop("_class_name", None) != "GuidedDecoder":
            raise ValueError(f"{cfg_path} does not describe a GuidedDecoder")
        cfg.setdefault("features", "v1")  # written before the field: trained on the first basis
        model = cls(**cfg)
        missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights}: missing keys {missing}, unexpected keys {unexpected}")
        return model.eval()
