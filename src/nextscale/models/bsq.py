"""Infinity's bitwise tokenizer (BSQ-VAE): a conv encoder/decoder around a multi-scale bitwise quantiser.

Image (B, 3, H, W) in [-1, 1]  --encoder-->  raw features (B, d, H/p, W/p)
raw  --multi-scale bitwise quantiser (schedule)-->  bits per scale (B, h_k, w_k, d) in {0, 1}  (+ summed codes)
summed codes (B, d, H/p, W/p)  --decoder-->  image in [-1, 1]

Glossary (shape suffixes used below):
  B     batch
  d     bits per token = ``codebook_dim`` = ``z_channels`` (no projections: the encoder emits d channels)
  p     patch size (16 for the 2B tokenizers, 8 for the 8B one): the latent grid is (H/p, W/p)
  H, W  (in tensor suffixes ``_BdHW``) the full latent grid; as image suffix (``_B3HW``) the pixel grid
  h, w  one scale's grid (h_k, w_k); ``l`` = h*w tokens of one scale, ``L`` = sum of l over the schedule
  schedule_hw  list of (h_k, w_k), coarse to fine, ending at the latent grid (no temporal entry: the
        reference's (1, h, w) triples with t dropped)
  d'    transformer bits per token: d, or 4d when patchifying (``pixel_unshuffle(2)`` of the tokenizer grid)
  bits  int64 0/1, channels last (B, h, w, d); codes = bits * 2s - s, s = d^-0.5, L2-normalised over d

Multi-scale quantisation (reference ``MultiScaleBSQ``): the residual is area-resized to each scale, each
position is L2-normalised and snapped to sign * d^-0.5 (straight-through form, kept as computed), the result
is trilinearly resized back to the full grid and subtracted from the residual. All resizes happen as the
reference does them, on 5-D tensors with a temporal size of 1 (:func:`resize`).

Module/buffer names follow the reference (``encoder.conv_in.conv.weight``, ``...norm1.norm.weight``, the
quantiser's ``mask`` reachable as both ``quantizer.lfq.mask`` and ``quantize.lfq.mask``) so the released
``infinity_vae_*.pth`` state dicts load with ``strict=True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale.errors import FieldError, FieldName, InputError

__all__ = [
    "BSQConfig",
    "BSQ_PRESETS",
    "BSQVAE",
    "BSQOutput",
    "resize",
    "bits_to_codes",
    "bits_to_summed",
    "quantize_bits",
    "grid_to_tokens",
    "tokens_to_grid",
    "next_scale_input",
    "BSCOutput",
    "bitwise_self_correction",
    "scale_loss_weights",
]

ScheduleHW = Sequence[Tuple[int, int]]


# --------------------------------------------------------------------------------------------------------------
# Config and presets


@dataclass(frozen=True)
class BSQConfig:
    """Sizes of a BSQ-VAE. Everything else is fixed by the reference's ``vae_model`` (2-D convs, no attention
    blocks, no VAE head, no projections around the quantiser). GroupNorm (eps 1e-6, affine) takes 32 groups where
    the channels allow it, else 24: so every base_ch * ch_mult[i] must be a multiple of 32 or 24."""

    codebook_dim: int  # d: bits per token; the encoder's output channels (z_channels == codebook_dim)
    base_ch: int = 128  # channels of the first level; level i has base_ch * ch_mult[i]
    ch_mult: Tuple[int, ...] = (1, 2, 4, 4, 4)  # per resolution level; the same list for encoder and decoder
    num_res_blocks: int = 2  # ResNet blocks per encoder level (the decoder has one more per level)
    patch_size: int = 16  # image pixels per latent position along each side (2^(number of down-samplings))
    image_channels: int = 3  # RGB

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        for name in ("codebook_dim", "base_ch", "num_res_blocks", "patch_size", "image_channels"):
            if int(getattr(self, name)) < 1:
                raise FieldError(FieldName(name), f" must be >= 1 (got {getattr(self, name)})")
        if self.codebook_dim > 64:  # the bit mask is int64
            raise FieldError(FieldName("codebook_dim"), f" must be <= 64 (got {self.codebook_dim})")
        if self.patch_size & (self.patch_size - 1):
            raise FieldError(FieldName("patch_size"), f" must be a power of 2 (got {self.patch_size})")
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise FieldError(FieldName("ch_mult"), f" must be a non-empty list of positive ints (got {self.ch_mult})")
        if len(self.ch_mult) <= self.n_down:  # level i down-samples when i < log2(patch)
            raise FieldError(
                FieldName("ch_mult"),
                f" needs more than log2(patch_size) = {self.n_down} levels (got {len(self.ch_mult)})",
            )
        for ch in {self.base_ch * m for m in self.ch_mult}:
            if ch % 32 and ch % 24:  # the reference's GroupNorm rule (32 groups, else 24) has no other case
                raise FieldError(
                    FieldName("base_ch"), f" x ch_mult gives {ch} channels: not divisible by 32 or 24 (GroupNorm)"
                )

    @property
    def d(self) -> int:
        return self.codebook_dim

    @property
    def n_down(self) -> int:
        """Number of 2x down-samplings (= up-samplings): log2(patch_size)."""
        return self.patch_size.bit_length() - 1

    @classmethod
    def from_reference_args(cls, args: Mapping[str, Any]) -> "BSQConfig":
        """From the reference's tokenizer argument namespace (a dict, e.g. a fixture's ``vae.<V>.args``).

        Reads the fields that shape the model and refuses values this re-implementation does not cover."""
        args = dict(vars(args)) if not isinstance(args, Mapping) else dict(args)
        need = ("codebook_dim", "base_ch", "encoder_ch_mult", "decoder_ch_mult", "num_res_blocks", "patch_size")
        for k in need:
            if k not in args:
                raise FieldError(FieldName(k), " is missing from the tokenizer arguments")
        fixed = {
            "quantizer_type": "MultiScaleBSQ",
            "cnn_type": "2d",
            "cnn_attention": "no",
            "norm_type": "group",
            "use_vae": False,
            "ln_before_quant": False,
            "new_quant": True,
            "codebook_l2_norm": True,
            "use_out_phi": False,  # would add a parameter
            "use_pxsf": False,  # pixel-shuffle up-sampling instead of nearest + conv
            "cnn_norm_axis": "spatial",
            "drop_when_test": False,  # would skip scales at inference
        }
        for k, want in fixed.items():
            if k in args and args[k] != want:
                raise FieldError(FieldName(k), f" = {args[k]!r} is not supported (only {want!r})")
        if list(args["encoder_ch_mult"]) != list(args["decoder_ch_mult"]):
            raise FieldError(FieldName("decoder_ch_mult"), " must equal encoder_ch_mult")
        if "codebook_size" in args and int(args["codebook_size"]) != 2 ** int(args["codebook_dim"]):
            raise FieldError(FieldName("codebook_size"), " must be 2 ** codebook_dim")
        return cls(
            codebook_dim=int(args["codebook_dim"]),
            base_ch=int(args["base_ch"]),
            ch_mult=tuple(args["encoder_ch_mult"]),
            num_res_blocks=int(args["num_res_blocks"]),
            patch_size=int(args["patch_size"]),
            image_channels=int(args.get("image_channels", 3)),
        )


#: The released tokenizers (``vae_model(ckpt, 'dynamic', d, 2**d, patch_size, ch_mult...)`` of the reference).
BSQ_PRESETS: Dict[str, BSQConfig] = {
    "infinity_vae_d16": BSQConfig(codebook_dim=16),
    "infinity_vae_d24": BSQConfig(codebook_dim=24),
    "infinity_vae_d32": BSQConfig(codebook_dim=32),
    "infinity_vae_d32reg": BSQConfig(codebook_dim=32),  # paired with the 2B transformer
    "infinity_vae_d64": BSQConfig(codebook_dim=64),
    # paired with both 8B transformers (which patchify: d' = 4 * 14 = 56)
    "infinity_vae_d56_f8_14_patchify": BSQConfig(codebook_dim=14, patch_size=8, ch_mult=(1, 2, 4, 4)),
}


# --------------------------------------------------------------------------------------------------------------
# Resizing and bit <-> code maps (parameter-free)


def resize(x_BdHW: torch.Tensor, size_hw: Tuple[int, int], mode: str) -> torch.Tensor:
    """Resize a 4-D map to ``size_hw`` exactly as the reference does: on a 5-D view with temporal size 1.

    ``mode`` is ``"trilinear"`` (align_corners=False; not bit-identical to 4-D bilinear when up-sampling) or
    ``"area"``. A same-size resize returns ``x_BdHW`` itself (the reference skips it). The memory layout of the
    input carries through (channels-last in, channels-last out), as in the reference."""
    if mode not in ("trilinear", "area"):
        raise InputError(f"mode must be 'trilinear' or 'area' (got {mode!r})")
    h, w = int(size_hw[0]), int(size_hw[1])
    if tuple(x_BdHW.shape[-2:]) == (h, w):
        return x_BdHW
    x_Bd1HW = x_BdHW.unsqueeze(2)
    if mode == "trilinear":
        out = F.interpolate(x_Bd1HW, size=(1, h, w), mode="trilinear", align_corners=False)
    else:
        out = F.interpolate(x_Bd1HW, size=(1, h, w), mode="area")
    return out.squeeze(2)


def quantize_bits(z_BdHW: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One scale of the bitwise quantiser: (q_BdHW, bits_BHWd).

    Each position is L2-normalised over d, then snapped to sign * d^-0.5 in the reference's straight-through
    form ``z + (zhat - z)``, kept as computed in float32 (for some d about 1% of the entries end 1 ulp off
    +-d^-0.5; the running sums and next-scale inputs see exactly these values). sign(0) counts as -1.
    q comes back as a channels-last view, like the reference's: CPU resizes round differently by layout."""
    d = z_BdHW.shape[1]
    # channels last and contiguous, as the reference normalises: the reduction order sets the last ulp
    z_BHWd = F.normalize(z_BdHW.permute(0, 2, 3, 1).contiguous(), dim=-1, eps=1e-12)
    zhat = torch.where(z_BHWd > 0, 1.0, -1.0).to(z_BHWd.dtype) * (1.0 / math.sqrt(d))
    q_BHWd = z_BHWd + (zhat - z_BHWd)  # kept as computed (see docstring), not replaced by zhat
    return q_BHWd.permute(0, 3, 1, 2), (q_BHWd > 0).long()


