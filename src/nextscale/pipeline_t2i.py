"""Text-to-image with Infinity (bitwise next-scale prediction): prompts in, images out, diffusers-style.

    pipe = NextScaleT2IPipeline.from_pretrained("FoundationVision/Infinity", variant="2b")  # T5 from the HF cache
    pipe = pipe.to("cuda", torch.bfloat16)     # bf16 blocks and decoder, FLOAT32_PARTS stay float32, bf16 autocast
    out = pipe("a red fox in snow, golden hour", negative_prompt="blurry", aspect_ratio="16:9", seed=0)
    out.images[0].save("fox.png"); pipe.save_pretrained("infinity-2b/")
    out = pipe.inpaint(image, mask_image, prompt="a white cat on the sofa", seed=0)  # white = regenerate

Values: the models work in [-1, 1]; the pipeline returns [0, 1] (``np`` / ``pt``) or PIL images.

Sizes: an image is one schedule of the reference's dynamic-resolution table (``nextscale.schedules``): an aspect
ratio template (15 of them, h/w 1:3 .. 3:1) and a size class ``pn`` ('0.06M' ~256 px, '0.25M' ~512, '0.60M' ~768,
'1M' ~1024). Give ``aspect_ratio`` ('16:9' is width:height, or an h/w number) and ``pn``, or an exact
``height`` x ``width`` of the table; ``num_scales`` stops early (a smaller image, fast previews).

Sampling values travel as one validated frozen object, :class:`~nextscale.sampling_t2i.T2ISettings` (the
``SamplingSettings`` of text-to-image: guidance weight and temperature, one number or one per scale; top-k / top-p;
where guidance applies; the guidance cut-off); the keyword arguments of a call are applied to the model's
recommendation (``pipe.settings``; the released models recommend cfg 3, tau 0.5, top-k 900, top-p 0.97) in one
``replace`` at the door, and the one object goes down to ``generate_t2i``. Settings it cannot honour (pruning, KV
budget, a refiner, Gumbel smoothing) are refused with one line.

The random numbers are the reference's (one multinomial per scale): a seed on the CPU replays the
reference's ``g_seed``; a CUDA generator draws a different stream (as the reference's GPU loader does).

Prompts: the released T5 tokenizer call truncates at 512 tokens silently; here a longer prompt is refused with
its token count (``InputError``), and an empty prompt needs ``allow_empty_prompt=True``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from nextscale.errors import FieldError, FieldName, InputError, NextScaleError
from nextscale.models.bsq import BSQVAE
from nextscale.models.infinity import Infinity, TextFeatures
from nextscale.sampling_t2i import T2ISettings, cfg_insertion, generate_t2i, keep_bits_constraint, t2i_settings
from nextscale.schedules import (
    PN_CLASSES,
    TEMPLATES,
    AspectRatio,
    parse_aspect_ratio,
    scale_schedule,
    tokenizer_schedule,
)
from nextscale.validate import MAX_IMAGES, as_int, check_count, check_device, check_seed

__all__ = [
    "NextScaleT2IPipeline",
    "NextScaleT2IPipelineOutput",
    "T2ISettings",
    "T2ISize",
    "T2IScaleStep",
    "resolve_size",
    "keep_masks_t2i",
    "FLOAT32_PARTS_T2I",
    "OUTPUT_TYPES",
]

OUTPUT_TYPES = ("pil", "np", "pt")
#: What keeps float32 weights when the pipeline is cast to bfloat16 (``to(dtype)``, ``torch_dtype=``): the text
#: path and the embeddings / head of the transformer (small; they condition every block and give the logits) and
#: the tokenizer's encoder (bits are signs of its output). The blocks and the decoder, nearly all the weights,
#: take the dtype and run under autocast in it, as the released GPU inference does.
FLOAT32_PARTS_T2I = {
    "infinity": (
        "cfg_uncond",
        "pos_start",
        "text_norm",
        "text_proj_for_sos",
        "text_proj_for_ca",
        "lvl_embed",
        "word_embed",
        "shared_ada_lin",
        "head_nm",
        "head",
    ),
    "bsq": ("encoder", "quantizer"),
}
DTYPES = (torch.float32, torch.bfloat16)
#: text encoders up to this many parameters are stored as files by ``save_pretrained`` (else by name)
SMALL_TEXT_ENCODER = 100_000_000
#: scales whose transformer grid has at most this many tokens are kept entirely when editing (the 1x1 scale; the
#: reference editing rule of VAR, ``nextscale.editing.FORCE_KEEP_MAX_TOKENS``)
FORCE_KEEP_MAX_TOKENS = 3


# ------------------------------------------------------------------------------------------------ sizes
@dataclass(frozen=True)
class T2ISize:
    """One image size of the tables: the template, the pn class, the transformer schedule and the pixels."""

    h_div_w: float  # the template's h/w
    pn: str
    schedule: Tuple[Tuple[int, int], ...]  # transformer grids (h, w), coarse to fine
    height: int
    width: int
    describe: str  # e.g. "aspect h/w 0.5625 -> template 0.571 (h:w 4:7), pn 1M, 13 scales, 1024 x 576 (h x w)"


_TEMPLATE_RANGE = (min(TEMPLATES), max(TEMPLATES))
_F = FieldName  # arguments named in messages as FieldNames: a front end renders them its own way (--aspect)
_RANGE_SLACK = 1.1  # a ratio up to 10% beyond the extreme templates still snaps to them; further is refused


def _canonical_pn(pn) -> str:
    """'0.6M' / '1024' / ... -> the table's name ('0.60M', '1M'); an unknown class is schedules' InputError."""
    scale_schedule(1.0, pn)
    from nextscale.schedules import canonical_pn as canon

    return canon(pn)


def _sizes_of(template: float, stride: int) -> List[str]:
    return [f"{pn}: {h * stride}x{w * stride}" for pn in PN_CLASSES for h, w in [scale_schedule(template, pn)[-1]]]


def resolve_size(
    stride: int,
    *,
    height=None,
    width=None,
    aspect_ratio=None,
    pn=None,
    num_scales=None,
    default_pn: str = "1M",
    max_scales: Optional[int] = None,
) -> T2ISize:
    """The size of a call: ``height`` and ``width`` (pixels; a size of the tables: multiples of ``stride``, the
    pixels per transformer token), or ``aspect_ratio`` + ``pn``, or neither (square). One clear line per bad
    value (:class:`InputError` naming the argument)."""
    if (height is None) != (width is None):
        raise FieldError(
            "give both ",
            _F("height"),
            " and ",
            _F("width"),
            " (pixels), or ",
            _F("aspect_ratio"),
            ", or neither (square)",
        )
    if height is not None and aspect_ratio is not None:
        raise FieldError("give either ", _F("height"), " and ", _F("width"), ", or ", _F("aspect_ratio"), ", not both")
    if height is not None:
        hw = []
        for name, v in (("height", height), ("width", width)):
            try:
                v = as_int(v, name)
            except NextScaleError as e:
                raise InputError(str(e)) from None
            if v < 1 or v % stride:
                raise FieldError(
                    _F(name), f" must be a positive multiple of {stride} (the model's pixels per token), got {v}"
                )
            hw.append(v)
        H, W = hw
        pns = [_canonical_pn(pn)] if pn is not None else list(PN_CLASSES)
        found = [
            (t, p) for t in TEMPLATES for p in pns if tuple(x * stride for x in scale_schedule(t, p)[-1]) == (H, W)
        ]
        if not found:
            near = parse_aspect_ratio(H / W).h_div_w
            where = f" of pn {pns[0]}" if pn is not None else ""
            raise FieldError(
                _F("height"),
                f"={H}, ",
                _F("width"),
                f"={W} is not a size{where} of the model's tables; for h/w {H / W:.3g} the nearest template "
                f"({near:g}) has (HxW) {', '.join(_sizes_of(near, stride))}; or give ",
                _F("aspect_ratio"),
                " and ",
                _F("pn"),
            )
        tpl, pn = found[0]
        requested = H / W
    else:
        ar = parse_aspect_ratio(1.0 if aspect_ratio is None else aspect_ratio, "aspect_ratio")
        lo, hi = _TEMPLATE_RANGE
        if not lo / _RANGE_SLACK <= ar.requested <= hi * _RANGE_SLACK:
            raise FieldError(
                _F("aspect_ratio"),
                f" {aspect_ratio!r} (h/w {ar.requested:.3g}) is outside the model's tables: they hold "
                f"h/w {lo:.3g} (width = 3 x height) to {hi:g} (height = 3 x width)",
            )
        tpl, requested = ar.h_div_w, ar.requested
        pn = _canonical_pn(default_pn if pn is None else pn)
    full = scale_schedule(tpl, pn)
    if num_scales is not None:
        try:
            n = as_int(num_scales, "num_scales")
        except NextScaleError as e:
            raise InputError(str(e)) from None
        if not 1 <= n <= len(full):
            raise FieldError(_F("num_scales"), f" must be in [1, {len(full)}] for pn {pn}, got {n}")
        full = full[:n]
    if max_scales is not None and len(full) > max_scales:
        raise InputError(f"pn {pn} has {len(full)} scales; this model has level embeddings for {max_scales}")
    H, W = full[-1][0] * stride, full[-1][1] * stride
    desc = f"{AspectRatio(requested, tpl).describe()}, pn {pn}, {len(full)} scales, {H} x {W} (height x width)"
    return T2ISize(tpl, pn, tuple(full), H, W, desc)


# ------------------------------------------------------------------------------------------------ outputs
@dataclass
class NextScaleT2IPipelineOutput:
    images: Any  # list of PIL images, np (B, H, W, 3) or torch (B, 3, H, W) in [0, 1]
    prompts: List[str]  # the prompt of each image
    size: T2ISize  # what was sampled (schedule, pixels, template)
    bits: Optional[List[torch.Tensor]] = None  # K x (B, h_k, w_k, d) int64 tokenizer bits, with return_bits=True


class T2IScaleStep:
    """What ``callback_on_scale`` receives after each scale. ``images`` (the partial image, decoded on first
    access: one decoder pass) is in the call's output_type."""

    def __init__(self, scale_index: int, num_scales: int, grid_hw, bits: torch.Tensor, decode: Callable[[], Any]):
        self.scale_index, self.num_scales, self.grid_hw, self.bits = scale_index, num_scales, tuple(grid_hw), bits
        self._decode, self._images = decode, None

    @property
    def images(self):
        if self._images is None:
            self._images = self._decode()
        return self._images


