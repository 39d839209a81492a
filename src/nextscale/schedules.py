"""Scale schedules: Infinity's dynamic-resolution tables and aspect-ratio handling, VAR's square schedules.

Glossary: a *schedule* is a list of token grids ``(h, w)``, coarse to fine, one per scale (no temporal entry;
Infinity's table stores ``(t, h, w)`` and the released scripts replace t by 1). ``h_div_w`` is height / width.
*pn* names the image size class of a schedule: ``'0.06M'`` (~256 px), ``'0.25M'`` (~512 px), ``'0.60M'`` (~768 px),
``'1M'`` (~1024 px).

How Infinity's table is made (re-derived here; equal to the official ``dynamic_resolution_h_w``, a test checks it):

* 8 base shapes h:w = 1:1, 5:4, 4:3, 3:2, 7:4, 2:1, 5:2, 3:1, each with one hand-picked 13-scale grid (the 1M
  schedule, :data:`_BASE_GRIDS`). The picks are not a formula (e.g. 7:4 has an 11x6 scale), so they are data.
* Every base shape but 1:1 also gives its transpose (w:h) with the grids transposed: 15 templates.
* A template's value is h/w truncated (not rounded) to 3 decimals: 2:3 -> 0.666, 4:7 -> 0.571.
* The pn classes are prefixes of the 13 scales: 7, 10, 12 and 13 scales. Their ``pixel`` size is the last grid
  times 16 (the tokenizer's pixels per token; the 8x-downsampling, 2x2-patchified tokenizer lands on the same size).
* The temporal entries are fixed per scale index: 1..7, 9, 11, 13, 15, 17, 21 (unused for images).

Aspect ratios given by a user are mapped to the nearest template by absolute difference of h/w (what the
official scripts do), the first template in table order winning a tie.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from nextscale.errors import InputError

__all__ = [
    "PN_CLASSES",
    "TEMPLATES",
    "AspectRatio",
    "parse_aspect_ratio",
    "nearest_template",
    "template_key",
    "dynamic_resolution_table",
    "scale_schedule",
    "tokenizer_schedule",
    "image_size",
    "rope_grid_schedule",
    "num_tokens",
    "var_schedule",
]

Schedule = List[Tuple[int, int]]

# h:w of the base shapes -> (heights, widths) of their 13 scales (the 1M schedule). Order matters: it is the
# table's order (each base shape followed by its transpose).
_BASE_GRIDS: Dict[Tuple[int, int], Tuple[Tuple[int, ...], Tuple[int, ...]]] = {
    (1, 1): ((1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64), (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)),
    (5, 4): ((1, 2, 3, 5, 10, 15, 20, 25, 30, 35, 45, 55, 70), (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 36, 44, 56)),
    (4, 3): ((1, 2, 4, 8, 12, 16, 20, 24, 28, 36, 48, 60, 72), (1, 2, 3, 6, 9, 12, 15, 18, 21, 27, 36, 45, 54)),
    (3, 2): ((1, 2, 3, 6, 9, 15, 21, 27, 33, 39, 48, 63, 78), (1, 2, 2, 4, 6, 10, 14, 18, 22, 26, 32, 42, 52)),
    (7, 4): ((1, 2, 3, 7, 11, 14, 21, 28, 35, 42, 56, 70, 84), (1, 2, 3, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48)),
    (2, 1): ((1, 2, 4, 6, 10, 16, 22, 30, 38, 46, 60, 74, 90), (1, 2, 2, 3, 5, 8, 11, 15, 19, 23, 30, 37, 45)),
    (5, 2): ((1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 65, 80, 100), (1, 2, 2, 4, 6, 8, 10, 12, 16, 20, 26, 32, 40)),
    (3, 1): ((1, 2, 6, 9, 15, 21, 27, 36, 45, 54, 72, 90, 111), (1, 2, 2, 3, 5, 7, 9, 12, 15, 18, 24, 30, 37)),
}
#: pn class -> number of scales (a prefix of the 13-scale grid).
PN_CLASSES: Dict[str, int] = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}
_PN_ALIASES = {
    "0.6M": "0.60M",
    "1.0M": "1M",
    "0.060M": "0.06M",
    "256": "0.06M",
    "512": "0.25M",
    "768": "0.60M",
    "1024": "1M",
}
# temporal index of each scale in the official table (kept only so the table can be reproduced exactly)
_T_PER_SCALE = (1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 15, 17, 21)
# image pixels per token of the table's grids (`pixel` = last grid * 16)
_PIXELS_PER_TOKEN = 16


def _truncate3(num: int, den: int) -> float:
    # integer floor: 2/3 -> 0.666 exactly as the official keys (a float product could land on 665.999...)
    return (1000 * num // den) / 1000


def _templates() -> Dict[float, Schedule]:
    out: Dict[float, Schedule] = {}
    for (p, q), (hs, ws) in _BASE_GRIDS.items():
        out[_truncate3(p, q)] = list(zip(hs, ws))
        if p != q:
            out[_truncate3(q, p)] = list(zip(ws, hs))
    return out


_GRIDS: Dict[float, Schedule] = _templates()
#: The 15 template h/w values in table order: 1.0, 1.25, 0.8, 1.333, 0.75, ..., 3.0, 0.333.
TEMPLATES: Tuple[float, ...] = tuple(_GRIDS)


def template_key(h_div_w_template: float) -> str:
    """The table's string key of a template (``'%.3f'``), e.g. ``0.75 -> '0.750'``."""
    return "%.3f" % h_div_w_template


