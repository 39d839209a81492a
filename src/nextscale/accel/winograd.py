"""Winograd minimal filtering F(4x4, 3x3) for 3x3 / stride 1 / padding 1 convolutions, in eager PyTorch.

Derived from Lavin & Gray (2015), "Fast Algorithms for Convolutional Neural Networks": a 4x4 output tile of a
3x3 correlation is ``Y = A^T [(G g G^T) * (B^T d B)] A`` where ``d`` is the 6x6 input tile, so each 4x4
output tile costs 36 multiplies per (Cin, Cout) pair instead of 144. With ``U = G g G^T`` precomputed per weight,
the multiplies become 36 independent GEMMs (tiles x Cin) @ (Cin x Cout): 4x fewer FLOPs than the direct conv.

The 1-D matrices come from Toom-Cook with n = 6 evaluation points p_0..p_4 and infinity:
``A^T = Va^T`` (4x6), ``G = Vg`` (6x3), ``B^T = V^-T`` (6x6), where ``Va``, ``Vg``, ``V`` are the Vandermonde
matrices (powers 0..3, 0..2, 0..5 of each point; the point at infinity picks the leading coefficient).
Rows of ``B^T`` are then rescaled to small integers (exact in fp32) and ``G`` takes the inverse scale.

Points: {0, 1, -1, 1/2, -2, inf} rather than Lavin's {0, 1, -1, 2, -2, inf}, chosen by measurement: the fp32
rounding error of Winograd depends on the spread of the transform entries, and pairing 2 with its reciprocal
(1/2) instead of with -2 gave the lowest error of the point sets tried ({+-1/2}, {1/2, -3}, {+-3/2},
{2/3, -3/2} were worse; the mirror set {2, -1/2} is equivalent). Full 256x256, 160->160 layer, default conv
init, input silu(randn), error vs a float64 conv, max relative to max |output| / rms relative to rms output:
these points 3.5e-6 / 1.5e-6, Lavin's points 1.1e-5 / 2.4e-6, direct fp32 conv (oneDNN) 1.7e-6 / 6.8e-7.

Implementation (eager ops only, inference only; the input is read as NHWC, the output written as NHWC):
  * the tile rows are processed in chunks (128-256 tiles, a few MB of transformed input) so that intermediates
    stay in the L3 cache and live in a reused workspace: fresh allocations over 32 MB are new mmaps whose page
    faults alone cost ~0.5 ms/MB;
  * per chunk: B^T along H as one (6x6) @ (6, W*Cin) matmul per tile row, read straight from the input rows
    (edge rows through a small zero-padded copy) into a buffer whose pad columns are zero -> one strided copy
    that unfolds the overlapping 6-column windows -> B^T along W as a matmul over the large contiguous axis ->
    one ``bmm`` (36, tiles, Cin) @ (36, Cin, Cout) -> A^T on both axes as two matmuls -> one strided add
    (bias) that writes the 4x4 tiles into the channels_last output.
"""

from __future__ import annotations

import weakref
from fractions import Fraction
from math import gcd, lcm
from typing import List, Optional, Sequence, Tuple

import torch

from nextscale.accel.workspace import workspace

__all__ = [
    "POINTS",
    "winograd_matrices",
    "transform_weight",
    "winograd_conv3x3",
    "WinogradWeightCache",
    "winograd_eligible",
    "winograd_pays",
    "winograd_conv2d",
    "drop_winograd_cache",
]

POINTS: Tuple[Optional[Fraction], ...] = (Fraction(0), Fraction(1), Fraction(-1), Fraction(1, 2), Fraction(-2), None)
_M, _R = 4, 3  # output tile size, filter size
_N = _M + _R - 1  # input tile size (6)


def _vandermonde(points: Sequence[Optional[Fraction]], k: int) -> List[List[Fraction]]:
    """Rows [1, p, ..., p^(k-1)] per point; the point at infinity (None) gives [0, ..., 0, 1]."""
    return [[Fraction(int(e == k - 1)) for e in range(k)] if p is None else [p**e for e in range(k)] for p in points]


