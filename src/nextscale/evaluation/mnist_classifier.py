"""An independent MNIST digit classifier for judging the default (MNIST) model.

It is trained only on the exported training split (``export_mnist(..., split="both")``:
450 digits per class in ``DIR/train/<digit>/``), never on model samples, and serves two
purposes in ``benchmarks/default_model_report.py``:

* class accuracy of samples: does a sample of class c look like digit c?
* in-domain FID: the Fréchet distance (``nextscale.evaluation.frechet_distance``) between the
  classifier's 128-d penultimate features of two image sets, the MNIST analogue of Inception FID.

Input convention (the same for PNGs and for model samples, see :func:`to_gray`):
RGB uint8 (PNG) or float in [0, 1] (``pipe(..., output_type="np")``, quantised to uint8 like a
PNG save) -> one grayscale channel with PIL's ``convert("L")`` weights
(``L = (299 R + 587 G + 114 B) / 1000``) -> float in [0, 1], shape (N, 1, 32, 32). The export
writes R = G = B, so for real digits this loses nothing; colour casts in samples are averaged out.

Architecture (``SmallCNN``, 151,306 parameters, 0.6 MB as float32 safetensors)::

    (N, 1, 32, 32) -> conv3x3(32) ReLU maxpool2 -> (N, 32, 16, 16)
                   -> conv3x3(64) ReLU maxpool2 -> (N, 64, 8, 8) -> maxpool2 -> (N, 64, 4, 4)
                   -> flatten (N, 1024) -> fc(128) ReLU = features (N, 128)
                   -> dropout(0.25) -> fc(10) = logits (N, 10)

Training is deterministic: seeded init, a seeded numpy permutation per epoch and seeded random
shifts of up to +-2 pixels (so that slightly off-centre samples are still read correctly), Adam
with a one-cycle schedule, CPU (15 epochs: ~2 min on one thread). Bit-identical results need the
same torch build and thread count.
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from nextscale.errors import NextScaleError

__all__ = [
    "SmallCNN",
    "to_gray",
    "load_split",
    "train_classifier",
    "predict",
    "accuracy",
    "per_class_accuracy",
    "features",
    "save_classifier",
    "load_classifier",
    "CLASSIFIER_FILE",
]

CLASSIFIER_FILE = "classifier.safetensors"
RESOLUTION = 32
FEATURE_DIM = 128
NUM_CLASSES = 10
_FORMAT = "nextscale-mnist-classifier-v1"


class SmallCNN(nn.Module):
    """2 conv + 2 FC layers; ``forward`` -> logits (N, 10), ``features`` -> (N, 128)."""

    def __init__(self, num_classes: int = NUM_CLASSES, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, feature_dim)
        self.fc2 = nn.Linear(feature_dim, num_classes)
        self.dropout = nn.Dropout(0.25)

    def features(self, x_N1HW: torch.Tensor) -> torch.Tensor:
        """(N, 1, 32, 32) in [0, 1] -> penultimate features (N, 128), after the ReLU."""
        x = (x_N1HW - 0.5) / 0.5
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (N, 32, 16, 16)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, 64, 8, 8)
        x = F.max_pool2d(x, 2).flatten(1)  # (N, 1024)
        return F.relu(self.fc1(x))  # (N, 128)

    def forward(self, x_N1HW: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.features(x_N1HW)))  # (N, 10)


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------

ImagesLike = Union[np.ndarray, torch.Tensor]


def to_gray(images: ImagesLike) -> torch.Tensor:
    """Images -> float32 (N, 1, 32, 32) in [0, 1], the classifier's input.

    Accepts uint8 (N, H, W, 3) / (N, H, W), or float in [0, 1] (N, H, W, 3) / (N, H, W) as
    returned by ``pipe(..., output_type="np")``. Floats are first quantised to uint8
    (``round(255 x)``), exactly what saving them as PNG does, so samples and exported PNGs go
    through the same path. RGB -> L uses PIL's weights; other sizes are resized with PIL bicubic.
    """
    a = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if a.ndim == 4 and a.shape[-1] == 3:
        # PIL's convert("L"): L = R*299/1000 + G*587/1000 + B*114/1000, rounded
        w = np.array([299, 587, 114], dtype=np.uint32)
        a = ((a.astype(np.uint32) * w).sum(-1) + 500) // 1000
        a = a.astype(np.uint8)
    elif a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 3:
        raise NextScaleError(f"expected images (N, H, W, 3) or (N, H, W), got shape {a.shape}")
    if a.shape[1:] != (RESOLUTION, RESOLUTION):
        a = np.stack(
            [np.asarray(Image.fromarray(im, mode="L").resize((RESOLUTION, RESOLUTION), Image.BICUBIC)) for im in a]
        )
    return torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 32, 32)


def load_split(
    split_dir: str, per_class: Optional[int] = None, seed: Optional[int] = None
) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Read ``split_dir/<class>/*.png`` -> (uint8 images (N, H, W, 3), int64 labels (N,), classes).

    Classes are the sub-folder names in sorted order ("0".."9" for the MNIST export), labels index
    into them. ``per_class`` keeps that many images per class: the first ones in file order, or
    with ``seed`` a seeded random subset (in file order).
    """
    from nextscale.data import load_rgb, scan_image_folder

    samples, classes = scan_image_folder(split_dir)
    by_class: Dict[int, List[str]] = {}
    for path, label in samples:
        by_class.setdefault(label, []).append(path)
    paths, labels = [], []
    for c in sorted(by_class):
        ps = by_class[c]
        if per_class is not None and per_class < len(ps):
            if seed is None:
                ps = ps[:per_class]
            else:
                pick = np.sort(np.random.default_rng([int(seed), c]).choice(len(ps), per_class, replace=False))
                ps = [ps[i] for i in pick]
        paths += ps
        labels += [c] * len(ps)
    images = np.stack([np.asarray(load_rgb(p), dtype=np.uint8) for p in paths])
    return images, np.asarray(labels, dtype=np.int64), classes


