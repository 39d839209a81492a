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
    python benchmarks/bench_t2i.py --presets small --reference ~/Infinity --repeats 3 --threads 1   # side by side

``--reference DIR`` (a FoundationVision/Infinity checkout, CPU float32; see the section "--reference" below and
``benchmarks/infinity_reference.py`` for its shims): both sides with the same weights, text and seed, the share of
identical bits per scale, and ours / ref ratios of time and peak memory.

Presets: ``small`` (depth 8, width 512, 8 heads: 34M transformer parameters), ``2b`` (the released 2B layout,
2.2B parameters: 8.8 GB of float32 weights), ``8b`` (the 8B layout with its tokenizer; GPU only in practice).
A preset whose float32 weights do not fit 80% of the available memory is skipped with a line saying so.
No asserts: this prints a table. Timings on a shared CPU are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
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


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="small,2b", help="comma-separated: " + ", ".join(PRESETS))
    ap.add_argument("--pn", default="0.06M", help="size class: 0.06M (256x256 square), 0.25M, 0.60M, 1M")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--threads", type=int, default=torch_threads_default())
    ap.add_argument("--guidance-cutoff", type=int, default=0, help="last N scales without guidance (0 = exact)")
    ap.add_argument(
        "--reference",
        metavar="DIR",
        help="a FoundationVision/Infinity checkout: time it beside ours with the same weights, text and seed",
    )
    ap.add_argument(
        "--warmup", type=int, default=1, help="--reference: untimed images per process before the timed one"
    )
    ap.add_argument("--tmp", default=None, help="--reference: where the shared random weights are written")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--side", choices=("ours", "ref"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--make-weights", action="store_true", help=argparse.SUPPRESS)
    return ap


def main(argv=None):
    ap = parser()
    args = ap.parse_args(argv)
    if args.one and args.make_weights:
        print(json.dumps(ref_make_weights(args)))
        return 0
    if args.one and args.side:
        print(json.dumps(ref_side(args)))
        return 0
    if args.one:
        print(json.dumps(run_one(args)))
        return 0
    if args.reference:
        if args.device != "cpu" or args.dtype != "fp32" or args.guidance_cutoff:
            ap.error("--reference compares the exact float32 path on the CPU (its flash-attn shim is CPU only)")
        return reference_main(args)
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
        cmd = [sys.executable, __file__, "--one", preset] + child_argv(args)
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


# ------------------------------------------------------------------------------------------------ --reference
# Ours and the reference (FoundationVision/Infinity, imported through benchmarks/infinity_reference.py) side by side
# with the same random weights (ours, saved once; the reference loads them strictly under its own names), the same
# text features and seed. Every measurement runs in a fresh process that builds one side, loads the weights
# memory-mapped (assign=True: the random init is freed, so the peak RSS counts the weights once), samples
# ``--warmup`` untimed images and one timed image, and records the bits of every scale; sides alternate
# ours/ref, ref/ours, ... for ``--repeats`` rounds so load on a shared machine hits both; medians are reported.


def _ref_paths(args):
    return os.path.join(args.workdir, f"{args.one}_weights.pt"), os.path.join(args.workdir, f"{args.one}_text.pt")


def _ref_kwargs(preset: str, pn: str) -> dict:
    from infinity_reference import reference_kwargs

    cfg = _config(preset)
    return reference_kwargs(cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.block_chunks, pn, mlp_ratio=cfg.mlp_ratio)


def ref_make_weights(args) -> dict:
    """Our random weights (seed 0) and text features, saved for both sides."""
    import torch

    from nextscale.models.bsq import BSQVAE
    from nextscale.models.infinity import Infinity
    from nextscale.text import features_from_rows

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = _config(args.one)
    w_path, t_path = _ref_paths(args)
    vae = BSQVAE.from_preset(PRESETS[args.one]["tokenizer"])
    model = Infinity(cfg)
    torch.save(dict(vae=vae.state_dict(), inf=model.state_dict()), w_path)
    g = torch.Generator().manual_seed(0)
    text = features_from_rows([torch.randn(32, cfg.text_channels, generator=g) for _ in range(args.batch)])
    torch.save(dict(kv_compact=text.kv_compact, lens=list(text.lens)), t_path)
    return dict(params_M=round(sum(p.numel() for p in model.parameters()) / 1e6, 1))


