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
from typing import Any, Callable, Dict, List, Optional, Tuple

from nextscale.app import cli_args as A
from nextscale.app import commands as C
from nextscale.app.cli_args import add_config_args, config_from_args, device_dtype, error_line
from nextscale.errors import FieldError, FieldName, NextScaleError

#: name -> (config class, or {sub-command: config class}, help, description, run(config) -> exit code)
_REGISTRY: Dict[str, Tuple[Any, str, Optional[str], Callable]] = {}


def command(name: str, config: Any, help: str, description: Optional[str] = None):
    """Register the decorated ``run(config) -> exit code`` as ``nextscale NAME``; its flags are generated
    from ``config`` (a config dataclass, a "module:Class" path loaded when the parser is built, or a dict
    of sub-command name -> (config, help, description))."""

    def deco(run):
        _REGISTRY[name] = (config, help, description, run)
        return run

    return deco


def _config_class(config):
    if isinstance(config, str):
        mod, cls = config.split(":")
        return getattr(importlib.import_module(mod), cls)
    return config


def build_parser() -> argparse.ArgumentParser:
    p = A.Parser(prog="nextscale", description="VAR next-scale prediction: sample, edit, train, evaluate.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=A.Parser)
    for name, (config, help, description, run) in _REGISTRY.items():
        sp = sub.add_parser(name, help=help, description=description)
        if isinstance(config, dict):  # sub-commands (study scaling / ar-vs-var)
            subs = sp.add_subparsers(dest="sub_command", metavar="STUDY", parser_class=A.Parser)
            for sname, (scls, shelp, sdesc) in config.items():
                ssp = subs.add_parser(sname, help=shelp, description=sdesc)
                add_config_args(ssp, _config_class(scls))
                ssp.set_defaults(_config=scls)
        else:
            add_config_args(sp, _config_class(config))
            sp.set_defaults(_config=config)
        sp.set_defaults(func=run)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if getattr(args, "_config", None) is None:
            raise NextScaleError(
                f"name what to run: nextscale {args.command} NAME ... (see nextscale {args.command} -h)"
            )
        config = config_from_args(_config_class(args._config), args)
        if hasattr(config, "validate"):  # the whole configuration (paths, files, this machine) before any work
            config.validate()
        return int(args.func(config) or 0)
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
def _t2i(c) -> bool:
    from nextscale.app.cli_t2i import is_t2i

    return is_t2i(c.model, c.variant)


def _refiner(c, dev):
    """The sampling changes with a refiner given as a model path loaded (on ``dev``)."""
    changes = dict(c.sampling)
    if changes.get("refiner") is not None:
        from nextscale.pipelines import load_pipeline

        changes["refiner"] = load_pipeline(changes["refiner"], device=dev)
    return changes


@command(
    "sample",
    C.SampleCommand,
    "generate images of classes, or of prompts with a text-to-image model (grid + one PNG per image)",
    "Generate images. Example: nextscale sample --class 207 360 --cfg 1.5 --top-k 900 --top-p 0.96 --seed 0 --out "
    "grid.png; nextscale sample --model FoundationVision/Infinity --variant 2b --prompt 'a red fox in snow' "
    "--aspect 16:9 (writes a-red-fox-in-snow.png; with a text-to-image model --cfg is Infinity's cfg, 1 = off).",
)
def _run_sample(c: C.SampleCommand) -> int:
    if c.prompt is not None or _t2i(c):
        return _lazy("nextscale.app.cli_t2i:sample")(c)
    import torch
    from tqdm.auto import tqdm

    from nextscale.imageio import check_writable, make_grid, save_image_set
    from nextscale.pipeline_ar import load_any_pipeline as load_pipeline  # VAR, or an AR baseline directory
    from nextscale.validate import MAX_IMAGES, check_class_ids, check_count

    if c.num is not None:
        check_count(c.num * max(len(c.class_labels or []), 1), "num", hi=MAX_IMAGES)
    if c.sampling.get("refine_from_scale") is not None and c.sampling.get("refiner") is None:
        raise NextScaleError("--refine-from-scale needs --refiner MODEL")
    out = check_writable(c.out, image=True, name="out")
    dev, dt = device_dtype(c.device, c.dtype)
    pipe = A.apply_precision(load_pipeline(c.model, device=dev, dtype=dt, variant=c.variant), c.dtype)
    settings = pipe.settings_for(None, **_refiner(c, dev))  # one settings object for every batch
    if hasattr(pipe, "patch_nums"):  # prune_last <= scales - 1 ..., before any image
        _lazy("nextscale.sampling:check_for_model")(settings, len(pipe.patch_nums))
    nc = pipe.num_classes
    if c.class_labels:
        bad = [k for k in c.class_labels if isinstance(k, int) and not -1 <= k < nc]
        if bad:
            raise NextScaleError(f"unknown class id {bad[0]}: this model has classes 0..{nc - 1} (-1 = unconditional)")
        labels = [
            k
            for k in check_class_ids(c.class_labels, nc, "class_labels", class_names=pipe.labels)
            for _ in range(c.num or 1)
        ]
    elif nc <= 16:
        labels = [k for k in range(nc) for _ in range(c.num or 1)]
    else:
        labels = torch.randint(0, nc, (c.num or 8,), generator=torch.Generator().manual_seed(c.seed)).tolist()
    gen = torch.Generator(device=pipe.device).manual_seed(c.seed)
    images, used, strips, one = [], [], [], len(labels) <= c.batch_size
    for s in tqdm(
        range(0, len(labels), c.batch_size), desc="sampling", unit="batch", disable=one and not sys.stderr.isatty()
    ):
        o = pipe(
            class_labels=labels[s : s + c.batch_size],
            settings=settings,
            generator=gen,
            output_type="pil",
            return_indices=c.strip,
            show_progress=one,
        )
        images, used = images + o.images, used + o.labels
        if c.strip:
            per_scale = pipe.decode_scales(o.indices)  # K x (b, 3, H, W)
            strips += [im[i] for i in range(len(o.images)) for im in per_scale]
    extras = [(f"_strip{out.suffix}", make_grid(strips, nrow=len(pipe.patch_nums), min_cell=64))] if c.strip else []
    names = [pipe.class_name(k) for k in used]
    written = save_image_set(
        out,
        images,
        singles=A.single_names(used, names) if c.singles else None,
        extras=extras,
        nrow=c.nrow or (10 if len(images) >= 10 else None),
        captions=names,
        min_cell=64,
    )
    more = f", {len(written) - 1} more files" if len(written) > 1 else ""
    print(f"wrote {written[0]} ({len(images)} images{more})")
    return 0


@command(
    "classes",
    C.ClassesCommand,
    "list a model's classes (id and name), e.g. to find the id of a golden retriever",
    "Print every class of a model, or those matching --grep. Example: nextscale classes FoundationVision/var "
    "--variant d16 --grep retriever",
)
def _run_classes(c: C.ClassesCommand) -> int:
    from nextscale.classes import grep_classes
    from nextscale.hub import released_class_names
    from nextscale.pipelines import load_pipeline

    labels = released_class_names(c.model, c.variant)  # a released model's names ship with the package: no download
    if labels is None:
        pipe = load_pipeline(c.model, variant=c.variant)
        labels = pipe.labels or [str(k) for k in range(pipe.num_classes)]
    hits = grep_classes(labels, c.grep)
    if not hits:
        raise NextScaleError(f"no class of this model matches {c.grep!r}")
    print("\n".join(f"{k:4d}  {n}" for k, n in hits))
    return 0


@command(
    "info",
    C.InfoCommand,
    "describe a model: presets, sizes, classes, schedule",
    "Print a model's architecture (depth, width, heads, AdaLN kind), parameter counts, resolution, scale schedule "
    "and classes. Example: nextscale info var_d16.pth; nextscale info var-d16/ --json",
)
def _run_info(c: C.InfoCommand) -> int:
    return _lazy("nextscale.app.cli_t2i:info" if _t2i(c) else "nextscale.app.cli_info:info")(c)


@command(
    "convert",
    C.ConvertCommand,
    "turn released .pth checkpoints into a pipeline directory (safetensors)",
    "Example: nextscale convert --vae vae_ch160v4096z32.pth --var var_d16.pth --out var-d16/",
)
def _run_convert(c: C.ConvertCommand) -> int:
    from pathlib import Path

    from nextscale.hub import load_components, save_components
    from nextscale.safeload import check_finite

    labels = None
    if c.labels:
        try:
            text = Path(c.labels).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise FieldError(FieldName("labels"), f" {c.labels!r} is not a UTF-8 text file (one class name per line)")
        labels = [ln.strip() for ln in text.splitlines() if ln.strip()]
    vae, var, _ = load_components(c.var, vae_path=c.vae, patch_nums=c.patch_nums)
    check_finite(vae, c.vae)  # an all-NaN model is refused, never written as a pipeline
    check_finite(var, c.var)
    if labels is not None and len(labels) != var.num_classes:
        raise NextScaleError(f"{c.labels}: {len(labels)} names for {var.num_classes} classes")
    out = save_components(c.out, vae, var, labels=labels)
    print(f"wrote {out}: VAR d{var.depth} ({var.L} tokens, {var.num_classes} classes) + tokenizer V={vae.vocab_size}")
    return 0


# == evaluation: sample-fid / fid ==
@command(
    "sample-fid",
    "nextscale.evaluation.sample:SampleFidConfig",
    "sample per-class PNGs for FID (deterministic, resumable, torchrun-sharded) and pack an ADM .npz",
    "Sample PER_CLASS images of every class into OUT/000000.png ... and pack OUT.npz (ADM layout). Example: torchrun "
    "--nproc_per_node=8 -m nextscale sample-fid --model var_d16.pth --per-class 50 --protocol var-readme --out "
    "samples/d16",
)
def _run_sample_fid(c) -> int:
    import dataclasses

    from nextscale import dist
    from nextscale.evaluation.sample import sample_for_fid

    if c.sampling.get("refine_from_scale") is not None and c.sampling.get("refiner") is None:
        raise NextScaleError("--refine-from-scale needs --refiner MODEL")
    dev = dist.init_distributed(c.device)
    if c.dtype == "fp16" and dev.type == "cpu":  # bf16 runs on CPU (fast with AMX / AVX512-BF16: nextscale info)
        raise NextScaleError(f"--dtype {c.dtype} needs a GPU; use --dtype fp32 or bf16 on CPU")
    try:
        res = sample_for_fid(
            None,
            dataclasses.replace(c, device=str(dev), sampling=_refiner(c, dev)),
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
    finally:
        dist.destroy()
    if res["rank"] == 0:
        state = "complete" if res["complete"] else "incomplete (re-run to resume)"
        npz = f", npz {res['npz']}" if res["npz"] else ""
        print(f"{res['out']}: {res['total']} images {state}, protocol {res['protocol']}{npz}")
    return 0


@command(
    "fid",
    C.FidCommand,
    "FID, sFID, Inception Score, precision/recall of samples against a reference (PyTorch, no TensorFlow)",
    "Example: nextscale fid --samples samples/d16.npz --ref VIRTUAL_imagenet256_labeled.npz "
    "--inception-weights pt_inception-2015-12-05-6726825d.pth",
)
def _run_fid(c: C.FidCommand) -> int:
    from nextscale.evaluation.evaluate import evaluate, format_results
    from nextscale.evaluation.tokenizer import save_json

    res = evaluate(
        c.samples,
        c.ref,
        inception_weights=c.inception_weights,
        device=c.device,
        batch_size=c.batch_size,
        splits=c.splits,
        k=c.k,
        pr=c.pr,
        sfid=c.sfid,
        fid_method=c.fid_method,
        save_sample_stats=c.save_stats,
        save_ref_stats=c.save_ref_stats,
        progress=c.progress,
    )
    res["samples"], res["ref"] = c.samples, c.ref
    print(format_results(res, c.splits))
    if c.json:
        save_json(res, c.json)
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
    "nextscale.train.config:VARTrainConfig",
    "train the VAR transformer (resumes from RUN_DIR's latest checkpoint)",
    "Train VAR on an image folder or a token cache. Re-running the same command resumes. DDP: torchrun "
    "--nproc_per_node=N -m nextscale train ... (multi-node: add --nnodes/--node_rank/--master_addr/--master_port). "
    "Reference flag names are given in brackets; see docs/training.md.",
)
def _run_train(tc) -> int:
    return _fit(_lazy("nextscale.train.var:train_var"), tc)


@command(
    "tokenize",
    C.TokenizeCommand,
    "pre-encode an image folder into a multi-scale token cache",
    "Encode every image (center crop, and its mirror image) with the tokenizer into memory-mapped token ids. "
    "Example: nextscale tokenize --data DIR --tokenizer MODEL --out CACHE; then nextscale train --cache CACHE ...",
)
def _run_tokenize(c: C.TokenizeCommand) -> int:
    from nextscale.train.var import tokenize

    cache = tokenize(
        c.data,
        c.tokenizer,
        c.out,
        preset=c.preset,
        flip=c.flip,
        batch_size=c.batch_size,
        device=c.device,
        workers=c.workers,
        mid_reso=c.mid_reso,
        overwrite=c.overwrite,
        seed=c.seed,
    )
    print(
        f"token cache {cache.root}: "
        + ", ".join(f"{k} {v}" for k, v in cache.meta["splits"].items())
        + f" images, {len(cache.classes)} classes, dtype {cache.meta['dtype']}, fingerprint {cache.fingerprint}"
    )
    return 0


def _export_command(name: str, help: str, description: str, what: str, export: str) -> None:
    """Register ``nextscale NAME RUN --out DIR [--weights]`` calling ``export`` ("module:function");
    ``what`` prefixes "step" in the report."""

    @command(name, C.ExportCommand, help, description)
    def run(c: C.ExportCommand) -> int:
        info = _lazy(export)(c.run, c.out, weights=c.weights)
        print(
            f"exported {what}step {info['step']} ({info['weights']} weights) from {info['checkpoint']} to {info['out']}"
        )
        return 0


_export_command(
    "export",
    "turn a training run/checkpoint into a pipeline directory",
    "Example: nextscale export runs/var-d16 --out my-model; then nextscale sample --model my-model",
    "",
    "nextscale.train.var:export_run",
)
_export_command(
    "export-tokenizer",
    "turn a train-tokenizer run/checkpoint into a tokenizer directory",
    "Example: nextscale export-tokenizer runs/tok --out my-tok; then nextscale tokenize --tokenizer my-tok ...",
    "tokenizer ",
    "nextscale.train.bsq:export_any_tokenizer",
)


@command(
    "train-tokenizer",
    "nextscale.train.config:TokenizerTrainConfig",
    "train / fine-tune the multi-scale VQ-VAE (resumes from the run's latest checkpoint)",
    "VQGAN-family recipe: pixel L2/L1 + VQ (beta 0.25, straight-through) + optional LPIPS + hinge PatchGAN "
    "with VQGAN's adaptive weight after --disc-start. Re-running the same command resumes. DDP: torchrun "
    "--nproc_per_node=N -m nextscale train-tokenizer ... On completion the tokenizer is exported to OUT/tokenizer "
    "(use it with nextscale tokenize/train --tokenizer). See docs/tokenizer.md.",
)
def _run_train_tokenizer(tc) -> int:
    return _fit(_lazy("nextscale.train.bsq:train_any_tokenizer"), tc)


@command(
    "train-t2i",
    "nextscale.train.config:T2ITrainConfig",
    "train / fine-tune an Infinity text-to-image transformer on captioned images (resumes from the run folder)",
    "Captioned images (images + same-name .txt, or a .jsonl), aspect-ratio buckets, a text-feature cache, text "
    "dropout into the learned cfg_uncond, bitwise self-correction, per-scale loss weights. Example: nextscale "
    "train-t2i --data DIR --tokenizer runs/bsq/tokenizer --steps 2000; --init MODEL fine-tunes. On completion the "
    "pipeline is exported to RUN/pipeline. DDP: torchrun --nproc_per_node=N -m nextscale train-t2i ... See "
    "docs/training.md.",
)
def _run_train_t2i(tc) -> int:
    return _fit(_lazy("nextscale.train.infinity:train_t2i"), tc)


_export_command(
    "export-t2i",
    "turn a train-t2i run/checkpoint into a text-to-image pipeline directory",
    "Example: nextscale export-t2i runs/t2i-tiny --out my-t2i; then NextScaleT2IPipeline.from_pretrained('my-t2i')",
    "",
    "nextscale.train.infinity:export_t2i",
)


@command(
    "eval-tokenizer",
    C.EvalTokenizerCommand,
    "PSNR / SSIM / per-scale code usage / rFID of a tokenizer, and a per-scale picture",
    "Example: nextscale eval-tokenizer runs/tok --data DIR --picture scales.png",
)
def _run_eval_tokenizer(c: C.EvalTokenizerCommand) -> int:
    import torch

    from nextscale.evaluation.tokenizer import evaluate_tokenizer, format_report, save_json
    from nextscale.hub import load_tokenizer

    vae = load_tokenizer(c.model, v_patch_nums=c.patch_nums)
    picture = c.picture if c.picture or not os.path.isdir(c.model) else os.path.join(c.model, "eval_scales.png")
    r = evaluate_tokenizer(
        vae,
        c.data,
        batch_size=c.batch_size,
        max_images=c.max_images,
        picture=picture,
        picture_rows=c.rows,
        inception_weights=c.inception_weights,
        rfid=c.rfid,
        device=c.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        mid_reso=c.mid_reso,
    )
    print(format_report(r))
    if c.json:
        save_json(r, c.json)
    return 0


# == editing: edit ==
@command(
    "edit",
    C.EditCommand,
    "zero-shot editing: in-paint (white mask = regenerate), out-paint, class edit, variations",
    "Edit an image with the generation loop, keeping the input's tokens where the mask is black. "
    "Examples: nextscale edit --image in.png --mask mask.png --class 207 --seed 0 --out out.png; "
    "nextscale edit --image in.png --outpaint 64,0,0,0 --out wider.png; "
    "nextscale edit --image in.png --keep-scales 4 --num 4 --out variations.png. See docs/editing.md.",
)
def _run_edit(c: C.EditCommand) -> int:
    if c.prompt is not None or _t2i(c):
        return _lazy("nextscale.app.cli_t2i:edit")(c)
    import warnings

    import torch

    from nextscale.editing import NextScaleInpaintPipeline, parse_outpaint
    from nextscale.imageio import check_writable, load_image, make_grid, save_image_set

    if c.mask is None and c.outpaint is None and c.keep_scales is None:
        raise NextScaleError("nothing to edit: give --mask (white = regenerate), --outpaint L,T,R,B or --keep-scales K")
    if c.sampling.get("refine_from_scale") is not None and c.sampling.get("refiner") is None:
        raise NextScaleError("--refine-from-scale needs --refiner MODEL")
    outpaint = parse_outpaint(c.outpaint)
    out = check_writable(c.out, image=True, name="out")
    image = load_image(c.image)
    mask = load_image(c.mask, mask=True) if c.mask is not None else None
    if mask is not None and outpaint is None and c.keep_scales is None and max(mask.convert("L").getextrema()) == 0:
        raise NextScaleError(
            f"{c.mask}: the mask is all black, so nothing would be regenerated; "
            "paint the region to regenerate white (black = keep)"
        )
    dev, dt = device_dtype(c.device, c.dtype)
    pipe = NextScaleInpaintPipeline.from_pretrained(c.model or "default", device=dev, dtype=dt, variant=c.variant)
    A.apply_precision(pipe, c.dtype)
    if isinstance(c.class_labels, int) and not -1 <= c.class_labels < pipe.num_classes:
        raise NextScaleError(
            f"unknown class id {c.class_labels}: this model has classes 0..{pipe.num_classes - 1} (-1 = unconditional)"
        )
    label = -1 if c.class_labels is None else c.class_labels
    edit = dict(outpaint=outpaint, keep_scales=c.keep_scales, mask_threshold=c.mask_threshold)
    with warnings.catch_warnings(record=True) as caught:  # all-black / all-white masks: one-line notes
        warnings.simplefilter("always", UserWarning)
        o = pipe(
            image,
            mask,
            class_labels=[label] * c.num,
            settings=pipe.settings_for(None, **_refiner(c, dev)),
            generator=torch.Generator(device=pipe.device).manual_seed(c.seed),
            output_type="pil",
            **edit,
        )
    for w in caught:
        print(f"nextscale: note: {w.message}", file=sys.stderr)
    n, extras = len(o.images), []
    if c.compare:  # input canvas | regenerated pixels (white) | the edits
        plan = pipe.prepare(image, mask, **edit)
        cells = [plan.image[0].add(1).mul(0.5).cpu(), (~plan.keep_pixels[0]).float().expand(3, -1, -1).cpu()]
        caps = ["input", "mask"] + [f"edit {i}" for i in range(n)]
        extras = [("_compare.png", make_grid(cells + list(o.images), nrow=2 + n, captions=caps, min_cell=96))]
    written = save_image_set(
        out, o.images, singles=[f"_{i:03d}" for i in range(n)] if n > 1 else None, extras=extras, min_cell=64
    )
    print(f"wrote {written[0]}" + (f" (+{len(written) - 1} more files)" if len(written) > 1 else ""))
    return 0


command(
    "eval-t2i",
    C.EvalT2ICommand,
    "GenEval-style prompt adherence of a text-to-image model (scene prompts, the shipped judge)",
    "Generate images for the evaluation prompts of nextscale.scenes, score them per category with the scene "
    "judge (and FID vs real renders), print the table and write the JSON. Example: nextscale eval-t2i "
    "t2i-scenes/ --prompts-per-category 8 --out eval.json",
)(_lazy("nextscale.app.cli_t2i:run_eval"))


# == demo ==
@command(
    "demo",
    "nextscale.app.demo:DemoConfig",
    "local web page: generate and edit images, watching them form scale by scale (needs nextscale[demo])",
    "Serve the interactive demo (Gradio) on this machine. Example: nextscale demo --port 8080. "
    "Loopback only unless --host says otherwise. See docs/demo.md.",
)
def _run_demo(c) -> int:
    from nextscale.app.demo import serve_config

    serve_config(c, print_fn=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


# == study: the paper's claims (nextscale.app.study; its sub-commands' configs there) ==
command(
    "study",
    {
        "scaling": (
            "nextscale.app.study:ScalingStudyConfig",
            "VAR sizes on the same data and token budget; power-law fits of test loss / error",
            "Train VAR at several depths (width = 64 x depth, heads = depth), evaluate held-out "
            "test loss and token error rate, fit L = (beta N)^alpha; writes scaling.json/.md/.png.",
        ),
        "ar-vs-var": (
            "nextscale.app.study:ArVsVarStudyConfig",
            "VAR vs the raster-order AR baseline at equal size and training",
            "Train the AR baseline (and VAR unless --var-model) with the same recipe; report class "
            "accuracy, FID/floor, precision/recall, sampling time at B=1/B=50, training time; "
            "writes ar_vs_var.json/.md/.png.",
        ),
    },
    "reproduce the paper's claims: the scaling law, VAR vs a raster AR baseline",
    "nextscale study scaling --out DIR ... | nextscale study ar-vs-var --out DIR ... (see docs/science.md)",
)(_lazy("nextscale.app.cli_study:run"))
