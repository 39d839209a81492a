"""Inference speed of a d16-sized model (random weights): transformer and decoder, B=1 and B=4.

Prints a table: seconds per call (best of --repeats), GFLOPs counted analytically, achieved
GFLOP/s, and the fraction of this machine's measured fp32 matmul peak. With ``--reference PATH``
(a checkout of FoundationVision/VAR; nothing of it is part of nextscale) the reference runs on the
same weights in the same process, interleaved with ours, and the table adds its time, the speed-up
and whether the sampled tokens are identical; below it, the end-to-end speed-up of each interleaved
round (median, min, max), since each part's best time may come from a different round.

    python benchmarks/bench_inference.py                       # ours only
    python benchmarks/bench_inference.py --reference ~/VAR     # side by side
    python benchmarks/bench_inference.py --device cuda --dtype bf16
    python benchmarks/bench_inference.py --dtype bf16 --reference ~/VAR   # CPU bf16 vs the fp32 reference

``--dtype bf16`` / ``fp16`` casts our weights as ``pipe.to(dtype)`` does (``FLOAT32_PARTS`` stay fp32) and
samples under autocast; ``--dtype int8`` swaps in the int8 block linears (``set_precision("int8")``). On
CPU the reference always runs the exact fp32 path (its own weights fp32, no autocast), so the table is
low precision vs the fp32 reference and "same tokens" becomes the share of identical tokens; on CUDA
the reference runs in the same autocast dtype as before. The header names the CPU kind
(``nextscale.accel.precision.cpu_capabilities``).

GFLOP counts the model's nominal work (direct convolutions, dense matmuls, the decoder's spatial
attention). On CPU the decoder's 3x3 convolutions run as Winograd F(4x4, 3x3) with 4x fewer multiplies:
its GFLOP/s and % of peak are then marked "nominal" (direct-conv work / time, which can exceed 100 %).
The decoder's first call in a process also computes the Winograd weight transforms (cached on the
modules); best-of timing hides that, so it has its own row ("decoder, 1st call"), measured with the
caches dropped, next to the reference's first call. Both decoders run in the same autocast context.

Timings on a shared CPU are noisy: compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from nextscale.accel import CudaGraphs, disable_cpu_kernels, enable_cpu_kernels
from nextscale.accel.lowprec import enable_int8_linears
from nextscale.accel.precision import check_precision, cpu_capabilities
from nextscale.configs import get_preset
from nextscale.models import build_from_config
from nextscale.sampling import generate


def clock() -> float:
    """The benchmark's clock: wall time, or with ``--cpu-time`` this process's CPU time (on a shared,
    oversubscribed CPU with one torch thread, the time the work itself took, not the time spent waiting
    for a core; memory-bandwidth and cache contention still count)."""
    return _CLOCK[0]()


_CLOCK = [time.perf_counter]


def matmul_peak_gflops(device, dtype=torch.float32, n=2048, reps=5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = clock()
        a @ b
        _sync(device)
        best = min(best, clock() - t)
    return 2 * n**3 / best / 1e9


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def transformer_gflops(var, B: int, cfg: bool = True) -> float:
    """Matmul FLOPs of one generation: per token qkv/proj/MLP/head, attention over the cached prefix,
    and the AdaLN projections (once per generation, as we compute them)."""
    C, V, depth = var.C, var.V, var.depth
    rows = 2 * B if cfg else B
    hidden = var.blocks[0].ffn.fc1.out_features
    per_tok = depth * (3 * C * C + C * C + 2 * C * hidden) + C * V + var.Cvae * C
    flops = 2 * rows * var.L * per_tok
    seen = 0
    for pn in var.patch_nums:
        l = pn * pn
        seen += l
        flops += depth * 2 * 2 * rows * l * seen * C  # q@k and p@v
    flops += 2 * rows * depth * (C * 6 * C) + 2 * rows * C * 2 * C
    return flops / 1e9


def decoder_gflops(vae, B: int) -> float:
    """Conv and attention FLOPs of one decode (direct convolutions), counted with forward hooks: every conv,
    and in each spatial self-attention block q @ k^T and p @ v, 2 x 2 x B x (h w)^2 x C (its 1x1 qkv / proj
    convs are counted as convs)."""
    from nextscale.models.vqvae import AttnBlock

    total = [0]

    def hook(m, i, o):
        if isinstance(m, torch.nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            total[0] += 2 * o.numel() * m.in_channels * k // m.groups
        elif isinstance(m, AttnBlock):
            b, c, h, w = i[0].shape
            total[0] += 2 * 2 * b * (h * w) ** 2 * c

    hs = [m.register_forward_hook(hook) for m in vae.decoder.modules()] + [
        vae.post_quant_conv.register_forward_hook(hook)
    ]
    pn = vae.v_patch_nums[-1]
    with torch.no_grad():
        vae.fhat_to_img(torch.zeros(B, vae.Cvae, pn, pn, device=vae.post_quant_conv.weight.device))
    for h in hs:
        h.remove()
    return total[0] / 1e9


def winograd_used(vae) -> bool:
    """Whether the last decode ran any 3x3 conv as Winograd (those keep transformed weights)."""
    return any("_winograd_cache" in m.__dict__ for m in vae.decoder.modules())


def best_of(fn, repeats, device):
    best, out = float("inf"), None
    for _ in range(repeats):
        _sync(device)
        t = clock()
        out = fn()
        _sync(device)
        best = min(best, clock() - t)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="d16")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16", "fp16", "int8"], default="fp32")
    ap.add_argument("--cuda-graphs", action="store_true", help="replay each scale as a captured CUDA graph (CUDA only)")
    ap.add_argument("--reference", default=None, help="path to a FoundationVision/VAR checkout to time side by side")
    ap.add_argument(
        "--mode",
        nargs="+",
        default=None,
        metavar="SPEC",
        help="time opt-in sampling modes against the exact path instead (interleaved): cutoff:N, prune:R, "
        "kv:FIRST,RECENT, refiner:DEPTH@K (a random-weight VAR of that depth predicts scales K..), "
        "or several joined with '+', e.g. cutoff:2+prune:0.5",
    )
    ap.add_argument(
        "--max-batch",
        type=int,
        default=0,
        help="with --mode on CUDA: find the largest batch (doubling up to this) that fits",
    )
    ap.add_argument(
        "--plain",
        action="store_true",
        help="time the plain nextscale.models modules (no nextscale.accel CPU kernels; what they buy)",
    )
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with this process's CPU time instead of wall time (one thread on a shared CPU; CPU only)",
    )
    args = ap.parse_args()
    if args.cpu_time:
        if args.device != "cpu":
            sys.exit("--cpu-time is for CPU runs")
        _CLOCK[0] = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}[args.dtype]
    check_precision(args.dtype, dev)  # warns once where the CPU lacks the units
    vae, var = build_from_config(get_preset(args.preset), seed=0, device=dev)
    var.eval()
    if not args.plain:  # what pipelines run (nextscale.accel.cpu; no-op off CPU fp32)
        enable_cpu_kernels(vae)
        enable_cpu_kernels(var)
    ref = None
    if args.reference:
        fixed = dict(ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, in_channels=3, using_sa=True, using_mid_sa=True)
        differs = {k: getattr(vae.config, k) for k, v in fixed.items() if getattr(vae.config, k) != v}
        if differs:
            sys.exit(
                f"--reference: the reference's VQVAE has a fixed layout {fixed}; preset {args.preset!r} "
                f"differs in {differs}. Use a preset with the reference's tokenizer layout (d16 ... d36, tiny)."
            )
        sys.path.insert(0, args.reference)
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            from models import VAR as RefVAR  # noqa: N811 - the reference's names
            from models import VQVAE as RefVQVAE

            c = var.config
            rvae = RefVQVAE(**{k: v for k, v in vae.config.to_dict().items() if k not in fixed}, test_mode=True).to(dev)
            rvar = RefVAR(vae_local=rvae, flash_if_available=False, fused_if_available=False, **c.var_kwargs()).to(dev)
        rvae.load_state_dict(vae.state_dict())
        rvar.load_state_dict(var.state_dict())
        rvar.eval()
        ref = (rvae, rvar)
    if dt != torch.float32:  # as pipe.to(dt): the blocks and decoder in dt, FLOAT32_PARTS in fp32
        from nextscale.pipelines import FLOAT32_PARTS, cast_weights

        cast_weights(var, FLOAT32_PARTS["var"], dt)
        cast_weights(vae, FLOAT32_PARTS["vqvae"], dt)
    if args.dtype == "int8":
        enable_int8_linears(var)

    peak = matmul_peak_gflops(dev, dt, n=2048 if dev.type == "cpu" else 8192)
    ac = torch.autocast(device_type=dev.type, dtype=dt, enabled=dt != torch.float32)
    # the reference: the exact fp32 path on CPU; on CUDA the same autocast as ours (as before)
    ref_ac = ac if dev.type == "cuda" else torch.autocast(device_type="cpu", enabled=False)
    ref_peak = peak if dev.type == "cuda" or dt == torch.float32 else matmul_peak_gflops(dev, torch.float32, n=2048)
    if args.mode:
        return modes_main(args, vae, var, dev, ac, ref, ref_ac)
    graphs = CudaGraphs() if args.cuda_graphs else None
    rows = []
    for B in args.batch:
        labels = torch.arange(B, device=dev) * 37 % var.num_classes
        kw = dict(cfg=1.5, top_k=min(900, var.V), top_p=0.96)  # small presets have fewer than 900 codes

        def ours_t():
            with ac:
                return generate(
                    var,
                    vae,
                    B=B,
                    label_B=labels,
                    generator=torch.Generator(device=dev).manual_seed(0),
                    cuda_graphs=graphs,
                    **kw,
                )

        def ours_d(f_hat):
            with torch.no_grad(), ac:
                return vae.fhat_to_img(f_hat)

        def ref_d(f_hat):  # ours_d's context on CUDA; fp32 on CPU
            with torch.no_grad(), ref_ac:
                return ref[0].fhat_to_img(f_hat)

        times, rounds = {}, []
        # cold start: the first decode of a process also computes the Winograd weight transforms
        if not args.plain:
            disable_cpu_kernels(vae)  # drops the cached transforms ...
            enable_cpu_kernels(vae)  # ... and turns the (default) path back on
        _, out0 = best_of(ours_t, 1, dev)
        times["d_cold"], _ = best_of(lambda: ours_d(out0.f_hat), 1, dev)
        times["wino"] = winograd_used(vae)
        if ref:
            times["rd_cold"], _ = best_of(lambda: ref_d(out0.f_hat), 1, dev)
        for _ in range(args.repeats):  # interleave ours and the reference so machine noise hits both
            t, out = best_of(ours_t, 1, dev)
            times["t"] = min(times.get("t", 1e9), t)
            t2, _ = best_of(lambda: ours_d(out.f_hat), 1, dev)
            times["d"] = min(times.get("d", 1e9), t2)
            ours_round = t + t2
            if ref:
                rvae, rvar = ref
                # the reference's module (not torch): wrap its sampler to read tokens
                import models.var as ref_var_module

                real_sampler, ref_tokens = ref_var_module.sample_with_top_k_top_p_, []

                def grab(*a, **k):
                    r = real_sampler(*a, **k)
                    ref_tokens.append(r[:, :, 0].clone())
                    return r

                ref_var_module.sample_with_top_k_top_p_ = grab
                # the reference samples and decodes in one call: its decode is stubbed out for this
                # timing (and timed separately below), so noise in one part cannot leak into the other
                res = vae.config.resolution
                rvae.fhat_to_img = lambda f: torch.zeros(f.shape[0], 3, res, res, device=f.device)
                try:
                    _sync(dev)
                    t0 = clock()
                    with ref_ac:
                        rvar.autoregressive_infer_cfg(B=B, label_B=labels, g_seed=0, **kw)
                    _sync(dev)
                    rt = clock() - t0
                    times["rt"] = min(times.get("rt", 1e9), rt)
                finally:
                    ref_var_module.sample_with_top_k_top_p_ = real_sampler
                    del rvae.fhat_to_img
                t, _ = best_of(lambda: ref_d(out.f_hat), 1, dev)
                times["rd"] = min(times.get("rd", 1e9), t)
                rounds.append((rt + t) / ours_round)  # this round's end-to-end speed-up
                same = len(ref_tokens) == len(out.idx_per_scale) and all(
                    torch.equal(a, b) for a, b in zip(ref_tokens, out.idx_per_scale)
                )
                n_same = sum(int((a == b).sum()) for a, b in zip(ref_tokens, out.idx_per_scale))
                share = n_same / max(1, sum(b.numel() for b in out.idx_per_scale))
                times["same"] = "True" if same else f"{100 * share:.1f}% same"
        with ac:
            gt, gd = transformer_gflops(var, B), decoder_gflops(vae, B)
        rows.append((B, times, gt, gd, rounds))

    print(
        f"\nd{var.depth} ({sum(p.numel() for p in var.parameters()) / 1e6:.0f}M) + tokenizer, "
        f"{var.patch_nums[-1] * vae.downsample}px, "
        f"device={dev} dtype={args.dtype}{' cuda-graphs' if graphs else ''} threads={torch.get_num_threads()}"
        f"{' (CPU time)' if args.cpu_time else ''}; cfg "
        f"1.5, top-k {min(900, var.V)}, top-p 0.96"
    )
    print(f"CPU: {cpu_capabilities().describe()}" if dev.type == "cpu" else f"GPU: {torch.cuda.get_device_name(dev)}")
    print(f"measured {'fp32' if args.dtype == 'int8' else args.dtype} matmul peak: {peak:.0f} GFLOP/s", end="")
    print(f"; fp32: {ref_peak:.0f} GFLOP/s (the reference's precision)\n" if ref_peak != peak else "\n")
    head = "| B | part | ours (s) | GFLOP | GFLOP/s | % of peak |" + (
        " reference (s) | speed-up | same tokens |" if ref else ""
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    nominal = False
    for B, t, gt, gd, _ in rows:
        for part, key, gf in (
            ("transformer", "t", gt),
            ("decoder", "d", gd),
            ("end-to-end", None, gt + gd),
            ("decoder, 1st call", "d_cold", gd),
        ):
            s = t[key] if key else t["t"] + t["d"]
            nom = t["wino"] and part != "transformer"  # Winograd: fewer multiplies than the count assumes
            nominal |= nom
            tag = " nominal" if nom else ""
            line = f"| {B} | {part} | {s:.2f} | {gf:.0f} | {gf / s:.0f}{tag} | {100 * gf / s / peak:.0f}%{tag} |"
            if ref:
                r = t["r" + key] if key else t["rt"] + t["rd"]
                line += f" {r:.2f} | {r / s:.2f}x | {t['same'] if part in ('transformer', 'end-to-end') else ''} |"
            print(line)
    if nominal:
        print(
            "\nnominal: direct-convolution FLOPs / time. The decoder's 3x3 convs ran as Winograd F(4x4, 3x3), "
            "which does ~1/4 of those multiplies, so nominal GFLOP/s can exceed the matmul peak."
        )
    print(
        "decoder, 1st call: a fresh process's first decode (Winograd weight transforms computed and cached); "
        "the other rows are best-of-repeats, warm."
    )
    if ref:  # the table takes each part's best time; the per-round ratios show how much noise moved it
        print()
        for B, _, _, _, rs in rows:
            print(
                f"B={B}: end-to-end speed-up per interleaved round: median {statistics.median(rs):.2f}x "
                f"(min {min(rs):.2f}x, max {max(rs):.2f}x, {len(rs)} rounds)"
            )


def make_refiner(vae, var, dev):
    """refiner:DEPTH@K -> a random-weight VAR of that depth on the same tokenizer and schedule."""
    from nextscale.configs import VARConfig
    from nextscale.models import VAR

    def make(depth: str):
        cfg = VARConfig(
            depth=int(depth),
            num_classes=var.num_classes,
            shared_aln=var.config.shared_aln,
            attn_l2_norm=var.config.attn_l2_norm,
            patch_nums=var.patch_nums,
        )
        torch.manual_seed(1)
        refiner = VAR.from_config(cfg, vae).to(dev).eval()
        refiner.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
        return enable_cpu_kernels(refiner) if dev.type == "cpu" else refiner

    return make


def modes_main(args, vae, var, dev, ac, ref, ref_ac):
    """Each mode and the exact path (and the reference, with --reference), interleaved per round;
    end-to-end = generate + decode. On CUDA also peak memory and, with --max-batch, the largest batch."""
    from nextscale.sampling import SamplingSettings

    base = SamplingSettings(guidance_scale=1.5, top_k=min(900, var.V), top_p=0.96)
    from modes import SETTINGS_KEYS, parse_mode  # benchmarks/modes.py

    specs = ["exact"] + [m for m in args.mode if m != "exact"]
    modes = {m: parse_mode(m, make_refiner(vae, var, dev)) for m in specs}
    if any("precision" in kw for kw in modes.values()):
        sys.exit("--mode: give the precision with --dtype (one per run); modes are the sampling options")

    def run(m, B, labels):
        kw = modes[m]
        with torch.no_grad(), ac:
            out = generate(
                var,
                vae,
                B=B,
                label_B=labels,
                generator=torch.Generator(device=dev).manual_seed(0),
                settings=base.replace(**{k: v for k, v in kw.items() if k in SETTINGS_KEYS}),
                refiner=kw.get("refiner"),
                refine_from_scale=kw.get("refine_from_scale"),
            )
            return out, vae.fhat_to_img(out.f_hat)

    rows = []
    for B in args.batch:
        labels = torch.arange(B, device=dev) * 37 % var.num_classes
        best, mem, exact_tokens, same = {}, {}, None, {}
        if B == args.batch[0]:
            for m in specs:  # warm-up (and the Winograd transforms) outside the timing, once, at batch 1
                run(m, 1, labels[:1])
        for _ in range(args.repeats):
            for m in specs:
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                _sync(dev)
                t0 = clock()
                out, _ = run(m, B, labels)
                _sync(dev)
                best[m] = min(best.get(m, 1e9), clock() - t0)
                if dev.type == "cuda":
                    mem[m] = torch.cuda.max_memory_allocated(dev) / 2**30
                if m == "exact":
                    exact_tokens = out.idx_per_scale
                same[m] = all(torch.equal(a, b) for a, b in zip(out.idx_per_scale, exact_tokens))
            if ref:
                _sync(dev)
                t0 = clock()
                with torch.no_grad(), ref_ac:
                    ref[1].autoregressive_infer_cfg(
                        B=B, label_B=labels, g_seed=0, cfg=1.5, top_k=min(900, var.V), top_p=0.96
                    )
                _sync(dev)
                best["reference"] = min(best.get("reference", 1e9), clock() - t0)
        rows.append((B, best, mem, same))

    print(
        f"\nd{var.depth} + tokenizer, {var.patch_nums[-1] * vae.downsample}px, device={dev} dtype={args.dtype} "
        f"threads={torch.get_num_threads()}{' (CPU time)' if args.cpu_time else ''}; cfg 1.5, top-k {min(900, var.V)}, "
        f"top-p 0.96; best of {args.repeats} "
        "interleaved rounds\n"
    )
    head = (
        "| B | mode | end-to-end (s) | images/s | vs exact |"
        + (" vs reference |" if ref else "")
        + (" peak GiB |" if dev.type == "cuda" else "")
        + " exact tokens |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for B, best, mem, same in rows:
        for m in specs:
            line = f"| {B} | {m} | {best[m]:.2f} | {B / best[m]:.1f} | {best['exact'] / best[m]:.2f}x |"
            if ref:
                line += f" {best['reference'] / best[m]:.2f}x |"
            if dev.type == "cuda":
                line += f" {mem[m]:.2f} |"
            print(line + f" {same[m]} |")
    if dev.type == "cuda" and args.max_batch:
        print()
        for m in specs:
            B, fits = 1, 0
            while B <= args.max_batch:
                try:
                    run(m, B, torch.arange(B, device=dev) % var.num_classes)
                    fits = B
                    B *= 2
                except torch.cuda.OutOfMemoryError:
                    break
                finally:
                    torch.cuda.empty_cache()
            print(f"largest batch that fits ({m}): {fits}{' (or more)' if fits >= args.max_batch else ''}")


if __name__ == "__main__":
    main()
