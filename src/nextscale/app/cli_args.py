"""CLI flags generated from config dataclasses, and errors rewritten from field names to flags.

A config field ``batch_size`` becomes ``--batch-size`` (``metadata["flag"]`` may name another
flag, ``metadata["flags"]`` adds old spellings kept working); type, choices, help and default come
from the field, so nothing is written twice. Booleans that default to False are switches
(``--hflip``); the others get a ``--x / --no-x`` pair. The parsed values map back by name
(:func:`config_from_args`). A :class:`~nextscale.errors.FieldError` (or a message that starts with a
field name) coming back from the library is printed with the flag instead (:func:`error_line`).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import typing
from typing import Any, Callable, Dict, Iterable, List, Optional

from nextscale.errors import FieldError, NextScaleError

__all__ = ["Parser", "flag_of", "flag_names", "add_config_args", "config_from_args", "error_line"]


class Parser(argparse.ArgumentParser):
    """argparse's own usage errors: one line too, exit 2; an unknown flag is answered with the closest one."""

    def error(self, message):
        if message.startswith("unrecognized arguments: "):
            known = [o for a in self._actions for o in a.option_strings]
            for sp in (a for a in self._actions if isinstance(a, argparse._SubParsersAction)):
                known += [o for c in sp.choices.values() for a in c._actions for o in a.option_strings]
            near = difflib.get_close_matches(message.split()[2].split("=")[0], known, n=1)
            message += f" (did you mean {near[0]}?)" if near else ""
        self.exit(2, f"{self.prog}: error: {message}\n")


