"""Training throughput of a small preset, from images (VQ-VAE encoder in the loop) and from the token
cache, next to the machine's fp32 matmul peak measured here. Prints a table; no asserts.

    python benchmarks/bench_train.py [--preset mnist] [--steps 30] [--batch-size 32] [--device cpu]

Model FLOPs per image (``train_flops_per_image``) = 3 x forward (backward = 2 x forward), with forward =
per-token matmuls (word embedding of the L - first_l input tokens, per block qkv / proj / MLP, the head)
+ block-causal attention (a token of scale k attends to the S_k tokens of scales <= k: 2 x 2 x C x
sum_k l_k S_k per block, not the dense L^2) + the AdaLN projections, once per image from the class
embedding (not per token); embedding lookups (class, position, level) cost nothing. "% of peak" divides
the achieved model FLOP/s by the large-matmul GFLOP/s, so it is the MFU against what this machine
actually reaches. (The old estimate 6 x params x L + 12 x depth x L^2 x C counted the AdaLN weights
and the lookup tables as per-token matmuls and the attention as dense; it is printed for comparison.)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch


def matmul_gflops(device: str, n: int = 2048, reps: int = 10, dtype=torch.float32) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def train_flops_per_image(var) -> dict:
    """Model FLOPs of one teacher-forced training image (forward + backward), by part (see the module doc)."""
    C, V, D, Cv, L = var.C, var.V, var.depth, var.Cvae, var.L
    hidden = var.blocks[0].ffn.fc1.out_features
    seen = causal = 0
    for pn in var.patch_nums:
        seen += pn * pn
        causal += pn * pn * seen  # sum_k l_k S_k
    shared = bool(getattr(var.blocks[0], "shared_aln", False))
    fwd = {
        "matmuls": 2 * L * (D * (4 * C * C + 2 * C * hidden) + C * V) + 2 * (L - var.first_l) * Cv * C,
        "attention": D * 2 * 2 * C * causal,
        "adaln": 2 * C * 6 * C * (1 if shared else D) + 2 * C * 2 * C,
    }
    out = {k: 3 * v for k, v in fwd.items()}
    out["total"] = sum(out.values())
    out["dense_attention"] = 3 * D * 2 * 2 * C * L * L  # what a dense L x L attention (mask ignored) would count
    return out


def run(mode: str, data: str, cache: str, args, root: str) -> dict:
    from nextscale.train.config import VARTrainConfig
    from nextscale.train.var import train_var

    run_dir = os.path.join(root, f"run-{mode}")
    src = dict(data=data, tokenizer="random") if mode == "images" else dict(cache=cache)
    tc = VARTrainConfig(
        **src,
        preset=args.preset,
        run_dir=run_dir,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=1e-4,
        warmup_steps=1,
        log_every=args.steps // 2,
        ckpt_every=10**9,
        eval_every=0,
        sample_every=-1,
        device=args.device,
        amp=args.amp,
        progress=False,
    )
    train_var(tc)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rec = [json.loads(l) for l in f][-1]  # second half of the run (the first half includes warm-up)
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="mnist")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--amp",
        choices=["none", "bf16", "fp16"],
        default=None,
        help="mixed precision (default: bf16 on CUDA, none on CPU); the peak is measured in the same dtype",
    )
    args = ap.parse_args()
    if args.amp is None:
        args.amp = "bf16" if args.device.startswith("cuda") else "none"

    from nextscale.configs import get_preset
    from nextscale.data import export_mnist
    from nextscale.train.var import tokenize

    cfg = get_preset(args.preset)
    from nextscale.models import build_from_config

    v = cfg.var.replace(num_classes=10)  # the digits have 10 classes
    _, var = build_from_config(type(cfg)(vqvae=cfg.vqvae, var=v), seed=0)
    n_params = sum(p.numel() for p in var.parameters())
    L, C, depth = v.L, v.width, v.depth
    fl = train_flops_per_image(var)
    flops_per_img = fl["total"]
    old_estimate = 6 * n_params * L + 12 * depth * L * L * C

    peak = matmul_gflops(
        args.device,
        n=2048 if args.device == "cpu" else 8192,
        dtype={"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp],
    )
    with tempfile.TemporaryDirectory() as root:
        data = export_mnist(os.path.join(root, "digits"), n_per_class=8, split="train", resolution=cfg.resolution)
        cache = os.path.join(root, "cache")
        t = time.perf_counter()
        tokenize(data, "random", cache, preset=args.preset, device=args.device, progress=False)
        t_tok = time.perf_counter() - t
        rows = [(m, run(m, data, cache, args, root)) for m in ("images", "cache")]

    print(
        f"\npreset {args.preset}: {n_params / 1e6:.2f}M transformer params, L={L} tokens/image, batch "
        f"{args.batch_size}, "
        f"{args.steps} steps, device {args.device}, amp {args.amp}, {torch.get_num_threads()} threads"
    )
    print(
        f"{args.amp if args.amp != 'none' else 'fp32'} matmul: {peak:.1f} GFLOP/s   (tokenize 80 images: {t_tok:.1f} s)"
    )
    print(
        f"model FLOPs per image (fwd + bwd): {flops_per_img / 1e6:.1f} M = matmuls {fl['matmuls'] / 1e6:.1f} M + "
        "block-causal "
        f"attention {fl['attention'] / 1e6:.1f} M (dense L^2: {fl['dense_attention'] / 1e6:.1f} M) + AdaLN "
        f"{fl['adaln'] / 1e6:.2f} M; "
        f"old estimate 6 N L + 12 depth L^2 C: {old_estimate / 1e6:.1f} M\n"
    )
    print("| data   | images/s | tokens/s | model GFLOP/s | % of matmul peak |")
    print("|--------|---------:|---------:|--------------:|-----------------:|")
    for mode, rec in rows:
        ips = rec["img_per_s"]
        gf = ips * flops_per_img / 1e9
        print(f"| {mode:<6} | {ips:8.1f} | {rec['tok_per_s']:8.0f} | {gf:13.1f} | {100 * gf / peak:15.1f}% |")


if __name__ == "__main__":
    main()
