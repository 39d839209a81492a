"""``nextscale study scaling`` / ``nextscale study ar-vs-var``: thin front ends of :mod:`nextscale.app.study`.

    nextscale study scaling --out runs/science/scaling --threads 1          # 5 VAR sizes on MNIST
    nextscale study ar-vs-var --out runs/science/ar_vs_var --var-model default --threads 1
    nextscale study scaling --out /tmp/q --quick                             # plumbing check (< 90 s)

Re-running the same command continues (finished runs and evaluations are reused). Under torchrun
every rank trains and the main rank evaluates (see docs/science.md for the ImageNet commands). The
flags are generated from :class:`~nextscale.app.study.ScalingStudyConfig` and
:class:`~nextscale.app.study.ArVsVarStudyConfig` (the recipe's defaults are the study's, written once).
"""

from __future__ import annotations

import json
import sys

__all__ = ["run"]


def run(c) -> int:
    from nextscale.app.study import ScalingStudyConfig, ar_vs_var_study, scaling_study

    recipe = None if c.quick else c.recipe
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    common = dict(device=c.device, quick=c.quick, progress=c.progress, threads=c.threads, log=log)
    if isinstance(c, ScalingStudyConfig):
        r = scaling_study(
            c.out,
            c.data,
            tokenizer=c.tokenizer,
            cache=c.cache,
            depths=tuple(c.depths),
            width_per_depth=c.width_per_depth,
            recipe=recipe,
            train=not c.report_only,
            **common,
        )
        if r:
            f = r["fits"]["test_loss"]
            print(
                f"test loss = ({f['beta']:.4g} N)^{f['alpha']:.4f}, Pearson r = {f['r']:.4f} over {len(r['points'])} "
                f"sizes; wrote {c.out}/scaling.json, scaling.md, scaling.png"
            )
        return 0
    r = ar_vs_var_study(
        c.out,
        c.data,
        var_tokenizer=c.var_tokenizer,
        ar_tokenizer=c.ar_tokenizer,
        var_model=c.var_model,
        depth=c.depth,
        width=c.width or None,
        heads=c.heads or None,
        recipe=recipe,
        tokenizer_steps=c.tokenizer_steps,
        per_class=c.per_class,
        settings=c.settings,
        classifier=c.classifier,
        inception_weights=c.inception_weights,
        inception_ref=c.inception_ref,
        **common,
    )
    if r:
        rows = {
            k: {m: r["rows"][k].get(m) for m in ("class_accuracy", "fid_ratio", "seconds_per_image_b1")}
            for k in ("VAR", "AR")
        }
        print(json.dumps(rows))
        print(f"wrote {c.out}/ar_vs_var.json, ar_vs_var.md, ar_vs_var.png")
    return 0
