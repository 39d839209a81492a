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
SDPA call per row over that row's own tokens (exact, no padded keys). Measured on CPU (1 thread, B 2-8, l 256-4096,
text lengths 5-200): as fast as one call over keys padded to max(lens) with a key mask (28 vs 26 ms, 11 vs 11 ms),
3-4x faster than one call over all rows with a block-diagonal mask (114, 45, 134 ms), which does B x the work.
Parameter names equal the reference, so checkpoints load strictly.

Bit-exactness: run on the same CPU as the official code (its flash-attn replaced by exact float32 attention on the
bf16 inputs), teacher forcing and sampling equal it bit for bit at every intermediate (all public fixture cases, 1 and
2 threads). Fixtures made on another CPU differ in the matrix products (MKL's summation order depends on the CPU), by
~1e-6 before the first bf16 rounding and ~1e-3 after, which only flips near-tie bits (fixture README 7).

``rope_2Lc`` everywhere is the cache of the image's aspect ratio, built from that ratio's 1M schedule whatever the
pn: ``build_rope_cache(schedules.rope_grid_schedule(h_div_w), config.head_dim)`` (``nextscale.models.rope``).

Teacher forcing: ``logits_BLV = model(text, x_BLC_wo_prefix, scale_schedule, rope_2Lc, rng=random.Random(s))``
(conditional dropout only with an ``rng``), ``token_loss_BL, loss = bit_loss(logits_BLV, gt_BLd)``.

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
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale.errors import InputError
from nextscale.models.infinity_config import (
    INFINITY_PRESETS,
    InfinityConfig,
    TextCond,
    TextFeatures,
    initial_cfg_uncond,
    resize_cfg_uncond,
    schedule_hw,
)
from nextscale.models.kv_cache import KVCache
from nextscale.models.rope import apply_rope
from nextscale.models.var import FFN, AdaLNBeforeHead, DropPath, SharedAdaLin

__all__ = [
    "INFINITY_PRESETS",
    "Infinity",
    "InfinityCache",
    "bit_loss",
    "drop_path_rates",
    "TextFeatures",
    "TextCond",
    "InfinityConfig",
    "schedule_hw",
    "initial_cfg_uncond",
    "resize_cfg_uncond",
]

_MAX_SCALE_MUL = float(torch.tensor(100.0).log())  # the reference's float32 ln(100), cap of the cosine-attn scale


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
        q_BHlc, start, o_Hlc = q_BlHc.transpose(1, 2), 0, []
        for b, n in enumerate(lens):  # one exact attention per row over its own n tokens (no padded keys)
            k_Hnc, v_Hnc = kv_N2Hc[start : start + n].permute(1, 2, 0, 3).unbind(0)
            o_Hlc.append(F.scaled_dot_product_attention(q_BHlc[b], k_Hnc, v_Hnc, scale=self.head_dim**-0.5))
            start += n
        # stacked, not written into a buffer row by row: the backward of B row writes is B full-size zero buffers
        o_BlC = torch.stack(o_Hlc).transpose(1, 2).flatten(2)
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


def drop_path_rates(rate: float, depth: int) -> List[float]:
    """Stochastic-depth probability of each block: the reference's float32 ``linspace(0, rate, depth)`` (block 0
    never drops). Python floats, computed on the CPU whatever the default device (meta builds included)."""
    return torch.linspace(0, rate, depth, device="cpu").tolist()


class CrossAttnBlock(nn.Module):
    """x += g1 * SA(AdaLN(x)); x += CA(LayerNorm(x), text); x += g2 * FFN(AdaLN(x)) (shared AdaLN + own bias).

    Stochastic depth (training only, probability ``drop_path``): each row's SA branch and, independently, its FFN
    branch are zeroed with that probability and otherwise scaled by 1 / (1 - p), as the reference (timm's
    ``DropPath``); the cross attention is never dropped. The masks come from torch's default generator (the
    reference's behaviour); eval mode, or p = 0, is the identity and draws nothing."""

    def __init__(self, cfg: InfinityConfig, drop_path: float = 0.0):
        super().__init__()
        C, self.eps = cfg.embed_dim, cfg.norm_eps
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C**0.5)
        self.sa = SelfAttention(C, cfg.num_heads)
        self.ca = CrossAttention(C, C, cfg.num_heads, False, cfg.bf16_cross_attention)
        self.ffn = FFN(C, cfg.ffn_hidden)
        self.ca_norm = nn.LayerNorm(C, eps=cfg.norm_eps)

    def forward(self, x_BLC, gss_B16C, ca_kv_N2Hc, lens, rope_2Lc, attn_bias, kv_cache=None, block_idx=0):
        """``ca_kv_N2Hc``: the text keys/values (N, 2, H, c) of this block (sampling computes them once), or the
        projected text features (N, C), whose keys/values are computed here: inside the block's own forward, where a
        sharded (FSDP) block has its weights gathered (the teacher-forced forward)."""
        if ca_kv_N2Hc.dim() == 2:
            ca_kv_N2Hc = self.ca.kv(ca_kv_N2Hc)
        g1, g2, s1, s2, b1, b2 = (self.ada_gss + gss_B16C).unbind(2)  # 6 x (B, 1, C)
        sa = self.sa(_ada_ln(x_BLC, s1, b1, self.eps), rope_2Lc, attn_bias, kv_cache, block_idx)
        x_BLC = x_BLC + self.drop_path(sa.mul_(g1))
        x_BLC = x_BLC + self.ca(self.ca_norm(x_BLC), ca_kv_N2Hc, lens).float()
        return x_BLC + self.drop_path(self.ffn(_ada_ln(x_BLC, s2, b2, self.eps)).mul(g2))


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
        blocks = [CrossAttnBlock(cfg, p) for p in drop_path_rates(cfg.drop_path_rate, cfg.depth)]
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
        new = self.replace_rows(text, dropped)
        if in_place and new is not text:  # the values also land in the caller's tensor; the graph stays in `new`
            with torch.no_grad():
                text.kv_compact.copy_(new.kv_compact)
        return new, dropped

    def replace_rows(self, text: TextFeatures, dropped: Sequence[int]) -> TextFeatures:
        """Rows b with ``dropped[b]`` -> ``cfg_uncond[:len]`` (the gradient flows into cfg_uncond)."""
        if len(dropped) != text.batch_size:
            raise InputError(f"dropped has {len(dropped)} entries for {text.batch_size} text rows")
        if not any(dropped):
            return text
        unc = self.uncond_text(text).kv_compact
        keep = torch.repeat_interleave(
            torch.tensor([not d for d in dropped], device=unc.device), torch.tensor(text.lens, device=unc.device)
        ).unsqueeze(1)
        return TextFeatures(torch.where(keep, text.kv_compact, unc), text.lens, text.cu_seqlens, text.max_seqlen)

    def prepare_text(self, text: TextFeatures) -> TextCond:
        normed = self.text_norm(text.kv_compact.float())
        cond_BD = self.text_proj_for_sos(normed, text.lens).float()
        return TextCond(text, normed, cond_BD, self.text_proj_for_ca(normed), self.shared_ada_lin(cond_BD))

    def sos(self, cond: TextCond) -> torch.Tensor:
        return cond.cond_BD.unsqueeze(1) + self.pos_start  # (B, 1, C)

    def logits(self, hidden_BlC: torch.Tensor, cond: TextCond) -> torch.Tensor:
        """Head on the first hidden.shape[0] rows of ``cond``: (B, l, 2 d')."""
        return self.head(self.head_nm(hidden_BlC.float(), cond.cond_BD[: hidden_BlC.shape[0]]))

    def _schedule(self, scale_schedule) -> List[Tuple[int, int]]:
        hw = schedule_hw(scale_schedule)
        if not hw or hw[0] != (1, 1) or len(hw) > self.config.num_levels:
            raise InputError(
                f"scale_schedule must start at (1, 1) and have <= {self.config.num_levels} scales, got {hw}"
            )
        return hw

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
        x_BLC_wo_prefix,
        scale_schedule,
        rope_2Lc,
        *,
        rng=None,
        cond_drop_rate=None,
        drop_in_place=False,
        dropped: Optional[Sequence[int]] = None,
    ) -> torch.Tensor:
        """Teacher-forced logits (B, L, 2 d'). ``x_BLC_wo_prefix`` (B, L - l_0, d') are the next-scale inputs,
        ``rope_2Lc`` the ratio's cache (:func:`nextscale.models.rope.build_rope_cache`). Conditional dropout
        (:meth:`drop_text`) happens only when ``rng`` is given; ``dropped`` (0/1 per row) replaces the rows the
        caller chose (the trainer's per-sample draws) inside the forward, where a sharded cfg_uncond is gathered."""
        hw = self._schedule(scale_schedule)
        ls = [h * w for h, w in hw]
        L, B = sum(ls), text.batch_size
        if tuple(x_BLC_wo_prefix.shape) != (B, L - 1, self.config.token_bits):
            raise InputError(
                f"x_BLC_wo_prefix must be {(B, L - 1, self.config.token_bits)} for this schedule and "
                f"text, got {tuple(x_BLC_wo_prefix.shape)}"
            )
        if dropped is not None:
            text = self.replace_rows(text, dropped)
        if rng is not None:
            text = self.drop_text(text, rng, cond_drop_rate, drop_in_place)[0]
        elif cond_drop_rate:
            raise InputError("cond_drop_rate > 0 needs rng (a random.Random) to draw the dropped rows")
        cond = self.prepare_text(text)
        x_BLC = torch.cat((self.sos(cond), self.word_embed(x_BLC_wo_prefix.float())), dim=1)
        lvl_L = torch.repeat_interleave(
            torch.arange(len(ls), device=x_BLC.device), torch.tensor(ls, device=x_BLC.device)
        )
        # the level embedding is looked up per scale for all (B, l_k) tokens, as the reference does: the same values as
        # one lookup of lvl_L, but lvl_embed's gradient is then summed in the reference's order (bit-identical)
        start, parts = 0, []
        for k, n in enumerate(ls):
            parts.append(x_BLC[:, start : start + n] + self.lvl_embed(lvl_L.new_full((B, n), k)))
            start += n
        x_BLC = torch.cat(parts, dim=1)
        # pad like the reference: padded rows see token 0 only and real rows never see them; RoPE 0 there
        Lp = self.padded_len(L)
        bias = torch.where(lvl_L.view(-1, 1) >= lvl_L.view(1, -1), 0.0, -torch.inf).to(x_BLC.device)
        bias = F.pad(bias, (0, Lp - L, 0, Lp - L), value=-torch.inf)
        bias[L:, 0] = 0.0
        x_BLC, rope = F.pad(x_BLC, (0, 0, 0, Lp - L)), F.pad(self._rope(rope_2Lc, L), (0, 0, 0, Lp - L))
        for blk in self.blocks:
            x_BLC = blk(x_BLC, cond.gss, cond.ca_kv, text.lens, rope, bias.to(x_BLC.dtype))
        # cfg_uncond always joins the graph (a zero gradient when no row was dropped), as in the reference: DDP and
        # optimisers then see the same parameter set every step
        return self.logits(x_BLC[:, :L], cond) + self.cfg_uncond[0, 0] * 0

    # ---- KV-cached sampling ----
    def new_cache(self, cond: TextCond, scale_schedule) -> InfinityCache:
        return InfinityCache(self, cond, sum(h * w for h, w in self._schedule(scale_schedule)))

    def forward_scale(
        self,
        x_BlC,
        si: int,
        scale_schedule,
        cond: TextCond,
        cache: InfinityCache,
        rope_2Lc,
        *,
        cfg: float = 1.0,
        cfg_blocks: Sequence[int] = (),
    ) -> torch.Tensor:
        """Scale ``si`` through every block over the cache (which it extends): the hidden state (bs, l, C) before
        the head. ``x_BlC``: :meth:`sos` at scale 0, else ``word_embed`` of the next-scale input."""
        hw = self._schedule(scale_schedule)
        if not 0 <= si < len(hw):
            raise InputError(f"si must index the {len(hw)} scales of scale_schedule, got {si}")
        begin = sum(h * w for h, w in hw[:si])
        n = hw[si][0] * hw[si][1]
        if x_BlC.shape[:2] != (cond.cond_BD.shape[0], n) or cache.kv.pos != begin:
            raise InputError(
                f"scale {si} needs ({cond.cond_BD.shape[0]}, {n}) tokens (rows of cond, h * w) at cache position "
                f"{begin}; got {tuple(x_BlC.shape[:2])} at {cache.kv.pos} (run the scales in order, each once)"
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
