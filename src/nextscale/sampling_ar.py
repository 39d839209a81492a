"""Sampling the raster-order AR baseline (:class:`~nextscale.models.ar.ARTransformer`): one token per
step with a KV cache, and VAR's sampler options (``SamplingSettings``: guidance, top-k / top-p; a
``torch.Generator``).

Random numbers: only when labels are None, ``multinomial(uniform (1, num_classes), B)`` (as VAR's
``generate``); then per position ``multinomial(softmax(masked guided logits), 1)`` of shape (B, 1).

Temperature: the guided logits of position i are multiplied by ``1 / tau_i`` (a number, or one per
position); tau = 1 (the default) skips it.

Guidance: ``logits = (1 + t_i) * cond - t_i * uncond`` at position i. ``guidance_schedule="linear"``
ramps ``t_i = cfg * i / (L - 1)`` over the raster positions (VAR's ramp over scales carried over to
positions; the first token is sampled unguided), "constant" uses ``t_i = cfg`` (LlamaGen's); a
list gives one weight per position. All-zero weights skip the unconditional half of the batch.
``more_smooth`` (VAR's Gumbel smoothing of soft multi-scale codes) and the multi-scale speed-ups have no
meaning here and are refused (``HONOURED``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from nextscale.errors import NextScaleError
from nextscale.models.ar import ARTransformer
from nextscale.models.kv_cache import KVCache
from nextscale.models.vqvae import VQVAE
from nextscale.sampling import (
    CALL_DEFAULTS,
    SamplingSettings,
    guidance_weights,
    per_scale,
    resolve_labels,
    sample_top_k_top_p_,
)

__all__ = ["generate_ar", "ARGenerationOutput", "check_tokenizer_fits"]

#: callback(i, logits_BV, idx_B): after position i is sampled (logits: the guided ones sampled from).
TokenCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass
class ARGenerationOutput:
    idx_BL: torch.Tensor  # (B, L) sampled token ids, raster order
    f_hat: torch.Tensor  # (B, Cvae, side, side) code features, the decoder's input
    labels: torch.Tensor  # (B,) class labels used (num_classes = unconditional)


def check_tokenizer_fits(model: ARTransformer, vae: VQVAE) -> None:
    """The AR model reads the token map of a single-scale tokenizer with its side and codebook."""
    if len(vae.v_patch_nums) != 1 or vae.v_patch_nums[0] != model.side or vae.vocab_size != model.V:
        raise NextScaleError(
            f"the AR model needs a single-scale tokenizer with a {model.side}x{model.side} map and {model.V} codes; "
            f"this one has scales {list(vae.v_patch_nums)} and {vae.vocab_size} codes "
            f"(train one with patch_nums=({model.side},) and vocab_size={model.V}: the train-tokenizer command)"
        )


#: The settings the raster baseline honours; any other one not at its default is refused (one line
#: naming it): more_smooth (VAR's Gumbel smoothing of soft multi-scale codes) and the multi-scale
#: speed-ups have no meaning here.
HONOURED = ("guidance_scale", "guidance_schedule", "top_k", "top_p", "temperature")


@torch.no_grad()
def generate_ar(
    model: ARTransformer,
    vae: Optional[VQVAE],
    B: int,
    label_B=None,
    *,
    generator: Optional[torch.Generator] = None,
    settings: Optional[SamplingSettings] = None,
    callback: Optional[TokenCallback] = None,
    **changes: Any,
) -> ARGenerationOutput:
    """Sample B token maps position by position. ``generator`` None uses the global RNG.

    ``settings`` (default: ``generate``'s, cfg 1.5 without top-k/top-p) says how to sample; ``changes``
    override single settings by name in one ``replace``. ``vae`` None skips building ``f_hat`` (tokens only)."""
    st = (settings or CALL_DEFAULTS).replace(**changes)
    st.refuse(HONOURED, "the raster AR baseline")
    if vae is not None:
        check_tokenizer_fits(model, vae)
    L = model.L
    dev = model.pos_1LC.device
    labels = resolve_labels(label_B, B, model.num_classes, dev, generator)
    ts = guidance_weights(st.guidance_scale, L, st.guidance_schedule)
    taus = per_scale(st.temperature, L, "temperature")
    use_cfg = any(t != 0.0 for t in ts)
    cls_in = torch.cat((labels, torch.full_like(labels, model.num_classes))) if use_cfg else labels

    cond_BD = model.class_emb(cls_in)  # (B2, D)
    mods = model.block_modulations(cond_BD)  # depth x (B2, 1, 6, C), once
    head_mod = model.head_nm.modulation(cond_BD.float())  # (B2, 1, 2, C)
    cache = KVCache(model.depth, L)
    x_BlC = model.start_tokens(cond_BD)  # (B2, 1, C)
    idx_BL = torch.empty(B, L, dtype=torch.long, device=dev)
    for i in range(L):
        logits_BlV = model.next_token_logits(x_BlC, cache, mods, cond_BD, head_mod)  # (B2, 1, V)
        cache.advance(1)
        if use_cfg:
            t = ts[i]
            logits_BlV = (1 + t) * logits_BlV[:B] - t * logits_BlV[B:]
        if i == 0 and not bool(torch.isfinite(logits_BlV).all()):
            raise NextScaleError(
                "the AR model's logits are NaN/inf: its weights are not finite (a broken export or a diverged run)"
            )
        if taus[i] != 1.0:
            logits_BlV = logits_BlV * (1.0 / taus[i])
        if callback is not None:
            lg = logits_BlV[:, 0].clone()
        idx_Bl = sample_top_k_top_p_(logits_BlV, top_k=st.top_k, top_p=st.top_p, generator=generator)  # (B, 1)
        idx_BL[:, i] = idx_Bl[:, 0]
        if callback is not None:
            callback(i, lg, idx_Bl[:, 0])
        if i != L - 1:
            x_BlC = model.token_inputs(idx_Bl, i)
            if use_cfg:
                x_BlC = x_BlC.repeat(2, 1, 1)
    f_hat = vae.idxBl_to_fhat([idx_BL]) if vae is not None else None
    return ARGenerationOutput(idx_BL=idx_BL, f_hat=f_hat, labels=labels)
