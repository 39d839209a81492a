"""THE generation loop: coarse-to-fine sampling with a KV cache, guidance, top-k/top-p and Gumbel smoothing.

One loop serves plain sampling, the reference-compatible ``autoregressive_infer_cfg`` (``nextscale.compat``), the
pipelines and editing (which passes a ``constraint`` that teacher-forces kept tokens).

Random numbers are drawn exactly as the reference draws them, so a seed gives the same tokens:
  1. only when labels are None: ``multinomial(uniform (1, num_classes), B, replacement=True)``;
  2. per scale: ``multinomial(softmax(masked guided logits).view(B*l, V), 1, replacement=True)``,
     then, only with ``more_smooth``, Gumbel noise ``-log(Exp(1))`` of the logits' shape.
Nothing else draws from the generator.

Temperature: the guided logits of scale k are multiplied by ``1 / tau_k`` before top-k / top-p and the
draw (Infinity's ``tau_list``); tau = 1 (the default) skips it, so the tokens are exactly the reference's.

Guidance: with per-scale weight t_k, ``logits = (1 + t_k) * cond - t_k * uncond``. The reference
ramps ``t_k = cfg * k / (K - 1)`` (``guidance_schedule="linear"``, the default); "constant" uses
``t_k = cfg``; a list gives t_k per scale. In DiT/diffusers terms the guidance scale is ``1 + t_k``.
When every t_k is 0 the unconditional half of the batch is skipped (same tokens, half the work).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from nextscale.accel.cpu import reference_kernels
from nextscale.accel.cuda_graphs import CudaGraphs
from nextscale.accel.sampling_modes import ScaleWindowKVCache, pivotal_tokens, restore_hidden
from nextscale.errors import FieldError, FieldName, InputError, NextScaleError
from nextscale.models.var import VAR, KVCache
from nextscale.models.vqvae import VQVAE
from nextscale.settings import Settings, fail, setting
from nextscale.validate import as_int, check_class_ids

__all__ = [
    "generate",
    "SamplingSettings",
    "SpeedUps",
    "check_refiner",
    "CudaGraphs",
    "GenerationOutput",
    "sample_top_k_top_p_",
    "gumbel_softmax_with_rng",
    "guidance_weights",
    "resolve_labels",
    "GUIDANCE_SCHEDULES",
]

#: constraint(si, idx_Bl, h_BlCv) -> (idx_Bl, h_BlCv): editing replaces kept tokens (and their code vectors).
Constraint = Callable[[int, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]
#: callback(si, pn, f_hat_BCvhw, idx_Bl): called after each scale (e.g. to stream partial images).
ScaleCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]

GUIDANCE_SCHEDULES = ("linear", "constant")


def per_scale(value, n: int, name: str) -> List[float]:
    """A per-scale setting as n values: a number for every scale, or a tuple of exactly n."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise fail(name, f" has {len(value)} values but the model samples {n} scales; give one value or {n}")
        return [float(v) for v in value]
    return [float(value)] * n


@dataclass(frozen=True)
class SpeedUps(Settings):
    """Opt-in speed-ups that change the result a little (``nextscale.accel.sampling_modes``; measured in
    docs/speed.md). The defaults are the exact path."""

    # the last N scales sample without guidance: their unconditional rows are never computed (Switti)
    guidance_cutoff: int = setting(
        0, "the last N scales sample without guidance (faster)", min=0, note="0 = off", label="guidance cut-off"
    )
    # share of tokens at each pruned scale that skip the transformer (FastVAR); 0 = off, < 1
    prune_ratio: float = setting(
        0.0,
        "share of tokens of the last scales that skip the transformer",
        min=0.0,
        max=1.0,
        max_open=True,
        note="0 = off",
        soft_max=0.95,
        step=0.05,
        label="token pruning",
    )
    # how many of the last (largest) scales are pruned: they hold most tokens and change least
    prune_last: int = setting(
        2,
        "how many of the last scales prune_ratio prunes",
        min=1,
        must=">= 1",
        label="pruned scales",
        needs="prune_ratio",
    )
    # (first, recent): a scale attends to the first `first` scales and the `recent` ones before it;
    # the rest of the KV cache is evicted (ScaleKV / AMS-KV); None = the whole cache
    kv_budget: Optional[Tuple[int, int]] = setting(
        None,
        "FIRST RECENT: attend to the first FIRST scales and the RECENT before each (less KV memory)",
        min=0,
        what="(first, recent) scale counts or None",
    )
    # another VAR on the same tokenizer (or a pipeline holding one) predicts the scales from
    # refine_from_scale on (Collaborative Decoding); checked against the model by ``check_refiner``
    refiner: Any = setting(None, "a second model on the same tokenizer that predicts the last scales")
    refine_from_scale: Optional[int] = setting(
        None, "first scale (0-based) the refiner predicts", min=0, needs="refiner"
    )

    def is_exact(self) -> bool:
        """The model's own pass is the plain one (no cut-off, pruning or KV budget): CUDA graphs may replay
        it. A refiner changes who predicts the last scales, not this pass."""
        return self.guidance_cutoff == 0 and self.prune_ratio == 0.0 and self.kv_budget is None