# ------------------------------------------------------------------------------------------------
# Training and inference
# ------------------------------------------------------------------------------------------------


def _random_shift(x_N1HW: torch.Tensor, rng: np.random.Generator, max_shift: int) -> torch.Tensor:
    """Shift every image by its own (dy, dx) in [-max_shift, max_shift], zero fill."""
    if max_shift <= 0:
        return x_N1HW
    N, _, H, W = x_N1HW.shape
    padded = F.pad(x_N1HW, (max_shift,) * 4)  # (N, 1, H + 2s, W + 2s)
    d = rng.integers(0, 2 * max_shift + 1, size=(N, 2))
    return torch.stack([padded[i, :, dy : dy + H, dx : dx + W] for i, (dy, dx) in enumerate(d)])


def train_classifier(
    train_dir: str,
    epochs: int = 15,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 3e-3,
    max_shift: int = 2,
    per_class: Optional[int] = None,
    verbose: bool = False,
) -> SmallCNN:
    """Train :class:`SmallCNN` on ``train_dir/<digit>/*.png`` (the 4,500 training digits of the
    export; ``per_class`` takes fewer). Deterministic for a given seed on CPU. Returns the model in
    eval mode; ``model.classes`` holds the folder names (the label order)."""
    images, labels, classes = load_split(train_dir, per_class=per_class)
    if len(classes) != NUM_CLASSES:
        raise NextScaleError(f"{train_dir!r} has {len(classes)} class folders; the MNIST classifier expects 10 (0..9)")
    x = to_gray(images)  # (N, 1, 32, 32)
    y = torch.from_numpy(labels)  # (N,)
    torch.manual_seed(seed)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n_steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(n_steps, 1), pct_start=0.15)
    rng = np.random.default_rng(seed)
    model.train()
    for ep in range(epochs):
        t0, tot, correct = time.perf_counter(), 0.0, 0
        perm = rng.permutation(len(x))
        for i in range(0, len(x), batch_size):
            idx = torch.from_numpy(perm[i : i + batch_size])
            xb, yb = _random_shift(x[idx], rng, max_shift), y[idx]
            logits = model(xb)  # (B, 10)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        if verbose:
            print(
                f"  classifier epoch {ep + 1}/{epochs}: loss {tot / len(x):.4f}, train acc {correct / len(x):.4f} "
                f"({time.perf_counter() - t0:.1f}s)",
                flush=True,
            )
    model.eval()
    model.classes = list(classes)
    model.train_info = dict(epochs=epochs, seed=seed, batch_size=batch_size, lr=lr, max_shift=max_shift, n_train=len(x))
    return model


