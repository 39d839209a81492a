"""Training the raster-order AR baseline on the shared loop (:class:`~nextscale.train.loop.Trainer`):
the same optimizer, schedules, EMA, checkpoints and resume as VAR's ``nextscale train``, with
teacher forcing over the tokens of a single-scale tokenizer in raster order.

    from nextscale.train.ar import train_ar
    from nextscale.train.config import VARTrainConfig
    tc = VARTrainConfig(cache="runs/ar-cache", preset="ar-mnist", run_dir="runs/ar", steps=1400,
                        batch_size=32, lr=2e-3, warmup_steps=50, lr_end=0.05, ema=0.995)
    train_ar(tc)                      # re-running continues from the newest checkpoint
    export_ar_run("runs/ar", "runs/ar/model")   # -> ARPipeline.from_pretrained(...)

Both are :mod:`nextscale.train.run`'s one path with :class:`ARObjective`.

The settings are :class:`~nextscale.train.config.VARTrainConfig`'s (one source of the recipe; the
progressive-training fields do not apply); ``preset`` names an AR preset (``ar-mnist``, ``ar-d16`` …,
``nextscale.models.ar.AR_PRESETS``) unless ``train_ar(tc, config=ARConfig(...))`` gives the model.
The tokenizer must be single-scale (``train_tokenizer`` with ``patch_nums=(side,)``); the map side,
codebook size and class count come from the tokenizer and the data.

Loss: cross-entropy (with the config's label smoothing) over the L teacher-forced tokens, each
weighted 1/L, summed per image and averaged over the batch: VAR's weighting with one scale. Class
dropout is drawn from each sample's seed (``u_drop``), as VAR's, so resume and DDP are exact.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from nextscale import dist
from nextscale.configs import ConfigError
from nextscale.data import tokenizer_fingerprint
from nextscale.errors import FieldError, FieldName, NextScaleError
from nextscale.hub import load_tokenizer
from nextscale.models.ar import ARConfig, ARTransformer, get_ar_preset
from nextscale.train.config import VARTrainConfig
from nextscale.train.loop import FitResult, Objective, RunParts, StepContext
from nextscale.train.optim import OptimSpec, Schedule, build_adamw, param_groups
from nextscale.train.run import export, train
from nextscale.train.var import NO_DECAY_KEYS, VARObjective, build_class_data, derived_schedule, resolve_tokenizer

__all__ = ["ARObjective", "train_ar", "export_ar_run", "AR_NO_DECAY_KEYS"]

#: VAR's no-decay names plus the token embedding's table (a lookup, like the position embeddings).
AR_NO_DECAY_KEYS = NO_DECAY_KEYS + ("tok_embed",)


class ARObjective(Objective):
    """Teacher-forced next-token prediction over one raster-ordered token map."""

    kind, exports, model_key, title = "ar", "ar", "ar", "AR baseline"
    train_hint = "nextscale.train.ar.train_ar"

    def __init__(
        self,
        vae,
        ar: ARTransformer,
        tc: VARTrainConfig,
        total_steps: int,
        warmup_steps: int,
        lr: float,
        labels: List[str],
    ):
        self.vae, self.ar, self.tc = vae, ar, tc
        self.total_steps, self.warmup_steps, self.peak_lr = total_steps, warmup_steps, lr
        self.labels = labels
        self.cond_drop = ar.config.cond_drop_rate if tc.cond_drop is None else float(tc.cond_drop)
        self.V, self.L = ar.V, ar.L

    # ---- loop interface ----
    def modules(self):
        return {"ar": self.ar}

    def configure_optimizers(self, total_steps: int, wrapped) -> Dict[str, OptimSpec]:
        model = wrapped["ar"]
        opt = build_adamw(param_groups(model, AR_NO_DECAY_KEYS), lr=self.peak_lr)
        sched = Schedule(
            lr=self.peak_lr,
            total=total_steps,
            warmup=self.warmup_steps,
            kind=self.tc.schedule or "lin0",
            wp0=self.tc.warmup_start,
            wpe=self.tc.lr_end,
            wd=self.tc.weight_decay,
            wd_end=self.tc.weight_decay_end,
        )
        clip_fn = None  # sharded parameters: the loop clips them (Parallel.clip_fn)
        return {
            "ar": OptimSpec(opt, [p for p in model.parameters() if p.requires_grad], sched, self.tc.grad_clip, clip_fn)
        }

    def units_per_sample(self):
        return {"tok": float(self.L)}

    def ema_modules(self):
        return ["ar"]

    # ---- data -> teacher forcing ----
    @torch.no_grad()
    def _targets(self, batch, device) -> torch.Tensor:
        """Raster-ordered ids (B, L): the cache's tokens or the encoder's (last = only scale)."""
        if "tokens" in batch:
            gt_BL = batch["tokens"].to(device, non_blocking=True)
        else:
            gt_BL = self.vae.img_to_idxBl(batch["image"].to(device, non_blocking=True))[-1]
        if gt_BL.shape[1] != self.L:
            raise NextScaleError(
                f"the data has {gt_BL.shape[1]} tokens per image, the AR model {self.L}: "
                f"build the token cache with the single-scale tokenizer"
            )
        return gt_BL

    def train_step(self, batch, ctx: StepContext):
        dev = ctx.device
        gt_BL = self._targets(batch, dev)
        label_B = batch["label"].to(dev)
        drop_B = batch["u_drop"].to(dev) < self.cond_drop
        label_B = torch.where(drop_B, torch.full_like(label_B, self.ar.num_classes), label_B)
        with ctx.autocast():
            logits_BLV = ctx.wrapped["ar"](label_B, gt_BL, cond_drop_rate=0.0)
        B = gt_BL.shape[0]
        loss_BL = F.cross_entropy(
            logits_BLV.float().reshape(-1, self.V),
            gt_BL.reshape(-1),
            label_smoothing=self.tc.label_smooth,
            reduction="none",
        ).view(B, self.L)
        loss = loss_BL.mean(dim=-1).mean()  # weights 1/L summed per image = the mean over positions
        ctx.backward(loss, "ar")
        out = self._metrics(logits_BLV.detach(), gt_BL, mean=True)
        out["loss_train"] = loss.detach()
        return out

    @torch.no_grad()
    def _metrics(self, logits_BLV, gt_BL, mean: bool) -> Dict[str, Any]:
        """loss / acc (%) over all tokens ("tail" = the same: the one map is the last scale)."""
        B = gt_BL.shape[0]
        ce_B = (
            F.cross_entropy(logits_BLV.float().reshape(-1, self.V), gt_BL.reshape(-1), reduction="none")
            .view(B, -1)
            .mean(1)
        )
        acc_B = (logits_BLV.argmax(dim=-1) == gt_BL).float().mean(1) * 100
        out = {}
        for name in ("", "_tail"):
            if mean:
                out[f"loss{name}"], out[f"acc{name}"] = ce_B.mean(), acc_B.mean()
            else:
                out[f"loss{name}"], out[f"acc{name}"] = (ce_B.sum().item(), B), (acc_B.sum().item(), B)
        return out

    @torch.no_grad()
    def eval_step(self, batch):
        dev = next(self.ar.parameters()).device
        gt_BL = self._targets(batch, dev)
        return self._metrics(self.ar(batch["label"].to(dev), gt_BL), gt_BL, mean=False)

    @torch.no_grad()
    def sample_images(self, step: int, ema):
        from nextscale.pipeline_ar import ARPipeline

        ar = self.ar
        dev = next(ar.parameters()).device
        if "ar" in ema:
            ar = ARTransformer(self.ar.config).to(dev)
            ema["ar"].copy_to(ar)
        was = ar.training
        pipe = ARPipeline(self.vae, ar)
        try:
            n = 8 if ar.num_classes > 1 else 4
            out = pipe(
                class_labels=[c % ar.num_classes for c in range(n)],
                guidance_scale=1.5,
                top_k=0,
                top_p=0.0,
                generator=torch.Generator(device=dev).manual_seed(0),
                output_type="np",
            )
        finally:
            pipe.disable_cpu_kernels()
            ar.train(was)
        return (np.clip(out.images, 0, 1) * 255).round().astype(np.uint8)

    @classmethod
    def build(cls, tc: VARTrainConfig, device: torch.device, config: Optional[ARConfig] = None) -> RunParts:
        """(objective, train_set, val_set, run_config, total_steps) of an AR run (no training); ``config``:
        the model instead of ``tc.preset``'s (its vocabulary, side and classes come from the tokenizer
        and the data)."""
        tc.validate()
        if tc.init is not None:
            raise FieldError(
                "fine-tuning (", FieldName("init"), ") is not supported for the AR baseline; train from scratch"
            )
        vae = resolve_tokenizer(tc, None)
        if vae is None:
            raise FieldError("pass ", FieldName("tokenizer"), " MODEL: a single-scale VQ-VAE (patch_nums of one scale)")
        vae.eval().requires_grad_(False)
        train_set, val_set, classes = build_class_data(tc, vae, vae.resolution)
        n_cls = max(1, len(classes))
        cfg = _ar_config(tc, config, vae, n_cls)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tc.seed)
            ar = ARTransformer(cfg)
            ar.init_weights(
                init_adaln=tc.init_adaln,
                init_adaln_gamma=tc.init_adaln_gamma,
                init_head=tc.init_head,
                init_std=tc.init_std,
            )
        vae.to(device)
        iters_per_epoch, total, warmup, lr = derived_schedule(tc, len(train_set))
        labels = list(classes)
        ob = cls(vae, ar, tc, total, warmup, lr, labels)
        run_config = {
            "kind": cls.kind,
            "train": tc.to_dict(),
            "model": {"vqvae": vae.config.to_dict(), "ar": cfg.to_dict()},
            "classes": labels,
            "derived": {
                "steps": total,
                "warmup_steps": warmup,
                "lr": lr,
                "world_size": dist.get_world_size(),
                "iters_per_epoch": iters_per_epoch,
                "train_samples": len(train_set),
                "val_samples": len(val_set) if val_set is not None else 0,
                "params": sum(p.numel() for p in ar.parameters()),
                "tokenizer_fingerprint": tokenizer_fingerprint(vae, vae.v_patch_nums),
            },
        }
        return RunParts(ob, train_set, val_set, run_config, total)

    prepare_run_dir = VARObjective.prepare_run_dir  # the tokenizer beside the checkpoints (self.vae)

    @classmethod
    def save_export(cls, state, weights, run_dir: str, out: str, extra) -> None:
        """An AR model directory (``ARPipeline.from_pretrained(out)``) of the run's tokenizer and the
        transformer with ``weights``."""
        from nextscale.pipeline_ar import save_ar_pipeline

        cfg = state.get("config", {})
        vae = load_tokenizer(os.path.join(run_dir, "tokenizer"))
        ar = ARTransformer(ARConfig.from_dict(cfg["model"]["ar"]))
        ar.load_state_dict(weights)
        labels = cfg.get("classes")
        save_ar_pipeline(out, vae, ar.eval(), labels=labels if labels and any(labels) else None, extra=extra)


def _ar_config(tc: VARTrainConfig, config: Optional[ARConfig], vae, n_cls: int) -> ARConfig:
    if config is None:
        try:
            config = get_ar_preset(tc.preset)
        except ConfigError as e:
            raise NextScaleError(str(e)) from None
    if len(vae.v_patch_nums) != 1:
        raise NextScaleError(
            f"the AR baseline trains on a single-scale tokenizer; this one has scales {list(vae.v_patch_nums)} "
            f"(train one with a single scale, patch_nums ({vae.v_patch_nums[-1]},))"
        )
    config = config.replace(vocab_size=int(vae.vocab_size), side=int(vae.v_patch_nums[-1]), num_classes=n_cls)
    if tc.cond_drop is not None:
        config = config.replace(cond_drop_rate=tc.cond_drop)
    if tc.attn_l2_norm is not None:
        config = config.replace(attn_l2_norm=tc.attn_l2_norm)
    return config


def train_ar(tc: VARTrainConfig, config: Optional[ARConfig] = None) -> FitResult:
    """Train (or resume) an AR run; under torchrun for DDP (the process group is joined there).
    ``config``: the model instead of ``tc.preset``'s."""
    return train(ARObjective, tc, config=config)


def export_ar_run(run: str, out: str, weights: str = "auto") -> Dict[str, Any]:
    """An AR run's newest checkpoint -> an AR model directory (``ARPipeline.from_pretrained(out)``).
    ``weights``: "ema", "raw", or "auto" (EMA when the run kept one)."""
    return export(ARObjective, run, out, weights)
