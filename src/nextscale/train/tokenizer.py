"""Training the multi-scale VQ-VAE (``nextscale train-tokenizer``): the VQGAN-family objective on the
shared loop (:class:`~nextscale.train.loop.Trainer`), with two optimizers (autoencoder ``vae`` and
patch discriminator ``disc``), plus export to a tokenizer directory and loading back.

Launch::

    nextscale train-tokenizer --data DIR --preset mnist --out runs/tok          # from scratch, 1 process
    nextscale train-tokenizer --data DIR --init vae_ch160v4096z32.pth --out RUN  # fine-tune a released one
    torchrun --nproc_per_node=8 -m nextscale train-tokenizer ...                # DDP
    nextscale eval-tokenizer runs/tok --data DIR                                # PSNR / SSIM / usage / rFID
    nextscale tokenize --data DIR --tokenizer runs/tok/tokenizer --out CACHE    # then nextscale train --cache CACHE

Loss (defaults and their source; every weight is a flag)::

    L_vae  = w_rec * pixel(x, x_hat)                     l2 (LlamaGen default) or l1 (--rec-loss)
           + w_p   * LPIPS(x, x_hat)                     only with --lpips-weights (w_p = 1.0, LlamaGen)
           + w_vq  * VQ                                  w_vq = 1.0 (LlamaGen / VQGAN codebook_weight)
           + lambda * w_d * adopt(step) * (-mean D(x_hat))   hinge generator loss, w_d = 0.5 (LlamaGen)
    VQ     = mean over scales of  beta * ||sg(f_hat) - f||^2 + ||f_hat - sg(f)||^2,  beta = 0.25
             (VQGAN / VAR; the multi-scale residual quantiser with a straight-through estimator)
    lambda = ||grad_last L_nll|| / (||grad_last L_G|| + 1e-4), clamped to [0, 1e4], detached
             (VQGAN's adaptive weight at the last decoder layer ``decoder.conv_out``; --no-adaptive-weight: 1)
    L_disc = 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(sg(x_hat))))                   hinge (VQGAN)
    adopt(step) = 0 before --disc-start (LlamaGen: 20000), 1 after; the discriminator trains from then on.

The discriminator is VQGAN's NLayerDiscriminator (pix2pix PatchGAN: 4x4 convs, stride 2, LeakyReLU
0.2) with GroupNorm instead of BatchNorm: no running statistics to synchronise under DDP and no
dependence on the batch composition (so gradient accumulation and resume stay exact).
Optimisation: AdamW betas (0.9, 0.95), lr 1e-4 for both networks, no weight decay, clip 1.0,
constant lr (LlamaGen ``vq_train.py``).

Codebook health: per-scale usage (% of codes whose running hit count exceeds the reference margin)
and perplexity (exp of the entropy of the running hit distribution) are logged as
``codes/usage_PxP`` / ``codes/ppl_PxP``; ``--reinit-dead-every N`` re-initialises codes that no
scale has hit for a long time to random residual vectors of the current batch (codebook restart).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale import dist
from nextscale.configs import ConfigError, VQVAEConfig, get_preset
from nextscale.errors import FieldError, FieldName, NextScaleError
from nextscale.evaluation.tokenizer import codebook_stats, scale_grid
from nextscale.hub import load_tokenizer
from nextscale.train.config import TokenizerTrainConfig
from nextscale.train.loop import FitResult, Objective, RunParts, StepContext
from nextscale.train.optim import OptimSpec, Schedule, build_adamw, param_groups
from nextscale.train.run import export, schedule_length, train

__all__ = [
    "TokenizerObjective",
    "PatchDiscriminator",
    "hinge_d_loss",
    "hinge_g_loss",
    "adaptive_weight",
    "build_vae",
    "train_tokenizer",
    "export_tokenizer",
]


# ------------------------------------------------------------------------------------------------
# Losses and the discriminator
# ------------------------------------------------------------------------------------------------


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """VQGAN's hinge discriminator loss: 0.5 * (E relu(1 - D(x)) + E relu(1 + D(x_hat)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: -E D(x_hat)."""
    return -logits_fake.mean()


def adaptive_weight(
    nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, eps: float = 1e-4
) -> torch.Tensor:
    """VQGAN's balance: ||dL_nll/dW|| / (||dL_G/dW|| + 1e-4) at the last decoder layer W, clamped to [0, 1e4]."""
    g_nll = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (g_nll.norm() / (g_gan.norm() + eps)).clamp(0.0, 1e4).detach()