def dynamic_resolution_table() -> Dict[str, Dict[str, dict]]:
    """The official table, freshly built: ``'%.3f' % h_div_w -> pn -> {'pixel': [H, W], 'scales': [[t, h, w]]}``."""
    table = {}
    for tpl, grid in _GRIDS.items():
        table[template_key(tpl)] = {
            pn: {
                "pixel": [grid[n - 1][0] * _PIXELS_PER_TOKEN, grid[n - 1][1] * _PIXELS_PER_TOKEN],
                "scales": [[t, h, w] for t, (h, w) in zip(_T_PER_SCALE, grid[:n])],
            }
            for pn, n in PN_CLASSES.items()
        }
    return table


@dataclass(frozen=True)
class AspectRatio:
    """A parsed aspect ratio: what was asked (``requested`` h/w) and the template chosen (``h_div_w``)."""

    requested: float
    h_div_w: float

    @property
    def key(self) -> str:
        return template_key(self.h_div_w)

    @property
    def exact(self) -> bool:
        return abs(self.requested - self.h_div_w) < 1e-3

    def describe(self) -> str:
        """One line for logs / CLIs, e.g. ``aspect h/w 0.5625 -> template 0.571 (h:w 4:7)``."""
        return f"aspect h/w {self.requested:.4g} -> template {self.key} (h:w {_fraction(self.h_div_w)})"


def _fraction(tpl: float) -> str:
    for p, q in _BASE_GRIDS:
        for a, b in ((p, q), (q, p)):
            if _truncate3(a, b) == tpl:
                return f"{a}:{b}"
    return f"{tpl:.3f}"


_RATIO_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([:x/])\s*(\d+(?:\.\d*)?|\.\d+)\s*$")


def _positive(v: float, name: str, given) -> float:
    if not (math.isfinite(v) and v > 0):
        raise InputError(f"{name} must be a positive finite aspect ratio, got {given!r}")
    return float(v)


def _requested_h_div_w(aspect, name: str) -> float:
    if isinstance(aspect, AspectRatio):
        return aspect.h_div_w
    if isinstance(aspect, bool):
        raise InputError(f"{name} must be an aspect ratio ('16:9', an h/w number or an (h, w) pair), got {aspect!r}")
    if isinstance(aspect, numbers.Real):
        return _positive(float(aspect), name, aspect)
    if isinstance(aspect, str):
        s = aspect.strip()
        m = _RATIO_RE.match(s)
        if m:
            a, sep, b = float(m.group(1)), m.group(2), float(m.group(3))
            a, b = _positive(a, name, aspect), _positive(b, name, aspect)
            # 'W:H' and 'WxH' are width first (as screens and cameras say: 16:9 is landscape); 'h/w' is a quotient
            return b / a if sep in ":x" else a / b
        try:
            return _positive(float(s), name, aspect)
        except ValueError:
            pass
        raise InputError(
            f"{name} must look like '16:9' (width:height), '1024x576' (width x height) or an h/w number "
            f"such as 0.75, got {aspect!r}"
        )
    if (
        isinstance(aspect, (tuple, list))
        and len(aspect) == 2
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in aspect)
    ):
        h, w = (_positive(float(v), name, aspect) for v in aspect)
        return h / w
    raise InputError(f"{name} must be an aspect ratio ('16:9', an h/w number or an (h, w) pair), got {aspect!r}")


