"""Image I/O with PIL + numpy only: atomic saves, grids with captions, per-scale strips, loading."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from nextscale.errors import NextScaleError

__all__ = [
    "atomic_path",
    "apply_umask",
    "save_image_atomic",
    "make_grid",
    "to_pil",
    "load_image",
    "check_writable",
    "pil_to_tensor",
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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path) -> None:
    """Give ``path`` (a file, or a directory tree) the mode a plain ``open``/``mkdir`` would have:
    0666 / 0777 minus the umask. Temp files and dirs (``mkstemp``, ``mkdtemp``, safetensors) are
    created 0600 / 0700, which a rename would otherwise keep."""
    mask = _umask()
    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, files in os.walk(path):
            os.chmod(root, 0o777 & ~mask)
            for f in files:
                fp = os.path.join(root, f)
                if not os.path.islink(fp):
                    os.chmod(fp, 0o666 & ~mask)
    elif os.path.isfile(path):
        os.chmod(path, 0o666 & ~mask)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(d: str, base: str) -> None:
    """Remove ``.BASE.PID.XXXX.tmp`` files of writers that died (kill -9) before their rename."""
    prefix = f".{base}."
    try:
        names = os.listdir(d)
    except OSError:
        return
    for n in names:
        if not (n.startswith(prefix) and n.endswith(".tmp")):
            continue
        pid = n[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                os.remove(os.path.join(d, n))
            except OSError:
                pass


@contextlib.contextmanager
def atomic_path(path) -> Iterator[str]:
    """Yield a fresh temp file ``.NAME.XXXX.tmp`` (empty) in ``path``'s directory to write; it is
    given the umask's mode and moved onto ``path`` with ``os.replace`` when the block succeeds and
    removed when it raises, so readers never see a half-written file."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path)) or "."
    _remove_stale_temps(d, os.path.basename(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=".tmp", dir=d)
    except OSError as e:  # name the file the user asked for, not our hidden temp file
        raise NextScaleError(f"{path}: cannot write here ({e.strerror or type(e).__name__})") from None
    os.close(fd)
    try:
        yield tmp
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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


def load_image(path, size: Optional[int] = None) -> Image.Image:
    """Open an image as RGB (clear error for missing/unreadable files); optional center-crop resize."""
    p = Path(path)
    if not p.exists():
        raise NextScaleError(f"{p}: no such file")
    try:
        with Image.open(p) as im:
            im.load()
            img = im.convert("RGB")
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
    """PIL RGB -> float (3, H, W) in [-1, 1] (the models' range)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
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
