"""VAR: a GPT-2-style transformer that predicts all tokens of scale k at once from scales < k.

Shape glossary (suffixes at tensor boundaries):
    B  batch                      L  tokens of all scales (sum of pn_k^2)
    l  tokens of one scale        C  transformer width       D  condition width (= C)
    Cv VQ-VAE code channels       V  codebook size           H  heads     c  head dim
    K  number of scales           h, w  one scale's grid

Input sequence: [class embedding + pos_start] (the 1x1 "sos" scale), then for k = 2..K the
word-embedded teacher-forcing maps (area-downsampled cumulative f_hat), plus per-token position
embeddings and a per-scale level embedding. Attention is block-causal: a token sees every token of
its own and coarser scales. Each block is modulated by AdaLN from the class embedding (per block,
or one shared projection for d36-s); the head is preceded by another AdaLN.

Parameter and buffer names equal the reference (FoundationVision/VAR) so released checkpoints
load with ``strict=True``. The model holds no device, RNG or distributed state.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale.configs import VARConfig
from nextscale.models.kv_cache import KVCache
from nextscale.models.vqvae import VQVAE

__all__ = ["VAR", "AdaLNSelfAttn", "AdaLNBeforeHead", "SelfAttention", "FFN", "KVCache", "SharedAdaLin"]


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample (training only)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


class FFN(nn.Module):
    """The MLP of a block: fc1 -> GELU (tanh approximation, as GPT-2 and the reference) -> fc2."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x):
        return self.drop(self.fc2(self.act(self.fc1(x))))


class SelfAttention(nn.Module):
    """Multi-head self-attention; with ``attn_l2_norm`` q and k are L2-normalised and q is scaled
    by a learnable per-head factor (exp of ``scale_mul_1H11``, capped at 100)."""

    def __init__(
        self,
        block_idx: int,
        embed_dim: int = 768,
        num_heads: int = 12,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        attn_l2_norm: bool = False,
    ):
        super().__init__()
        assert embed_dim % num_heads == 0
        self.block_idx, self.num_heads, self.head_dim = block_idx, num_heads, embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(embed_dim, embed_dim * 3, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(embed_dim)), nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))  # k has no bias (softmax-invariant)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.attn_drop = attn_drop

    def qkv_bias(self) -> torch.Tensor:
        return torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))  # (3C,)

    def qkv(self, x_BLC: torch.Tensor) -> torch.Tensor:
        return F.linear(x_BLC, self.mat_qkv.weight, self.qkv_bias())  # (B, L, 3C)

    def forward(self, x_BLC: torch.Tensor, attn_bias: Optional[torch.Tensor], kv_cache: Optional[KVCache] = None):
        B, L, C = x_BLC.shape
        qkv = self.qkv(x_BLC).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, L, c)
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q = F.normalize(q, dim=-1).mul(scale_mul)
            k = F.normalize(k, dim=-1)
        if kv_cache is not None:
            k, v = kv_cache.append(self.block_idx, k, v)
        dt = v.dtype
        if attn_bias is not None:
            attn_bias = attn_bias.to(dt)
        o = F.scaled_dot_product_attention(
            q.to(dt),
            k.to(dt),
            v,
            attn_mask=attn_bias,
            dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale,
        )
        return self.proj_drop(self.proj(o.transpose(1, 2).reshape(B, L, C)))  # (B, L, C)

    def extra_repr(self) -> str:
        return f"attn_l2_norm={self.attn_l2_norm}"


