"""The multi-scale VQ-VAE: a VQGAN-style conv encoder/decoder around the residual quantiser.

Image (B, 3, H, W) in [-1, 1]  --encoder-->  (B, Cvae, H/16, W/16)  --quant_conv--> f
f  --multi-scale quantiser-->  token ids r_1..r_K  (and f_hat)
f_hat  --post_quant_conv--> --decoder-->  image in [-1, 1]

Module and parameter names follow the reference (itself the latent-diffusion vq-f16 layout) so the
released ``vae_ch160v4096z32.pth`` loads with ``strict=True``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale.configs import VQVAEConfig
from nextscale.models.quantizer import VectorQuantizer2

__all__ = ["VQVAE", "Encoder", "Decoder"]


def Conv3x3(cin: int, cout: int) -> nn.Conv2d:
    """3x3, stride 1, padding 1: the conv every resolution level of the VQGAN layout uses."""
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1)


def Normalize(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=ch, eps=1e-6, affine=True)


class Upsample2x(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = Conv3x3(ch, ch)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample2x(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, kernel_size=3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, pad=(0, 1, 0, 1)))  # asymmetric pad, as in VQGAN


class ResnetBlock(nn.Module):
    def __init__(self, *, in_channels: int, out_channels: Optional[int] = None, dropout: float = 0.0):
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = Normalize(in_channels)
        self.conv1 = Conv3x3(in_channels, out_channels)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = Conv3x3(out_channels, out_channels)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1, 1, 0) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all h*w positions (fused qkv 1x1 conv)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.C = in_channels
        self.norm = Normalize(in_channels)
        self.qkv = nn.Conv2d(in_channels, 3 * in_channels, 1, 1, 0)
        self.w_ratio = in_channels**-0.5
        self.proj_out = nn.Conv2d(in_channels, in_channels, 1, 1, 0)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)  # 3 x (B, HW, C)
        h = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), scale=self.w_ratio)
        h = h.squeeze(1).transpose(1, 2).reshape(B, C, H, W)
        return x + self.proj_out(h)


def _attn(ch: int, on: bool) -> nn.Module:
    return AttnBlock(ch) if on else nn.Identity()


class Encoder(nn.Module):
    def __init__(
        self,
        *,
        ch=128,
        ch_mult=(1, 2, 4, 8),
        num_res_blocks=2,
        dropout=0.0,
        in_channels=3,
        z_channels,
        double_z=False,
        using_sa=True,
        using_mid_sa=True,
    ):
        super().__init__()
        self.ch, self.num_resolutions, self.num_res_blocks = ch, len(ch_mult), num_res_blocks
        self.downsample_ratio = 2 ** (self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        in_ch_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        block_in = ch
        for i_level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_ch_mult[i_level], ch * ch_mult[i_level]
            for _ in range(num_res_blocks):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, dropout=dropout))
                block_in = block_out
                if i_level == self.num_resolutions - 1 and using_sa:
                    attn.append(AttnBlock(block_in))
            down = nn.Module()
            down.block, down.attn = block, attn
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample2x(block_in)
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=dropout)
        self.mid.attn_1 = _attn(block_in, using_mid_sa)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=dropout)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, 1, 1)

    def forward(self, x):  # (B, 3, H, W) -> (B, Cvae, H/ds, W/ds)
        h = self.conv_in(x)
        for i_level, down in enumerate(self.down):
            for i_block in range(self.num_res_blocks):
                h = down.block[i_block](h)
                if len(down.attn) > 0:
                    h = down.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(
        self,
        *,
        ch=128,
        ch_mult=(1, 2, 4, 8),
        num_res_blocks=2,
        dropout=0.0,
        in_channels=3,
        z_channels,
        using_sa=True,
        using_mid_sa=True,
    ):
        super().__init__()
        self.ch, self.num_resolutions, self.num_res_blocks = ch, len(ch_mult), num_res_blocks
        block_in = ch * ch_mult[-1]
        self.conv_in = Conv3x3(z_channels, block_in)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=dropout)
        self.mid.attn_1 = _attn(block_in, using_mid_sa)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=dropout)
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, dropout=dropout))
                block_in = block_out
                if i_level == self.num_resolutions - 1 and using_sa:
                    attn.append(AttnBlock(block_in))
            up = nn.Module()
            up.block, up.attn = block, attn
            if i_level != 0:
                up.upsample = Upsample2x(block_in)
            self.up.insert(0, up)  # index = resolution level, as in the reference
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, in_channels, 3, 1, 1)

    def forward(self, z):  # (B, Cvae, h, w) -> (B, 3, h*ds, w*ds)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for i_level in reversed(range(self.num_resolutions)):
            up = self.up[i_level]
            for i_block in range(self.num_res_blocks + 1):
                h = up.block[i_block](h)
                if len(up.attn) > 0:
                    h = up.attn[i_block](h)
            if i_level != 0:
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VQVAE(nn.Module):
    """Multi-scale VQ-VAE with the reference's constructor keywords and entry points.

    ``test_mode=True`` (the reference default) freezes the model in eval mode, as used under VAR.
    Extra keywords ``ch_mult``, ``num_res_blocks``, ``in_channels``, ``using_sa``, ``using_mid_sa``
    allow other resolutions/downsampling (e.g. the ``mnist`` preset).
    """

    def __init__(
        self,
        vocab_size=4096,
        z_channels=32,
        ch=128,
        dropout=0.0,
        beta=0.25,
        using_znorm=False,
        quant_conv_ks=3,
        quant_resi=0.5,
        share_quant_resi=4,
        default_qresi_counts=0,
        v_patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
        test_mode=True,
        ch_mult=(1, 1, 2, 2, 4),
        num_res_blocks=2,
        in_channels=3,
        using_sa=True,
        using_mid_sa=True,
    ):
        super().__init__()
        self.config = VQVAEConfig(
            vocab_size=vocab_size,
            z_channels=z_channels,
            ch=ch,
            ch_mult=tuple(ch_mult),
            num_res_blocks=num_res_blocks,
            dropout=dropout,
            beta=beta,
            using_znorm=using_znorm,
            quant_conv_ks=quant_conv_ks,
            quant_resi=quant_resi,
            share_quant_resi=share_quant_resi,
            default_qresi_counts=default_qresi_counts,
            v_patch_nums=tuple(v_patch_nums),
            in_channels=in_channels,
            using_sa=using_sa,
            using_mid_sa=using_mid_sa,
        )
        self.test_mode = test_mode
        self.V = self.vocab_size = vocab_size
        self.Cvae = z_channels
        dd = dict(
            dropout=dropout,
            ch=ch,
            z_channels=z_channels,
            in_channels=in_channels,
            ch_mult=tuple(ch_mult),
            num_res_blocks=num_res_blocks,
            using_sa=using_sa,
            using_mid_sa=using_mid_sa,
        )
        self.encoder = Encoder(double_z=False, **dd)
        self.decoder = Decoder(**dd)
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.quantize = VectorQuantizer2(
            vocab_size=vocab_size,
            Cvae=z_channels,
            using_znorm=using_znorm,
            beta=beta,
            default_qresi_counts=default_qresi_counts,
            v_patch_nums=v_patch_nums,
            quant_resi=quant_resi,
            share_quant_resi=share_quant_resi,
        )
        self.quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, 1, quant_conv_ks // 2)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, 1, quant_conv_ks // 2)
        if test_mode:
            self.eval()
            for p in self.parameters():
                p.requires_grad_(False)

    @classmethod
    def from_config(cls, config: VQVAEConfig, test_mode: bool = True) -> "VQVAE":
        return cls(test_mode=test_mode, **config.to_dict())

    @property
    def v_patch_nums(self) -> Tuple[int, ...]:
        return self.quantize.v_patch_nums

    @property
    def resolution(self) -> int:
        return self.v_patch_nums[-1] * self.downsample

    # ---- training ----
    def forward(self, inp_B3HW: torch.Tensor, ret_usages: bool = False):
        """Training path: returns (reconstruction, usages or None, vq_loss)."""
        f_hat, usages, vq_loss = self.quantize(self.quant_conv(self.encoder(inp_B3HW)), ret_usages=ret_usages)
        return self.decoder(self.post_quant_conv(f_hat)), usages, vq_loss

    # ---- reference entry points ----
    def img_to_f(self, inp_B3HW: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(inp_B3HW))

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat (B, Cvae, h, w) -> image (B, 3, H, W) in [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)

    def img_to_idxBl(
        self, inp_img_no_grad: torch.Tensor, v_patch_nums: Optional[Sequence[Union[int, Tuple[int, int]]]] = None
    ) -> List[torch.LongTensor]:
        return self.quantize.f_to_idxBl_or_fhat(
            self.img_to_f(inp_img_no_grad), to_fhat=False, v_patch_nums=v_patch_nums
        )

    def idxBl_to_fhat(self, ms_idx_Bl: List[torch.Tensor]) -> torch.Tensor:
        hs = [self.quantize.idx_to_h(idx, round(idx.shape[1] ** 0.5)) for idx in ms_idx_Bl]
        return self.quantize.embed_to_fhat(hs, all_to_max_scale=True, last_one=True)

    def idxBl_to_img(self, ms_idx_Bl: List[torch.Tensor], same_shape: bool, last_one: bool = False):
        hs = [self.quantize.idx_to_h(idx, round(idx.shape[1] ** 0.5)) for idx in ms_idx_Bl]
        return self.embed_to_img(hs, all_to_max_scale=same_shape, last_one=last_one)

    def embed_to_img(self, ms_h_BChw: List[torch.Tensor], all_to_max_scale: bool, last_one: bool = False):
        f = self.quantize.embed_to_fhat(ms_h_BChw, all_to_max_scale=all_to_max_scale, last_one=last_one)
        return self.fhat_to_img(f) if last_one else [self.fhat_to_img(x) for x in f]

    def img_to_reconstructed_img(self, x, v_patch_nums=None, last_one: bool = False):
        fs = self.quantize.f_to_idxBl_or_fhat(self.img_to_f(x), to_fhat=True, v_patch_nums=v_patch_nums)
        return self.fhat_to_img(fs[-1]) if last_one else [self.fhat_to_img(f) for f in fs]

    def load_state_dict(self, state_dict: Dict[str, Any], strict: bool = True, assign: bool = False):
        # The hit-count buffer depends on the number of scales, not on weights: tolerate a mismatch
        # (the reference does the same) so a tokenizer can be used with another schedule.
        key = "quantize.ema_vocab_hit_SV"
        if key in state_dict and state_dict[key].shape != self.quantize.ema_vocab_hit_SV.shape:
            state_dict = dict(state_dict)
            state_dict[key] = self.quantize.ema_vocab_hit_SV.clone()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
