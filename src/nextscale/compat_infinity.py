"""Drop-in names for scripts written against the official Infinity code (``tools/run_infinity.py``).

    from nextscale import compat_infinity as ci
    text_tokenizer, text_encoder = ci.load_tokenizer(t5_path="google/flan-t5-xl")
    vae = ci.load_visual_tokenizer(args)               # args.vae_type, vae_path, apply_spatial_patchify
    infinity = ci.load_transformer(vae, args)          # args.model_type, model_path, checkpoint_type, ...
    scale_schedule = ci.dynamic_resolution_h_w[args.h_div_w_template][args.pn]["scales"]
    scale_schedule = [(1, h, w) for (_, h, w) in scale_schedule]
    img = ci.gen_one_img(infinity, vae, text_tokenizer, text_encoder, "a dog", g_seed=0, cfg_list=3, tau_list=0.5,
                         scale_schedule=scale_schedule, cfg_insertion_layer=[0], vae_type=32)
    # img: (H, W, 3) uint8, BGR (cv2.imwrite-ready), as the reference returns it

The transformer returned by :func:`load_transformer` / :func:`load_infinity` is an :class:`InfinityCompat`:
``nextscale.models.infinity.Infinity`` (same state dict) plus the reference's ``autoregressive_infer_cfg`` (which
calls :func:`nextscale.sampling_t2i.generate_t2i`) and its ``rng``. Files are read strictly
(:mod:`nextscale.infinity_release`): a file that does not fit is an error, not a partial load.

Reference keywords accepted and ignored, in one place (none of them does anything on the reference's bitwise
path either): ``force_gt_Bhw``, ``cfg_sc``, ``returns_vemb``, ``ratio_Bl1``, ``norm_cfg``, ``cfg_exp_k``,
``gumbel``, ``softmax_merge_topk``, ``inference_mode``, ``save_img_path``, ``sampling_per_bits`` (sampler);
``use_flex_attn``, ``cache_dir``, ``enable_model_cache``, ``scale_schedule``, ``pn`` (loaders: kernels, file
caching, the flex-attention compile). ``bf16`` is ignored too: the numbers are the float32 ones of the golden
fixtures (the reference runs its blocks in bfloat16 on a GPU). Refused with an InputError: options that change
the math or the layout away from the released models (``use_bit_label=0``, ``vae_type=0``, ``trunk_scale`` below
the number of scales, ``enable_positive_prompt``, other RoPE / level-embedding flags).
"""

from __future__ import annotations

import numbers
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from nextscale.errors import InputError
from nextscale.infinity_release import load_bsq_tokenizer, load_infinity_transformer
from nextscale.models.bsq import BSQVAE, BSQConfig
from nextscale.models.infinity import Infinity, InfinityConfig, TextFeatures
from nextscale.sampling_t2i import generate_t2i
from nextscale.schedules import TEMPLATES, dynamic_resolution_table
from nextscale.text import T5TextEncoder

__all__ = [
    "InfinityCompat",
    "dynamic_resolution_h_w",
    "h_div_w_templates",
    "load_tokenizer",
    "encode_prompt",
    "load_visual_tokenizer",
    "load_infinity",
    "load_transformer",
    "gen_one_img",
    "autoregressive_infer_cfg",
    "MODEL_TYPES",
]

#: The official table keyed like the reference: float h/w template -> pn -> {'pixel': (H, W), 'scales': [(t, h, w)]}.
dynamic_resolution_h_w: Dict[float, Dict[str, dict]] = {
    tpl: {pn: {"pixel": tuple(e["pixel"]), "scales": [tuple(s) for s in e["scales"]]} for pn, e in per_pn.items()}
    for tpl, per_pn in zip(TEMPLATES, dynamic_resolution_table().values())
}
h_div_w_templates = np.array(TEMPLATES)

#: ``args.model_type`` -> transformer sizes (the reference's ``load_transformer`` table).
MODEL_TYPES: Dict[str, Dict[str, int]] = {
    "infinity_2b": dict(depth=32, embed_dim=2048, num_heads=16, block_chunks=8),
    "infinity_8b": dict(depth=40, embed_dim=3584, num_heads=28, block_chunks=8),
    "infinity_layer12": dict(depth=12, embed_dim=768, num_heads=8, block_chunks=4),
    "infinity_layer16": dict(depth=16, embed_dim=1152, num_heads=12, block_chunks=4),
    "infinity_layer24": dict(depth=24, embed_dim=1536, num_heads=16, block_chunks=4),
    "infinity_layer32": dict(depth=32, embed_dim=2080, num_heads=20, block_chunks=4),
    "infinity_layer40": dict(depth=40, embed_dim=2688, num_heads=24, block_chunks=4),
    "infinity_layer48": dict(depth=48, embed_dim=3360, num_heads=28, block_chunks=4),
}
_VAE_TYPES = (14, 16, 18, 20, 24, 32, 64)
_TEXT_MAXLEN = 512  # the reference loader's, whatever the checkpoint holds (cfg_uncond is fitted to it)