class AdaLNSelfAttn(nn.Module):
    """Transformer block whose LayerNorms are modulated by the condition:
    x += gamma1 * attn(LN(x) * (1 + scale1) + shift1);  x += gamma2 * ffn(LN(x) * (1 + scale2) + shift2)."""

    def __init__(
        self,
        block_idx: int,
        embed_dim: int,
        cond_dim: int,
        shared_aln: bool,
        norm_layer,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_l2_norm: bool = False,
    ):
        super().__init__()
        self.block_idx, self.C, self.D = block_idx, embed_dim, cond_dim
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.attn = SelfAttention(block_idx, embed_dim, num_heads, attn_drop, drop, attn_l2_norm)
        self.ffn = FFN(embed_dim, round(embed_dim * mlp_ratio), drop)
        self.ln_wo_grad = norm_layer(embed_dim, elementwise_affine=False)
        self.shared_aln = shared_aln
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, embed_dim) / embed_dim**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(cond_dim, 6 * embed_dim))

    def modulation(self, cond_BD_or_gss: torch.Tensor) -> torch.Tensor:
        """(B, 6, C)-shaped modulation, as (B, 1, 6, C): gamma1, gamma2, scale1, scale2, shift1, shift2."""
        if self.shared_aln:
            return self.ada_gss + cond_BD_or_gss  # (1,1,6,C) + (B,1,6,C)
        return self.ada_lin(cond_BD_or_gss).view(-1, 1, 6, self.C)

    def forward(
        self, x, cond_BD, attn_bias, kv_cache: Optional[KVCache] = None, mod_B16C: Optional[torch.Tensor] = None
    ):
        if mod_B16C is None:
            mod_B16C = self.modulation(cond_BD)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mod_B16C.unbind(2)  # 6 x (B, 1, C)
        h = self.attn(self.ln_wo_grad(x).mul(scale1.add(1)).add_(shift1), attn_bias=attn_bias, kv_cache=kv_cache)
        x = x + self.drop_path(h.mul_(gamma1))
        return x + self.drop_path(self.ffn(self.ln_wo_grad(x).mul(scale2.add(1)).add_(shift2)).mul(gamma2))

    def extra_repr(self) -> str:
        return f"shared_aln={self.shared_aln}"


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C: int, D: int, norm_layer):
        super().__init__()
        self.C, self.D = C, D
        self.ln_wo_grad = norm_layer(C, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(D, 2 * C))

    def modulation(self, cond_BD: torch.Tensor) -> torch.Tensor:
        return self.ada_lin(cond_BD).view(-1, 1, 2, self.C)

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor, mod_B12C: Optional[torch.Tensor] = None):
        if mod_B12C is None:
            mod_B12C = self.modulation(cond_BD)
        scale, shift = mod_B12C.unbind(2)
        return self.ln_wo_grad(x_BLC).mul(scale.add(1)).add_(shift)


class SharedAdaLin(nn.Linear):
    """The one AdaLN projection shared by all blocks (d36-s): (B, D) -> (B, 1, 6, C)."""

    def forward(self, cond_BD):
        C = self.weight.shape[0] // 6
        return super().forward(cond_BD).view(-1, 1, 6, C)


