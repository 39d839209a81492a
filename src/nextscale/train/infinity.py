"""Training Infinity text-to-image transformers (``nextscale train-t2i``) on the shared loop
(:class:`~nextscale.train.loop.Trainer`: resume, EMA, DDP/FSDP, progress, sample pictures).

Launch::

    nextscale train-tokenizer --bitwise --data DIR --run-dir runs/bsq            # a BSQ tokenizer first
    nextscale train-t2i --data DIR --tokenizer runs/bsq/tokenizer --steps 2000   # fresh tiny model, tiny T5
    nextscale train-t2i --data DIR --init my-t2i-model --steps 500               # fine-tune an exported model
    torchrun --nproc_per_node=8 -m nextscale train-t2i ...                       # DDP (--parallel fsdp: FSDP2)
    nextscale export-t2i RUN --out DIR     # -> NextScaleT2IPipeline.from_pretrained(DIR) (also RUN/pipeline)

Data (:mod:`nextscale.data_t2i`): a folder of images + same-name ``.txt`` captions or a ``.jsonl``; bad
samples are named and skipped or refused (``on_bad``); every image goes to its nearest aspect-ratio bucket and
a batch is always one bucket (one scale schedule). Captions are encoded once into ``RUN/cache/text``; without
bitwise self-correction the images are encoded once into ``RUN/cache/bits`` (with it, the tokenizer's encoder
runs every step: BSC needs the raw features, which the bits do not keep).

Per step (the reference trainer): BSC (:func:`~nextscale.models.bsq.bitwise_self_correction`, the reference's
``noise_apply_layers / strength / requant``) gives the next-scale inputs and targets; text dropout replaces a
caption's features by the model's learned ``cfg_uncond`` rows (length-matched, as the reference's conditional
dropout); loss = per-token bit cross entropy weighted by ``scale_loss_weights`` ("uniform": 1/L, the
reference's default; "sqrt_area": what its ``reweight_loss_by_scale=1`` intends, which crashes there), summed
over tokens, mean over the batch.

Randomness, all reproducible on resume: text dropout is a function of each sample's seed (the sampler's
keys); BSC draws from a ``numpy.random.RandomState`` (strengths) and a ``torch.Generator`` (flip masks) per
rank, seeded from (seed, rank) and stored in every checkpoint; stochastic depth uses torch's global generator
(saved by the loop).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, List

import numpy as np
import torch

from nextscale import dist
from nextscale.errors import FieldError, FieldName, NextScaleError
from nextscale.train.config import T2ITrainConfig
from nextscale.train.loop import FitResult, Objective, RunParts, StepContext
from nextscale.train.optim import OptimSpec, Schedule, build_adamw, param_groups
from nextscale.train.run import export, schedule_length, train
from nextscale.train.var import NO_DECAY_KEYS

__all__ = ["T2IObjective", "T2ITrainSet", "clean_inputs", "train_t2i", "export_t2i", "check_init_layout"]


# ------------------------------------------------------------------------------------------------ data
class T2ITrainSet(torch.utils.data.Dataset):
    """Training samples: the image (or its cached bits), the caption's cached text features and the dropout
    flag (drawn from the sample's seed: ``data_t2i.text_dropped``)."""

    def __init__(self, data, text_cache, text_dropout: float, bits_cache=None):
        from nextscale.data_t2i import CachedT2I, CaptionedImages

        self.data, self.text = data, text_cache
        self.src = (
            CachedT2I(data, bits_cache, text_dropout) if bits_cache is not None else CaptionedImages(data, text_dropout)
        )

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key) -> Dict[str, Any]:
        item = self.src[key]
        item["text"] = self.text.row(item["index"])  # the real caption's features; dropped rows: cfg_uncond later
        return item


