"""Training the VAR transformer (``nextscale train``): the objective plus the glue that builds data,
models and the loop from a :class:`VARTrainConfig`; ``export`` and ``tokenize`` helpers.

Launch::

    nextscale train --data DIR --tokenizer MODEL --preset d16 --batch-size 768 --epochs 200   # 1 process
    torchrun --nproc_per_node=8 -m nextscale train --data DIR --tokenizer MODEL ...            # DDP, 1 node
    torchrun --nnodes=2 --node_rank=R --master_addr=HOST --master_port=29500 \\
             --nproc_per_node=8 -m nextscale train ... [--fsdp]                               # multi-node
    nextscale tokenize --data DIR --tokenizer MODEL --out CACHE     # then: nextscale train --cache CACHE ...
    nextscale export RUN --out DIR                                   # -> NextScalePipeline.from_pretrained(DIR)

Loss (the reference trainer): cross-entropy with label smoothing over the L teacher-forced tokens,
each weighted 1/L, summed per image and averaged over the batch. Class dropout (the null class with
probability ``cond_drop``) is drawn per sample from the sample's seed, so DDP and resume see the
same drops as a single uninterrupted process.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from nextscale import dist
from nextscale.configs import ConfigError, ModelConfig, VARConfig, get_preset
from nextscale.data import (
    MID_RESO,
    ImageFolder,
    TokenCache,
    build_token_cache,
    find_split,
    scan_image_folder,
    tokenizer_fingerprint,
)
from nextscale.errors import FieldError, FieldName, NextScaleError
from nextscale.hub import load_tokenizer, save_tokenizer
from nextscale.train.config import VARTrainConfig, field_checked
from nextscale.train.loop import FitResult, Objective, RunParts, StepContext
from nextscale.train.optim import OptimSpec, Schedule, build_adamw, param_groups
from nextscale.train.run import export, schedule_length, train

__all__ = [
    "VARObjective",
    "train_var",
    "export_run",
    "tokenize",
    "build_class_data",
    "resolve_tokenizer",
    "derived_schedule",
    "progressive_stage",
    "NO_DECAY_KEYS",
]

#: Parameter-name fragments without weight decay (the reference's ``nowd_keys``), on top of all 1-D
#: tensors and biases: start/positional/level embeddings, AdaLN/LayerNorm gains, attention scales.
NO_DECAY_KEYS = (
    "cls_token",
    "start_token",
    "task_token",
    "cfg_uncond",
    "pos_embed",
    "pos_1LC",
    "pos_start",
    "start_pos",
    "lvl_embed",
    "gamma",
    "beta",
    "ada_gss",
    "moe_bias",
    "scale_mul",
)


def progressive_stage(step: int, total: int, warmup: int, pg: float, pg0: int, K: int) -> int:
    """Index of the last scale trained at ``step`` (-1: all), the reference's progressive rule."""
    if pg <= 0:
        return -1
    if step <= warmup:
        si = pg0
    elif step >= total * pg:
        si = K - 1
    else:
        progress = min(max((step - warmup) / max(total * pg - warmup, 1e-9), 0.0), 1.0)
        si = pg0 + round(progress * (K - 1 - pg0))
    return -1 if si >= K - 1 else int(si)


# ------------------------------------------------------------------------------------------------
# The objective
# ------------------------------------------------------------------------------------------------