class VAR(nn.Module):
    """Next-scale prediction transformer with the reference's constructor keywords.

    ``vae_local`` gives the code width (Cvae) and codebook size (V); the tokenizer itself is not
    kept (sampling takes it as an argument), so it is not part of VAR's state dict, as in the
    reference. ``flash_if_available`` / ``fused_if_available`` are accepted and ignored (see
    ``nextscale.compat``): attention is always ``scaled_dot_product_attention``.
    """

    def __init__(
        self,
        vae_local: VQVAE,
        num_classes=1000,
        depth=16,
        embed_dim=1024,
        num_heads=16,
        mlp_ratio=4.0,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
        norm_eps=1e-6,
        shared_aln=False,
        cond_drop_rate=0.1,
        attn_l2_norm=False,
        patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
        flash_if_available=True,
        fused_if_available=True,
    ):
        super().__init__()
        assert embed_dim % num_heads == 0, f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}"
        self.config = VARConfig(
            depth=depth,
            embed_dim=embed_dim,
            num_heads=num_heads,
            num_classes=num_classes,
            mlp_ratio=mlp_ratio,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            norm_eps=norm_eps,
            shared_aln=shared_aln,
            cond_drop_rate=cond_drop_rate,
            attn_l2_norm=attn_l2_norm,
            patch_nums=tuple(patch_nums),
        )
        self.Cvae, self.V = vae_local.Cvae, vae_local.vocab_size
        self.depth, self.C, self.D, self.num_heads = depth, embed_dim, embed_dim, num_heads
        self.num_classes = num_classes
        self.patch_nums: Tuple[int, ...] = tuple(patch_nums)
        self.L = sum(pn**2 for pn in self.patch_nums)
        self.first_l = self.patch_nums[0] ** 2
        self.begin_ends: List[Tuple[int, int]] = []  # [begin, end) of each scale in the L tokens
        cur = 0
        for pn in self.patch_nums:
            self.begin_ends.append((cur, cur + pn * pn))
            cur += pn * pn

        init_std = math.sqrt(1 / self.C / 3)
        # 1. word embedding of the teacher-forcing code maps
        self.word_embed = nn.Linear(self.Cvae, self.C)
        # 2. class embedding (index num_classes = the null class used for guidance) and sos position
        self.class_emb = nn.Embedding(num_classes + 1, self.C)
        nn.init.trunc_normal_(self.class_emb.weight.data, mean=0, std=init_std)
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, self.C))
        nn.init.trunc_normal_(self.pos_start.data, mean=0, std=init_std)
        # 3. absolute position embedding per token, and a level embedding per scale
        self.pos_1LC = nn.Parameter(torch.empty(1, self.L, self.C))
        nn.init.trunc_normal_(self.pos_1LC.data, mean=0, std=init_std)
        self.lvl_embed = nn.Embedding(len(self.patch_nums), self.C)
        nn.init.trunc_normal_(self.lvl_embed.weight.data, mean=0, std=init_std)
        # 4. blocks (d36-s shares one AdaLN projection across all blocks)
        self.shared_ada_lin = (
            nn.Sequential(nn.SiLU(inplace=False), SharedAdaLin(self.D, 6 * self.C)) if shared_aln else nn.Identity()
        )
        norm_layer = lambda dim, elementwise_affine=True: nn.LayerNorm(
            dim, eps=norm_eps, elementwise_affine=elementwise_affine
        )  # noqa: E731
        self.drop_path_rate = drop_path_rate
        dpr = [
            drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)
        ]  # linearly increasing stochastic depth
        self.blocks = nn.ModuleList(
            [
                AdaLNSelfAttn(
                    block_idx=i,
                    embed_dim=self.C,
                    cond_dim=self.D,
                    shared_aln=shared_aln,
                    norm_layer=norm_layer,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[i],
                    attn_l2_norm=attn_l2_norm,
                )
                for i in range(depth)
            ]
        )
        # 5. block-causal mask for teacher forcing: token i sees token j iff level(j) <= level(i)
        d_1L1 = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(self.patch_nums)]).view(1, self.L, 1)
        dT_11L = d_1L1.transpose(1, 2)
        self.register_buffer("lvl_1L", dT_11L[:, 0].contiguous())
        self.register_buffer(
            "attn_bias_for_masking",
            torch.where(d_1L1 >= dT_11L, 0.0, -torch.inf).reshape(1, 1, self.L, self.L).contiguous(),
        )
        # 6. head
        self.head_nm = AdaLNBeforeHead(self.C, self.D, norm_layer=norm_layer)
        self.head = nn.Linear(self.C, self.V)

    @classmethod
    def from_config(cls, config: VARConfig, vae: VQVAE) -> "VAR":
        if tuple(vae.v_patch_nums) != tuple(config.patch_nums):
            raise ValueError(f"VAR patch_nums {config.patch_nums} differ from the tokenizer's {vae.v_patch_nums}")
        return cls(vae_local=vae, **config.var_kwargs())

    # ---- pieces shared by teacher forcing and sampling ----
    def get_logits(
        self, h_BLC: torch.Tensor, cond_BD: torch.Tensor, head_mod: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        return self.head(self.head_nm(h_BLC.float(), cond_BD, head_mod).float()).float()  # (B, L, V)

    def block_modulations(self, cond_BD: torch.Tensor) -> List[torch.Tensor]:
        """Each block's AdaLN modulation (B, 1, 6, C); constant over scales, so sampling computes it once."""
        g = self.shared_ada_lin(cond_BD)
        return [b.modulation(g) for b in self.blocks]

    def next_scale_hidden(
        self, x_BlC: torch.Tensor, kv_cache: KVCache, mods: List[torch.Tensor], attn_bias: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Tokens of the next scale(s) through every block, attending over the cache, which each block
        extends with their keys/values (the caller advances it). ``attn_bias`` is needed only when
        several scales go in at once. Returns (B, l, C)."""
        for b, blk in enumerate(self.blocks):
            x_BlC = blk(x_BlC, None, attn_bias=attn_bias, kv_cache=kv_cache, mod_B16C=mods[b])
        return x_BlC

    def next_scale_logits(
        self,
        x_BlC: torch.Tensor,
        kv_cache: KVCache,
        mods: List[torch.Tensor],
        cond_BD: torch.Tensor,
        head_mod: torch.Tensor,
    ) -> torch.Tensor:
        """``next_scale_hidden`` and the head: (B, l, V)."""
        return self.get_logits(self.next_scale_hidden(x_BlC, kv_cache, mods), cond_BD, head_mod)

    # ---- teacher forcing ----
    def forward(
        self,
        label_B: torch.LongTensor,
        x_BLCv_wo_first_l: torch.Tensor,
        prog_si: int = -1,
        cond_drop_rate: Optional[float] = None,
    ) -> torch.Tensor:
        """Teacher-forced logits (B, L, V), or (B, end of scale ``prog_si``, V) in progressive training.

        ``x_BLCv_wo_first_l`` is ``vae.quantize.idxBl_to_var_input(gt_idx)``: (B, L - first_l, Cvae).
        ``prog_si`` >= 0 computes only scales 0..prog_si (progressive training; -1 = all).
        Class dropout replaces labels by the null class with probability ``cond_drop_rate`` (None =
        the config's), only in training mode; a trainer that draws its own dropout passes 0.
        """
        ed = self.begin_ends[prog_si][1] if prog_si >= 0 else self.L
        B = x_BLCv_wo_first_l.shape[0] if x_BLCv_wo_first_l is not None else label_B.shape[0]
        p_drop = self.config.cond_drop_rate if cond_drop_rate is None else cond_drop_rate
        with torch.autocast(device_type=label_B.device.type, enabled=False):
            if self.training and p_drop > 0:
                label_B = torch.where(torch.rand(B, device=label_B.device) < p_drop, self.num_classes, label_B)
            cond_BD = self.class_emb(label_B)
            sos = cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
            if ed <= self.first_l:
                x_BLC = sos
            else:
                x_BLC = torch.cat((sos, self.word_embed(x_BLCv_wo_first_l[:, : ed - self.first_l].float())), dim=1)
            x_BLC = x_BLC + self.lvl_embed(self.lvl_1L[:, :ed].expand(B, -1)) + self.pos_1LC[:, :ed]
        attn_bias = self.attn_bias_for_masking[:, :, :ed, :ed]
        g = self.shared_ada_lin(cond_BD)
        # the blocks run in the autocast dtype when mixed precision is on (a tiny matmul reveals it)
        dt = torch.matmul(x_BLC.new_ones(2, 2), x_BLC.new_ones(2, 2)).dtype
        x_BLC, g = x_BLC.to(dt), g.to(dt)
        for b in self.blocks:
            x_BLC = b(x=x_BLC, cond_BD=g, attn_bias=attn_bias)
        return self.get_logits(x_BLC.float(), cond_BD)

    # ---- init (reference recipe) ----
    def init_weights(self, init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=0.02, conv_std_or_gain=0.02):
        """Reference initialisation: truncated-normal linears/embeddings (std sqrt(1/3C) when
        ``init_std < 0``), residual projections scaled by 1/sqrt(2*depth), a small head, and AdaLN
        gammas near zero so every block starts close to the identity."""
        if init_std < 0:
            init_std = (1 / self.C / 3) ** 0.5
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight.data, std=init_std)
                if m.bias is not None:
                    m.bias.data.zero_()
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight.data, std=init_std)
                if m.padding_idx is not None:
                    m.weight.data[m.padding_idx].zero_()
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                if m.weight is not None:
                    m.weight.data.fill_(1.0)
                if m.bias is not None:
                    m.bias.data.zero_()
        if init_head >= 0:
            self.head.weight.data.mul_(init_head)
            self.head.bias.data.zero_()
        self.head_nm.ada_lin[-1].weight.data.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.data.zero_()
        for sab in self.blocks:
            sab.attn.proj.weight.data.div_(math.sqrt(2 * self.depth))
            sab.ffn.fc2.weight.data.div_(math.sqrt(2 * self.depth))
            if hasattr(sab, "ada_lin"):
                sab.ada_lin[-1].weight.data[2 * self.C :].mul_(init_adaln)
                sab.ada_lin[-1].weight.data[: 2 * self.C].mul_(init_adaln_gamma)
                sab.ada_lin[-1].bias.data.zero_()
            else:
                sab.ada_gss.data[:, :, 2:].mul_(init_adaln)
                sab.ada_gss.data[:, :, :2].mul_(init_adaln_gamma)

    def extra_repr(self):
        return f"drop_path_rate={self.drop_path_rate:g}"
