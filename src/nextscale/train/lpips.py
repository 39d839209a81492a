"""LPIPS perceptual distance (Zhang et al., 2018, "vgg" variant, lpips v0.1) from LOCAL weights only.

    d(x, y) = sum_l  mean_hw  w_l . (n(f_l(x)) - n(f_l(y)))^2

with f_l the VGG16 activations relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of inputs in [-1, 1]
shifted/scaled by the LPIPS constants, n() unit-normalisation over channels and w_l the learned
non-negative 1x1 "lin" weights. Nothing is downloaded: ``--lpips-weights`` names either one file or
a folder of files (``.pth`` / ``.pt`` / ``.safetensors``) that together hold the torchvision VGG16
keys ``features.N.weight/bias`` and the LPIPS keys ``linK.model.1.weight`` (K = 0..4), e.g.
torchvision's ``vgg16-397923af.pth`` next to lpips' ``weights/v0.1/vgg.pth``.
"""

from __future__ import annotations

import glob
import os
from typing import Dict

import torch
import torch.nn as nn

from nextscale.errors import FieldError, FieldName

__all__ = ["LPIPS"]

_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
_SLICES = (4, 9, 16, 23, 30)  # features[:4] -> relu1_2, [4:9] -> relu2_2, ... [23:30] -> relu5_3
_CHNS = (64, 128, 256, 512, 512)


def _vgg16_features() -> nn.Sequential:
    layers, c = [], 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
            c = v
    return nn.Sequential(*layers)


class _Lin(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(ch, 1, 1, bias=False))  # index 1 = lpips' key layout


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG; ``forward(x, y)`` of images in [-1, 1] -> (B, 1, 1, 1) distances."""

    def __init__(self):
        super().__init__()
        self.features = _vgg16_features()
        for k, ch in enumerate(_CHNS):
            setattr(self, f"lin{k}", _Lin(ch))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    @classmethod
    def from_weights(cls, path: str) -> "LPIPS":
        sd = _read_weights(path)
        m = cls()
        want = {k for k in m.state_dict() if k not in ("shift", "scale")}
        missing = sorted(want - set(sd))
        if missing:
            raise FieldError(
                FieldName("lpips_weights"),
                f" {path!r} lacks {len(missing)} tensors (e.g. {missing[0]}); give torchvision's "
                "vgg16 features.* and lpips' lin0..lin4.model.1.weight (one file or a folder)",
            )
        try:
            m.load_state_dict({k: sd[k] for k in want}, strict=False)
        except RuntimeError as e:
            raise FieldError(
                FieldName("lpips_weights"),
                f" {path!r}: shapes do not fit LPIPS-VGG16 ({str(e).splitlines()[0][:160]})",
            ) from None
        return m.eval().requires_grad_(False)

    def train(self, mode: bool = True):  # always frozen
        return super().train(False)

    def _feats(self, x):
        h, out, start = (x - self.shift) / self.scale, [], 0
        for end in _SLICES:
            h = self.features[start:end](h)
            out.append(h)
            start = end
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self._feats(x.float()), self._feats(y.float())
        total = 0
        for k, (a, b) in enumerate(zip(fx, fy)):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{k}").model((a - b).pow(2)).mean((2, 3), keepdim=True)
        return total


def _read_weights(path: str) -> Dict[str, torch.Tensor]:
    files = (
        [path]
        if os.path.isfile(path)
        else sorted(f for ext in ("pth", "pt", "safetensors") for f in glob.glob(os.path.join(path, f"*.{ext}")))
    )
    if not files:
        raise FieldError(FieldName("lpips_weights"), f" {path!r}: no .pth/.pt/.safetensors files found")
    sd: Dict[str, torch.Tensor] = {}
    for f in files:
        from nextscale.safeload import load_weights

        part = load_weights(f, "LPIPS / VGG16 weights file (lpips_weights)")
        if isinstance(part, dict) and "state_dict" in part and isinstance(part["state_dict"], dict):
            part = part["state_dict"]
        if not isinstance(part, dict):
            raise FieldError(FieldName("lpips_weights"), f": {f} is not a state dict")
        for k, v in part.items():
            if torch.is_tensor(v):
                sd[k] = v
    return sd
