"""Training Infinity's bitwise tokenizer (``nextscale train-tokenizer --bitwise``): a BSQ-VAE on the shared loop,
with the VQ tokenizer trainer's losses around a binary spherical quantiser.

Loss (every weight is a field of ``TokenizerTrainConfig``)::

    L_vae = w_rec * pixel(x, x_hat) + w_p * LPIPS (with lpips_weights) + w_q * BSQ + GAN (as train-tokenizer)
    BSQ   = mean over scales k of  beta * ||z_k - sg(q_k)||^2                           commitment (beta 0.25)
                                  + w_ent * (H_sample - gamma * H_codebook) / tau^-1     entropy penalty (0.1, 1)

Quantiser (forward values exactly :class:`~nextscale.models.bsq.MultiScaleBSQ`'s): per scale the residual is
area-resized, L2-normalised (z_k) and snapped to sign(z) / sqrt(d); the straight-through estimator passes the
gradient of q to z (``z + sg(zhat - z)``); the quantised scale is trilinearly resized back and subtracted from
the residual with its gradient stopped (the later scales do not push on the earlier ones), and summed into the
decoder's input. Entropy terms (BSQ, Zhao et al. 2024; factorised per bit as in Infinity's quantiser): the soft
probability of bit j is p = sigmoid(-4 tau^-1 z_j / sqrt(d)); H_sample = mean over positions of the summed
binary entropies (low: confident bits), H_codebook = summed binary entropies of the batch-mean p (high: every
bit used both ways). Images are square, of the size of the schedule (``pn``, ``n_scales``) x ``patch_size``;
the conv tokenizer then runs on any aspect ratio.

The export (``RUN/tokenizer``) is a BSQ tokenizer directory (``nextscale.train.t2i_parts``) that
``nextscale train-t2i --tokenizer`` reads.
"""

from __future__ import annotations

import math
import os
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from nextscale import dist
from nextscale.errors import FieldError, FieldName
from nextscale.train.config import TokenizerTrainConfig
from nextscale.train.loop import FitResult, RunParts, StepContext
from nextscale.train.run import export, schedule_length
from nextscale.train.tokenizer import GANTokenizerObjective

__all__ = [
    "BSQ_TRAIN_PRESETS",
    "BSQTokenizerObjective",
    "bsq_train_forward",
    "binary_entropy",
    "build_bsq",
    "train_any_tokenizer",
    "export_any_tokenizer",
]

#: Small BSQ-VAEs for training here (the released ones: ``nextscale.models.bsq.BSQ_PRESETS``).
BSQ_TRAIN_PRESETS = {
    "tiny": dict(codebook_dim=8, base_ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, patch_size=4),
    "small": dict(codebook_dim=16, base_ch=64, ch_mult=(1, 2, 2, 4), num_res_blocks=2, patch_size=8),
}
BSQ_TRAIN_PRESETS["mnist"] = BSQ_TRAIN_PRESETS["tiny"]


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of Bernoulli(p), elementwise; 0 log 0 = 0."""
    return -(p * torch.log(p.clamp_min(1e-8)) + (1 - p) * torch.log((1 - p).clamp_min(1e-8)))


def bsq_train_forward(vae, x_B3HW, schedule_hw, inv_temperature: float = 100.0):
    """(x_hat (B, 3, H, W) unclamped, {"commit", "h_sample", "h_codebook"} per scale lists) of a training pass.
    ``vae``: the BSQ-VAE or its DDP wrapper (called, so the wrapper's forward runs: the gradients of every
    parameter in the graph, the decoder's too, are then averaged in the backward)."""
    from nextscale.models.bsq import resize

    raw = vae(x_B3HW).float()
    d = raw.shape[1]
    H, W = raw.shape[-2:]
    residual, summed = raw, torch.zeros_like(raw)
    terms: Dict[str, List[torch.Tensor]] = {"commit": [], "h_sample": [], "h_codebook": []}
    for hw in schedule_hw:
        r_k = resize(residual, tuple(hw), "area")
        z_BhwD = F.normalize(r_k.permute(0, 2, 3, 1), dim=-1, eps=1e-12)
        zhat = torch.where(z_BhwD > 0, 1.0, -1.0).to(z_BhwD.dtype) * (1.0 / math.sqrt(d))
        q_BhwD = z_BhwD + (zhat - z_BhwD).detach()  # straight through: d q / d z = 1
        terms["commit"].append(F.mse_loss(z_BhwD, q_BhwD.detach()))
        p = torch.sigmoid(-4.0 * inv_temperature * z_BhwD / math.sqrt(d))
        terms["h_sample"].append(binary_entropy(p).sum(-1).mean())
        terms["h_codebook"].append(binary_entropy(p.reshape(-1, d).mean(0)).sum())
        q_full = resize(q_BhwD.permute(0, 3, 1, 2), (H, W), "trilinear")
        residual = residual - q_full.detach()
        summed = summed + q_full
    return getattr(vae, "module", vae).decoder(summed), terms


def build_bsq(tc: TokenizerTrainConfig):
    """A trainable BSQ-VAE: fresh (preset + overrides, seeded) or from ``tc.init``."""
    from nextscale.models.bsq import BSQ_PRESETS, BSQVAE, BSQConfig
    from nextscale.train.t2i_parts import load_bsq_any

    over = {k: v for k, v in (("codebook_dim", tc.z_channels), ("base_ch", tc.ch), ("num_res_blocks",
            tc.num_res_blocks), ("ch_mult", tc.ch_mult), ("patch_size", tc.patch_size)) if v is not None}  # fmt: skip
    if tc.init is not None:
        if over:
            raise FieldError(FieldName(next(iter(over))), " cannot change an ", FieldName("init"),
                             " tokenizer's architecture; drop it")  # fmt: skip
        src = load_bsq_any(tc.init)
        vae = BSQVAE(src.config)
        vae.load_state_dict(src.state_dict())
        return vae.train().requires_grad_(True)
    if tc.preset in BSQ_TRAIN_PRESETS:
        base = dict(BSQ_TRAIN_PRESETS[tc.preset])
    elif tc.preset in BSQ_PRESETS:
        c = BSQ_PRESETS[tc.preset]
        base = dict(codebook_dim=c.codebook_dim, base_ch=c.base_ch, ch_mult=c.ch_mult,
                    num_res_blocks=c.num_res_blocks, patch_size=c.patch_size)  # fmt: skip
    else:
        names = ", ".join(list(BSQ_TRAIN_PRESETS) + list(BSQ_PRESETS))
        raise FieldError(FieldName("preset"), f" {tc.preset!r} is not a bitwise tokenizer; choose one of {names}")
    cfg = BSQConfig(**{**base, **over})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tc.seed)
        vae = BSQVAE(cfg)
    return vae.train()