def _to_output(img_B3HW_01: torch.Tensor, output_type: str):
    from nextscale.pipelines import to_output

    return to_output(img_B3HW_01, output_type)


def _check_output_type(output_type) -> str:
    if output_type not in OUTPUT_TYPES:
        raise InputError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
    return output_type


def _check_dtype(dtype, name: str = "dtype") -> torch.dtype:
    if dtype not in DTYPES:
        raise InputError(
            f"{name} must be torch.float32 or torch.bfloat16 (the released models run in bfloat16; float16 is not "
            f"supported here), got {dtype!r}"
        )
    return dtype


_NORMS = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm)


def _cast_weights(model: torch.nn.Module, keep: Sequence[str], dtype: torch.dtype) -> None:
    """``model.to(dtype)`` except the named parts and every normalisation layer, which stay float32 (tiny; a float32
    activation meeting a bf16 norm weight is an error on the CPU, where autocast does not cast norms)."""
    model.to(dtype)
    for m in model.modules():
        if isinstance(m, _NORMS):
            m.float()
    for name in keep:
        part = getattr(model, name)
        if isinstance(part, torch.nn.Parameter):
            part.data = part.data.float()
        else:
            part.float()


# ------------------------------------------------------------------------------------------------ prompts
def _prompt_list(prompt, name: str, allow_empty: bool) -> List[str]:
    if isinstance(prompt, str):
        plist = [prompt]
    elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        plist = list(prompt)
    else:
        raise InputError(f"{name} must be a string or a non-empty list of strings, got {prompt!r:.80}")
    for i, p in enumerate(plist):
        if not p.strip() and not allow_empty:
            where = name if isinstance(prompt, str) else f"{name}[{i}]"
            raise FieldError(
                _F(name),
                f"{where[len(name) :]} is empty; describe the image, or pass ",
                _F("allow_empty_prompt"),
                " to sample from the empty prompt",
            )
    return plist