def ref_side(args) -> dict:
    """One side (``args.side``): build, load, warm up, time one image; saves its bits and image."""
    import torch

    from nextscale.models.infinity import TextFeatures
    from nextscale.schedules import scale_schedule

    torch.set_num_threads(args.threads)
    w_path, t_path = _ref_paths(args)
    cfg = _config(args.one)
    t0 = time.perf_counter()
    if args.side == "ours":
        from nextscale.models.bsq import BSQVAE
        from nextscale.models.infinity import Infinity

        vae, model = BSQVAE.from_preset(PRESETS[args.one]["tokenizer"]), Infinity(cfg)
    else:
        from infinity_reference import import_reference

        ref_inf, vae_model = import_reference(args.reference)
        with contextlib.redirect_stdout(io.StringIO()):  # the reference prints its configuration
            bits = cfg.vae_bits
            vae = vae_model(None, "dynamic", bits, 2**bits, patch_size=16, encoder_ch_mult=[1, 2, 4, 4, 4],
                            decoder_ch_mult=[1, 2, 4, 4, 4], test_mode=True)  # fmt: skip
            model = ref_inf.Infinity(vae_local=vae, **_ref_kwargs(args.one, args.pn))
    sd = torch.load(w_path, mmap=True, weights_only=True)
    # nn.Module's strict loader (the reference's own load_state_dict defaults to strict=False)
    torch.nn.Module.load_state_dict(vae, sd["vae"], strict=True, assign=True)
    torch.nn.Module.load_state_dict(model, sd["inf"], strict=True, assign=True)
    vae.eval().requires_grad_(False)
    model.eval().requires_grad_(False)
    build_s = time.perf_counter() - t0
    t = torch.load(t_path, weights_only=True)
    text = TextFeatures.from_lens(t["kv_compact"], t["lens"])
    hw = scale_schedule(1.0, args.pn)
    K, B, seed = len(hw), text.batch_size, 0
    settings = dict(cfg_list=[3.0] * K, tau_list=[0.5] * K, top_k=900, top_p=0.97, cfg_insertion_layer=[0])

    decode_times, bits = [], []
    real_decode = vae.decode

    def timed_decode(*a, **k):  # the decoder's share of one image, the same wrapper on both sides
        w, c = time.perf_counter(), time.process_time()
        out = real_decode(*a, **k)
        decode_times.append((time.perf_counter() - w, time.process_time() - c))
        return out

    vae.decode = timed_decode
    if args.side == "ours":
        from nextscale.sampling_t2i import generate_t2i

        def sample():
            g = torch.Generator().manual_seed(seed)
            out = generate_t2i(model, vae, text, hw, generator=g, **settings)
            bits[:] = out.bits_per_scale
            return out.reference_image()
    else:
        real_codes = vae.quantizer.lfq.indices_to_codes

        def grab(idx_B1hwd, *a, **k):  # the reference returns no bits: read them where they become codes
            bits.append(idx_B1hwd[:, 0].long().clone())
            return real_codes(idx_B1hwd, *a, **k)

        vae.quantizer.lfq.indices_to_codes = grab

        def sample():
            bits.clear()
            _, _, img = model.autoregressive_infer_cfg(
                vae=vae, scale_schedule=[(1, h, w) for h, w in hw], label_B_or_BLT=text.as_tuple(), B=B,
                g_seed=seed, returns_vemb=1, vae_type=cfg.vae_bits, ret_img=True, inference_mode=True, **settings
            )  # fmt: skip
            return img

    with torch.inference_mode():
        for _ in range(args.warmup):
            sample()
        decode_times.clear()
        w, c = time.perf_counter(), time.process_time()
        img = sample()
        wall, cpu = time.perf_counter() - w, time.process_time() - c
    torch.save(dict(bits=[b.cpu() for b in bits], img=img.cpu()), os.path.join(args.workdir, f"{args.out}.pt"))
    (dw, dc), = decode_times  # fmt: skip
    return dict(
        build_s=build_s,
        wall=wall / B,
        cpu=cpu / B,
        t_wall=(wall - dw) / B,
        t_cpu=(cpu - dc) / B,
        d_wall=dw / B,
        d_cpu=dc / B,
        rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        size=f"{img.shape[1]}x{img.shape[2]}",
        scales=K,
    )


def child_argv(args) -> list:
    """The parent's options for a child process (the per-child ones, and unset ones, left out)."""
    skip = ("one", "presets", "side", "out", "make_weights")
    return [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in skip and v is not None]


