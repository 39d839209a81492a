"""Models: the multi-scale VQ-VAE (tokenizer) and the VAR transformer."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from nextscale.configs import ModelConfig
from nextscale.models.quantizer import VectorQuantizer2
from nextscale.models.var import VAR
from nextscale.models.vqvae import VQVAE

__all__ = ["VQVAE", "VAR", "VectorQuantizer2", "build_vae_var", "build_from_config"]


def build_vae_var(device="cpu", patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), V=4096, Cvae=32, ch=160,
                  share_quant_resi=4, num_classes=1000, depth=16, shared_aln=False, attn_l2_norm=True,
                  flash_if_available=True, fused_if_available=True, init_adaln=0.5, init_adaln_gamma=1e-5,
                  init_head=0.02, init_std=-1) -> Tuple[VQVAE, VAR]:
    """The reference's builder, same keywords and derived sizes (width 64*depth, heads = depth,
    drop_path 0.1*depth/24), without patching torch's ``reset_parameters`` process-wide."""
    vae = VQVAE(vocab_size=V, z_channels=Cvae, ch=ch, test_mode=True, share_quant_resi=share_quant_resi,
                v_patch_nums=patch_nums).to(device)
    from nextscale.configs import VARConfig
    vc = VARConfig(depth=depth, num_classes=num_classes, shared_aln=shared_aln, attn_l2_norm=attn_l2_norm,
                   patch_nums=tuple(patch_nums))
    var = VAR.from_config(vc, vae).to(device)
    var.init_weights(init_adaln=init_adaln, init_adaln_gamma=init_adaln_gamma, init_head=init_head, init_std=init_std)
    return vae, var


def build_from_config(config: ModelConfig, seed: Optional[int] = 0, device="cpu", init_var: bool = True) -> Tuple[VQVAE, VAR]:
    """Build (vqvae, var) for a ``ModelConfig`` with the reference's VAR init; ``seed`` makes it reproducible."""
    if seed is not None:
        fork = torch.random.fork_rng(devices=[])
        fork.__enter__()
        torch.manual_seed(seed)
    try:
        vae = VQVAE.from_config(config.vqvae, test_mode=True)
        var = VAR.from_config(config.var, vae)
        if init_var:
            var.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
    finally:
        if seed is not None:
            fork.__exit__(None, None, None)
    return vae.to(device), var.to(device)