def nearest_template(h_div_w: float) -> float:
    """The template nearest to ``h_div_w`` (absolute difference; ties go to the earlier template in table order)."""
    return min(TEMPLATES, key=lambda t: abs(h_div_w - t))  # min keeps the first minimum, like numpy.argmin


def parse_aspect_ratio(aspect, name: str = "aspect_ratio") -> AspectRatio:
    """Parse ``aspect`` and choose the nearest template.

    Accepted: ``'W:H'`` / ``'WxH'`` strings (width first: ``'16:9'`` is landscape, h/w 0.5625), ``'h/w'`` strings,
    a number (h/w, Infinity's convention: 0.75 is landscape 4:3), an ``(h, w)`` pair, or an :class:`AspectRatio`.
    ``name`` is the argument's name used in the error message. The result says which template was chosen
    (``.h_div_w``, ``.key``, ``.describe()``).
    """
    requested = _requested_h_div_w(aspect, name)
    return AspectRatio(requested=requested, h_div_w=nearest_template(requested))


def canonical_pn(pn) -> str:
    key = str(pn).strip()
    if key in PN_CLASSES:
        return key
    key = _PN_ALIASES.get(key, _PN_ALIASES.get(key.upper(), key))
    if key not in PN_CLASSES:
        raise InputError(f"pn must be one of {', '.join(repr(p) for p in PN_CLASSES)}, got {pn!r}")
    return key


def scale_schedule(h_div_w, pn="1M", n_scales: int = None) -> Schedule:
    """The transformer's schedule ``[(h, w), ...]`` for an aspect ratio (anything :func:`parse_aspect_ratio`
    accepts; mapped to the nearest template) and a pn class; ``n_scales`` keeps the first scales only."""
    tpl = parse_aspect_ratio(h_div_w, "h_div_w").h_div_w
    full = _GRIDS[tpl][: PN_CLASSES[canonical_pn(pn)]]
    if n_scales is None:
        return list(full)
    if isinstance(n_scales, bool) or not isinstance(n_scales, numbers.Integral) or not 1 <= n_scales <= len(full):
        raise InputError(f"n_scales must be an int in [1, {len(full)}] for pn {pn!r}, got {n_scales!r}")
    return list(full[: int(n_scales)])


def rope_grid_schedule(h_div_w) -> Schedule:
    """The schedule that defines the RoPE grid of an aspect ratio: its 1M schedule, whatever pn is sampled
    (the last 1M scale is the reference grid; README 4.5)."""
    return scale_schedule(h_div_w, "1M")


def _check_schedule(schedule, name: str = "schedule") -> Schedule:
    try:
        out = [(int(h), int(w)) for h, w in schedule]
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a list of (h, w) pairs, got {schedule!r}") from None
    if (
        not out
        or any(h < 1 or w < 1 for h, w in out)
        or any((h, w) != (hh, ww) for (h, w), (hh, ww) in zip(out, schedule))
    ):
        raise InputError(f"{name} must be a non-empty list of positive integer (h, w) pairs, got {schedule!r}")
    return out


def tokenizer_schedule(schedule: Sequence[Tuple[int, int]], patchify: bool) -> Schedule:
    """The tokenizer's schedule for a transformer schedule: the same grids, or doubled in h and w when the
    transformer works on 2x2-patchified tokens (the 8B model: d' = 4 d bits per transformer token)."""
    s = _check_schedule(schedule)
    return [(2 * h, 2 * w) for h, w in s] if patchify else s


def image_size(schedule: Sequence[Tuple[int, int]], patch_size: int) -> Tuple[int, int]:
    """Image (H, W) in pixels for a *tokenizer* schedule: its last grid times the tokenizer's patch size."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, numbers.Integral) or patch_size < 1:
        raise InputError(f"patch_size must be a positive int, got {patch_size!r}")
    h, w = _check_schedule(schedule)[-1]
    return h * int(patch_size), w * int(patch_size)


def num_tokens(schedule: Sequence[Tuple[int, int]]) -> int:
    """L: tokens of all scales."""
    return sum(h * w for h, w in _check_schedule(schedule))


def var_schedule(patch_nums: Sequence[int]) -> Schedule:
    """VAR's square ``patch_nums`` (side lengths) as a schedule of ``(pn, pn)`` grids."""
    return _check_schedule([(p, p) for p in patch_nums], "patch_nums")
