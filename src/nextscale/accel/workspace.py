"""Reusable scratch buffers for CPU inference.

Fresh allocations of a few MB and up are new memory mappings, and touching their pages for the first
time costs ~0.5 ms/MB on this kind of machine -- as much as the arithmetic of an elementwise op. Inner
loops that need a large temporary (the transformer's FFN hidden layer, the Winograd transforms) take it
from here instead: one flat float32 buffer per (name, device, inference mode), per thread, grown on
demand and reused. A buffer never leaves the function that asked for it, so reuse is safe; models
keep no state of their own for this.
"""

from __future__ import annotations

import threading
from typing import Dict, Tuple

import torch

__all__ = ["workspace"]

_tls = threading.local()


def workspace(name: str, numel: int, device) -> torch.Tensor:
    """A flat float32 buffer of at least ``numel`` elements, reused across calls with the same name.
    Inference-mode tensors and normal ones are kept apart (an inference tensor cannot be written
    outside inference mode)."""
    bufs: Dict[Tuple[str, str, bool], torch.Tensor] = getattr(_tls, "bufs", None)
    if bufs is None:
        bufs = _tls.bufs = {}
    key = (name, str(device), torch.is_inference_mode_enabled())
    buf = bufs.get(key)
    if buf is None or buf.numel() < numel:
        bufs.pop(key, None)
        buf = bufs[key] = torch.empty(numel, dtype=torch.float32, device=device)
    return buf[:numel]