class VARObjective(Objective):
    """Teacher-forced next-scale prediction with the reference's loss weighting."""

    kind, exports, model_key, title, train_hint = "var", "var", "var", "VAR transformer", "nextscale train"

    def __init__(self, vae, var, tc: VARTrainConfig, total_steps: int, warmup_steps: int, lr: float, labels: List[str]):
        self.vae, self.var, self.tc = vae, var, tc
        self.total_steps, self.warmup_steps, self.peak_lr = total_steps, warmup_steps, lr
        self.labels = labels
        self.cond_drop = var.config.cond_drop_rate if tc.cond_drop is None else float(tc.cond_drop)
        # Class dropout is drawn here from each sample's seed and the model is called with
        # cond_drop_rate=0 (its own dropout draws from the global RNG), so DDP == single process
        # and resume is exact.
        self.V, self.L, self.K = var.V, var.L, len(var.patch_nums)
        self.begin_ends = list(var.begin_ends)
        self.pg_warmup = (
            tc.progressive_warmup_steps if tc.progressive_warmup_steps is not None else max(1, round(total_steps / 300))
        )
        self.prog_it, self.last_prog_si, self.first_prog = 0, -1, True
        self.prog_si, self.prog_wp = -1, 1.0

    # ---- loop interface ----
    def modules(self):
        return {"var": self.var}

    def configure_optimizers(self, total_steps: int, wrapped) -> Dict[str, OptimSpec]:
        model = wrapped["var"]
        opt = build_adamw(param_groups(model, NO_DECAY_KEYS), lr=self.peak_lr)
        kind = self.tc.schedule or (f"lin{self.tc.progressive:g}" if self.tc.progressive > 0 else "lin0")
        sched = Schedule(
            lr=self.peak_lr,
            total=total_steps,
            warmup=self.warmup_steps,
            kind=kind,
            wp0=self.tc.warmup_start,
            wpe=self.tc.lr_end,
            wd=self.tc.weight_decay,
            wd_end=self.tc.weight_decay_end,
        )
        clip_fn = None  # sharded parameters: the loop clips them (Parallel.clip_fn)
        return {
            "var": OptimSpec(opt, [p for p in model.parameters() if p.requires_grad], sched, self.tc.grad_clip, clip_fn)
        }

    def units_per_sample(self):
        return {"tok": float(self.L)}

    def ema_modules(self):
        return ["var"]

    def state_dict(self):
        return {"prog_it": self.prog_it, "last_prog_si": self.last_prog_si, "first_prog": self.first_prog}

    def load_state_dict(self, state):
        self.prog_it = int(state.get("prog_it", 0))
        self.last_prog_si = int(state.get("last_prog_si", -1))
        self.first_prog = bool(state.get("first_prog", True))

    # ---- data -> teacher forcing ----
    @torch.no_grad()
    def _targets(self, batch, device) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Per-scale ids [(B, pn_k^2)] and all ids gt_BL (B, L): from the cache or the encoder."""
        if "tokens" in batch:
            gt_BL = batch["tokens"].to(device, non_blocking=True)
            idx_Bl = [gt_BL[:, b:e] for b, e in self.begin_ends]
        else:
            idx_Bl = self.vae.img_to_idxBl(batch["image"].to(device, non_blocking=True))
            gt_BL = torch.cat(idx_Bl, dim=1)
        return idx_Bl, gt_BL

    def _update_progressive(self, step: int) -> None:
        si = progressive_stage(
            step, self.total_steps, self.warmup_steps, self.tc.progressive, self.tc.progressive_start, self.K
        )
        if si != self.last_prog_si:
            if self.last_prog_si != -1:
                self.first_prog = False
            self.last_prog_si, self.prog_it = si, 0
        self.prog_it += 1
        wp = 1.0 if self.first_prog else max(min(self.prog_it / self.pg_warmup, 1.0), 0.01)
        self.prog_si, self.prog_wp = si, wp

    def train_step(self, batch, ctx: StepContext):
        dev = ctx.device
        if ctx.micro == 0:
            self._update_progressive(ctx.step)
        idx_Bl, gt_BL = self._targets(batch, dev)
        label_B = batch["label"].to(dev)
        drop_B = batch["u_drop"].to(dev) < self.cond_drop
        label_B = torch.where(drop_B, torch.full_like(label_B, self.var.num_classes), label_B)
        with torch.no_grad():
            x_BLCv = self.vae.quantize.idxBl_to_var_input(idx_Bl)  # (B, L - first_l, Cvae)
        with ctx.autocast():
            logits_BlV = ctx.wrapped["var"](label_B, x_BLCv, prog_si=self.prog_si, cond_drop_rate=0.0)  # (B, ed, V)
        B, ed = logits_BlV.shape[:2]
        gt_Bl = gt_BL[:, :ed]
        loss_Bl = F.cross_entropy(
            logits_BlV.float().reshape(-1, self.V),
            gt_Bl.reshape(-1),
            label_smoothing=self.tc.label_smooth,
            reduction="none",
        ).view(B, ed)
        lw_1l = torch.full((1, ed), 1.0 / self.L, device=dev)
        if self.prog_si >= 0:  # the newest scale fades in over progressive_warmup_steps
            bg, e = self.begin_ends[self.prog_si]
            lw_1l[:, bg:e] *= self.prog_wp
        loss = loss_Bl.mul(lw_1l).sum(dim=-1).mean()
        ctx.backward(loss, "var")
        out = self._metrics(logits_BlV.detach(), gt_Bl, mean=True)
        out["loss_train"] = loss.detach()
        if self.prog_si >= 0:
            out["prog/stage"] = torch.tensor(float(self.prog_si))
            out["prog/weight"] = torch.tensor(float(self.prog_wp))
        return out

    @torch.no_grad()
    def _metrics(self, logits_BlV, gt_Bl, mean: bool) -> Dict[str, Any]:
        """loss / acc (%) over all computed tokens, the last scale ("tail") and every scale.
        mean=True: batch means (tensors); mean=False: (sum over the batch, count) for evaluation."""
        B, ed = gt_Bl.shape
        ce_Bl = F.cross_entropy(logits_BlV.float().reshape(-1, self.V), gt_Bl.reshape(-1), reduction="none").view(B, ed)
        hit_Bl = (logits_BlV.argmax(dim=-1) == gt_Bl).float() * 100
        parts = {"": (0, ed)}
        if ed == self.L:
            parts["_tail"] = self.begin_ends[-1]
        for (b, e), pn in zip(self.begin_ends, self.var.patch_nums):
            if e <= ed:
                parts[f"_{pn}x{pn}"] = (b, e)
        out = {}
        for name, (b, e) in parts.items():
            key = "scale/" if name not in ("", "_tail") else ""
            l_B, a_B = ce_Bl[:, b:e].mean(1), hit_Bl[:, b:e].mean(1)
            kl, ka = f"{key}loss{name}", f"{key}acc{name}"
            if mean:
                out[kl], out[ka] = l_B.mean(), a_B.mean()
            else:
                out[kl], out[ka] = (l_B.sum().item(), B), (a_B.sum().item(), B)
        return out

    @torch.no_grad()
    def eval_step(self, batch):
        dev = next(self.var.parameters()).device
        idx_Bl, gt_BL = self._targets(batch, dev)
        x_BLCv = self.vae.quantize.idxBl_to_var_input(idx_Bl)
        logits_BLV = self.var(batch["label"].to(dev), x_BLCv)  # eval mode: no class dropout
        return self._metrics(logits_BLV, gt_BL, mean=False)

    @torch.no_grad()
    def sample_images(self, step: int, ema):
        from nextscale.models import VAR
        from nextscale.pipelines import NextScalePipeline

        var = self.var
        if "var" in ema:
            var = VAR.from_config(self.var.config, self.vae).to(next(self.var.parameters()).device)
            ema["var"].copy_to(var)
        was = var.training
        var.eval()
        try:
            n = 8 if self.var.num_classes > 1 else 4
            pipe = NextScalePipeline(vqvae=self.vae, var=var)
            out = pipe(
                class_labels=[c % self.var.num_classes for c in range(n)],
                guidance_scale=1.5,
                top_k=0,
                top_p=0.0,
                generator=torch.Generator(device=next(var.parameters()).device).manual_seed(0),
                output_type="np",
                show_progress=False,
            )
        finally:
            var.train(was)
        return (np.clip(out.images, 0, 1) * 255).round().astype(np.uint8)

    # ---- a command of this objective (nextscale.train.run) ----
    @classmethod
    def build(cls, tc: VARTrainConfig, device: torch.device, config: Optional[VARConfig] = None) -> RunParts:
        """Models, data and the objective for ``tc`` (no training); ``config``: the transformer's
        architecture instead of ``tc.preset``'s (its class count and scales come from the data and the
        tokenizer)."""
        tc.validate()
        try:
            preset = get_preset(tc.preset) if tc.init is None and config is None else None
        except ConfigError as e:
            raise NextScaleError(str(e)) from None
        from nextscale.models import VAR

        vae = resolve_tokenizer(tc, preset)
        init_var = None
        if tc.init is not None:
            from nextscale import hub

            path = str(hub.resolve_model_path(tc.init)) if tc.init == "default" else tc.init
            if not os.path.exists(path):
                raise FieldError(
                    FieldName("init"), f" {tc.init!r} not found; pass a pipeline directory, a var_d*.pth or 'default'"
                )
            ivae, init_var, _meta = hub.load_components(path)
            vae = vae if vae is not None else ivae
            var_cfg = init_var.config
        else:
            if vae is None:
                raise FieldError(
                    "pass ",
                    FieldName("tokenizer"),
                    " MODEL (a trained VQ-VAE: model folder, vae_*.pth, 'default'), or ",
                    FieldName("tokenizer"),
                    " random for a smoke test",
                )
            var_cfg = preset.var if config is None else config.replace(patch_nums=tuple(vae.v_patch_nums))
            if tc.shared_aln is not None:
                var_cfg = var_cfg.replace(shared_aln=tc.shared_aln)
            if tc.attn_l2_norm is not None:
                var_cfg = var_cfg.replace(attn_l2_norm=tc.attn_l2_norm)
        if tuple(vae.v_patch_nums) != tuple(var_cfg.patch_nums):
            from nextscale.configs import PRESETS

            fit = [n for n, c in sorted(PRESETS.items()) if tuple(c.var.patch_nums) == tuple(vae.v_patch_nums)]
            head = (
                f"the tokenizer's scales {list(vae.v_patch_nums)} differ from the transformer's "
                f"{list(var_cfg.patch_nums)}; "
            )
            if fit and tc.init is None:  # the presets that fit, named as the setting to change
                raise FieldError(head, FieldName("preset"), f" {' / '.join(fit)} has the tokenizer's scales")
            raise FieldError(head, "use a matching ", FieldName("preset"), " / ", FieldName("tokenizer"))
        vae.eval().requires_grad_(False)
        train_set, val_set, classes = build_class_data(tc, vae, vae.resolution)
        n_cls = max(1, len(classes))
        if init_var is not None:
            if init_var.num_classes != n_cls:
                raise FieldError(
                    FieldName("init"),
                    f" model has {init_var.num_classes} classes, the data has {n_cls}; "
                    "fine-tune on data with the same classes",
                )
            var = init_var
        else:
            var_cfg = var_cfg.replace(num_classes=n_cls)
            if tc.cond_drop is not None:
                var_cfg = var_cfg.replace(cond_drop_rate=tc.cond_drop)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(tc.seed)
                var = VAR.from_config(var_cfg, vae)
                var.init_weights(
                    init_adaln=tc.init_adaln,
                    init_adaln_gamma=tc.init_adaln_gamma,
                    init_head=tc.init_head,
                    init_std=tc.init_std,
                )
        vae.to(device)
        iters_per_epoch, total, warmup, lr = derived_schedule(tc, len(train_set))
        labels = list(classes)
        ob = cls(vae, var, tc, total, warmup, lr, labels)
        run_config = {
            "kind": cls.kind,
            "train": tc.to_dict(),
            "model": ModelConfig(vqvae=vae.config, var=var.config).to_dict(),
            "classes": labels,
            "derived": {
                "steps": total,
                "warmup_steps": warmup,
                "lr": lr,
                "world_size": dist.get_world_size(),
                "iters_per_epoch": iters_per_epoch,
                "train_samples": len(train_set),
                "val_samples": len(val_set) if val_set is not None else 0,
                "tokenizer_fingerprint": tokenizer_fingerprint(vae, vae.v_patch_nums),
            },
        }
        return RunParts(ob, train_set, val_set, run_config, total)

    def prepare_run_dir(self, run_dir: str) -> None:
        """The tokenizer beside the checkpoints: an export (and a fine-tune) needs it."""
        if not os.path.isdir(os.path.join(run_dir, "tokenizer")):
            save_tokenizer(self.vae, os.path.join(run_dir, "tokenizer"))

    @classmethod
    def save_export(cls, state, weights, run_dir: str, out: str, extra) -> None:
        """A pipeline directory (``NextScalePipeline.from_pretrained(out)``) of the run's tokenizer and
        the transformer with ``weights``."""
        from nextscale.hub import save_components
        from nextscale.models import VAR

        tok_dir = os.path.join(run_dir, "tokenizer")
        if not os.path.isdir(tok_dir):
            raise NextScaleError(f"{run_dir!r} has no tokenizer/ folder; was it written by nextscale train?")
        vae = load_tokenizer(tok_dir)
        cfg = state.get("config", {})
        var = VAR.from_config(ModelConfig.from_dict(cfg["model"]).var, vae)
        var.load_state_dict(weights)
        labels = cfg.get("classes")
        save_components(out, vae, var.eval(), labels=labels if labels and any(labels) else None, extra=extra)


# ------------------------------------------------------------------------------------------------
# The commands: train, export, tokenize
# ------------------------------------------------------------------------------------------------


def build_class_data(tc, vae, resolution: int):
    """(train_set, val_set or None, classes) of ``tc.cache`` (token ids) or ``tc.data`` (images)."""
    if tc.cache is not None:
        cache = TokenCache.open(tc.cache)
        cache.check(tokenizer_fingerprint(vae, vae.v_patch_nums), vae.v_patch_nums)
        train = cache.dataset("train", train=True, hflip=tc.hflip)
        val = cache.dataset("val", train=False) if cache.has_split("val") else None
        return train, val, cache.classes
    root = find_split(tc.data, "train")
    samples, classes = scan_image_folder(root)
    train = ImageFolder(root, resolution, train=True, hflip=tc.hflip, mid_reso=tc.mid_reso)
    val = None
    vroot = find_split(tc.data, "val")
    if vroot is not None and os.path.isdir(vroot):
        vs, vclasses = scan_image_folder(vroot)
        if vclasses != classes:
            raise NextScaleError(f"class folders of {vroot!r} differ from those of {root!r}; make them match")
        val = ImageFolder(vroot, resolution, train=False, mid_reso=tc.mid_reso, samples=vs, classes=vclasses)
    return train, val, classes


def derived_schedule(tc: VARTrainConfig, n_train: int) -> Tuple[int, int, int, float]:
    """(steps per epoch, steps, warm-up steps, peak lr) of ``tc`` on ``n_train`` samples: the given
    values, else the reference's rules (2% warm-up, lr = base_lr x batch_size / 256)."""
    iters_per_epoch, total = schedule_length(tc, n_train)
    warmup = tc.warmup_steps if tc.warmup_steps is not None else int(round(total / 50))
    lr = tc.lr if tc.lr is not None else tc.base_lr * tc.batch_size / 256
    return iters_per_epoch, total, warmup, lr