def _device(device=None) -> torch.device:
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


def _arg(args, name: str, default=None):
    return getattr(args, name, default) if not isinstance(args, dict) else args.get(name, default)


def _require(name: str, value, allowed) -> None:
    if value not in allowed:
        raise InputError(
            f"{name}={value!r} is not supported (only {' / '.join(map(repr, allowed))}: the released model)"
        )


# ------------------------------------------------------------------------------------------------ text
def load_tokenizer(t5_path: str = "", device=None, local_files_only: bool = True):
    """``(text_tokenizer, text_encoder)``: the T5 tokenizer (model_max_length 512) and ``T5EncoderModel`` (float16
    on a GPU, float32 on a CPU; eval, frozen), from a directory or a Hugging Face id in the local cache."""
    enc = T5TextEncoder.from_pretrained(
        t5_path or "google/flan-t5-xl", device=_device(device), local_files_only=local_files_only
    )
    return enc.tokenizer, enc.model


@torch.no_grad()
def encode_prompt(text_tokenizer, text_encoder, prompt, enable_positive_prompt=False):
    """The reference's text tuple ``(kv_compact, lens, cu_seqlens_k, max_seqlen_k)`` for one prompt (or a list)."""
    if enable_positive_prompt:
        raise InputError("enable_positive_prompt is not supported (it rewrites prompts); pass the prompt you want")
    enc = T5TextEncoder(text_encoder, text_tokenizer)
    return enc(prompt).as_tuple()


def _features(t, name: str) -> TextFeatures:
    if isinstance(t, TextFeatures):
        return t
    if isinstance(t, (tuple, list)) and len(t) == 4:
        return TextFeatures.from_tuple(tuple(t))
    raise InputError(f"{name} must be the tuple (kv_compact, lens, cu_seqlens_k, max_seqlen_k), got {type(t).__name__}")


# ------------------------------------------------------------------------------------------------ loaders
def load_visual_tokenizer(args, device=None) -> BSQVAE:
    """The BSQ tokenizer of ``args.vae_type`` (bits d) from ``args.vae_path``: patch 16 and ch_mult (1, 2, 4, 4, 4),
    or patch 8 and (1, 2, 4, 4) when ``args.apply_spatial_patchify`` (the 8B model's)."""
    d = _arg(args, "vae_type")
    _require("vae_type", d, _VAE_TYPES)
    patchify = bool(_arg(args, "apply_spatial_patchify", 0))
    cfg = BSQConfig(
        codebook_dim=d, patch_size=8 if patchify else 16, ch_mult=(1, 2, 4, 4) if patchify else (1, 2, 4, 4, 4)
    )
    return load_bsq_tokenizer(_arg(args, "vae_path"), cfg).to(_device(device))


class InfinityCompat(Infinity):
    """:class:`~nextscale.models.infinity.Infinity` with the reference's sampling entry point and ``rng``."""

    def __init__(self, config: InfinityConfig):
        super().__init__(config)
        self.rng: Optional[torch.Generator] = None  # made on the model's device at first use (as the reference's)

    def autoregressive_infer_cfg(
        self,
        vae=None,
        scale_schedule=None,
        label_B_or_BLT=None,
        B=1,
        negative_label_B_or_BLT=None,
        g_seed=None,
        cfg_list=(),
        tau_list=(),
        top_k=0,
        top_p=0.0,
        cfg_insertion_layer=(-5,),
        vae_type=0,
        ret_img=False,
        trunk_scale=1000,
        gt_leak=0,
        gt_ls_Bl=None,
        **ignored,
    ):
        return autoregressive_infer_cfg(
            self,
            vae,
            scale_schedule,
            label_B_or_BLT,
            B,
            negative_label_B_or_BLT,
            g_seed,
            cfg_list,
            tau_list,
            top_k,
            top_p,
            cfg_insertion_layer,
            vae_type,
            ret_img,
            trunk_scale,
            gt_leak,
            gt_ls_Bl,
            **ignored,
        )


