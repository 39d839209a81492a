"""Drop-in names for scripts written against the reference code (FoundationVision/VAR).

    from nextscale import VQVAE, VAR, build_vae_var
    vae, var = build_vae_var(device="cpu", depth=16, ...)
    var.load_state_dict(torch.load("var_d16.pth"), strict=True)   # (nextscale.safeload for files)
    img_B3HW = var.autoregressive_infer_cfg(B=4, label_B=207, g_seed=0, cfg=1.5, top_k=900, top_p=0.96)

``VAR`` here is ``nextscale.models.VAR`` plus the reference's sampling entry point: it keeps its
tokenizer (``vae_proxy``, as the reference does) and calls ``nextscale.sampling.generate``. The
library itself passes the tokenizer explicitly and never needs this class.

Reference keywords accepted and ignored, in one place:

- ``flash_if_available``, ``fused_if_available`` (VAR, build_vae_var): attention always goes
  through ``torch.nn.functional.scaled_dot_product_attention``, which picks flash / efficient
  kernels on a GPU by itself; there is no fused-MLP kernel to choose.
- ``test_mode`` (VQVAE) is honoured (eval mode, frozen parameters).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from nextscale import models
from nextscale.accel.cpu import enable_cpu_kernels
from nextscale.configs import VARConfig
from nextscale.models.vqvae import VQVAE
from nextscale.sampling import generate

__all__ = ["VAR", "VQVAE", "build_vae_var"]


class VAR(models.VAR):
    """``nextscale.models.VAR`` with the reference's ``autoregressive_infer_cfg`` and ``vae_proxy``."""

    def __init__(self, vae_local: VQVAE, **kwargs):
        super().__init__(vae_local, **kwargs)
        self.vae_proxy: Tuple[VQVAE] = (vae_local,)  # a tuple keeps the tokenizer out of the state dict
        self.vae_quant_proxy = (vae_local.quantize,)

    @torch.no_grad()
    def autoregressive_infer_cfg(
        self,
        B: int,
        label_B: Optional[Union[int, torch.LongTensor]],
        g_seed: Optional[int] = None,
        cfg: float = 1.5,
        top_k: int = 0,
        top_p: float = 0.0,
        more_smooth: bool = False,
    ) -> torch.Tensor:
        """Sample B images in [0, 1], (B, 3, H, W), exactly like the reference for the same seed.

        ``label_B``: None (random classes), an int (-1 = unconditional) or a (B,) LongTensor.
        ``g_seed``: seeds a fresh generator on the model's device; None uses the global generator.
        """
        vae = self.vae_proxy[0]
        gen = torch.Generator(device=self.lvl_1L.device).manual_seed(g_seed) if g_seed is not None else None
        out = generate(
            self, vae, B=B, label_B=label_B, generator=gen, cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth
        )
        return vae.fhat_to_img(out.f_hat).add_(1).mul_(0.5)


def build_vae_var(
    device="cpu",
    patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    V=4096,
    Cvae=32,
    ch=160,
    share_quant_resi=4,
    num_classes=1000,
    depth=16,
    shared_aln=False,
    attn_l2_norm=True,
    flash_if_available=True,
    fused_if_available=True,
    init_adaln=0.5,
    init_adaln_gamma=1e-5,
    init_head=0.02,
    init_std=-1,
    cpu_kernels: bool = True,
) -> Tuple[VQVAE, VAR]:
    """The reference's builder, same keywords and derived sizes (width 64*depth, heads = depth,
    drop_path 0.1*depth/24), without patching torch's ``reset_parameters`` process-wide.
    ``cpu_kernels`` swaps in ``nextscale.accel.cpu``'s inference kernels (same function)."""
    vae = VQVAE(
        vocab_size=V, z_channels=Cvae, ch=ch, test_mode=True, share_quant_resi=share_quant_resi, v_patch_nums=patch_nums
    ).to(device)
    vc = VARConfig(
        depth=depth,
        num_classes=num_classes,
        shared_aln=shared_aln,
        attn_l2_norm=attn_l2_norm,
        patch_nums=tuple(patch_nums),
    )
    var = VAR(vae_local=vae, **vc.var_kwargs()).to(device)
    var.init_weights(init_adaln=init_adaln, init_adaln_gamma=init_adaln_gamma, init_head=init_head, init_std=init_std)
    if cpu_kernels:
        enable_cpu_kernels(vae)
        enable_cpu_kernels(var)
    return vae, var