def flag_of(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def flag_names(f: dataclasses.Field, extra: Iterable[str] = ()) -> List[str]:
    """The option strings of field ``f``: its flag first (the one error messages name), then aliases."""
    names = [f.metadata.get("flag") or flag_of(f.name)]
    for n in (*f.metadata.get("flags", ()), *extra):
        if n not in names:
            names.append(n)
    return names


def _field_type(cls, name: str):
    from nextscale.train.config import field_type

    return field_type(cls, name)


def _tuple_spec(cls, name: str):
    """(element type, nargs) of a tuple field: ``Tuple[int, ...]`` -> (int, "+"), ``Tuple[int, int]`` -> (int, 2)."""
    from nextscale.train.config import type_hints

    hint = type_hints(cls)[name]
    for h in (hint, *typing.get_args(hint)):
        if typing.get_origin(h) is tuple:
            a = typing.get_args(h)
            return (a[0] if a else int), ("+" if not a or a[-1] is Ellipsis else len(a))
    return int, "+"


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _help(f: dataclasses.Field, default, names=()) -> str:
    """The help text of ``f``: its own, [reference alias], (note), default; other fields' names
    (``base_lr``) written as flags (``--base-lr``)."""
    md = f.metadata
    h = md.get("help", "")
    if md.get("alias") and md["alias"] != f.name:
        h += f" [{md['alias']}]"
    if md.get("note") and md["note"] not in h:
        h += f" ({md['note']})"
    h = re.sub(r"\b[a-z0-9]+(?:_[a-z0-9]+)+\b", lambda m: flag_of(m.group()) if m.group() in names else m.group(), h)
    if isinstance(default, bool):
        h += "; default on" if default else ""
    elif default is not None:
        h += f"; default {default:g}" if isinstance(default, float) else f"; default {default}"
    return h.replace("%", "%%")


def _register(p: argparse.ArgumentParser, flags: Dict[str, str]) -> None:
    """Remember field -> flag on the parser (several configs may feed one command)."""
    p.set_defaults(_flags={**(p.get_default("_flags") or {}), **flags})


def add_config_args(
    p: argparse.ArgumentParser,
    cls,
    *,
    only: Optional[Iterable[str]] = None,
    extra: Optional[Dict[str, List[str]]] = None,
    defaults: Optional[Dict[str, Any]] = None,
    helps: Optional[Dict[str, str]] = None,
    groups: bool = True,
) -> None:
    """One flag per field of dataclass ``cls`` (or of the fields in ``only``), in argument groups
    (``cls.GROUPS`` order, from ``metadata["group"]``) when ``groups``. ``extra``: more spellings
    per field; ``defaults`` / ``helps``: a command's own default / help text where it differs
    (e.g. sampling flags that default to the model's recommended value)."""
    extra, defaults, helps = extra or {}, defaults or {}, helps or {}
    fields = [f for f in dataclasses.fields(cls) if only is None or f.name in only]
    if only is not None:
        fields.sort(key=lambda f: list(only).index(f.name))
    order = list(getattr(cls, "GROUPS", ()))
    made: Dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for f in sorted(fields, key=lambda f: order.index(f.metadata["group"]) if f.metadata.get("group") in order else 0):
        title = f.metadata.get("group") if groups else None
        if title and title not in made:
            made[title] = p.add_argument_group(title)
        g = made.get(title, p)
        default = defaults.get(f.name, _default(f))
        kind, optional = _field_type(cls, f.name)
        kw: Dict[str, Any] = dict(dest=f.name, default=default, help=helps.get(f.name, _help(f, default, names)))
        if kind is bool:
            kw["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
        elif kind is tuple:
            kw["type"], kw["nargs"] = _tuple_spec(cls, f.name)
        else:
            kw["type"] = kind if kind in (int, float, str) else str
            if f.metadata.get("choices"):
                kw["choices"] = list(f.metadata["choices"])
        if f.metadata.get("required"):
            kw["required"] = True
        g.add_argument(*flag_names(f, extra.get(f.name, ())), **kw)
    _register(p, {f.name: flag_names(f)[0] for f in fields})


def config_from_args(cls, args: argparse.Namespace, **override):
    """``cls(**values)`` from the parsed flags of its fields (plus ``override``)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(override)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def error_line(e: BaseException, args: Optional[argparse.Namespace]) -> str:
    """The first line of ``e``'s message, with field names written as the command's flags."""
    flags = getattr(args, "_flags", None) or {}
    if isinstance(e, FieldError):
        msg = e.render(lambda n: flags.get(n) or flag_of(n))
    else:
        msg = str(e)
        m = re.match(r"(\w+)\b", msg)  # "top_k must be >= 0" -> "--top-k must be >= 0"
        if m and m.group(1) in flags:
            msg = flags[m.group(1)] + msg[m.end() :]
    msg = msg.strip()
    return msg.splitlines()[0] if msg else type(e).__name__


def add_sampling_args(
    p: argparse.ArgumentParser, only: Optional[Iterable[str]] = None, helps: Optional[Dict[str, str]] = None
) -> None:
    """The flags of :class:`nextscale.sampling.SamplingSettings` (``--cfg``, ``--top-k`` ...). The
    settings a model may recommend default to None (= the model's value, the field default unless the
    model says otherwise); ``--more-smooth`` stays a spelling of ``--smooth``."""
    from nextscale.pipelines import RECOMMENDABLE
    from nextscale.sampling import SamplingSettings

    names = [f.name for f in dataclasses.fields(SamplingSettings) if only is None or f.name in only]
    helps = dict(helps or {})
    for f in dataclasses.fields(SamplingSettings):
        if f.name in RECOMMENDABLE and f.name in names and f.name not in helps:
            helps[f.name] = (
                _help(f, None) + f"; default: the model's recommended value ({_default(f)} unless the model "
                "says otherwise)"
            ).replace("%", "%%")
    add_config_args(
        p,
        SamplingSettings,
        only=names,
        extra={"more_smooth": ["--more-smooth"]},
        groups=False,
        helps=helps,
        defaults={n: None for n in RECOMMENDABLE},
    )


def sampling_changes(args: argparse.Namespace) -> Dict[str, Any]:
    """The sampling flags given (not None), checked by :class:`~nextscale.sampling.SamplingSettings`
    (which names the field; the CLI prints the flag): ``pipe.settings.replace(**changes)``."""
    from nextscale.sampling import SamplingSettings

    kw = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(SamplingSettings)
        if getattr(args, f.name, None) is not None
    }
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    SamplingSettings(**kw)
    return kw


def add_device_args(
    p: argparse.ArgumentParser,
    device: str = "cpu, cuda, cuda:1 ... (default: cuda if available)",
    dtype: str = "compute dtype (default: bf16 on GPU, fp32 on CPU)",
) -> None:
    p.add_argument("--device", default=None, help=device)
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None, help=dtype)


def device_dtype(args: argparse.Namespace):
    """(device string, torch dtype) from ``--device`` / ``--dtype`` (bf16 on GPU, fp32 on CPU by default)."""
    import torch

    from nextscale.validate import check_device

    dev = (
        str(check_device(args.device, "--device")) if args.device else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype or "", None)
    if dt is None:
        dt = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    return dev, dt


# -- each command's arguments (what it does: nextscale.app.cli) ------------------------------------------

_MODEL = (
    "pipeline directory, released var_d*.pth (with vae_*.pth beside it), hub id, "
    "or 'default' (the bundled model; the default)"
)


def class_id(v: str):
    """--class values: an id (207, -1) or a class name ("golden retriever"; see nextscale classes)."""
    try:
        return int(v)
    except ValueError:
        return v


def model_args(
    p: argparse.ArgumentParser, required: bool = False, help: str = _MODEL, positional: bool = False
) -> None:
    """--model (or a positional MODEL) and --variant (one transformer of a folder / hub repo of released files)."""
    if positional:
        p.add_argument("model", nargs="?", default="default", help=help)
    else:
        p.add_argument("--model", required=required, default=None, help=help)
    p.add_argument(
        "--variant",
        default=None,
        metavar="dNN",
        help="which released transformer (d16 d20 d24 d30 d36) of a folder or hub repo of released .pth files, "
        "e.g. --model FoundationVision/var --variant d16: only it and the tokenizer are downloaded",
    )


def single_names(ids: List[int], names: List[str]) -> List[str]:
    """File-name suffixes of single images: _000_class207_golden-retriever (the name only when it is not the id)."""
    return [
        f"_{i:03d}_class{c}" + ("" if n == str(c) else "_" + re.sub(r"[^\w-]+", "-", n).strip("-")[:40])
        for i, (c, n) in enumerate(zip(ids, names))
    ]


def speedup_changes(sampling: Dict[str, Any]) -> Dict[str, Any]:
    """The opt-in speed-ups turned on among ``sampling_changes`` (sample-fid passes them on separately)."""
    from nextscale.sampling import SamplingSettings

    off = SamplingSettings()
    return {
        k: v
        for k, v in sampling.items()
        if k in ("guidance_cutoff", "prune_ratio", "prune_last", "kv_budget") and v != getattr(off, k)
    }


def refiner_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--refiner",
        default=None,
        metavar="MODEL",
        help="a second model on the same tokenizer that predicts the last scales (approximate speed-up)",
    )
    p.add_argument(
        "--refine-from-scale", type=int, default=None, metavar="K", help="first scale (0-based) the --refiner predicts"
    )


def refiner_kwargs(args: argparse.Namespace, device=None) -> Dict[str, Any]:
    if args.refiner is None:
        if args.refine_from_scale is not None:
            raise NextScaleError("--refine-from-scale needs --refiner MODEL")
        return {}
    from nextscale.pipelines import load_pipeline

    return {"refiner": load_pipeline(args.refiner, device=device), "refine_from_scale": args.refine_from_scale}


def _sampling(p: argparse.ArgumentParser) -> None:
    """sample / edit: the model, the SamplingSettings flags, seed, device and dtype."""
    model_args(p)
    add_sampling_args(p)
    refiner_args(p)
    p.set_defaults(
        _flags={**(p.get_default("_flags") or {}), "class_labels": "--class"}
    )  # the pipeline's name for --class
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed + device = same image); default 0")
    add_device_args(p)


def sample(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--class",
        dest="classes",
        type=class_id,
        nargs="*",
        default=None,
        help="class ids or names (-1 = unconditional; see nextscale classes); "
        "default: all classes of a model with <= 16 classes, else 8 random",
    )
    p.add_argument(
        "--num", type=int, default=None, help="images per class given (default 1), or the number of random-class images"
    )
    _sampling(p)
    p.add_argument(
        "--out", default="samples.png", help="grid image path; single images go to OUT_STEM_<i>.png beside it"
    )
    p.add_argument(
        "--strip", action="store_true", help="also write OUT_STEM_strip.png: each image after 1, 2, ..., K scales"
    )
    p.add_argument("--nrow", type=int, default=None, help="images per grid row")
    p.add_argument("--no-singles", action="store_true", help="write only the grid")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")


def edit(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--image", required=True, help="image to edit (center-cropped to a square and resized to the model resolution)"
    )
    p.add_argument(
        "--mask",
        default=None,
        help="same size as --image; white = regenerate, black = keep (binary; see --mask-threshold)",
    )
    p.add_argument(
        "--class",
        dest="class_label",
        type=class_id,
        default=None,
        help="class (id or name) of the regenerated content (-1 = unconditional, the default)",
    )
    p.add_argument(
        "--outpaint",
        default=None,
        metavar="L,T,R,B",
        help="place the image inside the model canvas with these margins in canvas pixels (negative = beyond the edge: "
        "write --outpaint=-32,0,32,0); the rest is generated",
    )
    p.add_argument(
        "--keep-scales",
        type=int,
        default=None,
        metavar="K",
        help="keep the first K scales of the image, regenerate the finer ones (variations)",
    )
    p.add_argument(
        "--mask-threshold", type=float, default=None, help="accept a gray mask: pixels >= this (0..1] are regenerated"
    )
    p.add_argument(
        "--num",
        type=int,
        default=1,
        help="number of edits of the image (different samples); > 1 writes a grid to --out and OUT_STEM_<i>.png",
    )
    _sampling(p)
    p.add_argument("--out", default="edit.png", help="output image path (default edit.png)")
    p.add_argument(
        "--compare",
        action="store_true",
        help="also write OUT_STEM_compare.png: input canvas | mask (white = regenerated) | result(s)",
    )


def info(p: argparse.ArgumentParser) -> None:
    model_args(p, positional=True, help="pipeline directory, var_d*.pth, hub id or 'default'")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vae", required=True, help="released tokenizer, e.g. vae_ch160v4096z32.pth")
    p.add_argument("--var", required=True, help="released transformer, e.g. var_d16.pth (preset inferred from shapes)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--labels", default=None, help="optional text file: one class name per line")
    p.add_argument(
        "--patch-nums", type=int, nargs="+", default=None, help="scale schedule, only for non-released token counts"
    )


def classes(p: argparse.ArgumentParser) -> None:
    model_args(p, positional=True, help="pipeline directory, var_d*.pth, hub id or 'default'")
    p.add_argument(
        "--grep", default=None, metavar="WORD", help="only the classes whose name (or ImageNet alias) contains WORD"
    )


def sample_fid(p: argparse.ArgumentParser) -> None:
    model_args(p, required=True, help="pipeline directory, released var_d*.pth, or hub id")
    p.add_argument("--out", required=True, help="folder for the PNGs (created; re-running resumes)")
    p.add_argument("--per-class", type=int, default=50, help="images per class (default 50 -> 50,000 for ImageNet)")
    p.add_argument(
        "--protocol",
        default="var-readme",
        help="var-readme (cfg 1.5, top-p 0.96, top-k 900; default) or var-paper (cfg 2.0, top-k 600)",
    )
    add_sampling_args(
        p,
        only=("guidance_scale", "top_k", "top_p", "guidance_cutoff", "prune_ratio", "prune_last", "kv_budget"),
        helps={
            "guidance_scale": "override the protocol's cfg (the run is then named PROTOCOL+custom)",
            "top_k": "override the protocol's top-k (0 = off)",
            "top_p": "override the protocol's top-p (0 = off)",
        },
    )
    refiner_args(p)
    p.add_argument(
        "--candidates",
        type=int,
        default=1,
        metavar="N",
        help="rejection sampling: each image is the best of N by --scorer (default 1 = off)",
    )
    p.add_argument(
        "--scorer",
        default=None,
        help="'default' (the MNIST scorer of the default model) or an MNIST scorer .safetensors",
    )
    p.add_argument("--seed", type=int, default=0, help="base seed; chunk j uses seed + j (default 0)")
    p.add_argument(
        "--batch",
        "--batch-size",
        dest="batch",
        type=int,
        default=25,
        help="images per chunk/forward pass; part of the seeding, keep it fixed to reproduce (default 25)",
    )
    p.add_argument("--num-classes", type=int, default=None, help="sample only classes 0..N-1 (default: all)")
    p.add_argument("--npz", default="", help="where to pack the samples (default: OUT.npz next to the folder)")
    p.add_argument("--no-npz", action="store_true", help="do not pack an .npz")
    add_device_args(p, "cpu, cuda (default: this rank's GPU if available, else cpu)", "compute dtype (default fp32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--max-chunks", type=int, default=None, help=argparse.SUPPRESS)  # stop early (tests, time slices)


def fid(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", required=True, help="folder of PNGs, an .npz with arr_0 (ADM layout), or saved stats")
    p.add_argument(
        "--ref",
        required=True,
        help="ADM reference batch (VIRTUAL_imagenet256_labeled.npz), stats saved with --save-stats/--save-ref-stats, "
        "or a folder / .npz of images",
    )
    p.add_argument(
        "--inception-weights",
        default=None,
        help="pt_inception-2015-12-05-6726825d.pth (default: $NEXTSCALE_INCEPTION_WEIGHTS)",
    )
    p.add_argument("--batch-size", type=int, default=50, help="images per Inception forward (default 50)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--splits", type=int, default=10, help="Inception Score splits (default 10)")
    p.add_argument("--k", type=int, default=3, help="k-th neighbour radius for precision/recall (default 3)")
    p.add_argument("--no-pr", action="store_true", help="skip precision/recall (no reference images needed)")
    p.add_argument("--no-sfid", action="store_true", help="skip sFID")
    p.add_argument(
        "--fid-method",
        choices=["eigh", "sqrtm"],
        default="eigh",
        help="matrix square root: eigh (stable, default) or sqrtm (pytorch-fid's literal form)",
    )
    p.add_argument("--save-stats", default=None, help="save the samples' mu/sigma/features to this .npz")
    p.add_argument(
        "--save-ref-stats",
        default=None,
        help="save the reference's statistics (+features) to this .npz for reuse as --ref",
    )
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def train(p: argparse.ArgumentParser) -> None:
    from nextscale.train.config import VARTrainConfig

    add_config_args(p, VARTrainConfig)


def train_tokenizer(p: argparse.ArgumentParser) -> None:
    from nextscale.train.config import TokenizerTrainConfig

    add_config_args(p, TokenizerTrainConfig)


def tokenize(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", required=True, help="image folder (DIR/train + DIR/val, or one folder of class sub-folders)"
    )
    p.add_argument(
        "--tokenizer", required=True, help="VQ-VAE: pipeline dir, vae_*.pth, 'default', or 'random' (needs --preset)"
    )
    p.add_argument("--out", required=True, help="cache folder to write (atomically)")
    p.add_argument("--preset", default=None, help="architecture for --tokenizer random / released .pth schedules")
    p.add_argument(
        "--no-flip", action="store_true", help="do not store the h-flipped view (then training cannot use --hflip)"
    )
    p.add_argument(
        "--mid-reso",
        type=float,
        default=1.125,
        help="shorter side -> this x resolution before the center crop; default 1.125",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0, help="seed of --tokenizer random")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache at --out")


def export(out_help: str) -> Callable[[argparse.ArgumentParser], None]:
    """``RUN --out DIR [--weights]`` of export / export-tokenizer."""

    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("run", help="run folder (its latest checkpoint) or a checkpoints/step_*.pt file")
        p.add_argument("--out", required=True, help=out_help)
        p.add_argument(
            "--weights", choices=["auto", "ema", "raw"], default="auto", help="auto = EMA when the run kept one"
        )

    return add


def eval_tokenizer(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", help="tokenizer directory, pipeline directory, train-tokenizer run folder, step_*.pt or vae_*.pth"
    )
    p.add_argument("--data", required=True, help="image folder; its val/ split when present")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument(
        "--picture",
        default=None,
        help="PNG: rows of [original, rebuilt from 1, 2, ..., K scales]; "
        "default MODEL-dir/eval_scales.png for run folders",
    )
    p.add_argument("--rows", type=int, default=4, help="images in the picture; default 4")
    p.add_argument("--patch-nums", type=int, nargs="+", default=None, help="scale schedule for a released .pth")
    p.add_argument(
        "--inception-weights",
        default=None,
        help="FID Inception weights for rFID (else $NEXTSCALE_INCEPTION_WEIGHTS; rFID is skipped without them)",
    )
    p.add_argument("--no-rfid", action="store_true", help="skip rFID")
    p.add_argument(
        "--mid-reso", type=float, default=1.125, help="shorter side -> this x resolution before the center crop"
    )
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")


def demo(p: argparse.ArgumentParser) -> None:
    model_args(p, help="pipeline directory, var_d*.pth, hub id or 'default' (the bundled model; the default)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; anything else is reachable by others: a warning is printed)",
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    add_device_args(p)
    p.add_argument("--max-batch-size", type=int, default=4, help="largest batch a request may ask for (default 4)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="requests worked on at once (the model still runs one at a time); default 1",
    )
    p.add_argument(
        "--queue-size",
        type=int,
        default=32,
        help="requests allowed to wait; more are refused with a message (default 32)",
    )
    p.add_argument(
        "--scale-delay",
        type=float,
        default=0.0,
        help="pause (s) between streamed scales, to watch a fast model; default 0",
    )