def bits_to_codes(bits_Bhwd: torch.Tensor) -> torch.Tensor:
    """Bits (B, h, w, d) in {0, 1} -> codes (B, d, h, w): c = bits * 2s - s with s = d^-0.5, L2-normalised over d.

    (The reference's ``indices_to_codes(bits, 'bit_label')``; the normalisation is a no-op up to rounding.)"""
    d = bits_Bhwd.shape[-1]
    s = 1.0 / math.sqrt(d)
    codes_Bhwd = bits_Bhwd.float() * (2 * s) - s
    codes_Bhwd = F.normalize(codes_Bhwd, dim=-1, eps=1e-12)
    # a channels-last view, as the reference's: the memory layout picks the resize/conv kernels (last-ulp effects)
    return codes_Bhwd.permute(0, 3, 1, 2)


def bits_to_summed(bits: Sequence[torch.Tensor], schedule_hw: ScheduleHW) -> torch.Tensor:
    """Sum over scales of the codes of ``bits`` [(B, h_k, w_k, d)] trilinearly resized to the last scale:
    (B, d, h_K, w_K), the decoder's input in the reference's ``decode_from_indices``."""
    sched = [(int(h), int(w)) for h, w in schedule_hw]
    if len(bits) != len(sched):
        raise InputError(f"bits has {len(bits)} scales but schedule_hw has {len(sched)}")
    summed = None
    for bits_k, hw in zip(bits, sched):
        if tuple(bits_k.shape[1:3]) != hw:
            raise InputError(f"bits of shape {tuple(bits_k.shape)} do not fit the scale {hw}")
        c = resize(bits_to_codes(bits_k), sched[-1], "trilinear")
        summed = c if summed is None else summed + c
    return summed