@dataclass(frozen=True)
class SamplingSettings(Settings):
    """How a generation samples: the one object ``generate``, the pipelines, editing, sample-fid, the CLI
    and the demo pass on. Bad values raise ``FieldError`` naming the field (a front end shows its flag or
    widget); every field is a CLI flag and a demo widget (generated from these fields). Defaults: the
    reference README's ImageNet evaluation settings; a model directory may recommend its own
    (``sampling_defaults``). Per-scale settings take a number or one number per scale.
    """

    # the reference's cfg: guidance weight t_k per scale (module docstring); a sequence gives one
    # weight per scale; 0 everywhere skips the unconditional half of the batch (half the work)
    guidance_scale: Union[float, Tuple[float, ...]] = setting(
        1.5,
        "guidance weight, one number or one per scale",
        alias="cfg",
        min=0.0,
        note="0 = off",
        per_scale=True,
        soft_max=10.0,
        step=0.1,
        label="guidance (cfg)",
    )
    # "linear" ramps t_k = cfg * k / (K - 1) as the reference does (weak guidance at the coarse scales
    # keeps diversity); "constant" uses t_k = cfg at every scale
    guidance_schedule: str = setting(
        "linear", "how the guidance weight grows over scales", choices=GUIDANCE_SCHEDULES, label="guidance schedule"
    )
    # keep the k most likely tokens per position (0 = off); the reference samples ImageNet with 900 of 4096
    top_k: int = setting(900, "top-k token filter", min=0, note="0 = off", label="top-k")
    # then the smallest nucleus of probability top_p (0 = off); 0.96 in the reference's evaluation
    top_p: float = setting(
        0.96, "top-p nucleus filter", min=0.0, max=1.0, must="in [0, 1]", note="0 = off", step=0.01, label="top-p"
    )
    # soft codes from a tempered Gumbel-softmax: smoother pictures, not for FID (the reference's more_smooth)
    more_smooth: bool = setting(False, "Gumbel smoothing (visual; not for FID)", label="Gumbel smoothing")
    # softmax temperature of the guided logits (x 1/tau before top-k / top-p): < 1 sharpens (closer to
    # argmax), > 1 flattens; one number or one per scale (Infinity's tau_list); 1 = the exact reference path
    temperature: Union[float, Tuple[float, ...]] = setting(
        1.0,
        "softmax temperature of the sampled logits, one number or one per scale",
        min=0.0,
        min_open=True,
        note="1 = off",
        per_scale=True,
        soft_max=5.0,
        step=0.05,
    )
    # the opt-in approximate speed-ups, one frozen group (their names are flat in replace / the CLI)
    speedups: SpeedUps = field(default_factory=SpeedUps)

    def is_exact(self) -> bool:
        """No approximate speed-up is on: the reference's tokens for the same seed."""
        return self.speedups.is_exact()

    def changed(self) -> Dict[str, Any]:
        """The settings (flat names) that differ from the defaults."""
        mine, ref, out = self.flat(), type(self)().flat(), {}
        for n in self.flat_names():
            a, b = getattr(mine, n), getattr(ref, n)
            if a is not b and a != b:
                out[n] = a
        return out

    def flat(self):
        """A view with every setting as an attribute (``st.flat().prune_ratio``)."""
        return _Flat(self)

    def refuse(self, honoured: Sequence[str], who: str) -> None:
        """One line naming the first setting ``who`` cannot honour (any setting not in ``honoured`` that
        is not at its default): a setting is refused, never silently ignored."""
        for name, value in self.changed().items():
            if name not in honoured:
                raise fail(name, f" is not supported by {who} (got {value!r}); leave it at its default")


