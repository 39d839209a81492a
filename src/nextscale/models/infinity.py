"""Infinity: a text-to-image next-scale transformer that predicts d' bits per token (bitwise BSQ tokens).

Shape glossary (suffixes at tensor boundaries):
    B  batch (bs = 2B rows under guidance)   L  tokens of all scales (sum of h_k * w_k)   l  tokens of one scale
    C  width (= D, the condition width)      H  heads    c  head dim    N  text tokens of the batch (sum of lens)
    Ct5  text feature width                  d' bits per token (d, or 4d with spatial patchify)    V  2 d'

Text enters as :class:`TextFeatures` (rows concatenated without padding). It is RMS-normalised, pooled into one
vector per row (``cond_BD``: learned queries, one per head) and projected for the cross attentions (``ca_kv``).
``cond_BD`` + ``pos_start`` is the first token; later scales are ``word_embed`` of the next-scale inputs; the level
embedding is added before the first block only. Block: AdaLN self attention (cosine attention, 2-D RoPE,
block-causal over scales), cross attention to the row's own text tokens, AdaLN FFN. Head: AdaLN from ``cond_BD``;
logit 2j says "bit j = 0", 2j+1 "bit j = 1".

The reference's numerics are kept: cross attention and the text pool round q, k/v and their output to bfloat16
(``bf16_cross_attention``), teacher forcing pads the sequence to a multiple of 128. Variable text lengths: one
SDPA call per row over that row's tokens (exact, no padded keys; a block-diagonal mask over all rows costs B x the
work and keeps SDPA off its fused kernels). Parameter names equal the reference, so checkpoints load strictly.

Sampling API (KV cache; RoPE at each scale's offset), used by ``nextscale.sampling_t2i``::

    text2 = model.cfg_text(text, negative)            # optional: [cond rows; uncond rows] when guidance is on
    cond = model.prepare_text(text2)                  # TextCond: normed, cond_BD, ca_kv, gss
    cache = model.new_cache(cond, scale_schedule)     # self-attention KV of every block + per-block text k/v
    x_BlC = model.sos(cond)                           # scale 0; later: model.word_embed(x_Bld).repeat(bs // B, 1, 1)
    h_BlC = model.forward_scale(x_BlC, si, scale_schedule, cond, cache, rope_2Lc, cfg=cfg, cfg_blocks=(depth-1,))
    logits_BlV = model.logits(h_BlC[:B], cond)        # or all rows, then cfg * lg[:B] + (1 - cfg) * lg[B:]

``cfg_blocks`` (the reference's negative ``cfg_insertion_layer`` -n is block depth - n): after those blocks, when
cfg != 1, the hidden state becomes cfg * h[:B] + (1 - cfg) * h[B:] on both halves (later blocks cache it too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale.errors import FieldError, FieldName, InputError
from nextscale.models.kv_cache import KVCache
from nextscale.models.rope import apply_rope
from nextscale.models.var import FFN, AdaLNBeforeHead, SharedAdaLin

__all__ = [
    "TextFeatures",
    "TextCond",
    "InfinityConfig",
    "Infinity",
    "InfinityCache",
    "initial_cfg_uncond",
    "resize_cfg_uncond",
    "bit_loss",
    "schedule_hw",
]

_MAX_SCALE_MUL = float(torch.tensor(100.0).log())  # the reference's float32 ln(100), cap of the cosine-attn scale


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
    drop_path_rate: float = 0.1  # the release's training value; recorded only: this forward has no stochastic depth
    pad_to_multiplier: int = 128  # teacher forcing pads L like the reference (changes outputs by float noise only)
    num_levels: int = 15  # rows of lvl_embed (max scales)
    rope_base: float = 10000.0
    bf16_cross_attention: bool = True  # the reference's bf16 round trip of q, k/v and output (flash-attn)

    def __post_init__(self):
        for name in (
            "depth",
            "embed_dim",
            "num_heads",
            "vae_bits",
            "text_channels",
            "text_maxlen",
            "block_chunks",
            "num_levels",
        ):
            if int(getattr(self, name)) < 1:
                raise FieldError(FieldName(name), f" must be >= 1, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads or (self.embed_dim // self.num_heads) % 4:
            raise FieldError(
                FieldName("embed_dim"),
                f" {self.embed_dim} / ",
                FieldName("num_heads"),
                f" {self.num_heads} must give a head dim that is a multiple of 4",
            )
        if self.depth % self.block_chunks:
            raise FieldError(
                FieldName("depth"),
                f" {self.depth} must be a multiple of ",
                FieldName("block_chunks"),
                f" {self.block_chunks}",
            )
        if self.text_channels % self.text_pool_head_dim or self.embed_dim % self.text_pool_heads:
            raise FieldError(
                FieldName("text_channels"),
                f" {self.text_channels} must be a multiple of "
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

    # reference kwargs that must keep the released value (other values change the math or the layout)
    _FIXED = {
        "shared_aln": (True, False),
        "use_bit_label": (1, 1),
        "add_lvl_embeding_only_first_block": (1, 1),
        "rope2d_each_sa_layer": (1, 0),
        "rope2d_normalized_by_hw": (2, 0),
        "cos_attn": (True, True),
        "rms_norm": (False, False),
        "nm0": (False, False),
        "swiglu": (False, False),
        "head_depth": (1, 1),
        "cross_attn_layer_scale": (-1, -1),
        "tau": (1, 1),
        "drop_rate": (0, 0),
        "head_aln": (True, True),
        "rand_uncond": (False, False),
        "video_frames": (1, 1),
    }  # name: (required, reference default)
    # reference kwargs about kernels, compilation or training bookkeeping: no effect on this math
    _IGNORED = {
        "checkpointing",
        "customized_flash_attn",
        "use_flex_attn",
        "fused_norm",
        "fused_mlp",
        "inference_mode",
        "train_h_div_w_list",
        "pn",
        "raw_scale_schedule",
        "batch_size",
        "top_p",
        "top_k",
        "selecting_idx",
        "always_training_scales",
        "cls",
        "vae_local",
    }

    @classmethod
    def from_reference_kwargs(cls, kwargs: dict, vae_bits: int) -> "InfinityConfig":
        """From the reference constructor's keyword arguments (missing ones take the reference defaults) and the
        tokenizer's bits d. ``fused_norm`` is ignored: the sampling math here is the fused (released) one."""
        kw = dict(kwargs)
        for name, (need, default) in cls._FIXED.items():
            if kw.pop(name, default) != need:
                raise FieldError(
                    FieldName(name), f" must be {need!r} (the released Infinity); other values are not implemented"
                )
        names = {f.name for f in fields(cls)} - {"vae_bits", "num_levels", "rope_base", "bf16_cross_attention"}
        unknown = sorted(k for k in kw if k not in names and k not in cls._IGNORED)
        if unknown:
            raise FieldError(FieldName(unknown[0]), " is not an Infinity constructor argument known here")
        ref = dict(
            embed_dim=1024,
            depth=16,
            num_heads=16,
            mlp_ratio=4.0,
            drop_path_rate=0.0,
            cond_drop_rate=0.1,
            block_chunks=1,
            pad_to_multiplier=0,
            apply_spatial_patchify=0,
        )  # reference defaults
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
    t = torch.empty(text_maxlen, text_channels)
    nn.init.trunc_normal_(t, std=1.2, generator=torch.Generator().manual_seed(0))
    return t / text_channels**0.5


