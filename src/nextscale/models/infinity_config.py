"""Infinity's configuration (sizes, presets, the reference constructor's keyword arguments) and its text input.

:class:`TextFeatures` is the batch of text features the transformer reads: rows concatenated without padding,
as the reference's ``(kv_compact, lens, cu_seqlens_k, max_seqlen_k)`` tuple. The model lives in
``nextscale.models.infinity`` (which re-exports everything here).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

from nextscale.errors import FieldError, FieldName, InputError

__all__ = [
    "TextFeatures",
    "TextCond",
    "InfinityConfig",
    "INFINITY_PRESETS",
    "schedule_hw",
    "initial_cfg_uncond",
    "resize_cfg_uncond",
]


@dataclass
class TextFeatures:
    """A batch of text features without padding: row b is ``kv_compact[cu_seqlens[b]:cu_seqlens[b+1]]``."""

    kv_compact: torch.Tensor  # (N, Ct5) float
    lens: List[int]  # tokens per row, EOS included
    cu_seqlens: torch.Tensor  # int32 (B+1,) = [0, cumsum(lens)]
    max_seqlen: int  # max(lens)

    def __post_init__(self):
        self.lens = [int(n) for n in self.lens]
        if self.kv_compact.ndim != 2:
            raise InputError(f"TextFeatures.kv_compact must be (N, Ct5), got shape {tuple(self.kv_compact.shape)}")
        if not self.lens or min(self.lens) < 1:
            raise InputError(f"TextFeatures.lens must be one positive length per row, got {self.lens}")
        if sum(self.lens) != self.kv_compact.shape[0]:
            raise InputError(
                f"TextFeatures.lens sum to {sum(self.lens)} but kv_compact has {self.kv_compact.shape[0]} rows"
            )
        cu = [0]
        for n in self.lens:
            cu.append(cu[-1] + n)
        if self.cu_seqlens.dtype != torch.int32 or self.cu_seqlens.tolist() != cu:
            raise InputError(
                f"TextFeatures.cu_seqlens must be int32 {cu}, got {self.cu_seqlens.tolist()} ({self.cu_seqlens.dtype})"
            )
        if int(self.max_seqlen) != max(self.lens):
            raise InputError(f"TextFeatures.max_seqlen must be max(lens) = {max(self.lens)}, got {self.max_seqlen}")

    @property
    def batch_size(self) -> int:
        return len(self.lens)

    @classmethod
    def from_lens(cls, kv_compact: torch.Tensor, lens: Sequence[int]) -> "TextFeatures":
        cu = torch.tensor([0] + [int(n) for n in lens], dtype=torch.int64).cumsum(0).to(torch.int32)
        return cls(kv_compact, list(lens), cu.to(kv_compact.device), max(int(n) for n in lens) if lens else 0)

    @classmethod
    def from_padded(cls, features_BTC: torch.Tensor, mask_BT: torch.Tensor) -> "TextFeatures":
        """From a right-padded batch and its attention mask (1 = token, a prefix of each row)."""
        if features_BTC.ndim != 3 or mask_BT.shape != features_BTC.shape[:2]:
            raise InputError(
                f"mask_BT {tuple(mask_BT.shape)} must be the first two dims of features_BTC {tuple(features_BTC.shape)}"
            )
        lens = [int(n) for n in mask_BT.bool().sum(1)]
        if any(not bool(m[:n].all()) for m, n in zip(mask_BT.bool(), lens)):
            raise InputError("mask_BT must mark a prefix of each row (right padding)")
        return cls.from_lens(torch.cat([f[:n] for f, n in zip(features_BTC, lens)]), lens)

    @classmethod
    def from_tuple(cls, t) -> "TextFeatures":
        """From the reference's ``(kv_compact, lens, cu_seqlens_k, max_seqlen_k)``."""
        return cls(*t)

    def as_tuple(self):
        return self.kv_compact, self.lens, self.cu_seqlens, self.max_seqlen

    def cat(self, other: "TextFeatures") -> "TextFeatures":
        """Rows of ``self`` then rows of ``other`` (guidance doubles a batch this way)."""
        return TextFeatures.from_lens(torch.cat((self.kv_compact, other.kv_compact)), self.lens + other.lens)


