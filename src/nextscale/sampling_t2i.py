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
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from nextscale.errors import FieldError, FieldName, InputError, NextScaleError
from nextscale.models.bsq import BSQVAE, bits_to_codes, resize
from nextscale.models.infinity import Infinity, TextCond, TextFeatures, schedule_hw
from nextscale.models.rope import build_rope_cache
from nextscale.sampling import SamplingSettings, per_scale, sample_top_k_top_p_
from nextscale.schedules import TEMPLATES, rope_grid_schedule, tokenizer_schedule
from nextscale.settings import fail, setting
from nextscale.validate import check_float

__all__ = [
    "generate_t2i",
    "T2ISettings",
    "T2I_HONOURED",
    "T2IOutput",
    "T2IStep",
    "rope_grid",
    "sample_bits_",
    "per_scale_values",
    "guide_logits",
    "cfg_insertion",
    "to_uint8_bgr",
    "patchify_bits",
    "unpatchify_bits",
    "next_scale_input",
    "RunningSum",
    "keep_bits_constraint",
]

#: constraint(si, bits_Bhwd) -> bits_Bhwd: replaces sampled bits (tokenizer space, int64) before they enter the
#: running sum (editing: teacher-force the bits of kept positions).
Constraint = Callable[[int, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class T2ISettings(SamplingSettings):
    """The sampling settings of text-to-image: a :class:`~nextscale.sampling.SamplingSettings` (the one object
    between the layers: pipeline -> ``generate_t2i``; the CLI's flags and the demo's widgets are its fields) with
    Infinity's defaults and its one extra value, ``cfg_insertion_layer``.

    Why a subclass and not the plain class: Infinity's guidance number is not VAR's. The reference writes
    ``cfg * cond + (1 - cfg) * uncond`` with a constant cfg (1 = off, the released 3), VAR ``(1 + t) * cond -
    t * uncond`` ramped over scales (0 = off). Keeping the reference's number here means the released cfg 3 reads
    3 everywhere, ``cfg_list`` / ``tau_list`` (the reference's names, accepted as aliases) map 1:1, and no
    ``1 + t`` conversion can move the last bit of the golden logits. So ``guidance_scale`` is redeclared (default
    3, note "1 = off"), ``guidance_schedule`` is "constant" only, temperature / top-k / top-p take the released
    values (0.5 / 900 / 0.97). Of the speed-ups only ``guidance_cutoff`` applies (the last N scales sample with
    cfg 1 and their unconditional rows are not computed); the others, and Gumbel smoothing, are refused with one
    line (:data:`T2I_HONOURED`).
    """

    # the reference's cfg_list: cfg * cond + (1 - cfg) * uncond on the (tempered) logits; one number or one per
    # scale; 1 everywhere = no guidance (the batch is then not doubled)
    guidance_scale: Union[float, Tuple[float, ...]] = setting(
        3.0,
        "guidance weight (Infinity's cfg), one number or one per scale",
        alias="cfg_list",
        min=0.0,
        note="1 = off",
        per_scale=True,
        soft_max=10.0,
        step=0.1,
        label="guidance (cfg)",
    )
    # Infinity holds cfg constant over scales (a per-scale list gives any other schedule)
    guidance_schedule: str = setting(
        "constant", "how the guidance weight grows over scales", choices=("constant",), label="guidance schedule"
    )
    # over the 2 values of a bit only top_k = 1 (greedy) changes anything; 900 is the released no-op
    top_k: int = setting(900, "top-k over the 2 values of each bit", min=0, note="0 = off; 1 = greedy", label="top-k")
    # drop a bit value whose probability is <= 1 - top_p; the released 0.97 does change samples
    top_p: float = setting(
        0.97, "top-p over bits", min=0.0, max=1.0, must="in [0, 1]", note="0 = off", step=0.01, label="top-p"
    )
    # the reference's tau_list: logits * (1 / tau); the released inference uses 0.5
    temperature: Union[float, Tuple[float, ...]] = setting(
        0.5,
        "softmax temperature of the bit logits, one number or one per scale",
        alias="tau_list",
        min=0.0,
        min_open=True,
        note="1 = off",
        per_scale=True,
        soft_max=5.0,
        step=0.05,
    )
    # where guidance applies: 0 = on the logits (released); -n = on the hidden states after block depth - n
    # (checked against the model's depth at call time)
    cfg_insertion_layer: Union[int, Tuple[int, ...]] = setting(
        0,
        "where guidance applies: 0 = the logits, -n = the hidden states after block depth - n; one or a list",
        max=0,
        per_scale=True,
        must="0 (guidance on the logits) or -n (after block depth - n), or a list of them",
        label="cfg insertion layer",
    )

    def check_more(self) -> None:
        super().check_more()
        flat = self.flat()
        for _, f in self.flat_fields():  # the fields' own defaults (an instance of the class would recurse here)
            if f.name in T2I_HONOURED:
                continue
            v, d = getattr(flat, f.name), f.default
            if v is not d and v != d:
                raise fail(f.name, f" is not supported by text-to-image sampling (got {v!r}); leave it at its default")

    def per_scale(self, num_scales: int) -> Tuple[List[float], List[float]]:
        """(cfg_list, tau_list) for ``num_scales`` scales, the guidance cut-off applied (cfg 1 on the last N)."""
        cfgs = per_scale(self.guidance_scale, num_scales, "guidance_scale")
        taus = per_scale(self.temperature, num_scales, "temperature")
        cut = self.speedups.guidance_cutoff
        if cut > num_scales:
            raise fail("guidance_cutoff", f" must be <= the number of scales ({num_scales}), got {cut}")
        return cfgs[: num_scales - cut] + [1.0] * cut, taus


#: The settings text-to-image sampling honours; any other changed from its default is refused with one line.
T2I_HONOURED = (
    "guidance_scale",
    "guidance_schedule",
    "top_k",
    "top_p",
    "temperature",
    "cfg_insertion_layer",
    "guidance_cutoff",
)


def t2i_settings(settings: Optional[SamplingSettings] = None, what: str = "settings", **changes: Any) -> T2ISettings:
    """The door: ``settings`` (default: Infinity's released values) with ``changes`` (field names or the
    reference's ``cfg_list`` / ``tau_list``) applied in one ``replace``. An error names the key as given."""
    if settings is not None and not isinstance(settings, T2ISettings):
        raise InputError(
            f"{what} must be a nextscale.T2ISettings (text-to-image guidance is Infinity's cfg, 1 = off), "
            f"got {type(settings).__name__}"
        )
    given = {T2ISettings.resolve_keys({k: None}).popitem()[0]: k for k in changes} if changes else {}
    try:
        return (settings or T2ISettings()).replace(**changes)
    except FieldError as e:  # a reference name given (cfg_list) is the name the message uses
        raise FieldError(*[FieldName(given.get(p, p)) if isinstance(p, FieldName) else p for p in e.parts]) from None


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
    of the next-scale input can become ~1e-2 in the logits through the bf16 cross attention (fixture README 7)."""

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


# ---------------------------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass
class T2IStep:
    """What ``callback(step)`` receives after every scale (after the constraint, the bits are final)."""

    si: int  # scale index, 0 .. num_scales - 1
    num_scales: int
    bits: torch.Tensor  # (B, h, w, d) int64 this scale's bits, tokenizer layout
    summed_codes: torch.Tensor  # (B, d, H, W) the running sum so far (do not modify)
    vae: torch.nn.Module

    @torch.no_grad()
    def image(self) -> torch.Tensor:
        """The partial image: the running sum decoded, (B, 3, H*p, W*p) in [-1, 1] (one decoder pass)."""
        return self.vae.decode(self.summed_codes)


@dataclasses.dataclass
class T2IOutput:
    bits_per_scale: List[torch.Tensor]  # K x (B, h_k, w_k, d) int64, tokenizer layout (the reference returns none)
    summed_codes: torch.Tensor  # (B, d, H, W) the decoder's input
    images: Optional[torch.Tensor]  # (B, 3, H*p, W*p) in [-1, 1]; None when decode=False
    scale_schedule: List[Tuple[int, int]]  # transformer schedule
    tokenizer_schedule: List[Tuple[int, int]]  # the bits' grids (doubled with spatial patchify)

    def reference_image(self) -> torch.Tensor:
        """The reference sampler's return value: (B, H, W, 3) uint8 BGR, truncated (compat only)."""
        if self.images is None:
            raise InputError("no images: this output was made with decode=False")
        return to_uint8_bgr(self.images)


def rope_grid(scale_hw: Sequence[Tuple[int, int]], h_div_w=None) -> List[Tuple[int, int]]:
    """The RoPE grid schedule (an aspect ratio's 1M schedule) of a transformer schedule. Without ``h_div_w`` it is
    the template whose 1M schedule starts with ``scale_hw`` (the official code only runs schedules of its table);
    when several do (a few coarse scales), the one nearest to the last scale's h/w."""
    K = len(scale_hw)
    if h_div_w is not None:
        grid = rope_grid_schedule(h_div_w)
        if grid[:K] != list(scale_hw):
            raise InputError(f"scale_schedule {list(scale_hw)} is not a schedule of the aspect ratio h_div_w={h_div_w}")
        return grid
    cands = [t for t in TEMPLATES if rope_grid_schedule(t)[:K] == list(scale_hw)]
    if not cands:
        raise InputError(
            f"scale_schedule {list(scale_hw)} is not a prefix of any aspect ratio's schedule (make one with "
            f"nextscale.schedules.scale_schedule): its RoPE positions are undefined"
        )
    r = scale_hw[-1][0] / scale_hw[-1][1]
    return rope_grid_schedule(min(cands, key=lambda t: abs(t - r)))


def _negative_rows(negative_text, text: TextFeatures):
    B = text.batch_size
    if not isinstance(negative_text, TextFeatures):
        raise InputError(f"negative_text must be a TextFeatures, got {type(negative_text).__name__}")
    if negative_text.kv_compact.shape[-1] != text.kv_compact.shape[-1]:
        raise InputError(
            f"negative_text features are {negative_text.kv_compact.shape[-1]} wide, the text's "
            f"{text.kv_compact.shape[-1]}"
        )
    if negative_text.batch_size == B:
        return negative_text
    if negative_text.batch_size == 1:  # one negative prompt for every image
        return TextFeatures.from_lens(negative_text.kv_compact.repeat(B, 1), negative_text.lens * B)
    raise InputError(f"negative_text has {negative_text.batch_size} rows; give 1 or one per image ({B})")


def _keep_conditional(cond: TextCond, cache, B: int) -> TextCond:
    """Guidance is over (cut-off): keep the B conditional rows of the text and the cache (the unconditional rows,
    second in the doubled batch, are dropped and their KV memory freed)."""
    t = cond.text
    n = sum(t.lens[:B])
    text = TextFeatures.from_lens(t.kv_compact[:n], t.lens[:B])
    cache.kv.k = [k[:B].clone() if k is not None else None for k in cache.kv.k]  # clone: free the other half
    cache.kv.v = [v[:B].clone() if v is not None else None for v in cache.kv.v]
    cache.ca_kv = [kv[:n] for kv in cache.ca_kv]
    return TextCond(text, cond.normed[:n], cond.cond_BD[:B], cond.ca_kv[:n], cond.gss[:B])


@torch.no_grad()
def generate_t2i(
    model: Infinity,
    vae: BSQVAE,
    text: TextFeatures,
    scale_schedule,
    settings: Optional[T2ISettings] = None,
    *,
    generator: Optional[torch.Generator] = None,
    negative_text: Optional[TextFeatures] = None,
    callback: Optional[Callable[[T2IStep], None]] = None,
    constraint: Optional[Constraint] = None,
    h_div_w=None,
    decode: bool = True,
    **changes: Any,
) -> T2IOutput:
    """Sample B = ``text.batch_size`` images over ``scale_schedule`` ([(h, w)] or the reference's [(1, h, w)]).

    ``settings``: a :class:`T2ISettings` (default: the released cfg 3, tau 0.5, top_k 900, top_p 0.97);
    ``changes``: single settings by name or by the reference's names (``cfg_list=``, ``tau_list=``, ``top_k=``,
    ``top_p=``, ``cfg_insertion_layer=``), applied to it in one ``replace``. ``generator`` None draws from the global
    generator (the reference's ``g_seed=None``; ``torch.Generator().manual_seed(s)`` replays its ``g_seed=s`` and
    its ``torch.manual_seed(s)`` on CPU). ``negative_text``: 1 row or B rows replacing the learned unconditional
    text. ``callback(step)`` runs after every scale (:class:`T2IStep`; ``step.image()`` decodes the partial sum).
    ``constraint(si, bits)`` may replace the sampled bits (B, h, w, d) before they enter the running sum (editing).
    ``h_div_w`` picks the RoPE grid when the schedule alone does not (:func:`rope_grid`). ``decode=False`` skips
    the final decoder pass. ``guidance_cutoff`` N: the last N scales sample with cfg 1 on the conditional rows
    only (the unconditional rows and their KV cache are dropped); the random stream is unchanged, so the first
    K - N scales are exactly those of N = 0.
    """
    cfgm = model.config
    hw = schedule_hw(scale_schedule)
    K = len(hw)
    if K > cfgm.num_levels:
        raise InputError(f"scale_schedule has {K} scales; the model has level embeddings for {cfgm.num_levels}")
    if vae.codebook_dim != cfgm.vae_bits:
        raise InputError(
            f"the tokenizer has {vae.codebook_dim} bits per token, the transformer expects {cfgm.vae_bits}"
        )
    if not isinstance(text, TextFeatures):
        raise InputError(f"text must be a nextscale.models.infinity.TextFeatures, got {type(text).__name__}")
    st = t2i_settings(settings, **changes)
    given = {T2ISettings.resolve_keys({k: None}).popitem()[0]: k for k in changes}
    try:
        cfgs, taus = st.per_scale(K)
    except FieldError as e:  # named as given (cfg_list)
        raise FieldError(*[FieldName(given.get(p, p)) if isinstance(p, FieldName) else p for p in e.parts]) from None
    on_logits, cfg_blocks = cfg_insertion(st.cfg_insertion_layer, cfgm.depth)
    top_k, top_p = st.top_k, st.top_p
    patchify = bool(cfgm.apply_spatial_patchify)
    tok_hw = tokenizer_schedule(hw, patchify)
    dev = model.pos_start.device
    rope_2Lc = build_rope_cache(rope_grid(hw, h_div_w), cfgm.head_dim, cfgm.rope_base).to(dev)

    B = text.batch_size
    text = TextFeatures.from_lens(text.kv_compact.to(dev), text.lens)
    guided = any(c != 1 for c in cfgs)  # the reference doubles the batch only then
    cut_from = K - st.speedups.guidance_cutoff  # the unconditional rows are dropped from this scale on
    if guided:
        neg = None
        if negative_text is not None:
            neg = _negative_rows(negative_text, text)
            neg = TextFeatures.from_lens(neg.kv_compact.to(dev), neg.lens)
        text = model.cfg_text(text, neg)
    cond = model.prepare_text(text)
    cache = model.new_cache(cond, hw)
    x_BlC = model.sos(cond)
    running = RunningSum(tok_hw, patchify)
    bits_per_scale: List[torch.Tensor] = []
    for si, (h, w) in enumerate(hw):
        if guided and si == cut_from:  # guidance cut off (cfg 1 from here on): the unconditional half goes
            cond, x_BlC, guided = _keep_conditional(cond, cache, B), x_BlC[:B], False
        cfg, tau = cfgs[si], taus[si]
        h_BlC = model.forward_scale(x_BlC, si, hw, cond, cache, rope_2Lc, cfg=cfg, cfg_blocks=cfg_blocks)
        rows = h_BlC if cfg != 1 and on_logits else h_BlC[:B]  # the reference's head sees B rows otherwise
        logits_BlV = guide_logits(model.logits(rows, cond), B, cfg, tau)
        bits_BN = sample_bits_(logits_BlV.view(B, h * w * cfgm.token_bits, 2), top_k, top_p, generator)
        bits = unpatchify_bits(bits_BN.view(B, h, w, cfgm.token_bits), patchify)
        if constraint is not None:
            bits = _checked_bits(constraint(si, bits), bits)
        running.add(bits)
        bits_per_scale.append(bits)
        if callback is not None:
            callback(T2IStep(si, K, bits, running.summed_BdHW, vae))
        if si + 1 < K:
            x_BlC = model.word_embed(running.next_input(si + 1))
            if guided:
                x_BlC = x_BlC.repeat(2, 1, 1)
    summed = running.summed_BdHW
    images = vae.decode(summed) if decode else None
    return T2IOutput(bits_per_scale, summed, images, hw, tok_hw)


def keep_bits_constraint(input_bits: Sequence[torch.Tensor], keep: Sequence[torch.Tensor]) -> Constraint:
    """The ``constraint`` of zero-shot editing: at scale k, positions where ``keep[k]`` (B, h_k, w_k) bool is True
    take the input's bits ``input_bits[k]`` (B, h_k, w_k, d) (e.g. ``BSQVAE.encode`` of the image on the tokenizer
    schedule); the others keep their sampled bits. No random number is drawn, so the rest samples as usual."""
    if len(input_bits) != len(keep):
        raise InputError(f"input_bits has {len(input_bits)} scales but keep has {len(keep)}")

    def constraint(si: int, bits_Bhwd: torch.Tensor) -> torch.Tensor:
        k = keep[si].to(device=bits_Bhwd.device, dtype=torch.bool)
        if tuple(k.shape) != tuple(bits_Bhwd.shape[:3]):
            raise InputError(f"keep[{si}] must have shape {tuple(bits_Bhwd.shape[:3])} (B, h, w), got {tuple(k.shape)}")
        return torch.where(k.unsqueeze(-1), input_bits[si].to(bits_Bhwd), bits_Bhwd)

    return constraint


def _checked_bits(new: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(new, torch.Tensor) or tuple(new.shape) != tuple(like.shape):
        got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
        raise InputError(f"constraint must return bits of shape {tuple(like.shape)} (B, h, w, d), got {got}")
    return new.to(device=like.device, dtype=torch.int64)
