"""Model configurations: frozen dataclasses, one why-comment per field, and a preset registry.

Derived sizes (width = 64*depth, heads = depth, drop_path = 0.1*depth/24, L, latent size, ...) are
computed here and nowhere else. ``VQVAEConfig`` / ``VARConfig`` keyword names follow the reference
code (FoundationVision/VAR) so that reference scripts port by changing imports.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from nextscale.errors import NextScaleError

__all__ = [
    "VQVAEConfig",
    "VARConfig",
    "ModelConfig",
    "PRESETS",
    "get_preset",
    "list_presets",
    "ConfigError",
    "scale_schedule_256",
    "scale_schedule_512",
]

#: The released 256px schedule: 10 scales, 680 tokens.
scale_schedule_256: Tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
#: The released 512px schedule (d36-s): 10 scales, 2240 tokens.
scale_schedule_512: Tuple[int, ...] = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


class ConfigError(NextScaleError, ValueError):
    """A bad configuration value or key; the message says how to fix it."""


def _tuple(x) -> tuple:
    return tuple(int(v) for v in x) if isinstance(x, (list, tuple)) else x


def _check_keys(cls, d: Mapping[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    for k in d:
        if k not in names:
            near = difflib.get_close_matches(k, sorted(names), n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"valid keys: {', '.join(sorted(names))}"
            raise ConfigError(f"{cls.__name__}: unknown key {k!r}; {hint}")


class ConfigBase:
    def to_dict(self) -> Dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        d = dict(d)
        d.pop("_class_name", None)
        d.pop("_nextscale_version", None)
        _check_keys(cls, d)
        d = {k: _tuple(v) for k, v in d.items()}
        return cls(**d)

    def replace(self, **changes):
        _check_keys(type(self), changes)
        return dataclasses.replace(self, **{k: _tuple(v) for k, v in changes.items()})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


@dataclass(frozen=True)
class VQVAEConfig(ConfigBase):
    """The multi-scale residual VQ-VAE (tokenizer)."""

    # Codebook size V: 4096 in the release; more codes = finer tokens but a larger softmax in VAR.
    vocab_size: int = 4096
    # Latent channels Cvae of each code vector: 32 in the release (the VAR word_embed input).
    z_channels: int = 32
    # Base channel width of encoder/decoder: 160 in the release; the main cost knob of the decoder.
    ch: int = 160
    # Channel multipliers per resolution level; len-1 halvings = downsample (16x for 5 levels).
    ch_mult: Tuple[int, ...] = (1, 1, 2, 2, 4)
    # Residual blocks per level (decoder uses one more), as in the VQGAN family.
    num_res_blocks: int = 2
    # Dropout in the residual blocks: 0 for the release; only a regulariser for training.
    dropout: float = 0.0
    # Commitment weight of the VQ loss (VQGAN/SD use 0.25).
    beta: float = 0.25
    # Nearest code by cosine (z-normalised) instead of L2; the release uses L2.
    using_znorm: bool = False
    # Kernel size of quant_conv / post_quant_conv around the quantiser.
    quant_conv_ks: int = 3
    # phi(h) = (1-r)*h + r*conv(h): how much the per-scale refinement conv contributes.
    quant_resi: float = 0.5
    # 0: one phi per scale; 1: one phi for all; n>1: n phis shared by nearest tick (release: 4).
    share_quant_resi: int = 4
    # Number of non-shared phis when share_quant_resi == 0 (0 = one per scale).
    default_qresi_counts: int = 0
    # Side lengths h_k = w_k of the token maps r_1..r_K; the last equals the latent size.
    v_patch_nums: Tuple[int, ...] = scale_schedule_256
    # Image channels (RGB).
    in_channels: int = 3
    # Self-attention in the lowest-resolution level (VQGAN f16 config) and in the middle block.
    using_sa: bool = True
    using_mid_sa: bool = True

    def __post_init__(self):
        check_positive(self, "vocab_size", "z_channels", "ch", "num_res_blocks", "quant_conv_ks", "in_channels")
        if not self.ch_mult or any(m <= 0 for m in self.ch_mult):
            raise ConfigError(f"VQVAEConfig.ch_mult must be positive integers, got {self.ch_mult}")
        if self.ch % 32 != 0 or any((self.ch * m) % 32 for m in self.ch_mult):
            raise ConfigError(
                f"VQVAEConfig.ch={self.ch}: every level width must be a multiple of 32 (GroupNorm(32)); use ch=32, "
                "64, 128, 160 ..."
            )
        _check_schedule(self.v_patch_nums, "VQVAEConfig.v_patch_nums")
        if self.share_quant_resi < 0:
            raise ConfigError(
                "VQVAEConfig.share_quant_resi must be >= 0 (0 = non-shared, 1 = shared, n = partially shared)"
            )
        if not 0.0 <= abs(self.quant_resi) <= 1.0:
            raise ConfigError(f"VQVAEConfig.quant_resi must be in [-1, 1], got {self.quant_resi}")

    @property
    def downsample(self) -> int:
        """Image pixels per latent cell along one side."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def resolution(self) -> int:
        """Image side length that this schedule's last scale covers."""
        return self.v_patch_nums[-1] * self.downsample