class BSQTokenizerObjective(GANTokenizerObjective):
    """The BSQ tokenizer recipe; optimizers ``vae`` and (with the GAN) ``disc``."""

    kind, exports, model_key, title = "bsq-tokenizer", "vae", "bsq", "bitwise tokenizer"
    train_hint = "nextscale train-tokenizer --bitwise"

    def __init__(self, vae, disc, tc: TokenizerTrainConfig, schedule, preview=None, lpips=None):
        self.vae, self.disc, self.tc, self.schedule = vae, disc, tc, [tuple(hw) for hw in schedule]
        self.preview, self.lpips = preview, lpips

    def _quant_loss(self, terms) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tc = self.tc
        beta = 0.25 if tc.beta is None else tc.beta
        per = [beta * c + tc.entropy_weight * (hs - tc.entropy_gamma * hc) / tc.inv_temperature
               for c, hs, hc in zip(terms["commit"], terms["h_sample"], terms["h_codebook"])]  # fmt: skip
        return torch.stack(per).mean(), torch.stack(terms["h_sample"]).mean(), torch.stack(terms["h_codebook"]).mean()

    def train_step(self, batch, ctx: StepContext):
        from nextscale.train.tokenizer import adaptive_weight, hinge_d_loss, hinge_g_loss

        tc, dev = self.tc, ctx.device
        x = batch["image"].to(dev, non_blocking=True)
        with ctx.autocast():
            x_hat, terms = bsq_train_forward(ctx.wrapped["vae"], x, self.schedule, tc.inv_temperature)
        x_hat = x_hat.float()
        rec = F.mse_loss(x_hat, x) if tc.rec_loss == "l2" else F.l1_loss(x_hat, x)
        nll = tc.rec_weight * rec
        out: Dict[str, torch.Tensor] = {}
        if self.lpips is not None and tc.perceptual_weight > 0:
            p_loss = self.lpips(x, x_hat).mean()
            nll = nll + tc.perceptual_weight * p_loss.float()
            out["lpips"] = p_loss.detach()
        q_loss, h_s, h_c = self._quant_loss(terms)
        loss = nll + tc.codebook_weight * q_loss
        gan = self.gan_on(ctx.step)
        if gan:
            self.disc.requires_grad_(False)
            try:
                g_loss = hinge_g_loss(self.disc(x_hat).float())
            finally:
                self.disc.requires_grad_(True)
            last = self.vae.decoder.conv_out.conv.weight
            lam = adaptive_weight(nll, g_loss, last) if tc.adaptive_weight else torch.ones((), device=dev)
            loss = loss + lam * tc.disc_weight * g_loss
            out["gan/g_loss"], out["gan/d_weight"] = g_loss.detach(), lam
        ctx.backward(loss, "vae")
        if gan:
            logits = ctx.wrapped["disc"](torch.cat([x, x_hat.detach()])).float()
            d_loss = hinge_d_loss(logits[: len(x)], logits[len(x) :])
            ctx.backward(d_loss, "disc")
            out["gan/d_loss"] = d_loss.detach()
        with torch.no_grad():
            mse = (x_hat.clamp(-1, 1) - x).div(2).pow(2).flatten(1).mean(1)
            out["psnr"] = (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()
        out.update(loss=loss.detach(), rec=rec.detach(), bsq=q_loss.detach(), h_sample=h_s.detach(),
                   h_codebook=h_c.detach())  # fmt: skip
        return out

    @torch.no_grad()
    def sample_images(self, step: int, ema):
        """Rows of [original | reconstruction] of a few fixed images."""
        if self.preview is None:
            return None
        from nextscale.models.bsq import BSQVAE

        vae, dev = self.vae, next(self.vae.parameters()).device
        if "vae" in ema:
            vae = BSQVAE(self.vae.config).to(dev)
            ema["vae"].copy_to(vae)
        was = vae.training
        vae.eval()
        try:
            x = self.preview.to(dev)
            rec = vae.decode(vae.encode(x, self.schedule)[0])
        finally:
            vae.train(was)
        grid = torch.cat([torch.cat([a, b], dim=-1) for a, b in zip(x, rec)], dim=-2)  # (3, n H, 2 W)
        return ((grid.permute(1, 2, 0).cpu().numpy() + 1) * 127.5).clip(0, 255).round().astype(np.uint8)[None]

    @classmethod
    def build(cls, tc: TokenizerTrainConfig, device: torch.device) -> RunParts:
        from nextscale.data import ImageFolder, find_split
        from nextscale.schedules import image_size, scale_schedule
        from nextscale.train.tokenizer import build_discriminator, build_lpips, preview_images, preview_set

        tc.validate()
        root = find_split(tc.data, "train")
        vae = build_bsq(tc)
        sched = scale_schedule(1.0, tc.pn, tc.n_scales)
        R = image_size(sched, vae.patch_size)[0]
        train_set = ImageFolder(root, R, train=True, hflip=tc.hflip, mid_reso=tc.mid_reso)
        disc = build_discriminator(tc, 3, R)
        preview = preview_images(preview_set(train_set, root, R, tc))
        lp = build_lpips(tc, device)
        iters, total = schedule_length(tc, len(train_set))
        vae.to(device)
        from dataclasses import asdict

        run_config = {
            "kind": cls.kind,
            "train": tc.to_dict(),
            "model": {"bsq": asdict(vae.config)},
            "derived": {"steps": total, "world_size": dist.get_world_size(), "iters_per_epoch": iters,
                        "train_samples": len(train_set), "schedule": [list(hw) for hw in sched], "resolution": R},
        }  # fmt: skip
        return RunParts(cls(vae, disc, tc, sched, preview, lp), train_set, None, run_config, total)

    def after_fit(self, run_dir: str, result: FitResult, log) -> None:
        from nextscale.train.tokenizer import export_after_fit

        export_after_fit(self, run_dir, log)

    @classmethod
    def save_export(cls, state, weights, run_dir: str, out: str, extra) -> None:
        """A BSQ tokenizer directory with ``weights``."""
        from nextscale.models.bsq import BSQVAE, BSQConfig
        from nextscale.train.t2i_parts import save_bsq_dir

        vae = BSQVAE(BSQConfig(**state["config"]["model"]["bsq"]))
        vae.load_state_dict(weights)
        save_bsq_dir(vae.eval(), out, extra=extra)


def train_any_tokenizer(tc: TokenizerTrainConfig) -> FitResult:
    """``nextscale train-tokenizer``: the VQ-VAE (:func:`nextscale.train.tokenizer.train_tokenizer`), or with
    ``tc.bitwise`` Infinity's BSQ tokenizer."""
    from nextscale.train.run import train
    from nextscale.train.tokenizer import train_tokenizer

    return train(BSQTokenizerObjective, tc) if tc.bitwise else train_tokenizer(tc)


def export_any_tokenizer(run: str, out: str, weights: str = "auto"):
    """``nextscale export-tokenizer``: a VQ run -> a tokenizer directory; a bitwise run -> a BSQ tokenizer
    directory (``bsq/``) that ``train-t2i`` reads."""
    import json

    from nextscale.train.tokenizer import export_tokenizer

    cfg = os.path.join(run, "config.json") if os.path.isdir(run) else None
    if cfg and os.path.isfile(cfg):
        with open(cfg) as f:
            if json.load(f).get("kind") == BSQTokenizerObjective.kind:
                return export(BSQTokenizerObjective, run, out, weights)
    return export_tokenizer(run, out, weights)