def collate(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    buckets = {it["bucket"] for it in items}
    if len(buckets) != 1:
        raise NextScaleError(f"a batch must come from one bucket, got {sorted(buckets)}")
    out = {
        "bucket": buckets.pop(),
        "kv": torch.cat([it["text"] for it in items]),
        "lens": torch.tensor([it["text"].shape[0] for it in items]),
        "dropped": torch.tensor([bool(it["dropped"]) for it in items]),
        "index": torch.tensor([it["index"] for it in items]),
    }
    if "image" in items[0]:
        out["image"] = torch.stack([it["image"] for it in items])
    else:
        out["bits"] = [torch.stack(t) for t in zip(*(it["bits"] for it in items))]
    return out


def _bucket_sampler(buckets, micro, rank, world, seed, start, grad_accum):
    from nextscale.data_t2i import BucketBatchSampler

    s = BucketBatchSampler(buckets, micro, seed=seed, rank=rank, world_size=world, start=start)
    s.iters_per_epoch = math.ceil(s.batches_per_epoch / grad_accum)  # what the loop's progress reads
    return s


@torch.no_grad()
def clean_inputs(bits, tok_schedule, patchify: bool):
    """Teacher-forcing inputs from clean bits [(B, h, w, d)] per tokenizer scale: (x_BLC_wo_prefix, gt per scale
    [(B, l, d')]). Equals BSC without noise except for the last ulp (codes from bits, not the quantiser's
    straight-through values)."""
    from nextscale.models.bsq import bits_to_codes, grid_to_tokens, next_scale_input, resize

    last = tuple(tok_schedule[-1])
    cum, xs, gts = None, [], []
    for k, b in enumerate(bits):
        gts.append(grid_to_tokens(b.permute(0, 3, 1, 2), patchify))
        c = resize(bits_to_codes(b), last, "trilinear")
        cum = c if cum is None else cum + c
        if k < len(bits) - 1:
            xs.append(next_scale_input(cum, tuple(tok_schedule[k + 1]), patchify))
    return torch.cat(xs, 1), gts


# ------------------------------------------------------------------------------------------------ the objective
class T2IObjective(Objective):
    """Teacher-forced bitwise next-scale prediction of an Infinity transformer from text."""

    kind, exports, model_key, title, train_hint = (
        "t2i",
        "infinity",
        "infinity",
        "Infinity transformer",
        ("nextscale train-t2i"),
    )

    def __init__(self, vae, model, encoder, tc: T2ITrainConfig, data, table, total: int, warmup: int, tiny: bool):
        self.vae, self.model, self.encoder, self.tc = vae, model, encoder, tc
        self.data, self.table, self.tiny = data, table, tiny
        self.total_steps, self.warmup_steps = total, warmup
        self.patchify = model.config.apply_spatial_patchify
        self.bsc_on = tc.noise_apply_layers > 0
        rank = dist.get_rank()
        # BSC randomness of this rank (the reference uses the global numpy / torch generators): own generators
        self.np_rng = np.random.RandomState([tc.seed & 0xFFFFFFFF, rank, 0xB5C])
        self.gen = torch.Generator().manual_seed((tc.seed * 1_000_003 + rank * 7919 + 0xB5C) % 2**63)
        self._rope: Dict[str, torch.Tensor] = {}
        self._weights: Dict[str, torch.Tensor] = {}

    # ---- loop interface ----
    def modules(self):
        return {"infinity": self.model}

    def ema_modules(self):
        return ["infinity"]

    def configure_optimizers(self, total_steps: int, wrapped) -> Dict[str, OptimSpec]:
        model, tc = wrapped["infinity"], self.tc
        opt = build_adamw(param_groups(model, NO_DECAY_KEYS), lr=tc.lr)
        sched = Schedule(
            lr=tc.lr, total=total_steps, warmup=self.warmup_steps, kind=tc.schedule, wp0=tc.warmup_start,
            wpe=tc.lr_end, wd=tc.weight_decay,
        )  # fmt: skip
        params = [p for p in model.parameters() if p.requires_grad]
        return {"infinity": OptimSpec(opt, params, sched, tc.grad_clip, None)}  # sharded: the loop sets clip_fn

    def batch_sampler(self, micro, rank, world, seed, start, grad_accum):
        return _bucket_sampler(self.data.buckets, micro, rank, world, seed, start, grad_accum)

    def collate(self, items):
        return collate(items)

    def state_dict(self):
        """The BSC generators of every rank (gathered; each rank takes its own back on resume)."""
        kind, keys, pos, has_gauss, gauss = self.np_rng.get_state()
        mine = {"np_keys": torch.from_numpy(keys.astype(np.int64)), "np_pos": int(pos), "np_has_gauss": int(has_gauss),
                "np_gauss": float(gauss), "torch": self.gen.get_state()}  # fmt: skip
        return {"bsc_rng": dist.all_gather_object(mine)}

    def load_state_dict(self, state):
        rngs = state.get("bsc_rng") or []
        if len(rngs) != dist.get_world_size():
            return  # another world size: the generators stay seeded per rank (the loop warns about its RNGs)
        st = rngs[dist.get_rank()]
        self.np_rng.set_state(
            ("MT19937", st["np_keys"].numpy().astype(np.uint32), st["np_pos"], st["np_has_gauss"], st["np_gauss"])
        )
        self.gen.set_state(st["torch"])

    # ---- one step ----
    def _bucket_parts(self, key: str, device):
        from nextscale.models.bsq import scale_loss_weights
        from nextscale.models.rope import build_rope_cache
        from nextscale.schedules import rope_grid_schedule

        if key not in self._rope:
            b = self.table[key]
            rope = build_rope_cache(rope_grid_schedule(b.h_div_w), self.model.config.head_dim)
            self._rope[key] = rope.to(device)
            self._weights[key] = scale_loss_weights(b.schedule, self.tc.loss_weights).to(device)
        return self.table[key], self._rope[key], self._weights[key]

    def _inputs(self, batch, b, device):
        from nextscale.models.bsq import bitwise_self_correction

        if "bits" in batch:
            x, gts = clean_inputs([t.to(device) for t in batch["bits"]], b.tokenizer_schedule, self.patchify)
            return x, torch.cat(gts, 1)
        with torch.no_grad():
            raw = self.vae.encode_raw(batch["image"].to(device, non_blocking=True)).float()
            out = bitwise_self_correction(
                raw,
                b.tokenizer_schedule,
                noise_apply_layers=self.tc.noise_apply_layers,
                noise_apply_strength=self.tc.noise_apply_strength,
                noise_apply_requant=self.tc.noise_apply_requant,
                patchify=self.patchify,
                np_rng=self.np_rng,
                generator=self.gen,
            )
        return out.x_BLC_wo_prefix, torch.cat(out.gt_bits, 1)

    def _text(self, batch, device):
        from nextscale.models.infinity import TextFeatures

        return TextFeatures.from_lens(batch["kv"].to(device), batch["lens"].tolist())

    def _loss(self, logits_BLV, gt_BLd, w_L):
        from nextscale.models.infinity import bit_loss

        token_BL, _ = bit_loss(logits_BLV, gt_BLd)
        return token_BL, token_BL.mul(w_L).sum(-1).mean()

    def train_step(self, batch, ctx: StepContext):
        dev = ctx.device
        b, rope, w_L = self._bucket_parts(batch["bucket"], dev)
        x_BLd, gt_BLd = self._inputs(batch, b, dev)
        text = self._text(batch, dev)
        with ctx.autocast():
            # dropped rows -> the learned cfg_uncond[:len], inside the forward (a sharded cfg_uncond is gathered there)
            logits_BLV = ctx.wrapped["infinity"](text, x_BLd, b.schedule, rope, dropped=batch["dropped"].tolist())
        token_BL, loss = self._loss(logits_BLV, gt_BLd, w_L)
        ctx.backward(loss, "infinity")
        with torch.no_grad():
            B, L, V = logits_BLV.shape
            pred = logits_BLV.detach().view(B, L, V // 2, 2).argmax(-1)
            out = {"loss": loss.detach(), "acc": (pred == gt_BLd).float().mean() * 100}
            n_last = b.schedule[-1][0] * b.schedule[-1][1]
            out["loss_tail"] = token_BL[:, -n_last:].mean().detach()
        return out

    def units_per_sample(self):
        b = next(iter(self.table.buckets.values()))
        return {"tok": float(sum(h * w for h, w in b.schedule))}

    @torch.no_grad()
    def sample_images(self, step: int, ema):
        from nextscale.models.infinity import Infinity
        from nextscale.pipeline_t2i import NextScaleT2IPipeline

        model = self.model
        dev = next(model.parameters()).device
        if "infinity" in ema:
            model = Infinity(model.config).to(dev)
            ema["infinity"].copy_to(model)
        was = model.training
        try:
            prompts = list(dict.fromkeys(self.data.captions))[:4]
            pipe = NextScaleT2IPipeline(self.vae, model, self.encoder, default_pn=self.tc.pn)
            out = pipe(prompt=prompts, num_scales=self.tc.n_scales, guidance_scale=1.5, temperature=1.0, top_k=0,
                       top_p=0.0, seed=0, output_type="np")  # fmt: skip
        finally:
            model.train(was)
            self.vae.eval()
        return (np.clip(out.images, 0, 1) * 255).round().astype(np.uint8)

    # ---- a command of this objective ----
    @classmethod
    def build(cls, tc: T2ITrainConfig, device: torch.device) -> RunParts:
        from nextscale.data_t2i import BucketTable, build_bits_cache, build_text_cache, scan_captioned
        from nextscale.models.infinity import Infinity, InfinityConfig
        from nextscale.train.t2i_parts import load_bsq_any, resolve_text_encoder

        tc.validate()
        init_model, vae, init_dir = None, None, None
        if tc.init is not None:
            init_dir, (init_model, vae, index) = _init_dir(tc.init), _load_init(tc.init)
            if tc.n_scales is None and index.get("default_num_scales"):  # a model trained on its first N scales
                tc = dataclasses.replace(tc, n_scales=int(index["default_num_scales"]))
        if tc.tokenizer is not None:
            vae = load_bsq_any(tc.tokenizer)
        vae.eval().requires_grad_(False)
        patchify = init_model.config.apply_spatial_patchify if init_model is not None else False
        table = BucketTable(tc.pn, tc.n_scales, vae.patch_size, patchify, templates=_ratios(tc.aspect_ratios))
        data = scan_captioned(tc.data, table, on_bad=tc.on_bad)
        tiny = tc.text_encoder == "tiny" and init_model is None
        encoder = resolve_text_encoder(tc.text_encoder, data.captions, tc.seed, tc.text_maxlen,
                                       init_dir=init_dir if init_model is not None else None)  # fmt: skip
        if init_model is not None:
            check_init_layout(init_model, vae, encoder)
            model = init_model.train().requires_grad_(True)
        else:
            cfg = InfinityConfig(
                depth=tc.depth, embed_dim=tc.embed_dim, num_heads=tc.num_heads, vae_bits=vae.codebook_dim,
                text_channels=encoder.channels, text_maxlen=encoder.max_length, block_chunks=tc.block_chunks,
                cond_drop_rate=tc.text_dropout, drop_path_rate=tc.drop_path,
                pad_to_multiplier=1,  # no padding: short sequences would double (only float noise changes)
            )  # fmt: skip
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(tc.seed)
                model = Infinity(cfg)
        cache = os.path.join(tc.run_dir, "cache")
        if dist.is_main():  # encode once; the other ranks wait and read
            text_cache = build_text_cache(data.captions, encoder, os.path.join(cache, "text"))
            if tc.cache and tc.noise_apply_layers <= 0:
                build_bits_cache(data, vae, os.path.join(cache, "bits"))
        dist.barrier()
        from nextscale.data_t2i import BitsCache, TextFeatureCache

        text_cache = TextFeatureCache.open(os.path.join(cache, "text"))
        bits = None
        if tc.cache and tc.noise_apply_layers <= 0:
            bits = BitsCache.open(os.path.join(cache, "bits"))
            bits.check(vae)
        train_set = T2ITrainSet(data, text_cache, tc.text_dropout, bits)
        iters, total = schedule_length(tc, len(data))
        warmup = tc.warmup_steps if tc.warmup_steps is not None else int(round(total / 50))
        vae.to(device)
        ob = cls(vae, model, encoder, tc, data, table, total, warmup, tiny)
        from dataclasses import asdict

        run_config = {
            "kind": cls.kind,
            "train": tc.to_dict(),
            "model": {"infinity": asdict(model.config), "bsq": asdict(vae.config)},
            "derived": {
                "steps": total, "warmup_steps": warmup, "world_size": dist.get_world_size(), "iters_per_epoch": iters,
                "train_samples": len(data), "bad_samples": data.bad_counts(), "buckets": sorted(set(data.buckets)),
                "text_channels": encoder.channels, "tokenizer_fingerprint": bits.meta["tokenizer"] if bits else None,
            },
        }  # fmt: skip
        return RunParts(ob, train_set, None, run_config, total)

    def prepare_run_dir(self, run_dir: str) -> None:
        """The tokenizer and the text encoder beside the checkpoints: an export needs them."""
        from nextscale.train.t2i_parts import save_bsq_dir, text_encoder_entry

        if not os.path.isdir(os.path.join(run_dir, "tokenizer")):
            save_bsq_dir(self.vae, os.path.join(run_dir, "tokenizer"))
        entry = text_encoder_entry(self.encoder, self.tiny)
        te = os.path.join(run_dir, "text_encoder")
        if "files" in entry and not os.path.isdir(te):
            from nextscale.atomic import atomic_dir
            from nextscale.train.t2i_parts import quiet_transformers

            with atomic_dir(te) as tmp, quiet_transformers():
                self.encoder.model.save_pretrained(tmp)
                self.encoder.tokenizer.save_pretrained(tmp)
        import json

        with open(os.path.join(run_dir, "text_encoder.json"), "w") as f:
            json.dump({**entry, "default_pn": self.tc.pn, "default_num_scales": self.tc.n_scales}, f)

    def after_fit(self, run_dir: str, result: FitResult, log) -> None:
        out = os.path.join(run_dir, "pipeline")
        info = export(type(self), run_dir, out)
        log.info(f"pipeline exported to {out} ({info['weights']} weights, step {info['step']})")

    @classmethod
    def save_export(cls, state, weights, run_dir: str, out: str, extra) -> None:
        """A text-to-image pipeline directory (``NextScaleT2IPipeline.from_pretrained(out)``)."""
        import json
        import shutil

        from nextscale.hub_t2i import save_t2i_dir
        from nextscale.models.infinity import Infinity, InfinityConfig
        from nextscale.train.t2i_parts import load_bsq_any

        tok = os.path.join(run_dir, "tokenizer")
        if not os.path.isdir(tok):
            raise NextScaleError(f"{run_dir!r} has no tokenizer/ folder; was it written by nextscale train-t2i?")
        vae = load_bsq_any(tok)
        model = Infinity(InfinityConfig(**state["config"]["model"]["infinity"]))
        model.load_state_dict(weights)
        with open(os.path.join(run_dir, "text_encoder.json")) as f:
            entry = json.load(f)
        default_pn = entry.pop("default_pn", "0.06M")
        n_scales = entry.pop("default_num_scales", None)  # trained on the first N scales: the pipeline's default
        writer = None
        if "files" in entry:

            def writer(d):  # noqa: E306
                shutil.copytree(os.path.join(run_dir, "text_encoder"), d)

        save_t2i_dir(out, vae, model.eval(), text_encoder_entry=entry, write_text_encoder=writer,
                     extra={"default_pn": default_pn, **({"default_num_scales": n_scales} if n_scales else {}),
                            **extra})  # fmt: skip


def _ratios(spec):
    """The aspect_ratios setting ("1,0.5" / "1:1,1:2") as a list for BucketTable (None: every template)."""
    if spec is None:
        return None
    out = []
    for part in str(spec).split(","):
        part = part.strip()
        try:
            out.append(float(part))
        except ValueError:
            out.append(part)  # "1:2" and friends: parse_aspect_ratio reads them (and names a bad one)
    return out


def _init_dir(path):
    """The directory of an init model: a path, or "default-t2i" (the bundled model)."""
    if path == "default-t2i":
        from nextscale.hub import bundled_model_dir

        return str(bundled_model_dir("default-t2i"))
    return path


def _load_init(path):
    from nextscale.hub_t2i import is_t2i_dir, load_t2i_dir

    path = _init_dir(path)
    if not os.path.exists(path):
        raise FieldError(FieldName("init"), f" {path!r} not found; pass a text-to-image pipeline directory")
    if not is_t2i_dir(path):
        raise FieldError(
            FieldName("init"), f" {path!r} is not a text-to-image pipeline directory (export-t2i, convert a release)"
        )
    try:
        vae, model, index = load_t2i_dir(path)
    except NextScaleError as e:
        raise FieldError(FieldName("init"), f" {path!r}: {str(e).splitlines()[0]}") from None
    return model, vae, index


def check_init_layout(model, vae, encoder) -> None:
    """One-line errors naming the difference when the init model does not fit the tokenizer or the text encoder."""
    c = model.config
    if vae.codebook_dim != c.vae_bits:
        raise FieldError(
            FieldName("init"), f" model predicts {c.vae_bits} bits per token but the ", FieldName("tokenizer"),
            f" gives {vae.codebook_dim}: use the model's own (drop ",
            FieldName("tokenizer"),
            f") or one with {c.vae_bits} bits",
        )  # fmt: skip
    if encoder.channels != c.text_channels:
        raise FieldError(
            FieldName("init"), f" model reads {c.text_channels}-channel text features but the ",
            FieldName("text_encoder"), f" gives {encoder.channels}: use the model's own (drop ",
            FieldName("text_encoder"),
            ") or one of that width",
        )  # fmt: skip
    if encoder.max_length > c.text_maxlen:
        raise FieldError(
            FieldName("init"), f" model has {c.text_maxlen} cfg_uncond rows but the text encoder keeps "
            f"{encoder.max_length} tokens; lower text_maxlen",
        )  # fmt: skip


def train_t2i(tc: T2ITrainConfig) -> FitResult:
    """Train (or resume) a text-to-image run (``nextscale train-t2i``); under torchrun for DDP. On completion
    the pipeline is exported to ``RUN/pipeline`` (EMA weights when kept)."""
    return train(T2IObjective, tc)


def export_t2i(run: str, out: str, weights: str = "auto") -> Dict[str, Any]:
    """A train-t2i run's newest checkpoint (or a ``step_*.pt``) -> a text-to-image pipeline directory."""
    return export(T2IObjective, run, out, weights)
