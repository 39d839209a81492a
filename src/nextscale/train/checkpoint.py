"""Step-granular, atomic training checkpoints and RNG state capture.

Layout: ``RUN/checkpoints/step_00001234.pt``. A checkpoint is written to a hidden temp file in the
same folder, flushed and fsync'ed, then ``os.replace``'d into place (atomic on POSIX), so a
crash or ``kill -9`` mid-write leaves at worst a ``.tmp`` file that :meth:`latest` never looks at.
An unreadable checkpoint (disk full, bit rot) is skipped in favour of the previous one.
"""
from __future__ import annotations

import glob
import os
import random
import re
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from nextscale.errors import NextScaleError
from nextscale.safeload import UnsafeFileError, load_torch

__all__ = ["atomic_save", "load_checkpoint", "CheckpointManager", "capture_rng", "restore_rng", "checkpoint_weights"]

_NAME = re.compile(r"^step_(\d{8,})\.pt$")


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` so that readers see either the old file or the complete new one."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(d)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str) -> Dict[str, Any]:
    """A training checkpoint, read tensors-only (:func:`nextscale.safeload.load_torch`, no fallback)."""
    return load_torch(path, "nextscale training checkpoint (checkpoints/step_*.pt)")


class CheckpointManager:
    """Save / find / prune ``step_XXXXXXXX.pt`` files in one folder."""

    def __init__(self, folder: str, keep_last: int = 3):
        self.folder, self.keep_last = folder, max(1, int(keep_last))

    def path(self, step: int) -> str:
        return os.path.join(self.folder, f"step_{step:08d}.pt")

    def steps(self) -> List[int]:
        """Steps of the complete checkpoints on disk, ascending (temp files are never listed)."""
        if not os.path.isdir(self.folder):
            return []
        out = [int(m.group(1)) for f in os.listdir(self.folder) if (m := _NAME.match(f))]
        return sorted(out)

    def save(self, step: int, state: Dict[str, Any]) -> str:
        p = self.path(step)
        atomic_save(state, p)
        self.prune()
        return p

    def prune(self) -> None:
        for s in self.steps()[:-self.keep_last]:
            try:
                os.remove(self.path(s))
            except FileNotFoundError:
                pass

    def clean_temp(self) -> None:
        """Remove temp files left by a killed writer (call on the writing rank at start-up)."""
        for f in glob.glob(os.path.join(self.folder, ".step_*.tmp-*")):
            try:
                os.remove(f)
            except OSError:
                pass

    def latest(self) -> Optional[Tuple[int, Dict[str, Any]]]:
        """``(step, state)`` of the newest readable checkpoint, or None."""
        for s in reversed(self.steps()):
            try:
                state = load_checkpoint(self.path(s))
            except UnsafeFileError as e:  # planted or foreign: never skip past it silently
                raise NextScaleError(f"{e}; remove it or use a fresh run folder") from None
            except Exception as e:
                warnings.warn(f"ignoring unreadable checkpoint {self.path(s)} ({type(e).__name__}: {e}); trying an older one", RuntimeWarning)
                continue
            if isinstance(state, dict) and state.get("step") == s:
                return s, state
            warnings.warn(f"ignoring malformed checkpoint {self.path(s)}", RuntimeWarning)
        return None


# ------------------------------------------------------------------------------------------------
# RNG states, in a form torch.load(weights_only=True) accepts (tensors, ints, tuples)
# ------------------------------------------------------------------------------------------------

def capture_rng() -> Dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states of this process."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    st = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def restore_rng(st: Dict[str, Any]) -> None:
    v, state, gauss = st["python"]
    random.setstate((v, tuple(state), gauss))
    kind, keys, pos, has_gauss, g = st["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, g))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def checkpoint_weights(state: Dict[str, Any], name: str, weights: str, path: str) -> Tuple[Dict[str, torch.Tensor], str]:
    """Module ``name``'s weights in a training checkpoint ``state`` (floats as float32) and which were
    taken: ``weights`` "ema", "raw", or "auto" (EMA when the run kept one)."""
    if weights not in ("auto", "ema", "raw"):
        raise NextScaleError(f"--weights must be auto, ema or raw, got {weights!r}")
    has_ema = name in state.get("ema", {})
    if weights == "ema" and not has_ema:
        raise NextScaleError(f"{path} has no EMA weights (train with --ema DECAY); use --weights raw")
    use = "ema" if (weights == "ema" or (weights == "auto" and has_ema)) else "raw"
    sd = state["ema"][name] if use == "ema" else state["modules"][name]
    return {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in sd.items()}, use
