"""Input rules shared by the Python API, the CLI and the demo: one check, one message per bad value.

Each function returns the normalised value or raises :class:`~nextscale.errors.FieldError` naming the
argument (``name``, a field name such as ``seed``) and the fix; a front end renders the name as its
flag or widget. The number rules are :mod:`nextscale.settings`' (``check_float`` is its ``check_number``).
"""

from __future__ import annotations

import numbers
import os
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from nextscale.errors import FieldError
from nextscale.settings import check_number, fail

__all__ = [
    "as_int",
    "check_seed",
    "check_class_ids",
    "check_count",
    "check_device",
    "image_format",
    "check_float",
    "check_mid_reso",
    "IMAGE_FORMATS",
    "SEED_MAX",
    "MAX_IMAGES",
    "MAX_FID_IMAGES",
]

#: Seeds are non-negative and fit a signed 64-bit integer (torch's ``manual_seed`` wraps negative
#: seeds to 2**64 - |s|, so -1 would silently equal 18446744073709551615).
SEED_MAX = 2**63

#: The most images one ``sample`` call makes (a typo such as num=1000000000 would start a
#: months-long run); FID sampling has its own, larger bound.
MAX_IMAGES = 100_000

#: The most images one ``sample-fid`` run makes (50,000 for the ImageNet protocol; 20x that is still
#: an FID run, 1,000,000,000 is a typo that would allocate the whole .npz up front).
MAX_FID_IMAGES = 1_000_000

#: Output extensions and the PIL format each is written in.
IMAGE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}


def as_int(value, name: str) -> int:
    """``value`` as a Python int: ints, numpy integers and 0-d integer tensors; never bool, float or str."""
    if isinstance(value, torch.Tensor):
        if value.ndim != 0 or value.is_floating_point() or value.dtype == torch.bool:
            raise fail(name, f" must be an integer, got a {value.dtype} tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise fail(name, f" must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


#: A finite real number in a range, raising ``FieldError`` naming the argument (the settings engine's rule).
check_float = check_number


def check_mid_reso(value, name: str = "mid_reso") -> float:
    """The resize factor before the crop: the shorter side becomes ``value`` x the resolution, so it
    is at least 1 (the crop must fit) and at most 4 (the reference uses 1.125)."""
    return check_float(value, name, lo=1.0, hi=4.0)


def check_seed(seed, name: str = "seed") -> int:
    s = as_int(seed, name)
    if not 0 <= s < SEED_MAX:
        raise fail(name, f" must be in [0, 2**63), got {s}")
    return s


def check_class_ids(
    labels: Union[int, str, Sequence, torch.Tensor, np.ndarray],
    num_classes: int,
    name: str = "class_labels",
    allow_null_index: bool = False,
    class_names: Optional[Sequence[str]] = None,
) -> Union[int, List[int]]:
    """An int or a list of ints in [-1, num_classes) (-1 = unconditional); ``allow_null_index``
    also accepts num_classes itself (the null class's embedding index, as the sampler returns it).
    A string is a class name of ``class_names`` (the model's labels; see ``nextscale.classes``)."""

    def one(c):
        if isinstance(c, str):
            from nextscale.classes import resolve_class_name

            return resolve_class_name(c, class_names, name)
        return as_int(c, name)

    if isinstance(labels, (torch.Tensor, np.ndarray)) and labels.ndim > 0:
        labels = list(labels)
    if isinstance(labels, (list, tuple)):
        out = [one(c) for c in labels]
        if not out:
            raise fail(name, " is empty; give at least one class id")
    else:
        out = one(labels)
    for c in out if isinstance(out, list) else [out]:
        if not -1 <= c < num_classes + int(allow_null_index):
            raise FieldError(
                f"class {c} is out of range: this model has classes 0..{num_classes - 1} (-1 = unconditional)"
            )
    return out


def check_count(n, name: str, lo: int = 1, hi: Optional[int] = None) -> int:
    v = as_int(n, name)
    if v < lo:
        raise fail(name, f" must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise fail(name, f" must be <= {hi:,}, got {v:,}; split the work into several calls")
    return v


def check_device(device, name: str = "device") -> torch.device:
    """A device that exists on this machine: cpu, cuda / cuda:N (N < the GPU count), mps."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise fail(name, f" {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise fail(name, f" {device!r}: no CUDA device is available here; use cpu")
        if dev.index is not None and dev.index >= n:
            raise fail(name, f" {device!r}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
        return dev
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise fail(name, f" {device!r}: MPS is not available here; use cpu")
        return dev
    raise fail(name, f" {device!r}: nextscale runs on cpu, cuda or mps")


def image_format(path, name: str = "out") -> str:
    """The PIL format for an output image path, from its extension."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in IMAGE_FORMATS:
        got = f"{ext!r} is not an image type nextscale writes" if ext else "has no file extension"
        raise fail(name, f" {os.fspath(path)!r}: {got}; use one of {', '.join(sorted(IMAGE_FORMATS))}")
    return IMAGE_FORMATS[ext]
