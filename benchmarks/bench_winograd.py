"""Direct 3x3 conv (F.conv2d, channels_last) vs Winograd F(4x4, 3x3) (nextscale.accel.winograd) on CPU fp32.

One row per 3x3 conv shape of the d16 VQ-VAE decoder at 256 px (batch 1). Times are the best of --reps runs
after a warm-up; err = max |winograd - direct|, rel = err / max |direct|.

    OMP_NUM_THREADS=1 python benchmarks/bench_winograd.py --threads 1
"""

import argparse
import os
import time

import torch
import torch.nn.functional as F

from nextscale.accel.winograd import transform_weight, winograd_conv3x3

# (output H = W, Cin, Cout, count in one 256px decode)
SHAPES = [
    (256, 160, 160, 7),
    (128, 160, 160, 5),
    (128, 320, 160, 1),
    (128, 320, 320, 1),
    (64, 320, 320, 7),
    (32, 640, 640, 1),
    (32, 640, 320, 1),
    (32, 320, 320, 5),
    (16, 640, 640, 10),
    (16, 32, 640, 1),
    (256, 160, 3, 1),
]


def best_ms(fn, reps):
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--shapes", type=str, default="", help="e.g. '256x160x160,16x640x640' (default: decoder set)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) + (1,) for s in args.shapes.split(",")]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"threads={torch.get_num_threads()} batch={args.batch} torch={torch.__version__} load avg(1 min)={load:.2f}")
    print(
        f"{'HxW':>9} {'Cin':>4} {'Cout':>4} {'n':>3} {'direct ms':>10} {'wino ms':>9} {'speed-up':>8} "
        f"{'max abs err':>11} {'rel':>8}"
    )
    tot_d = tot_w = tot_best = 0.0
    with torch.inference_mode():
        for hw, cin, cout, count in shapes:
            # realistic magnitudes: unit-variance activations (post GroupNorm+SiLU scale), default conv init
            conv = torch.nn.Conv2d(cin, cout, 3, 1, 1)
            x = F.silu(torch.randn(args.batch, cin, hw, hw)).contiguous(memory_format=torch.channels_last)
            w, b = conv.weight, conv.bias
            U = transform_weight(w)
            ref = F.conv2d(x, w, b, padding=1)
            out = winograd_conv3x3(x, U, b, cout)
            err = (out - ref).abs().max().item()
            rel = err / ref.abs().max().item()
            reps = args.reps if hw * hw * cin * cout < 256 * 256 * 160 * 160 else max(2, args.reps // 2)
            td = best_ms(lambda: F.conv2d(x, w, b, padding=1), reps)
            tw = best_ms(lambda: winograd_conv3x3(x, U, b, cout), reps)
            tot_d += count * td
            tot_w += count * tw
            tot_best += count * min(td, tw)
            print(
                f"{hw:>4}x{hw:<4} {cin:>4} {cout:>4} {count:>3} {td:>10.2f} {tw:>9.2f} {td / tw:>7.2f}x "
                f"{err:>11.2e} {rel:>8.1e}"
            )
    print(
        f"decoder 3x3 total (weighted by count): direct {tot_d:.0f} ms, winograd {tot_w:.0f} ms, "
        f"best-of-both {tot_best:.0f} ms"
    )


if __name__ == "__main__":
    main()