def _groups(ch: int) -> int:
    for g in (32, 16, 8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


class PatchDiscriminator(nn.Module):
    """PatchGAN (VQGAN's NLayerDiscriminator) with GroupNorm: conv4x4/s2 + LeakyReLU(0.2), then
    ``n_layers - 1`` conv4x4/s2 + norm + LReLU (width doubling up to 8x), one conv4x4/s1 block and a
    1-channel conv4x4/s1 head. Output: a map of real/fake logits, one per receptive-field patch."""

    def __init__(self, in_channels: int = 3, ch: int = 64, n_layers: int = 3):
        super().__init__()
        layers: List[nn.Module] = [nn.Conv2d(in_channels, ch, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ch * prev, ch * mult, 4, 2, 1, bias=False),
                nn.GroupNorm(_groups(ch * mult), ch * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ch * prev, ch * mult, 4, 1, 1, bias=False),
            nn.GroupNorm(_groups(ch * mult), ch * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ch * mult, 1, 4, 1, 1),
        ]
        self.main = nn.Sequential(*layers)
        for m in self.modules():  # VQGAN's weights_init: N(0, 0.02) convs, N(1, 0.02) norm gains
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


# ------------------------------------------------------------------------------------------------
# The objective
# ------------------------------------------------------------------------------------------------


class GANTokenizerObjective(Objective):
    """What every tokenizer recipe (VQ here, BSQ in train/bsq.py) shares: modules ``vae`` and (with the GAN)
    ``disc``, their AdamW optimizers on a cosine schedule, and the step from which the GAN is on."""

    def modules(self):
        return {"vae": self.vae, **({"disc": self.disc} if self.disc is not None else {})}

    def ema_modules(self):
        return ["vae"]

    def configure_optimizers(self, total_steps: int, wrapped) -> Dict[str, OptimSpec]:
        tc, out = self.tc, {}
        for name, lr in (("vae", tc.lr), ("disc", tc.disc_lr or tc.lr)):
            if name not in wrapped:
                continue
            model = wrapped[name]
            opt = build_adamw(param_groups(model), lr=lr)
            sched = Schedule(lr=lr, total=total_steps, warmup=tc.warmup_steps, kind="cos",
                             wp0=0.0 if tc.warmup_steps else 1.0, wpe=tc.lr_end, wd=tc.weight_decay)  # fmt: skip
            out[name] = OptimSpec(opt, [p for p in model.parameters() if p.requires_grad], sched, tc.grad_clip)
        return out

    def gan_on(self, step: int) -> bool:
        return self.disc is not None and self.tc.disc_weight > 0 and step >= self.tc.disc_start

    def active_optimizers(self, step: int) -> List[str]:
        return ["vae", "disc"] if self.gan_on(step) else ["vae"]


class TokenizerObjective(GANTokenizerObjective):
    """The VQGAN-family objective for the multi-scale VQ-VAE; optimizers ``vae`` and ``disc``."""

    kind, exports, model_key, title = "tokenizer", "vae", "vqvae", "tokenizer"
    train_hint = "nextscale train-tokenizer"

    def __init__(
        self,
        vae,
        disc: Optional[PatchDiscriminator],
        tc: TokenizerTrainConfig,
        preview: Optional[torch.Tensor] = None,
        lpips: Optional[nn.Module] = None,
    ):
        self.vae, self.disc, self.tc = vae, disc, tc
        self.lpips = lpips
        self.preview = preview  # a few fixed images (3, R, R) for the progress picture
        self.K = len(vae.v_patch_nums)
        self.n_reinit = 0

    # ---- loop interface: modules, optimizers, GAN gating from GANTokenizerObjective ----
    def state_dict(self):
        # the quantiser's hit-count EMA switches its decay on this counter: part of the exact state
        return {"record_hit": int(self.vae.quantize.record_hit), "n_reinit": self.n_reinit}

    def load_state_dict(self, state):
        self.vae.quantize.record_hit = int(state.get("record_hit", 0))
        self.n_reinit = int(state.get("n_reinit", 0))

    # ---- losses ----
    def _rec(self, x, x_hat):
        return F.mse_loss(x_hat, x) if self.tc.rec_loss == "l2" else F.l1_loss(x_hat, x)

    def train_step(self, batch, ctx: StepContext):
        tc, dev = self.tc, ctx.device
        x = batch["image"].to(dev, non_blocking=True)
        if tc.reinit_dead_every > 0 and ctx.micro == 0 and ctx.step > 0 and ctx.step % tc.reinit_dead_every == 0:
            self._reinit_dead(x, ctx.step)
        with ctx.autocast():
            x_hat, usages, vq_loss = ctx.wrapped["vae"](x, ret_usages=True)
        x_hat = x_hat.float()
        rec = self._rec(x, x_hat)
        nll = tc.rec_weight * rec
        out: Dict[str, torch.Tensor] = {}
        if self.lpips is not None and tc.perceptual_weight > 0:
            with ctx.autocast():
                p_loss = self.lpips(x, x_hat).mean()
            nll = nll + tc.perceptual_weight * p_loss.float()
            out["lpips"] = p_loss.detach()
        loss = nll + tc.codebook_weight * vq_loss
        gan = self.gan_on(ctx.step)
        if gan:
            d = self.disc
            d.requires_grad_(False)  # the generator loss must not write discriminator grads
            try:
                with ctx.autocast():
                    g_loss = hinge_g_loss(d(x_hat).float())
            finally:
                d.requires_grad_(True)
            lam = (
                adaptive_weight(nll, g_loss, self.vae.decoder.conv_out.weight)
                if tc.adaptive_weight
                else torch.ones((), device=dev)
            )
            loss = loss + lam * tc.disc_weight * g_loss
            out["gan/g_loss"], out["gan/d_weight"] = g_loss.detach(), lam
        ctx.backward(loss, "vae")
        if gan:
            both = torch.cat([x, x_hat.detach()], dim=0)
            with ctx.autocast():
                logits = ctx.wrapped["disc"](both).float()
            lr_, lf_ = logits[: len(x)], logits[len(x) :]
            d_loss = hinge_d_loss(lr_, lf_)
            ctx.backward(d_loss, "disc")
            out["gan/d_loss"], out["gan/logits_real"], out["gan/logits_fake"] = (
                d_loss.detach(),
                lr_.mean().detach(),
                lf_.mean().detach(),
            )
        with torch.no_grad():
            mse = (x_hat.clamp(-1, 1) - x).div(2).pow(2).flatten(1).mean(1)
            out["psnr"] = (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()
        out["loss"], out["rec"], out["vq"] = loss.detach(), rec.detach(), vq_loss.detach()
        if usages is not None:
            out["usage"] = torch.tensor(float(np.mean(usages)))
            _, ppl = codebook_stats(self.vae.quantize.ema_vocab_hit_SV)
            for pn, u, pp in zip(self.vae.v_patch_nums, usages, ppl):
                out[f"codes/usage_{pn}x{pn}"] = torch.tensor(float(u))
                out[f"codes/ppl_{pn}x{pn}"] = torch.tensor(float(pp))
        return out

    @torch.no_grad()
    def _reinit_dead(self, x: torch.Tensor, step: int) -> None:
        """Codebook restart: codes no scale has hit recently get random residual vectors of this batch."""
        q = self.vae.quantize
        dead = q.ema_vocab_hit_SV.sum(0) < self.tc.dead_threshold
        n = int(dead.sum())
        if n == 0 or q.record_hit == 0:
            return
        was = self.vae.training
        self.vae.eval()
        try:
            f = self.vae.img_to_f(x).float()
        finally:
            self.vae.train(was)
        B, C, H, W = f.shape
        f_rest, pool, SN = f.clone(), [], len(q.v_patch_nums)
        for si, pn in enumerate(q.v_patch_nums):  # the vectors each scale actually quantises
            rest = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != SN - 1 else f_rest
            flat = rest.permute(0, 2, 3, 1).reshape(-1, C)
            pool.append(flat)
            h = q.embedding(q.nearest_code(flat).view(B, pn, pn)).permute(0, 3, 1, 2)
            f_rest = f_rest - q.upsample_phi(si, h, H, W, SN)
        pool = torch.cat(pool)
        g = torch.Generator(device="cpu").manual_seed(int(self.tc.seed) * 1_000_003 + int(step))
        pick = torch.randint(0, len(pool), (n,), generator=g).to(pool.device)
        new = pool[pick] + 1e-3 * torch.randn(n, C, generator=g).to(pool.device) * pool.std()
        if dist.initialized() and dist.get_world_size() > 1:
            import torch.distributed as tdist

            new = new.contiguous()
            tdist.broadcast(new, src=0)
        q.embedding.weight.data[dead] = new.to(q.embedding.weight.dtype)
        self.n_reinit += n

    @torch.no_grad()
    def eval_step(self, batch):
        vae = self.vae
        x = batch["image"].to(next(vae.parameters()).device)
        x_hat, _, vq = vae(x, ret_usages=False)
        a, b = (x + 1) / 2, (x_hat.clamp(-1, 1) + 1) / 2
        mse = (a - b).pow(2).flatten(1).mean(1)
        B = len(x)
        out = {
            "psnr": (float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).sum()), B),
            "rec": (float(self._rec(x, x_hat.float())) * B, B),
            "vq": (float(vq) * B, B),
        }
        if min(x.shape[-2:]) >= 11:
            from nextscale.evaluation.recon import ssim

            out["ssim"] = (float(ssim(a, b, reduction="none").sum()), B)
        return out

    @torch.no_grad()
    def sample_images(self, step: int, ema):
        if self.preview is None:
            return None
        from nextscale.models import VQVAE

        vae = self.vae
        if "vae" in ema:
            vae = VQVAE.from_config(self.vae.config, test_mode=True).to(next(self.vae.parameters()).device)
            ema["vae"].copy_to(vae)
        was = vae.training
        vae.eval()
        try:
            grid = scale_grid(vae, self.preview.to(next(vae.parameters()).device))
        finally:
            vae.train(was)
        return grid[None]

    @classmethod
    def build(cls, tc: TokenizerTrainConfig, device: torch.device) -> RunParts:
        """(objective, train_set, val_set, run_config, total_steps) for ``tc`` (no training)."""
        from nextscale.data import ImageFolder, find_split, scan_image_folder

        tc.validate()
        root = find_split(tc.data, "train")  # raises for a missing folder / a file
        vae = build_vae(tc)  # beta is in its config (not set on the module from outside)
        R = vae.resolution
        train_set = ImageFolder(root, R, train=True, hflip=tc.hflip, mid_reso=tc.mid_reso)
        val_set = None
        vroot = find_split(tc.data, "val")
        if vroot is not None and os.path.isdir(vroot):
            vs, vc = scan_image_folder(vroot)
            val_set = ImageFolder(vroot, R, train=False, mid_reso=tc.mid_reso, samples=vs, classes=vc)
        disc = build_discriminator(tc, vae.config.in_channels, R)
        src = val_set if val_set is not None else preview_set(train_set, root, R, tc)
        lp = build_lpips(tc, device)
        ob = cls(vae, disc, tc, preview=preview_images(src), lpips=lp)
        iters, total = schedule_length(tc, len(train_set))
        vae.to(device)
        run_config = {
            "kind": cls.kind,
            "train": tc.to_dict(),
            "model": {"vqvae": vae.config.to_dict()},
            "derived": {
                "steps": total,
                "world_size": dist.get_world_size(),
                "iters_per_epoch": iters,
                "train_samples": len(train_set),
                "val_samples": len(val_set) if val_set is not None else 0,
                "disc_params": sum(p.numel() for p in disc.parameters()) if disc is not None else 0,
                "lpips": lp is not None,
            },
        }
        return RunParts(ob, train_set, val_set, run_config, total)

    def after_fit(self, run_dir: str, result: FitResult, log) -> None:
        export_after_fit(self, run_dir, log)

    @classmethod
    def save_export(cls, state, weights, run_dir: str, out: str, extra) -> None:
        """A tokenizer directory (``model_index.json`` + ``vqvae/``) with ``weights``."""
        from nextscale.hub import save_tokenizer
        from nextscale.models import VQVAE

        vae = VQVAE.from_config(VQVAEConfig.from_dict(state["config"]["model"]["vqvae"]), test_mode=True)
        vae.load_state_dict(weights)
        save_tokenizer(vae.eval(), out, extra=extra)


