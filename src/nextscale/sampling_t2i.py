"""Text-to-image generation for Infinity: the bitwise sibling of ``nextscale.sampling.generate``.

Coarse to fine over a scale schedule [(h_k, w_k)]: at scale k the transformer (KV-cached) reads the text and the
scales so far and predicts 2 logits for every one of the d' bits of every token; one bit per logit pair is drawn,
the bits become BSQ codes, the codes are added (upsampled) to the running sum, and the running sum, downsampled to
scale k+1, is the next scale's input. The final running sum is decoded by the BSQ-VAE.

Glossary (shape suffixes): B images, bs transformer rows (B, or 2B with guidance: conditional rows first),
l tokens of one scale (h * w), d bits per tokenizer token, D = d' bits per transformer token (4d with spatial
patchify: 2x2 tokenizer tokens per transformer token), N = l * D bits of one scale, C width, H x W the last
tokenizer scale.

Reference semantics kept exactly (README of the Infinity fixtures, 4.4 / 4.6):
  * guidance: the batch is doubled only if some cfg_k != 1; unconditional rows read the learned ``cfg_uncond``
    rows (row b: its first ``lens[b]`` rows, length-matched) or a negative prompt;
    logits = get_logits * (1 / tau_k) (a multiplication by the Python float), then
    ``cfg * cond + (1 - cfg) * uncond`` written exactly so (not ``uncond + cfg * (cond - uncond)``: both differ
    in the last bit);
  * ``cfg_insertion_layer`` 0 = guidance on the logits; -n = on the hidden states after global block depth - n
    (both halves get the mix, so later KV caches hold it), the logits then come from the conditional rows;
  * random numbers: per scale exactly one ``multinomial(softmax(logits).view(-1, 2), 1, replacement=True)``
    over (B, l * D) bit rows (masked entries still consume draws). Nothing else draws, so a seed gives the
    reference's bits; ``generator=None`` is the global generator (as the reference's ``g_seed=None``).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from nextscale.errors import InputError, NextScaleError
from nextscale.models.bsq import bits_to_codes, resize
from nextscale.sampling import sample_top_k_top_p_
from nextscale.validate import as_int, check_float

__all__ = [
    "sample_bits_",
    "per_scale_values",
    "guide_logits",
    "guide_hidden",
    "guided_text",
    "cfg_insertion",
    "to_uint8_bgr",
    "patchify_bits",
    "unpatchify_bits",
    "next_scale_input",
    "RunningSum",
]

#: constraint(si, bits_Bhwd) -> bits_Bhwd: replaces sampled bits (tokenizer space, int64) before they enter the
#: running sum (editing: teacher-force the bits of kept positions).
Constraint = Callable[[int, torch.Tensor], torch.Tensor]


def _float(value, name: str, **kw) -> float:
    try:
        return check_float(value, name, **kw)
    except InputError:
        raise
    except NextScaleError as e:  # validate.py raises the base class; this API promises InputError
        raise InputError(str(e)) from None


def per_scale_values(
    value: Union[float, Sequence[float]], num_scales: int, name: str, *, positive: bool = False
) -> List[float]:
    """``value`` as one float per scale: a number is repeated, a sequence must have ``num_scales`` entries.
    ``positive`` (tau) requires every entry > 0. Raises ``InputError`` naming ``name``."""
    if isinstance(value, torch.Tensor) and value.ndim == 1:
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) != num_scales:
            raise InputError(f"{name} needs one value per scale ({num_scales}) or a single number, got {len(value)}")
        vals = [_float(v, f"{name}[{i}]") for i, v in enumerate(value)]
    else:
        vals = [_float(value, name)] * num_scales
    if positive:
        for i, v in enumerate(vals):
            if v <= 0:
                raise InputError(f"{name} must be > 0 at every scale, got {v:g} at scale {i}")
    return vals


def check_top_k_top_p(top_k, top_p) -> Tuple[int, float]:
    """top_k an integer >= 0, top_p in [0, 1] (0 = off for both)."""
    try:
        k = as_int(top_k, "top_k")
    except NextScaleError as e:
        raise InputError(str(e)) from None
    if k < 0:
        raise InputError(f"top_k must be >= 0 (0 = off), got {k}")
    p = _float(top_p, "top_p")
    if not 0.0 <= p <= 1.0:
        raise InputError(f"top_p must be in [0, 1] (0 = off), got {p:g}")
    return k, p


def sample_bits_(
    logits_BN2: torch.Tensor, top_k: int = 0, top_p: float = 0.0, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Draw one bit per logit pair: (B, N, 2) logits (index 0 = "bit is 0") -> (B, N) int64 bits.

    The logits are masked **in place** (-inf) first to the top-k (k = min(top_k, 2): only k = 1, greedy, changes
    anything; ties keep both) and then to the top-p nucleus of the masked logits (the minority class goes iff its
    probability <= 1 - top_p); then one multinomial draw over all B * N rows. This is VAR's token sampler with a
    vocabulary of 2, so it is that function (same mask arithmetic, same random stream)."""
    if logits_BN2.ndim != 3 or logits_BN2.shape[-1] != 2:
        raise InputError(f"logits_BN2 must have shape (B, N, 2), got {tuple(logits_BN2.shape)}")
    return sample_top_k_top_p_(logits_BN2, top_k=top_k, top_p=top_p, generator=generator)


