"""The --mode / --modes spec shared by bench_inference.py and default_model_report.py.

cutoff:N          guidance_cutoff=N           (the last N scales without guidance)
prune:R[@LAST]    prune_ratio=R, prune_last   (token pruning at the last scales)
kv:FIRST,RECENT   kv_budget=(FIRST, RECENT)
refiner:X@K       refiner=make_refiner(X), refine_from_scale=K
candidates:N[@S]  num_candidates=N, scorer=S or "default"   (rejection sampling; pipelines only)
fp32, bf16, int8  precision=... (default_model_report.py: a fresh pipeline in that precision; bench_inference.py
                  takes the precision from --dtype instead)
exact             nothing; parts join with '+', e.g. cutoff:2+prune:0.5, bf16+cutoff:2+prune:0.5
"""

from typing import Callable, Dict

SETTINGS_KEYS = ("guidance_cutoff", "prune_ratio", "prune_last", "kv_budget")


def parse_mode(spec: str, make_refiner: Callable[[str], object]) -> Dict[str, object]:
    """The pipeline keywords for ``spec`` (``SETTINGS_KEYS`` are ``SamplingSettings`` fields)."""
    kw: Dict[str, object] = {}
    for part in spec.split("+"):
        name, _, val = part.partition(":")
        if name == "exact":
            continue
        if name in ("fp32", "bf16", "int8") and not val:
            kw["precision"] = name
            continue
        if name == "cutoff":
            kw["guidance_cutoff"] = int(val)
        elif name == "prune":
            r, _, last = val.partition("@")
            kw["prune_ratio"] = float(r)
            if last:
                kw["prune_last"] = int(last)
        elif name == "kv":
            kw["kv_budget"] = tuple(int(v) for v in val.split(","))
        elif name == "refiner":
            what, _, k = val.rpartition("@")
            kw["refiner"], kw["refine_from_scale"] = make_refiner(what), int(k)
        elif name == "candidates":
            n, _, scorer = val.partition("@")
            kw["num_candidates"], kw["scorer"] = int(n), scorer or "default"
        else:
            raise SystemExit(
                f"mode {spec!r}: unknown part {name!r} (cutoff:N, prune:R[@LAST], kv:F,R, refiner:X@K, "
                f"candidates:N[@SCORER], fp32, bf16, int8)"
            )
    return kw
