"""Text-to-image (Infinity) speed and memory with random weights: seconds per image and peak memory.

Each preset runs in its own process (so the peak resident memory it reports is its own): the released tokenizer
layout (``infinity_vae_d32reg``, 110M parameters) with a transformer of the preset, random weights, sampled
through ``NextScaleT2IPipeline`` with the released settings (cfg 3: the batch is doubled; tau 0.5; top-p 0.97)
on random text features of 32 tokens (the T5 encoder is not timed: run it once per prompt, it is not part of the
next-scale loop). Seconds per image = the median wall time over ``--repeats`` calls after one warm-up call (the first
call's time is printed too); "CPU s" is the process's CPU time per image (on a shared machine it says what the work
costs when wall time is inflated by other processes); "decode s" is the tokenizer decoder's share (one pass).

    python benchmarks/bench_t2i.py                          # small preset, then the 2B layout if memory allows
    python benchmarks/bench_t2i.py --presets small --pn 0.25M
    python benchmarks/bench_t2i.py --device cuda --dtype bf16 --pn 1M --presets 2b,8b
    python benchmarks/bench_t2i.py --presets small --guidance-cutoff 3   # the opt-in guidance cut-off

Presets: ``small`` (depth 8, width 512, 8 heads: 34M transformer parameters), ``2b`` (the released 2B layout,
2.2B parameters: 8.8 GB of float32 weights), ``8b`` (the 8B layout with its tokenizer; GPU only in practice).
A preset whose float32 weights do not fit 80% of the available memory is skipped with a line saying so.
No asserts: this prints a table. Timings on a shared CPU are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

PRESETS = {
    "small": dict(
        transformer=dict(depth=8, embed_dim=512, num_heads=8, block_chunks=8), tokenizer="infinity_vae_d32reg"
    ),
    "2b": dict(transformer="infinity_2b", tokenizer="infinity_vae_d32reg"),
    "8b": dict(transformer="infinity_8b", tokenizer="infinity_vae_d56_f8_14_patchify"),
}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def _config(preset: str):
    from nextscale.models.infinity import InfinityConfig

    t = PRESETS[preset]["transformer"]
    if isinstance(t, str):
        return getattr(InfinityConfig, t)()
    return InfinityConfig(vae_bits=32, **t)


def n_params(cfg) -> int:
    import torch

    from nextscale.models.infinity import Infinity

    with torch.device("meta"):
        return sum(p.numel() for p in Infinity(cfg).parameters())


def run_one(args) -> dict:
    """One preset in this process: build, warm up, time; returns a row."""
    import torch

    from nextscale.models.bsq import BSQVAE
    from nextscale.models.infinity import Infinity
    from nextscale.pipeline_t2i import NextScaleT2IPipeline
    from nextscale.text import features_from_rows

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    cfg = _config(args.one)
    t0 = time.perf_counter()
    vae = BSQVAE.from_preset(PRESETS[args.one]["tokenizer"]).eval().requires_grad_(False)
    model = Infinity(cfg).eval().requires_grad_(False)
    pipe = NextScaleT2IPipeline(vae, model, None, default_pn=args.pn)
    pipe.to(dev, torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    build_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(32, cfg.text_channels, generator=g) for _ in range(args.batch)]
    text = features_from_rows(rows)
    kw = dict(prompt_embeds=text, output_type="pt", pn=args.pn, guidance_scale=3.0, temperature=0.5, top_p=0.97)
    kw["guidance_cutoff"] = args.guidance_cutoff  # the last N scales without guidance (opt-in speed-up)

    def timed(fn):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t, time.process_time() - c, out

    def call(seed):
        wall, cpu, out = timed(lambda: pipe(seed=seed, **kw))
        cpu_times.append(cpu)
        return wall, out

    cpu_times = []

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    first, out = call(0)
    times = [call(i + 1)[0] for i in range(args.repeats)]
    h, w = out.size.schedule[-1]
    p = 2 if cfg.apply_spatial_patchify else 1
    codes = torch.randn(args.batch, vae.codebook_dim, h * p, w * p, device=dev)
    decode_s = min(timed(lambda: pipe.decode(codes))[0] for _ in range(max(1, args.repeats)))
    row = dict(
        preset=args.one,
        params_M=round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        size=f"{out.size.height}x{out.size.width}",
        scales=len(out.size.schedule),
        batch=args.batch,
        device=str(dev),
        dtype=args.dtype,
        build_s=round(build_s, 1),
        first_s=round(first, 2),
        s_per_image=round(statistics.median(times) / args.batch, 2) if times else None,
        cpu_s_per_image=round(statistics.median(cpu_times[1:] or cpu_times) / args.batch, 2),
        decode_s=round(decode_s / args.batch, 2),
        peak_rss_GB=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    )
    if dev.type == "cuda":
        row["peak_cuda_GB"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="small,2b", help="comma-separated: " + ", ".join(PRESETS))
    ap.add_argument("--pn", default="0.06M", help="size class: 0.06M (256x256 square), 0.25M, 0.60M, 1M")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--threads", type=int, default=torch_threads_default())
    ap.add_argument("--guidance-cutoff", type=int, default=0, help="last N scales without guidance (0 = exact)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args)))
        return 0
    print(
        f"CPU: {cpu_name()} ({os.cpu_count()} cores), torch threads {args.threads}, device {args.device}, "
        f"{args.dtype}, pn {args.pn}, batch {args.batch}, released settings (cfg 3, tau 0.5, top-p 0.97), "
        f"guidance cut-off {args.guidance_cutoff}"
    )
    head = (
        "| preset | transformer params (M) | image | scales | build (s) | 1st call (s) | s / image | "
        "CPU s / image | decode s / image | peak RSS (GB) |"
    )
    print(head + (" peak CUDA (GB) |" if args.device.startswith("cuda") else ""))
    print("|" + "---|" * (head.count("|") - 1 + int(args.device.startswith("cuda"))))
    for preset in args.presets.split(","):
        need = 4 * n_params(_config(preset)) * 1.15  # float32 weights + the tokenizer and activations
        if args.device == "cpu" and need > 0.8 * available_bytes():
            print(f"| {preset} | skipped: needs ~{need / 2**30:.1f} GB, {available_bytes() / 2**30:.1f} GB available |")
            continue
        cmd = [sys.executable, __file__, "--one", preset] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("one", "presets")
        ]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            why = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"
            print(f"| {preset} | failed: {why} |")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        line = (
            f"| {r['preset']} | {r['params_M']:,} | {r['size']} | {r['scales']} | {r['build_s']} | {r['first_s']} "
            f"| {r['s_per_image']} | {r['cpu_s_per_image']} | {r['decode_s']} | {r['peak_rss_GB']} |"
        )
        print(line + (f" {r['peak_cuda_GB']} |" if "peak_cuda_GB" in r else ""), flush=True)
    return 0


def torch_threads_default() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))


if __name__ == "__main__":
    sys.exit(main())
