"""Peak memory per rank: FSDP2 (per block) over N processes vs one process, on the CPU (gloo).

Each worker builds a VAR transformer (depth / width below: ~150M parameters, 0.6 GB of fp32 weights,
~2.4 GB with gradients and AdamW state), wraps it with ``nextscale.train.parallel.Parallel`` exactly as
the trainer does, and takes a few AdamW steps on random tokens; it reports its memory plan and its
peak resident set size (``getrusage``: the whole process, Python and torch included, ~0.35 GB alone).
No asserts: it prints a table (docs/training.md holds the measured one).

    python benchmarks/bench_memory.py                      # 1 process, then 4 sharded processes
    python benchmarks/bench_memory.py --nproc 2 --depth 4   # smaller
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys

import torch


def worker(args) -> None:
    from nextscale import dist
    from nextscale.configs import get_preset
    from nextscale.models import build_from_config
    from nextscale.train.memory import memory_plan, peak_memory
    from nextscale.train.parallel import Parallel, block_modules

    dev = dist.init_distributed("cpu")
    world = dist.get_world_size()
    cfg = get_preset("tiny")
    heads = max(1, args.width // 64)
    cfg = dataclasses.replace(
        cfg, var=dataclasses.replace(cfg.var, depth=args.depth, embed_dim=args.width, num_heads=heads)
    )
    vae, var = build_from_config(cfg, seed=0)
    blocks = {"var": block_modules(var)}
    mode = "fsdp" if world > 1 else "ddp"
    micro = args.batch // world
    plan = memory_plan({"var": var}, blocks, world, mode == "fsdp", micro, float(var.L))
    par = Parallel(dev, world, mode)
    model = par.wrap({"var": var}, blocks)["var"]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(dist.get_rank())
    first_l = var.begin_ends[0][1]
    for _ in range(args.steps):
        label_B = torch.randint(0, var.num_classes, (micro,), generator=g)
        x_BLCv = torch.randn(micro, var.L - first_l, vae.Cvae, generator=g)
        logits_BLV = model(label_B, x_BLCv, cond_drop_rate=0.0)
        logits_BLV.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    n = sum(p.numel() for p in var.parameters())
    peaks = dist.all_gather_object(peak_memory(dev))
    if dist.is_main():
        print(json.dumps({"world": world, "params": n, "plan": plan.total, "peaks": peaks}), flush=True)
    dist.destroy()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(nproc: int, args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    own = [__file__, "--worker", "--depth", str(args.depth), "--width", str(args.width)]
    own += ["--batch", str(args.batch), "--steps", str(args.steps)]
    if nproc == 1:
        cmd = [sys.executable] + own
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_port()}"]
        cmd += own
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(p.stderr[-3000:])
    return json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--nproc", type=int, default=4)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4, help="global batch (divisible by nproc)")
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    gib = 2.0**30
    print(f"VAR depth {args.depth} width {args.width}, global batch {args.batch}, {args.steps} AdamW steps, CPU/gloo")
    print("| processes | parallel | parameters | planned per rank | peak RSS per rank (max) |")
    print("|---|---|---|---|---|")
    for nproc in (1, args.nproc):
        r = run(nproc, args)
        mode = "fsdp (per block)" if nproc > 1 else "one process"
        plan, peak = r["plan"] / gib, max(r["peaks"]) / gib
        print(f"| {nproc} | {mode} | {r['params'] / 1e6:.0f}M | {plan:.2f} GiB | {peak:.2f} GiB |", flush=True)


if __name__ == "__main__":
    main()
