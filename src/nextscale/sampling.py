"""THE generation loop: coarse-to-fine sampling with a KV cache, guidance, top-k/top-p and Gumbel smoothing.

One loop serves plain sampling, the reference-compatible ``VAR.autoregressive_infer_cfg``, the
pipelines and editing (which passes a ``constraint`` that teacher-forces kept tokens).

Random numbers are drawn exactly as the reference draws them, so a seed gives the same tokens:
  1. only when labels are None: ``multinomial(uniform (1, num_classes), B, replacement=True)``;
  2. per scale: ``multinomial(softmax(masked guided logits).view(B*l, V), 1, replacement=True)``,
     then, only with ``more_smooth``, Gumbel noise ``-log(Exp(1))`` of the logits' shape.
Nothing else draws from the generator.

Guidance: with per-scale weight t_k, ``logits = (1 + t_k) * cond - t_k * uncond``. The reference
ramps ``t_k = cfg * k / (K - 1)`` (``guidance_schedule="linear"``, the default); "constant" uses
``t_k = cfg``; a list gives t_k per scale. In DiT/diffusers terms the guidance scale is ``1 + t_k``.
When every t_k is 0 the unconditional half of the batch is skipped (same tokens, half the work).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from nextscale.errors import NextScaleError
from nextscale.models.var import VAR, KVCache, reference_numerics
from nextscale.models.vqvae import VQVAE

__all__ = ["generate", "CudaGraphs", "GenerationOutput", "sample_top_k_top_p_", "gumbel_softmax_with_rng", "guidance_weights",
           "resolve_labels"]

#: constraint(si, idx_Bl, h_BlCv) -> (idx_Bl, h_BlCv): editing replaces kept tokens (and their code vectors).
Constraint = Callable[[int, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]
#: callback(si, pn, f_hat_BCvhw, idx_Bl): called after each scale (e.g. to stream partial images).
ScaleCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@dataclass
class GenerationOutput:
    idx_per_scale: List[torch.Tensor]   # K x (B, l_k) sampled (or kept) token ids
    f_hat: torch.Tensor                 # (B, Cvae, pn_K, pn_K) summed code features, decoder input
    labels: torch.Tensor                # (B,) class labels used (num_classes = unconditional)


def sample_top_k_top_p_(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
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


def gumbel_softmax_with_rng(logits: torch.Tensor, tau: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Soft Gumbel-softmax sample (no straight-through), drawing noise from ``generator``."""
    gumbels = -torch.empty_like(logits, memory_format=torch.legacy_contiguous_format).exponential_(generator=generator).log()
    return ((logits + gumbels) / tau).softmax(dim=-1)


def guidance_weights(cfg: Union[float, Sequence[float]], num_scales: int, schedule: str = "linear") -> List[float]:
    """Per-scale guidance weights t_k (see module docstring)."""
    if isinstance(cfg, (list, tuple)):
        if len(cfg) != num_scales:
            raise NextScaleError(f"per-scale guidance needs {num_scales} values, got {len(cfg)}")
        return [float(t) for t in cfg]
    cfg = float(cfg)
    if schedule == "linear":
        return [cfg * (si / (num_scales - 1) if num_scales > 1 else 0.0) for si in range(num_scales)]
    if schedule == "constant":
        return [cfg] * num_scales
    raise NextScaleError(f"unknown guidance schedule {schedule!r}; use 'linear' (reference ramp) or 'constant'")


def resolve_labels(label_B, B: int, num_classes: int, device, generator: Optional[torch.Generator]) -> torch.Tensor:
    """None -> random classes (drawn from ``generator``), int -> all that class (-1 = unconditional),
    sequence/tensor -> those labels (-1 entries = unconditional). Returns (B,) long on ``device``."""
    if label_B is None:
        uniform = torch.full((1, num_classes), 1.0 / num_classes, dtype=torch.float32, device=device)
        return torch.multinomial(uniform, num_samples=B, replacement=True, generator=generator).reshape(B)
    if isinstance(label_B, int):
        if label_B >= num_classes or label_B < -1:
            raise NextScaleError(f"class {label_B} is out of range: this model has classes 0..{num_classes - 1} (-1 = unconditional)")
        return torch.full((B,), num_classes if label_B < 0 else label_B, dtype=torch.long, device=device)
    lab = torch.as_tensor(label_B, dtype=torch.long).to(device).reshape(-1)
    if lab.numel() != B:
        raise NextScaleError(f"got {lab.numel()} labels for a batch of {B}")
    if (lab >= num_classes + 1).any() or (lab < -1).any():
        raise NextScaleError(f"class labels must be in 0..{num_classes - 1} (-1 or {num_classes} = unconditional), got {lab.tolist()}")
    return torch.where(lab < 0, num_classes, lab)


