"""Image I/O with PIL + numpy only: atomic saves (nextscale.atomic), grids with captions, strips, loading.

Every picture a user gives (a file, an upload, a PIL image) becomes 8-bit RGB through :func:`to_rgb`, whatever its
mode or bit depth: 16-bit and 32-bit grey scaled (not clipped), float in [0, 1] or [0, 255], palettes, CMYK,
1-bit; transparent pixels composited onto white (what a viewer shows) -- or refused with one line naming why.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from nextscale.atomic import atomic_path
from nextscale.errors import NextScaleError

__all__ = [
    "save_image_atomic",
    "make_grid",
    "to_pil",
    "load_image",
    "check_writable",
    "pil_to_tensor",
    "to_rgb",
]


def to_pil(img) -> Image.Image:
    """PIL passthrough; float [0, 1] arrays/tensors (H, W, 3) or (3, H, W) -> PIL RGB."""
    if isinstance(img, Image.Image):
        return img
    if isinstance(img, torch.Tensor):
        img = img.detach().float().cpu()
        if img.ndim == 3 and img.shape[0] in (1, 3):
            img = img.permute(1, 2, 0)
        img = img.numpy()
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr)


def check_writable(path, image: bool = False, name: str = "--out") -> Path:
    """Fail early (before any work) if ``path`` cannot be written (and, with ``image``, if its
    extension is no image type nextscale writes)."""
    p = Path(path)
    if image:
        from nextscale.validate import image_format

        image_format(p, name)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise NextScaleError(f"{p}: directory {parent} does not exist")
    if not parent.is_dir():
        raise NextScaleError(f"{p}: {parent} is a file, not a directory")
    if p.exists() and p.is_dir():
        raise NextScaleError(f"{p}: is a directory; give a file name such as {p / 'out.png'}")
    if not os.access(parent, os.W_OK):
        raise NextScaleError(f"{p}: directory {parent} is not writable")
    return p


def save_image_atomic(img, path, format: Optional[str] = None) -> Path:
    """Save via a temp file in the same directory, then rename: never a half-written image."""
    from nextscale.validate import image_format

    p = Path(path)
    fmt = format or image_format(p, "output image")
    with atomic_path(p) as tmp, open(tmp, "wb") as f:
        to_pil(img).save(f, format=fmt)
    return p


def make_grid(
    images: Sequence,
    nrow: Optional[int] = None,
    captions: Optional[Sequence[str]] = None,
    pad: int = 2,
    bg=(255, 255, 255),
    min_cell: int = 0,
) -> Image.Image:
    """Tile images row-major into one picture; optional caption under each cell.

    ``min_cell`` upsamples small images (nearest) so that captions fit, e.g. 32px digits.
    """
    pils = [to_pil(x).convert("RGB") for x in images]
    if not pils:
        raise NextScaleError("no images to tile")
    w, h = pils[0].size
    if min_cell and w < min_cell:
        f = -(-min_cell // w)
        pils = [p.resize((w * f, h * f), Image.NEAREST) for p in pils]
        w, h = pils[0].size
    n = len(pils)
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol_rows = int(np.ceil(n / nrow))
    cap_h = 14 if captions else 0
    W = nrow * (w + pad) + pad
    H = ncol_rows * (h + cap_h + pad) + pad
    grid = Image.new("RGB", (W, H), bg)
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for i, im in enumerate(pils):
        r, c = divmod(i, nrow)
        x, y = pad + c * (w + pad), pad + r * (h + cap_h + pad)
        grid.paste(im, (x, y))
        if captions:
            draw.text((x + 1, y + h + 1), str(captions[i])[: max(1, w // 6)], fill=(0, 0, 0), font=font)
    return grid


#: modes whose 16 bits per pixel are grey levels 0..65535
_GREY16 = ("I;16", "I;16L", "I;16B", "I;16N")
#: modes PIL turns into RGB by itself without losing anything that matters (8 bits per channel)
_PLAIN = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


def _grey_to_8bit(im: Image.Image, name: str) -> Image.Image:
    """A 16-bit, 32-bit integer or float grey image -> L, scaled (not clipped): 16-bit and 32-bit integer images
    hold 0..65535 (65535 = white); float images 0..1 (or 0..255 when a value exceeds 1)."""
    arr = np.asarray(im)
    if im.mode == "F":
        a = arr.astype(np.float64)
        if not np.isfinite(a).all():
            raise NextScaleError(
                f"{name}: a floating-point image with NaN or infinite pixels; save it as an 8-bit image"
            )
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise NextScaleError(
                f"{name}: a floating-point image with values {lo:.4g}..{hi:.4g}; nextscale reads 0..1 (or 0..255)"
            )
        scale = 255.0 if hi <= 1.0 else 1.0
    else:
        a = arr.astype(np.int64)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise NextScaleError(
                f"{name}: a 32-bit integer image with values {lo}..{hi}; nextscale reads 0..65535 (16-bit) images"
            )
        scale = 255.0 / 65535.0
    return Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), mode="L")


def to_rgb(im: Image.Image, name: str = "image", background: Optional[tuple] = (255, 255, 255)) -> Image.Image:
    """Any PIL image -> 8-bit RGB, faithfully: 16-bit / 32-bit integer grey (``I;16``, ``I``) scaled by 255/65535,
    float grey (``F``) in 0..1 (or 0..255), 1-bit, grey, palette, CMYK, YCbCr, LAB, HSV converted; an alpha channel
    (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa`` / ``La``, a palette's transparent colour) composited onto
    ``background`` (white: what a viewer shows), or dropped when ``background`` is None (a mask: the colour
    decides). Anything else (or values outside those ranges) is refused with one line naming ``name``."""
    if not isinstance(im, Image.Image):
        raise NextScaleError(f"{name} must be a PIL image, got {type(im).__name__}")
    mode = im.mode
    if mode in _GREY16 or mode in ("I", "F"):
        return _grey_to_8bit(im, name).convert("RGB")
    if mode in ("RGBa", "La"):  # premultiplied alpha: un-premultiply first
        im, mode = im.convert("RGBA"), "RGBA"
    alpha = mode in ("RGBA", "LA", "PA") or (mode in ("P", "L", "RGB") and "transparency" in im.info)
    if alpha:
        rgba = im.convert("RGBA")
        if background is None:
            return rgba.convert("RGB")
        canvas = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode in _PLAIN:
        return im.convert("RGB")
    raise NextScaleError(
        f"{name}: image mode {mode!r} is not supported; save it as an RGB, grey, palette, CMYK or 16-bit grey image"
    )


def load_image(path, size: Optional[int] = None, name: Optional[str] = None, mask: bool = False) -> Image.Image:
    """Open an image file as 8-bit RGB (:func:`to_rgb`: any mode and bit depth; turned upright by its EXIF
    orientation, as viewers show it); clear one-line errors for missing / unreadable files; optional center-crop
    resize. ``mask``: alpha is dropped instead of composited (the colour decides)."""
    from PIL import ImageOps

    from nextscale.paths import path_problem

    p = Path(path)
    shown = name or str(p)
    problem = path_problem(p, "file")  # the true reason: missing, a folder, a FIFO or device (never opened)
    if problem is not None:
        raise NextScaleError(f"{p}: {problem}")
    try:
        with Image.open(p) as im:
            im.load()
            im = ImageOps.exif_transpose(im) or im
            img = to_rgb(im, shown, background=None if mask else (255, 255, 255))
    except NextScaleError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise NextScaleError(f"{p}: not a readable image ({type(e).__name__})") from None
    if size is not None and img.size != (size, size):
        w, h = img.size
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize(
            (size, size), Image.LANCZOS
        )
    return img


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image (any mode: :func:`to_rgb`) -> float (3, H, W) in [-1, 1] (the models' range)."""
    arr = np.asarray(to_rgb(img), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).mul(2).sub(1)


def save_image_set(
    out, images: Sequence, singles: Optional[Sequence[str]] = None, extras: Sequence = (), **grid
) -> List[Path]:
    """Write ``images`` to ``out`` (the image itself when there is one and no ``captions`` in ``grid``,
    else a :func:`make_grid` of them with the ``grid`` options), then beside it: one file
    ``OUT_STEM<suffix><OUT_EXT>`` per image for the suffixes in ``singles``, and each
    ``(suffix_with_extension, image)`` of ``extras`` as ``OUT_STEM<suffix_with_extension>``.
    Every file is written atomically. Returns the paths written, ``out`` first."""
    out = Path(out)
    stem = out.with_suffix("")
    whole = images[0] if len(images) == 1 and not grid.get("captions") else make_grid(images, **grid)
    written = [save_image_atomic(whole, out)]
    for suffix, im in zip(singles or (), images):
        written.append(save_image_atomic(im, Path(f"{stem}{suffix}{out.suffix}")))
    for suffix, im in extras:
        written.append(save_image_atomic(im, Path(f"{stem}{suffix}")))
    return written
