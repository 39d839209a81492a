"""The run folder's logs: ``log.txt`` (human), ``metrics.jsonl`` (one JSON object per event),
TensorBoard scalars under ``tb/`` when ``tensorboard`` is installed, sample grids under ``samples/``.
Only the main rank writes; other ranks get a logger that does nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Dict, Optional

import numpy as np

__all__ = ["RunLogger", "save_grid", "format_duration"]


def format_duration(sec: float) -> str:
    if not math.isfinite(sec) or sec < 0:
        return "?"
    sec = int(sec)
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def save_grid(images_NHW3: np.ndarray, path: str, ncol: Optional[int] = None) -> None:
    """uint8 (N, H, W, 3) -> one PNG grid."""
    from PIL import Image

    n, h, w, _ = images_NHW3.shape
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    grid = np.zeros((nrow * h, ncol * w, 3), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = images_NHW3[i]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid).save(path)


class RunLogger:
    def __init__(self, run_dir: str, enabled: bool = True, tensorboard: bool = True, echo: bool = True):
        self.run_dir, self.enabled, self.echo = run_dir, enabled, echo
        self._tb = None
        self._txt = self._jsonl = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self._txt = open(os.path.join(run_dir, "log.txt"), "a", buffering=1)
        self._jsonl = open(os.path.join(run_dir, "metrics.jsonl"), "a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(os.path.join(run_dir, "tb"))
            except Exception:  # tensorboard not installed: scalars stay in metrics.jsonl
                self._tb = None

    def info(self, msg: str, echo: Optional[bool] = None) -> None:
        """Append ``msg`` to log.txt and (unless ``echo`` is False) print it to stderr."""
        if not self.enabled:
            return
        line = f"[{time.strftime('%m-%d %H:%M:%S')}] {msg}"
        self._txt.write(line + "\n")
        if self.echo if echo is None else echo:
            try:
                from tqdm.auto import tqdm

                tqdm.write(line, file=sys.stderr)
            except Exception:
                print(line, file=sys.stderr, flush=True)

    def metrics(self, step: int, values: Dict[str, Any], kind: str = "train") -> None:
        if not self.enabled:
            return
        rec = {"kind": kind, "step": int(step), "time": round(time.time(), 3)}
        rec.update({k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in values.items()})
        self._jsonl.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float, np.floating)) and math.isfinite(float(v)):
                    self._tb.add_scalar(f"{kind}/{k}", float(v), step)

    def image(self, step: int, images_NHW3: np.ndarray, name: str = "samples") -> Optional[str]:
        if not self.enabled:
            return None
        path = os.path.join(self.run_dir, name, f"step_{step:08d}.png")
        save_grid(images_NHW3, path)
        if self._tb is not None:
            try:
                from PIL import Image

                self._tb.add_image(name, np.asarray(Image.open(path)), step, dataformats="HWC")
            except Exception:
                pass
        return path

    def close(self) -> None:
        for f in (self._txt, self._jsonl):
            if f is not None:
                f.close()
        if self._tb is not None:
            self._tb.close()
        self._txt = self._jsonl = self._tb = None
