"""The text-to-image side of the CLI: ``sample --prompt``, ``edit --prompt``, ``info`` on a text-to-image model, and
``eval-t2i``. ``nextscale.app.cli`` hands a command over here when its model is a text-to-image one (a pipeline
directory of ``NextScaleT2IPipeline``, ``FoundationVision/Infinity`` or a released variant 2b / 8b / 8b-512) or a
prompt is given. The flags are the commands' config dataclasses (``nextscale.app.commands``); the sampling flags
are the ``T2ISettings`` fields (``--cfg`` is Infinity's cfg there: 1 = off, the released 3).
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Any, Dict, List

from nextscale.errors import FieldError, FieldName

__all__ = ["is_t2i", "load", "slug", "sample", "edit", "info", "run_eval"]


#: the model of a text-to-image command given no model (the bundled one, ``nextscale.hub.DEFAULT_T2I_DIR``)
DEFAULT_T2I = "default-t2i"


def is_t2i(model, variant=None) -> bool:
    """Whether ``model`` / ``variant`` name a text-to-image model (decided without loading it)."""
    from nextscale.hub_t2i import RELEASED_REPO, RELEASED_VARIANTS, is_t2i_dir

    if variant in RELEASED_VARIANTS or model in (RELEASED_REPO, DEFAULT_T2I):
        return True
    return bool(model) and os.path.isdir(model) and is_t2i_dir(model)


def load(c, text_encoder=None):
    """The pipeline of command ``c`` (model, variant, device, dtype)."""
    from nextscale.app.cli_args import device_dtype
    from nextscale.pipeline_t2i import NextScaleT2IPipeline

    model = c.model if c.model is not None or getattr(c, "variant", None) else DEFAULT_T2I  # no model: the bundled
    if not is_t2i(model, getattr(c, "variant", None)):
        kinds = "a text-to-image pipeline directory, or FoundationVision/Infinity with a variant 2b, 8b or 8b-512"
        if getattr(c, "prompt", None) is None:  # eval-t2i: the model is what the user gave wrong, not a prompt
            raise FieldError(FieldName("model"), f" {c.model or 'default'!r} is not a text-to-image model ({kinds})")
        raise FieldError(
            FieldName("prompt"), f" needs a text-to-image model ({kinds}); {c.model or 'default'!r} is not one"
        )
    import torch

    if getattr(c, "dtype", None) == "int8":
        raise FieldError(FieldName("dtype"), " int8 is not supported by text-to-image models; use bf16 or fp32")
    dev, dt = device_dtype(getattr(c, "device", None), getattr(c, "dtype", None))
    if dt == torch.float16:
        raise FieldError(FieldName("dtype"), " fp16 is not supported by text-to-image models; use bf16 or fp32")
    try:  # the CLI's stderr is its one error line: no weight-loading bars of the text encoder
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    kw: Dict[str, Any] = dict(variant=c.variant, device=dev, torch_dtype=dt)
    if text_encoder is not None:
        kw["text_encoder"] = text_encoder
    return NextScaleT2IPipeline.from_pretrained(model, **kw)


def slug(prompt: str, n: int = 60) -> str:
    """A file-name stem from a prompt: ``"A red fox, in snow!"`` -> ``a-red-fox-in-snow``."""
    s = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:n].strip("-")
    return s or "empty-prompt"


def _settings(pipe, c):
    """The one settings object of a command: the model's recommendation with the flags given, in one replace."""
    changes = {k: v for k, v in c.sampling.items() if v is not None}
    changes.update({k: v for k, v in getattr(c, "t2i_sampling", {}).items() if k == "cfg_insertion_layer"})
    return pipe.settings_for(None, **changes)


def _size_kw(c) -> Dict[str, Any]:
    return dict(height=c.height, width=c.width, aspect_ratio=c.aspect_ratio, pn=c.pn)


def _out_path(c, prompts: List[str], default: str):
    from nextscale.imageio import check_writable

    out = c.out if c.out != default else slug(prompts[0]) + ".png"
    return check_writable(out, image=True, name="out")