@dataclass
class TextCond:
    """Everything the blocks need from the text, computed once per batch (:meth:`Infinity.prepare_text`)."""

    text: TextFeatures  # the features given (lens define each row's tokens)
    normed: torch.Tensor  # (N, Ct5) text_norm output
    cond_BD: torch.Tensor  # (B, C) pooled text: first token and head modulation
    ca_kv: torch.Tensor  # (N, C) cross-attention text features
    gss: torch.Tensor  # (B, 1, 6, C) shared AdaLN modulation (gammas, scales, shifts)


# reference kwargs that must keep the released value, name: (required, the reference's default); other values
# change the math or the layout and are not implemented here
_REF_FIXED = {
    "shared_aln": (True, False),
    "rope2d_each_sa_layer": (1, 0),
    "rope2d_normalized_by_hw": (2, 0),
    "use_bit_label": (1, 1),
    "add_lvl_embeding_only_first_block": (1, 1),
    "cos_attn": (True, True),
    "rms_norm": (False, False),
    "nm0": (False, False),
    "swiglu": (False, False),
    "head_depth": (1, 1),
    "head_aln": (True, True),
    "cross_attn_layer_scale": (-1, -1),
    "tau": (1, 1),
    "drop_rate": (0, 0),
    "rand_uncond": (False, False),
    "video_frames": (1, 1),
}
# reference kwargs about kernels, compilation, sampling defaults or training bookkeeping: no effect on this math
_REF_IGNORED = set(
    """checkpointing customized_flash_attn use_flex_attn fused_norm fused_mlp inference_mode pn batch_size
    train_h_div_w_list raw_scale_schedule top_p top_k selecting_idx always_training_scales cls vae_local""".split()
)


