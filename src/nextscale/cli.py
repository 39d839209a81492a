"""Command-line interface: ``nextscale <command> ...`` (also ``python -m nextscale``).

Every command is a thin call into the library. User errors (bad values, missing files, checkpoints
that do not fit) print one line ``nextscale: error: ...`` and exit with code 2; no traceback.
Each command registers itself with ``@command(name, help)`` in its own section below.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Dict, List, Optional

from nextscale.errors import NextScaleError

_REGISTRY: Dict[str, Callable[[argparse._SubParsersAction], None]] = {}


def command(name: str):
    """Register ``fn(subparsers)`` that adds the parser for ``name`` and sets ``func``."""
    def deco(fn):
        _REGISTRY[name] = fn
        return fn
    return deco


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: one line too, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nextscale", description="VAR next-scale prediction: sample, edit, train, evaluate.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _REGISTRY:
        _REGISTRY[name](sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
        return int(rc or 0)
    except (NextScaleError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        # user errors only: any other exception is a bug and keeps its traceback
        if os.environ.get("NEXTSCALE_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"nextscale: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nextscale: interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------------------------------------
# Commands. Each lives in its own section; keep imports of heavy modules inside the functions.
# ---------------------------------------------------------------------------------------------

# == core: sample / info / convert (nextscale.pipelines, nextscale.hub) ==
def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="pipeline directory, released var_d*.pth (with vae_*.pth beside it), hub id, or 'default' (the bundled model; the default)")
    p.add_argument("--cfg", type=float, default=None, help="guidance (reference cfg; weight ramps 0 -> cfg over scales); default: the model's recommended value (1.5 unless the model says otherwise)")
    p.add_argument("--guidance-schedule", choices=["linear", "constant"], default="linear", help="'linear' = the reference ramp (default)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (0 = off); default: the model's recommended value (900 unless the model says otherwise)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in [0, 1] (0 = off); default: the model's recommended value (0.96 unless the model says otherwise)")
    p.add_argument("--more-smooth", action="store_true", help="Gumbel-softmax smoothing (nicer pictures; not for FID)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed + device = same image); default 0")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="compute dtype (default: bf16 on GPU, fp32 on CPU)")


def _device_dtype(args):
    import torch

    from nextscale.validate import check_device
    dev = str(check_device(args.device, "--device")) if args.device else ("cuda" if torch.cuda.is_available() else "cpu")
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype or "", None)
    if dt is None:
        dt = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    return dev, dt


def _check_sampling_args(args) -> None:
    from nextscale.pipelines import validate_sampling_args
    from nextscale.validate import check_float
    if args.cfg is not None:
        check_float(args.cfg, "--cfg", lo=0.0)
    if args.top_k is not None and args.top_k < 0:
        raise NextScaleError(f"--top-k must be >= 0 (0 = off), got {args.top_k}")
    if args.top_p is not None and not 0.0 <= args.top_p <= 1.0:  # NaN fails too
        raise NextScaleError(f"--top-p must be in [0, 1] (0 = off), got {args.top_p}")
    validate_sampling_args(1.0 if args.cfg is None else args.cfg, 0 if args.top_k is None else args.top_k,
                           0.0 if args.top_p is None else args.top_p)


@command("sample")
def _cmd_sample(sub):
    p = sub.add_parser("sample", help="generate class-conditional images (grid + one PNG per image)",
                       description="Generate images. Example: nextscale sample --class 207 360 --cfg 1.5 --top-k 900 --top-p 0.96 --seed 0 --out grid.png")
    p.add_argument("--class", dest="classes", type=int, nargs="*", default=None, help="class ids (-1 = unconditional); default: all classes of a model with <= 16 classes, else 8 random")
    p.add_argument("--num", type=int, default=None, help="images per class given (default 1), or the number of random-class images")
    _add_sampling_flags(p)
    p.add_argument("--out", default="samples.png", help="grid image path; single images go to OUT_STEM_<i>.png beside it")
    p.add_argument("--strip", action="store_true", help="also write OUT_STEM_strip.png: each image after 1, 2, ..., K scales")
    p.add_argument("--nrow", type=int, default=None, help="images per grid row")
    p.add_argument("--no-singles", action="store_true", help="write only the grid")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.set_defaults(func=_run_sample)


def _run_sample(args) -> int:
    from pathlib import Path

    import torch

    from nextscale.imageio import check_writable, make_grid, save_image_atomic
    from nextscale.pipelines import load_pipeline

    from nextscale.validate import MAX_IMAGES, check_count, check_seed

    _check_sampling_args(args)
    check_seed(args.seed, "--seed")
    if args.num is not None:
        check_count(args.num, "--num", hi=MAX_IMAGES)
        check_count(args.num * max(len(args.classes or []), 1), "--num x the number of --class ids", hi=MAX_IMAGES)
    check_count(args.batch_size, "--batch-size")
    if args.nrow is not None:
        check_count(args.nrow, "--nrow")
    out = check_writable(args.out, image=True)
    dev, dt = _device_dtype(args)
    pipe = load_pipeline(args.model, device=dev, dtype=dt)
    nc = pipe.num_classes
    if args.classes:
        bad = [c for c in args.classes if not -1 <= c < nc]
        if bad:
            raise NextScaleError(f"unknown class id {bad[0]}: this model has classes 0..{nc - 1} (-1 = unconditional)")
        labels = [c for c in args.classes for _ in range(args.num or 1)]
    elif nc <= 16:
        labels = [c for c in range(nc) for _ in range(args.num or 1)]
    else:
        g = torch.Generator().manual_seed(args.seed)
        labels = torch.randint(0, nc, (args.num or 8,), generator=g).tolist()
    gen = torch.Generator(device=pipe.device).manual_seed(args.seed)
    images, used, strips = [], [], []
    from tqdm.auto import tqdm
    for s in tqdm(range(0, len(labels), args.batch_size), desc="sampling", unit="batch", disable=len(labels) <= args.batch_size and not sys.stderr.isatty()):
        chunk = labels[s:s + args.batch_size]
        o = pipe(class_labels=chunk, guidance_scale=args.cfg, guidance_schedule=args.guidance_schedule, top_k=args.top_k,
                 top_p=args.top_p, more_smooth=args.more_smooth, generator=gen, output_type="pil",
                 return_indices=args.strip, show_progress=len(labels) <= args.batch_size)
        images += o.images
        used += o.labels
        if args.strip:
            per_scale = pipe.decode_scales(o.indices)  # K x (b, 3, H, W)
            for i in range(len(chunk)):
                strips.append([im[i] for im in per_scale])
    caps = [pipe.class_name(c) for c in used]
    grid = make_grid(images, nrow=args.nrow or (10 if len(images) >= 10 else None), captions=caps, min_cell=64)
    written = [save_image_atomic(grid, out)]
    stem = out.with_suffix("")
    if not args.no_singles:
        for i, (im, c) in enumerate(zip(images, used)):
            written.append(save_image_atomic(im, Path(f"{stem}_{i:03d}_class{c}{out.suffix}")))
    if args.strip:
        K = len(pipe.patch_nums)
        flat = [x for row in strips for x in row]
        written.append(save_image_atomic(make_grid(flat, nrow=K, min_cell=64), Path(f"{stem}_strip{out.suffix}")))
    print(f"wrote {written[0]} ({len(images)} images{', ' + str(len(written) - 1) + ' more files' if len(written) > 1 else ''})")
    return 0


@command("info")
def _cmd_info(sub):
    p = sub.add_parser("info", help="describe a model: presets, sizes, classes, schedule",
                       description="Print a model's architecture (depth, width, heads, AdaLN kind), parameter counts, "
                                   "resolution, scale schedule and classes. Example: nextscale info var_d16.pth; "
                                   "nextscale info var-d16/ --json")
    p.add_argument("model", nargs="?", default="default", help="pipeline directory, var_d*.pth, hub id or 'default'")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_run_info)


def _run_info(args) -> int:
    import json

    from nextscale.pipelines import load_pipeline
    pipe = load_pipeline(args.model)
    n_var = sum(p.numel() for p in pipe.var.parameters())
    n_vae = sum(p.numel() for p in pipe.vqvae.parameters())
    info = {"resolution": pipe.resolution, "num_classes": pipe.num_classes, "patch_nums": list(pipe.patch_nums),
            "tokens": pipe.var.L, "var": pipe.var.config.to_dict(), "vqvae": pipe.vqvae.config.to_dict(),
            "var_parameters": n_var, "vqvae_parameters": n_vae, "has_class_names": pipe.labels is not None}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        c = pipe.var.config
        print(f"VAR d{c.depth}: width {c.width}, {c.heads} heads, {'shared' if c.shared_aln else 'per-block'} AdaLN, {n_var / 1e6:.1f}M parameters")
        print(f"tokenizer: V={pipe.vqvae.vocab_size}, Cvae={pipe.vqvae.Cvae}, ch={pipe.vqvae.config.ch}, {n_vae / 1e6:.1f}M parameters")
        print(f"images: {pipe.resolution}x{pipe.resolution}; scales {tuple(pipe.patch_nums)} ({pipe.var.L} tokens)")
        names = f" e.g. {', '.join(pipe.labels[:5])}" if pipe.labels else ""
        print(f"classes: {pipe.num_classes}{names}")
    return 0


@command("convert")
def _cmd_convert(sub):
    p = sub.add_parser("convert", help="turn released .pth checkpoints into a pipeline directory (safetensors)",
                       description="Example: nextscale convert --vae vae_ch160v4096z32.pth --var var_d16.pth --out var-d16/")
    p.add_argument("--vae", required=True, help="released tokenizer, e.g. vae_ch160v4096z32.pth")
    p.add_argument("--var", required=True, help="released transformer, e.g. var_d16.pth (preset inferred from shapes)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--labels", default=None, help="optional text file: one class name per line")
    p.add_argument("--patch-nums", type=int, nargs="+", default=None, help="scale schedule, only for non-released token counts")
    p.set_defaults(func=_run_convert)


def _run_convert(args) -> int:
    from pathlib import Path

    from nextscale.hub import load_components, save_components
    labels = None
    if args.labels:
        lp = Path(args.labels)
        if not lp.is_file():
            raise NextScaleError(f"{lp}: no such file")
        labels = [ln.strip() for ln in lp.read_text().splitlines() if ln.strip()]
    vae, var, _ = load_components(args.var, vae_path=args.vae, patch_nums=tuple(args.patch_nums) if args.patch_nums else None)
    if labels is not None and len(labels) != var.num_classes:
        raise NextScaleError(f"{args.labels}: {len(labels)} names for {var.num_classes} classes")
    out = save_components(args.out, vae, var, labels=labels)
    print(f"wrote {out}: VAR d{var.depth} ({var.L} tokens, {var.num_classes} classes) + tokenizer V={vae.vocab_size}")
    return 0


# == evaluation: sample-fid / fid ==
@command("sample-fid")
def _cmd_sample_fid(sub):
    p = sub.add_parser(
        "sample-fid", help="sample per-class PNGs for FID (deterministic, resumable, torchrun-sharded) and pack an ADM .npz",
        description="Sample PER_CLASS images of every class into OUT/000000.png ... and pack OUT.npz (ADM layout). "
                    "Example: torchrun --nproc_per_node=8 -m nextscale sample-fid --model var_d16.pth --per-class 50 "
                    "--protocol var-readme --out samples/d16")
    p.add_argument("--model", required=True, help="pipeline directory, released var_d*.pth, or hub id")
    p.add_argument("--out", required=True, help="folder for the PNGs (created; re-running resumes)")
    p.add_argument("--per-class", type=int, default=50, help="images per class (default 50 -> 50,000 for ImageNet)")
    p.add_argument("--protocol", default="var-readme",
                   help="var-readme (cfg 1.5, top-p 0.96, top-k 900; default) or var-paper (cfg 2.0, top-k 600)")
    p.add_argument("--cfg", type=float, default=None, help="override the protocol's cfg (the run is then named PROTOCOL+custom)")
    p.add_argument("--top-k", type=int, default=None, help="override the protocol's top-k (0 = off)")
    p.add_argument("--top-p", type=float, default=None, help="override the protocol's top-p (0 = off)")
    p.add_argument("--seed", type=int, default=0, help="base seed; chunk j uses seed + j (default 0)")
    p.add_argument("--batch", "--batch-size", dest="batch", type=int, default=25,
                   help="images per chunk/forward pass; part of the seeding, keep it fixed to reproduce (default 25)")
    p.add_argument("--num-classes", type=int, default=None, help="sample only classes 0..N-1 (default: all)")
    p.add_argument("--npz", default="", help="where to pack the samples (default: OUT.npz next to the folder)")
    p.add_argument("--no-npz", action="store_true", help="do not pack an .npz")
    p.add_argument("--device", default=None, help="cpu, cuda (default: this rank's GPU if available, else cpu)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="compute dtype (default fp32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--max-chunks", type=int, default=None, help=argparse.SUPPRESS)  # stop early (tests, time slices)
    p.set_defaults(func=_run_sample_fid)


def _run_sample_fid(args) -> int:
    import torch

    from nextscale import dist
    from nextscale.evaluation.sample import sample_for_fid

    from nextscale.validate import MAX_FID_IMAGES, check_count, check_device, check_float, check_seed
    if args.device:
        check_device(args.device, "--device")
    check_count(args.per_class, "--per-class", hi=MAX_FID_IMAGES)
    check_count(args.batch, "--batch")
    check_seed(args.seed, "--seed")
    if args.num_classes is not None:
        check_count(args.num_classes, "--num-classes")
    if args.cfg is not None:
        check_float(args.cfg, "--cfg", lo=0.0)
    if args.top_k is not None and args.top_k < 0:
        raise NextScaleError(f"--top-k must be >= 0 (0 = off), got {args.top_k}")
    if args.top_p is not None and not 0.0 <= args.top_p <= 1.0:  # NaN fails too
        raise NextScaleError(f"--top-p must be in [0, 1] (0 = off), got {args.top_p}")
    dev = dist.init_distributed(args.device)
    dt = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype or "fp32")
    if dt is not None and dev.type == "cpu":
        raise NextScaleError(f"--dtype {args.dtype} needs a GPU; use --dtype fp32 on CPU")
    try:
        res = sample_for_fid(args.model, args.out, per_class=args.per_class, protocol=args.protocol, cfg=args.cfg,
                             top_k=args.top_k, top_p=args.top_p, seed=args.seed, batch_size=args.batch,
                             num_classes=args.num_classes, npz=None if args.no_npz else args.npz, device=dev,
                             dtype=dt, progress=not args.no_progress, max_chunks=args.max_chunks,
                             log=lambda m: print(m, file=sys.stderr, flush=True))
    finally:
        dist.destroy()
    if res["rank"] == 0:
        state = "complete" if res["complete"] else "incomplete (re-run to resume)"
        print(f"{res['out']}: {res['total']} images {state}, protocol {res['protocol']}"
              + (f", npz {res['npz']}" if res["npz"] else ""))
    return 0


@command("fid")
def _cmd_fid(sub):
    p = sub.add_parser(
        "fid", help="FID, sFID, Inception Score, precision/recall of samples against a reference (PyTorch, no TensorFlow)",
        description="Example: nextscale fid --samples samples/d16.npz --ref VIRTUAL_imagenet256_labeled.npz "
                    "--inception-weights pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--samples", required=True, help="folder of PNGs, an .npz with arr_0 (ADM layout), or saved stats")
    p.add_argument("--ref", required=True,
                   help="ADM reference batch (VIRTUAL_imagenet256_labeled.npz), stats saved with --save-stats/--save-ref-stats, "
                        "or a folder / .npz of images")
    p.add_argument("--inception-weights", default=None,
                   help="pt_inception-2015-12-05-6726825d.pth (default: $NEXTSCALE_INCEPTION_WEIGHTS)")
    p.add_argument("--batch-size", type=int, default=50, help="images per Inception forward (default 50)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--splits", type=int, default=10, help="Inception Score splits (default 10)")
    p.add_argument("--k", type=int, default=3, help="k-th neighbour radius for precision/recall (default 3)")
    p.add_argument("--no-pr", action="store_true", help="skip precision/recall (no reference images needed)")
    p.add_argument("--no-sfid", action="store_true", help="skip sFID")
    p.add_argument("--fid-method", choices=["eigh", "sqrtm"], default="eigh",
                   help="matrix square root: eigh (stable, default) or sqrtm (pytorch-fid's literal form)")
    p.add_argument("--save-stats", default=None, help="save the samples' mu/sigma/features to this .npz")
    p.add_argument("--save-ref-stats", default=None, help="save the reference's statistics (+features) to this .npz for reuse as --ref")
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_fid)


def _run_fid(args) -> int:
    import json

    from nextscale.evaluation.evaluate import evaluate

    if args.batch_size < 1:
        raise NextScaleError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.splits < 1:
        raise NextScaleError(f"--splits must be >= 1, got {args.splits}")
    if args.k < 1:
        raise NextScaleError(f"--k must be >= 1, got {args.k}")
    if args.device:
        from nextscale.validate import check_device
        check_device(args.device, "--device")
    for name in ("samples", "ref"):
        if not os.path.exists(getattr(args, name)):
            raise NextScaleError(f"--{name} not found: {getattr(args, name)}; pass a folder of PNGs or an .npz")
    res = evaluate(args.samples, args.ref, inception_weights=args.inception_weights, device=args.device,
                   batch_size=args.batch_size, splits=args.splits, k=args.k, pr=not args.no_pr, sfid=not args.no_sfid,
                   fid_method=args.fid_method, save_sample_stats=args.save_stats, save_ref_stats=args.save_ref_stats,
                   progress=not args.no_progress)
    res["samples"], res["ref"] = args.samples, args.ref
    for key, label in (("fid", "FID"), ("sfid", "sFID"), ("is", "Inception Score"), ("precision", "Precision"),
                       ("recall", "Recall")):
        if res.get(key) is not None:
            extra = f" ± {res['is_std']:.4f} ({args.splits} splits)" if key == "is" else ""
            print(f"{label}: {res[key]:.4f}{extra}")
    print(f"samples: {res['num_samples']}, reference: {res['num_ref'] or '-'} images ({res['ref_origin']})")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=1)
        os.replace(tmp, args.json)
    return 0


# == training: train / tokenize / export / train-tokenizer / eval-tokenizer ==
def _bool_flag(p: argparse.ArgumentParser, name: str, help: str) -> None:
    p.add_argument(f"--{name}", dest=name.replace("-", "_"), action=argparse.BooleanOptionalAction, default=None, help=help)


def _add_loop_flags(g, every: int, pictures: str) -> None:
    """The loop flags of train / train-tokenizer (TrainConfigBase), up to --sample-every."""
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", type=int, default=None, help="data loader workers per process; default 4 on GPU, 0 on CPU")
    g.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if available, else cpu")
    g.add_argument("--ckpt-every", type=int, default=1000, help="steps between checkpoints (also at the end and on SIGTERM/Ctrl-C); default 1000")
    g.add_argument("--keep", type=int, default=3, help="checkpoints kept; default 3")
    g.add_argument("--log-every", type=int, default=20, help="steps between log lines; default 20")
    g.add_argument("--eval-every", type=int, default=every, help=f"steps between validation passes (0 = at the end only); default {every}")
    g.add_argument("--sample-every", type=int, default=every, help=f"steps between {pictures} (0 = at the end only, -1 = never); default {every}")


def _fit(train, tc) -> int:
    """Run ``train(tc)``, leave the process group; exit code 128 + signal when interrupted."""
    from nextscale import dist
    try:
        res = train(tc)
    finally:
        dist.destroy()
    if res.interrupted:
        return 128 + int(res.interrupted)
    return 0


@command("train")
def _cmd_train(sub):
    p = sub.add_parser(
        "train", help="train the VAR transformer (resumes from RUN_DIR's latest checkpoint)",
        description="Train VAR on an image folder or a token cache. Re-running the same command resumes. "
                    "DDP: torchrun --nproc_per_node=N -m nextscale train ... (multi-node: add --nnodes/--node_rank/--master_addr/--master_port). "
                    "Reference flag names are given in brackets; see docs/training.md.")
    g = p.add_argument_group("data and model")
    g.add_argument("--data", default=None, help="image folder: one sub-folder per class (DIR/train + DIR/val, or a single folder); images directly in DIR = unconditional")
    g.add_argument("--cache", default=None, help="token cache from `nextscale tokenize` (no VQ-VAE encoder at train time)")
    g.add_argument("--tokenizer", default=None, help="VQ-VAE: pipeline dir, vae_*.pth, 'default', or 'random' (smoke tests); default: the cache's / the --init model's")
    g.add_argument("--init", default=None, help="fine-tune from a released or exported model (pipeline dir, var_d*.pth, 'default')")
    g.add_argument("--preset", default="d16", help="architecture of a fresh model (tiny, mnist, d16, d20, d24, d30, d36) [depth]; default d16")
    g.add_argument("--run-dir", default=None, help="run folder (checkpoints, logs, samples); default runs/var-PRESET")
    g.add_argument("--hflip", action="store_true", help="random horizontal flips [hflip]")
    g.add_argument("--mid-reso", type=float, default=1.125, help="resize the shorter side to this x resolution, then random-crop [mid_reso]; default 1.125")
    g = p.add_argument_group("length and batch")
    g.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    g.add_argument("--epochs", type=float, default=250, help="[ep]; default 250")
    g.add_argument("--batch-size", type=int, default=768, help="global batch per optimizer step, all GPUs together [bs]; default 768")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step [ac]; default 1")
    g = p.add_argument_group("optimisation (reference recipe)")
    g.add_argument("--base-lr", type=float, default=1e-4, help="peak lr = base-lr x batch-size / 256 [tblr]; default 1e-4")
    g.add_argument("--lr", type=float, default=None, help="absolute peak lr (overrides --base-lr) [tlr]")
    g.add_argument("--weight-decay", type=float, default=0.05, help="[twd]; default 0.05")
    g.add_argument("--weight-decay-end", type=float, default=None, help="cosine-annealed to this [twde]; default = --weight-decay")
    g.add_argument("--grad-clip", type=float, default=2.0, help="max grad norm, <= 0 off [tclip]; default 2")
    g.add_argument("--label-smooth", type=float, default=0.0, help="[ls]; default 0")
    g.add_argument("--warmup-steps", type=int, default=None, help="linear lr warm-up [wp]; default 2%% of the steps")
    g.add_argument("--warmup-start", type=float, default=0.005, help="lr factor at step 0 [wp0]; default 0.005")
    g.add_argument("--lr-end", type=float, default=0.01, help="final lr factor [wpe]; default 0.01")
    g.add_argument("--schedule", default=None, help="cos, lin, lin0, lin00, exp, linT [sche]; default lin0 (lin<progressive> with --progressive)")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="mixed precision; fp16 uses loss scaling [fp16=0/2/1]; default none")
    g.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights, 0 = off (export uses EMA when kept)")
    g.add_argument("--cond-drop", type=float, default=None, help="class dropout for guidance; default the model's (0.1)")
    g = p.add_argument_group("initialisation of a fresh model")
    g.add_argument("--init-adaln", type=float, default=0.5, help="[aln]; default 0.5")
    g.add_argument("--init-adaln-gamma", type=float, default=1e-5, help="[alng]; default 1e-5")
    g.add_argument("--init-head", type=float, default=0.02, help="[hd]; default 0.02")
    g.add_argument("--init-std", type=float, default=-1.0, help="-1 = sqrt(1/3C) [ini]; default -1")
    _bool_flag(g, "shared-aln", "one AdaLN shared by all blocks [saln]; default: the preset's")
    _bool_flag(g, "attn-l2-norm", "cosine attention [anorm]; default: the preset's")
    g = p.add_argument_group("progressive training")
    g.add_argument("--progressive", type=float, default=0.0, help="grow the scales during this fraction of training, 0 = off [pg]")
    g.add_argument("--progressive-start", type=int, default=4, help="first stage: index of the last scale trained [pg0]; default 4")
    g.add_argument("--progressive-warmup-steps", type=int, default=None, help="fade-in of a new scale [pgwp]; default steps/300")
    g = p.add_argument_group("loop")
    _add_loop_flags(g, every=5000, pictures="sample grids")
    g.add_argument("--fsdp", action="store_true", help="shard parameters/optimizer across GPUs (d30/d36) instead of DDP")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from nextscale.train.var import VARTrainConfig, train_var

    for name in ("steps", "batch_size", "grad_accum", "ckpt_every", "keep", "log_every"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise NextScaleError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    tc = VARTrainConfig(
        data=args.data, cache=args.cache, tokenizer=args.tokenizer, init=args.init, preset=args.preset, run_dir=args.run_dir,
        steps=args.steps, epochs=args.epochs, batch_size=args.batch_size, grad_accum=args.grad_accum, base_lr=args.base_lr,
        lr=args.lr, weight_decay=args.weight_decay, weight_decay_end=args.weight_decay_end, grad_clip=args.grad_clip,
        label_smooth=args.label_smooth, warmup_steps=args.warmup_steps, warmup_start=args.warmup_start, lr_end=args.lr_end,
        schedule=args.schedule, amp=args.amp, ema=args.ema, cond_drop=args.cond_drop, init_adaln=args.init_adaln,
        init_adaln_gamma=args.init_adaln_gamma, init_head=args.init_head, init_std=args.init_std, shared_aln=args.shared_aln,
        attn_l2_norm=args.attn_l2_norm, progressive=args.progressive, progressive_start=args.progressive_start,
        progressive_warmup_steps=args.progressive_warmup_steps, hflip=args.hflip, mid_reso=args.mid_reso, seed=args.seed,
        workers=args.workers, device=args.device, ckpt_every=args.ckpt_every, keep_last=args.keep, log_every=args.log_every,
        eval_every=args.eval_every, sample_every=args.sample_every, fsdp=args.fsdp, progress=not args.no_progress)
    return _fit(train_var, tc)


@command("tokenize")
def _cmd_tokenize(sub):
    p = sub.add_parser("tokenize", help="pre-encode an image folder into a multi-scale token cache",
                       description="Encode every image (center crop, and its mirror image) with the tokenizer into memory-mapped token ids. "
                                   "Example: nextscale tokenize --data DIR --tokenizer MODEL --out CACHE; then nextscale train --cache CACHE ...")
    p.add_argument("--data", required=True, help="image folder (DIR/train + DIR/val, or one folder of class sub-folders)")
    p.add_argument("--tokenizer", required=True, help="VQ-VAE: pipeline dir, vae_*.pth, 'default', or 'random' (needs --preset)")
    p.add_argument("--out", required=True, help="cache folder to write (atomically)")
    p.add_argument("--preset", default=None, help="architecture for --tokenizer random / released .pth schedules")
    p.add_argument("--no-flip", action="store_true", help="do not store the h-flipped view (then training cannot use --hflip)")
    p.add_argument("--mid-reso", type=float, default=1.125, help="shorter side -> this x resolution before the center crop; default 1.125")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0, help="seed of --tokenizer random")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache at --out")
    p.set_defaults(func=_run_tokenize)


def _run_tokenize(args) -> int:
    from nextscale.train.var import tokenize
    c = tokenize(args.data, args.tokenizer, args.out, preset=args.preset, flip=not args.no_flip, batch_size=args.batch_size,
                 device=args.device, workers=args.workers, mid_reso=args.mid_reso, overwrite=args.overwrite, seed=args.seed)
    print(f"token cache {c.root}: " + ", ".join(f"{k} {v}" for k, v in c.meta["splits"].items())
          + f" images, {len(c.classes)} classes, dtype {c.meta['dtype']}, fingerprint {c.fingerprint}")
    return 0


def _export_command(name: str, help: str, description: str, out_help: str, what: str, export: Callable[[], Callable]) -> None:
    """Register ``nextscale NAME RUN --out DIR [--weights]``; ``export()`` imports the export function
    (lazily: heavy modules load only when the command runs). ``what`` prefixes "step" in the report."""
    def run(args) -> int:
        info = export()(args.run, args.out, weights=args.weights)
        print(f"exported {what}step {info['step']} ({info['weights']} weights) from {info['checkpoint']} to {info['out']}")
        return 0

    @command(name)
    def add_parser(sub):
        p = sub.add_parser(name, help=help, description=description)
        p.add_argument("run", help="run folder (its latest checkpoint) or a checkpoints/step_*.pt file")
        p.add_argument("--out", required=True, help=out_help)
        p.add_argument("--weights", choices=["auto", "ema", "raw"], default="auto", help="auto = EMA when the run kept one")
        p.set_defaults(func=run)


def _export_run():
    from nextscale.train.var import export_run
    return export_run


_export_command("export", "turn a training run/checkpoint into a pipeline directory",
                "Example: nextscale export runs/var-d16 --out my-model; then nextscale sample --model my-model",
                "pipeline directory to write", "", _export_run)


# == tokenizer training: train-tokenizer / eval-tokenizer ==
@command("train-tokenizer")
def _cmd_train_tokenizer(sub):
    p = sub.add_parser(
        "train-tokenizer", help="train / fine-tune the multi-scale VQ-VAE (resumes from the run's latest checkpoint)",
        description="VQGAN-family recipe: pixel L2/L1 + VQ (beta 0.25, straight-through) + optional LPIPS + hinge PatchGAN "
                    "with VQGAN's adaptive weight after --disc-start. Re-running the same command resumes. DDP: torchrun "
                    "--nproc_per_node=N -m nextscale train-tokenizer ... On completion the tokenizer is exported to OUT/tokenizer "
                    "(use it with nextscale tokenize/train --tokenizer). See docs/tokenizer.md.")
    g = p.add_argument_group("data and model")
    g.add_argument("--data", required=True, help="image folder (DIR/train + DIR/val, class sub-folders, or images directly in DIR)")
    g.add_argument("--preset", default="mnist", help="architecture of a fresh tokenizer (tiny, mnist, d16 ...); default mnist")
    g.add_argument("--init", default=None, help="fine-tune: vae_ch160v4096z32.pth, a tokenizer/pipeline directory or a run folder")
    g.add_argument("--out", "--run-dir", dest="out", default=None, help="run folder (checkpoints, logs, pictures, tokenizer/); default runs/tokenizer-PRESET")
    g.add_argument("--vocab-size", type=int, default=None, help="codebook size V (default: the preset's)")
    g.add_argument("--z-channels", type=int, default=None, help="code vector width Cvae (default: the preset's)")
    g.add_argument("--ch", type=int, default=None, help="encoder/decoder base width, a multiple of 32 (default: the preset's)")
    g.add_argument("--num-res-blocks", type=int, default=None, help="residual blocks per level (default: the preset's)")
    g.add_argument("--patch-nums", type=int, nargs="+", default=None, help="scale schedule, e.g. 1 2 4 6 8 (a single number = 1-scale baseline)")
    g.add_argument("--eini", type=float, default=-1.0, help="codebook init of a fresh model: <0 uniform +-|eini|/V (VQGAN), >0 trunc-normal std, 0 N(0,1); default -1")
    g.add_argument("--hflip", action="store_true", help="random horizontal flips")
    g.add_argument("--mid-reso", type=float, default=1.125, help="shorter side -> this x resolution, then random crop; default 1.125")
    g = p.add_argument_group("length and batch")
    g.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    g.add_argument("--epochs", type=float, default=40, help="default 40")
    g.add_argument("--batch-size", type=int, default=32, help="global batch per optimizer step; default 32")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step; default 1")
    g = p.add_argument_group("optimisation (LlamaGen vq_train defaults)")
    g.add_argument("--lr", type=float, default=1e-4, help="autoencoder lr (AdamW 0.9/0.95); default 1e-4")
    g.add_argument("--disc-lr", type=float, default=None, help="discriminator lr; default = --lr")
    g.add_argument("--weight-decay", type=float, default=0.0, help="default 0")
    g.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm per network, <= 0 off; default 1")
    g.add_argument("--warmup-steps", type=int, default=0, help="linear lr warm-up; default 0")
    g.add_argument("--lr-end", type=float, default=1.0, help="final lr factor of a cosine decay; 1 = constant (default)")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="mixed precision; default none")
    g.add_argument("--ema", type=float, default=0.0, help="EMA decay of the autoencoder, 0 = off (export uses EMA when kept)")
    g = p.add_argument_group("losses (defaults: VQGAN / LlamaGen)")
    g.add_argument("--rec-loss", choices=["l2", "l1"], default="l2", help="pixel loss; default l2 (LlamaGen)")
    g.add_argument("--rec-weight", type=float, default=1.0, help="default 1")
    g.add_argument("--codebook-weight", type=float, default=1.0, help="weight of the VQ loss; default 1")
    g.add_argument("--beta", type=float, default=None, help="commitment weight; default the config's 0.25")
    g.add_argument("--lpips-weights", default=None, help="local LPIPS weights (file or folder: VGG16 features.* + lin*.model.1.weight); off without it")
    g.add_argument("--perceptual-weight", type=float, default=1.0, help="LPIPS weight (with --lpips-weights); default 1")
    g.add_argument("--disc-weight", type=float, default=0.5, help="GAN weight, 0 = no discriminator; default 0.5 (LlamaGen)")
    g.add_argument("--disc-start", type=int, default=20000, help="step at which the GAN starts; default 20000 (LlamaGen)")
    _bool_flag(g, "adaptive-weight", "VQGAN's adaptive GAN weight at the last decoder layer; default on")
    g.add_argument("--disc-layers", type=int, default=3, help="PatchGAN depth; default 3")
    g.add_argument("--disc-ch", type=int, default=64, help="PatchGAN base width; default 64")
    g.add_argument("--reinit-dead-every", type=int, default=0, help="re-initialise dead codes every N steps (codebook restart), 0 = off")
    g.add_argument("--dead-threshold", type=float, default=1e-3, help="dead = running hits summed over scales below this; default 1e-3")
    g = p.add_argument_group("loop")
    _add_loop_flags(g, every=2000, pictures="per-scale pictures")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.set_defaults(func=_run_train_tokenizer)


def _run_train_tokenizer(args) -> int:
    from nextscale.train.tokenizer import TokenizerTrainConfig, train_tokenizer

    for name in ("steps", "batch_size", "grad_accum", "ckpt_every", "keep", "log_every", "vocab_size", "z_channels", "ch",
                 "num_res_blocks"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise NextScaleError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    tc = TokenizerTrainConfig(
        data=args.data, preset=args.preset, init=args.init, run_dir=args.out, vocab_size=args.vocab_size,
        z_channels=args.z_channels, ch=args.ch, num_res_blocks=args.num_res_blocks,
        patch_nums=tuple(args.patch_nums) if args.patch_nums else None, eini=args.eini, steps=args.steps, epochs=args.epochs,
        batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, disc_lr=args.disc_lr, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, warmup_steps=args.warmup_steps, lr_end=args.lr_end, amp=args.amp, ema=args.ema,
        rec_loss=args.rec_loss, rec_weight=args.rec_weight, codebook_weight=args.codebook_weight, beta=args.beta,
        perceptual_weight=args.perceptual_weight, lpips_weights=args.lpips_weights, disc_weight=args.disc_weight,
        disc_start=args.disc_start, adaptive_weight=args.adaptive_weight is not False, disc_layers=args.disc_layers,
        disc_ch=args.disc_ch, reinit_dead_every=args.reinit_dead_every, dead_threshold=args.dead_threshold,
        hflip=args.hflip, mid_reso=args.mid_reso, seed=args.seed, workers=args.workers, device=args.device,
        ckpt_every=args.ckpt_every, keep_last=args.keep, log_every=args.log_every, eval_every=args.eval_every,
        sample_every=args.sample_every, progress=not args.no_progress)
    return _fit(train_tokenizer, tc)


def _export_tokenizer():
    from nextscale.train.tokenizer import export_tokenizer
    return export_tokenizer


_export_command("export-tokenizer", "turn a train-tokenizer run/checkpoint into a tokenizer directory",
                "Example: nextscale export-tokenizer runs/tok --out my-tok; then nextscale tokenize --tokenizer my-tok ...",
                "tokenizer directory to write (model_index.json + vqvae/)", "tokenizer ", _export_tokenizer)


@command("eval-tokenizer")
def _cmd_eval_tokenizer(sub):
    p = sub.add_parser("eval-tokenizer", help="PSNR / SSIM / per-scale code usage / rFID of a tokenizer, and a per-scale picture",
                       description="Example: nextscale eval-tokenizer runs/tok --data DIR --picture scales.png")
    p.add_argument("model", help="tokenizer directory, pipeline directory, train-tokenizer run folder, step_*.pt or vae_*.pth")
    p.add_argument("--data", required=True, help="image folder; its val/ split when present")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--picture", default=None, help="PNG: rows of [original, rebuilt from 1, 2, ..., K scales]; default MODEL-dir/eval_scales.png for run folders")
    p.add_argument("--rows", type=int, default=4, help="images in the picture; default 4")
    p.add_argument("--patch-nums", type=int, nargs="+", default=None, help="scale schedule for a released .pth")
    p.add_argument("--inception-weights", default=None, help="FID Inception weights for rFID (else $NEXTSCALE_INCEPTION_WEIGHTS; rFID is skipped without them)")
    p.add_argument("--no-rfid", action="store_true", help="skip rFID")
    p.add_argument("--mid-reso", type=float, default=1.125, help="shorter side -> this x resolution before the center crop")
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    p.set_defaults(func=_run_eval_tokenizer)


def _run_eval_tokenizer(args) -> int:
    import torch

    from nextscale.evaluation.tokenizer import evaluate_tokenizer, format_report, save_json
    from nextscale.hub import load_tokenizer
    from nextscale.validate import check_device, check_mid_reso, image_format
    if args.batch_size <= 0 or (args.max_images is not None and args.max_images <= 0) or args.rows <= 0:
        raise NextScaleError("--batch-size, --max-images and --rows must be positive integers")
    if args.device:
        check_device(args.device, "--device")
    check_mid_reso(args.mid_reso)
    if args.picture is not None:  # its folder is created when missing
        image_format(args.picture, "--picture")
    vae = load_tokenizer(args.model, v_patch_nums=tuple(args.patch_nums) if args.patch_nums else None)
    picture = args.picture
    if picture is None and os.path.isdir(args.model):
        picture = os.path.join(args.model, "eval_scales.png")
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    r = evaluate_tokenizer(vae, args.data, batch_size=args.batch_size, max_images=args.max_images, picture=picture,
                           picture_rows=args.rows, inception_weights=args.inception_weights, rfid=not args.no_rfid,
                           device=dev, mid_reso=args.mid_reso)
    print(format_report(r))
    if args.json:
        save_json(r, args.json)
    return 0


# == editing: edit ==
@command("edit")
def _cmd_edit(sub):
    p = sub.add_parser(
        "edit", help="zero-shot editing: in-paint (white mask = regenerate), out-paint, class edit, variations",
        description="Edit an image with the generation loop, keeping the input's tokens where the mask is black. "
                    "Examples: nextscale edit --image in.png --mask mask.png --class 207 --seed 0 --out out.png; "
                    "nextscale edit --image in.png --outpaint 64,0,0,0 --out wider.png; "
                    "nextscale edit --image in.png --keep-scales 4 --num 4 --out variations.png. See docs/editing.md.")
    p.add_argument("--image", required=True, help="image to edit (center-cropped to a square and resized to the model resolution)")
    p.add_argument("--mask", default=None, help="same size as --image; white = regenerate, black = keep (binary; see --mask-threshold)")
    p.add_argument("--class", dest="class_label", type=int, default=None, help="class of the regenerated content (-1 = unconditional, the default)")
    p.add_argument("--outpaint", default=None, metavar="L,T,R,B",
                   help="place the image inside the model canvas with these margins in canvas pixels (negative = beyond the edge: "
                         "write --outpaint=-32,0,32,0); the rest is generated")
    p.add_argument("--keep-scales", type=int, default=None, metavar="K", help="keep the first K scales of the image, regenerate the finer ones (variations)")
    p.add_argument("--mask-threshold", type=float, default=None, help="accept a gray mask: pixels >= this (0..1] are regenerated")
    p.add_argument("--num", type=int, default=1, help="number of edits of the image (different samples); > 1 writes a grid to --out and OUT_STEM_<i>.png")
    _add_sampling_flags(p)
    p.add_argument("--out", default="edit.png", help="output image path (default edit.png)")
    p.add_argument("--compare", action="store_true", help="also write OUT_STEM_compare.png: input canvas | mask (white = regenerated) | result(s)")
    p.set_defaults(func=_run_edit)


def _run_edit(args) -> int:
    from pathlib import Path

    import torch

    from nextscale.editing import NextScaleInpaintPipeline, parse_outpaint
    from nextscale.imageio import check_writable, load_image, make_grid, save_image_atomic

    from nextscale.validate import MAX_IMAGES, check_count, check_seed

    _check_sampling_args(args)
    check_seed(args.seed, "--seed")
    check_count(args.num, "--num", hi=MAX_IMAGES)
    for flag, path in (("--image", args.image), ("--mask", args.mask)):
        if path is not None and not os.path.isfile(path):
            raise NextScaleError(f"{flag} {path!r}: no such file")
    if args.mask is None and args.outpaint is None and args.keep_scales is None:
        raise NextScaleError("nothing to edit: give --mask (white = regenerate), --outpaint L,T,R,B or --keep-scales K")
    outpaint = parse_outpaint(args.outpaint)
    out = check_writable(args.out, image=True)
    image = load_image(args.image)
    mask = load_image(args.mask) if args.mask is not None else None
    if mask is not None and outpaint is None and args.keep_scales is None and max(mask.convert("L").getextrema()) == 0:
        raise NextScaleError(f"{args.mask}: the mask is all black, so nothing would be regenerated; "
                             "paint the region to regenerate white (black = keep)")
    dev, dt = _device_dtype(args)
    pipe = NextScaleInpaintPipeline.from_pretrained(args.model or "default", device=dev, dtype=dt)
    if args.class_label is not None and not -1 <= args.class_label < pipe.num_classes:
        raise NextScaleError(f"unknown class id {args.class_label}: this model has classes 0..{pipe.num_classes - 1} (-1 = unconditional)")
    label = -1 if args.class_label is None else args.class_label
    import warnings
    with warnings.catch_warnings(record=True) as caught:  # all-black / all-white masks: one-line notes
        warnings.simplefilter("always", UserWarning)
        o = pipe(image, mask, class_labels=[label] * args.num, outpaint=outpaint, keep_scales=args.keep_scales,
                 mask_threshold=args.mask_threshold, guidance_scale=args.cfg, guidance_schedule=args.guidance_schedule,
                 top_k=args.top_k, top_p=args.top_p, more_smooth=args.more_smooth,
                 generator=torch.Generator(device=pipe.device).manual_seed(args.seed), output_type="pil")
    for w in caught:
        print(f"nextscale: note: {w.message}", file=sys.stderr)
    written = []
    stem = out.with_suffix("")
    if args.num == 1:
        written.append(save_image_atomic(o.images[0], out))
    else:
        written.append(save_image_atomic(make_grid(o.images, min_cell=64), out))
        for i, im in enumerate(o.images):
            written.append(save_image_atomic(im, Path(f"{stem}_{i:03d}{out.suffix}")))
    if args.compare:
        plan = pipe.prepare(image, mask, outpaint=outpaint, keep_scales=args.keep_scales, mask_threshold=args.mask_threshold)
        canvas = plan.image[0].add(1).mul(0.5).cpu()
        regen = (~plan.keep_pixels[0]).float().expand(3, -1, -1).cpu()
        written.append(save_image_atomic(make_grid([canvas, regen] + list(o.images), nrow=2 + len(o.images),
                                                   captions=["input", "mask"] + [f"edit {i}" for i in range(len(o.images))],
                                                   min_cell=96), Path(f"{stem}_compare.png")))
    print(f"wrote {written[0]}" + (f" (+{len(written) - 1} more files)" if len(written) > 1 else ""))
    return 0


# == demo ==
@command("demo")
def _cmd_demo(sub):
    p = sub.add_parser("demo", help="local web page: generate and edit images, watching them form scale by scale (needs nextscale[demo])",
                       description="Serve the interactive demo (Gradio) on this machine. Example: nextscale demo --port 7860. "
                                   "Loopback only unless --host says otherwise. See docs/demo.md.")
    p.add_argument("--model", default=None, help="pipeline directory, var_d*.pth, hub id or 'default' (the bundled model; the default)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; anything else is reachable by others: a warning is printed)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="compute dtype (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--max-batch-size", type=int, default=4, help="largest batch a request may ask for (default 4)")
    p.add_argument("--concurrency", type=int, default=1, help="requests worked on at once (the model still runs one at a time); default 1")
    p.add_argument("--queue-size", type=int, default=32, help="requests allowed to wait; more are refused with a message (default 32)")
    p.add_argument("--scale-delay", type=float, default=0.0, help="pause (s) between streamed scales, to watch a fast model; default 0")
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from nextscale.demo import serve  # sets GRADIO_ANALYTICS_ENABLED=False / HF_HUB_DISABLE_TELEMETRY=1 first
    if not 0 <= args.scale_delay <= 10:
        raise NextScaleError(f"--scale-delay must be in [0, 10] seconds, got {args.scale_delay}")
    dev, dt = _device_dtype(args)
    serve(args.model, host=args.host, port=args.port, device=dev, dtype=dt, max_batch_size=args.max_batch_size,
          concurrency_limit=args.concurrency, max_queue=args.queue_size, scale_delay=args.scale_delay,
          print_fn=lambda m: print(m, file=sys.stderr, flush=True))
    return 0