@torch.no_grad()
def generate(var: VAR, vae: VQVAE, B: int, label_B=None, *, generator: Optional[torch.Generator] = None,
             cfg: Union[float, Sequence[float]] = 1.5, top_k: int = 0, top_p: float = 0.0, more_smooth: bool = False,
             guidance_schedule: str = "linear", constraint: Optional[Constraint] = None,
             callback: Optional[ScaleCallback] = None, cuda_graphs: Optional["CudaGraphs"] = None) -> GenerationOutput:
    """Sample token maps scale by scale. ``generator`` None uses the global RNG (as the reference).

    Works on any device; under ``torch.autocast`` the blocks run in the autocast dtype while the
    embeddings, head and sampling stay float32. ``cuda_graphs`` (a ``CudaGraphs`` kept by the caller
    across calls) replays the transformer of each scale as one captured CUDA graph: the same kernels,
    so the same tokens, without the per-kernel launch cost that dominates small batches on a GPU.
    """
    with reference_numerics(more_smooth):  # smoothing amplifies rounding ~200x: use the reference's kernels
        return _generate(var, vae, B, label_B, generator, cfg, top_k, top_p, more_smooth, guidance_schedule,
                         constraint, callback, cuda_graphs)


def _non_finite(si: int, pn: int) -> NextScaleError:
    return NextScaleError(f"the model's logits at scale {si + 1} ({pn}x{pn}) are NaN/inf: its weights are not finite "
                          f"(a broken export or a diverged run); re-export from a good checkpoint")


def _generate(var, vae, B, label_B, generator, cfg, top_k, top_p, more_smooth, guidance_schedule, constraint,
              callback, cuda_graphs) -> GenerationOutput:
    K = len(var.patch_nums)
    dev = var.lvl_1L.device
    quant = vae.quantize
    labels = resolve_labels(label_B, B, var.num_classes, dev, generator)
    ts = guidance_weights(cfg, K, guidance_schedule)
    use_cfg = any(t != 0.0 for t in ts)
    cls_in = torch.cat((labels, torch.full_like(labels, var.num_classes))) if use_cfg else labels
    B2 = cls_in.shape[0]

    cond_BD = var.class_emb(cls_in)                      # (B2, D)
    mods = var.block_modulations(cond_BD)                # depth x (B2, 1, 6, C), computed once
    head_mod = var.head_nm.modulation(cond_BD.float())   # (B2, 1, 2, C)
    lvl_pos_1LC = var.lvl_embed(var.lvl_1L) + var.pos_1LC
    first_l = var.first_l
    x_BlC = cond_BD.unsqueeze(1).expand(B2, first_l, -1) + var.pos_start.expand(B2, first_l, -1) + lvl_pos_1LC[:, :first_l]

    run_scale = None
    if cuda_graphs is not None and dev.type == "cuda":
        run_scale = cuda_graphs.runner(var, B2, mods, cond_BD, head_mod)
    if run_scale is None:
        run_scale = _eager_runner(var, mods, cond_BD, head_mod)
    pn_last = var.patch_nums[-1]
    f_hat = cond_BD.new_zeros(B, var.Cvae, pn_last, pn_last, dtype=torch.float32)
    idx_per_scale: List[torch.Tensor] = []
    cur = 0
    for si, pn in enumerate(var.patch_nums):
        ratio = si / (K - 1) if K > 1 else 0.0
        l = pn * pn
        logits_BlV = run_scale(si, x_BlC)                                # (B2, l, V) float32
        if use_cfg:
            t = ts[si]
            logits_BlV = (1 + t) * logits_BlV[:B] - t * logits_BlV[B:]
        if si == 0 and not bool(torch.isfinite(logits_BlV).all()):  # one check (one sync) catches NaN weights
            raise _non_finite(si, pn)
        try:
            idx_Bl = sample_top_k_top_p_(logits_BlV, top_k=top_k, top_p=top_p, generator=generator)
        except RuntimeError as e:  # CPU multinomial refuses NaN/inf probabilities at a later scale
            if "inf" in str(e) or "nan" in str(e):
                raise _non_finite(si, pn) from None
            raise
        if not more_smooth:
            h_BlCv = quant.embedding(idx_Bl)
        else:  # visual smoothing (not for FID): soft codes from a tempered Gumbel-softmax
            tau = max(0.27 * (1 - ratio * 0.95), 0.005)
            h_BlCv = gumbel_softmax_with_rng(logits_BlV.mul(1 + ratio), tau, generator) @ quant.embedding.weight.unsqueeze(0)
        if constraint is not None:
            idx_Bl, h_BlCv = constraint(si, idx_Bl, h_BlCv)
        idx_per_scale.append(idx_Bl)
        h_BCvhw = h_BlCv.transpose(1, 2).reshape(B, var.Cvae, pn, pn)
        f_hat, next_BCvhw = quant.get_next_autoregressive_input(si, K, f_hat, h_BCvhw)
        if callback is not None:
            callback(si, pn, f_hat, idx_Bl)
        cur += l
        if si != K - 1:
            nxt_BlCv = next_BCvhw.view(B, var.Cvae, -1).transpose(1, 2)
            x_BlC = var.word_embed(nxt_BlCv) + lvl_pos_1LC[:, cur:cur + var.patch_nums[si + 1] ** 2]
            if use_cfg:
                x_BlC = x_BlC.repeat(2, 1, 1)
    return GenerationOutput(idx_per_scale=idx_per_scale, f_hat=f_hat, labels=labels)


