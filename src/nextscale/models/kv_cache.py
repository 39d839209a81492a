"""The key/value cache of sampling: each block keeps the keys and values of every scale so far."""

from __future__ import annotations

from typing import List, Optional

import torch

__all__ = ["KVCache"]


class KVCache:
    """Preallocated key/value cache for all blocks (no re-allocation, no concatenation per scale).

    Each block writes its new keys/values at ``[pos, pos + l)`` and attends over ``[0, pos + l)``;
    ``advance(l)`` moves the write position once every block has processed the scale.
    """

    def __init__(self, depth: int, max_len: int):
        self.depth, self.max_len, self.pos = depth, max_len, 0
        self.k: List[Optional[torch.Tensor]] = [None] * depth
        self.v: List[Optional[torch.Tensor]] = [None] * depth

    def append(self, block_idx: int, k_BHlc: torch.Tensor, v_BHlc: torch.Tensor):
        l = k_BHlc.shape[2]
        end = self.pos + l
        if end > self.max_len:
            raise RuntimeError(f"KV cache overflow: {end} > {self.max_len}")
        if self.k[block_idx] is None:
            B, H, _, c = k_BHlc.shape
            self.k[block_idx] = k_BHlc.new_empty(B, H, self.max_len, c)
            self.v[block_idx] = v_BHlc.new_empty(B, H, self.max_len, c, dtype=v_BHlc.dtype)
        kb, vb = self.k[block_idx], self.v[block_idx]
        kb[:, :, self.pos : end].copy_(k_BHlc)
        vb[:, :, self.pos : end].copy_(v_BHlc)
        return kb[:, :, :end], vb[:, :, :end]

    def advance(self, l: int) -> None:
        self.pos += l

    def keep_rows(self, n: int) -> None:
        """Keep the first n batch rows (sampling drops the unconditional half once guidance ends)."""
        self.k = [k[:n] if k is not None else None for k in self.k]
        self.v = [v[:n] if v is not None else None for v in self.v]
