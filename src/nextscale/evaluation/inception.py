"""The FID Inception v3 network (``pt_inception-2015-12-05``) as a plain torch module.

This is the network behind the published FID / IS / precision-recall numbers: TensorFlow's
``inception-2015-12-05`` graph, converted to PyTorch by pytorch-fid / torch-fidelity. Its
state-dict layout (566 keys, including BatchNorm running statistics) matches torch-fidelity's
``FeatureExtractorInceptionV3``, so the released weight files load with ``strict=True``.

Differences from torchvision's ``inception_v3`` (which is *not* the FID network):

* the "FID" variants of the Inception blocks: average pools exclude padding
  (``count_include_pad=False``) and the last block (``Mixed_7c``) max-pools its pool branch;
* 1008 output classes;
* inputs are uint8 RGB images, resized to 299x299 with TensorFlow 1.x's bilinear rule
  (:func:`resize_bilinear_tf1`) and scaled by ``(x - 128) / 128``.

No weights are ever downloaded: give the file with ``weights=`` / ``--inception-weights`` or the
``NEXTSCALE_INCEPTION_WEIGHTS`` environment variable.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale.errors import NextScaleError

__all__ = [
    "FIDInceptionV3",
    "resize_bilinear_tf1",
    "load_fid_inception",
    "resolve_inception_weights",
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_FILE",
]

INCEPTION_WEIGHTS_ENV = "NEXTSCALE_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_ALT_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's name, same weights
INCEPTION_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_WEIGHTS_FILE
)
INPUT_SIZE = 299


# ---------------------------------------------------------------------------------------------
# Resize (TensorFlow 1.x ``tf.image.resize_bilinear(align_corners=False)``)
# ---------------------------------------------------------------------------------------------


def _tf1_axis(in_size: int, out_size: int, align_corners: bool, device, dtype):
    """Source coordinates for one axis: TF1 maps output pixel ``i`` to ``i * scale`` (no half-pixel
    offset), ``scale = in/out`` (or ``(in-1)/(out-1)`` with align_corners). Returns the lower
    index, the upper index (clamped to the border) and the fractional weight of the upper one."""
    if align_corners and out_size > 1:
        scale = (in_size - 1) / (out_size - 1)
    else:
        scale = in_size / out_size
    # float32 arithmetic like TF's kernel (index * scale computed in float)
    src = torch.arange(out_size, device=device, dtype=torch.float32) * torch.tensor(scale, dtype=torch.float32)
    lo = src.floor().long().clamp_(0, in_size - 1)
    hi = (lo + 1).clamp_(max=in_size - 1)
    frac = (src - lo.to(torch.float32)).to(dtype)
    return lo, hi, frac


def resize_bilinear_tf1(
    x: torch.Tensor, size: Union[int, Tuple[int, int]], align_corners: bool = False
) -> torch.Tensor:
    """Bilinear resize of a float (N, C, H, W) batch exactly as TensorFlow 1.x does it.

    TF1's ``resize_bilinear`` (the op inside the FID Inception graph) samples output pixel ``i`` at
    source coordinate ``i * in/out`` -- without the half-pixel offset that
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` applies -- and clamps
    the right/bottom neighbour to the border. This is the rule torch-fidelity uses; it is what makes
    features match the TensorFlow reference statistics.
    """
    if x.dim() != 4:
        raise ValueError(f"resize_bilinear_tf1 expects a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(
            "resize_bilinear_tf1 expects a floating-point tensor; convert uint8 images with .float() first"
        )
    oh, ow = (size, size) if isinstance(size, int) else tuple(size)
    ih, iw = x.shape[-2:]
    if (ih, iw) == (oh, ow):
        return x
    y0, y1, fy = _tf1_axis(ih, oh, align_corners, x.device, x.dtype)
    x0, x1, fx = _tf1_axis(iw, ow, align_corners, x.device, x.dtype)
    top = x.index_select(2, y0)
    bot = x.index_select(2, y1)
    fx = fx.view(1, 1, 1, ow)
    top = top.index_select(3, x0) + (top.index_select(3, x1) - top.index_select(3, x0)) * fx
    bot = bot.index_select(3, x0) + (bot.index_select(3, x1) - bot.index_select(3, x0)) * fx
    return top + (bot - top) * fy.view(1, 1, oh, 1)


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU."""

    def __init__(self, cin: int, cout: int, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):  # TF's average pool ignores the zero padding
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg3(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class FIDInceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for m in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            bd = m(bd)
        bp = self.branch_pool(_avg3(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class _FIDInceptionE(nn.Module):
    use_max_pool = False

    def __init__(self, cin: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.use_max_pool:  # the TF graph's last block max-pools here
            bp = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            bp = _avg3(x)
        bp = self.branch_pool(bp)
        return torch.cat([b1, b3, bd, bp], 1)


class FIDInceptionE_1(_FIDInceptionE):
    use_max_pool = False


class FIDInceptionE_2(_FIDInceptionE):
    use_max_pool = True


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------


class FIDInceptionV3(nn.Module):
    """FID Inception v3. ``forward(images)`` returns a dict of float32 features:

    * ``"pool"``: (N, 2048) global-average-pooled features (FID, precision/recall; TF ``pool_3``);
    * ``"logits_unbiased"``: (N, 1008) ``pool @ fc.weight.T`` without the bias (Inception Score,
      as torch-fidelity and ADM's evaluator compute it);
    * ``"spatial"`` (only with ``spatial=True``): (N, 2023) sFID features -- the first 7 channels of
      ``Mixed_6d``'s 1x1 branch (TF ``mixed_6/conv``), 17x17, flattened in TF's (H, W, C) order as
      ADM's evaluator does.

    Inputs: uint8 (N, 3, H, W) RGB images in [0, 255] (any size; resized to 299 with the TF1
    rule), or float images already in [0, 255].
    """

    def __init__(self, spatial: bool = True):
        super().__init__()
        self.spatial = spatial
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, c7=128)
        self.Mixed_6c = FIDInceptionC(768, c7=160)
        self.Mixed_6d = FIDInceptionC(768, c7=160)
        self.Mixed_6e = FIDInceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE_1(1280)
        self.Mixed_7c = FIDInceptionE_2(2048)
        self.fc = nn.Linear(2048, 1008)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """uint8/float [0, 255] (N, 3, H, W) -> float (N, 3, 299, 299) in [-1, 1)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"FIDInceptionV3 expects (N, 3, H, W) RGB images, got shape {tuple(x.shape)}")
        x = x.to(self.fc.weight.dtype)
        x = resize_bilinear_tf1(x, INPUT_SIZE, align_corners=False)
        return (x - 128) / 128

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.preprocess(x)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6a(x)
        x = self.Mixed_6c(self.Mixed_6b(x))
        out: Dict[str, torch.Tensor] = {}
        if self.spatial:
            # ADM: spatial = mixed_6/conv[..., :7] (NHWC), flattened per image -> 17*17*7 = 2023.
            # mixed_6 is Mixed_6d; "conv" is its 1x1 branch, whose channels come first in the concat.
            s = self.Mixed_6d.branch1x1(x)[:, :7]
            out["spatial"] = s.permute(0, 2, 3, 1).reshape(s.shape[0], -1).float()
        x = self.Mixed_6e(self.Mixed_6d(x))
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        pool = x.mean(dim=(2, 3))
        out["pool"] = pool.float()
        out["logits_unbiased"] = (pool @ self.fc.weight.T).float()
        return out


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


def _missing_weights_message(detail: str) -> str:
    return (
        f"{detail}; download {INCEPTION_WEIGHTS_FILE} (the FID Inception weights, pytorch-fid's GitHub release "
        f"'fid_weights': {INCEPTION_WEIGHTS_URL}; torch-fidelity's {INCEPTION_WEIGHTS_ALT_FILE} is the same file) "
        f"and pass it as inception_weights PATH or set {INCEPTION_WEIGHTS_ENV}=PATH"
    )


def resolve_inception_weights(path: Optional[str] = None) -> str:
    """The weight file to use: ``path``, else ``$NEXTSCALE_INCEPTION_WEIGHTS``. Raises a
    :class:`NextScaleError` that says which file to download when neither gives an existing file."""
    src = "inception_weights"
    if not path:
        path = os.environ.get(INCEPTION_WEIGHTS_ENV) or None
        src = INCEPTION_WEIGHTS_ENV
    if not path:
        raise NextScaleError(_missing_weights_message("no FID Inception weights given"))
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        for name in (INCEPTION_WEIGHTS_FILE, INCEPTION_WEIGHTS_ALT_FILE):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise NextScaleError(
            _missing_weights_message(f"{src} is a folder without {INCEPTION_WEIGHTS_FILE} in it: {path}")
        )
    if not os.path.isfile(path):
        raise NextScaleError(_missing_weights_message(f"FID Inception weights not found at {path} (from {src})"))
    return path


def load_fid_inception(
    weights: Optional[str] = None, device: Union[str, torch.device] = "cpu", spatial: bool = True
) -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` and load ``pt_inception-2015-12-05`` weights (strict)."""
    path = resolve_inception_weights(weights)
    from nextscale.safeload import load_weights

    sd = load_weights(path, f"FID Inception weights file ({INCEPTION_WEIGHTS_FILE})")
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    model = FIDInceptionV3(spatial=spatial)
    # pytorch-fid's file predates num_batches_tracked; those counters are unused in eval.
    ref = model.state_dict()
    sd = dict(sd)
    for k in ref:
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros((), dtype=torch.long)
    missing = sorted(set(ref) - set(sd))
    unexpected = sorted(set(sd) - set(ref))
    bad = [k for k in ref if k in sd and tuple(sd[k].shape) != tuple(ref[k].shape)]
    if missing or unexpected or bad:
        first = (missing or unexpected or bad)[0]
        raise NextScaleError(
            f"{path} is not the FID Inception v3 state dict ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(bad)} mis-shaped keys, e.g. {first}); "
            f"use {INCEPTION_WEIGHTS_FILE}"
        )
    model.load_state_dict(sd, strict=True)
    return model.to(device).eval()