def _inverse(a: List[List[Fraction]]) -> List[List[Fraction]]:
    """Exact Gauss-Jordan inverse over the rationals."""
    n = len(a)
    m = [row[:] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(a)]
    for c in range(n):
        piv = next(r for r in range(c, n) if m[r][c] != 0)
        m[c], m[piv] = m[piv], m[c]
        inv = 1 / m[c][c]
        m[c] = [v * inv for v in m[c]]
        for r in range(n):
            if r != c and m[r][c] != 0:
                f = m[r][c]
                m[r] = [v - f * w for v, w in zip(m[r], m[c])]
    return [row[n:] for row in m]


def winograd_matrices(points: Sequence[Optional[Fraction]] = POINTS):
    """Exact (Fraction) matrices (A^T 4x6, G 6x3, B^T 6x6) of F(4, 3) for the given 6 points (None = infinity).

    For a length-6 input d and a length-3 filter g: ``A^T @ ((G @ g) * (B^T @ d)) == correlate(d, g)``
    (``y[k] = sum_t g[t] d[k + t]``, the operation F.conv2d does along each axis).
    """
    assert len(points) == _N
    va, vg, v = _vandermonde(points, _M), _vandermonde(points, _R), _vandermonde(points, _N)
    at = [list(col) for col in zip(*va)]  # Va^T
    bt = [list(col) for col in zip(*_inverse(v))]  # V^-T
    g = [row[:] for row in vg]
    for i in range(_N):  # scale row i of B^T to the smallest integers, move the scale into row i of G
        row = bt[i]
        s = Fraction(lcm(*[x.denominator for x in row]))
        s /= gcd(*[int(x * s) for x in row])
        bt[i] = [x * s for x in row]
        g[i] = [x / s for x in g[i]]
    return at, g, bt


