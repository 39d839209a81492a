"""Command-line interface: ``nextscale <command> ...`` (also ``python -m nextscale``).

Every command is a thin call into the library. User errors (bad values, missing files, checkpoints
that do not fit) print one line ``nextscale: error: ...`` and exit with code 2; no traceback.
Each command is a function registered with ``@command(name, arguments, help, description)``;
its arguments are declared in :mod:`nextscale.app.cli_args` (the training flags are generated there
from the config dataclasses of :mod:`nextscale.train.config`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable, Dict, List, Optional, Tuple

from nextscale.app import cli_args as A
from nextscale.app.cli_args import config_from_args, device_dtype, error_line, sampling_changes
from nextscale.errors import NextScaleError

_REGISTRY: Dict[str, Tuple[Callable, str, Optional[str], Callable]] = {}


def command(
    name: str, arguments: Callable[[argparse.ArgumentParser], None], help: str, description: Optional[str] = None
):
    """Register the decorated ``run(args) -> exit code`` as ``nextscale NAME``; ``arguments(parser)`` adds its flags."""

    def deco(run):
        _REGISTRY[name] = (arguments, help, description, run)
        return run

    return deco


def build_parser() -> argparse.ArgumentParser:
    p = A.Parser(prog="nextscale", description="VAR next-scale prediction: sample, edit, train, evaluate.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=A.Parser)
    for name, (arguments, help, description, run) in _REGISTRY.items():
        sp = sub.add_parser(name, help=help, description=description)
        arguments(sp)
        sp.set_defaults(func=run)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (NextScaleError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        # user errors only: any other exception is a bug and keeps its traceback
        if os.environ.get("NEXTSCALE_DEBUG"):
            raise
        print(f"nextscale: error: {error_line(e, args)}", file=sys.stderr)  # field names written as flags
        return 2
    except KeyboardInterrupt:
        print("nextscale: interrupted", file=sys.stderr)
        return 130


def _lazy(path: str) -> Callable:
    """``"module:function"`` imported on first call (heavy modules load only when a command runs)."""

    def call(*a, **k):
        mod, fn = path.split(":")
        return getattr(importlib.import_module(mod), fn)(*a, **k)

    return call


# == Commands, one section each (heavy modules imported inside) == core: sample / info / convert ==
@command(
    "sample",
    A.sample,
    "generate class-conditional images (grid + one PNG per image)",
    "Generate images. Example: nextscale sample --class 207 360 --cfg 1.5 --top-k 900 --top-p 0.96 --seed 0 --out "
    "grid.png",
)
def _run_sample(args) -> int:
    import torch
    from tqdm.auto import tqdm

    from nextscale.imageio import check_writable, make_grid, save_image_set
    from nextscale.pipeline_ar import load_any_pipeline as load_pipeline  # VAR, or an AR baseline directory
    from nextscale.validate import MAX_IMAGES, check_class_ids, check_count, check_seed

    sampling = sampling_changes(args)
    check_seed(args.seed, "--seed")
    if args.num is not None:
        check_count(args.num, "--num", hi=MAX_IMAGES)
        check_count(args.num * max(len(args.classes or []), 1), "--num x the number of --class ids", hi=MAX_IMAGES)
    check_count(args.batch_size, "--batch-size")
    if args.nrow is not None:
        check_count(args.nrow, "--nrow")
    out = check_writable(args.out, image=True)
    dev, dt = device_dtype(args)
    pipe, fast = load_pipeline(args.model, device=dev, dtype=dt, variant=args.variant), A.refiner_kwargs(args, dev)
    nc = pipe.num_classes
    if args.classes:
        bad = [c for c in args.classes if isinstance(c, int) and not -1 <= c < nc]
        if bad:
            raise NextScaleError(f"unknown class id {bad[0]}: this model has classes 0..{nc - 1} (-1 = unconditional)")
        labels = [
            c
            for c in check_class_ids(args.classes, nc, "--class", class_names=pipe.labels)
            for _ in range(args.num or 1)
        ]
    elif nc <= 16:
        labels = [c for c in range(nc) for _ in range(args.num or 1)]
    else:
        labels = torch.randint(0, nc, (args.num or 8,), generator=torch.Generator().manual_seed(args.seed)).tolist()
    gen, settings = torch.Generator(device=pipe.device).manual_seed(args.seed), pipe.settings.replace(**sampling)
    images, used, strips, one = [], [], [], len(labels) <= args.batch_size
    for s in tqdm(
        range(0, len(labels), args.batch_size), desc="sampling", unit="batch", disable=one and not sys.stderr.isatty()
    ):
        o = pipe(
            class_labels=labels[s : s + args.batch_size],
            settings=settings,
            generator=gen,
            output_type="pil",
            return_indices=args.strip,
            show_progress=one,
            **fast,
        )
        images, used = images + o.images, used + o.labels
        if args.strip:
            per_scale = pipe.decode_scales(o.indices)  # K x (b, 3, H, W)
            strips += [im[i] for i in range(len(o.images)) for im in per_scale]
    extras = [(f"_strip{out.suffix}", make_grid(strips, nrow=len(pipe.patch_nums), min_cell=64))] if args.strip else []
    names = [pipe.class_name(c) for c in used]
    written = save_image_set(
        out,
        images,
        singles=None if args.no_singles else A.single_names(used, names),
        extras=extras,
        nrow=args.nrow or (10 if len(images) >= 10 else None),
        captions=names,
        min_cell=64,
    )
    print(
        f"wrote {written[0]} ({len(images)} "
        f"images{', ' + str(len(written) - 1) + ' more files' if len(written) > 1 else ''})"
    )
    return 0


@command(
    "classes",
    A.classes,
    "list a model's classes (id and name), e.g. to find the id of a golden retriever",
    "Print every class of a model, or those matching --grep. Example: nextscale classes FoundationVision/var "
    "--variant d16 --grep retriever",
)
def _run_classes(args) -> int:
    from nextscale.classes import grep_classes
    from nextscale.pipelines import load_pipeline

    pipe = load_pipeline(args.model, variant=args.variant)
    hits = grep_classes(pipe.labels or [str(c) for c in range(pipe.num_classes)], args.grep)
    if not hits:
        raise NextScaleError(f"no class of this model matches {args.grep!r}")
    print("\n".join(f"{c:4d}  {n}" for c, n in hits))
    return 0


@command(
    "info",
    A.info,
    "describe a model: presets, sizes, classes, schedule",
    "Print a model's architecture (depth, width, heads, AdaLN kind), parameter counts, resolution, scale schedule "
    "and classes. Example: nextscale info var_d16.pth; nextscale info var-d16/ --json",
)
def _run_info(args) -> int:
    import json

    from nextscale.pipelines import load_pipeline

    pipe = load_pipeline(args.model, variant=args.variant)
    n_var = sum(p.numel() for p in pipe.var.parameters())
    n_vae = sum(p.numel() for p in pipe.vqvae.parameters())
    info = {
        "resolution": pipe.resolution,
        "num_classes": pipe.num_classes,
        "patch_nums": list(pipe.patch_nums),
        "tokens": pipe.var.L,
        "var": pipe.var.config.to_dict(),
        "vqvae": pipe.vqvae.config.to_dict(),
        "var_parameters": n_var,
        "vqvae_parameters": n_vae,
        "has_class_names": pipe.labels is not None,
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        c = pipe.var.config
        print(
            f"VAR d{c.depth}: width {c.width}, {c.heads} heads, {'shared' if c.shared_aln else 'per-block'} AdaLN, "
            f"{n_var / 1e6:.1f}M parameters"
        )
        print(
            f"tokenizer: V={pipe.vqvae.vocab_size}, Cvae={pipe.vqvae.Cvae}, ch={pipe.vqvae.config.ch}, "
            f"{n_vae / 1e6:.1f}M parameters"
        )
        print(f"images: {pipe.resolution}x{pipe.resolution}; scales {tuple(pipe.patch_nums)} ({pipe.var.L} tokens)")
        names = f" e.g. {', '.join(pipe.labels[:5])}" if pipe.labels else ""
        print(f"classes: {pipe.num_classes}{names}")
    return 0


@command(
    "convert",
    A.convert,
    "turn released .pth checkpoints into a pipeline directory (safetensors)",
    "Example: nextscale convert --vae vae_ch160v4096z32.pth --var var_d16.pth --out var-d16/",
)
def _run_convert(args) -> int:
    from pathlib import Path

    from nextscale.hub import load_components, save_components

    labels = None
    if args.labels:
        lp = Path(args.labels)
        if not lp.is_file():
            raise NextScaleError(f"{lp}: no such file")
        labels = [ln.strip() for ln in lp.read_text().splitlines() if ln.strip()]
    vae, var, _ = load_components(
        args.var, vae_path=args.vae, patch_nums=tuple(args.patch_nums) if args.patch_nums else None
    )
    if labels is not None and len(labels) != var.num_classes:
        raise NextScaleError(f"{args.labels}: {len(labels)} names for {var.num_classes} classes")
    out = save_components(args.out, vae, var, labels=labels)
    print(f"wrote {out}: VAR d{var.depth} ({var.L} tokens, {var.num_classes} classes) + tokenizer V={vae.vocab_size}")
    return 0


# == evaluation: sample-fid / fid ==
@command(
    "sample-fid",
    A.sample_fid,
    "sample per-class PNGs for FID (deterministic, resumable, torchrun-sharded) and pack an ADM .npz",
    "Sample PER_CLASS images of every class into OUT/000000.png ... and pack OUT.npz (ADM layout). Example: torchrun "
    "--nproc_per_node=8 -m nextscale sample-fid --model var_d16.pth --per-class 50 --protocol var-readme --out "
    "samples/d16",
)
def _run_sample_fid(args) -> int:
    import torch

    from nextscale import dist
    from nextscale.evaluation.sample import sample_for_fid
    from nextscale.pipelines import load_pipeline
    from nextscale.validate import MAX_FID_IMAGES, check_count, check_device, check_seed

    sampling = sampling_changes(args)
    if args.device:
        check_device(args.device, "--device")
    check_count(args.per_class, "--per-class", hi=MAX_FID_IMAGES)
    check_count(args.batch, "--batch")
    check_seed(args.seed, "--seed")
    if args.num_classes is not None:
        check_count(args.num_classes, "--num-classes")
    dev = dist.init_distributed(args.device)
    dt = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype or "fp32")
    if dt is not None and dev.type == "cpu":
        raise NextScaleError(f"--dtype {args.dtype} needs a GPU; use --dtype fp32 on CPU")
    try:
        model = load_pipeline(args.model, device=dev, dtype=dt, variant=args.variant) if args.variant else args.model
        res = sample_for_fid(
            model,
            args.out,
            per_class=args.per_class,
            protocol=args.protocol,
            cfg=sampling.get("guidance_scale"),
            top_k=sampling.get("top_k"),
            top_p=sampling.get("top_p"),
            seed=args.seed,
            batch_size=args.batch,
            candidates=args.candidates,
            scorer=args.scorer,
            speedups={**A.speedup_changes(sampling), **A.refiner_kwargs(args, dev)},
            num_classes=args.num_classes,
            npz=None if args.no_npz else args.npz,
            device=dev,
            dtype=dt,
            progress=not args.no_progress,
            max_chunks=args.max_chunks,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    finally:
        dist.destroy()
    if res["rank"] == 0:
        state = "complete" if res["complete"] else "incomplete (re-run to resume)"
        print(
            f"{res['out']}: {res['total']} images {state}, protocol {res['protocol']}"
            + (f", npz {res['npz']}" if res["npz"] else "")
        )
    return 0


@command(
    "fid",
    A.fid,
    "FID, sFID, Inception Score, precision/recall of samples against a reference (PyTorch, no TensorFlow)",
    "Example: nextscale fid --samples samples/d16.npz --ref VIRTUAL_imagenet256_labeled.npz "
    "--inception-weights pt_inception-2015-12-05-6726825d.pth",
)
def _run_fid(args) -> int:
    from nextscale.evaluation.evaluate import evaluate, format_results
    from nextscale.evaluation.tokenizer import save_json
    from nextscale.validate import check_count, check_device

    for flag, v in (("--batch-size", args.batch_size), ("--splits", args.splits), ("--k", args.k)):
        check_count(v, flag)
    if args.device:
        check_device(args.device, "--device")
    for name in ("samples", "ref"):
        if not os.path.exists(getattr(args, name)):
            raise NextScaleError(f"--{name} not found: {getattr(args, name)}; pass a folder of PNGs or an .npz")
    res = evaluate(
        args.samples,
        args.ref,
        inception_weights=args.inception_weights,
        device=args.device,
        batch_size=args.batch_size,
        splits=args.splits,
        k=args.k,
        pr=not args.no_pr,
        sfid=not args.no_sfid,
        fid_method=args.fid_method,
        save_sample_stats=args.save_stats,
        save_ref_stats=args.save_ref_stats,
        progress=not args.no_progress,
    )
    res["samples"], res["ref"] = args.samples, args.ref
    print(format_results(res, args.splits))
    if args.json:
        save_json(res, args.json)
    return 0


# == training: train / tokenize / export / train-tokenizer / export-tokenizer / eval-tokenizer ==
def _fit(train: Callable, tc) -> int:
    """Run ``train(tc)``, leave the process group; exit code 128 + signal when interrupted."""
    from nextscale import dist

    try:
        res = train(tc)
    finally:
        dist.destroy()
    return 128 + int(res.interrupted) if res.interrupted else 0


@command(
    "train",
    A.train,
    "train the VAR transformer (resumes from RUN_DIR's latest checkpoint)",
    "Train VAR on an image folder or a token cache. Re-running the same command resumes. DDP: torchrun "
    "--nproc_per_node=N -m nextscale train ... (multi-node: add --nnodes/--node_rank/--master_addr/--master_port). "
    "Reference flag names are given in brackets; see docs/training.md.",
)
def _run_train(args) -> int:
    from nextscale.train.config import VARTrainConfig

    return _fit(_lazy("nextscale.train.var:train_var"), config_from_args(VARTrainConfig, args))


@command(
    "tokenize",
    A.tokenize,
    "pre-encode an image folder into a multi-scale token cache",
    "Encode every image (center crop, and its mirror image) with the tokenizer into memory-mapped token ids. "
    "Example: nextscale tokenize --data DIR --tokenizer MODEL --out CACHE; then nextscale train --cache CACHE ...",
)
def _run_tokenize(args) -> int:
    from nextscale.train.var import tokenize

    c = tokenize(
        args.data,
        args.tokenizer,
        args.out,
        preset=args.preset,
        flip=not args.no_flip,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
        mid_reso=args.mid_reso,
        overwrite=args.overwrite,
        seed=args.seed,
    )
    print(
        f"token cache {c.root}: "
        + ", ".join(f"{k} {v}" for k, v in c.meta["splits"].items())
        + f" images, {len(c.classes)} classes, dtype {c.meta['dtype']}, fingerprint {c.fingerprint}"
    )
    return 0


def _export_command(name: str, help: str, description: str, out_help: str, what: str, export: str) -> None:
    """Register ``nextscale NAME RUN --out DIR [--weights]`` calling ``export`` ("module:function");
    ``what`` prefixes "step" in the report."""

    @command(name, A.export(out_help), help, description)
    def run(args) -> int:
        info = _lazy(export)(args.run, args.out, weights=args.weights)
        print(
            f"exported {what}step {info['step']} ({info['weights']} weights) from {info['checkpoint']} to {info['out']}"
        )
        return 0


_export_command(
    "export",
    "turn a training run/checkpoint into a pipeline directory",
    "Example: nextscale export runs/var-d16 --out my-model; then nextscale sample --model my-model",
    "pipeline directory to write",
    "",
    "nextscale.train.var:export_run",
)
_export_command(
    "export-tokenizer",
    "turn a train-tokenizer run/checkpoint into a tokenizer directory",
    "Example: nextscale export-tokenizer runs/tok --out my-tok; then nextscale tokenize --tokenizer my-tok ...",
    "tokenizer directory to write (model_index.json + vqvae/)",
    "tokenizer ",
    "nextscale.train.tokenizer:export_tokenizer",
)


@command(
    "train-tokenizer",
    A.train_tokenizer,
    "train / fine-tune the multi-scale VQ-VAE (resumes from the run's latest checkpoint)",
    "VQGAN-family recipe: pixel L2/L1 + VQ (beta 0.25, straight-through) + optional LPIPS + hinge PatchGAN "
    "with VQGAN's adaptive weight after --disc-start. Re-running the same command resumes. DDP: torchrun "
    "--nproc_per_node=N -m nextscale train-tokenizer ... On completion the tokenizer is exported to OUT/tokenizer "
    "(use it with nextscale tokenize/train --tokenizer). See docs/tokenizer.md.",
)
def _run_train_tokenizer(args) -> int:
    from nextscale.train.config import TokenizerTrainConfig

    return _fit(_lazy("nextscale.train.tokenizer:train_tokenizer"), config_from_args(TokenizerTrainConfig, args))


@command(
    "eval-tokenizer",
    A.eval_tokenizer,
    "PSNR / SSIM / per-scale code usage / rFID of a tokenizer, and a per-scale picture",
    "Example: nextscale eval-tokenizer runs/tok --data DIR --picture scales.png",
)
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
    picture = (
        args.picture if args.picture or not os.path.isdir(args.model) else os.path.join(args.model, "eval_scales.png")
    )
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    r = evaluate_tokenizer(
        vae,
        args.data,
        batch_size=args.batch_size,
        max_images=args.max_images,
        picture=picture,
        picture_rows=args.rows,
        inception_weights=args.inception_weights,
        rfid=not args.no_rfid,
        device=dev,
        mid_reso=args.mid_reso,
    )
    print(format_report(r))
    if args.json:
        save_json(r, args.json)
    return 0


# == editing: edit ==
@command(
    "edit",
    A.edit,
    "zero-shot editing: in-paint (white mask = regenerate), out-paint, class edit, variations",
    "Edit an image with the generation loop, keeping the input's tokens where the mask is black. "
    "Examples: nextscale edit --image in.png --mask mask.png --class 207 --seed 0 --out out.png; "
    "nextscale edit --image in.png --outpaint 64,0,0,0 --out wider.png; "
    "nextscale edit --image in.png --keep-scales 4 --num 4 --out variations.png. See docs/editing.md.",
)
def _run_edit(args) -> int:
    import warnings

    import torch

    from nextscale.editing import NextScaleInpaintPipeline, parse_outpaint
    from nextscale.imageio import check_writable, load_image, make_grid, save_image_set
    from nextscale.validate import MAX_IMAGES, check_count, check_seed

    sampling = sampling_changes(args)
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
        raise NextScaleError(
            f"{args.mask}: the mask is all black, so nothing would be regenerated; "
            "paint the region to regenerate white (black = keep)"
        )
    dev, dt = device_dtype(args)
    pipe = NextScaleInpaintPipeline.from_pretrained(args.model or "default", device=dev, dtype=dt, variant=args.variant)
    if isinstance(args.class_label, int) and not -1 <= args.class_label < pipe.num_classes:
        raise NextScaleError(
            f"unknown class id {args.class_label}: this model has classes 0..{pipe.num_classes - 1} (-1 = "
            "unconditional)"
        )
    label = -1 if args.class_label is None else args.class_label
    with warnings.catch_warnings(record=True) as caught:  # all-black / all-white masks: one-line notes
        warnings.simplefilter("always", UserWarning)
        o = pipe(
            image,
            mask,
            class_labels=[label] * args.num,
            outpaint=outpaint,
            keep_scales=args.keep_scales,
            mask_threshold=args.mask_threshold,
            settings=pipe.settings.replace(**sampling),
            **A.refiner_kwargs(args, dev),
            generator=torch.Generator(device=pipe.device).manual_seed(args.seed),
            output_type="pil",
        )
    for w in caught:
        print(f"nextscale: note: {w.message}", file=sys.stderr)
    n, extras = len(o.images), []
    if args.compare:  # input canvas | regenerated pixels (white) | the edits
        plan = pipe.prepare(
            image, mask, outpaint=outpaint, keep_scales=args.keep_scales, mask_threshold=args.mask_threshold
        )
        cells = [plan.image[0].add(1).mul(0.5).cpu(), (~plan.keep_pixels[0]).float().expand(3, -1, -1).cpu()] + list(
            o.images
        )
        extras = [
            (
                "_compare.png",
                make_grid(cells, nrow=2 + n, captions=["input", "mask"] + [f"edit {i}" for i in range(n)], min_cell=96),
            )
        ]
    written = save_image_set(
        out, o.images, singles=[f"_{i:03d}" for i in range(n)] if n > 1 else None, extras=extras, min_cell=64
    )
    print(f"wrote {written[0]}" + (f" (+{len(written) - 1} more files)" if len(written) > 1 else ""))
    return 0


# == demo ==
@command(
    "demo",
    A.demo,
    "local web page: generate and edit images, watching them form scale by scale (needs nextscale[demo])",
    "Serve the interactive demo (Gradio) on this machine. Example: nextscale demo --port 7860. "
    "Loopback only unless --host says otherwise. See docs/demo.md.",
)
def _run_demo(args) -> int:
    from nextscale.app.demo import serve  # sets GRADIO_ANALYTICS_ENABLED=False / HF_HUB_DISABLE_TELEMETRY=1 first

    if not 0 <= args.scale_delay <= 10:
        raise NextScaleError(f"--scale-delay must be in [0, 10] seconds, got {args.scale_delay}")
    dev, dt = device_dtype(args)
    serve(
        args.model,
        host=args.host,
        port=args.port,
        device=dev,
        dtype=dt,
        max_batch_size=args.max_batch_size,
        variant=args.variant,
        concurrency_limit=args.concurrency,
        max_queue=args.queue_size,
        scale_delay=args.scale_delay,
        print_fn=lambda m: print(m, file=sys.stderr, flush=True),
    )
    return 0


# == study: the paper's claims (nextscale.app.study; arguments in nextscale.app.cli_study) ==
command(
    "study",
    _lazy("nextscale.app.cli_study:add_arguments"),
    "reproduce the paper's claims: the scaling law, VAR vs a raster AR baseline",
    "nextscale study scaling --out DIR ... | nextscale study ar-vs-var --out DIR ... (see docs/science.md)",
)(_lazy("nextscale.app.cli_study:run"))