def _child(args, preset, extra):
    cmd = [sys.executable, __file__, "--one", preset] + child_argv(args)
    res = subprocess.run(cmd + extra, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip()[-2000:] or f"exit {res.returncode}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def bit_agreement(workdir: str, a: str, b: str):
    """Per scale, the share of identical bits of two runs; and the largest difference of their uint8 images."""
    import torch

    x, y = (torch.load(os.path.join(workdir, f"{n}.pt"), weights_only=True) for n in (a, b))
    if len(x["bits"]) != len(y["bits"]):
        return [0.0], 255
    shares = [(u == v).float().mean().item() for u, v in zip(x["bits"], y["bits"])]
    return shares, (x["img"].int() - y["img"].int()).abs().max().item()


def reference_main(args) -> int:
    import tempfile

    med = statistics.median
    print(
        f"CPU: {cpu_name()} ({os.cpu_count()} cores), torch {_torch_version()}, torch threads {args.threads}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; pn {args.pn}, batch {args.batch}, float32, "
        f"released settings (cfg 3 on the logits, tau 0.5, top-k 900, top-p 0.97), seed 0; reference "
        f"{_git_head(args.reference)} with the CPU shims of benchmarks/infinity_reference.py; {args.repeats} "
        f"interleaved rounds, {args.warmup} warm-up image(s) per process; medians"
    )
    head = (
        "| preset | params (M) | image | side | build (s) | s / image | CPU s / image | transformer s | "
        "transformer CPU s | decoder s | decoder CPU s | peak RSS (GB) |"
    )
    rows, agree = [], []
    for preset in args.presets.split(","):
        need = 4 * n_params(_config(preset)) * 1.15
        if need > 0.8 * available_bytes():
            rows.append(
                f"| {preset} | skipped: needs ~{need / 2**30:.1f} GB, {available_bytes() / 2**30:.1f} GB free |"
            )
            continue
        with tempfile.TemporaryDirectory(prefix="bench_t2i_ref_", dir=args.tmp) as wd:
            args.workdir = wd
            info = _child(args, preset, ["--make-weights"])
            res = {"ours": [], "ref": []}
            for r in range(args.repeats):
                order = ("ours", "ref") if r % 2 == 0 else ("ref", "ours")
                for side in order:
                    res[side].append(_child(args, preset, [f"--side={side}", f"--out={side}{r}"]))
                    print(f"  {preset} round {r + 1} {side}: {res[side][-1]}", file=sys.stderr, flush=True)
                shares, dimg = bit_agreement(wd, f"ours{r}", f"ref{r}")
                agree.append((preset, r, shares, dimg))
        m = {s: {k: med([x[k] for x in v]) for k in v[0] if k not in ("size", "scales")} for s, v in res.items()}
        for s in ("ours", "ref"):
            x = m[s]
            rows.append(
                f"| {preset} | {info['params_M']:,} | {res[s][0]['size']} | {s} | {x['build_s']:.1f} | {x['wall']:.2f} "
                f"| {x['cpu']:.2f} | {x['t_wall']:.2f} | {x['t_cpu']:.2f} | {x['d_wall']:.2f} | {x['d_cpu']:.2f} "
                f"| {max(y['rss'] for y in res[s]):.2f} |"
            )
        o, f = m["ours"], m["ref"]
        rss = max(y["rss"] for y in res["ours"]) / max(y["rss"] for y in res["ref"])
        rows.append(
            f"| {preset} | | | ours / ref | | {o['wall'] / f['wall']:.2f} | {o['cpu'] / f['cpu']:.2f} "
            f"| {o['t_wall'] / f['t_wall']:.2f} | {o['t_cpu'] / f['t_cpu']:.2f} | {o['d_wall'] / f['d_wall']:.2f} "
            f"| {o['d_cpu'] / f['d_cpu']:.2f} | {rss:.2f} |"
        )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    print("\n".join(rows))
    print("\nbits: share identical per scale (ours vs reference, same seed, same round); image: max |uint8 difference|")
    for preset, r, shares, dimg in agree:
        print(f"  {preset} round {r + 1}: bits {' '.join(f'{s:.6f}' for s in shares)}; image max diff {dimg}")
    return 0


def _torch_version() -> str:
    import torch

    return torch.__version__


def _git_head(path: str) -> str:
    """The checkout's commit, or (a work tree without .git) the sha256 of its infinity/models/infinity.py."""
    import hashlib

    try:
        out = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return f"commit {out.stdout.strip()}"
    except OSError:
        pass
    try:
        with open(os.path.join(path, "infinity", "models", "infinity.py"), "rb") as f:
            return f"infinity/models/infinity.py sha256 {hashlib.sha256(f.read()).hexdigest()[:12]}"
    except OSError:
        return path


def torch_threads_default() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))


if __name__ == "__main__":
    sys.exit(main())