# ------------------------------------------------------------------------------------------------ editing masks
def keep_masks_t2i(
    keep_B1HW: torch.Tensor, tok_hw, tf_hw, force_keep_max_tokens: int = FORCE_KEEP_MAX_TOKENS
) -> List[torch.Tensor]:
    """Pixel keep map (B, 1, H, W) bool -> one keep map (B, h_k, w_k) bool per scale, in tokenizer space.

    VAR editing's rules (``nextscale.editing``) on rectangular grids: at the finest grid a token is kept only if
    all its pixels are; coarser grids take the bilinear resize of that map > 0.5; scales whose transformer grid
    has <= ``force_keep_max_tokens`` tokens are kept entirely unless the mask keeps nothing."""
    B = keep_B1HW.shape[0]
    finest_Bhw = F.adaptive_max_pool2d((~keep_B1HW).float(), tuple(tok_hw[-1]))[:, 0] == 0
    keeps_any = finest_Bhw.reshape(B, -1).any(dim=1).view(B, 1, 1)
    out = []
    for (h, w), (th, tw) in zip(tok_hw, tf_hw):
        k = F.interpolate(finest_Bhw[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)[:, 0] > 0.5
        if th * tw <= force_keep_max_tokens:
            k = k | keeps_any
        out.append(k)
    return out


def _edit_canvas(imgs, masks, H: int, W: int, outpaint, mask_threshold):
    """Images (list of (3, h, w) in [0, 1]) placed on an H x W canvas -> (canvas (B, 3, H, W) in [-1, 1],
    keep (B, 1, H, W) bool), as ``NextScaleInpaintPipeline.prepare`` does on its square canvas."""
    from nextscale.editing import binarize_mask, crop_to_aspect, parse_outpaint, resize_image

    x0, y0, x1, y1 = 0, 0, W, H
    outpaint = parse_outpaint(outpaint)
    if outpaint is not None:
        left, top, right, bottom = outpaint
        if not (-W < left < W and -W < right < W and -H < top < H and -H < bottom < H):
            raise InputError(f"outpaint margins must lie within the {W}x{H} (width x height) canvas, got {outpaint}")
        x0, y0, x1, y1 = left, top, W - right, H - bottom
        if x1 - x0 < 1 or y1 - y0 < 1:
            raise InputError(f"outpaint {outpaint} leaves no room for the image on the {W}x{H} canvas")
    bw, bh = x1 - x0, y1 - y0
    vy0, vy1, vx0, vx1 = max(0, -y0), bh - max(0, y1 - H), max(0, -x0), bw - max(0, x1 - W)
    canvas, keep_px = [], []
    for i, img in enumerate(imgs):
        _, h, w = img.shape
        regen_hw = torch.full((h, w), outpaint is None, dtype=torch.bool)
        if masks is not None:
            if tuple(masks[i].shape) != (h, w):
                raise InputError(
                    f"mask {i} is {masks[i].shape[1]}x{masks[i].shape[0]} but image {i} is {w}x{h} (width x height)"
                )
            regen_hw = binarize_mask(masks[i], mask_threshold, i)
        cy0, cy1, cx0, cx1 = crop_to_aspect(img, bw, bh)
        box_img = resize_image(img[:, cy0:cy1, cx0:cx1], bh, bw, "bicubic")
        box_regen = resize_image(regen_hw[None, cy0:cy1, cx0:cx1].float(), bh, bw, "area")[0] > 0
        vis = box_img[:, vy0:vy1, vx0:vx1]
        pad = (max(0, x0), max(0, W - x1), max(0, y0), max(0, H - y1))
        canvas.append(F.pad(vis[None], pad, mode="replicate")[0] if any(pad) else vis)
        k = torch.zeros(H, W, dtype=torch.bool)
        k[max(0, y0) : min(H, y1), max(0, x0) : min(W, x1)] = ~box_regen[vy0:vy1, vx0:vx1]
        keep_px.append(k)
    return torch.stack(canvas).mul(2).sub(1), torch.stack(keep_px).unsqueeze(1)


# ------------------------------------------------------------------------------------------------ the pipeline
class NextScaleT2IPipeline:
    """Text-to-image generation with an Infinity transformer, its BSQ tokenizer and a text encoder."""

    def __init__(
        self,
        vae: BSQVAE,
        transformer: Infinity,
        text_encoder=None,
        *,
        sampling_defaults: Optional[Dict[str, Any]] = None,
        default_pn: str = "1M",
        text_encoder_entry: Optional[dict] = None,
        default_num_scales: Optional[int] = None,
    ):
        if not isinstance(vae, BSQVAE):
            raise InputError(f"vae must be a nextscale.models.bsq.BSQVAE, got {type(vae).__name__}")
        if not isinstance(transformer, Infinity):
            raise InputError(
                f"transformer must be a nextscale.models.infinity.Infinity, got {type(transformer).__name__}"
            )
        if vae.codebook_dim != transformer.config.vae_bits:
            raise InputError(
                f"the tokenizer has {vae.codebook_dim} bits per token, the transformer expects "
                f"{transformer.config.vae_bits}: they are not a pair"
            )
        if text_encoder is not None and not callable(text_encoder):
            raise InputError(
                f"text_encoder must be callable as encoder(list_of_prompts), got {type(text_encoder).__name__}"
            )
        self.vae, self.transformer, self.text_encoder = vae.eval(), transformer.eval(), text_encoder
        #: what a call samples with when it gives nothing: the model's recommendation
        self.settings = T2ISettings.from_dict(sampling_defaults or {})
        self.default_pn = _canonical_pn(default_pn)
        #: scales sampled at the default size (a model trained on the first N scales of its pn; None: all)
        self.default_num_scales = None if default_num_scales is None else as_int(default_num_scales, "num_scales")
        self.dtype = torch.float32  # the compute dtype (bf16: weights cast by to(), run under autocast)
        self._text_encoder_entry = text_encoder_entry

    # ---- construction ----
    @property
    def components(self) -> Dict[str, Any]:
        return {"vae": self.vae, "transformer": self.transformer, "text_encoder": self.text_encoder}

    @classmethod
    def from_pretrained(
        cls,
        name_or_path,
        variant: Optional[str] = None,
        torch_dtype=None,
        text_encoder=None,
        cache_dir=None,
        revision=None,
        local_files_only: Optional[bool] = None,
        device=None,
    ) -> "NextScaleT2IPipeline":
        """Load a pipeline directory (local or a hub id), or a released model: ``"FoundationVision/Infinity"``
        (or a local folder of its files) with ``variant`` "2b", "8b" or "8b-512" (only that variant's files are
        downloaded, converted once into the hub cache; ``nextscale.hub_t2i``).

        text_encoder: None = the one the model names (flan-t5-xl for the released models, from the Hugging Face
            cache: ``hf download google/flan-t5-xl`` once), a name or directory of a T5, any
            ``TextEncoder`` object, or False (none: pass ``prompt_embeds``).
        torch_dtype: float32 (default) or bfloat16 (see ``to``). local_files_only: None follows
            ``HF_HUB_OFFLINE`` for the model files; the text encoder is only read from the cache unless False.
        """
        from nextscale.hub_t2i import load_t2i_dir, released_files_pipeline_parts, resolve_t2i_path
        from nextscale.text import DEFAULT_T5

        dtype = _check_dtype(torch_dtype, "torch_dtype") if torch_dtype is not None else torch.float32
        if device is not None:
            device = check_device(device)
        kw = dict(cache_dir=cache_dir, local_files_only=local_files_only)
        enc = None
        if variant is not None and text_encoder is None:  # the released models' encoder: checked before downloading
            enc = _load_text_encoder({"name": DEFAULT_T5, "max_length": 512}, None, None, **kw)
        path, release = resolve_t2i_path(
            name_or_path, variant=variant, cache_dir=cache_dir, revision=revision, local_files_only=local_files_only
        )
        if release is not None:
            vae, model, index = released_files_pipeline_parts(release)
        else:
            vae, model, index = load_t2i_dir(path)
        entry = index.get("text_encoder")
        if enc is None:
            enc = _load_text_encoder(entry, path, text_encoder, **kw)
        pipe = cls(
            vae,
            model,
            enc,
            sampling_defaults=index.get("sampling_defaults"),
            default_pn=index.get("default_pn", "1M"),
            text_encoder_entry=entry if isinstance(entry, dict) and "name" in entry else None,
            default_num_scales=index.get("default_num_scales"),
        )
        return pipe.to(device, dtype)

    def save_pretrained(self, out_dir, text_encoder: str = "auto") -> None:
        """Write a pipeline directory atomically (``nextscale.hub_t2i``). ``text_encoder``: "auto" stores a small
        T5 (<= 100M parameters) as files and a large one (flan-t5-xl) by its name; "name" / "files" force one."""
        from nextscale.hub_t2i import save_t2i_dir
        from nextscale.text import T5TextEncoder

        if text_encoder not in ("auto", "name", "files"):
            raise InputError(f"text_encoder must be 'auto', 'name' or 'files', got {text_encoder!r}")
        enc, entry, writer = self.text_encoder, self._text_encoder_entry, None
        if isinstance(enc, T5TextEncoder):
            n = sum(p.numel() for p in enc.model.parameters())
            name = str(getattr(enc.model, "name_or_path", "") or "")
            as_files = text_encoder == "files" or (text_encoder == "auto" and (n <= SMALL_TEXT_ENCODER or not name))
            if as_files:

                def writer(d, enc=enc):
                    enc.model.save_pretrained(d)
                    enc.tokenizer.save_pretrained(d)

                entry = {"files": "text_encoder", "max_length": enc.max_length}
            else:
                if not name:
                    raise InputError(
                        "the text encoder has no name to store (loaded from memory): use text_encoder='files'"
                    )
                entry = {"name": name, "max_length": enc.max_length}
        elif enc is not None and entry is None:
            warnings.warn(
                f"the text encoder ({type(enc).__name__}) cannot be saved: loading this directory will need "
                f"text_encoder=",
                UserWarning,
                stacklevel=2,
            )
        save_t2i_dir(
            out_dir,
            self.vae,
            self.transformer,
            text_encoder_entry=entry,
            write_text_encoder=writer,
            extra={
                "sampling_defaults": self.settings.to_dict(),
                "default_pn": self.default_pn,
                **({"default_num_scales": self.default_num_scales} if self.default_num_scales else {}),
            },
        )

    def to(self, device=None, dtype=None) -> "NextScaleT2IPipeline":
        """Move the models and/or cast the weights: bfloat16 halves the memory (``FLOAT32_PARTS_T2I`` stay float32)
        and sampling runs under bf16 autocast; float32 (the default, and what a CPU wants) is the reference's math.
        The T5 encoder runs in float16 on a GPU and float32 on a CPU, as the released scripts."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        dtype = None if dtype is None else _check_dtype(dtype)
        if device is not None:
            device = check_device(device)
            self.vae.to(device)
            self.transformer.to(device)
            from nextscale.text import T5TextEncoder

            if isinstance(self.text_encoder, T5TextEncoder):
                self.text_encoder.to(device, torch.float16 if device.type == "cuda" else torch.float32)
        if dtype is not None:
            _cast_weights(self.transformer, FLOAT32_PARTS_T2I["infinity"], dtype)
            _cast_weights(self.vae, FLOAT32_PARTS_T2I["bsq"], dtype)
            self.dtype = dtype
        return self

    @property
    def device(self) -> torch.device:
        return self.transformer.pos_start.device

    @property
    def stride(self) -> int:
        """Image pixels per transformer token at the last scale (16 for the released models)."""
        return self.vae.patch_size * (2 if self.transformer.config.apply_spatial_patchify else 1)

    def weights_memory(self) -> Dict[str, int]:
        """Bytes of weights (parameters and buffers) per component, as they are now (dtype, device aside):
        ``{"transformer": ..., "vae": ..., "text_encoder": ..., "total": ...}`` (a custom encoder counts 0)."""

        def size(m) -> int:
            if not isinstance(m, torch.nn.Module):
                return 0
            seen, n = set(), 0
            for t in list(m.parameters()) + list(m.buffers()):
                key = id(t) if t.is_meta else t.data_ptr()  # (a layout on the meta device has no addresses)
                if key not in seen:  # the tokenizer's bit mask is registered twice
                    seen.add(key)
                    n += t.numel() * t.element_size()
            return n

        out = {
            "transformer": size(self.transformer),
            "vae": size(self.vae),
            "text_encoder": size(getattr(self.text_encoder, "model", self.text_encoder)),
        }
        out["total"] = sum(out.values())
        return out

    @property
    def sampling_defaults(self) -> Dict[str, Any]:
        return self.settings.to_dict()

    @property
    def text_limit(self) -> int:
        """The most tokens a prompt may have: the encoder's max length, at most the transformer's text_maxlen."""
        limit = self.transformer.config.text_maxlen
        m = getattr(self.text_encoder, "max_length", None)
        return min(limit, int(m)) if isinstance(m, int) else limit

    def size(self, height=None, width=None, aspect_ratio=None, pn=None, num_scales=None) -> T2ISize:
        """What a call with these arguments samples (checked, nothing run)."""
        if num_scales is None and height is None and (pn is None or _canonical_pn(pn) == self.default_pn):
            num_scales = self.default_num_scales  # the default size of a model trained on fewer scales
        return resolve_size(
            self.stride,
            height=height,
            width=width,
            aspect_ratio=aspect_ratio,
            pn=pn,
            num_scales=num_scales,
            default_pn=self.default_pn,
            max_scales=self.transformer.config.num_levels,
        )

    # ---- helpers ----
    def _autocast(self):
        if self.dtype == torch.float32:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _generator(self, generator, seed) -> Optional[torch.Generator]:
        if generator is not None and seed is not None:
            raise InputError("give either seed or generator, not both (a generator carries its own seed)")
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise InputError(f"generator must be a torch.Generator, got {type(generator).__name__}")
            if generator.device.type != self.device.type:
                raise InputError(
                    f"generator is on {generator.device.type} but the model is on {self.device.type}: make it with "
                    f"torch.Generator({self.device.type!r})"
                )
            return generator
        if seed is not None:
            try:
                s = check_seed(seed)
            except NextScaleError as e:
                raise InputError(str(e)) from None
            return torch.Generator(device=self.device).manual_seed(s)
        return None  # the global generator, as the reference's g_seed=None

    def _check_lengths(self, plist: List[str], name: str) -> None:
        """Refuse prompts longer than the encoder reads (the reference truncates them silently)."""
        tok = getattr(self.text_encoder, "tokenizer", None)
        if tok is None:
            return
        limit = self.text_limit
        ids = tok(plist, truncation=False, padding=False, verbose=False)["input_ids"]
        for i, row in enumerate(ids):
            if len(row) > limit:
                where = name if len(plist) == 1 else f"{name}[{i}]"
                raise FieldError(
                    _F(name),
                    f"{where[len(name) :]} is {len(row)} tokens long; the text encoder reads at most {limit} (the "
                    f"reference silently cuts the rest): shorten it",
                )

    def _encode(self, plist: List[str], name: str) -> TextFeatures:
        from nextscale.text import encode_prompts

        if self.text_encoder is None:
            raise InputError(
                "this pipeline has no text encoder: pass text_encoder= to from_pretrained (a T5 name or any "
                "TextEncoder), or give prompt_embeds"
            )
        text = encode_prompts(self.text_encoder, plist, name)
        return self._check_features(text, name)

    def _check_features(self, text, name: str) -> TextFeatures:
        from nextscale.text import check_text_features

        text = check_text_features(text, name)
        cfg = self.transformer.config
        if text.kv_compact.shape[1] != cfg.text_channels:
            raise InputError(
                f"{name}: the text features are {text.kv_compact.shape[1]} wide but the transformer reads "
                f"{cfg.text_channels} (text_channels): another text encoder?"
            )
        if text.max_seqlen > cfg.text_maxlen:
            raise InputError(f"{name}: a row of {text.max_seqlen} tokens exceeds the model's {cfg.text_maxlen}")
        return text

    def _texts(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, n: int, allow_empty: bool):
        """(text features (B rows), negative features or None, prompts per image), checked before encoding."""
        from nextscale.text import encode_negative, features_from_rows

        try:
            n = check_count(n, "num_images_per_prompt", hi=MAX_IMAGES)
        except NextScaleError as e:
            raise InputError(str(e)) from None
        if prompt_embeds is not None:
            if prompt is not None:
                raise InputError("give either prompt or prompt_embeds, not both")
            text = self._check_features(prompt_embeds, "prompt_embeds")
            plist = [""] * text.batch_size
        else:
            if prompt is None:
                raise InputError("prompt is required (a string or a list of strings)")
            plist = _prompt_list(prompt, "prompt", allow_empty)
        if len(plist) * n > MAX_IMAGES:  # before tokenising each prompt
            raise InputError(
                f"{len(plist):,} prompts x num_images_per_prompt {n:,} exceed {MAX_IMAGES:,} images per call; "
                "split the work into several calls"
            )
        if prompt_embeds is None:
            self._check_lengths(plist, "prompt")
        neg_list = None
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise InputError("give either negative_prompt or negative_prompt_embeds, not both")
        if negative_prompt is not None:
            neg_list = _prompt_list(negative_prompt, "negative_prompt", True)
            if len(neg_list) not in (1, len(plist)):
                raise InputError(
                    f"negative_prompt must be one string or {len(plist)} strings (one per prompt), got {len(neg_list)}"
                )
            self._check_lengths(neg_list, "negative_prompt")
        # encode (the checks above are done: a bad argument costs no encoder pass)
        if prompt_embeds is None:
            text = self._encode(plist, "prompt")
        rows = text.kv_compact.split(text.lens)
        per_image = [r for r in rows for _ in range(n)]  # prompt-major: p0, p0, p1, p1 for n = 2
        prompts = [p for p in plist for _ in range(n)]
        text = features_from_rows(per_image) if n > 1 else text
        neg = None
        if negative_prompt_embeds is not None:
            neg = self._check_features(negative_prompt_embeds, "negative_prompt_embeds")
            if neg.batch_size not in (1, text.batch_size):
                raise InputError(f"negative_prompt_embeds has {neg.batch_size} rows; give 1 or {text.batch_size}")
        elif neg_list is not None:
            if len(neg_list) == 1:
                neg = encode_negative(self.text_encoder, neg_list[0], text.batch_size)
            else:
                neg = encode_negative(self.text_encoder, [p for p in neg_list for _ in range(n)], text.batch_size)
            if neg is not None:
                neg = self._check_features(neg, "negative_prompt")
        return text, neg, prompts

    @torch.no_grad()
    def decode(self, summed_BdHW: torch.Tensor) -> torch.Tensor:
        """Summed codes -> images in [0, 1] (B, 3, H, W), float32."""
        with self._autocast():
            img = self.vae.decode(summed_BdHW)
        return img.float().add_(1).mul_(0.5)

    def _run(
        self,
        text,
        neg,
        prompts,
        size: T2ISize,
        settings: T2ISettings,
        generator,
        output_type,
        return_bits,
        callback_on_scale,
        constraint=None,
    ) -> NextScaleT2IPipelineOutput:
        if callback_on_scale is not None and not callable(callback_on_scale):
            raise InputError(f"callback_on_scale must be callable, got {type(callback_on_scale).__name__}")
        self.check_memory(text.batch_size, size)
        sched = list(size.schedule)

        def on_scale(step):
            def decode(summed=step.summed_codes):
                return _to_output(self.decode(summed), output_type)

            callback_on_scale(T2IScaleStep(step.si, step.num_scales, sched[step.si], step.bits, decode))

        with self._autocast():
            out = generate_t2i(
                self.transformer,
                self.vae,
                text,
                sched,
                settings,
                generator=generator,
                negative_text=neg,
                callback=on_scale if callback_on_scale is not None else None,
                constraint=constraint,
                h_div_w=size.h_div_w,
                decode=False,
            )
        img = self.decode(out.summed_codes)
        return NextScaleT2IPipelineOutput(
            images=_to_output(img, output_type),
            prompts=prompts,
            size=size,
            bits=out.bits_per_scale if return_bits else None,
        )

    def check_memory(self, B: int, size: T2ISize) -> None:
        """Refuse a call of B images of ``size`` whose estimated peak exceeds the memory left (one line with the
        estimate): the KV cache of both guidance rows (depth x k, v x tokens x width), the decoder's
        full-resolution activations (a lower bound of the peak)."""
        from nextscale.resources import check_memory

        cfg = self.transformer.config
        tokens = sum(h * w for h, w in size.schedule)
        kv = cfg.depth * 2 * 2 * tokens * cfg.embed_dim * torch.finfo(self.dtype).bits // 8
        dec = size.height * size.width * (3 + 2 * 64) * 4
        check_memory(
            B * (kv + dec),
            f"{B:,} image{'s' if B != 1 else ''} of {size.height}x{size.width} in one call",
            ("pass fewer ", _F("prompt"), " / ", _F("num_images_per_prompt"), " per call, or a smaller ", _F("pn")),
            self.device,
        )

    def settings_for(self, settings: Optional[T2ISettings] = None, **changes: Any) -> T2ISettings:
        """The door of every call: ``settings`` (default: the model's recommendation ``pipe.settings``) with the
        call's keywords applied in one ``replace`` (None keeps a setting; unknown names and settings text-to-image
        cannot honour are refused with one line)."""
        return t2i_settings(self.settings if settings is None else settings, **changes)

    def _prepare(self, settings, changes, output_type, size_kw) -> Tuple[T2ISettings, T2ISize]:
        settings = self.settings_for(settings, **changes)
        _check_output_type(output_type)
        size = self.size(**size_kw)
        settings.per_scale(len(size.schedule))  # per-scale lists of the wrong length: refused before any work
        cfg_insertion(settings.cfg_insertion_layer, self.transformer.config.depth)
        return settings, size

    # ---- generation ----
    def __call__(
        self,
        prompt: Union[None, str, Sequence[str]] = None,
        negative_prompt: Union[None, str, Sequence[str]] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        aspect_ratio=None,
        pn: Optional[str] = None,
        num_scales: Optional[int] = None,
        guidance_scale: Union[None, float, Sequence[float]] = None,
        temperature: Union[None, float, Sequence[float]] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        cfg_insertion_layer: Union[None, int, Sequence[int]] = None,
        guidance_cutoff: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        return_bits: bool = False,
        callback_on_scale: Optional[Callable[[T2IScaleStep], None]] = None,
        allow_empty_prompt: bool = False,
        settings: Optional[T2ISettings] = None,
        prompt_embeds: Optional[TextFeatures] = None,
        negative_prompt_embeds: Optional[TextFeatures] = None,
    ) -> NextScaleT2IPipelineOutput:
        """Generate one image per prompt (times ``num_images_per_prompt``).

        prompt: a string or a list (one image each). negative_prompt: one for all or one per prompt; None or ""
            = the model's learned unconditional text (the released behaviour).
        height, width / aspect_ratio, pn, num_scales: the size (module docstring); default square at the model's
            pn (``pipe.default_pn``).
        guidance_scale, temperature (one number or one per scale), top_k, top_p, cfg_insertion_layer,
            guidance_cutoff: applied to ``settings`` (a ``T2ISettings``; default: the model's recommendation
            ``pipe.settings``) in one ``replace``.
        generator or seed: the randomness (the same seed on the same device gives the same images); neither =
            torch's global generator. callback_on_scale: called with a :class:`T2IScaleStep` after every scale.
        prompt_embeds / negative_prompt_embeds: precomputed ``TextFeatures`` instead of prompts.
        """
        settings, size = self._prepare(
            settings,
            dict(
                guidance_scale=guidance_scale,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                cfg_insertion_layer=cfg_insertion_layer,
                guidance_cutoff=guidance_cutoff,
            ),
            output_type,
            dict(height=height, width=width, aspect_ratio=aspect_ratio, pn=pn, num_scales=num_scales),
        )
        gen = self._generator(generator, seed)
        text, neg, prompts = self._texts(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_images_per_prompt, allow_empty_prompt
        )
        return self._run(text, neg, prompts, size, settings, gen, output_type, return_bits, callback_on_scale)

    @torch.no_grad()
    def encode_image(self, image_B3HW: torch.Tensor, schedule) -> List[torch.Tensor]:
        """Images (B, 3, H, W) in [-1, 1] -> bits per tokenizer scale (B, h_k, w_k, d) for a transformer
        ``schedule``. Always float32 (bits are signs of the encoder's output)."""
        tok_hw = tokenizer_schedule(schedule, bool(self.transformer.config.apply_spatial_patchify))
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self.vae.encode(image_B3HW.to(self.device, torch.float32), tok_hw)[1]

    def inpaint(
        self,
        image,
        mask_image=None,
        prompt: Union[None, str, Sequence[str]] = None,
        negative_prompt: Union[None, str, Sequence[str]] = None,
        *,
        outpaint=None,
        mask_threshold: Optional[float] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        aspect_ratio=None,
        pn: Optional[str] = None,
        guidance_scale=None,
        temperature=None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        cfg_insertion_layer=None,
        guidance_cutoff: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
        output_type: str = "pil",
        return_bits: bool = False,
        callback_on_scale: Optional[Callable[[T2IScaleStep], None]] = None,
        allow_empty_prompt: bool = False,
        settings: Optional[T2ISettings] = None,
    ) -> NextScaleT2IPipelineOutput:
        """In-/out-painting with a prompt: the image's bits are teacher-forced where kept while the rest is
        sampled (``sampling_t2i.keep_bits_constraint``; no extra random numbers).

        Masks follow ``nextscale.editing``: white = regenerate, black = keep, binary unless ``mask_threshold``;
        same size as the image. ``outpaint=(left, top, right, bottom)``: margins in canvas pixels (negative =
        beyond the edge); the canvas outside the placed image is regenerated. The canvas is the size given
        (height/width, aspect_ratio, pn) or, by default, the template nearest to the (first) image's aspect at the
        model's pn; the image is center-cropped to the canvas (or box) aspect and resized into it. One image / mask
        / prompt serves the whole batch, or give one per image. An all-black mask returns the input's bits.
        """
        from nextscale.editing import images_to_list, masks_to_list

        try:
            imgs = images_to_list(image)
            masks = masks_to_list(mask_image) if mask_image is not None else None
        except InputError:
            raise
        except NextScaleError as e:
            raise InputError(str(e)) from None
        if masks is None and outpaint is None:
            raise InputError(
                "nothing to edit: pass mask_image (white = regenerate) or outpaint=(left, top, right, bottom)"
            )
        if mask_threshold is not None and not (
            isinstance(mask_threshold, (int, float))
            and not isinstance(mask_threshold, bool)
            and 0 < mask_threshold <= 1
        ):
            raise InputError(f"mask_threshold must be in (0, 1] (pixels >= it are regenerated), got {mask_threshold!r}")
        if height is None and aspect_ratio is None:
            aspect_ratio = imgs[0].shape[1] / imgs[0].shape[2]
            lo, hi = _TEMPLATE_RANGE
            aspect_ratio = min(max(aspect_ratio, lo), hi)  # an extreme image is cropped to the nearest template
        settings, size = self._prepare(
            settings,
            dict(
                guidance_scale=guidance_scale,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                cfg_insertion_layer=cfg_insertion_layer,
                guidance_cutoff=guidance_cutoff,
            ),
            output_type,
            dict(height=height, width=width, aspect_ratio=aspect_ratio, pn=pn, num_scales=None),
        )
        plist = _prompt_list(prompt, "prompt", allow_empty_prompt) if prompt is not None else None
        if plist is None:
            raise InputError("prompt is required (a string or a list of strings)")
        B = max(len(imgs), len(masks or []), len(plist))
        for what, k in (("images", len(imgs)), ("masks", len(masks) if masks else 1), ("prompts", len(plist))):
            if k not in (1, B):
                raise InputError(f"got {k} {what} for a batch of {B}: give one (used for all) or {B}")
        imgs = imgs * B if len(imgs) == 1 else imgs
        masks = (masks * B if len(masks) == 1 else masks) if masks is not None else None
        plist = plist * B if len(plist) == 1 else plist
        gen = self._generator(generator, seed)
        canvas, keep_px = _edit_canvas(imgs, masks, size.height, size.width, outpaint, mask_threshold)
        patchify = bool(self.transformer.config.apply_spatial_patchify)
        tok_hw = tokenizer_schedule(list(size.schedule), patchify)
        keep = keep_masks_t2i(keep_px, tok_hw, list(size.schedule))
        if outpaint is not None and not bool(keep[-1].reshape(B, -1).any(dim=1).all()):
            raise InputError(
                f"outpaint {outpaint}: the placed image covers no whole token of the canvas; use smaller margins"
            )
        kept = torch.stack([k.float().mean() for k in keep])
        if bool((kept == 1).all()):
            warnings.warn(
                "every token is kept (an all-black mask): the result is the input's reconstruction; paint "
                "the region to regenerate white",
                UserWarning,
                stacklevel=2,
            )
        text, neg, prompts = self._texts(plist, negative_prompt, None, None, 1, allow_empty_prompt)
        bits = self.encode_image(canvas, list(size.schedule))
        constraint = keep_bits_constraint(bits, [k.to(self.device) for k in keep])
        return self._run(
            text, neg, prompts, size, settings, gen, output_type, return_bits, callback_on_scale, constraint=constraint
        )


def _load_text_encoder(entry, root, text_encoder, *, cache_dir=None, local_files_only=None):
    """The text encoder of ``from_pretrained``: see its docstring."""
    from nextscale.text import T5TextEncoder

    if text_encoder is False:
        return None
    if text_encoder is not None and not isinstance(text_encoder, (str, os.PathLike)):
        if not callable(text_encoder):
            raise InputError(
                f"text_encoder must be a name, a directory or a callable encoder, got {type(text_encoder).__name__}"
            )
        return text_encoder
    max_length = int(entry.get("max_length", 512)) if isinstance(entry, dict) else 512
    if text_encoder is not None:
        name = text_encoder
    elif not isinstance(entry, dict):
        raise InputError(
            f"{root} names no text encoder; pass text_encoder= (a T5 name or directory, or any TextEncoder)"
        )
    elif "files" in entry:
        name = os.path.join(os.fspath(root), entry["files"])
    else:
        name = entry["name"]
    kw = dict(device="cpu", local_files_only=True if local_files_only is None else bool(local_files_only))
    first = None
    for cache in [cache_dir, None] if cache_dir is not None else [None]:  # the model's cache, then the user's
        try:
            return T5TextEncoder.from_pretrained(name, cache_dir=cache, max_length=max_length, **kw)
        except InputError as e:
            first = first or e
    raise InputError(f"text encoder {first}; or pass text_encoder= (any prompt encoder)") from None