# ------------------------------------------------------------------------------------------------
# Tokenizer building (loading: nextscale.hub.load_tokenizer)
# ------------------------------------------------------------------------------------------------


def _check_fits_latent(pn, cfg: VQVAEConfig) -> None:
    """``patch_nums`` re-schedules the scales; the image side is last scale x downsample, so a last scale
    above the architecture's latent would silently train at a larger resolution (1 2 99 on an 8x8
    latent -> 396 px images, ~100x slower). Smaller schedules (e.g. 1 2 4 -> 16 px) are fine."""
    if pn is None:
        return
    side = cfg.v_patch_nums[-1]
    if pn[-1] > side or any(b <= a for a, b in zip(pn, pn[1:])) or pn[0] < 1:
        raise FieldError(
            FieldName("patch_nums"),
            f" {' '.join(map(str, pn))} does not fit this tokenizer's {side}x{side} latent "
            f"({cfg.resolution} px images): give increasing sides ending in at most {side}, e.g. ",
            FieldName("patch_nums"),
            f" {' '.join(map(str, cfg.v_patch_nums))} (a larger resolution needs a larger preset)",
        )


def build_vae(tc: TokenizerTrainConfig):
    """A trainable VQ-VAE: fresh (preset + overrides, seeded) or from ``tc.init``."""
    from nextscale.models import VQVAE

    over = {
        k: v
        for k, v in (
            ("vocab_size", tc.vocab_size),
            ("z_channels", tc.z_channels),
            ("ch", tc.ch),
            ("num_res_blocks", tc.num_res_blocks),
        )
        if v is not None
    }
    pn = tuple(int(p) for p in tc.patch_nums) if tc.patch_nums else None
    if tc.init is not None:  # the init model's architecture and schedule (--patch-nums may change the schedule)
        src = load_tokenizer(tc.init, v_patch_nums=pn)
        _check_fits_latent(pn, src.config)
        if over:
            raise FieldError(
                FieldName(next(iter(over))),
                " cannot change an ",
                FieldName("init"),
                " tokenizer's architecture; drop it",
            )
        cfg = src.config if pn is None else src.config.replace(v_patch_nums=pn)
        if tc.beta is not None:  # the commitment weight is a config field: the exported config.json records it
            cfg = cfg.replace(beta=float(tc.beta))
        vae = VQVAE.from_config(cfg, test_mode=False)
        vae.load_state_dict(src.state_dict())
        vae.quantize.ema_vocab_hit_SV.zero_()
        return vae.train().requires_grad_(True)
    try:
        cfg = get_preset(tc.preset).vqvae
        _check_fits_latent(pn, cfg)
        if pn is not None:
            over["v_patch_nums"] = pn
        if tc.beta is not None:
            over["beta"] = float(tc.beta)
        cfg = cfg.replace(**over) if over else cfg
    except ConfigError as e:
        raise NextScaleError(str(e)) from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tc.seed)
        vae = VQVAE.from_config(cfg, test_mode=False)
        if tc.eini:
            vae.quantize.eini(tc.eini)
    return vae.train()