def load_infinity(
    rope2d_each_sa_layer=1,
    rope2d_normalized_by_hw=2,
    use_scale_schedule_embedding=0,
    pn="1M",
    use_bit_label=1,
    add_lvl_embeding_only_first_block=1,
    model_path="",
    scale_schedule=None,
    vae=None,
    device=None,
    model_kwargs=None,
    text_channels=2048,
    apply_spatial_patchify=0,
    use_flex_attn=False,
    bf16=False,
    checkpoint_type="torch",
) -> InfinityCompat:
    """The reference's ``load_infinity``: build the transformer for ``vae`` and ``model_kwargs`` (depth, embed_dim,
    num_heads, mlp_ratio, block_chunks, ...; text_maxlen 512) and load ``model_path`` strictly (a ``.pth`` for
    ``checkpoint_type='torch'``, a sharded directory for ``'torch_shard'``), in eval mode, frozen."""
    _require("rope2d_each_sa_layer", rope2d_each_sa_layer, (1, True))
    _require("rope2d_normalized_by_hw", rope2d_normalized_by_hw, (2,))
    _require("use_scale_schedule_embedding", use_scale_schedule_embedding, (0, False))
    _require("use_bit_label", use_bit_label, (1, True))
    _require("add_lvl_embeding_only_first_block", add_lvl_embeding_only_first_block, (1, True))
    _require("checkpoint_type", checkpoint_type, ("torch", "torch_shard"))
    if not isinstance(vae, BSQVAE):
        raise InputError(f"vae must be the BSQ tokenizer (load_visual_tokenizer), got {type(vae).__name__}")
    kw: Dict[str, Any] = dict(model_kwargs or {})
    for own in ("text_channels", "text_maxlen", "apply_spatial_patchify", "vae_local"):
        if own in kw:  # the reference passes these itself (a duplicate would be a TypeError there)
            raise InputError(f"model_kwargs must not set {own}; it is an argument of load_infinity")
    kw.update(
        text_channels=text_channels,
        text_maxlen=_TEXT_MAXLEN,
        apply_spatial_patchify=apply_spatial_patchify,
        shared_aln=True,
        add_lvl_embeding_only_first_block=1,
        use_bit_label=1,
        rope2d_each_sa_layer=1,
        rope2d_normalized_by_hw=2,
        pad_to_multiplier=128,
        fused_norm=True,
    )
    kw.pop("cond_drop_rate", None)  # training only (the reference's sampler never drops text)
    config = InfinityConfig.from_reference_kwargs(kw, vae_bits=vae.codebook_dim)
    model = load_infinity_transformer(model_path, config, model_cls=InfinityCompat)
    return model.to(_device(device))


def load_transformer(vae, args, device=None) -> InfinityCompat:
    """The reference's ``load_transformer(vae, args)``: sizes from ``args.model_type`` (:data:`MODEL_TYPES`), the
    file from ``args.model_path`` (``args.checkpoint_type`` 'torch' or 'torch_shard')."""
    mt = _arg(args, "model_type", "infinity_2b")
    if mt not in MODEL_TYPES:
        raise InputError(f"model_type {mt!r} is not known; known: {', '.join(MODEL_TYPES)}")
    return load_infinity(
        rope2d_each_sa_layer=_arg(args, "rope2d_each_sa_layer", 1),
        rope2d_normalized_by_hw=_arg(args, "rope2d_normalized_by_hw", 2),
        use_scale_schedule_embedding=_arg(args, "use_scale_schedule_embedding", 0),
        use_bit_label=_arg(args, "use_bit_label", 1),
        add_lvl_embeding_only_first_block=_arg(args, "add_lvl_embeding_only_first_block", 1),
        model_path=_arg(args, "model_path"),
        vae=vae,
        device=device,
        model_kwargs=dict(MODEL_TYPES[mt], mlp_ratio=4, drop_path_rate=0.1),
        text_channels=_arg(args, "text_channels", 2048),
        apply_spatial_patchify=_arg(args, "apply_spatial_patchify", 0),
        checkpoint_type=_arg(args, "checkpoint_type", "torch"),
    )


# ------------------------------------------------------------------------------------------------ sampling
def _first_k(values, K: int, name: str):
    """The reference reads cfg_list[si] / tau_list[si]: lists may be longer than the schedule, numbers are not
    lists at all (gen_one_img repeats them)."""
    if isinstance(values, numbers.Real) and not isinstance(values, bool):
        return [float(values)] * K
    values = list(values)
    if len(values) < K:
        raise InputError(f"{name} needs at least one value per scale ({K}), got {len(values)}")
    return values[:K]


def _gt_constraint(gt_leak: int, gt_ls_Bl):
    if not gt_leak or gt_leak <= 0:
        return None
    if gt_ls_Bl is None or len(gt_ls_Bl) < gt_leak:
        raise InputError(f"gt_leak={gt_leak} needs gt_ls_Bl with at least {gt_leak} scales of bits")

    def leak(si: int, bits_Bhwd: torch.Tensor) -> torch.Tensor:
        if si >= gt_leak:
            return bits_Bhwd
        gt = torch.as_tensor(gt_ls_Bl[si])
        return gt.reshape(bits_Bhwd.shape)  # the reference's (B, 1, h, w, d) bits

    return leak


