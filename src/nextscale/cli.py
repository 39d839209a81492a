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
    except (NextScaleError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
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
def _add_sampling_flags(p: argparse.ArgumentParser, top_k: Optional[int] = 900, top_p: float = 0.96) -> None:
    p.add_argument("--model", default=None, help="pipeline directory, released var_d*.pth (with vae_*.pth beside it), hub id, or 'default' (the bundled model; the default)")
    p.add_argument("--cfg", type=float, default=1.5, help="guidance (reference cfg; weight ramps 0 -> cfg over scales); default 1.5")
    p.add_argument("--guidance-schedule", choices=["linear", "constant"], default="linear", help="'linear' = the reference ramp (default)")
    p.add_argument("--top-k", type=int, default=top_k, help="keep the k most likely tokens (0 = off); default %(default)s")
    p.add_argument("--top-p", type=float, default=top_p, help="nucleus sampling mass in [0, 1] (0 = off); default %(default)s")
    p.add_argument("--more-smooth", action="store_true", help="Gumbel-softmax smoothing (nicer pictures; not for FID)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed + device = same image); default 0")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="compute dtype (default: bf16 on GPU, fp32 on CPU)")


def _device_dtype(args):
    import torch
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise NextScaleError("--device cuda given but no CUDA device is available; use --device cpu")
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype or "", None)
    if dt is None:
        dt = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    return dev, dt


def _check_sampling_args(args) -> None:
    from nextscale.pipelines import validate_sampling_args
    if args.cfg < 0:
        raise NextScaleError(f"--cfg must be >= 0, got {args.cfg}")
    validate_sampling_args(args.cfg, args.top_k, args.top_p)


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

    _check_sampling_args(args)
    if args.num is not None and args.num <= 0:
        raise NextScaleError(f"--num must be >= 1, got {args.num}")
    if args.batch_size <= 0:
        raise NextScaleError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = check_writable(args.out)
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
            written.append(save_image_atomic(im, Path(f"{stem}_{i:03d}_class{c}.png")))
    if args.strip:
        K = len(pipe.patch_nums)
        flat = [x for row in strips for x in row]
        written.append(save_image_atomic(make_grid(flat, nrow=K, min_cell=64), Path(f"{stem}_strip.png")))
    print(f"wrote {written[0]} ({len(images)} images{', ' + str(len(written) - 1) + ' more files' if len(written) > 1 else ''})")
    return 0


@command("info")
def _cmd_info(sub):
    p = sub.add_parser("info", help="describe a model: presets, sizes, classes, schedule")
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
    vae, var, _ = load_components(args.var, vae_path=args.vae)
    if labels is not None and len(labels) != var.num_classes:
        raise NextScaleError(f"{args.labels}: {len(labels)} names for {var.num_classes} classes")
    out = save_components(args.out, vae, var, labels=labels)
    print(f"wrote {out}: VAR d{var.depth} ({var.L} tokens, {var.num_classes} classes) + tokenizer V={vae.vocab_size}")
    return 0


# == evaluation: sample-fid / fid ==

# == training: train / tokenize / export / train-tokenizer / eval-tokenizer ==

# == editing: edit ==

# == demo ==
