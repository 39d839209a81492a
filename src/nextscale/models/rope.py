"""2-D rotary position embedding of Infinity (the reference's ``rope2d_normalized_by_hw=2`` mode).

Shape glossary: c head dim, L tokens of a schedule (sum of h_k * w_k), B batch, H heads.

Every aspect ratio has one cache, built from that ratio's ``1M`` schedule (its last scale (Hmax, Wmax) is the
reference grid). A token (i, j) of a scale (h, w) sits at grid position (round(i * Hmax / h), round(j * Wmax / w))
(float32 product, round half to even), so coarse scales spread over the whole grid instead of crowding its corner.
The cache is the concatenation of all scales of the 1M schedule; a schedule of any pn of that ratio is a prefix of
the 1M schedule and uses the cache's first L positions (scale k starts after the earlier scales' tokens).

Angles of a position (p_h, p_w): [p_h * inv_freq, p_w * inv_freq] (c/2 angles, height first) with
inv_freq_i = 1 / base^(2i / (c/2)), i < c/4. Pair m of a vector, (x[2m], x[2m+1]), rotates by angle m.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch

from nextscale.errors import InputError

__all__ = ["grid_positions", "build_rope_cache", "apply_rope"]


def grid_positions(grid_schedule_hw: Sequence[Tuple[int, int]]) -> torch.Tensor:
    """Integer grid positions (L, 2) = (row, column) of every token of ``grid_schedule_hw``, scales in order,
    tokens row-major. The last scale is the reference grid."""
    if len(grid_schedule_hw) == 0:
        raise InputError("grid_schedule_hw must name at least one scale")
    H, W = (int(v) for v in grid_schedule_hw[-1])
    out = []
    for h, w in grid_schedule_hw:
        # the reference multiplies an int64 arange by a Python float: float32 result, then round-half-even
        ph = (torch.arange(h) * (H / h)).round().long()
        pw = (torch.arange(w) * (W / w)).round().long()
        out.append(torch.stack((ph.view(h, 1).expand(h, w), pw.view(1, w).expand(h, w)), dim=-1).reshape(h * w, 2))
    return torch.cat(out)


def build_rope_cache(grid_schedule_hw: Sequence[Tuple[int, int]], head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """The rotary cache (2, L, c/2) of a ratio's 1M schedule ``grid_schedule_hw`` ([(h, w), ...]): [0] cos, [1] sin,
    float32. ``head_dim`` c must be a multiple of 4 (two axes x pairs)."""
    if head_dim % 4 != 0:
        raise InputError(f"head_dim must be a multiple of 4 for 2-D RoPE, got {head_dim}")
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, dtype=torch.int64).float() / half))  # (c/4,)
    pos_L2 = grid_positions(grid_schedule_hw).float()
    angles_Lc2 = torch.cat((pos_L2[:, :1] * inv_freq, pos_L2[:, 1:] * inv_freq), dim=-1)  # (L, c/2), height first
    return torch.stack((angles_Lc2.cos(), angles_Lc2.sin()))


def apply_rope(x_BHLc: torch.Tensor, rope_2Lc: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x[2m], x[2m+1]) of ``x_BHLc`` by the angles of ``rope_2Lc`` (2, L, c/2), already sliced to the
    L positions of x. Computed in float32 (the reference disables autocast here); returns x's dtype."""
    cos, sin = rope_2Lc[0].float(), rope_2Lc[1].float()  # (L, c/2)
    x = x_BHLc.float().unflatten(-1, (-1, 2))  # (B, H, L, c/2, 2)
    x0, x1 = x[..., 0], x[..., 1]
    return torch.stack((cos * x0 - sin * x1, sin * x0 + cos * x1), dim=-1).flatten(-2).to(x_BHLc.dtype)