@torch.no_grad()
def autoregressive_infer_cfg(
    model: Infinity,
    vae=None,
    scale_schedule=None,
    label_B_or_BLT=None,
    B=1,
    negative_label_B_or_BLT=None,
    g_seed=None,
    cfg_list=(),
    tau_list=(),
    top_k=0,
    top_p=0.0,
    cfg_insertion_layer=(-5,),
    vae_type=0,
    ret_img=False,
    trunk_scale=1000,
    gt_leak=0,
    gt_ls_Bl=None,
    **ignored,
) -> Tuple[list, list, Any]:
    """The reference's sampler call on the bitwise path -> ``([], [], img)`` with img (B, H, W, 3) uint8 BGR
    (truncated), or ``([], [], [])`` when ``ret_img`` is false (the reference returns no bits either)."""
    known_ignored = {
        "force_gt_Bhw",
        "cfg_sc",
        "returns_vemb",
        "ratio_Bl1",
        "norm_cfg",
        "cfg_exp_k",
        "gumbel",
        "softmax_merge_topk",
        "inference_mode",
        "save_img_path",
        "sampling_per_bits",
    }
    unknown = sorted(set(ignored) - known_ignored)
    if unknown:
        raise InputError(f"autoregressive_infer_cfg got an unexpected keyword {unknown[0]!r}")
    if not vae_type:
        raise InputError("vae_type=0 (the non-bitwise tokenizer path) is not supported; pass the tokenizer's bits")
    if scale_schedule is None or not len(scale_schedule):
        raise InputError("scale_schedule is required ([(1, h, w), ...])")
    K = len(scale_schedule)
    if trunk_scale < K:
        raise InputError(f"trunk_scale={trunk_scale} below the number of scales ({K}) is not supported")
    text = _features(label_B_or_BLT, "label_B_or_BLT")
    if text.batch_size != B:
        raise InputError(f"B={B} but label_B_or_BLT holds {text.batch_size} prompts")
    negative = None if not negative_label_B_or_BLT else _features(negative_label_B_or_BLT, "negative_label_B_or_BLT")
    generator = None
    if g_seed is not None:  # the reference re-seeds its model-held generator; None = the global generator
        dev = model.pos_start.device
        rng = getattr(model, "rng", None)
        if not isinstance(rng, torch.Generator) or rng.device != dev:
            rng = torch.Generator(device=dev)
            if hasattr(model, "rng"):
                model.rng = rng
        generator = rng.manual_seed(int(g_seed))
    out = generate_t2i(
        model,
        vae,
        text,
        scale_schedule,
        cfg_list=_first_k(cfg_list, K, "cfg_list"),
        tau_list=_first_k(tau_list, K, "tau_list"),
        top_k=top_k,
        top_p=top_p,
        generator=generator,
        negative_text=negative,
        cfg_insertion_layer=cfg_insertion_layer,
        constraint=_gt_constraint(gt_leak, gt_ls_Bl),
        decode=bool(ret_img),
    )
    if not ret_img:
        return [], [], []
    return [], [], out.reference_image()


def gen_one_img(
    infinity_test,
    vae,
    text_tokenizer,
    text_encoder,
    prompt,
    cfg_list=(),
    tau_list=(),
    negative_prompt="",
    scale_schedule=None,
    top_k=900,
    top_p=0.97,
    cfg_sc=3,
    cfg_exp_k=0.0,
    cfg_insertion_layer=-5,
    vae_type=0,
    gumbel=0,
    softmax_merge_topk=-1,
    gt_leak=-1,
    gt_ls_Bl=None,
    g_seed=None,
    sampling_per_bits=1,
    enable_positive_prompt=0,
):
    """The reference's ``gen_one_img``: one prompt -> (H, W, 3) uint8 BGR image."""
    text = encode_prompt(text_tokenizer, text_encoder, prompt, enable_positive_prompt)
    negative = encode_prompt(text_tokenizer, text_encoder, negative_prompt) if negative_prompt else None
    _, _, img = autoregressive_infer_cfg(
        infinity_test,
        vae,
        scale_schedule,
        text,
        1,
        negative,
        g_seed,
        cfg_list,
        tau_list,
        top_k,
        top_p,
        cfg_insertion_layer,
        vae_type,
        True,
        1000,
        gt_leak,
        gt_ls_Bl,
    )
    return img[0]
