"""What bf16 and int8 change on a d16-sized model (random weights): tokens per scale and logit error.

    python benchmarks/lowprec_quality.py --preset d16 --batch 2 --threads 1

For each precision (``set_precision``: fp32 = the exact path, bf16, int8) the same seeds are sampled
(cfg 1.5, top-k 900, top-p 0.96) and compared with fp32:

- share of identical tokens per scale (sampling shares the random stream, so a differing token only
  changes what later scales are conditioned on);
- teacher-forced logits on the fp32 tokens: relative L2 error, max |error| over the logits' std, and
  the share of positions whose most likely token is unchanged.

Random initialisation leaves every block almost switched off (AdaLN gammas ~1e-5) and the logits flat
(head std 0.02), which would make any precision look exact. So the blocks are switched on (gamma bias
``--gamma``) and the head is scaled to logits of std ``--logit-std``, roughly a trained model's spread;
the numbers then say how much rounding moves a model that uses all its depth. The bundled default
model's quality table (class accuracy, FID/floor) is ``default_model_report.py --modes bf16 int8``.
"""

from __future__ import annotations

import argparse
import time

import torch

from nextscale.accel.precision import cpu_capabilities
from nextscale.configs import get_preset
from nextscale.models import build_from_config
from nextscale.pipelines import NextScalePipeline

_HEAD_FACTOR = {}


def make_pipe(preset: str, gamma: float, logit_std: float) -> NextScalePipeline:
    """The random-weight model with its blocks switched on and the head scaled (the same weights every call)."""
    vae, var = build_from_config(get_preset(preset), seed=0)
    with torch.no_grad():
        for b in var.blocks:
            b.ada_lin[-1].bias[: 2 * var.C] = gamma  # gamma1, gamma2: the blocks' residual branches on
        key = (preset, gamma, logit_std)
        if key not in _HEAD_FACTOR:  # logits' std on random tokens, measured once in fp32
            g = torch.Generator().manual_seed(0)
            idx = [torch.randint(0, var.V, (2, pn * pn), generator=g) for pn in var.patch_nums]
            std = var(torch.tensor([1, 2]), vae.quantize.idxBl_to_var_input(idx)).std()
            _HEAD_FACTOR[key] = float(logit_std / std)
        var.head.weight.mul_(_HEAD_FACTOR[key])
        var.head.bias.mul_(_HEAD_FACTOR[key])
    return NextScalePipeline(vae, var)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="d16")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=2, help="batches (seeds 0, 1, ...)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gamma", type=float, default=0.5)
    ap.add_argument("--logit-std", type=float, default=3.0)
    ap.add_argument("--precisions", nargs="+", default=["bf16", "int8"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kw = dict(guidance_scale=1.5, top_k=900, top_p=0.96, output_type="pt", return_indices=True)
    rows = {}
    for prec in ["fp32"] + args.precisions:
        pipe = make_pipe(args.preset, args.gamma, args.logit_std).set_precision(prec)  # fresh: casts are lossy
        B = args.batch
        labels = [(s * B + i) * 37 % pipe.num_classes for s in range(args.seeds) for i in range(B)]
        t0, toks, logits = time.perf_counter(), [], []
        for s in range(args.seeds):
            out = pipe(class_labels=labels[s * B : (s + 1) * B], seed=s, **kw)
            toks.append(out.indices)
        secs = time.perf_counter() - t0
        ref = rows["fp32"]["tokens"] if prec != "fp32" else toks
        for s, ref_idx in enumerate(ref):  # teacher-forced on the fp32 tokens
            with torch.no_grad(), pipe._autocast():
                lab = torch.tensor(labels[s * B : (s + 1) * B])
                logits.append(pipe.var(lab, pipe.vqvae.quantize.idxBl_to_var_input(ref_idx)).float())
        rows[prec] = {"tokens": toks, "logits": torch.cat(logits), "seconds": secs}
        print(f"{prec}: sampled {args.seeds * B} images in {secs:.1f} s", flush=True)

    K = len(rows["fp32"]["tokens"][0])
    print(f"\n{args.preset}, random weights (blocks on: gamma {args.gamma}, logit std {args.logit_std}), ")
    print(f"{args.seeds * args.batch} images, cfg 1.5, top-k 900, top-p 0.96; {cpu_capabilities().describe()}\n")
    head = (
        "| precision | "
        + " | ".join(f"scale {k + 1}" for k in range(K))
        + " | all | logit rel. L2 | max/std | top-1 same |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    ex = rows["fp32"]
    for prec in args.precisions:
        r = rows[prec]
        per = []
        n_same = n_all = 0
        for k in range(K):
            a = torch.cat([t[k] for t in ex["tokens"]])
            b = torch.cat([t[k] for t in r["tokens"]])
            per.append(float((a == b).float().mean()))
            n_same, n_all = n_same + int((a == b).sum()), n_all + a.numel()
        le, lx = r["logits"], ex["logits"]
        rel = float((le - lx).norm() / lx.norm())
        mx = float((le - lx).abs().max() / lx.std())
        top1 = float((le.argmax(-1) == lx.argmax(-1)).float().mean())
        cells = " | ".join(f"{100 * p:.0f}%" for p in per)
        print(f"| {prec} | {cells} | {100 * n_same / n_all:.1f}% | {100 * rel:.2f}% | {mx:.2f} | {100 * top1:.1f}% |")


if __name__ == "__main__":
    main()
