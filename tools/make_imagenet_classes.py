"""Build src/nextscale/assets/imagenet_classes.json, the 1,000 ImageNet-1k class names in the index
order of the released VAR models (the standard sorted-synset order), from packages' data files:

    pip download --no-deps torchvision timm -d /tmp/wheels
    python tools/make_imagenet_classes.py /tmp/wheels/torchvision-*.whl /tmp/wheels/timm-*.whl

- names: torchvision's ``_IMAGENET_CATEGORIES`` (short, unique names: "golden retriever" = 207);
- synsets and aliases: timm's ``imagenet_synsets.txt`` and ``imagenet_synset_to_lemma.txt``
  (WordNet lemmas, e.g. "tench, Tinca tinca"), used to match other spellings.
Nothing is fetched at run time: the JSON is committed and shipped with the package.
"""

import ast
import json
import sys
import zipfile


def _read(whl: str, suffix: str) -> str:
    with zipfile.ZipFile(whl) as z:
        (name,) = [n for n in z.namelist() if n.endswith(suffix)]
        return z.read(name).decode("utf-8")


def main(tv_whl: str, timm_whl: str, out: str = "src/nextscale/assets/imagenet_classes.json") -> None:
    tree = ast.parse(_read(tv_whl, "torchvision/models/_meta.py"))
    names = next(
        ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "_IMAGENET_CATEGORIES"
    )
    synsets = _read(timm_whl, "_info/imagenet_synsets.txt").split()
    lemma = dict(
        line.split("\t", 1)
        for line in _read(timm_whl, "_info/imagenet_synset_to_lemma.txt").splitlines()
        if "\t" in line
    )
    assert len(names) == len(synsets) == 1000 and len(set(names)) == 1000, (len(names), len(synsets))
    rows = [
        {"name": n, "synset": s, "aliases": [a.strip() for a in lemma[s].split(",") if a.strip() and a.strip() != n]}
        for n, s in zip(names, synsets)
    ]
    with open(out, "w") as f:
        json.dump(
            {
                "source": "torchvision _IMAGENET_CATEGORIES (names), timm imagenet_synsets / synset_to_lemma "
                "(synsets, aliases); tools/make_imagenet_classes.py",
                "classes": rows,
            },
            f,
            indent=0,
        )
        f.write("\n")
    print(f"wrote {out}: {len(rows)} classes; 207 = {rows[207]['name']!r}, 360 = {rows[360]['name']!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
