"""Train the GenEval-style evaluator's scene judge, measure it, write src/nextscale/assets/scene_judge.safetensors.

    OMP_NUM_THREADS=1 python tools/train_scene_judge.py                  # 9-15 min on one CPU thread
    python tools/train_scene_judge.py --out /tmp/judge.safetensors --steps 200 --scenes 500   # a quick try

The judge's scenes (nextscale.evaluation.scene_judge.render_pool) use their own seed (2417), every class / colour /
relation (no held-out sets) and the digit images of the train pool. It is measured on renders it never saw: the
evaluation prompts' reference scenes (digits of the evaluation pool) at the 4- and 5-scale bucket sizes, a fresh set
of test / heldout scenes (seed 90210) clean, and the same blurred + noised; the real-render baseline of
nextscale.evaluation.geneval closes the report. Everything is printed as markdown (and saved as JSON with
``--report``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageFilter

from nextscale.data_t2i import bucket_for
from nextscale.evaluation import geneval
from nextscale.evaluation import scene_judge as sj
from nextscale.scenes import SceneConfig, eval_prompts, render, sample_spec

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "src", "nextscale", "assets", "scene_judge.safetensors")


def degrade(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Mild imperfections: a Gaussian blur (radius 0.5-1 px) and pixel noise (std 4-10 / 255)."""
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.0))))
    a = np.asarray(img, np.float64) + rng.normal(0, rng.uniform(4, 10), (img.size[1], img.size[0], 3))
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def measure(judge, n_fresh: int = 1000) -> dict:
    out = {}
    prompts = eval_prompts()
    for ns in (4, 5):
        ims = [render(p.spec, bucket_for(p.spec.h_div_w, "0.06M", ns).image_hw) for p in prompts]
        out[f"eval_prompts_{ns}scales"] = sj.judge_accuracy(judge, [p.spec for p in prompts], ims)
    rng = np.random.default_rng(90210)
    cfg = SceneConfig()
    specs = [sample_spec(rng, cfg, ("test", "heldout")[i % 2]) for i in range(n_fresh)]
    sizes = [bucket_for(s.h_div_w, "0.06M", int(rng.integers(4, 7))).image_hw for s in specs]
    ims = [render(s, hw) for s, hw in zip(specs, sizes)]
    out["fresh_clean"] = sj.judge_accuracy(judge, specs, ims)
    out["fresh_blur_noise"] = sj.judge_accuracy(judge, specs, [degrade(im, rng) for im in ims])
    return out


def table(acc: dict) -> str:
    keys = ["images", "objects", "recall", "precision", "count", "class", "colour", "size", "position", "scene"]
    lines = ["| render set | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, a in acc.items():
        cells = [str(a[k]) if isinstance(a[k], int) else f"{100 * a[k]:.1f} %" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--report", default=None, help="also write the measurements as JSON here")
    ap.add_argument("--scenes", type=int, default=8000)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=2417)
    ap.add_argument("--fresh", type=int, default=1000, help="fresh test / heldout scenes to measure on")
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t0 = time.perf_counter()
    judge = sj.train_judge(a.scenes, a.steps, a.batch_size, a.lr, a.seed, verbose=True)
    minutes = (time.perf_counter() - t0) / 60
    print(f"trained in {minutes:.1f} min on {torch.get_num_threads()} thread(s)", flush=True)
    acc = measure(judge, a.fresh)
    print(table(acc), flush=True)
    base = geneval.evaluate_t2i(geneval.real_renders(exact=True), judge=judge, pass_prompts=True, fid=False)
    shuf = geneval.evaluate_t2i(
        geneval.mismatched(geneval.real_renders(exact=True), eval_prompts()), judge=judge, pass_prompts=True, fid=False
    )
    print("\nreal renders (exact reference scenes):\n" + base.table(), flush=True)
    print("\nmismatched prompt / image pairs:\n" + shuf.table(), flush=True)
    info = {"minutes": round(minutes, 2), "threads": torch.get_num_threads(), "torch": torch.__version__}
    sj.save_judge(judge, a.out, extra=info)
    if a.report:
        with open(a.report, "w", encoding="utf-8") as f:
            json.dump({"train_info": {**judge.train_info, **info}, "accuracy": acc, "real_renders": base.scores,
                       "mismatched": shuf.scores}, f, indent=1)  # fmt: skip
    print(f"wrote {a.out} ({os.path.getsize(a.out) / 1e6:.2f} MB)" + (f" and {a.report}" if a.report else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
