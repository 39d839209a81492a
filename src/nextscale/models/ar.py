"""The raster-order AR baseline: a GPT-style class-conditional next-token transformer over ONE token map.

This is the baseline of the VAR paper's ablation (Table 3, "AR" row: the same tokenizer budget and
model size, predicting the h x w tokens of a single-scale VQ-VAE one at a time in raster order).
It reuses VAR's pieces so that the only difference under study is the prediction order:

* the AdaLN block :class:`~nextscale.models.var.AdaLNSelfAttn` (attention with the same q/k
  L2-norm option and the same KV cache) and the AdaLN head :class:`~nextscale.models.var.AdaLNBeforeHead`;
* the class embedding with the null class at index ``num_classes`` (classifier-free guidance);
* width = 64 * depth and heads = depth (:class:`ARConfig`'s derived sizes);
* the reference VAR initialisation (:meth:`ARTransformer.init_weights`).

Shape glossary as in ``models/var.py``: B batch, L = side^2 tokens, l tokens of one step, C width,
V codebook size.

Input sequence (teacher forcing)::

    position 0:      class embedding + pos_start   (the start token; predicts token 0)
    position i > 0:  tok_embed(token i - 1)        (predicts token i)
    every position:  + pos_1LC[i]                  (absolute raster position)

Attention is causal (position i sees positions <= i). Sampling (``nextscale.sampling_ar``) feeds
one position per step through the same blocks with a KV cache. The model holds no device, RNG or
distributed state; the causal mask is a non-persistent buffer (a function of L, not a weight).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from nextscale.configs import ConfigBase, ConfigError, TransformerSizes, check_positive
from nextscale.models.kv_cache import KVCache
from nextscale.models.var import VAR, AdaLNBeforeHead, AdaLNSelfAttn

__all__ = ["ARConfig", "ARTransformer", "AR_PRESETS", "get_ar_preset"]


@dataclass(frozen=True)
class ARConfig(TransformerSizes, ConfigBase):
    """The raster-order baseline. ``None`` sizes are derived from ``depth`` (VAR's rule)."""

    # Number of AdaLN transformer blocks: the size knob, as for VAR (d16 ... d30 in the paper).
    depth: int = 16
    # Width C; None -> 64*depth (VAR's scaling rule, so equal depth = (almost) equal parameters).
    embed_dim: Optional[int] = None
    # Attention heads; None -> depth (head_dim 64, as VAR).
    num_heads: Optional[int] = None
    # Class count; the null (unconditional) class is index num_classes, as in VAR.
    num_classes: int = 1000
    # Codebook size V of the single-scale tokenizer (the same codebook budget as VAR's: 4096 / 256).
    vocab_size: int = 4096
    # Side of the one token map (L = side^2 tokens in raster order): VAR's last scale, 16 at 256 px.
    side: int = 16
    # MLP hidden = mlp_ratio * C.
    mlp_ratio: float = 4.0
    # Dropout after attention projection / MLP; 0 as VAR's release.
    drop_rate: float = 0.0
    # Attention-probability dropout; 0 as VAR's release.
    attn_drop_rate: float = 0.0
    # Stochastic depth at the last block; None -> 0.1*depth/24 (VAR's rule).
    drop_path_rate: Optional[float] = None
    # LayerNorm epsilon.
    norm_eps: float = 1e-6
    # Probability of replacing the class by the null class in training (enables guidance).
    cond_drop_rate: float = 0.1
    # Cosine attention (L2-normalised q, k with a learnable per-head scale), VAR's default.
    attn_l2_norm: bool = True

    def __post_init__(self):
        check_positive(self, "vocab_size", "side")
        self._check_transformer()

    @property
    def L(self) -> int:
        return self.side * self.side


#: name -> ARConfig. Each mirrors the VAR preset of the same size (``configs.PRESETS``).
AR_PRESETS: Dict[str, ARConfig] = {
    # the tiny VAR preset's sizes: 4x4 map of a 64-code tokenizer (tests)
    "ar-tiny": ARConfig(depth=2, embed_dim=128, num_heads=2, num_classes=10, vocab_size=64, side=4, drop_path_rate=0.0),
    # the mnist VAR preset's sizes (1.9M parameters): 8x8 map of a 256-code tokenizer, 32 px digits
    "ar-mnist": ARConfig(
        depth=6, embed_dim=128, num_heads=2, num_classes=10, vocab_size=256, side=8, drop_path_rate=0.0
    ),
    # the paper's ablation sizes at 256 px (16x16 map, 4096 codes)
    "ar-d16": ARConfig(depth=16),
    "ar-d20": ARConfig(depth=20),
    "ar-d24": ARConfig(depth=24),
}


def get_ar_preset(name: str) -> ARConfig:
    if name in AR_PRESETS:
        return AR_PRESETS[name]
    import difflib

    near = difflib.get_close_matches(str(name), list(AR_PRESETS), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    raise ConfigError(f"unknown AR preset {name!r}{hint}; choose one of: {', '.join(sorted(AR_PRESETS))}")


class ARTransformer(nn.Module):
    """Class-conditional next-token transformer over one raster-ordered token map."""

    def __init__(self, config: ARConfig):
        super().__init__()
        self.config = config
        self.depth, self.C, self.D, self.num_heads = config.depth, config.width, config.width, config.heads
        self.num_classes, self.V, self.side, self.L = config.num_classes, config.vocab_size, config.side, config.L
        init_std = math.sqrt(1 / self.C / 3)
        # 1. token embedding of the previous token (ids; no code vectors: the baseline does not need the tokenizer)
        self.tok_embed = nn.Embedding(self.V, self.C)
        # 2. class embedding (index num_classes = the null class for guidance) and the start position
        self.class_emb = nn.Embedding(self.num_classes + 1, self.C)
        self.pos_start = nn.Parameter(torch.empty(1, 1, self.C))
        # 3. absolute raster position of every token
        self.pos_1LC = nn.Parameter(torch.empty(1, self.L, self.C))
        for t in (self.tok_embed.weight, self.class_emb.weight, self.pos_start, self.pos_1LC):
            nn.init.trunc_normal_(t.data, mean=0, std=init_std)
        # 4. VAR's AdaLN blocks
        norm_layer = lambda dim, elementwise_affine=True: nn.LayerNorm(
            dim, eps=config.norm_eps, elementwise_affine=elementwise_affine
        )  # noqa: E731
        d = config.depth
        dpr = [config.dpr * i / (d - 1) if d > 1 else 0.0 for i in range(d)]
        self.blocks = nn.ModuleList(
            [
                AdaLNSelfAttn(
                    block_idx=i,
                    embed_dim=self.C,
                    cond_dim=self.D,
                    shared_aln=False,
                    norm_layer=norm_layer,
                    num_heads=self.num_heads,
                    mlp_ratio=config.mlp_ratio,
                    drop=config.drop_rate,
                    attn_drop=config.attn_drop_rate,
                    drop_path=dpr[i],
                    attn_l2_norm=config.attn_l2_norm,
                )
                for i in range(d)
            ]
        )
        # 5. causal mask of teacher forcing (0 where j <= i, -inf above the diagonal); derived, so not saved
        causal = torch.full((self.L, self.L), -torch.inf).triu_(1)
        self.register_buffer("attn_bias_for_masking", causal.view(1, 1, self.L, self.L), persistent=False)
        # 6. head
        self.head_nm = AdaLNBeforeHead(self.C, self.D, norm_layer=norm_layer)
        self.head = nn.Linear(self.C, self.V)

    @classmethod
    def from_config(cls, config: ARConfig) -> "ARTransformer":
        return cls(config)

    # ---- pieces shared by teacher forcing and sampling ----
    def start_tokens(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """The position-0 input (B, 1, C): class embedding + start position + position 0."""
        return cond_BD.unsqueeze(1) + self.pos_start + self.pos_1LC[:, :1]

    def token_inputs(self, idx_Bl: torch.Tensor, start: int) -> torch.Tensor:
        """Inputs (B, l, C) of positions start+1 .. start+l from the tokens at start .. start+l-1."""
        l = idx_Bl.shape[1]
        return self.tok_embed(idx_Bl) + self.pos_1LC[:, start + 1 : start + 1 + l]

    def block_modulations(self, cond_BD: torch.Tensor) -> List[torch.Tensor]:
        """Each block's AdaLN modulation (B, 1, 6, C); constant over positions, computed once in sampling."""
        return [b.modulation(cond_BD) for b in self.blocks]

    def get_logits(
        self, h_BLC: torch.Tensor, cond_BD: torch.Tensor, head_mod: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        return self.head(self.head_nm(h_BLC.float(), cond_BD, head_mod).float()).float()

    def next_token_logits(
        self,
        x_BlC: torch.Tensor,
        kv_cache: KVCache,
        mods: List[torch.Tensor],
        cond_BD: torch.Tensor,
        head_mod: torch.Tensor,
    ) -> torch.Tensor:
        """New positions (B, l, C) through every block (attending over the cache, which each block
        extends; the caller advances it) and the head -> (B, l, V). Without a mask, so l new
        positions see each other: call it with l = 1 (or prefill with the causal mask yourself)."""
        for b, blk in enumerate(self.blocks):
            x_BlC = blk(x_BlC, None, attn_bias=None, kv_cache=kv_cache, mod_B16C=mods[b])
        return self.get_logits(x_BlC, cond_BD, head_mod)

    # ---- teacher forcing ----
    def forward(
        self, label_B: torch.LongTensor, idx_BL: torch.LongTensor, cond_drop_rate: Optional[float] = None
    ) -> torch.Tensor:
        """Teacher-forced logits (B, L, V): position i predicts token i from the class and tokens < i.

        ``idx_BL`` are the raster-ordered token ids (B, L) (the last input token is not needed).
        Class dropout (null class with probability ``cond_drop_rate``, None = the config's) happens
        only in training mode; a trainer drawing its own dropout passes 0.
        """
        B, L = idx_BL.shape
        if L != self.L:
            raise ValueError(f"expected {self.L} tokens per image ({self.side}x{self.side}), got {L}")
        p_drop = self.config.cond_drop_rate if cond_drop_rate is None else cond_drop_rate
        with torch.autocast(device_type=label_B.device.type, enabled=False):
            if self.training and p_drop > 0:
                label_B = torch.where(torch.rand(B, device=label_B.device) < p_drop, self.num_classes, label_B)
            cond_BD = self.class_emb(label_B)
            x_BLC = torch.cat((self.start_tokens(cond_BD), self.token_inputs(idx_BL[:, :-1], 0)), dim=1)
        # the blocks run in the autocast dtype when mixed precision is on (as VAR.forward)
        dt = torch.matmul(x_BLC.new_ones(2, 2), x_BLC.new_ones(2, 2)).dtype
        x_BLC, g = x_BLC.to(dt), cond_BD.to(dt)
        for b in self.blocks:
            x_BLC = b(x=x_BLC, cond_BD=g, attn_bias=self.attn_bias_for_masking)
        return self.get_logits(x_BLC.float(), cond_BD)

    # ---- init (VAR's reference recipe) ----
    def init_weights(self, init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=0.02):
        """VAR's initialisation, the same function (``VAR.init_weights``: the blocks, head and AdaLN
        layers have VAR's names here, and the AR has nothing VAR's recipe would not cover)."""
        VAR.init_weights(
            self, init_adaln=init_adaln, init_adaln_gamma=init_adaln_gamma, init_head=init_head, init_std=init_std
        )

    def extra_repr(self) -> str:
        return f"side={self.side}, L={self.L}, V={self.V}"