class TransformerSizes:
    """The sizes derived from ``depth`` and their checks, shared by the VAR config and the AR
    baseline's (``models/ar.py``): the one place they are computed."""

    def _check_transformer(self) -> None:
        n = type(self).__name__
        check_positive(self, "depth", "num_classes")
        if self.embed_dim is not None and self.embed_dim <= 0:
            raise ConfigError(f"{n}.embed_dim must be positive (or None for 64*depth)")
        if self.num_heads is not None and self.num_heads <= 0:
            raise ConfigError(f"{n}.num_heads must be positive (or None for depth)")
        if self.width % self.heads != 0:
            raise ConfigError(
                f"{n}: embed_dim {self.width} is not divisible by num_heads {self.heads}; pick num_heads dividing it"
            )
        for name in ("drop_rate", "attn_drop_rate", "cond_drop_rate"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"{n}.{name} must be in [0, 1), got {v}")
        if self.drop_path_rate is not None and not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"{n}.drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    @property
    def width(self) -> int:  # C: 64*depth unless given (the paper's scaling rule)
        return self.embed_dim if self.embed_dim is not None else 64 * self.depth

    @property
    def heads(self) -> int:  # depth unless given, so head_dim stays 64
        return self.num_heads if self.num_heads is not None else self.depth

    @property
    def dpr(self) -> float:  # stochastic depth at the last block
        return self.drop_path_rate if self.drop_path_rate is not None else 0.1 * self.depth / 24


