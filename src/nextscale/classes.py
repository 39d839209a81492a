"""Class names: ImageNet-1k's, shipped with the package, and name -> id lookup for any model.

``imagenet_class_names()`` are the 1,000 names in the index order of the released VAR models
(``assets/imagenet_classes.json``, built by tools/make_imagenet_classes.py from torchvision's and
timm's data files; never fetched at run time): 207 is "golden retriever", 360 "otter". A model's
names are its pipeline's ``labels``; for ImageNet models the WordNet lemmas are accepted as
aliases ("Tinca tinca" = "tench").
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from importlib import resources
from typing import Dict, List, Optional, Sequence, Tuple

from nextscale.errors import FieldError, FieldName

__all__ = ["imagenet_class_names", "imagenet_aliases", "class_lookup", "resolve_class_name", "grep_classes"]


@functools.lru_cache(maxsize=1)
def _imagenet() -> Tuple[Tuple[str, ...], Dict[str, int]]:
    text = resources.files("nextscale").joinpath("assets/imagenet_classes.json").read_text(encoding="utf-8")
    rows = json.loads(text)["classes"]
    names = tuple(r["name"] for r in rows)
    aliases: Dict[str, int] = {}
    for i, r in enumerate(rows):
        for a in r["aliases"]:
            aliases.setdefault(_norm(a), i)  # a lemma shared by two synsets names the first
    return names, aliases


def imagenet_class_names() -> List[str]:
    return list(_imagenet()[0])


def imagenet_aliases() -> Dict[str, int]:
    """Normalised alias -> class id (WordNet lemmas that differ from the short names)."""
    return dict(_imagenet()[1])


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.replace("_", " ").strip().lower())


def class_lookup(labels: Sequence[str]) -> Dict[str, int]:
    """Normalised name (and, for the ImageNet names, alias) -> id."""
    table = {}
    if list(labels) == list(_imagenet()[0]):
        table.update(_imagenet()[1])
    table.update({_norm(n): i for i, n in enumerate(labels)})  # names win over aliases
    return table


def resolve_class_name(name: str, labels: Optional[Sequence[str]], what: str = "class_labels") -> int:
    """The id of class ``name`` (case and spacing ignored); a misspelt name gets the closest ones."""
    if not labels:
        raise FieldError(
            FieldName(what), f": {name!r} is a name, but this model has no class names; give an integer class id"
        )
    table = class_lookup(labels)
    key = _norm(name)
    if key in table:
        return table[key]
    near = difflib.get_close_matches(key, list(table), n=3, cutoff=0.6)
    hint = (
        ("; did you mean " + " or ".join(f"{labels[table[k]]!r} ({table[k]})" for k in near) + "?")
        if near
        else "; list them with the classes command (nextscale classes MODEL)"
    )
    raise FieldError(FieldName(what), f": no class named {name!r}{hint}")


def grep_classes(labels: Sequence[str], word: Optional[str] = None) -> List[Tuple[int, str]]:
    """(id, name) of every class, or of those whose name (or ImageNet alias) contains ``word``."""
    if not word:
        return list(enumerate(labels))
    w = _norm(word)
    hits = {i for i, n in enumerate(labels) if w in _norm(n)}
    if list(labels) == list(_imagenet()[0]):
        hits |= {i for a, i in _imagenet()[1].items() if w in a}
    return [(i, labels[i]) for i in sorted(hits)]
