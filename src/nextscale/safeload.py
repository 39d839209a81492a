"""The one way nextscale reads a weights file: tensors only, never code.

Every ``.pth`` / ``.pt`` the project opens (released checkpoints, pipeline weights, training
checkpoints and resumes, ``--init``, LPIPS and Inception weights) goes through :func:`load_torch`,
which calls ``torch.load(weights_only=True)`` and has **no fallback**: a pickle that needs anything
beyond tensors, numbers, strings, lists, tuples and dicts is refused, whatever the caller wanted.
``.safetensors`` files go through :func:`load_safetensors`. Both turn every failure into one line
that says what the file is not and what to pass instead.

Training checkpoints are written so that this loader accepts them: their non-tensor state is
plain Python (ints, floats, strings, tuples, dicts; see ``nextscale.checkpoint``).
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Dict

import torch

from nextscale.errors import CheckpointError

__all__ = ["load_torch", "load_safetensors", "load_weights", "save_safetensors", "check_finite", "UnsafeFileError"]


class UnsafeFileError(CheckpointError):
    """A pickle that a tensors-only load refuses: it would import or call Python objects."""


def _kind(path: Path) -> str:
    """What the first bytes say the file is (for the error message)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return "unreadable"
    if not head:
        return "an empty file"
    if head.startswith(b"PK"):
        return "a damaged or truncated PyTorch zip file"
    if head[:1] == b"\x80":
        return "a damaged or truncated pickle"
    if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8"):
        return "an image"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "a text file"
    return "not a PyTorch file"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a weights file")


def load_torch(path, what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, with one-line errors.

    ``what`` names the expected content for the message ("tokenizer checkpoint", "training
    checkpoint", ...). Raises :class:`UnsafeFileError` for a pickle that holds Python objects
    other than tensors and containers, :class:`CheckpointError` for anything else unreadable.
    """
    path = Path(path)
    _check_file(path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        kind, msg = _kind(path), str(e)
        is_pickle = kind.startswith("a damaged")  # a zip or pickle header: a real pickle the safe load refused
        if is_pickle and ("Weights only load failed" in msg or "WeightsUnpickler" in msg):
            m = re.search(r"GLOBAL (\S+)", msg)
            what_obj = f" (it would import {m.group(1)})" if m else ""
            raise UnsafeFileError(
                f"{path}: refused: this pickle holds Python objects, not only tensors{what_obj}, and nextscale never "
                f"runs code from a file; pass a {what} of tensors (a .safetensors file, or one saved from a state_dict)"
            ) from None
        raise CheckpointError(f"{path}: not a {what} ({kind})") from None
    except (
        RuntimeError,
        EOFError,
        ValueError,
        zipfile.BadZipFile,
        OSError,
        AttributeError,
        TypeError,
        KeyError,
        IndexError,
    ):
        raise CheckpointError(f"{path}: not a {what} ({_kind(path)})") from None


def load_safetensors(path, what: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` file (on CPU), with one-line errors."""
    from safetensors.torch import load_file

    path = Path(path)
    _check_file(path)
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for any malformed header
        detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        kind = "an empty file" if os.path.getsize(path) == 0 else f"damaged or not safetensors: {detail}"
        raise CheckpointError(f"{path}: not a {what} ({kind})") from None


def load_weights(path, what: str = "checkpoint") -> Any:
    """:func:`load_safetensors` for ``*.safetensors``, :func:`load_torch` for everything else."""
    return load_safetensors(path, what) if str(path).endswith(".safetensors") else load_torch(path, what)


def save_safetensors(tensors: Dict[str, torch.Tensor], path, metadata: Dict[str, str] = None) -> None:
    """Write CPU, contiguous copies of ``tensors`` to ``path`` atomically (temp file + rename),
    with the umask's file mode."""
    from safetensors.torch import save_file

    from nextscale.atomic import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)


def check_finite(weights, what: str) -> None:
    """Refuse weights (a state dict or a module) holding NaN / inf: a diverged run or a broken file would
    otherwise be converted, exported or described as if it were a model. ``what`` names it in the message.
    Attention masks (``*mask*`` buffers such as ``attn_bias_for_masking``) hold -inf by design: only NaN there."""
    items = weights.state_dict().items() if hasattr(weights, "state_dict") else weights.items()
    for k, t in items:
        if not (torch.is_tensor(t) and t.is_floating_point()):
            continue
        bad = torch.isnan(t).any() if "mask" in k else ~torch.isfinite(t).all()
        if bool(bad):
            raise CheckpointError(
                f"{what}: {k} holds NaN/inf values (a diverged run or a broken file); it is not a usable model"
            )
