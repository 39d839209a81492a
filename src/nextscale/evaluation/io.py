"""Image sources and ``.npz`` files for evaluation.

* Folders of images (PNG preferred; JPEG is read but never written) and ADM-style ``.npz``
  batches (``arr_0``: uint8 (N, H, W, 3)) are read in batches, so 50,000 images never have to sit
  in memory at once.
* Sample batches are written in the layout ADM's evaluator reads: an uncompressed ``.npz`` with
  ``arr_0`` uint8 (N, H, W, 3) and ``labels`` int64 (N,), streamed member by member, written to a
  temporary file and moved into place with ``os.replace``.
* Statistics files: ``mu``, ``sigma`` (float64), optional ``mu_s``/``sigma_s`` (sFID) and
  ``features`` (float32 pool features, for precision/recall).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from nextscale.atomic import atomic_path
from nextscale.errors import InputError, NextScaleError

__all__ = [
    "IMAGE_EXTENSIONS",
    "list_images",
    "read_image",
    "NpzArrayReader",
    "ImageSource",
    "open_image_source",
    "write_samples_npz",
    "save_stats",
    "load_npz_stats",
    "atomic_save_npz",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


# ---------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------


def list_images(folder: str) -> List[str]:
    """Image files directly inside ``folder``, sorted by name (``000000.png`` order)."""
    if not os.path.isdir(folder):
        raise NextScaleError(f"image folder not found: {folder}; pass a folder of PNG images or an .npz batch")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith("."))
    return [os.path.join(folder, n) for n in names]


def read_image(path: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB."""
    from PIL import Image

    from nextscale.imageio import to_rgb

    with Image.open(path) as im:
        return np.asarray(to_rgb(im, str(path)), dtype=np.uint8)  # any mode and bit depth


# ---------------------------------------------------------------------------------------------
# .npz streaming
# ---------------------------------------------------------------------------------------------


