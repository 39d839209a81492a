"""Acceptance demo for tokenizer training (CPU, a few minutes): real photo crops, held-out PSNR.

Data: the photos that scikit-image and scikit-learn ship (no download). Every photo is converted to
RGB, its shorter side resized to 192 px, and cut into 36x36 crops (the loader random-crops 32x32 in
training, center-crops for evaluation): training crops from the top 80 % of each photo, held-out
crops from the bottom 20 % (no pixel of a held-out crop is ever seen in training).

Three tokenizers with the same architecture and codebook (pinned here: the ``mnist`` preset's
encoder/decoder at width 32 with one residual block per level, V = 256, Cvae = 16, 32 px images, 8x8 latent):

* ``untrained``: the freshly initialised model (seeded), evaluated as is;
* ``multi-scale``: trained with the 5-scale schedule (1, 2, 4, 6, 8);
* ``1-scale``: the same training on a schedule with only the last scale (8) - a plain VQ-VAE.

Both trainings use the defaults of ``nextscale train-tokenizer`` (L2 pixel loss + VQ loss with
beta 0.25) except: batch 16, lr 2e-3, dead-code re-initialisation every 20 steps, and no GAN
(``--disc-weight 0``: the recipe starts its discriminator after 20000 steps; a few minutes of CPU
are far below that, and an adversarial term only lowers PSNR)::

    python benchmarks/train_tokenizer_demo.py --out /tmp/tokdemo --steps 600
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image

ARCH = ["--preset", "mnist", "--ch", "32", "--num-res-blocks", "1", "--vocab-size", "256", "--z-channels", "16"]


def photos():
    import skimage
    from sklearn.datasets import load_sample_images

    d = os.path.join(os.path.dirname(skimage.__file__), "data")
    names = [
        "astronaut.png",
        "brick.png",
        "camera.png",
        "chelsea.png",
        "coffee.png",
        "coins.png",
        "grass.png",
        "gravel.png",
        "hubble_deep_field.jpg",
        "ihc.png",
        "moon.png",
        "motorcycle_left.png",
        "retina.jpg",
        "rocket.jpg",
        "page.png",
        "text.png",
        "horse.png",
        "color.png",
    ]
    out = []
    for n in names:
        p = os.path.join(d, n)
        if os.path.isfile(p):
            out.append((n.split(".")[0], Image.open(p).convert("RGB")))
    for i, arr in enumerate(load_sample_images().images):
        out.append((f"sklearn{i}", Image.fromarray(arr).convert("RGB")))
    return out


def make_crops(root: str, size: int = 36, short: int = 192, n_train: int = 200, n_val: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    counts = {"train": 0, "val": 0}
    for split in ("train", "val"):
        os.makedirs(os.path.join(root, split, "photos"), exist_ok=True)
    for name, im in photos():
        w, h = im.size
        s = short / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.LANCZOS)
        a = np.asarray(im)
        H, W = a.shape[:2]
        cut = int(H * 0.8)
        for split, (y0, y1), n in (("train", (0, cut), n_train), ("val", (cut, H), n_val)):
            for j in range(n):
                y = int(rng.integers(y0, max(y0 + 1, y1 - size + 1)))
                x = int(rng.integers(0, W - size + 1))
                crop = a[y : y + size, x : x + size]
                if crop.shape[:2] != (size, size):
                    continue
                Image.fromarray(crop).save(os.path.join(root, split, "photos", f"{name}_{j:03d}.png"))
                counts[split] += 1
    return counts


def run(cmd, log):
    t = time.time()
    with open(log, "w") as f:
        rc = subprocess.call(
            [sys.executable, "-m", "nextscale"] + cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    if rc != 0:
        raise SystemExit(f"failed ({rc}): nextscale {' '.join(cmd)}; see {log}")
    return time.time() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/tokdemo")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    data = os.path.join(a.out, "data")
    if not os.path.isdir(os.path.join(data, "val")):
        counts = make_crops(data)
    else:
        counts = {s: len(os.listdir(os.path.join(data, s, "photos"))) for s in ("train", "val")}
    print("crops:", counts, flush=True)
    res = {"crops": counts, "steps": a.steps, "batch_size": a.batch_size, "lr": a.lr}

    # untrained: the same seeded initialisation the multi-scale run starts from
    from nextscale.hub import save_tokenizer
    from nextscale.train.config import TokenizerTrainConfig
    from nextscale.train.tokenizer import build_vae

    vae = build_vae(
        TokenizerTrainConfig(data=data, preset="mnist", ch=32, num_res_blocks=1, vocab_size=256, z_channels=16, seed=0)
    ).eval()
    save_tokenizer(vae, os.path.join(a.out, "untrained"))

    common = [
        "--data",
        data,
        "--steps",
        str(a.steps),
        "--batch-size",
        str(a.batch_size),
        "--lr",
        str(a.lr),
        "--disc-weight",
        "0",
        "--reinit-dead-every",
        "20",
        "--log-every",
        "20",
        "--eval-every",
        "0",
        "--sample-every",
        "0",
        "--ckpt-every",
        str(a.steps),
        "--no-progress",
    ] + ARCH
    runs = {"multi-scale": [], "1-scale": ["--patch-nums", "8"]}
    for name, extra in runs.items():
        d = os.path.join(a.out, name)
        dt = run(["train-tokenizer", "--out", d] + common + extra, os.path.join(a.out, f"{name}.train.log"))
        res.setdefault("train_seconds", {})[name] = round(dt, 1)
        print(f"trained {name} in {dt:.0f}s", flush=True)
    models = {
        "untrained": os.path.join(a.out, "untrained"),
        "multi-scale": os.path.join(a.out, "multi-scale", "tokenizer"),
        "1-scale": os.path.join(a.out, "1-scale", "tokenizer"),
    }
    for name, m in models.items():
        js = os.path.join(a.out, f"{name}.eval.json")
        pic = os.path.join(a.out, f"{name}.scales.png")
        run(
            ["eval-tokenizer", m, "--data", data, "--json", js, "--picture", pic, "--no-rfid"],
            os.path.join(a.out, f"{name}.eval.log"),
        )
        with open(js) as f:
            res[name] = json.load(f)
        r = res[name]
        print(
            f"{name:12s} PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}  usage/scale "
            f"{[round(u, 1) for u in r['usage_by_scale']]}  "
            f"any {r['usage_any']:.1f}%  PSNR by scales {[round(p, 2) for p in r['psnr_by_scale']]}",
            flush=True,
        )
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    print("results:", os.path.join(a.out, "results.json"))


if __name__ == "__main__":
    main()