def _scale_logits(var: VAR, x_BlC, cache: KVCache, mods, cond_BD, head_mod) -> torch.Tensor:
    """One scale through every block (writing its keys/values at ``cache.pos``) and the head."""
    for b, blk in enumerate(var.blocks):
        x_BlC = blk(x_BlC, None, attn_bias=None, kv_cache=cache, mod_B16C=mods[b])
    return var.get_logits(x_BlC, cond_BD, head_mod)  # (B2, l, V)


def _eager_runner(var: VAR, mods, cond_BD, head_mod):
    """run(si, x_BlC) -> logits (B2, l, V), through a fresh KV cache."""
    cache = KVCache(var.depth, var.L)

    def run(si: int, x_BlC: torch.Tensor) -> torch.Tensor:
        logits = _scale_logits(var, x_BlC, cache, mods, cond_BD, head_mod)
        cache.advance(x_BlC.shape[1])
        return logits
    return run


class CudaGraphs:
    """Captured CUDA graphs of the transformer, one per scale, for repeated sampling on a GPU.

    At batch 1-16 a d16 generation launches ~6,000 small kernels and the GPU mostly waits for them;
    replaying one graph per scale removes that cost. Graphs are captured on the first call for a
    (model, batch, autocast dtype) and replayed afterwards, with the KV cache, AdaLN modulations and
    inputs/outputs in static buffers. Keep one instance per pipeline (``NextScalePipeline`` does, on
    CUDA); ``clear()`` frees the graphs and their memory (needed after moving the model).
    Weights may change in place between calls (the graphs read them by address), not be replaced.
    """

    def __init__(self):
        self._sets = {}
        self.failed = False

    def clear(self) -> None:
        self._sets.clear()

    def runner(self, var: VAR, B2: int, mods, cond_BD, head_mod):
        amp = torch.is_autocast_enabled()  # CUDA autocast
        if not amp:
            dt = torch.float32
        elif hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
            dt = torch.get_autocast_dtype("cuda")
        else:
            dt = torch.get_autocast_gpu_dtype()
        key = (id(var), B2, dt, cond_BD.device)
        gs = self._sets.get(key)
        if gs is None or gs["var"] is not var:
            # autocast's cache of cast weights lives only as long as the caller's autocast block: the
            # graphs must cast the weights themselves, so warm-up and capture run with the cache off
            if self.failed:
                return None
            try:
                with torch.autocast("cuda", dtype=dt, enabled=amp, cache_enabled=False):
                    gs = self._sets[key] = self._capture(var, B2, mods, cond_BD, head_mod)
            except RuntimeError as e:  # e.g. a kernel that cannot be captured: run eagerly from now on
                warnings.warn(f"CUDA graph capture failed ({e}); sampling without graphs")
                self.failed = True
                self._sets.clear()
                return None
        for dst, src in zip(gs["mods"], mods):
            dst.copy_(src)
        gs["cond"].copy_(cond_BD)
        gs["head_mod"].copy_(head_mod)

        def run(si: int, x_BlC: torch.Tensor) -> torch.Tensor:
            gs["x"][si].copy_(x_BlC)
            gs["graphs"][si].replay()
            return gs["logits"][si]
        return run

    @staticmethod
    def _capture(var: VAR, B2: int, mods, cond_BD, head_mod):
        static_mods = [m.clone() for m in mods]
        cond, hmod = cond_BD.clone(), head_mod.clone()
        xs = [cond_BD.new_zeros(B2, pn * pn, var.C) for pn in var.patch_nums]
        cache = KVCache(var.depth, var.L)

        def body(si):
            cache.pos = var.begin_ends[si][0]
            return _scale_logits(var, xs[si], cache, static_mods, cond, hmod)

        side = torch.cuda.Stream(device=cond_BD.device)
        side.wait_stream(torch.cuda.current_stream(cond_BD.device))
        with torch.cuda.stream(side):  # warm-up (allocates the cache, initialises kernels) off the capture
            for si in range(len(var.patch_nums)):
                body(si)
        torch.cuda.current_stream(cond_BD.device).wait_stream(side)
        pool = torch.cuda.graph_pool_handle()
        graphs, logits = [], []
        for si in range(len(var.patch_nums)):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                logits.append(body(si))
            graphs.append(g)
        return {"var": var, "mods": static_mods, "cond": cond, "head_mod": hmod, "x": xs, "graphs": graphs,
                "logits": logits, "cache": cache}