class _Flat:
    def __init__(self, st: Settings):
        self._st = st

    def __getattr__(self, name):
        st = object.__getattribute__(self, "_st")
        if name in {f.name for f in dataclasses.fields(st)}:
            return getattr(st, name)
        for g in type(st).groups():
            sub = getattr(st, g)
            if name in type(sub).flat_names():
                return getattr(sub, name)
        raise AttributeError(name)


#: What ``generate`` / ``autoregressive_infer_cfg`` use when a call gives nothing: the reference
#: signature's defaults (cfg 1.5, no top-k / top-p filtering).
CALL_DEFAULTS = SamplingSettings(top_k=0, top_p=0.0)


@dataclass
class GenerationOutput:
    idx_per_scale: List[torch.Tensor]  # K x (B, l_k) sampled (or kept) token ids
    f_hat: torch.Tensor  # (B, Cvae, pn_K, pn_K) summed code features, decoder input
    labels: torch.Tensor  # (B,) class labels used (num_classes = unconditional)


def sample_top_k_top_p_(
    logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Mask ``logits_BlV`` in place to the top-k and then the top-p nucleus (-inf elsewhere) and
    draw one token per position. Returns (B, l). Masked entries still take part in the draw (with
    probability 0), so the random stream matches the reference."""
    B, l, V = logits_BlV.shape
    if top_k > 0:
        kth = logits_BlV.topk(min(top_k, V), largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        remove[..., -1:] = False  # always keep the most likely token
        logits_BlV.masked_fill_(remove.scatter(sorted_idx.ndim - 1, sorted_idx, remove), -torch.inf)
    probs = logits_BlV.softmax(dim=-1).view(-1, V)
    return torch.multinomial(probs, num_samples=1, replacement=True, generator=generator).view(B, l)


def gumbel_softmax_with_rng(
    logits: torch.Tensor, tau: float, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Soft Gumbel-softmax sample (no straight-through), drawing noise from ``generator``."""
    gumbels = (
        -torch.empty_like(logits, memory_format=torch.legacy_contiguous_format).exponential_(generator=generator).log()
    )
    return ((logits + gumbels) / tau).softmax(dim=-1)


def guidance_weights(cfg: Union[float, Sequence[float]], num_scales: int, schedule: str = "linear") -> List[float]:
    """Per-scale guidance weights t_k (see module docstring)."""
    if isinstance(cfg, (list, tuple)):
        return per_scale(cfg, num_scales, "guidance_scale")
    cfg = float(cfg)
    if schedule == "linear":
        return [cfg * (si / (num_scales - 1) if num_scales > 1 else 0.0) for si in range(num_scales)]
    if schedule == "constant":
        return [cfg] * num_scales
    raise fail("guidance_schedule", f" must be one of {', '.join(GUIDANCE_SCHEDULES)} (linear = the reference ramp)")


def resolve_labels(label_B, B: int, num_classes: int, device, generator: Optional[torch.Generator]) -> torch.Tensor:
    """None -> random classes (drawn from ``generator``), int -> all that class, sequence/tensor ->
    those labels; -1 (and num_classes) = unconditional. Returns (B,) long on ``device``."""
    if label_B is None:
        uniform = torch.full((1, num_classes), 1.0 / num_classes, dtype=torch.float32, device=device)
        return torch.multinomial(uniform, num_samples=B, replacement=True, generator=generator).reshape(B)
    if isinstance(label_B, torch.Tensor) and label_B.ndim > 0:
        label_B = label_B.reshape(-1).tolist()
    lab = check_class_ids(label_B, num_classes, allow_null_index=True)
    if isinstance(lab, int):
        lab = [lab] * B
    if len(lab) != B:
        raise InputError(f"got {len(lab)} labels for a batch of {B}")
    return torch.tensor([num_classes if c < 0 else c for c in lab], dtype=torch.long, device=device)


@torch.no_grad()
def generate(
    var: VAR,
    vae: VQVAE,
    B: int,
    label_B=None,
    *,
    generator: Optional[torch.Generator] = None,
    settings: Optional[SamplingSettings] = None,
    constraint: Optional[Constraint] = None,
    callback: Optional[ScaleCallback] = None,
    cuda_graphs: Optional[CudaGraphs] = None,
    **changes: Any,
) -> GenerationOutput:
    """Sample token maps scale by scale. ``generator`` None uses the global RNG (as the reference).

    ``settings`` (default ``CALL_DEFAULTS``) says how to sample; ``changes`` (any setting by name, or
    the reference's ``cfg``) override single fields in one ``replace``. Works on any device; under
    ``torch.autocast`` the blocks run in the autocast dtype while the embeddings, head and sampling stay
    float32. ``cuda_graphs`` (an ``accel.CudaGraphs`` kept by the caller across calls) replays each
    scale's transformer as one captured CUDA graph (same tokens; exact settings only). A ``refiner``
    speed-up (another VAR on the same tokenizer, e.g. a smaller one) predicts scales
    ``refine_from_scale``..K (Collaborative Decoding; ``accel.sampling_modes``).
    """
    st = (settings or CALL_DEFAULTS).replace(**changes)
    if st.speedups.refiner is not None:
        check_refiner(var, st.speedups.refiner, st.speedups.refine_from_scale)
    elif st.speedups.refine_from_scale is not None:
        raise fail("refine_from_scale", " needs a refiner (the model that predicts those scales)")
    with reference_kernels(st.more_smooth):  # smoothing amplifies rounding ~200x: use the reference's kernels
        return _generate(var, vae, B, label_B, generator, st, constraint, callback, cuda_graphs)


def check_refiner(var: VAR, refiner, refine_from_scale) -> None:
    """A refiner must read and write the same tokens as ``var``: same codebook size, code width,
    scale schedule and classes; ``refine_from_scale`` is the first scale it predicts (0..K-1)."""
    if not isinstance(refiner, VAR):
        raise fail("refiner", f" must be a VAR transformer (or a pipeline holding one), got {type(refiner).__name__}")
    for what in ("patch_nums", "V", "Cvae", "num_classes"):
        if getattr(refiner, what) != getattr(var, what):
            raise FieldError(
                f"the refiner's {what} ({getattr(refiner, what)}) differs from the model's "
                f"({getattr(var, what)}): a refiner must share the tokenizer and the classes"
            )
    K = len(var.patch_nums)
    if refine_from_scale is None:
        raise FieldError(
            "a refiner needs ", FieldName("refine_from_scale"), f": the first scale (0..{K - 1}) it predicts"
        )
    k = as_int(refine_from_scale, "refine_from_scale")
    if not 0 <= k < K:
        raise fail("refine_from_scale", f" must be in 0..{K - 1} (the model has {K} scales), got {k}")


def _non_finite(si: int, pn: int) -> NextScaleError:
    return NextScaleError(
        f"the model's logits at scale {si + 1} ({pn}x{pn}) are NaN/inf: its weights are not finite "
        f"(a broken export or a diverged run); re-export from a good checkpoint"
    )


class _Stage:
    """One transformer's side of a generation: its embeddings, AdaLN modulations (computed once),
    KV cache and rows (B, or 2B with guidance: conditional rows first)."""

    def __init__(self, var: VAR, cls_in: torch.Tensor, st: SamplingSettings, cuda_graphs: Optional[CudaGraphs]):
        self.var, self.rows = var, cls_in.shape[0]
        self.cond_BD = var.class_emb(cls_in)  # (rows, D)
        self.mods = var.block_modulations(self.cond_BD)  # depth x (rows, 1, 6, C)
        self.head_mod = var.head_nm.modulation(self.cond_BD.float())  # (rows, 1, 2, C)
        self.lvl_pos_1LC = var.lvl_embed(var.lvl_1L) + var.pos_1LC
        kv = st.speedups.kv_budget
        self.cache = KVCache(var.depth, var.L) if kv is None else ScaleWindowKVCache(var.depth, *kv)
        self.graph_run = None
        if cuda_graphs is not None and self.cond_BD.device.type == "cuda" and st.is_exact():
            self.graph_run = cuda_graphs.runner(var, self.rows, self.mods, self.cond_BD, self.head_mod)
        self.h_prev: Optional[torch.Tensor] = None  # the last scale's hidden states (only kept for pruning)

    def first_input(self) -> torch.Tensor:  # (rows, first_l, C): class embedding + sos position
        var, n = self.var, self.var.first_l
        return (
            self.cond_BD.unsqueeze(1).expand(self.rows, n, -1)
            + var.pos_start.expand(self.rows, n, -1)
            + self.lvl_pos_1LC[:, :n]
        )

    def input(self, si: int, nxt_BlCv: torch.Tensor) -> torch.Tensor:  # (B, l, Cvae) codes -> (rows, l, C)
        b, e = self.var.begin_ends[si]
        x_BlC = self.var.word_embed(nxt_BlCv) + self.lvl_pos_1LC[:, b:e]
        return x_BlC.repeat(self.rows // x_BlC.shape[0], 1, 1) if self.rows != x_BlC.shape[0] else x_BlC

    def logits(self, si: int, x_BlC: torch.Tensor, keep_Bn: Optional[torch.Tensor] = None, keep_h: bool = False):
        """(rows, l, V) float32 logits of scale si; with ``keep_Bn`` only those positions run the
        blocks (pruning) and the rest are restored from the previous scale's hidden states."""
        if self.graph_run is not None:
            return self.graph_run(si, x_BlC)
        var = self.var
        if keep_Bn is None:
            h_BlC = var.next_scale_hidden(x_BlC, self.cache, self.mods)
        else:
            idx = keep_Bn.repeat(self.rows // keep_Bn.shape[0], 1)
            x_kept = x_BlC.gather(1, idx.unsqueeze(-1).expand(-1, -1, x_BlC.shape[-1]))
            h_kept = var.next_scale_hidden(x_kept, self.cache, self.mods)
            pn, pn_prev = var.patch_nums[si], var.patch_nums[si - 1]
            h_BlC = restore_hidden(self.h_prev, pn_prev, pn, keep_Bn, h_kept)
        self.cache.advance(x_BlC.shape[1] if keep_Bn is None else keep_Bn.shape[1])
        if keep_h:
            self.h_prev = h_BlC
        return var.get_logits(h_BlC, self.cond_BD, self.head_mod)

    def prefill(self, codes: List[torch.Tensor], keep_h: bool) -> None:
        """Read scales 0..len(codes) (codes[j] = the input codes of scale j + 1) in one block-causal
        pass, filling this stage's KV cache (a refiner joining the generation)."""
        var = self.var
        xs = [self.first_input()] + [self.input(j + 1, c) for j, c in enumerate(codes)]
        L = sum(x.shape[1] for x in xs)
        if isinstance(self.cache, ScaleWindowKVCache):
            self.cache.prefill_scales([x.shape[1] for x in xs])
        h = var.next_scale_hidden(
            torch.cat(xs, dim=1), self.cache, self.mods, attn_bias=var.attn_bias_for_masking[:, :, :L, :L]
        )
        self.cache.advance(L)
        if keep_h:
            self.h_prev = h[:, L - xs[-1].shape[1] :]

    def keep_rows(self, n: int) -> None:
        """Guidance is over: from now on only the n conditional rows are computed."""
        self.rows = n
        self.cond_BD, self.head_mod = self.cond_BD[:n], self.head_mod[:n]
        self.mods = [m[:n] for m in self.mods]
        self.cache.keep_rows(n)
        if self.h_prev is not None:
            self.h_prev = self.h_prev[:n]
        self.graph_run = None


def check_for_model(st: SamplingSettings, K: int) -> None:
    """The ranges that depend on the model: scale counts at most its ``K`` scales (the first scale is
    never pruned), per-scale lists of exactly K values. Called before any sampling (and any folder)."""
    fast = st.speedups
    if fast.guidance_cutoff > K:
        raise fail("guidance_cutoff", f" must be <= the number of scales ({K}), got {fast.guidance_cutoff}")
    if fast.prune_ratio > 0 and fast.prune_last > K - 1:
        raise fail(
            "prune_last", f" must be <= {K - 1}: this model has {K} scales and the first is never pruned; "
            f"got {fast.prune_last}",
        )  # fmt: skip
    per_scale(st.guidance_scale, K, "guidance_scale")
    per_scale(st.temperature, K, "temperature")


def _generate(var, vae, B, label_B, generator, st: SamplingSettings, constraint, callback, cuda_graphs):
    K = len(var.patch_nums)
    dev = var.lvl_1L.device
    quant = vae.quantize
    labels = resolve_labels(label_B, B, var.num_classes, dev, generator)
    fast = st.speedups
    refiner, refine_from_scale = fast.refiner, fast.refine_from_scale
    check_for_model(st, K)
    ts = guidance_weights(st.guidance_scale, K, st.guidance_schedule)
    ts = ts[: K - fast.guidance_cutoff] + [0.0] * fast.guidance_cutoff
    taus = per_scale(st.temperature, K, "temperature")
    use_cfg = any(t != 0.0 for t in ts)
    last_guided = max(si for si, t in enumerate(ts) if t != 0.0) if use_cfg else -1
    cls_in = torch.cat((labels, torch.full_like(labels, var.num_classes))) if use_cfg else labels
    switch = refine_from_scale if refiner is not None and refiner is not var else None
    pruned = set(range(max(1, K - fast.prune_last), K)) if fast.prune_ratio > 0 else set()

    stage = _Stage(var, cls_in, st, cuda_graphs)
    x_BlC = stage.first_input()
    pn_last = var.patch_nums[-1]
    f_hat = stage.cond_BD.new_zeros(B, var.Cvae, pn_last, pn_last, dtype=torch.float32)
    idx_per_scale: List[torch.Tensor] = []
    codes: List[torch.Tensor] = []  # each later scale's input codes (B, l, Cvae), model-independent
    for si, pn in enumerate(var.patch_nums):
        ratio = si / (K - 1) if K > 1 else 0.0
        if si == switch:  # the refiner takes over: it reads every scale so far into its own cache
            stage = _Stage(refiner, cls_in[: stage.rows], st, None)
            if si > 0:
                stage.prefill(codes[: si - 1], keep_h=bool(pruned))
                x_BlC = stage.input(si, codes[-1])
            else:
                x_BlC = stage.first_input()
        keep_Bn = pivotal_tokens(codes[-1], fast.prune_ratio) if si in pruned else None
        logits_BlV = stage.logits(si, x_BlC, keep_Bn, keep_h=bool(pruned) and si + 1 in pruned)
        if stage.rows != B:
            t = ts[si]
            logits_BlV = (1 + t) * logits_BlV[:B] - t * logits_BlV[B:]
        if si == 0 and not bool(torch.isfinite(logits_BlV).all()):  # one check (one sync) catches NaN weights
            raise _non_finite(si, pn)
        if taus[si] != 1.0:  # tau = 1 leaves the logits untouched: the reference's exact tokens
            logits_BlV = logits_BlV * (1.0 / taus[si])
        try:
            idx_Bl = sample_top_k_top_p_(logits_BlV, top_k=st.top_k, top_p=st.top_p, generator=generator)
        except RuntimeError as e:  # CPU multinomial refuses NaN/inf probabilities at a later scale
            if "inf" in str(e) or "nan" in str(e):
                raise _non_finite(si, pn) from None
            raise
        if not st.more_smooth:
            h_BlCv = quant.embedding(idx_Bl)
        else:  # visual smoothing (not for FID): soft codes from a tempered Gumbel-softmax
            tau = max(0.27 * (1 - ratio * 0.95), 0.005)
            h_BlCv = gumbel_softmax_with_rng(
                logits_BlV.mul(1 + ratio), tau, generator
            ) @ quant.embedding.weight.unsqueeze(0)
        if constraint is not None:
            idx_Bl, h_BlCv = constraint(si, idx_Bl, h_BlCv)
        idx_per_scale.append(idx_Bl)
        h_BCvhw = h_BlCv.transpose(1, 2).reshape(B, var.Cvae, pn, pn)
        f_hat, next_BCvhw = quant.get_next_autoregressive_input(si, K, f_hat, h_BCvhw)
        if callback is not None:
            callback(si, pn, f_hat, idx_Bl)
        if si == last_guided and stage.rows != B and si != K - 1:
            stage.keep_rows(B)  # guidance cut-off: the unconditional rows are done
        if si != K - 1:
            codes.append(next_BCvhw.view(B, var.Cvae, -1).transpose(1, 2))
            x_BlC = stage.input(si + 1, codes[-1])
    return GenerationOutput(idx_per_scale=idx_per_scale, f_hat=f_hat, labels=labels)
