"""Reconstruction metrics for tokenizers: PSNR, SSIM and rFID (FID between originals and their
reconstructions, through the same feature code as ``nextscale fid``).

Images are float tensors in [0, 1], shaped (N, C, H, W) or (C, H, W).
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from nextscale.errors import InputError
from nextscale.evaluation.evaluate import module_device, normalize_output
from nextscale.evaluation.metrics import feature_statistics, frechet_distance

__all__ = ["psnr", "ssim", "to_uint8", "ReconstructionMetrics"]


def _pair(a: torch.Tensor, b: torch.Tensor):
    a = torch.as_tensor(a)
    b = torch.as_tensor(b)
    if a.shape != b.shape:
        raise InputError(f"images have different shapes: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() == 3:
        a, b = a[None], b[None]
    if a.dim() != 4:
        raise InputError(f"images must be (N, C, H, W) or (C, H, W), got shape {tuple(a.shape)}")
    return a.double(), b.double()


def psnr(img_a: torch.Tensor, img_b: torch.Tensor, data_range: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, ``10 log10(range^2 / MSE)`` per image (over all channels
    and pixels), averaged over the batch (``reduction="none"`` keeps one value per image).
    Identical images give ``inf``."""
    a, b = _pair(img_a, img_b)
    mse = (a - b).pow(2).flatten(1).mean(1)
    val = 10.0 * torch.log10(data_range**2 / mse)
    return val.mean() if reduction == "mean" else val


def _gaussian_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    img_a: torch.Tensor,
    img_b: torch.Tensor,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    reduction: str = "mean",
) -> torch.Tensor:
    """Structural similarity (Wang et al., 2004): Gaussian window 11, sigma 1.5, C1 = (0.01 L)^2,
    C2 = (0.03 L)^2, computed per channel over the valid window positions and averaged over
    channels and pixels (then over the batch unless ``reduction="none"``)."""
    a, b = _pair(img_a, img_b)
    n, c, h, w = a.shape
    if h < win_size or w < win_size:
        raise InputError(f"SSIM with an {win_size}x{win_size} window needs images at least that large, got {h}x{w}")
    g = _gaussian_window(win_size, sigma, a.dtype, a.device)
    gh = g.view(1, 1, 1, win_size).repeat(c, 1, 1, 1)
    gv = g.view(1, 1, win_size, 1).repeat(c, 1, 1, 1)

    def blur(x):
        return F.conv2d(F.conv2d(x, gh, groups=c), gv, groups=c)

    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    s_aa = blur(a * a) - mu_a**2
    s_bb = blur(b * b) - mu_b**2
    s_ab = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * s_ab + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2)
    val = (num / den).flatten(2).mean(2).mean(1)
    return val.mean() if reduction == "mean" else val


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8 0..255 (what saving a PNG does)."""
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


class ReconstructionMetrics:
    """Accumulates PSNR, SSIM and (with a feature extractor) rFID over batches::

        m = ReconstructionMetrics(load_fid_inception(weights))
        for x in loader:
            m.update(x, tokenizer.reconstruct(x))       # [0, 1] images
        m.compute()   # {"rfid": ..., "psnr": ..., "ssim": ..., "num_images": ...}

    rFID is the Fréchet distance between the features of the originals and of the
    reconstructions (both quantised to uint8 like saved PNGs), as for FID.
    """

    def __init__(self, extractor: Optional[torch.nn.Module] = None, device=None):
        self.extractor = extractor
        self.device = module_device(extractor, device) if extractor is not None else None
        self._psnr: List[torch.Tensor] = []
        self._ssim: List[torch.Tensor] = []
        self._fa: List[np.ndarray] = []
        self._fb: List[np.ndarray] = []

    @torch.no_grad()
    def update(self, originals: torch.Tensor, reconstructions: torch.Tensor) -> None:
        a, b = originals.detach().float().clamp(0, 1), reconstructions.detach().float().clamp(0, 1)
        if a.dim() == 3:
            a, b = a[None], b[None]
        self._psnr.append(psnr(a, b, reduction="none").cpu())
        if min(a.shape[-2:]) >= 11:
            self._ssim.append(ssim(a, b, reduction="none").cpu())
        if self.extractor is not None:
            for x, store in ((a, self._fa), (b, self._fb)):
                out = normalize_output(self.extractor(to_uint8(x).to(self.device)))
                store.append(out["pool"].float().cpu().numpy())

    def compute(self) -> Dict[str, Optional[float]]:
        if not self._psnr:
            raise InputError("no images were added; call update() first")
        p = torch.cat(self._psnr)
        res: Dict[str, Optional[float]] = {
            "psnr": float(p[torch.isfinite(p)].mean()) if torch.isfinite(p).any() else float("inf"),
            "ssim": float(torch.cat(self._ssim).mean()) if self._ssim else None,
            "rfid": None,
            "num_images": int(p.numel()),
        }
        if self._fa and p.numel() >= 2:
            fa, fb = np.concatenate(self._fa), np.concatenate(self._fb)
            res["rfid"] = frechet_distance(*feature_statistics(fa), *feature_statistics(fb))
        return res