def guide_logits(logits_bslV: torch.Tensor, B: int, cfg: float, tau: float) -> torch.Tensor:
    """Temperature and guidance on logits, as the reference writes them: (bs, l, V) -> (B, l, V).
    With bs == 2B (conditional rows first): ``cfg * cond + (1 - cfg) * uncond`` of the logits times 1/tau;
    with bs == B only the temperature."""
    logits = logits_bslV.mul(1 / tau)  # the Python float 1/tau, not a division by tau (differs in the last bit)
    if logits.shape[0] == B:
        return logits
    return cfg * logits[:B] + (1 - cfg) * logits[B:]


def guide_hidden(h_bslC: torch.Tensor, cfg: float) -> torch.Tensor:
    """Guidance on hidden states (``cfg_insertion_layer`` < 0): the mix of the two halves, copied to both."""
    B = h_bslC.shape[0] // 2
    mixed = cfg * h_bslC[:B] + (1 - cfg) * h_bslC[B:]
    return torch.cat((mixed, mixed), dim=0)


def cfg_insertion(cfg_insertion_layer: Union[int, Sequence[int]], depth: int) -> Tuple[bool, List[int]]:
    """Where guidance applies: (on the logits?, global block indices after which hidden states are mixed).
    Entries: 0 = the logits (the released setting); -n = after global block depth - n, 1 <= n < depth."""
    items = [cfg_insertion_layer] if not isinstance(cfg_insertion_layer, (list, tuple)) else list(cfg_insertion_layer)
    if not items:
        raise InputError("cfg_insertion_layer is empty; give 0 (guidance on the logits) or -n (after block depth-n)")
    on_logits, layers = False, []
    for it in items:
        if isinstance(it, bool) or not isinstance(it, numbers.Integral):
            raise InputError(f"cfg_insertion_layer entries must be integers (0 or -n), got {it!r}")
        it = int(it)
        if it == 0:
            on_logits = True
        elif -depth < it < 0:
            layers.append(depth + it)
        else:
            raise InputError(
                f"cfg_insertion_layer entries must be 0 (logits) or -n with 1 <= n < depth ({depth}), got {it}"
            )
    return on_logits, sorted(set(layers))


def _text_fields(text):
    for f in ("kv_compact", "lens", "cu_seqlens", "max_seqlen"):
        if not hasattr(text, f):
            raise InputError(
                f"text must be a TextFeatures (kv_compact, lens, cu_seqlens, max_seqlen), "
                f"got {type(text).__name__} without {f}"
            )
    return text.kv_compact, [int(n) for n in text.lens]


def _text_like(text, kv_compact: torch.Tensor, lens: List[int]):
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32, device=kv_compact.device)
    cu[1:] = torch.tensor(lens, dtype=torch.int64).cumsum(0).to(torch.int32)
    return dataclasses.replace(text, kv_compact=kv_compact, lens=list(lens), cu_seqlens=cu, max_seqlen=max(lens))