class NpzArrayReader:
    """Reads one array of an ``.npz`` in row batches without loading it whole (like ADM's reader).
    Works for stored and deflated members; falls back to a full load for Fortran-ordered arrays."""

    def __init__(self, path: str, key: str = "arr_0"):
        self.path, self.key = path, key
        with zipfile.ZipFile(path) as zf:
            name = key + ".npy"
            if name not in zf.namelist():
                raise NextScaleError(
                    f"{path} has no '{key}' array (keys: {', '.join(n[:-4] for n in zf.namelist())}); "
                    f"an image batch needs '{key}' as uint8 (N, H, W, 3)"
                )
            with zf.open(name) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    shape, fortran, dtype = None, True, None
        if shape is None or fortran:
            arr = np.load(path)[key]
            shape, dtype = arr.shape, arr.dtype
        self.shape: Tuple[int, ...] = tuple(shape)
        self.dtype = np.dtype(dtype)
        self._fortran = fortran

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        if self._fortran:
            arr = np.load(self.path)[self.key]
            for i in range(0, len(arr), batch_size):
                yield np.ascontiguousarray(arr[i : i + batch_size])
            return
        row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        with zipfile.ZipFile(self.path) as zf, zf.open(self.key + ".npy") as f:
            version = np.lib.format.read_magic(f)
            (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(f)
            left = self.shape[0]
            while left > 0:
                n = min(batch_size, left)
                buf = f.read(n * row)
                if len(buf) != n * row:
                    raise NextScaleError(f"{self.path} is truncated ('{self.key}' ends early); re-create the file")
                yield np.frombuffer(buf, dtype=self.dtype).reshape((n,) + self.shape[1:])
                left -= n


def npz_keys(path: str) -> List[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as e:
        raise NextScaleError(f"{path} is not a readable .npz file ({e}); pass an .npz or a folder of images") from None


# ---------------------------------------------------------------------------------------------
# A source of images (folder or npz)
# ---------------------------------------------------------------------------------------------


@dataclass
class ImageSource:
    """Images to evaluate: a folder, an ``arr_0`` npz batch, or an in-memory uint8 NHWC array."""

    kind: str  # "folder" | "npz" | "array"
    path: Optional[str]
    count: int
    files: Optional[List[str]] = None
    array: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return self.count

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """uint8 (B, H, W, 3) batches in order."""
        if self.kind == "npz":
            yield from (_check_nhwc(b, self.path) for b in NpzArrayReader(self.path).batches(batch_size))
        elif self.kind == "array":
            for i in range(0, self.count, batch_size):
                yield _check_nhwc(self.array[i : i + batch_size], "array")
        else:
            size = None
            for i in range(0, self.count, batch_size):
                imgs = [read_image(p) for p in self.files[i : i + batch_size]]
                for p, im in zip(self.files[i : i + batch_size], imgs):
                    if size is None:
                        size = im.shape
                    elif im.shape != size:
                        raise NextScaleError(
                            f"{p} is {im.shape[1]}x{im.shape[0]} but earlier images are "
                            f"{size[1]}x{size[0]}; evaluate folders of same-sized images"
                        )
                yield np.stack(imgs)


def _check_nhwc(b: np.ndarray, where) -> np.ndarray:
    if b.ndim != 4 or b.shape[-1] != 3:
        raise NextScaleError(f"{where}: images must be (N, H, W, 3) RGB, got shape {b.shape}")
    if b.dtype != np.uint8:
        raise NextScaleError(
            f"{where}: images must be uint8 in [0, 255], got {b.dtype}; save samples with "
            f"`nextscale sample-fid` or convert with (x * 255).round().clip(0, 255).astype(np.uint8)"
        )
    return b


def open_image_source(src: Union[str, np.ndarray]) -> ImageSource:
    """A folder of images, an ``.npz`` with ``arr_0``, or a uint8 (N, H, W, 3) array."""
    if isinstance(src, np.ndarray):
        _check_nhwc(src, "array")
        return ImageSource("array", None, len(src), array=src)
    src = os.fspath(src)
    if os.path.isdir(src):
        files = list_images(src)
        if not files:
            raise NextScaleError(f"no images in {src}; expected PNG files such as 000000.png")
        return ImageSource("folder", src, len(files), files=files)
    if not os.path.exists(src):
        raise NextScaleError(f"not found: {src}; pass a folder of images or an .npz file")
    if "arr_0" not in npz_keys(src):
        raise NextScaleError(f"{src} has no images ('arr_0'); pass a folder or an ADM-style .npz batch")
    r = NpzArrayReader(src)
    if len(r.shape) != 4 or r.shape[-1] != 3:
        raise NextScaleError(f"{src}: 'arr_0' must be uint8 (N, H, W, 3), got shape {r.shape}")
    return ImageSource("npz", src, r.shape[0])


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _write_member(zf: zipfile.ZipFile, key: str, arr: np.ndarray) -> None:
    with zf.open(key + ".npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


def atomic_save_npz(path: str, **arrays: np.ndarray) -> None:
    """``np.savez`` (uncompressed) through a temporary file and ``os.replace``."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for k, v in arrays.items():
            _write_member(zf, k, np.asarray(v))


def write_samples_npz(
    path: str, batches: Iterator[np.ndarray], shape: Tuple[int, int, int, int], labels: Optional[np.ndarray] = None
) -> str:
    """Stream uint8 (B, H, W, 3) ``batches`` (``shape[0]`` images in all) into an ADM-compatible
    ``.npz``: ``arr_0`` uint8 (N, H, W, 3) and ``labels`` int64 (N,). Same bytes as
    ``np.savez(path, arr_0=..., labels=...)``, without holding all images in memory."""
    n = int(shape[0])
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("arr_0.npy", "w", force_zip64=True) as f:
            header = {
                "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                "fortran_order": False,
                "shape": tuple(int(s) for s in shape),
            }
            np.lib.format.write_array_header_1_0(f, header)
            written = 0
            for b in batches:
                b = np.ascontiguousarray(b, dtype=np.uint8)
                if b.shape[1:] != tuple(shape[1:]):
                    raise InputError(f"batch of shape {b.shape} does not fit {shape}")
                f.write(b.tobytes())
                written += b.shape[0]
            if written != n:
                raise InputError(f"wrote {written} images, expected {n}")
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if labels.shape != (n,):
                raise InputError(f"labels must be ({n},), got {labels.shape}")
            _write_member(zf, "labels", labels)
    return path


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def save_stats(
    path: str,
    mu: np.ndarray,
    sigma: np.ndarray,
    *,
    mu_s: Optional[np.ndarray] = None,
    sigma_s: Optional[np.ndarray] = None,
    features: Optional[np.ndarray] = None,
    **extra,
) -> str:
    """Save reference statistics (``mu``, ``sigma`` and optional sFID ``mu_s``/``sigma_s`` and pool
    ``features`` for precision/recall). Loadable as ``--ref`` by ``nextscale fid``."""
    arrays: Dict[str, np.ndarray] = {"mu": np.asarray(mu, np.float64), "sigma": np.asarray(sigma, np.float64)}
    if mu_s is not None and sigma_s is not None:
        arrays["mu_s"] = np.asarray(mu_s, np.float64)
        arrays["sigma_s"] = np.asarray(sigma_s, np.float64)
    if features is not None:
        arrays["features"] = np.asarray(features, np.float32)
    for k, v in extra.items():
        if v is not None:
            arrays[k] = np.asarray(v)
    if not path.endswith(".npz"):
        path = path + ".npz"
    atomic_save_npz(path, **arrays)
    return path


def load_npz_stats(path: str) -> Dict[str, np.ndarray]:
    """The statistics arrays of an ``.npz`` (any of mu, sigma, mu_s, sigma_s, features; never
    ``arr_0``, which is read in batches)."""
    keys = npz_keys(path)
    want = [k for k in ("mu", "sigma", "mu_s", "sigma_s", "features") if k in keys]
    if ("mu" in keys) != ("sigma" in keys):
        raise NextScaleError(f"{path} has only one of 'mu'/'sigma'; re-save the statistics with both")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in want}
