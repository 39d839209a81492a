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
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from nextscale.runfiles import checkpoint_path, checkpoint_steps, checkpoint_weights, latest_checkpoint, load_checkpoint

__all__ = [
    "atomic_save",
    "load_checkpoint",
    "CheckpointManager",
    "capture_rng",
    "restore_rng",
    "seed_all",
    "checkpoint_weights",
]


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


class CheckpointManager:
    """Save / find / prune ``step_XXXXXXXX.pt`` files in one folder."""

    def __init__(self, folder: str, keep_last: int = 3):
        self.folder, self.keep_last = folder, max(1, int(keep_last))

    def path(self, step: int) -> str:
        return checkpoint_path(self.folder, step)

    def steps(self) -> List[int]:
        """Steps of the complete checkpoints on disk, ascending (temp files are never listed)."""
        return checkpoint_steps(self.folder)

    def save(self, step: int, state: Dict[str, Any]) -> str:
        p = self.path(step)
        atomic_save(state, p)
        self.prune()
        return p

    def prune(self) -> None:
        for s in self.steps()[: -self.keep_last]:
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
        """``(step, state)`` of the newest readable checkpoint, or None (a refused pickle raises:
        it stops a resume instead of being skipped)."""
        return latest_checkpoint(self.folder)


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


def seed_all(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch for ``rank`` of a run seeded ``seed`` (distinct per rank)."""
    s = seed * 1009 + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def restore_rng(st: Dict[str, Any]) -> None:
    v, state, gauss = st["python"]
    random.setstate((v, tuple(state), gauss))
    kind, keys, pos, has_gauss, g = st["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, g))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