def resolve_tokenizer(tc, preset: Optional[ModelConfig]):
    """The tokenizer of ``tc``: ``tc.tokenizer``, else the token cache's, else None."""
    if tc.tokenizer is not None:
        return load_tokenizer(tc.tokenizer, preset=preset, seed=tc.seed)
    if tc.cache is not None:
        d = os.path.join(tc.cache, "tokenizer")
        if os.path.isdir(d):
            return load_tokenizer(d)
        raise FieldError(f"token cache {tc.cache!r} has no tokenizer/ folder; pass ", FieldName("tokenizer"), " MODEL")
    return None


def train_var(tc: VARTrainConfig) -> FitResult:
    """Train (or resume) a VAR run (``nextscale train``); call under torchrun for DDP."""
    return train(VARObjective, tc)


def export_run(run: str, out: str, weights: str = "auto") -> Dict[str, Any]:
    """A VAR run's newest checkpoint (or a ``step_*.pt``) -> a pipeline directory
    (``NextScalePipeline.from_pretrained(out)``); ``weights``: "ema", "raw", or "auto" (EMA when kept)."""
    return export(VARObjective, run, out, weights)


def tokenize(
    data: str,
    tokenizer: str,
    out: str,
    preset: Optional[str] = None,
    flip: bool = True,
    batch_size: int = 64,
    device: Optional[str] = None,
    workers: int = 0,
    mid_reso: float = MID_RESO,
    overwrite: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> TokenCache:
    """Pre-encode every image of ``data`` (and its mirror image) into multi-scale token ids."""
    from nextscale.validate import check_device, check_mid_reso, check_seed

    if batch_size <= 0:
        raise FieldError(FieldName("batch_size"), f" must be a positive integer, got {batch_size}")
    if workers < 0:
        raise FieldError(FieldName("workers"), f" must be >= 0 (0 = load in the main process), got {workers}")
    field_checked(check_mid_reso, "mid_reso", mid_reso)
    field_checked(check_seed, "seed", seed)
    if device is not None:
        device = str(field_checked(check_device, "device", device))
    p = None
    if preset is not None:
        try:
            p = get_preset(preset)
        except ConfigError as e:
            raise NextScaleError(str(e)) from None
    find_split(data, "train")
    vae = load_tokenizer(tokenizer, preset=p, seed=seed)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    vae.to(dev).eval()
    return build_token_cache(
        data,
        vae,
        vae.v_patch_nums,
        vae.resolution,
        out,
        save_tokenizer=lambda d: save_tokenizer(vae, d),
        flip=flip,
        mid_reso=mid_reso,
        batch_size=batch_size,
        device=dev,
        workers=workers,
        overwrite=overwrite,
        progress=progress,
    )
