"""Multi-scale residual vector quantiser (VAR, Alg. 1 and 2).

An encoder feature map f (B, Cvae, H, W) becomes K token maps r_1..r_K of sizes pn_k x pn_k:

    f_rest = f;  f_hat = 0
    for k: r_k = nearest_code(area_downsample(f_rest, pn_k))
           h_k = phi_k(bicubic_upsample(embed(r_k), H))      # phi = 3x3 conv refinement
           f_hat += h_k;  f_rest -= h_k

Decoding sums the same h_k. The ``phi`` convolutions are non-shared (one per scale), shared (one
for all) or partially shared (n convs, scale k uses the one whose tick is nearest to k/(K-1)).
Parameter and buffer names follow the reference implementation so released weights load strictly.

Shapes: B batch, Cvae code channels, V codebook size, K scales, l = pn*pn tokens of one scale.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["VectorQuantizer2", "Phi", "PhiShared", "PhiPartiallyShared", "PhiNonShared", "phi_index"]


def _ticks(n: int) -> np.ndarray:
    # The reference's tick positions in [0, 1]; 4 convs get ticks at 1/12 ... 11/12.
    return np.linspace(1 / 3 / n, 1 - 1 / 3 / n, n) if n == 4 else np.linspace(1 / 2 / n, 1 - 1 / 2 / n, n)


def phi_index(si: int, num_scales: int, num_phis: int) -> int:
    """Which of ``num_phis`` convs scale ``si`` of ``num_scales`` uses (nearest tick to si/(K-1)).

    Computed in float64 numpy exactly as the reference does, so ties resolve identically
    (e.g. [0, 0, 1, 1, 1, 2, 2, 3, 3, 3] for the released 10-scale models).
    """
    at = si / (num_scales - 1) if num_scales > 1 else 0.0
    return int(np.argmin(np.abs(_ticks(num_phis) - at)).item())


class Phi(nn.Conv2d):
    """phi(h) = (1 - r) * h + r * conv3x3(h): a residual refinement of an upsampled code map."""

    def __init__(self, embed_dim: int, quant_resi: float):
        super().__init__(embed_dim, embed_dim, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw.mul(1 - self.resi_ratio) + super().forward(h_BChw).mul_(self.resi_ratio)


class PhiShared(nn.Module):
    """One phi for every scale (``share_quant_resi=1``); state-dict key ``qresi``."""

    def __init__(self, qresi: nn.Module):
        super().__init__()
        self.qresi = qresi

    def __getitem__(self, _at: float) -> nn.Module:
        return self.qresi

    def at_scale(self, si: int, num_scales: int) -> nn.Module:
        return self.qresi


class PhiPartiallyShared(nn.Module):
    """n phis shared across K scales by nearest tick (``share_quant_resi=n``, release: n=4)."""

    def __init__(self, qresi_ls: nn.ModuleList):
        super().__init__()
        self.qresi_ls = qresi_ls
        self.ticks = _ticks(len(qresi_ls))

    def __getitem__(self, at_from_0_to_1: float) -> nn.Module:  # reference-style access
        return self.qresi_ls[int(np.argmin(np.abs(self.ticks - at_from_0_to_1)).item())]

    def at_scale(self, si: int, num_scales: int) -> nn.Module:
        return self.qresi_ls[phi_index(si, num_scales, len(self.qresi_ls))]

    def extra_repr(self) -> str:
        return f"ticks={self.ticks}"


class PhiNonShared(nn.ModuleList):
    """One phi per scale (``share_quant_resi=0``); keys ``quant_resi.{i}``."""

    def __init__(self, qresi: List[nn.Module]):
        super().__init__(qresi)
        self.ticks = _ticks(len(qresi))

    def __getitem__(self, at_from_0_to_1):  # float: reference-style tick lookup; int: list index
        if isinstance(at_from_0_to_1, (int, slice)):
            return super().__getitem__(at_from_0_to_1)
        return super().__getitem__(int(np.argmin(np.abs(self.ticks - at_from_0_to_1)).item()))

    def at_scale(self, si: int, num_scales: int) -> nn.Module:
        return super().__getitem__(phi_index(si, num_scales, len(self)))


class VectorQuantizer2(nn.Module):
    """Multi-scale residual quantiser with the reference's constructor and method names."""

    def __init__(
        self,
        vocab_size: int,
        Cvae: int,
        using_znorm: bool,
        beta: float = 0.25,
        default_qresi_counts: int = 0,
        v_patch_nums: Sequence[int] = None,
        quant_resi: float = 0.5,
        share_quant_resi: int = 4,
    ):
        super().__init__()
        self.vocab_size, self.Cvae, self.using_znorm, self.beta = vocab_size, Cvae, using_znorm, beta
        self.v_patch_nums: Tuple[int, ...] = tuple(v_patch_nums)
        self.quant_resi_ratio = quant_resi

        def make_phi():
            return Phi(Cvae, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity()

        if share_quant_resi == 0:
            self.quant_resi = PhiNonShared([make_phi() for _ in range(default_qresi_counts or len(self.v_patch_nums))])
        elif share_quant_resi == 1:
            self.quant_resi = PhiShared(make_phi())
        else:
            self.quant_resi = PhiPartiallyShared(nn.ModuleList([make_phi() for _ in range(share_quant_resi)]))

        # Running per-scale code-hit counts (used for usage statistics in tokenizer training).
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.v_patch_nums), vocab_size))
        self.record_hit = 0
        self.embedding = nn.Embedding(vocab_size, Cvae)

    # ---- helpers ----
    def phi(self, si: int, num_scales: Optional[int] = None) -> nn.Module:
        return self.quant_resi.at_scale(si, num_scales or len(self.v_patch_nums))

    def eini(self, eini: float) -> None:
        """Codebook init as in the reference: >0 truncated normal std, <0 uniform +-|eini|/V."""
        if eini > 0:
            nn.init.trunc_normal_(self.embedding.weight.data, std=eini)
        elif eini < 0:
            self.embedding.weight.data.uniform_(-abs(eini) / self.vocab_size, abs(eini) / self.vocab_size)

    def nearest_code(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook vector for each row: (N, Cvae) -> (N,)."""
        w_VC = self.embedding.weight.data
        if self.using_znorm:
            return torch.argmax(F.normalize(z_NC, dim=-1) @ F.normalize(w_VC.T, dim=0), dim=1)
        d_NV = torch.sum(z_NC.square(), dim=1, keepdim=True) + torch.sum(w_VC.square(), dim=1)
        d_NV.addmm_(z_NC, w_VC.T, alpha=-2, beta=1)
        return torch.argmin(d_NV, dim=1)

    def upsample_phi(self, si: int, h_BChw: torch.Tensor, H: int, W: int, SN: int) -> torch.Tensor:
        """phi_k(bicubic(h_k)) at full latent size (no resize at the last scale)."""
        if h_BChw.shape[-2:] != (H, W):
            h_BChw = F.interpolate(h_BChw, size=(H, W), mode="bicubic")
        return self.phi(si, SN)(h_BChw)

    # ---- tokenizer training ----
    def forward(self, f_BChw: torch.Tensor, ret_usages: bool = False):
        """Quantise with a straight-through estimator (training path).

        Returns ``(f_hat_BChw, usages or None, vq_loss)``; usages are the % of codes hit per scale
        (from the running hit counts). Hit counts are all-reduced when torch.distributed is up.
        """
        dtype = f_BChw.dtype
        if dtype != torch.float32:
            f_BChw = f_BChw.float()
        B, C, H, W = f_BChw.shape
        f_no_grad = f_BChw.detach()
        f_rest = f_no_grad.clone()
        f_hat = torch.zeros_like(f_rest)
        SN = len(self.v_patch_nums)
        vq_loss = f_BChw.new_zeros(())
        with torch.autocast(device_type=f_BChw.device.type, enabled=False):
            for si, pn in enumerate(self.v_patch_nums):
                rest = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != SN - 1 else f_rest
                idx_N = self.nearest_code(rest.permute(0, 2, 3, 1).reshape(-1, C))
                hit_V = idx_N.bincount(minlength=self.vocab_size).float()
                if self.training and tdist.is_available() and tdist.is_initialized():
                    tdist.all_reduce(hit_V)
                h_BChw = self.embedding(idx_N.view(B, pn, pn)).permute(0, 3, 1, 2).contiguous()
                h_BChw = self.upsample_phi(si, h_BChw, H, W, SN)
                f_hat = f_hat + h_BChw
                f_rest = f_rest - h_BChw.detach()
                if self.training:
                    with torch.no_grad():
                        if self.record_hit == 0:
                            self.ema_vocab_hit_SV[si].copy_(hit_V)
                        elif self.record_hit < 100:
                            self.ema_vocab_hit_SV[si].mul_(0.9).add_(hit_V.mul(0.1))
                        else:
                            self.ema_vocab_hit_SV[si].mul_(0.99).add_(hit_V.mul(0.01))
                # commitment (encoder towards codes) + codebook (codes towards encoder) terms
                vq_loss = vq_loss + F.mse_loss(f_hat.detach(), f_BChw).mul(self.beta) + F.mse_loss(f_hat, f_no_grad)
            if self.training:
                self.record_hit += 1
            vq_loss = vq_loss / SN
            f_hat = (f_hat.detach() - f_no_grad) + f_BChw  # straight-through: gradient flows to the encoder
        usages = None
        if ret_usages:
            world = tdist.get_world_size() if (tdist.is_available() and tdist.is_initialized()) else 1
            margin = world * (f_BChw.numel() / C) / self.vocab_size * 0.08
            usages = [(self.ema_vocab_hit_SV[si] >= margin).float().mean().item() * 100 for si in range(SN)]
        return f_hat.to(dtype), usages, vq_loss

    # ---- reference entry points ----
    def f_to_idxBl_or_fhat(
        self, f_BChw: torch.Tensor, to_fhat: bool, v_patch_nums: Optional[Sequence[Union[int, Tuple[int, int]]]] = None
    ) -> List[torch.Tensor]:
        """Encode features into token ids per scale (list of (B, l_k)) or cumulative f_hat per scale."""
        B, C, H, W = f_BChw.shape
        f_rest = f_BChw.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        hws = [(pn, pn) if isinstance(pn, int) else (pn[0], pn[1]) for pn in (v_patch_nums or self.v_patch_nums)]
        if hws[-1] != (H, W):
            raise ValueError(f"last scale {hws[-1]} must equal the feature map size {(H, W)}")
        SN = len(hws)
        out: List[torch.Tensor] = []
        for si, (ph, pw) in enumerate(hws):
            rest = F.interpolate(f_rest, size=(ph, pw), mode="area") if si != SN - 1 else f_rest
            idx_N = self.nearest_code(rest.permute(0, 2, 3, 1).reshape(-1, C))
            h_BChw = self.embedding(idx_N.view(B, ph, pw)).permute(0, 3, 1, 2).contiguous()
            h_BChw = self.upsample_phi(si, h_BChw, H, W, SN)
            f_hat.add_(h_BChw)
            f_rest.sub_(h_BChw)
            out.append(f_hat.clone() if to_fhat else idx_N.reshape(B, ph * pw))
        return out

    def idx_to_h(self, idx_Bl: torch.Tensor, pn: int) -> torch.Tensor:
        """Token ids (B, l) -> code map (B, Cvae, pn, pn)."""
        B = idx_Bl.shape[0]
        return self.embedding(idx_Bl).transpose(1, 2).reshape(B, self.Cvae, pn, pn)

    def embed_to_fhat(self, ms_h_BChw: List[torch.Tensor], all_to_max_scale: bool = True, last_one: bool = False):
        """Sum per-scale code maps into f_hat (cumulative list, or only the final one)."""
        B = ms_h_BChw[0].shape[0]
        H = W = self.v_patch_nums[-1]
        SN = len(self.v_patch_nums)
        outs = []
        if all_to_max_scale:
            f_hat = ms_h_BChw[0].new_zeros(B, self.Cvae, H, W, dtype=torch.float32)
            for si in range(SN):
                f_hat.add_(self.upsample_phi(si, ms_h_BChw[si], H, W, SN))
                if not last_one:
                    outs.append(f_hat.clone())
        else:  # experimental in the reference: grow f_hat scale by scale instead of working at full size
            f_hat = ms_h_BChw[0].new_zeros(
                B, self.Cvae, self.v_patch_nums[0], self.v_patch_nums[0], dtype=torch.float32
            )
            for si, pn in enumerate(self.v_patch_nums):
                f_hat = F.interpolate(f_hat, size=(pn, pn), mode="bicubic")
                f_hat.add_(self.phi(si, SN)(ms_h_BChw[si]))
                if not last_one:
                    outs.append(f_hat)
        return f_hat if last_one else outs

    def idxBl_to_var_input(self, gt_ms_idx_Bl: List[torch.Tensor]) -> Optional[torch.Tensor]:
        """Teacher-forcing input of VAR: for k = 2..K, area_downsample(f_hat after k-1 scales, pn_k).

        Returns (B, L - l_1, Cvae) float32 (None for a single-scale schedule).
        """
        B = gt_ms_idx_Bl[0].shape[0]
        H = W = self.v_patch_nums[-1]
        SN = len(self.v_patch_nums)
        f_hat = gt_ms_idx_Bl[0].new_zeros(B, self.Cvae, H, W, dtype=torch.float32)
        nxt = []
        for si in range(min(SN - 1, len(gt_ms_idx_Bl))):
            h_BChw = self.idx_to_h(gt_ms_idx_Bl[si], self.v_patch_nums[si])
            f_hat.add_(self.upsample_phi(si, h_BChw, H, W, SN))
            pn_next = self.v_patch_nums[si + 1]
            nxt.append(
                F.interpolate(f_hat, size=(pn_next, pn_next), mode="area").view(B, self.Cvae, -1).transpose(1, 2)
            )
        return torch.cat(nxt, dim=1) if nxt else None

    def get_next_autoregressive_input(self, si: int, SN: int, f_hat: torch.Tensor, h_BChw: torch.Tensor):
        """Add scale ``si``'s code map to f_hat (in place) and return (f_hat, next scale's input map)."""
        HW = self.v_patch_nums[-1]
        f_hat.add_(self.upsample_phi(si, h_BChw, HW, HW, SN))
        if si != SN - 1:
            pn = self.v_patch_nums[si + 1]
            return f_hat, F.interpolate(f_hat, size=(pn, pn), mode="area")
        return f_hat, f_hat

    def extra_repr(self) -> str:
        return f"{self.v_patch_nums}, znorm={self.using_znorm}, beta={self.beta}, quant_resi={self.quant_resi_ratio}"