@dataclass(frozen=True)
class InfinityConfig:
    """Sizes and flags of the released Infinity family (the reference's other flags are fixed, see
    :meth:`from_reference_kwargs`)."""

    depth: int = 32  # blocks
    embed_dim: int = 2048  # width C
    num_heads: int = 16  # head dim C / H must be a multiple of 4 (2-D RoPE rotates pairs on two axes)
    vae_bits: int = 32  # tokenizer bits per code d
    apply_spatial_patchify: bool = False  # 2x2 tokenizer codes per transformer token: d' = 4d (8B)
    text_channels: int = 2048  # Ct5 (flan-t5-xl d_model)
    text_maxlen: int = 512  # rows of cfg_uncond = the text encoder's max length
    block_chunks: int = 8  # blocks are stored as block_chunks.{c}.module.{j}: names only, math is sequential
    mlp_ratio: float = 4.0  # FFN hidden = round(C * ratio / 256) * 256 (round half to even: C 160 -> 512)
    norm_eps: float = 1e-6  # every LayerNorm / the text RMSNorm
    cond_drop_rate: float = 0.1  # text -> cfg_uncond probability per row in teacher forcing (needs an rng)
    drop_path_rate: float = 0.1  # stochastic depth of the last block (linear from 0 at block 0); training only
    pad_to_multiplier: int = 128  # teacher forcing pads L like the reference (changes outputs by float noise only)
    num_levels: int = 15  # rows of lvl_embed (max scales)
    rope_base: float = 10000.0
    bf16_cross_attention: bool = True  # the reference's bf16 round trip of q, k/v and output (flash-attn)

    def __post_init__(self):
        for name in "depth embed_dim num_heads vae_bits text_channels text_maxlen block_chunks num_levels".split():
            if int(getattr(self, name)) < 1:
                raise FieldError(FieldName(name), f" must be >= 1, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads or (self.embed_dim // self.num_heads) % 4:
            raise FieldError(FieldName("num_heads"), f" {self.num_heads} must give C / heads a multiple of 4")
        if self.depth % self.block_chunks:
            raise FieldError(
                FieldName("depth"), f" {self.depth} must be a multiple of block_chunks {self.block_chunks}"
            )
        if self.text_channels % self.text_pool_head_dim or self.embed_dim % self.text_pool_heads:
            raise FieldError(
                FieldName("text_channels"),
                f" {self.text_channels}: the text pool needs a multiple of "
                f"{self.text_pool_head_dim} whose quotient divides embed_dim {self.embed_dim}",
            )
        if self.ffn_hidden < 1:
            raise FieldError(FieldName("mlp_ratio"), f" {self.mlp_ratio} gives no FFN width for C={self.embed_dim}")
        for name in ("cond_drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise FieldError(FieldName(name), f" must be in [0, 1), got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def token_bits(self) -> int:  # d'
        return self.vae_bits * (4 if self.apply_spatial_patchify else 1)

    @property
    def ffn_hidden(self) -> int:
        return round(self.embed_dim * self.mlp_ratio / 256) * 256

    @property
    def text_pool_head_dim(self) -> int:  # head width over the text channels; the pool's heads = Ct5 / this
        return 64 if self.embed_dim > 4096 else 128

    @property
    def text_pool_heads(self) -> int:
        return self.text_channels // self.text_pool_head_dim

    @classmethod
    def infinity_2b(cls) -> "InfinityConfig":
        """The 2B release (``infinity_2b_reg.pth``, tokenizer d32, patch 16)."""
        return cls(depth=32, embed_dim=2048, num_heads=16, vae_bits=32, apply_spatial_patchify=False)

    @classmethod
    def infinity_8b(cls) -> "InfinityConfig":
        """The 8B release (1024 px and 512 px checkpoints share it; tokenizer d14, patch 8, patchified)."""
        return cls(depth=40, embed_dim=3584, num_heads=28, vae_bits=14, apply_spatial_patchify=True)

    @classmethod
    def from_reference_kwargs(cls, kwargs: dict, vae_bits: int) -> "InfinityConfig":
        """From the reference constructor's keyword arguments (missing ones take the reference defaults) and the
        tokenizer's bits d. ``fused_norm`` is ignored: the sampling math here is the fused (released) one."""
        kw = dict(kwargs)
        for name, (need, default) in _REF_FIXED.items():
            if kw.pop(name, default) != need:
                raise FieldError(
                    FieldName(name), f" must be {need!r} (the released Infinity); other values are not implemented"
                )
        names = {f.name for f in fields(cls)} - {"vae_bits", "num_levels", "rope_base", "bf16_cross_attention"}
        unknown = sorted(k for k in kw if k not in names and k not in _REF_IGNORED)
        if unknown:
            raise FieldError(FieldName(unknown[0]), " is not an Infinity constructor argument known here")
        ref = dict(embed_dim=1024, depth=16, num_heads=16, mlp_ratio=4.0, drop_path_rate=0.0, cond_drop_rate=0.1)
        ref.update(block_chunks=1, pad_to_multiplier=0, apply_spatial_patchify=0)  # (the reference's defaults)
        ref.update({k: v for k, v in kw.items() if k in names})
        if ref["block_chunks"] < 2:  # the reference names blocks blocks.{i} then, and its sampler fails
            raise FieldError(FieldName("block_chunks"), " must be >= 2 (the released chunked layout)")
        ref["apply_spatial_patchify"] = bool(ref["apply_spatial_patchify"])
        ref["pad_to_multiplier"] = max(1, int(ref["pad_to_multiplier"]))
        return cls(vae_bits=int(vae_bits), **ref)


def schedule_hw(scale_schedule) -> List[Tuple[int, int]]:
    """[(h, w), ...] from [(h, w), ...] or the reference's [(1, h, w), ...]."""
    out = []
    for s in scale_schedule:
        s = tuple(int(v) for v in s)
        if len(s) == 3 and s[0] == 1:
            s = s[1:]
        if len(s) != 2 or min(s) < 1:
            raise InputError(f"scale_schedule entries must be (h, w) or (1, h, w), got {s}")
        out.append(s)
    return out


def initial_cfg_uncond(text_maxlen: int, text_channels: int) -> torch.Tensor:
    """The reference's initial unconditional text (its own generator seeded 0): trunc-normal std 1.2 / sqrt(Ct5)."""
    t = torch.empty(text_maxlen, text_channels, device="cpu")  # the CPU generator, also under a device context
    nn.init.trunc_normal_(t, std=1.2, generator=torch.Generator().manual_seed(0))
    return t / text_channels**0.5


def resize_cfg_uncond(ckpt_TC: torch.Tensor, model_TC: torch.Tensor) -> torch.Tensor:
    """The reference loader's rule for a checkpoint ``cfg_uncond`` whose length differs from the model's: keep its
    first rows, or append the model's own rows after its length."""
    n = model_TC.shape[0]
    if ckpt_TC.shape[0] >= n:
        return ckpt_TC[:n]
    return torch.cat((ckpt_TC.to(model_TC), model_TC[ckpt_TC.shape[0] :]))


#: The released transformers by checkpoint family (the 1024 px and 512 px 8B files share one layout).
INFINITY_PRESETS = {
    "infinity_2b": InfinityConfig.infinity_2b(),
    "infinity_8b": InfinityConfig.infinity_8b(),
    "infinity_8b_512": InfinityConfig.infinity_8b(),
}