def _as_tensor(m, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor([[float(x) for x in row] for row in m], dtype=dtype)


_AT_Q, _G_Q, _BT_Q = winograd_matrices()
_AT64, _G64, _BT64 = _as_tensor(_AT_Q), _as_tensor(_G_Q), _as_tensor(_BT_Q)
_AT32, _BT32, _G32 = _AT64.float(), _BT64.float(), _G64.float()


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, 3, 3) -> U (36, Cin, Cout) float32 with ``U[6*a + b] = (G w G^T)[a, b]^T``.

    Two matmuls over the taps-first layout (~50 ms for a 640x640 conv); float32 is exact enough: U differs
    from a float64 transform by ~2e-7 relative, 20x below the Winograd rounding itself."""
    assert weight.dim() == 4 and weight.shape[-2:] == (3, 3), weight.shape
    Cout, Cin = weight.shape[:2]
    # (3i, 3j, Cin*Cout): the 3x3 taps first, so both 1-D transforms are plain matmuls over a long contiguous
    # axis and U comes out in its final layout (no strided scatter of the 36x larger result).
    w = weight.detach().to(device="cpu", dtype=torch.float32).permute(2, 3, 1, 0).reshape(3, 3, Cin * Cout)
    t = torch.matmul(_G32, w)  # along j: (3i, 6b, Cin*Cout)
    u = _G32 @ t.view(3, _N * Cin * Cout)  # along i: (6a, 6b*Cin*Cout)
    return u.view(_N * _N, Cin, Cout).to(weight.device)


def _auto_rows(cin: int, cout: int) -> int:
    """Tiles (GEMM rows) per chunk. Measured at 1 thread (noise ~10%): for 160 channels 128 rows is best (the
    chunk, ~3 MB of transformed input, stays in cache; the GEMMs are no faster with more rows); for 320 channels
    256-512 rows (the GEMMs get ~10% faster and U, 15 MB, is re-read less often)."""
    return 128 if cin * cout <= 160 * 320 else 256


def winograd_conv3x3(
    x: torch.Tensor, U: torch.Tensor, bias: Optional[torch.Tensor], Cout: int, rows_per_chunk: Optional[int] = None
) -> torch.Tensor:
    """``F.conv2d(x, w, bias, padding=1)`` for a 3x3 ``w`` given ``U = transform_weight(w)``; fp32, no autograd.

    x: (B, Cin, H, W) float32 in any memory format (channels_last avoids a copy); returns (B, Cout, H, W) in
    channels_last. Any H, W >= 1: the 4x4 tile grid is padded up and cropped. The tile rows are processed in
    chunks of about ``rows_per_chunk`` tiles (default: ``_auto_rows``), at least one tile row each.
    """
    if torch.is_grad_enabled() and (x.requires_grad or U.requires_grad or (bias is not None and bias.requires_grad)):
        raise RuntimeError("winograd_conv3x3 is inference-only: call it under torch.no_grad() / inference_mode()")
    B, C, H, W = x.shape
    assert x.dtype == torch.float32 and U.shape == (_N * _N, C, Cout), (x.dtype, U.shape, C, Cout)
    dev = x.device
    tH, tW = (H + 3) // 4, (W + 3) // 4
    Wp = 4 * tW + 2  # padded width: input columns -1 .. 4*tW
    xh = x.permute(0, 2, 3, 1)  # (B, H, W, C)
    if not xh.is_contiguous():
        xh = xh.contiguous()
    y = torch.empty((B, Cout, H, W), dtype=torch.float32, device=dev, memory_format=torch.channels_last)
    yh = y.permute(0, 2, 3, 1)  # (B, H, W, Cout), contiguous
    crop_w = W % 4 != 0

    cmax = max(C, Cout)
    rows_per_tile_row = B * tW
    if rows_per_chunk is None:
        rows_per_chunk = _auto_rows(C, Cout)
    n = max(1, min(tH, -(-rows_per_chunk // rows_per_tile_row)))  # tile rows per chunk
    R = n * rows_per_tile_row  # tiles (GEMM rows) per full chunk
    sz_s = B * n * 6 * Wp * C
    sz_t = 36 * R * cmax
    sz_o = 16 * R * Cout
    sz_e = 6 * W * C
    ws = workspace("winograd", sz_s + 2 * sz_t + sz_o + sz_e, dev)
    s_buf, ws = ws[:sz_s], ws[sz_s:]
    t1, ws = ws[:sz_t], ws[sz_t:]
    t2, ws = ws[:sz_t], ws[sz_t:]
    obuf, ws = ws[:sz_o], ws[sz_o:]
    edge = ws[:sz_e].view(6, W, C)
    bt, at = _BT32.to(dev), _AT32.to(dev)

    for ty0 in range(0, tH, n):
        nn = min(n, tH - ty0)
        rr = nn * rows_per_tile_row
        # 1) B^T along H, read straight from the input: for every tile row the 6 input rows 4ty-1 .. 4ty+4 are
        #    one contiguous (6, W*C) matrix; s[b, t, a, 1 + w, c] = sum_i BT[a, i] x[b, 4ty - 1 + i, w, c].
        #    Columns 0 and W+1.. of s are the zero padding (a linear transform of zero columns is zero).
        s = s_buf[: B * nn * 6 * Wp * C].view(B, nn, 6, Wp, C)
        s[:, :, :, 0].zero_()
        s[:, :, :, W + 1 :].zero_()
        for b in range(B):
            for t in range(nn):
                h0 = 4 * (ty0 + t) - 1
                if h0 >= 0 and h0 + 6 <= H:
                    src = xh[b, h0 : h0 + 6]
                else:  # top / bottom tile rows: zero-padded copy of the rows that exist
                    lo, hi = max(h0, 0), min(h0 + 6, H)
                    edge.zero_()
                    edge[lo - h0 : hi - h0].copy_(xh[b, lo:hi])
                    src = edge
                torch.mm(bt, src.view(6, W * C), out=s[b, t, :, 1 : W + 1].view(6, W * C))
        # 2) unfold the overlapping 6-column windows: d[a, j, (b, t, tx, c)] = s[b, t, a, 4tx + j, c]
        ss = s.stride()
        d = t1[: 36 * rr * C].view(6, 6, rr * C)
        d.view(6, 6, B, nn, tW, C).copy_(s.as_strided((6, 6, B, nn, tW, C), (ss[2], ss[3], ss[0], ss[1], 4 * ss[3], 1)))
        # 3) B^T along W: v[a, b'] = sum_j BT[b', j] d[a, j]
        v = t2[: 36 * rr * C].view(6, 6, rr * C)
        torch.matmul(bt, d, out=v)
        # 4) the 36 GEMMs (tiles, Cin) @ (Cin, Cout)
        m = t1[: 36 * rr * Cout].view(36, rr, Cout)
        torch.bmm(v.view(36, rr, C), U, out=m)
        # 5) A^T on both axes: (6a, 6b, N) -> (4r, 6b, N) -> (4r, 4s, N)
        f = t2[: 24 * rr * Cout].view(4, 6, rr * Cout)
        torch.mm(at, m.view(6, 6 * rr * Cout), out=f.view(4, 6 * rr * Cout))
        o = obuf[: 16 * rr * Cout].view(4, 4, rr * Cout)
        torch.matmul(at, f, out=o)
        # 6) scatter the 4x4 tiles (+ bias) into the NHWC output
        ot = o.view(4, 4, B, nn, tW, Cout).permute(2, 3, 0, 4, 1, 5)  # (B, ty, r, tx, s, Cout)
        h0, h1 = 4 * ty0, min(4 * (ty0 + nn), H)
        if h1 - h0 == 4 * nn and not crop_w:
            dst = yh[:, h0:h1].view(B, nn, 4, tW, 4, Cout)
            if bias is not None:
                torch.add(ot, bias, out=dst)
            else:
                dst.copy_(ot)
        else:
            src = ot.reshape(B, 4 * nn, 4 * tW, Cout)[:, : h1 - h0, :W]
            if bias is not None:
                torch.add(src, bias, out=yh[:, h0:h1])
            else:
                yh[:, h0:h1].copy_(src)
    return y


class WinogradWeightCache:
    """Holds U = transform_weight(weight) for one conv weight; recomputed when the weight changes.

    The key is (the weight object, its data_ptr, its ``_version``, shape, dtype, device): in-place updates that go
    through autograd's version counter (``with torch.no_grad(): w.copy_(...)``, ``load_state_dict``, optimizer
    steps) and swapping the parameter or its storage all invalidate it. Writes through ``weight.data`` bypass
    the version counter and are NOT seen: call ``invalidate()`` after those.
    """

    __slots__ = ("_ref", "_key", "U")

    def __init__(self):
        self._ref, self._key, self.U = None, None, None

    def get(self, weight: torch.Tensor) -> torch.Tensor:
        key = (weight.data_ptr(), weight._version, tuple(weight.shape), weight.dtype, weight.device)
        if self.U is None or key != self._key or self._ref is None or self._ref() is not weight:
            self.U = transform_weight(weight)
            self._key, self._ref = key, weakref.ref(weight)
        return self.U

    def invalidate(self) -> None:
        self._ref, self._key, self.U = None, None, None


def winograd_eligible(conv: torch.nn.Module) -> bool:
    """True for an nn.Conv2d this module computes: 3x3, stride 1, zero padding 1, dilation 1, groups 1."""
    return (
        isinstance(conv, torch.nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def winograd_pays(cin: int, cout: int, h: int, w: int) -> bool:
    """Whether Winograd beats the direct (oneDNN) conv for this layer on CPU: the 36 GEMMs have K = Cin,
    so with few channels the transforms, which cost ~C per pixel, outweigh the 4x saving in multiplies.

    Measured (2-core AVX2 machine, batch 1, square HxW, Cin = Cout; direct / Winograd time, >1 = Winograd
    faster; ``benchmarks/bench_winograd.py --threads 2 --shapes ...``):

        C \\ HxW   4      8      16     32     64
        64        0.45   0.41   0.49   0.79   0.90
        128       0.78   0.87   0.96   1.28   1.64
        160       0.66   1.07   1.00   1.48   1.78
        320       1.32   1.18   1.76   1.91   2.33
        640       1.30   1.52   2.02   2.83   3.02

    So: at least 128 channels, and either at least 320 or a 32x32 or larger map."""
    c = min(cin, cout)
    return c >= 128 and (c >= 320 or h * w >= 32 * 32)


def winograd_conv2d(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` via Winograd for an eligible conv (inference only); U is cached on the module as a plain
    attribute ``_winograd_cache`` (not a parameter or buffer, so the state_dict is unchanged)."""
    cache = conv.__dict__.get("_winograd_cache")
    if cache is None:
        cache = WinogradWeightCache()
        conv.__dict__["_winograd_cache"] = cache
    return winograd_conv3x3(x, cache.get(conv.weight), conv.bias, conv.out_channels)


def drop_winograd_cache(conv: torch.nn.Conv2d) -> None:
    """Free the transformed weights ``winograd_conv2d`` cached on ``conv`` (if any)."""
    conv.__dict__.pop("_winograd_cache", None)