def _check_schedule(schedule_hw: ScheduleHW, hw: Tuple[int, int], what: str = "schedule_hw") -> List[Tuple[int, int]]:
    sched = [(int(h), int(w)) for h, w in schedule_hw]
    if not sched:
        raise InputError(f"{what} must hold at least one (h, w) scale")
    if sched[-1] != tuple(hw):
        raise InputError(f"{what} must end at the latent grid {tuple(hw)} (got {sched[-1]})")
    return sched


# --------------------------------------------------------------------------------------------------------------
# Conv encoder / decoder (the reference's thin wrappers ``.conv`` / ``.norm`` kept for the parameter names)


class Conv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=padding)

    def forward(self, x):
        return self.conv(x)


class Norm(nn.Module):
    """GroupNorm with the reference's group rule: 32 groups when possible, else 24 (eps 1e-6, affine)."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups=32 if ch % 32 == 0 else 24, num_channels=ch, eps=1e-6, affine=True)

    def forward(self, x):
        return self.norm(x)


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)  # written out as the reference does (F.silu may differ in the last ulp)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = Norm(cin)
        self.conv1 = Conv(cin, cout)
        self.norm2 = Norm(cout)
        self.conv2 = Conv(cout, cout)
        if cin != cout:  # only where channels change, so no key otherwise
            self.nin_shortcut = Conv(cin, cout, k=1, padding=0)

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = Conv(ch, ch, k=3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # zero-pad right and bottom only (VQGAN)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = Conv(ch, ch)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch)
        self.block_2 = ResnetBlock(ch, ch)

    def forward(self, x):
        return self.block_2(self.block_1(x))


class Encoder(nn.Module):
    def __init__(self, cfg: BSQConfig):
        super().__init__()
        ch, mult = cfg.base_ch, cfg.ch_mult
        self.conv_in = Conv(cfg.image_channels, ch)
        in_mult = (1,) + mult
        self.down = nn.ModuleList()
        for i in range(len(mult)):
            level = nn.Module()
            cin, cout = ch * in_mult[i], ch * mult[i]
            level.block = nn.ModuleList([ResnetBlock(cin if j == 0 else cout, cout) for j in range(cfg.num_res_blocks)])
            if i < cfg.n_down:
                level.downsample = Downsample(cout)
            self.down.append(level)
        block_in = ch * mult[-1]
        self.mid = _Mid(block_in)
        self.norm_out = Norm(block_in)
        self.conv_out = Conv(block_in, cfg.codebook_dim)

    def forward(self, img_B3HW):
        h = self.conv_in(img_B3HW)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: BSQConfig):
        super().__init__()
        ch, mult = cfg.base_ch, cfg.ch_mult
        block_in = ch * mult[-1]
        self.conv_in = Conv(cfg.codebook_dim, block_in)
        self.mid = _Mid(block_in)
        levels = []
        for i in reversed(range(len(mult))):  # built coarse to fine; stored so that up[0] is full resolution
            level = nn.Module()
            cout = ch * mult[i]
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, cout))
                block_in = cout
            level.block = nn.ModuleList(blocks)
            if 1 <= i <= cfg.n_down:
                level.upsample = Upsample(block_in)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = Norm(block_in)
        self.conv_out = Conv(block_in, cfg.image_channels)

    def forward(self, z_BdHW):
        h = self.mid(self.conv_in(z_BdHW))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


# --------------------------------------------------------------------------------------------------------------
# Multi-scale bitwise quantiser


@dataclass
class BSQOutput:
    """Everything the multi-scale quantiser computes (the reference's intermediates, for parity and analysis)."""

    summed_BdHW: torch.Tensor  # sum over scales of the trilinearly up-sampled q_k (what the decoder gets)
    bits: List[torch.Tensor]  # per scale (B, h_k, w_k, d) int64
    lfq_in: List[torch.Tensor]  # per scale the area-resized residual given to the quantiser (B, d, h_k, w_k)
    q: List[torch.Tensor]  # per scale its quantised value (B, d, h_k, w_k)
    var_inputs: List[torch.Tensor]  # area resize of the running sum to scale k+1, k < K-1 (unused by Infinity)


class _BitMask(nn.Module):
    """Holds the reference's ``lfq.mask`` buffer: 2^(d-1), ..., 2, 1 as int64 (bits -> integer index)."""

    def __init__(self, d: int):
        super().__init__()
        # a left shift, because 2^63 does not fit in int64: for d = 64 the first entry wraps to -2^63 as in the
        # reference's released state dicts
        mask = torch.ones(d, dtype=torch.int64) << torch.arange(d - 1, -1, -1, dtype=torch.int64)
        self.register_buffer("mask", mask)


class MultiScaleBSQ(nn.Module):
    """Parameter-free; ``lfq.mask`` exists only for the released state-dict layout."""

    def __init__(self, d: int):
        super().__init__()
        self.d = d
        self.lfq = _BitMask(d)

    def forward(self, raw_BdHW: torch.Tensor, schedule_hw: ScheduleHW) -> BSQOutput:
        H, W = raw_BdHW.shape[-2:]
        sched = _check_schedule(schedule_hw, (H, W))
        residual = raw_BdHW
        summed = torch.zeros_like(raw_BdHW)
        out = BSQOutput(summed, [], [], [], [])
        for k, hw in enumerate(sched):
            r_k = resize(residual, hw, "area")
            q_k, bits_k = quantize_bits(r_k)
            q_full = resize(q_k, (H, W), "trilinear")
            residual = residual - q_full
            summed = summed + q_full
            out.lfq_in.append(r_k)
            out.q.append(q_k)
            out.bits.append(bits_k)
            if k < len(sched) - 1:
                out.var_inputs.append(resize(summed, sched[k + 1], "area"))
        out.summed_BdHW = summed.contiguous()  # the reference hands the decoder a contiguous tensor
        return out


# --------------------------------------------------------------------------------------------------------------
# The tokenizer


class BSQVAE(nn.Module):
    """Encoder + multi-scale bitwise quantiser + decoder. Images in [-1, 1]; see the module glossary."""

    def __init__(self, config: BSQConfig):
        super().__init__()
        self.config = config
        self.codebook_dim = self.d = config.codebook_dim
        self.patch_size = config.patch_size
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantizer = MultiScaleBSQ(config.codebook_dim)
        # the reference reaches the quantiser under two attribute names, so its buffer is in the state dict
        # twice; ``add_module`` would refuse the name because of the ``quantize`` method, hence _modules
        self._modules["quantize"] = self.quantizer

    @classmethod
    def from_preset(cls, name: str) -> "BSQVAE":
        if name not in BSQ_PRESETS:
            raise InputError(f"unknown tokenizer preset {name!r}; known: {', '.join(BSQ_PRESETS)}")
        return cls(BSQ_PRESETS[name])

    def encode_raw(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Encoder output = the reference's ``encode_for_raw_features``: (B, d, H/p, W/p)."""
        return self.encoder(img_B3HW)

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """:meth:`encode_raw` (the call a data-parallel wrapper makes; training quantises and decodes after it)."""
        return self.encode_raw(img_B3HW)

    def quantize(self, raw_BdHW: torch.Tensor, schedule_hw: ScheduleHW) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """(summed codes (B, d, H, W), bits per scale [(B, h_k, w_k, d) int64])."""
        out = self.quantizer(raw_BdHW, schedule_hw)
        return out.summed_BdHW, out.bits

    def encode(self, img_B3HW: torch.Tensor, schedule_hw: ScheduleHW) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        return self.quantize(self.encode_raw(img_B3HW), schedule_hw)

    def decode(self, summed_BdHW: torch.Tensor) -> torch.Tensor:
        """Codes on the latent grid -> image (B, 3, H*p, W*p) clamped to [-1, 1]."""
        return self.decoder(summed_BdHW).clamp(-1, 1)

    def bits_to_summed(self, bits: Sequence[torch.Tensor], schedule_hw: ScheduleHW) -> torch.Tensor:
        return bits_to_summed(bits, schedule_hw)

    def decode_bits(self, bits: Sequence[torch.Tensor], schedule_hw: ScheduleHW) -> torch.Tensor:
        """The reference's ``decode_from_indices(bits, schedule, 'bit_label')``: images in [-1, 1]."""
        return self.decode(self.bits_to_summed(bits, schedule_hw))


# --------------------------------------------------------------------------------------------------------------
# Tokenizer grid <-> transformer tokens, and the training input builder (bitwise self-correction)


def grid_to_tokens(x_BdHW: torch.Tensor, patchify: bool) -> torch.Tensor:
    """A tokenizer-space map (B, d, h, w) -> transformer tokens (B, l, d'), row-major (h outer, w inner).

    With ``patchify`` (the 8B model) 2x2 neighbourhoods become one token: ``pixel_unshuffle(2)`` gives
    d' = 4d channels ordered (bit, dy, dx) and l = h*w/4."""
    if patchify:
        x_BdHW = F.pixel_unshuffle(x_BdHW, 2)
    return x_BdHW.flatten(2).transpose(1, 2)


def tokens_to_grid(x_Bld: torch.Tensor, hw: Tuple[int, int], patchify: bool) -> torch.Tensor:
    """Inverse of :func:`grid_to_tokens`: (B, l, d') -> (B, d, h, w) for the tokenizer-space scale ``hw``."""
    h, w = int(hw[0]), int(hw[1])
    if patchify:
        x = x_Bld.transpose(1, 2).reshape(x_Bld.shape[0], x_Bld.shape[2], h // 2, w // 2)
        return F.pixel_shuffle(x, 2)
    return x_Bld.transpose(1, 2).reshape(x_Bld.shape[0], x_Bld.shape[2], h, w)


def next_scale_input(summed_BdHW: torch.Tensor, next_hw: Tuple[int, int], patchify: bool) -> torch.Tensor:
    """The transformer's input for the next scale: the running sum of codes (full latent grid) trilinearly
    down-sampled to ``next_hw`` (trilinear, not area: the reference's choice), as tokens (B, l, d')."""
    return grid_to_tokens(resize(summed_BdHW, next_hw, "trilinear"), patchify)


@dataclass
class BSCOutput:
    x_BLC_wo_prefix: torch.Tensor  # (B, L - 1, d'): next-scale inputs of scales 1..K-1 (scale 0 is the text token)
    gt_bits: List[torch.Tensor]  # per scale (B, l_k, d') int64: targets, computed against the flipped running sum
    flipped_bits: List[Optional[torch.Tensor]]  # per scale (B, h, w, d) bits after the flips; None if not noisy
    strengths: List[float]  # flip probability drawn for each noisy scale, in order


def bitwise_self_correction(
    raw_BdHW: torch.Tensor,
    schedule_hw: ScheduleHW,
    *,
    noise_apply_layers: int = -1,
    noise_apply_strength: float = -1.0,
    noise_apply_requant: bool = True,
    patchify: bool = False,
    np_rng: Optional[np.random.RandomState] = None,
    generator: Optional[torch.Generator] = None,
) -> BSCOutput:
    """Infinity's training input builder (the reference's ``BitwiseSelfCorrection.flip_requant``).

    Quantises ``raw_BdHW`` (the encoder output) scale by scale like :class:`MultiScaleBSQ`, but on the first
    ``noise_apply_layers`` scales flips each bit with a probability drawn per scale as
    ``np_rng.randint(0, 100 * noise_apply_strength + 1) * 0.01``; with ``noise_apply_requant`` the flipped bits
    replace the scale's codes, so later scales' targets correct the errors (without it the flips are drawn
    but change nothing). Randomness, in the reference's order: one numpy draw, then B*h*w*d float32
    ``torch.rand`` draws from ``generator`` per noisy scale. ``RandomState(s)`` reproduces ``numpy.random.seed(s)``
    and ``torch.Generator().manual_seed(s)`` reproduces ``torch.manual_seed(s)`` on CPU.

    ``schedule_hw`` is the tokenizer-space schedule (ending at the latent grid); ``patchify`` maps tokens with
    ``pixel_unshuffle(2)`` (d' = 4d)."""
    B = raw_BdHW.shape[0]
    sched = _check_schedule(schedule_hw, tuple(raw_BdHW.shape[-2:]))
    if patchify and any(h % 2 or w % 2 for h, w in sched):
        raise InputError(f"patchify needs even scale sizes (schedule_hw = {sched})")
    if noise_apply_layers > 0 and (np_rng is None or generator is None):
        raise InputError("np_rng and generator are required when noise_apply_layers > 0")
    last = sched[-1]
    cum = torch.zeros_like(raw_BdHW)
    xs, gts, flips, strengths = [], [], [], []
    for k, hw in enumerate(sched):
        residual = raw_BdHW - cum
        if k != len(sched) - 1:
            residual = resize(residual, hw, "area")
        q_BdHW, bits_BHWd = quantize_bits(residual)
        gts.append(grid_to_tokens(bits_BHWd.permute(0, 3, 1, 2), patchify))
        flipped = None
        if k < noise_apply_layers:
            p = np_rng.randint(0, 100 * noise_apply_strength + 1) * 0.01  # same float expression as the reference
            strengths.append(p)
            mask = torch.rand(bits_BHWd.shape, generator=generator, device=bits_BHWd.device) < p
            flipped = torch.where(mask, 1 - bits_BHWd, bits_BHWd)
            if noise_apply_requant:
                q_BdHW = bits_to_codes(flipped)
        flips.append(flipped)
        cum = cum + resize(q_BdHW, last, "trilinear")
        if k < len(sched) - 1:
            xs.append(next_scale_input(cum, sched[k + 1], patchify))
    d_tok = raw_BdHW.shape[1] * (4 if patchify else 1)
    x = torch.cat(xs, 1) if xs else raw_BdHW.new_zeros(B, 0, d_tok)
    return BSCOutput(x, gts, flips, strengths)


def scale_loss_weights(scale_schedule: Sequence[Sequence[int]], mode: str = "uniform") -> torch.Tensor:
    """Per-token weights (L,) of the teacher-forced loss, summing to 1: ``loss = (token_loss_BL * w_L).sum(-1).mean()``.

    ``scale_schedule`` is the transformer schedule ((h, w) or (t, h, w) per scale; a scale has prod() tokens).
    * ``"uniform"``: 1/L for every token (the reference trainer's default).
    * ``"sqrt_area"``: what the reference's ``reweight_loss_by_scale=1`` intends (its trainer crashes calling
      ``.prod()`` on a tuple; its validation script computes it): every token of scale k weighs
      sqrt(l_K) / sqrt(l_k), then all are normalised to sum 1, so coarse scales (few tokens) count more.
      Computed in float64, returned as float32."""
    areas = [int(np.prod([int(v) for v in s])) for s in scale_schedule]
    if not areas or min(areas) < 1:
        raise InputError(f"scale_schedule must be a non-empty list of positive sizes (got {list(scale_schedule)})")
    if mode == "uniform":
        w = torch.full((sum(areas),), 1.0 / sum(areas), dtype=torch.float64)
    elif mode == "sqrt_area":
        last = math.sqrt(areas[-1])
        w = torch.cat([torch.full((a,), last / math.sqrt(a), dtype=torch.float64) for a in areas])
        w = w / w.sum()
    else:
        raise InputError(f"mode must be 'uniform' or 'sqrt_area' (got {mode!r})")
    return w.float()