def _as_input(images: ImagesLike) -> torch.Tensor:
    if isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[1] == 1 and images.dtype == torch.float32:
        return images  # already (N, 1, 32, 32) in [0, 1]
    return to_gray(images)


@torch.no_grad()
def _batched(model: SmallCNN, images: ImagesLike, fn, batch_size: int = 500) -> torch.Tensor:
    x = _as_input(images)
    model.eval()
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def predict(model: SmallCNN, images: ImagesLike) -> np.ndarray:
    """Predicted class indices (N,) int64 for images in any form :func:`to_gray` accepts."""
    return _batched(model, images, model).argmax(1).numpy()


def accuracy(model: SmallCNN, images: ImagesLike, labels: Sequence[int]) -> float:
    """Fraction of ``images`` classified as their ``labels`` (indices into ``model.classes``)."""
    labels = np.asarray(labels, dtype=np.int64)
    pred = predict(model, images)
    if len(pred) != len(labels):
        raise NextScaleError(f"{len(pred)} images but {len(labels)} labels")
    return float((pred == labels).mean())


def per_class_accuracy(model: SmallCNN, images: ImagesLike, labels: Sequence[int]) -> Dict[int, float]:
    labels = np.asarray(labels, dtype=np.int64)
    pred = predict(model, images)
    return {int(c): float((pred[labels == c] == c).mean()) for c in np.unique(labels)}


def features(model: SmallCNN, images: ImagesLike) -> np.ndarray:
    """Penultimate features float64 (N, 128): the FID feature space."""
    return _batched(model, images, model.features).double().numpy()


# ------------------------------------------------------------------------------------------------
# Persistence (safetensors; metadata: format, classes, training settings)
# ------------------------------------------------------------------------------------------------


def save_classifier(model: SmallCNN, path: str, extra: Optional[dict] = None) -> str:
    """Write the weights to ``path`` (a ``.safetensors`` file, or a folder -> ``folder/classifier.safetensors``)."""
    from nextscale.safeload import save_safetensors

    if os.path.isdir(path) or not path.endswith(".safetensors"):
        os.makedirs(path, exist_ok=True)
        path = os.path.join(path, CLASSIFIER_FILE)
    elif os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    meta = {
        "format": _FORMAT,
        "classes": json.dumps(getattr(model, "classes", [str(i) for i in range(NUM_CLASSES)])),
        "train_info": json.dumps({**getattr(model, "train_info", {}), **(extra or {})}),
    }
    save_safetensors(model.state_dict(), path, metadata=meta)
    return path


def load_classifier(path: str) -> SmallCNN:
    """Load a classifier written by :func:`save_classifier` (a file or a folder holding one)."""
    from safetensors import safe_open

    if os.path.isdir(path):
        path = os.path.join(path, CLASSIFIER_FILE)
    if not os.path.isfile(path):
        raise NextScaleError(
            f"no classifier at {path!r}; train one with benchmarks/default_model_report.py (its save-classifier option)"
        )
    from nextscale.safeload import load_safetensors

    sd = load_safetensors(path, "nextscale MNIST classifier")
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != _FORMAT:
        raise NextScaleError(f"{path!r} is not a nextscale MNIST classifier (format {meta.get('format')!r})")
    model = SmallCNN()
    model.load_state_dict(sd)
    model.eval()
    model.classes = json.loads(meta.get("classes", "[]")) or [str(i) for i in range(NUM_CLASSES)]
    model.train_info = json.loads(meta.get("train_info", "{}"))
    return model