@dataclass(frozen=True)
class VARConfig(TransformerSizes, ConfigBase):
    """The next-scale prediction transformer. ``None`` sizes are derived from ``depth``."""

    # Number of AdaLN transformer blocks; the release family is d16/d20/d24/d30/d36.
    depth: int = 16
    # Width C; None -> 64*depth (the paper's scaling rule).
    embed_dim: Optional[int] = None
    # Attention heads; None -> depth (so head_dim stays 64).
    num_heads: Optional[int] = None
    # Class count; the null (unconditional) class is index num_classes.
    num_classes: int = 1000
    # MLP hidden = mlp_ratio * C.
    mlp_ratio: float = 4.0
    # Dropout after attention projection / MLP; 0 in the release.
    drop_rate: float = 0.0
    # Attention-probability dropout; 0 in the release.
    attn_drop_rate: float = 0.0
    # Stochastic depth at the last block (linearly increasing); None -> 0.1*depth/24.
    drop_path_rate: Optional[float] = None
    # LayerNorm epsilon.
    norm_eps: float = 1e-6
    # One AdaLN projection shared by all blocks (d36-s) instead of one per block.
    shared_aln: bool = False
    # Probability of replacing the class by the null class in training (enables CFG).
    cond_drop_rate: float = 0.1
    # Cosine attention: L2-normalised q, k with a learnable per-head scale (stabilises big models).
    attn_l2_norm: bool = True
    # Token-map side lengths per scale; must match the tokenizer's v_patch_nums.
    patch_nums: Tuple[int, ...] = scale_schedule_256

    def __post_init__(self):
        self._check_transformer()
        _check_schedule(self.patch_nums, "VARConfig.patch_nums")

    @property
    def L(self) -> int:
        return sum(pn * pn for pn in self.patch_nums)

    def var_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of the reference-compatible ``VAR(vae_local, **kwargs)``."""
        return dict(
            num_classes=self.num_classes,
            depth=self.depth,
            embed_dim=self.width,
            num_heads=self.heads,
            mlp_ratio=self.mlp_ratio,
            drop_rate=self.drop_rate,
            attn_drop_rate=self.attn_drop_rate,
            drop_path_rate=self.dpr,
            norm_eps=self.norm_eps,
            shared_aln=self.shared_aln,
            cond_drop_rate=self.cond_drop_rate,
            attn_l2_norm=self.attn_l2_norm,
            patch_nums=self.patch_nums,
        )


@dataclass(frozen=True)
class ModelConfig(ConfigBase):
    """A tokenizer + transformer pair; the schedules must agree."""

    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    var: VARConfig = field(default_factory=VARConfig)

    def __post_init__(self):
        if tuple(self.vqvae.v_patch_nums) != tuple(self.var.patch_nums):
            raise ConfigError(
                f"scale schedules differ: vqvae.v_patch_nums={self.vqvae.v_patch_nums} vs "
                f"var.patch_nums={self.var.patch_nums}; use the same tuple for both"
            )

    @property
    def resolution(self) -> int:
        return self.vqvae.resolution

    def to_dict(self):
        return {"vqvae": self.vqvae.to_dict(), "var": self.var.to_dict()}

    @classmethod
    def from_dict(cls, d):
        _check_keys(cls, d)
        return cls(vqvae=VQVAEConfig.from_dict(d.get("vqvae", {})), var=VARConfig.from_dict(d.get("var", {})))


def check_positive(obj, *names):
    for n in names:
        v = getattr(obj, n)
        if not isinstance(v, int) or v <= 0:
            raise ConfigError(f"{type(obj).__name__}.{n} must be a positive integer, got {v!r}")


def _check_schedule(pns, what):
    if not pns or any((not isinstance(p, int)) or p <= 0 for p in pns):
        raise ConfigError(f"{what} must be a non-empty tuple of positive ints, got {pns!r}")
    if any(b <= a for a, b in zip(pns, pns[1:])):
        raise ConfigError(f"{what} must be strictly increasing (coarse to fine), got {pns!r}")


def _release(depth: int, **var) -> ModelConfig:
    return ModelConfig(vqvae=VQVAEConfig(), var=VARConfig(depth=depth, **var))


#: name -> ModelConfig. Release presets match the released checkpoints exactly.
PRESETS: Dict[str, ModelConfig] = {
    "d16": _release(16),
    "d20": _release(20),
    "d24": _release(24),
    "d30": _release(30),
    "d36": ModelConfig(
        vqvae=VQVAEConfig(v_patch_nums=scale_schedule_512),
        var=VARConfig(depth=36, shared_aln=True, patch_nums=scale_schedule_512),
    ),
    # Tiny: tests. 64px images, downsample 16 -> 4x4 latent, like the golden fixture.
    "tiny": ModelConfig(
        vqvae=VQVAEConfig(vocab_size=64, z_channels=8, ch=32, v_patch_nums=(1, 2, 3, 4)),
        var=VARConfig(depth=2, embed_dim=128, num_heads=2, num_classes=10, patch_nums=(1, 2, 3, 4), drop_path_rate=0.0),
    ),
    # Small data (MNIST-sized, the bundled default model): 32px, downsample 4 -> 8x8 latent,
    # 5 scales ending at 8x8 (121 tokens); 1.0M-parameter tokenizer, 1.9M-parameter transformer,
    # so both fit in ~12 MB of fp32 safetensors and train in about an hour on a 2-core CPU.
    "mnist": ModelConfig(
        vqvae=VQVAEConfig(
            vocab_size=256,
            z_channels=16,
            ch=32,
            ch_mult=(1, 2, 2),
            num_res_blocks=1,
            v_patch_nums=(1, 2, 4, 6, 8),
            using_sa=False,
        ),
        var=VARConfig(
            depth=6, embed_dim=128, num_heads=2, num_classes=10, patch_nums=(1, 2, 4, 6, 8), drop_path_rate=0.0
        ),
    ),
    # A third of the mnist transformer (depth 2) on the same tokenizer: the refiner that predicts the
    # last scales after the default model drafted the first ones (sampling's refiner mode).
    "mnist-small": ModelConfig(
        vqvae=VQVAEConfig(
            vocab_size=256,
            z_channels=16,
            ch=32,
            ch_mult=(1, 2, 2),
            num_res_blocks=1,
            v_patch_nums=(1, 2, 4, 6, 8),
            using_sa=False,
        ),
        var=VARConfig(
            depth=2, embed_dim=128, num_heads=2, num_classes=10, patch_nums=(1, 2, 4, 6, 8), drop_path_rate=0.0
        ),
    ),
}


def list_presets():
    return sorted(PRESETS)


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        near = difflib.get_close_matches(str(name), list(PRESETS), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; choose one of: {', '.join(list_presets())}") from None
