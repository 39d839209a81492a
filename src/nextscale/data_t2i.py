"""Text-to-image training data: captioned images, aspect-ratio buckets, text dropout, text-feature and bit caches.

Sources (:func:`scan_captioned`)::

    DIR/**/NAME.png + DIR/**/NAME.txt      a folder: every image with a same-name UTF-8 caption file
    FILE.jsonl                             one {"image": path, "caption": text} per line (paths relative to FILE)

Buckets: every image goes to the aspect-ratio template nearest to its h/w (:class:`BucketTable`; the templates
and schedules of :mod:`nextscale.schedules`) and is resized to cover the bucket's pixel size, then cropped (centre;
a seeded random crop in training if asked). No horizontal flips: captions say "left of" / "right of".
:class:`BucketBatchSampler` only ever batches images of one bucket (one scale schedule per batch).

Bad samples (``BAD_KINDS``: empty caption, caption not UTF-8, missing image, missing caption, not an image, ratio
outside the tables, malformed line, two images for one caption) are found by the scan before anything is written;
each is reported with its file name. ``on_bad="skip"`` drops them (counted, a warning names them);
``on_bad="error"`` refuses the data set with one line naming them.

Randomness comes only from per-sample seeds (``(index, sample_seed)`` keys from the sampler, as in
:mod:`nextscale.data`): text dropout (caption -> "" with probability ``text_dropout``) and random crops.

Caches (written atomically: each shard via a temp file + rename, ``meta.json`` last; reused when the fingerprint
matches; shards of a killed build are reused by the next build; read through :mod:`nextscale.safeload`)::

    TEXT/meta.json, TEXT/index.safetensors (caption_id per sample, features of ""),
    TEXT/shard_00000.safetensors (kv (N, Ct5), lens)          features of every distinct caption, encoded once
    BITS/meta.json, BITS/index.safetensors (bucket_id, row per sample),
    BITS/<bucket key>/shard_00000.safetensors (bits: packed uint8 (n, ceil(L d / 8)))   BSQ bits of every image
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from nextscale.data import IMG_EXTENSIONS, sample_seed
from nextscale.errors import InputError
from nextscale.imageio import atomic_path
from nextscale.safeload import load_safetensors, save_safetensors
from nextscale.schedules import (
    TEMPLATES,
    image_size,
    parse_aspect_ratio,
    scale_schedule,
    template_key,
    tokenizer_schedule,
)

__all__ = [
    "BAD_KINDS",
    "Bucket",
    "bucket_for",
    "BucketTable",
    "CaptionedSample",
    "BadSample",
    "CaptionedData",
    "scan_captioned",
    "fit_to_bucket",
    "text_dropped",
    "CaptionedImages",
    "BucketBatchSampler",
    "encoder_fingerprint",
    "build_text_cache",
    "TextFeatureCache",
    "tokenizer_fingerprint_bsq",
    "build_bits_cache",
    "BitsCache",
    "CachedT2I",
    "collate_t2i",
]

BAD_KINDS = (
    "empty caption",
    "caption not UTF-8",
    "missing image",
    "missing caption",
    "not an image",
    "ratio outside the tables",
    "malformed line",
    "two images for one caption",
)
TEXT_CACHE_FORMAT, BITS_CACHE_FORMAT, CACHE_VERSION = "nextscale-text-cache", "nextscale-bits-cache", 1


# ------------------------------------------------------------------------------------------------ buckets
@dataclass(frozen=True)
class Bucket:
    """One aspect-ratio bucket: the template (h/w), the transformer's and the tokenizer's schedules and the
    image size (H, W) in pixels."""

    h_div_w: float
    schedule: Tuple[Tuple[int, int], ...]
    tokenizer_schedule: Tuple[Tuple[int, int], ...]
    image_hw: Tuple[int, int]

    @property
    def key(self) -> str:
        return template_key(self.h_div_w)


def bucket_for(h_div_w, pn="0.06M", n_scales: Optional[int] = None, patch_size: int = 16, patchify: bool = False):
    """The bucket of an aspect ratio (snapped to its template): ``pn`` / ``n_scales`` pick the schedule
    (:func:`~nextscale.schedules.scale_schedule`), ``patch_size`` is the tokenizer's pixels per token and
    ``patchify`` doubles the tokenizer grid (2x2 patchified transformer tokens)."""
    tpl = parse_aspect_ratio(h_div_w, "h_div_w").h_div_w
    sched = scale_schedule(tpl, pn, n_scales)
    tok = tokenizer_schedule(sched, patchify)
    return Bucket(tpl, tuple(sched), tuple(tok), image_size(tok, patch_size))


class BucketTable:
    """The buckets a data set may use: ``templates`` (None: all 15 of the schedules' table, else a subset given
    as aspect ratios) at one schedule setting. An image of h/w ``r`` goes to the nearest template ``t``
    (absolute difference, first in table order on a tie: the schedules' rule) unless ``max(r/t, t/r)`` exceeds
    ``ratio_tolerance``: then its ratio is outside the tables (cropping would cut too much of it)."""

    def __init__(self, pn="0.06M", n_scales=None, patch_size=16, patchify=False, templates=None, ratio_tolerance=1.25):
        if not isinstance(ratio_tolerance, (int, float)) or not ratio_tolerance >= 1:
            raise InputError(f"ratio_tolerance must be a number >= 1, got {ratio_tolerance!r}")
        tpls = TEMPLATES if templates is None else [parse_aspect_ratio(t, "templates").h_div_w for t in templates]
        tpls = [t for t in TEMPLATES if t in set(tpls)]  # table order, no duplicates
        if not tpls:
            raise InputError("templates must name at least one aspect ratio")
        self.pn, self.n_scales, self.patch_size, self.patchify = str(pn), n_scales, int(patch_size), bool(patchify)
        self.ratio_tolerance = float(ratio_tolerance)
        self.buckets: Dict[str, Bucket] = {}
        for t in tpls:
            b = bucket_for(t, pn, n_scales, patch_size, patchify)
            self.buckets[b.key] = b

    def to_dict(self) -> dict:
        return {
            "pn": self.pn,
            "n_scales": self.n_scales,
            "patch_size": self.patch_size,
            "patchify": self.patchify,
            "ratio_tolerance": self.ratio_tolerance,
            "buckets": {k: {"schedule": b.schedule, "image_hw": b.image_hw} for k, b in self.buckets.items()},
        }

    def nearest(self, h: int, w: int) -> Optional[Bucket]:
        """The bucket of an image of h x w pixels, or None when its ratio is outside the tables."""
        r = h / w
        b = min(self.buckets.values(), key=lambda b: abs(r - b.h_div_w))
        return b if max(r / b.h_div_w, b.h_div_w / r) <= self.ratio_tolerance + 1e-12 else None

    def __getitem__(self, key: str) -> Bucket:
        return self.buckets[key]


# ------------------------------------------------------------------------------------------------ scanning
@dataclass(frozen=True)
class CaptionedSample:
    image: str  # path of the image file
    caption: str
    name: str  # the image's path relative to the source (for messages)
    hw: Tuple[int, int]  # the image's (H, W) in pixels
    bucket: str  # bucket key


@dataclass(frozen=True)
class BadSample:
    name: str  # the file to blame (caption file, image, or "data.jsonl:LINE")
    kind: str  # one of BAD_KINDS
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.name}: {self.kind}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class CaptionedData:
    """A scanned source: the good samples (in a fixed order), the bad ones, and the bucket table."""

    source: str
    samples: List[CaptionedSample]
    bad: List[BadSample]
    table: BucketTable
    _buckets_cache: Optional[List[str]] = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def buckets(self) -> List[str]:
        """Bucket key of every sample."""
        if self._buckets_cache is None:
            self._buckets_cache = [s.bucket for s in self.samples]
        return self._buckets_cache

    @property
    def captions(self) -> List[str]:
        return [s.caption for s in self.samples]

    def bad_counts(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for b in self.bad:
            out[b.kind] = out.get(b.kind, 0) + 1
        return out


def _read_caption(path: Path, name: str):
    """(caption, None) or (None, BadSample)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")  # strict; a UTF-8 byte-order mark is allowed
    except UnicodeDecodeError as e:
        return None, BadSample(name, "caption not UTF-8", f"byte {e.start}")
    except OSError as e:
        return None, BadSample(name, "missing caption", e.strerror or type(e).__name__)
    text = " ".join(text.split())
    return (text, None) if text else (None, BadSample(name, "empty caption"))


def _image_hw(path: Path, name: str):
    """((H, W), None) or (None, BadSample): opens the header and verifies the file's structure."""
    if not path.is_file():
        return None, BadSample(name, "missing image")
    try:
        with Image.open(path) as im:
            w, h = im.size
            im.verify()
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a file that is not an image
        return None, BadSample(name, "not an image", type(e).__name__)
    if h < 1 or w < 1:
        return None, BadSample(name, "not an image", f"size {w}x{h}")
    return (h, w), None


def _scan_folder(root: Path):
    images: Dict[str, List[Path]] = {}
    texts: Dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            p = Path(dirpath) / f
            stem = str(p.relative_to(root).with_suffix(""))
            if f.lower().endswith(IMG_EXTENSIONS):
                images.setdefault(stem, []).append(p)
            elif f.lower().endswith(".txt"):
                texts[stem] = p
    entries, bad = [], []
    for stem in sorted(set(images) | set(texts)):
        ims, txt = images.get(stem, []), texts.get(stem)
        if txt is None:
            bad.extend(BadSample(str(p.relative_to(root)), "missing caption", f"no {stem}.txt") for p in ims)
            continue
        tname = str(txt.relative_to(root))
        if not ims:
            bad.append(BadSample(tname, "missing image", f"no image named {stem}.*"))
            continue
        if len(ims) > 1:
            bad.append(BadSample(tname, "two images for one caption", ", ".join(p.name for p in ims)))
            continue
        text, err = _read_caption(txt, tname)
        entries.append((ims[0], str(ims[0].relative_to(root)), text, err))
    return entries, bad


def _scan_jsonl(path: Path):
    entries, bad = [], []
    base = path.parent
    for lineno, raw in enumerate(path.read_bytes().splitlines(), start=1):
        where = f"{path.name}:{lineno}"
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            bad.append(BadSample(where, "caption not UTF-8", f"byte {e.start}"))
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append(BadSample(where, "malformed line", f"not JSON: {e.msg}"))
            continue
        if not isinstance(d, dict) or not isinstance(d.get("image"), str) or not d["image"]:
            bad.append(BadSample(where, "malformed line", 'needs {"image": path, "caption": text}'))
            continue
        img, cap = base / d["image"], d.get("caption")
        name = f"{d['image']} ({where})"
        if cap is not None and not isinstance(cap, str):
            bad.append(BadSample(name, "malformed line", "caption is not a string"))
            continue
        text = " ".join((cap or "").split())
        entries.append((img, name, text or None, None if text else BadSample(name, "empty caption")))
    return entries, bad


def scan_captioned(source, table: BucketTable = None, on_bad: str = "skip") -> CaptionedData:
    """Scan a folder of images with same-name ``.txt`` captions, or a ``.jsonl`` file; check every sample
    (caption readable and non-empty, image present and an image, ratio inside the tables) and bucket it.

    ``on_bad``: "skip" (drop bad samples; one warning with the count and names; ``.bad`` lists them all) or
    "error" (raise one :class:`InputError` line naming every bad file). Writes nothing."""
    if on_bad not in ("skip", "error"):
        raise InputError(f"on_bad must be 'skip' or 'error', got {on_bad!r}")
    table = table or BucketTable()
    src = Path(source)
    if src.is_dir():
        entries, bad = _scan_folder(src)
    elif src.is_file() and src.suffix.lower() == ".jsonl":
        entries, bad = _scan_jsonl(src)
    elif src.exists():
        raise InputError(f"source {str(src)!r} must be a folder of images + .txt captions or a .jsonl file")
    else:
        raise InputError(f"source {str(src)!r} does not exist")
    samples = []
    for img, name, text, err in entries:
        hw, img_err = _image_hw(img, name)
        if img_err is not None or err is not None:  # a missing image is worse news than its caption
            bad.append(img_err or err)
            continue
        b = table.nearest(*hw)
        if b is None:
            bad.append(BadSample(name, "ratio outside the tables", f"h/w {hw[0] / hw[1]:.3g}"))
            continue
        samples.append(CaptionedSample(str(img), text, name, hw, b.key))
    bad.sort(key=lambda b: b.name)
    if bad:
        shown = "; ".join(str(b) for b in bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        if on_bad == "error":
            raise InputError(f"{len(bad)} bad sample(s) in {str(src)!r}: {shown}; fix them or pass on_bad='skip'")
        warnings.warn(f"skipped {len(bad)} bad sample(s) in {str(src)!r}: {shown}", RuntimeWarning, stacklevel=2)
    if not samples:
        raise InputError(f"source {str(src)!r} holds no usable captioned image")
    return CaptionedData(str(src), samples, bad, table)


# ------------------------------------------------------------------------------------------------ images
def fit_to_bucket(im: Image.Image, image_hw: Tuple[int, int], rng: Optional[np.random.Generator] = None):
    """Resize ``im`` to cover (H, W) (aspect kept, LANCZOS) and crop to (H, W): centred, or at a random offset
    drawn from ``rng``."""
    H, W = image_hw
    w, h = im.size
    s = max(H / h, W / w)
    nw, nh = max(W, math.ceil(w * s - 1e-9)), max(H, math.ceil(h * s - 1e-9))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.LANCZOS)
    if rng is None:
        x0, y0 = (nw - W) // 2, (nh - H) // 2
    else:
        x0, y0 = int(rng.integers(0, nw - W + 1)), int(rng.integers(0, nh - H + 1))
    return im.crop((x0, y0, x0 + W, y0 + H))


def _to_tensor(im: Image.Image) -> torch.Tensor:
    """PIL RGB -> float (3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return x.div_(127.5).sub_(1.0)


def _load_rgb(path: str) -> Image.Image:
    from nextscale.imageio import to_rgb

    with Image.open(path) as im:
        im.load()
        return to_rgb(im, str(path))  # any mode and bit depth (16-bit scaled, not clipped)


def text_dropped(seed: int, p: float) -> bool:
    """The text-dropout draw of a sample key: the first uniform of ``default_rng(seed)`` < p (seed < 0: never)."""
    if seed < 0 or p <= 0:
        return False
    return bool(np.random.default_rng(seed).random() < p)


def _check_p(p) -> float:
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1:
        raise InputError(f"text_dropout must be a probability in [0, 1], got {p!r}")
    return float(p)


class CaptionedImages(torch.utils.data.Dataset):
    """Samples of a :class:`CaptionedData` -> ``{"image": (3, H, W) in [-1, 1], "caption", "dropped", "bucket",
    "index"}``. Keys are ``(index, sample_seed)`` (seed < 0: evaluation, no dropout, centre crop). The seed's
    generator draws the dropout first, then the crop offsets (``random_crop``)."""

    def __init__(self, data: CaptionedData, text_dropout: float = 0.0, random_crop: bool = False):
        self.data, self.p, self.random_crop = data, _check_p(text_dropout), bool(random_crop)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key) -> dict:
        i, seed = key if isinstance(key, tuple) else (int(key), -1)
        s = self.data.samples[int(i)]
        rng = np.random.default_rng(seed) if seed >= 0 else None
        dropped = bool(rng.random() < self.p) if rng is not None else False  # == text_dropped(seed, p)
        im = fit_to_bucket(_load_rgb(s.image), self.data.table[s.bucket].image_hw, rng if self.random_crop else None)
        return {
            "image": _to_tensor(im),
            "caption": "" if dropped else s.caption,
            "dropped": dropped,
            "bucket": s.bucket,
            "index": int(i),
        }


# ------------------------------------------------------------------------------------------------ batch sampler
class BucketBatchSampler:
    """Infinite, seeded batches that never mix buckets; the position is one integer (resumable, like
    :class:`nextscale.data.ResumableBatchSampler`).

    Epoch e: a generator seeded by (seed, e) permutes each bucket's indices (buckets in sorted key order), cuts
    them into batches of ``batch_size`` (a bucket's last batch is filled up with its own first indices), then
    shuffles the order of all batches; the list is padded with its first batches to a multiple of
    ``world_size``. Micro-batch c of rank r is batch ``(c mod per_epoch) * world_size + r`` of epoch
    ``c // per_epoch``. Yields lists of ``(index, sample_seed)`` keys; the seed is a function of (seed, epoch,
    position in the epoch), so dropout and crops are too."""

    def __init__(
        self,
        buckets: Sequence[str],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        shuffle: bool = True,
    ):
        if not buckets:
            raise InputError("buckets must hold one bucket key per sample (the data set is empty)")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise InputError(f"rank must be in [0, world_size), got rank {rank!r}, world_size {world_size!r}")
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, int(seed), rank, world_size
        self.start, self.shuffle = int(start), bool(shuffle)
        self.groups: Dict[str, np.ndarray] = {}
        for i, b in enumerate(buckets):
            self.groups.setdefault(b, []).append(i)
        self.groups = {k: np.asarray(v, dtype=np.int64) for k, v in sorted(self.groups.items())}
        n_batches = sum(math.ceil(len(v) / batch_size) for v in self.groups.values())
        self.batches_per_epoch = math.ceil(n_batches / world_size)  # micro-batches per rank and epoch
        self._epoch, self._batches = -1, None

    def epoch_batches(self, epoch: int) -> List[np.ndarray]:
        """All batches (index arrays) of an epoch, in order, padded to a multiple of world_size."""
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed & 0xFFFFFFFF, int(epoch)])
            batches = []
            for idx in self.groups.values():
                perm = rng.permutation(idx) if self.shuffle else idx
                pad = (-len(perm)) % self.batch_size
                perm = np.concatenate([perm, np.resize(perm, pad)]) if pad else perm  # np.resize cycles
                batches.extend(perm.reshape(-1, self.batch_size))
            if self.shuffle:
                batches = [batches[j] for j in rng.permutation(len(batches))]
            pad = (-len(batches)) % self.world_size
            batches = batches + [batches[j % len(batches)] for j in range(pad)]
            self._epoch, self._batches = epoch, batches
        return self._batches

    def keys(self, counter: int) -> List[Tuple[int, int]]:
        epoch, m = divmod(int(counter), self.batches_per_epoch)
        b = m * self.world_size + self.rank
        batch = self.epoch_batches(epoch)[b]
        p0 = b * self.batch_size
        return [(int(i), sample_seed(self.seed, epoch, p0 + j)) for j, i in enumerate(batch)]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        c = self.start
        while True:
            yield self.keys(c)
            c += 1


# ------------------------------------------------------------------------------------------------ cache helpers
def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:32]


def _hash_state(h, module: torch.nn.Module) -> None:
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _read_meta(root: Path, fmt: str) -> Optional[dict]:
    p = root / "meta.json"
    if not p.is_file():
        return None
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == fmt else None


def _write_json(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")


def _shard_ok(path: Path, fingerprint: str, digest: str) -> bool:
    """Is ``path`` a complete shard of this build (its header names the same fingerprint and content)?"""
    if not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
    except Exception:  # noqa: BLE001 - any damage means: build it again
        return False
    return md.get("fingerprint") == fingerprint and md.get("digest") == digest


def _prepare_dir(root: Path, meta: Optional[dict], fp: str, overwrite: bool, what: str, model: str, inputs: str):
    """Make ``root`` ready for a (re)build; refuse to replace another build's complete cache unless overwrite."""
    if meta is not None and not overwrite:
        why = (
            f"another {model} or settings (fingerprint {meta.get('fingerprint')} != {fp})"
            if meta.get("fingerprint") != fp
            else f"other {inputs}"
        )
        raise InputError(
            f"out {str(root)!r} holds a {what} of other inputs: {why}; pass overwrite=True or choose another folder"
        )
    if root.exists() and not root.is_dir():
        raise InputError(f"out {str(root)!r} is a file; give a folder for the {what}")
    if meta is None and root.is_dir() and any(root.iterdir()) and not (root / ".nextscale-cache").exists():
        raise InputError(f"out {str(root)!r} exists and is not a {what}; choose another folder")
    root.mkdir(parents=True, exist_ok=True)
    (root / ".nextscale-cache").touch()
    if meta is not None:  # the old cache stops being complete before any shard changes
        (root / "meta.json").unlink()


# ------------------------------------------------------------------------------------------------ text cache
def encoder_fingerprint(encoder) -> str:
    """Identity of a text encoder: its ``fingerprint()`` if it has one; else the type, the weights of its
    ``model`` (an ``nn.Module``), its tokenizer's vocabulary and ``max_length``; an encoder with none of these
    is identified by its features of a few probe prompts."""
    if callable(getattr(encoder, "fingerprint", None)):
        return str(encoder.fingerprint())
    h = hashlib.sha256(f"{type(encoder).__module__}.{type(encoder).__qualname__}".encode())
    model = getattr(encoder, "model", None)
    if isinstance(model, torch.nn.Module):
        _hash_state(h, model)
        tok = getattr(encoder, "tokenizer", None)
        if tok is not None and callable(getattr(tok, "get_vocab", None)):
            h.update(json.dumps(sorted(tok.get_vocab().items()), ensure_ascii=False).encode())
        h.update(f"max_length={getattr(encoder, 'max_length', None)}".encode())
    else:
        from nextscale.text import encode_prompts

        probe = encode_prompts(encoder, ["", "a red circle above a blue seven", "two green 4s, three squares"])
        h.update(str(probe.lens).encode())
        h.update(probe.kv_compact.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def _unique(captions: Sequence[str]) -> Tuple[List[str], np.ndarray]:
    first: Dict[str, int] = {}
    ids = np.empty(len(captions), dtype=np.int64)
    for i, c in enumerate(captions):
        ids[i] = first.setdefault(c, len(first))
    return list(first), ids


def build_text_cache(
    captions: Sequence[str],
    encoder,
    out,
    *,
    shard_size: int = 4096,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
) -> "TextFeatureCache":
    """Encode every distinct caption once with ``encoder`` (any :class:`~nextscale.text.TextEncoder`) and store
    the features per shard of ``shard_size`` captions in folder ``out``; sample i maps to its caption's row.

    An existing complete cache of the same encoder (fingerprint) and captions is returned as is (nothing is
    encoded); shards left by a killed build are reused. Another encoder's cache is refused unless
    ``overwrite``. ``dtype``: storage dtype of the features (float32 keeps them bit-exact)."""
    from nextscale.text import encode_prompts

    captions = list(captions)
    if not captions or not all(isinstance(c, str) for c in captions):
        raise InputError("captions must be a non-empty list of strings")
    if not (isinstance(shard_size, int) and shard_size >= 1 and isinstance(batch_size, int) and batch_size >= 1):
        raise InputError(f"shard_size and batch_size must be positive ints, got {shard_size!r}, {batch_size!r}")
    root = Path(out)
    fp = _sha([encoder_fingerprint(encoder), str(dtype)])
    unique, ids = _unique(captions)
    digest = _sha(captions)
    meta = _read_meta(root, TEXT_CACHE_FORMAT)
    if meta is not None and meta.get("fingerprint") == fp and meta.get("captions") == digest:
        return TextFeatureCache.open(root)
    _prepare_dir(root, meta, fp, overwrite, "text-feature cache", "text encoder", "captions")
    n_shards = math.ceil(len(unique) / shard_size)
    channels = None
    for k in range(n_shards):
        chunk = unique[k * shard_size : (k + 1) * shard_size]
        path, sd = root / f"shard_{k:05d}.safetensors", _sha(chunk)
        if _shard_ok(path, fp, sd):
            continue
        rows, lens = [], []
        for j in range(0, len(chunk), batch_size):
            feats = encode_prompts(encoder, chunk[j : j + batch_size], "captions")
            rows.append(feats.kv_compact.detach().to("cpu", dtype))
            lens.extend(feats.lens)
        kv = torch.cat(rows)
        channels = int(kv.shape[1])
        save_safetensors(
            {"kv": kv, "lens": torch.tensor(lens, dtype=torch.int64)},
            path,
            metadata={"fingerprint": fp, "digest": sd, "format": TEXT_CACHE_FORMAT},
        )
    empty = encode_prompts(encoder, [""], "captions").kv_compact.detach().to("cpu", dtype)
    channels = int(empty.shape[1]) if channels is None else channels
    if int(empty.shape[1]) != channels:
        raise InputError(f"the text encoder gave {empty.shape[1]} channels for '' but {channels} for captions")
    save_safetensors(
        {"caption_id": torch.from_numpy(ids), "empty": empty},
        root / "index.safetensors",
        metadata={"fingerprint": fp, "digest": digest, "format": TEXT_CACHE_FORMAT},
    )
    for stale in root.glob("shard_*.safetensors"):  # shards of an earlier, larger build
        if int(stale.stem.split("_")[1]) >= n_shards:
            stale.unlink()
    _write_json(
        root / "meta.json",
        {
            "format": TEXT_CACHE_FORMAT,
            "version": CACHE_VERSION,
            "fingerprint": fp,
            "captions": digest,
            "n_samples": len(captions),
            "n_unique": len(unique),
            "shard_size": shard_size,
            "n_shards": n_shards,
            "channels": channels,
            "dtype": str(dtype).replace("torch.", ""),
        },
    )
    return TextFeatureCache.open(root)


class TextFeatureCache:
    """Reader of a :func:`build_text_cache` folder. ``row(i)``: sample i's features (len, Ct5);
    ``features(indices, dropped)``: a :class:`~nextscale.text.TextFeatures` batch (dropped rows get the
    features of "")."""

    def __init__(self, root: Path, meta: dict):
        self.root, self.meta = Path(root), meta
        idx = load_safetensors(self.root / "index.safetensors", "text-feature cache index")
        self.caption_id, self.empty = idx["caption_id"], idx["empty"]
        self._shards: Dict[int, Sequence[torch.Tensor]] = {}

    @classmethod
    def open(cls, root) -> "TextFeatureCache":
        meta = _read_meta(Path(root), TEXT_CACHE_FORMAT)
        if meta is None or meta.get("version") != CACHE_VERSION:
            raise InputError(f"{str(root)!r} is not a complete text-feature cache; build it with build_text_cache")
        return cls(Path(root), meta)

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def __len__(self) -> int:
        return int(self.meta["n_samples"])

    def _shard(self, k: int) -> List[torch.Tensor]:
        if k not in self._shards:
            if len(self._shards) >= 4:  # a few shards in memory at a time
                self._shards.pop(next(iter(self._shards)))
            d = load_safetensors(self.root / f"shard_{k:05d}.safetensors", "text-feature cache shard")
            self._shards[k] = d["kv"].split(d["lens"].tolist())
        return self._shards[k]

    def row(self, i: int) -> torch.Tensor:
        if not 0 <= int(i) < len(self):
            raise InputError(f"sample index {i} is outside the text cache's {len(self)} samples")
        u = int(self.caption_id[int(i)])
        k, j = divmod(u, int(self.meta["shard_size"]))
        return self._shard(k)[j]

    def features(self, indices: Sequence[int], dropped: Optional[Sequence[bool]] = None):
        from nextscale.text import features_from_rows

        dropped = dropped if dropped is not None else [False] * len(indices)
        if len(dropped) != len(indices):
            raise InputError(f"dropped must have one flag per index ({len(indices)}), got {len(dropped)}")
        return features_from_rows([self.empty if d else self.row(i) for i, d in zip(indices, dropped)])


# ------------------------------------------------------------------------------------------------ bits cache
def tokenizer_fingerprint_bsq(vae: torch.nn.Module) -> str:
    """sha256 over a BSQ tokenizer's weights and config (what its bits depend on)."""
    h = hashlib.sha256(repr(getattr(vae, "config", type(vae).__name__)).encode())
    _hash_state(h, vae)
    return h.hexdigest()[:32]


def _image_ids(data: CaptionedData, indices) -> list:
    """What a shard's bits depend on besides the tokenizer: each image's name, size in bytes and mtime."""
    out = []
    for i in indices:
        s = data.samples[int(i)]
        st = os.stat(s.image)
        out.append([s.name, st.st_size, st.st_mtime_ns])
    return out


def build_bits_cache(
    data: CaptionedData,
    vae,
    out,
    *,
    shard_size: int = 1024,
    batch_size: int = 16,
    device="cpu",
    overwrite: bool = False,
) -> "BitsCache":
    """Encode every image of ``data`` with the BSQ tokenizer ``vae`` on its bucket's tokenizer schedule
    (centre crop, no flip) and store the bits, packed, per bucket and shard in folder ``out``.

    Reuse rules as :func:`build_text_cache`: the fingerprint covers the tokenizer's weights and config, the
    bucket table and the images (names, sizes in bytes, modification times)."""
    if not (isinstance(shard_size, int) and shard_size >= 1 and isinstance(batch_size, int) and batch_size >= 1):
        raise InputError(f"shard_size and batch_size must be positive ints, got {shard_size!r}, {batch_size!r}")
    root = Path(out)
    tok_fp = tokenizer_fingerprint_bsq(vae)
    images = _image_ids(data, range(len(data)))
    fp = _sha([tok_fp, data.table.to_dict()])
    digest = _sha([images, data.buckets])
    meta = _read_meta(root, BITS_CACHE_FORMAT)
    if meta is not None and meta.get("fingerprint") == fp and meta.get("images") == digest:
        return BitsCache.open(root)
    _prepare_dir(root, meta, fp, overwrite, "bits cache", "tokenizer", "images")
    keys = sorted(set(data.buckets))
    bucket_id = np.asarray([keys.index(b) for b in data.buckets], dtype=np.int64)
    row = np.zeros(len(data), dtype=np.int64)
    d = int(getattr(vae, "codebook_dim"))
    info = {}
    was_training = vae.training
    vae.eval()
    try:
        for bi, key in enumerate(keys):
            members = np.flatnonzero(bucket_id == bi)
            row[members] = np.arange(len(members))
            b = data.table[key]
            L = sum(h * w for h, w in b.tokenizer_schedule)
            n_shards = math.ceil(len(members) / shard_size)
            (root / key).mkdir(exist_ok=True)
            for k in range(n_shards):
                chunk = members[k * shard_size : (k + 1) * shard_size]
                path, sd = root / key / f"shard_{k:05d}.safetensors", _sha(_image_ids(data, chunk))
                if _shard_ok(path, fp, sd):
                    continue
                packed = []
                for j in range(0, len(chunk), batch_size):
                    x = torch.stack(
                        [
                            _to_tensor(fit_to_bucket(_load_rgb(data.samples[int(i)].image), b.image_hw))
                            for i in chunk[j : j + batch_size]
                        ]
                    )
                    with torch.no_grad():
                        _, bits = vae.encode(x.to(device), [tuple(hw) for hw in b.tokenizer_schedule])
                    flat = torch.cat([t.reshape(t.shape[0], -1) for t in bits], dim=1).cpu().numpy().astype(np.uint8)
                    packed.append(np.packbits(flat, axis=1))
                save_safetensors(
                    {"bits": torch.from_numpy(np.concatenate(packed))},
                    path,
                    metadata={"fingerprint": fp, "digest": sd, "format": BITS_CACHE_FORMAT},
                )
            for stale in (root / key).glob("shard_*.safetensors"):
                if int(stale.stem.split("_")[1]) >= n_shards:
                    stale.unlink()
            info[key] = {
                "schedule": [list(hw) for hw in b.tokenizer_schedule],
                "image_hw": list(b.image_hw),
                "n": int(len(members)),
                "L": L,
            }
    finally:
        vae.train(was_training)
    save_safetensors(
        {"bucket_id": torch.from_numpy(bucket_id), "row": torch.from_numpy(row)},
        root / "index.safetensors",
        metadata={"fingerprint": fp, "digest": digest},
    )
    _write_json(
        root / "meta.json",
        {
            "format": BITS_CACHE_FORMAT,
            "version": CACHE_VERSION,
            "fingerprint": fp,
            "tokenizer": tok_fp,
            "images": digest,
            "n_samples": len(data),
            "d": d,
            "shard_size": shard_size,
            "buckets": info,
            "bucket_keys": keys,
            "table": data.table.to_dict(),
        },
    )
    return BitsCache.open(root)


class BitsCache:
    """Reader of a :func:`build_bits_cache` folder: ``bits(i)`` -> sample i's bits per scale [(h, w, d) int64];
    ``batch(indices)`` -> [(B, h, w, d) int64] (one bucket); ``schedule(i)`` its tokenizer schedule."""

    def __init__(self, root: Path, meta: dict):
        self.root, self.meta = Path(root), meta
        idx = load_safetensors(self.root / "index.safetensors", "bits cache index")
        self.bucket_id, self.row_of = idx["bucket_id"], idx["row"]
        self._shards: Dict[Tuple[str, int], np.ndarray] = {}

    @classmethod
    def open(cls, root) -> "BitsCache":
        meta = _read_meta(Path(root), BITS_CACHE_FORMAT)
        if meta is None or meta.get("version") != CACHE_VERSION:
            raise InputError(f"{str(root)!r} is not a complete bits cache; build it with build_bits_cache")
        return cls(Path(root), meta)

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def check(self, vae) -> None:
        """Refuse a cache made by another tokenizer."""
        if tokenizer_fingerprint_bsq(vae) != self.meta["tokenizer"]:
            raise InputError(f"bits cache {str(self.root)!r} was built with another tokenizer; rebuild it")

    def __len__(self) -> int:
        return int(self.meta["n_samples"])

    def bucket(self, i: int) -> str:
        return self.meta["bucket_keys"][int(self.bucket_id[int(i)])]

    def schedule(self, i: int) -> List[Tuple[int, int]]:
        return [tuple(hw) for hw in self.meta["buckets"][self.bucket(i)]["schedule"]]

    def _packed(self, key: str, k: int) -> np.ndarray:
        if (key, k) not in self._shards:
            if len(self._shards) >= 4:
                self._shards.pop(next(iter(self._shards)))
            t = load_safetensors(self.root / key / f"shard_{k:05d}.safetensors", "bits cache shard")["bits"]
            self._shards[(key, k)] = t.numpy()
        return self._shards[(key, k)]

    def batch(self, indices: Sequence[int]) -> List[torch.Tensor]:
        keys = {self.bucket(i) for i in indices}
        if len(keys) != 1:
            raise InputError(f"indices must share one bucket, got buckets {sorted(keys)}")
        key = keys.pop()
        info, d, ss = self.meta["buckets"][key], int(self.meta["d"]), int(self.meta["shard_size"])
        rows = []
        for i in indices:
            k, j = divmod(int(self.row_of[int(i)]), ss)
            rows.append(self._packed(key, k)[j])
        flat = np.unpackbits(np.stack(rows), axis=1, count=info["L"] * d).astype(np.int64)
        out, o = [], 0
        for h, w in info["schedule"]:
            out.append(torch.from_numpy(flat[:, o : o + h * w * d].reshape(len(rows), h, w, d).copy()))
            o += h * w * d
        return out

    def bits(self, i: int) -> List[torch.Tensor]:
        return [t[0] for t in self.batch([i])]


# ------------------------------------------------------------------------------------------------ cached data set
class CachedT2I(torch.utils.data.Dataset):
    """Training samples from the caches: ``{"bits": [(h, w, d)] per scale, "caption", "dropped", "bucket",
    "index"}`` (keys ``(index, sample_seed)`` as :class:`CaptionedImages`; the same dropout draw)."""

    def __init__(self, data: CaptionedData, bits: BitsCache, text_dropout: float = 0.0):
        if len(bits) != len(data):
            raise InputError(f"the bits cache holds {len(bits)} samples, the data {len(data)}; rebuild the cache")
        self.data, self.cache, self.p = data, bits, _check_p(text_dropout)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key) -> dict:
        i, seed = key if isinstance(key, tuple) else (int(key), -1)
        dropped = text_dropped(seed, self.p)
        s = self.data.samples[int(i)]
        return {
            "bits": self.cache.bits(int(i)),
            "caption": "" if dropped else s.caption,
            "dropped": dropped,
            "bucket": s.bucket,
            "index": int(i),
        }


def collate_t2i(items: Sequence[dict], text_cache: Optional[TextFeatureCache] = None) -> dict:
    """Stack one bucket's samples: ``images`` (B, 3, H, W) or ``bits`` [(B, h, w, d)], ``captions``,
    ``dropped``, ``indices``, ``bucket``, and ``text`` (TextFeatures from ``text_cache``, dropped rows = "")."""
    buckets = {it["bucket"] for it in items}
    if len(buckets) != 1:
        raise InputError(f"a batch must come from one bucket, got {sorted(buckets)}")
    out = {
        "captions": [it["caption"] for it in items],
        "dropped": [it["dropped"] for it in items],
        "indices": [it["index"] for it in items],
        "bucket": buckets.pop(),
    }
    if "image" in items[0]:
        out["images"] = torch.stack([it["image"] for it in items])
    if "bits" in items[0]:
        out["bits"] = [torch.stack(t) for t in zip(*(it["bits"] for it in items))]
    if text_cache is not None:
        out["text"] = text_cache.features(out["indices"], out["dropped"])
    return out