# ---- parts every tokenizer recipe builds the same way (VQ here, BSQ in train/bsq.py) ----
def build_lpips(tc: TokenizerTrainConfig, device=None):
    """The perceptual loss's network when the run uses it (None otherwise), on ``device``."""
    if tc.lpips_weights is None or tc.perceptual_weight <= 0:
        return None
    from nextscale.train.lpips import LPIPS

    lp = LPIPS.from_weights(tc.lpips_weights)
    return lp if device is None else lp.to(device)


def build_discriminator(tc: TokenizerTrainConfig, in_channels: int, R: int):
    """The patch discriminator (seeded from seed + 1) when disc_weight > 0; refuses one too deep for R px."""
    if tc.disc_weight <= 0:
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tc.seed + 1)
        disc = PatchDiscriminator(in_channels, tc.disc_ch, tc.disc_layers)
    try:
        with torch.no_grad():
            ok = min(disc(torch.zeros(1, in_channels, R, R)).shape[-2:]) >= 1
    except RuntimeError:
        ok = False
    if not ok:
        raise FieldError(FieldName("disc_layers"), f" {tc.disc_layers} is too deep for {R}px images; use fewer")
    return disc


def preview_set(train_set, root: str, R: int, tc: TokenizerTrainConfig):
    """The training images without augmentation (what the preview grid shows when there is no val split)."""
    from nextscale.data import ImageFolder

    return ImageFolder(root, R, train=False, mid_reso=tc.mid_reso, samples=train_set.samples,
                       classes=train_set.classes)  # fmt: skip