def resize_cfg_uncond(ckpt_TC: torch.Tensor, model_TC: torch.Tensor) -> torch.Tensor:
    """The reference loader's rule for a checkpoint ``cfg_uncond`` whose length differs from the model's: keep its
    first rows, or append the model's own rows after its length."""
    n = model_TC.shape[0]
    if ckpt_TC.shape[0] >= n:
        return ckpt_TC[:n]
    return torch.cat((ckpt_TC.to(model_TC), model_TC[ckpt_TC.shape[0] :]))


def bit_loss(logits_BLV: torch.Tensor, gt_BLd: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The reference trainer's loss: (token_loss (B, L) = bit cross entropy averaged over d', its mean)."""
    B, L, V = logits_BLV.shape
    ce = F.cross_entropy(logits_BLV.float().reshape(-1, 2), gt_BLd.reshape(-1).long(), reduction="none")
    token_loss = ce.view(B, L, V // 2).mean(-1)
    return token_loss, token_loss.mul(1 / L).sum(-1).mean()


def _bf16(t: torch.Tensor, on: bool) -> torch.Tensor:
    return t.to(torch.bfloat16).to(t.dtype) if on else t


def _ada_ln(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps).mul(scale.add(1)).add_(shift)


class CrossAttention(nn.Module):
    """Each row's queries attend to that row's text tokens only. ``pool``: one learned query per head (the text
    pool) instead of a projection of x. Keys have no bias (softmax-invariant)."""

    def __init__(self, embed_dim: int, kv_dim: int, num_heads: int, pool: bool, bf16: bool):
        super().__init__()
        self.num_heads, self.head_dim, self.bf16 = num_heads, embed_dim // num_heads, bf16
        if pool:
            self.mat_q = nn.Parameter(torch.zeros(1, num_heads, self.head_dim))
            nn.init.trunc_normal_(self.mat_q, std=math.sqrt(1 / embed_dim / 3))
        else:
            self.mat_q = nn.Linear(embed_dim, embed_dim)
        self.mat_kv = nn.Linear(kv_dim, 2 * embed_dim, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)

    def kv(self, text_NC: torch.Tensor) -> torch.Tensor:
        """Keys and values (N, 2, H, c) of the text tokens, bf16-rounded when the reference does it."""
        kv = F.linear(text_NC, self.mat_kv.weight, torch.cat((self.zero_k_bias, self.v_bias)))
        return _bf16(kv.view(-1, 2, self.num_heads, self.head_dim), self.bf16)

    def forward(self, x_BlC: Optional[torch.Tensor], kv_N2Hc: torch.Tensor, lens: Sequence[int]) -> torch.Tensor:
        if isinstance(self.mat_q, nn.Parameter):
            q_BlHc = self.mat_q.unsqueeze(0).expand(len(lens), 1, -1, -1)
        else:
            q_BlHc = self.mat_q(x_BlC).unflatten(-1, (self.num_heads, self.head_dim))
        q_BlHc = _bf16(q_BlHc, self.bf16)
        outs, start = [], 0
        for b, n in enumerate(lens):  # one exact attention per row over its own n tokens
            k_Hnc, v_Hnc = kv_N2Hc[start : start + n].permute(1, 2, 0, 3).unbind(0)
            outs.append(
                F.scaled_dot_product_attention(q_BlHc[b].transpose(0, 1), k_Hnc, v_Hnc, scale=self.head_dim**-0.5)
            )  # (H, l, c)
            start += n
        o_BlC = torch.stack(outs).transpose(1, 2).flatten(2)
        return self.proj(_bf16(o_BlC, self.bf16))


class TextPool(nn.Module):
    """Text -> one vector per row (cond_BD): attention pooling with a learned query per head."""

    def __init__(self, cfg: InfinityConfig):
        super().__init__()
        self.ca = CrossAttention(cfg.embed_dim, cfg.text_channels, cfg.text_pool_heads, True, cfg.bf16_cross_attention)

    def forward(self, normed_NC: torch.Tensor, lens: Sequence[int]) -> torch.Tensor:
        return self.ca(None, self.ca.kv(normed_NC), lens).squeeze(1)  # (B, C)


class SelfAttention(nn.Module):
    """Cosine attention: L2-normalised q, k, q scaled per head by exp(min(scale_mul, ln 100)); then 2-D RoPE."""

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(embed_dim)), nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.mat_qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x_BLC, rope_2Lc, attn_bias, kv_cache: Optional[KVCache] = None, block_idx: int = 0):
        B, L, C = x_BLC.shape
        qkv = F.linear(x_BLC, self.mat_qkv.weight, torch.cat((self.q_bias, self.zero_k_bias, self.v_bias)))
        q, k, v = qkv.view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, c)
        q = F.normalize(q, dim=-1, eps=1e-12).mul(self.scale_mul_1H11.clamp_max(_MAX_SCALE_MUL).exp())
        q, k = apply_rope(q, rope_2Lc), apply_rope(F.normalize(k, dim=-1, eps=1e-12), rope_2Lc)
        if kv_cache is not None:
            k, v = kv_cache.append(block_idx, k, v)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=1.0)
        return self.proj(o.transpose(1, 2).reshape(B, L, C))


class CrossAttnBlock(nn.Module):
    """x += g1 * SA(AdaLN(x)); x += CA(LayerNorm(x), text); x += g2 * FFN(AdaLN(x)) (shared AdaLN + own bias)."""

    def __init__(self, cfg: InfinityConfig):
        super().__init__()
        C, self.eps = cfg.embed_dim, cfg.norm_eps
        self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C**0.5)
        self.sa = SelfAttention(C, cfg.num_heads)
        self.ca = CrossAttention(C, C, cfg.num_heads, False, cfg.bf16_cross_attention)
        self.ffn = FFN(C, cfg.ffn_hidden)
        self.ca_norm = nn.LayerNorm(C, eps=cfg.norm_eps)

    def forward(self, x_BLC, gss_B16C, ca_kv_N2Hc, lens, rope_2Lc, attn_bias, kv_cache=None, block_idx=0):
        g1, g2, s1, s2, b1, b2 = (self.ada_gss + gss_B16C).unbind(2)  # 6 x (B, 1, C)
        x_BLC = x_BLC + self.sa(_ada_ln(x_BLC, s1, b1, self.eps), rope_2Lc, attn_bias, kv_cache, block_idx).mul_(g1)
        x_BLC = x_BLC + self.ca(self.ca_norm(x_BLC), ca_kv_N2Hc, lens).float()
        return x_BLC + self.ffn(_ada_ln(x_BLC, s2, b2, self.eps)).mul(g2)


class _Chunk(nn.Module):  # the reference's checkpointing unit; only its name is kept
    def __init__(self, blocks: List[CrossAttnBlock]):
        super().__init__()
        self.module = nn.ModuleList(blocks)


class InfinityCache:
    """Sampling state of one batch: every block's self-attention keys/values so far, and its text keys/values."""

    def __init__(self, model: "Infinity", cond: TextCond, max_len: int):
        self.kv = KVCache(model.config.depth, max_len)
        self.ca_kv = [blk.ca.kv(cond.ca_kv) for blk in model.blocks]


