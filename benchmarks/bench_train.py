"""Training throughput of a small preset, from images (VQ-VAE encoder in the loop) and from the token
cache, next to the machine's fp32 matmul peak measured here. Prints a table; no asserts.

    python benchmarks/bench_train.py [--preset mnist] [--steps 30] [--batch-size 32] [--device cpu]

Model FLOPs per step ~ 6 x (transformer parameters) x tokens + attention (12 x depth x L^2 x C per
image for forward + backward, block-causal mask ignored); "% of peak" divides the achieved model
FLOP/s by the large-matmul GFLOP/s, so it is the MFU against what this machine actually reaches.
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
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def run(mode: str, data: str, cache: str, args, root: str) -> dict:
    from nextscale.train.var import VARTrainConfig, train_var
    run_dir = os.path.join(root, f"run-{mode}")
    src = dict(data=data, tokenizer="random") if mode == "images" else dict(cache=cache)
    tc = VARTrainConfig(**src, preset=args.preset, run_dir=run_dir, steps=args.steps, batch_size=args.batch_size,
                        lr=1e-4, warmup_steps=1, log_every=args.steps // 2, ckpt_every=10 ** 9, eval_every=0,
                        sample_every=-1, device=args.device, amp=args.amp, progress=False)
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
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default=None,
                    help="mixed precision (default: bf16 on CUDA, none on CPU); the peak is measured in the same dtype")
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
    flops_per_img = 6 * n_params * L + 12 * depth * L * L * C

    peak = matmul_gflops(args.device, n=2048 if args.device == "cpu" else 8192,
                         dtype={"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp])
    with tempfile.TemporaryDirectory() as root:
        data = export_mnist(os.path.join(root, "digits"), n_per_class=8, split="train", resolution=cfg.resolution)
        cache = os.path.join(root, "cache")
        t = time.perf_counter()
        tokenize(data, "random", cache, preset=args.preset, device=args.device, progress=False)
        t_tok = time.perf_counter() - t
        rows = [(m, run(m, data, cache, args, root)) for m in ("images", "cache")]

    print(f"\npreset {args.preset}: {n_params / 1e6:.2f}M transformer params, L={L} tokens/image, batch {args.batch_size}, "
          f"{args.steps} steps, device {args.device}, amp {args.amp}, {torch.get_num_threads()} threads")
    print(f"{args.amp if args.amp != 'none' else 'fp32'} matmul: {peak:.1f} GFLOP/s   (tokenize 80 images: {t_tok:.1f} s)\n")
    print("| data   | images/s | tokens/s | model GFLOP/s | % of matmul peak |")
    print("|--------|---------:|---------:|--------------:|-----------------:|")
    for mode, rec in rows:
        ips = rec["img_per_s"]
        gf = ips * flops_per_img / 1e9
        print(f"| {mode:<6} | {ips:8.1f} | {rec['tok_per_s']:8.0f} | {gf:13.1f} | {100 * gf / peak:15.1f}% |")


if __name__ == "__main__":
    main()