def preview_images(src, n: int = 4) -> torch.Tensor:
    """n images spread evenly over ``src`` (the reconstruction grid of every sample step)."""
    idx = np.linspace(0, len(src) - 1, min(n, len(src))).round().astype(int)
    return torch.stack([src[(int(i), -1)]["image"] for i in idx])


def export_after_fit(objective, run_dir: str, log) -> None:
    """The finished run's tokenizer, exported to ``RUN/tokenizer`` (EMA weights when kept)."""
    out = os.path.join(run_dir, "tokenizer")
    info = export(type(objective), run_dir, out)
    log.info(f"tokenizer exported to {out} ({info['weights']} weights, step {info['step']})")


def train_tokenizer(tc: TokenizerTrainConfig) -> FitResult:
    """Train (or resume) a tokenizer run (``nextscale train-tokenizer``); under torchrun for DDP. On
    completion the tokenizer is exported to ``RUN/tokenizer`` (EMA weights when kept)."""
    return train(TokenizerObjective, tc)


def export_tokenizer(run: str, out: str, weights: str = "auto") -> Dict[str, Any]:
    """A ``train-tokenizer`` run folder (latest checkpoint) or ``step_*.pt`` -> a tokenizer directory
    (``model_index.json`` + ``vqvae/``) that ``nextscale tokenize`` / ``train`` load as their tokenizer."""
    return export(TokenizerObjective, run, out, weights)