class Infinity(nn.Module):
    """The Infinity transformer for :class:`InfinityConfig`. The tokenizer is not part of it."""

    def __init__(self, config: InfinityConfig):
        super().__init__()
        self.config = cfg = config
        C, std = cfg.embed_dim, math.sqrt(1 / config.embed_dim / 3)
        self.cfg_uncond = nn.Parameter(torch.empty(cfg.text_maxlen, cfg.text_channels))
        with torch.no_grad():
            self.cfg_uncond.copy_(initial_cfg_uncond(cfg.text_maxlen, cfg.text_channels))
        self.pos_start = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, C), std=std))
        self.text_norm = nn.RMSNorm(cfg.text_channels, eps=cfg.norm_eps)
        self.text_proj_for_sos = TextPool(cfg)
        self.text_proj_for_ca = nn.Sequential(
            nn.Linear(cfg.text_channels, C), nn.GELU(approximate="tanh"), nn.Linear(C, C)
        )
        self.lvl_embed = nn.Embedding(cfg.num_levels, C)
        nn.init.trunc_normal_(self.lvl_embed.weight, std=std)
        self.word_embed = nn.Linear(cfg.token_bits, C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(C, 6 * C))
        self.head_nm = AdaLNBeforeHead(C, C, lambda n, elementwise_affine: nn.LayerNorm(n, cfg.norm_eps, False))
        self.head = nn.Linear(C, 2 * cfg.token_bits)
        per = cfg.depth // cfg.block_chunks
        blocks = [CrossAttnBlock(cfg) for _ in range(cfg.depth)]
        self.block_chunks = nn.ModuleList([_Chunk(blocks[c * per : (c + 1) * per]) for c in range(cfg.block_chunks)])

    @property
    def blocks(self) -> List[CrossAttnBlock]:  # global block i = chunk i // per, position i % per
        return [b for chunk in self.block_chunks for b in chunk.module]

    # ---- text ----
    def uncond_text(self, text: TextFeatures) -> TextFeatures:
        """Row b -> the first lens[b] rows of cfg_uncond (length-matched unconditional features)."""
        if text.max_seqlen > self.config.text_maxlen:
            raise InputError(f"text rows of {text.max_seqlen} tokens exceed text_maxlen {self.config.text_maxlen}")
        return TextFeatures.from_lens(
            torch.cat([self.cfg_uncond[:n] for n in text.lens]).to(text.kv_compact), text.lens
        )

    def cfg_text(self, text: TextFeatures, negative: Optional[TextFeatures] = None) -> TextFeatures:
        """[text rows; unconditional (or ``negative``) rows]: the doubled batch of guided sampling."""
        if negative is not None and negative.batch_size != text.batch_size:
            raise InputError(f"negative text has {negative.batch_size} rows, text has {text.batch_size}")
        return text.cat(self.uncond_text(text) if negative is None else negative)

    def drop_text(self, text: TextFeatures, rng, rate: Optional[float] = None, in_place: bool = False):
        """Conditional dropout: per row in order, ``rng.random() < rate`` replaces it by ``cfg_uncond[:len]``.
        ``rng`` is a ``random.Random`` (``random.Random(s)`` replays the reference's ``random.seed(s)``). Returns
        (text, dropped 0/1 per row); the caller's tensor is kept unless ``in_place`` (the reference's behaviour)."""
        rate = self.config.cond_drop_rate if rate is None else rate
        dropped = [int(rng.random() < rate) for _ in text.lens]  # one draw per row, even at rate 0
        if not any(dropped):
            return text, dropped
        unc = self.uncond_text(text).kv_compact
        keep = torch.repeat_interleave(
            torch.tensor(dropped, device=unc.device) == 0, torch.tensor(text.lens, device=unc.device)
        ).unsqueeze(1)
        if in_place:
            with torch.no_grad():
                text.kv_compact.copy_(torch.where(keep, text.kv_compact, unc))
            return text, dropped
        return TextFeatures.from_lens(torch.where(keep, text.kv_compact, unc), text.lens), dropped

    def prepare_text(self, text: TextFeatures) -> TextCond:
        normed = self.text_norm(text.kv_compact.float())
        cond_BD = self.text_proj_for_sos(normed, text.lens).float()
        return TextCond(text, normed, cond_BD, self.text_proj_for_ca(normed), self.shared_ada_lin(cond_BD))

    def sos(self, cond: TextCond) -> torch.Tensor:
        return cond.cond_BD.unsqueeze(1) + self.pos_start  # (B, 1, C)

    def logits(self, hidden_BlC: torch.Tensor, cond: TextCond) -> torch.Tensor:
        """Head on the first hidden.shape[0] rows of ``cond``: (B, l, 2 d')."""
        return self.head(self.head_nm(hidden_BlC.float(), cond.cond_BD[: hidden_BlC.shape[0]]))

    def _rope(self, rope_2Lc: torch.Tensor, end: int) -> torch.Tensor:
        want = (2, self.config.head_dim // 2)
        if rope_2Lc.ndim != 3 or (rope_2Lc.shape[0], rope_2Lc.shape[2]) != want or rope_2Lc.shape[1] < end:
            raise InputError(f"rope_2Lc must be (2, >= {end}, {want[1]}), got {tuple(rope_2Lc.shape)}")
        return rope_2Lc[:, :end]

    # ---- teacher forcing ----
    def padded_len(self, L: int) -> int:
        m = self.config.pad_to_multiplier
        return (L + m - 1) // m * m

    def forward(
        self,
        text: TextFeatures,
        x_BLC_wo_prefix: torch.Tensor,
        scale_schedule,
        rope_2Lc: torch.Tensor,
        *,
        rng=None,
        cond_drop_rate: Optional[float] = None,
        drop_in_place: bool = False,
    ) -> torch.Tensor:
        """Teacher-forced logits (B, L, 2 d'). ``x_BLC_wo_prefix`` (B, L - l_0, d') are the next-scale inputs,
        ``rope_2Lc`` the ratio's cache (:func:`nextscale.models.rope.build_rope_cache`). Conditional dropout
        (:meth:`drop_text`) happens only when ``rng`` is given."""
        hw = schedule_hw(scale_schedule)
        ls = [h * w for h, w in hw]
        L, B = sum(ls), text.batch_size
        if len(hw) > self.config.num_levels or tuple(x_BLC_wo_prefix.shape) != (B, L - ls[0], self.config.token_bits):
            raise InputError(
                f"x_BLC_wo_prefix must be {(B, L - ls[0], self.config.token_bits)} for this schedule "
                f"(<= {self.config.num_levels} scales), got {tuple(x_BLC_wo_prefix.shape)}"
            )
        if rng is not None:
            text = self.drop_text(text, rng, cond_drop_rate, drop_in_place)[0]
        cond = self.prepare_text(text)
        x_BLC = torch.cat((self.sos(cond).expand(B, ls[0], -1), self.word_embed(x_BLC_wo_prefix.float())), dim=1)
        lvl_L = torch.repeat_interleave(
            torch.arange(len(ls), device=x_BLC.device), torch.tensor(ls, device=x_BLC.device)
        )
        x_BLC = x_BLC + self.lvl_embed(lvl_L)
        # pad like the reference: padded rows see token 0 only and real rows never see them; RoPE 0 there
        Lp = self.padded_len(L)
        bias = torch.where(lvl_L.view(-1, 1) >= lvl_L.view(1, -1), 0.0, -torch.inf).to(x_BLC.device)
        bias = F.pad(bias, (0, Lp - L, 0, Lp - L), value=-torch.inf)
        bias[L:, 0] = 0.0
        x_BLC, rope = F.pad(x_BLC, (0, 0, 0, Lp - L)), F.pad(self._rope(rope_2Lc, L), (0, 0, 0, Lp - L))
        for blk in self.blocks:
            x_BLC = blk(x_BLC, cond.gss, blk.ca.kv(cond.ca_kv), text.lens, rope, bias.to(x_BLC.dtype))
        # cfg_uncond always joins the graph (a zero gradient when no row was dropped), as in the reference: DDP and
        # optimisers then see the same parameter set every step
        return self.logits(x_BLC[:, :L], cond) + self.cfg_uncond[0, 0] * 0

    # ---- KV-cached sampling ----
    def new_cache(self, cond: TextCond, scale_schedule) -> InfinityCache:
        return InfinityCache(self, cond, sum(h * w for h, w in schedule_hw(scale_schedule)))

    def forward_scale(
        self,
        x_BlC: torch.Tensor,
        si: int,
        scale_schedule,
        cond: TextCond,
        cache: InfinityCache,
        rope_2Lc: torch.Tensor,
        *,
        cfg: float = 1.0,
        cfg_blocks: Sequence[int] = (),
    ) -> torch.Tensor:
        """Scale ``si`` through every block over the cache (which it extends): the hidden state (bs, l, C) before
        the head. ``x_BlC``: :meth:`sos` at scale 0, else ``word_embed`` of the next-scale input."""
        hw = schedule_hw(scale_schedule)
        begin = sum(h * w for h, w in hw[:si])
        n = hw[si][0] * hw[si][1]
        if x_BlC.shape[1] != n or cache.kv.pos != begin:
            raise InputError(
                f"scale {si} needs {n} tokens at cache position {begin}; got {x_BlC.shape[1]} tokens, "
                f"the cache is at {cache.kv.pos} (run the scales in order, each once)"
            )
        rope = self._rope(rope_2Lc, begin + n)[:, begin:]
        x_BlC = x_BlC + self.lvl_embed.weight[si]
        for i, blk in enumerate(self.blocks):
            x_BlC = blk(x_BlC, cond.gss, cache.ca_kv[i], cond.text.lens, rope, None, cache.kv, i)
            if cfg != 1 and i in cfg_blocks:  # guidance inside the network (the reference's negative layers)
                B = x_BlC.shape[0] // 2
                x_BlC = cfg * x_BlC[:B] + (1 - cfg) * x_BlC[B:]
                x_BlC = torch.cat((x_BlC, x_BlC))
        cache.kv.advance(n)
        return x_BlC