def sample(c) -> int:
    """``nextscale sample --prompt ...``: one image per prompt (times ``--num``), named from the prompt."""
    import torch

    from nextscale.app.commands import SampleCommand
    from nextscale.imageio import make_grid, save_image_set
    from nextscale.validate import MAX_IMAGES, check_count

    if c.prompt is None:
        raise FieldError(
            FieldName("prompt"), " is required: this is a text-to-image model (describe the image in quotes)"
        )
    prompts, n = list(c.prompt), c.num or 1
    check_count(n * len(prompts), "num", hi=MAX_IMAGES)
    out = _out_path(c, prompts, SampleCommand.__dataclass_fields__["out"].default)
    pipe = load(c)
    st = _settings(pipe, c)
    size = pipe.size(**_size_kw(c))  # a bad size or ratio: one line before any work
    gen = torch.Generator(device=pipe.device).manual_seed(c.seed)
    images, used, strips = [], [], []
    per = max(1, c.batch_size // n)
    for s in range(0, len(prompts), per):
        steps: List[Any] = []
        chunk = prompts[s : s + per]
        o = pipe(
            chunk[0] if len(prompts) == 1 else chunk,  # one prompt: its errors say "prompt", not "prompt[0]"
            negative_prompt=c.negative_prompt,
            settings=st,
            generator=gen,
            num_images_per_prompt=n,
            allow_empty_prompt=c.allow_empty_prompt,
            output_type="pil",
            callback_on_scale=(lambda step: steps.append(step.images)) if c.strip else None,
            **_size_kw(c),
        )
        images, used = images + o.images, used + o.prompts
        strips += [scale[i] for i in range(len(o.images)) for scale in steps]
    K = len(size.schedule)
    extras = [(f"_strip{out.suffix}", make_grid(strips, nrow=K, min_cell=64))] if c.strip else []
    singles = [f"_{i:03d}_{slug(p, 40)}" for i, p in enumerate(used)] if c.singles and len(images) > 1 else None
    written = save_image_set(
        out,
        images,
        singles=singles,
        extras=extras,
        nrow=c.nrow or (n if len(prompts) > 1 else None),
        min_cell=64,
    )
    more = f", {len(written) - 1} more files" if len(written) > 1 else ""
    print(f"wrote {written[0]} ({len(images)} images, {size.describe}{more})")
    return 0


def edit(c) -> int:
    """``nextscale edit --prompt ...``: in-/out-painting through the pipeline's ``inpaint``."""
    import warnings

    import torch

    from nextscale.app.commands import EditCommand
    from nextscale.editing import parse_outpaint
    from nextscale.imageio import load_image, save_image_set

    if c.prompt is None:
        raise FieldError(FieldName("prompt"), " is required: this is a text-to-image model")
    if c.keep_scales is not None:
        raise FieldError(FieldName("keep_scales"), " is for class models; with a prompt give a mask or outpaint")
    for name, path in (("image", c.image), ("mask", c.mask)):
        if path is not None and not os.path.isfile(path):
            raise FieldError(FieldName(name), f" {path!r}: no such file")
    if c.mask is None and c.outpaint is None:
        raise FieldError(
            "nothing to edit: give ", FieldName("mask"), " (white = regenerate) or ", FieldName("outpaint")
        )
    outpaint = parse_outpaint(c.outpaint)
    prompts = list(c.prompt)
    out = _out_path(c, prompts, EditCommand.__dataclass_fields__["out"].default)
    image = load_image(c.image)
    mask = load_image(c.mask, mask=True) if c.mask is not None else None
    pipe = load(c)
    st = _settings(pipe, c)
    with warnings.catch_warnings(record=True) as caught:  # an all-black mask: a one-line note
        warnings.simplefilter("always", UserWarning)
        o = pipe.inpaint(
            image,
            mask,
            prompt=(prompts[0] if c.num == 1 else prompts * c.num) if len(prompts) == 1 else prompts,
            negative_prompt=c.negative_prompt,
            outpaint=outpaint,
            mask_threshold=c.mask_threshold,
            settings=st,
            generator=torch.Generator(device=pipe.device).manual_seed(c.seed),
            allow_empty_prompt=c.allow_empty_prompt,
            output_type="pil",
            **_size_kw(c),
        )
    for w in caught:
        print(f"nextscale: note: {w.message}", file=sys.stderr)
    k = len(o.images)
    written = save_image_set(out, o.images, singles=[f"_{i:03d}" for i in range(k)] if k > 1 else None, min_cell=64)
    print(f"wrote {written[0]} ({o.size.describe})" + (f" (+{len(written) - 1} more files)" if k > 1 else ""))
    return 0


def describe(pipe) -> Dict[str, Any]:
    """What ``nextscale info`` prints of a text-to-image pipeline (JSON-able)."""
    from nextscale.schedules import PN_CLASSES, TEMPLATES, scale_schedule

    cfg, vae = pipe.transformer.config, pipe.vae
    n_inf = sum(p.numel() for p in pipe.transformer.parameters())
    n_vae = sum(p.numel() for p in vae.parameters())
    sizes = {}
    for pn in PN_CLASSES:
        sched = scale_schedule(1.0, pn)
        h, w = sched[-1]
        sizes[pn] = {
            "scales": len(sched),
            "square": [h * pipe.stride, w * pipe.stride],
            "tokens": sum(a * b for a, b in sched),
        }
    mem = pipe.weights_memory()
    return {
        "kind": "text-to-image (Infinity)",
        "infinity": dataclasses.asdict(cfg),
        "bsq": dataclasses.asdict(vae.config),
        "infinity_parameters": n_inf,
        "bsq_parameters": n_vae,
        "bits_per_token": vae.codebook_dim,
        "bits_per_transformer_token": cfg.token_bits,
        "pixels_per_token": pipe.stride,
        "default_pn": pipe.default_pn,
        "aspect_ratios": len(TEMPLATES),
        "schedules": sizes,
        "weights_bytes": mem,
        "sampling_defaults": pipe.settings.to_dict(),
    }


def info(c) -> int:
    import json

    from nextscale.hub_t2i import RELEASED_VARIANTS, released_layout

    parts = released_layout(c.model, c.variant)  # a release not downloaded yet: its presets' layout, no download
    note = None
    if parts is None:
        from nextscale.safeload import check_finite

        pipe = load(c, text_encoder=False)  # the layout only: the text encoder is not needed
        for part, m in (("transformer", pipe.transformer), ("tokenizer", pipe.vae)):  # never describe a NaN model
            check_finite(m, f"{c.model} ({part})")
    else:
        from nextscale.pipeline_t2i import NextScaleT2IPipeline

        vae, model, index = parts
        pipe = NextScaleT2IPipeline(vae, model, None, **index)
        v = RELEASED_VARIANTS[c.variant]
        note = (
            f"described from the release's configuration; the weights are not in the local cache (the first load "
            f"fetches only this variant's {v.transformer} and {v.tokenizer})"
        )
    d = describe(pipe)
    if note:
        d.update(downloaded=False, note=note)
    if c.json:
        print(json.dumps(d, indent=2))
        return 0
    i = d["infinity"]
    print(
        f"Infinity: depth {i['depth']}, width {i['embed_dim']}, {i['num_heads']} heads, "
        f"{d['infinity_parameters'] / 1e6:.1f}M parameters; text {i['text_channels']}-d, <= {i['text_maxlen']} tokens"
    )
    patchify = ", 2x2 spatial patchify" if i["apply_spatial_patchify"] else ""
    print(
        f"tokenizer (BSQ): {d['bits_per_token']} bits per token ({d['bits_per_transformer_token']} per transformer "
        f"token{patchify}), {d['pixels_per_token']} pixels per token, {d['bsq_parameters'] / 1e6:.1f}M parameters"
    )
    rows = [f"{pn}: {s['scales']} scales, {s['square'][0]}x{s['square'][1]}" for pn, s in d["schedules"].items()]
    print(f"schedules ({d['aspect_ratios']} aspect ratios, default pn {d['default_pn']}): " + "; ".join(rows))
    m = d["weights_bytes"]
    half = (m["transformer"] + m["vae"]) / 2
    print(
        f"weights: {m['total'] / 2**30:.2f} GiB as loaded (transformer {m['transformer'] / 2**30:.2f}, tokenizer "
        f"{m['vae'] / 2**30:.2f}, text encoder {m['text_encoder'] / 2**30:.2f}); about {half / 2**30:.2f} GiB "
        f"in bfloat16 without the text encoder"
    )
    s = d["sampling_defaults"]
    print(
        f"recommended sampling: cfg {s['guidance_scale']}, temperature {s['temperature']}, top-k {s['top_k']}, "
        f"top-p {s['top_p']}"
    )
    if note:
        print(f"note: {note}")
    return 0


def run_eval(c) -> int:
    """``nextscale eval-t2i MODEL``: GenEval-style scores of the pipeline (``evaluation.geneval.evaluate_t2i``)."""
    import torch

    from nextscale.evaluation.geneval import evaluate_t2i
    from nextscale.imageio import check_writable
    from nextscale.scenes import eval_prompts

    out = check_writable(c.out, name="out")
    if out.suffix.lower() != ".json":
        raise FieldError(FieldName("out"), f" must be a .json file, got {c.out!r}")
    prompts = eval_prompts(n_per_category=c.prompts_per_category, seed=c.seed)
    pipe = load(c)
    st = _settings(pipe, c)
    pipe.size(pn=c.pn)

    def generate(texts, g: torch.Generator):
        if pipe.device.type != "cpu":  # evaluate_t2i hands a CPU generator; the model's device draws its own
            g = torch.Generator(device=pipe.device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
        return pipe(list(texts), settings=st, generator=g, pn=c.pn, output_type="pil").images

    res = evaluate_t2i(
        generate,
        prompts,
        images_per_prompt=c.images_per_prompt,
        seed=c.seed,
        batch_size=c.batch_size,
        progress=c.progress and sys.stderr.isatty(),
        fid=c.fid,
    )
    res.settings.update(model=c.model, variant=c.variant, pn=c.pn or pipe.default_pn, sampling=st.to_dict())
    print(res.table())
    res.to_json(out)
    print(f"wrote {out}")
    return 0
