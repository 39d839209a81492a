"""Opt-in, training-free sampling speed-ups that change the result a little (each measured in
docs/speed.md). ``nextscale.sampling.generate`` applies them when a ``SamplingSettings`` asks:

- ``guidance_cutoff=N`` (Switti, 2024): the last N scales sample without classifier-free guidance,
  so their unconditional rows are never computed. The last two scales of d16 hold 425 of its 680
  tokens, and guidance doubles their rows.
- ``refiner=model, refine_from_scale=k`` (Collaborative Decoding, CVPR 2025): a second transformer
  with the same tokenizer (a small one) predicts scales k..K; at the switch it reads every earlier
  scale in one block-causal forward pass to fill its own KV cache ("prefill").
- ``prune_ratio=r`` (FastVAR, ICCV 2025): at the last ``prune_last`` scales only the (1 - r) share of
  tokens whose inputs differ most from their map's mean (the "pivotal", high-frequency ones) go
  through the transformer; the others take the previous scale's hidden states, upsampled
  ("cached token restoration"), and all go through the head and are sampled as usual.
- ``kv_budget=(first, recent)`` (ScaleKV / AMS-KV, 2025): a scale attends to the cache of the first
  ``first`` scales (the condensed, global ones) and of the ``recent`` scales before it; the rest is
  evicted, which bounds KV memory (and lets a larger batch fit on a GPU).

Each is off by default and the exact path is untouched (tests/test_sampling_modes.py): a cut-off of
0 scales, a refiner equal to the main model, prune ratio 0 and no KV budget give its tokens exactly.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["ScaleWindowKVCache", "pivotal_tokens", "restore_hidden"]


class ScaleWindowKVCache:
    """A KV cache that keeps, per block, one chunk per scale and attends over the first ``first``
    scales plus the ``recent`` scales before the current one (``kv_budget``). Same interface as
    ``nextscale.models.kv_cache.KVCache`` (``append`` / ``advance`` / ``keep_rows``)."""

    def __init__(self, depth: int, first: int, recent: int):
        self.depth, self.first, self.recent = depth, first, recent
        self.chunks: List[List[Tuple[int, torch.Tensor, torch.Tensor]]] = [[] for _ in range(depth)]
        self.scale = 0  # index of the scale being written
        self.pending: Optional[List[int]] = None  # scale lengths of a multi-scale append (prefill)

    def _kept(self, j: int) -> bool:
        return j < self.first or j >= self.scale - self.recent

    def append(self, block_idx: int, k_BHlc: torch.Tensor, v_BHlc: torch.Tensor):
        lens = self.pending or [k_BHlc.shape[2]]
        chunks, pos = self.chunks[block_idx], 0
        for i, n in enumerate(lens):  # a prefill writes several scales at once
            chunks.append((self.scale + i, k_BHlc[:, :, pos : pos + n], v_BHlc[:, :, pos : pos + n]))
            pos += n
        if len(chunks) == 1:
            return chunks[0][1], chunks[0][2]
        return torch.cat([c[1] for c in chunks], dim=2), torch.cat([c[2] for c in chunks], dim=2)

    def prefill_scales(self, lens: List[int]) -> None:
        """The next ``append`` of every block holds these scales' tokens in one piece."""
        self.pending = list(lens)

    def advance(self, l: int) -> None:
        self.scale += len(self.pending) if self.pending else 1
        self.pending = None
        for b, chunks in enumerate(self.chunks):  # evict what the next scale will not see
            self.chunks[b] = [c for c in chunks if self._kept(c[0])]

    def keep_rows(self, n: int) -> None:
        for b, chunks in enumerate(self.chunks):
            self.chunks[b] = [(j, k[:n], v[:n]) for j, k, v in chunks]

    def numel(self) -> int:
        return sum(k.numel() + v.numel() for chunks in self.chunks for _, k, v in chunks)


def pivotal_tokens(codes_BlCv: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices (B, n) of the ``1 - ratio`` share of positions (at least one) whose input codes
    differ most from their map's mean (FastVAR's high-frequency score), in raster order."""
    B, l, _ = codes_BlCv.shape
    n = max(1, min(l, int(math.ceil(l * (1.0 - ratio)))))
    score_Bl = (codes_BlCv - codes_BlCv.mean(dim=1, keepdim=True)).norm(dim=-1)
    return score_Bl.topk(n, dim=1, sorted=False).indices.sort(dim=1).values


def restore_hidden(
    h_prev_BLC: torch.Tensor, pn_prev: int, pn: int, idx_Bn: torch.Tensor, h_kept_BnC: torch.Tensor
) -> torch.Tensor:
    """Full (B, pn*pn, C) hidden states of a pruned scale: the kept positions from ``h_kept``, the
    rest from the previous scale's hidden states, upsampled (bicubic, as FastVAR)."""
    B, _, C = h_prev_BLC.shape
    grid = h_prev_BLC.transpose(1, 2).reshape(B, C, pn_prev, pn_prev)
    up_BlC = F.interpolate(grid.float(), size=(pn, pn), mode="bicubic", align_corners=False).to(h_kept_BnC.dtype)
    up_BlC = up_BlC.flatten(2).transpose(1, 2).contiguous()
    rows = idx_Bn.shape[0]
    if rows != B:  # guidance rows share the conditional rows' positions
        idx_Bn = idx_Bn.repeat(B // rows, 1)
    return up_BlC.scatter(1, idx_Bn.unsqueeze(-1).expand(-1, -1, C), h_kept_BnC)
