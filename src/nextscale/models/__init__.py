"""Models: the multi-scale VQ-VAE (tokenizer) and the VAR transformer."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from nextscale.configs import ModelConfig
from nextscale.models.quantizer import VectorQuantizer2
from nextscale.models.var import VAR
from nextscale.models.vqvae import VQVAE

__all__ = ["VQVAE", "VAR", "VectorQuantizer2", "build_from_config"]


def build_from_config(
    config: ModelConfig, seed: Optional[int] = 0, device="cpu", init_var: bool = True
) -> Tuple[VQVAE, VAR]:
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