def guided_text(text, cfg_uncond: torch.Tensor, negative_text=None):
    """The 2B-row text input of a guided generation: the B conditional rows, then B unconditional rows.
    Row b's unconditional features are the first ``lens[b]`` rows of the learned ``cfg_uncond`` (length-matched),
    or row b of ``negative_text`` (its own length; one negative row is used for every image)."""
    kv, lens = _text_fields(text)
    B = len(lens)
    if negative_text is None:
        if max(lens) > cfg_uncond.shape[0]:
            raise InputError(
                f"text has a row of {max(lens)} tokens, more than the model's text_maxlen "
                f"({cfg_uncond.shape[0]}) unconditional rows"
            )
        kv_u = torch.cat([cfg_uncond[:n] for n in lens], dim=0).to(kv.dtype)
        lens_u = lens
    else:
        kv_u, lens_u = _text_fields(negative_text)
        if len(lens_u) == 1 and B > 1:
            kv_u, lens_u = kv_u.repeat(B, 1), lens_u * B
        elif len(lens_u) != B:
            raise InputError(f"negative_text has {len(lens_u)} rows; give 1 or one per image ({B})")
        if kv_u.shape[-1] != kv.shape[-1]:
            raise InputError(f"negative_text features have width {kv_u.shape[-1]}, the text's have {kv.shape[-1]}")
    return _text_like(text, torch.cat((kv, kv_u.to(kv.device)), dim=0), lens + lens_u)


def unpatchify_bits(bits_BhwD: torch.Tensor, patchify: bool) -> torch.Tensor:
    """Transformer-space bits (B, h, w, D) -> tokenizer space (B, h', w', d): with spatial patchify each token's
    4d bits are a 2x2 block of d-bit tokens (``pixel_shuffle(2)``: bit c*4 + 2i + j -> token (2y+i, 2x+j), bit c)."""
    if not patchify:
        return bits_BhwD
    return F.pixel_shuffle(bits_BhwD.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)


def patchify_bits(bits_Bhwd: torch.Tensor, patchify: bool) -> torch.Tensor:
    """The inverse of :func:`unpatchify_bits` (``pixel_unshuffle(2)``)."""
    if not patchify:
        return bits_Bhwd
    return F.pixel_unshuffle(bits_Bhwd.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)


def next_scale_input(summed_BdHW: torch.Tensor, size_hw: Tuple[int, int], patchify: bool) -> torch.Tensor:
    """The next scale's transformer input (B, l, D): the running sum trilinear-resized (a downsampling, as the
    reference does: not area) to the next tokenizer scale, ``pixel_unshuffle(2)`` with patchify, flattened."""
    x = resize(summed_BdHW, tuple(size_hw), "trilinear")
    if patchify:
        x = F.pixel_unshuffle(x, 2)
    return x.flatten(2).transpose(1, 2)


class RunningSum:
    """The sum of every scale's codes on the last tokenizer grid, and the next scale's input read from it.

    Codes are kept channels-last in memory (the reference's codes are a permuted channels-last view): CPU
    trilinear up-sampling rounds differently for the two layouts (up to 5e-7 on the fixtures), and a 1e-7 change
    of the next-scale input becomes ~1e-2 in the logits through the bf16 cross attention."""

    def __init__(self, tok_schedule_hw: Sequence[Tuple[int, int]], patchify: bool):
        self.sched, self.patchify = [tuple(hw) for hw in tok_schedule_hw], patchify
        self.summed_BdHW: Optional[torch.Tensor] = None

    def add(self, bits_Bhwd: torch.Tensor) -> torch.Tensor:
        """Add one scale's bits (B, h, w, d); returns their codes (B, d, h, w)."""
        codes_BdHW = bits_to_codes(bits_Bhwd).contiguous(memory_format=torch.channels_last)
        up = resize(codes_BdHW, self.sched[-1], "trilinear")  # same size (last scale): the codes themselves
        self.summed_BdHW = up if self.summed_BdHW is None else self.summed_BdHW + up
        return codes_BdHW

    def next_input(self, si: int) -> torch.Tensor:
        """Input of scale si (>= 1) from the sum so far: (B, l_si, D)."""
        return next_scale_input(self.summed_BdHW, self.sched[si], self.patchify)


def to_uint8_bgr(img_B3HW: torch.Tensor) -> torch.Tensor:
    """The reference sampler's returned image (compat only; pipelines use RGB floats): [-1, 1] -> (B, H, W, 3)
    uint8, **truncated** (not rounded) and in BGR order."""
    return ((img_B3HW + 1) / 2).permute(0, 2, 3, 1).mul(255).to(torch.uint8).flip(dims=(3,))
