"""Diffusers-style pipelines: the API new users learn.

    pipe = NextScalePipeline.from_pretrained("path/or/hub-id")         # or "default"
    pipe = pipe.to("cuda", torch.bfloat16)     # bf16 weights (FLOAT32_PARTS stay fp32), bf16 autocast
    pipe.set_precision("auto")   # CPU: "fp32" (exact, default), "bf16", "int8", "auto" (nextscale.accel.precision)
    out = pipe(class_labels=[207, 360], guidance_scale=1.5, top_k=900, top_p=0.96,
               generator=torch.Generator("cuda").manual_seed(0), output_type="pil")
    out.images[0].save("x.png"); pipe.save_pretrained("copy/")

Values: models work in [-1, 1]; pipelines return [0, 1] (``np``/``pt``) or PIL images.
``guidance_scale`` is the reference's cfg: guidance weight t_k = cfg * k/(K-1) at scale k
(``guidance_schedule="linear"``) or t_k = cfg ("constant"); DiT-style scale = 1 + t_k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from nextscale.accel import CudaGraphs, disable_cpu_kernels, enable_cpu_kernels
from nextscale.accel.lowprec import disable_int8_linears, enable_int8_linears, int8_enabled
from nextscale.accel.precision import check_precision
from nextscale.configs import ModelConfig, get_preset
from nextscale.errors import FieldError, FieldName, InputError, NextScaleError
from nextscale.models import VAR, VQVAE, build_from_config
from nextscale.sampling import SamplingSettings, generate
from nextscale.validate import MAX_IMAGES, check_class_ids, check_count, check_device, check_seed

#: The settings a model directory may recommend in ``model_index.json`` under
#: ``"sampling_defaults"`` (the bundled MNIST model does), and what they are when it does not: the
#: reference README's ImageNet evaluation settings (``SamplingSettings()``).
RECOMMENDABLE = ("guidance_scale", "top_k", "top_p")
DEFAULT_SAMPLING = {k: getattr(SamplingSettings(), k) for k in RECOMMENDABLE}
OUTPUT_TYPES = ("pil", "np", "pt")

#: What keeps float32 weights when a pipeline's weights are cast to bfloat16 / float16 (``to(dtype)``,
#: ``from_pretrained(torch_dtype=...)``): the parts whose precision decides which token is picked or
#: how an image is encoded -- the transformer's embeddings and head (logits are sampled in float32),
#: and the tokenizer's encoder and quantiser (token choice is an argmin over distances). The blocks
#: and the decoder, nearly all the weights, take the dtype; they run under autocast in that dtype. On CPU
#: the head, word embedding and head AdaLN also compute in float32 (``accel.cpu.Float32Linear``).
FLOAT32_PARTS = {
    "var": ("word_embed", "class_emb", "pos_start", "pos_1LC", "lvl_embed", "head_nm", "head"),
    "vqvae": ("encoder", "quant_conv", "quantize"),
}
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_dtype(dtype) -> torch.dtype:
    if dtype not in DTYPES:
        raise NextScaleError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}")
    return dtype


def with_setting_keywords(call):
    """Show every ``SamplingSettings`` field as a keyword of a pipeline's ``__call__`` (``help()``, IDEs):
    the call takes them through ``**sampling``, so a new setting needs no edit here."""
    import inspect

    sig = inspect.signature(call)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = {p.name for p in params}
    params += [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None)
        for n in SamplingSettings.flat_names()
        if n not in taken
    ]
    call.__signature__ = sig.replace(parameters=params)
    return call


def cast_weights(model: torch.nn.Module, keep: Sequence[str], dtype: torch.dtype) -> None:
    """``model.to(dtype)``, except the named children / parameters, which stay float32."""
    model.to(dtype)
    for name in keep:
        part = getattr(model, name)
        if isinstance(part, torch.nn.Parameter):
            part.data = part.data.float()
        else:
            part.float()


__all__ = [
    "NextScalePipeline",
    "DEFAULT_SAMPLING",
    "NextScalePipelineOutput",
    "ScaleStep",
    "load_pipeline",
    "to_output",
    "check_output_type",
]


@dataclass
class NextScalePipelineOutput:
    images: Any  # list of PIL images, np (B, H, W, 3) or torch (B, 3, H, W) in [0, 1]
    labels: List[int]  # class used per image (num_classes = unconditional)
    indices: Optional[List[torch.Tensor]] = None  # K x (B, l_k) token ids, when return_indices=True
    scores: Optional[List[float]] = None  # the kept candidates' scores, with num_candidates > 1


@dataclass
class ScaleStep:
    """What ``callback_on_scale`` receives after each scale."""

    scale_index: int  # 0-based k
    num_scales: int  # K
    patch_num: int  # side of this scale's token map
    images: Any  # the partial images decoded from f_hat so far, in the call's output_type
    indices: torch.Tensor  # (B, l_k) tokens of this scale


def check_output_type(output_type) -> str:
    if output_type not in OUTPUT_TYPES:
        raise NextScaleError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
    return output_type


def to_output(img_B3HW_01: torch.Tensor, output_type: str):
    """[0, 1] float images (B, 3, H, W) -> 'pt' (same), 'np' (B, H, W, 3) float32, or 'pil' list."""
    if check_output_type(output_type) == "pt":
        return img_B3HW_01
    arr = img_B3HW_01.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "np":
        return arr
    from PIL import Image

    return [Image.fromarray(a) for a in (arr * 255).round().astype(np.uint8)]


class PipelineBase:
    """What every nextscale pipeline shares (this one and the AR baseline's): the recommended
    sampling settings and the CPU kernels of its tokenizer + transformer (``_models()``)."""

    @property
    def sampling_defaults(self) -> Dict[str, Any]:
        return {k: getattr(self.settings, k) for k in RECOMMENDABLE}

    def settings_for(self, settings: Optional[SamplingSettings] = None, **changes: Any) -> SamplingSettings:
        """The door of every call: ``settings`` (default: the model's recommendation) with the call's
        keywords applied in one ``replace`` (None keeps a setting; unknown names are refused)."""
        if settings is not None and not isinstance(settings, SamplingSettings):
            raise NextScaleError(
                f"settings must be a nextscale.sampling.SamplingSettings, got {type(settings).__name__}"
            )
        return (settings or self.settings).replace(**changes)

    def enable_cpu_kernels(self):
        for m in self._models():
            enable_cpu_kernels(m)
        return self

    def disable_cpu_kernels(self):
        for m in self._models():
            disable_cpu_kernels(m)
        return self

    def make_generator(self, generator=None, seed=None) -> Optional[torch.Generator]:
        """``generator`` as given, or a fresh one on the model's device seeded with ``seed``; giving
        both is an error (which one would win is not obvious)."""
        if generator is not None and seed is not None:
            raise NextScaleError("give either seed or generator, not both (a generator carries its own seed)")
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise NextScaleError(f"generator must be a torch.Generator, got {type(generator).__name__}")
            return generator
        if seed is not None:
            return torch.Generator(device=self.device).manual_seed(check_seed(seed))
        return None

    def batch_labels(self, class_labels, num_images) -> Tuple[int, Any]:
        """(batch size, labels) for ``__call__``: an int class with ``num_images`` copies, a list (one
        image each; names allowed), or None = ``num_images`` random classes (default 1)."""
        if num_images is not None:
            num_images = check_count(num_images, "num_images", hi=MAX_IMAGES)
        if class_labels is None:
            return (num_images or 1), None
        check_label_count(class_labels)
        labels = check_class_ids(class_labels, self.num_classes, class_names=self.labels)
        if isinstance(labels, int):
            return (num_images or 1), labels
        if num_images is not None and num_images != len(labels):
            raise NextScaleError(f"num_images={num_images} but {len(labels)} class labels were given")
        return len(labels), labels


def check_label_count(class_labels, name: str = "class_labels") -> None:
    """At most ``MAX_IMAGES`` labels (one image each), checked before looking at each label: 10**7 of them
    is a typo, not a request (every entry point's image cap)."""
    many = isinstance(class_labels, (list, tuple)) or getattr(class_labels, "ndim", 0) > 0
    if many and len(class_labels) > MAX_IMAGES:
        raise FieldError(
            FieldName(name),
            f" holds {len(class_labels):,} labels (one image each), more than {MAX_IMAGES:,} per call; "
            "split the work into several calls",
        )


def _scores(scorer, images, labels, B: int) -> torch.Tensor:
    """``scorer(images, labels)`` as B finite float scores, or one line saying what the scorer returned."""
    raw = scorer(images, labels)
    try:
        s = torch.as_tensor(raw).detach().float().flatten()
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"scorer must return one number per image, got {type(raw).__name__}") from None
    if s.numel() != B:
        raise InputError(f"scorer returned {s.numel()} scores for {B} images; it must return one score per image")
    if not bool(torch.isfinite(s).all()):
        raise InputError(
            f"scorer returned NaN/inf for {int((~torch.isfinite(s)).sum())} of {B} images; "
            "a candidate cannot be chosen by it (is the scorer's model broken?)"
        )
    return s.to(images.device)


class NextScalePipeline(PipelineBase):
    """Class-conditional image generation with a VQ-VAE + VAR pair."""

    def __init__(
        self,
        vqvae: VQVAE,
        var: VAR,
        labels: Optional[Sequence[str]] = None,
        sampling_defaults: Optional[Dict[str, Any]] = None,
    ):
        if tuple(vqvae.v_patch_nums) != tuple(var.patch_nums):
            raise NextScaleError(f"tokenizer schedule {vqvae.v_patch_nums} != transformer schedule {var.patch_nums}")
        self.vqvae, self.var = vqvae.eval(), var.eval()
        if labels is not None and len(labels) != var.num_classes:
            raise NextScaleError(f"labels has {len(labels)} names but the model has {var.num_classes} classes")
        self.labels = list(labels) if labels is not None else None
        unknown = set(sampling_defaults or {}) - set(RECOMMENDABLE)
        if unknown:
            raise NextScaleError(f"sampling_defaults: unknown keys {sorted(unknown)}; allowed: {sorted(RECOMMENDABLE)}")
        #: what a call samples with when it gives nothing: the model's recommendation
        self.settings = SamplingSettings(**(sampling_defaults or {}))
        #: the compute dtype: float32, or bf16/fp16 run under autocast (``to(dtype)`` also casts the
        #: weights; ``set_autocast(dtype)`` keeps float32 weights)
        self.dtype = torch.float32
        #: CPU float32 inference runs ``nextscale.accel.cpu``'s kernels (same function, faster);
        #: ``disable_cpu_kernels()`` runs the plain reference modules instead.
        self.enable_cpu_kernels()
        #: On CUDA, replay each scale's transformer as a captured CUDA graph (same tokens as eager
        #: execution, several times faster at small batches; captured on the first call per batch size).
        self.use_cuda_graphs = True
        self._cuda_graphs = CudaGraphs()

    def _models(self):
        return self.vqvae, self.var

    # ---- construction ----
    @property
    def components(self) -> Dict[str, Any]:
        return {
            "vqvae": self.vqvae,
            "var": self.var,
            "labels": self.labels,
            "sampling_defaults": dict(self.sampling_defaults),
        }

    @classmethod
    def from_pretrained(
        cls,
        name_or_path="default",
        device=None,
        dtype=None,
        vae_path=None,
        torch_dtype=None,
        variant: Optional[str] = None,
        **hub_kwargs,
    ) -> "NextScalePipeline":
        """Load from a pipeline directory, ``"default"``, a hub id, or a released ``var_d*.pth``
        (with ``vae_ch160v4096z32.pth`` beside it or given as ``vae_path``). ``torch_dtype`` (or
        ``dtype``) casts the weights as ``to(dtype)`` does; float32 by default. ``variant`` ("d16" ...
        "d36") picks one transformer of a folder or hub repo of released files (``FoundationVision/var``:
        only the tokenizer and that transformer are downloaded; see ``hub.resolve_model_path``);
        ``cache_dir`` and ``revision`` go to the hub."""
        if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
            raise NextScaleError("give either torch_dtype or dtype, not both")
        dtype = torch_dtype if torch_dtype is not None else dtype
        from nextscale.hub import load_components, resolve_model_path

        for k in hub_kwargs:  # a typo (revison=) is named here, not by an internal function
            if k not in ("cache_dir", "revision"):
                import difflib

                near = difflib.get_close_matches(k, ["cache_dir", "revision", "variant", "device", "dtype", "vae_path"])
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise InputError(f"{cls.__name__}.from_pretrained() got an unknown keyword {k!r}{hint}")

        path = resolve_model_path(name_or_path, variant=variant, **hub_kwargs)
        vae, var, meta = load_components(path, vae_path=vae_path)
        if var is None:
            raise NextScaleError(
                f"{path} is a tokenizer-only directory (no var/); use it as the tokenizer of nextscale train / tokenize"
            )
        pipe = cls(
            vae, var, labels=meta.get("labels"), sampling_defaults=(meta.get("index") or {}).get("sampling_defaults")
        )
        if device is not None or dtype is not None:
            pipe.to(device, dtype)
        return pipe

    @classmethod
    def from_preset(cls, preset: Union[str, ModelConfig], seed: int = 0, labels=None) -> "NextScalePipeline":
        """Randomly initialised models of a preset (for tests, benchmarks and training from scratch)."""
        cfg = get_preset(preset) if isinstance(preset, str) else preset
        vae, var = build_from_config(cfg, seed=seed)
        return cls(vae, var, labels=labels)

    def save_pretrained(self, out_dir) -> None:
        from nextscale.hub import save_components

        extra = {"sampling_defaults": self.sampling_defaults} if self.sampling_defaults != DEFAULT_SAMPLING else None
        save_components(out_dir, self.vqvae, self.var, labels=self.labels, extra=extra)

    def to(self, device=None, dtype=None) -> "NextScalePipeline":
        """Move the models and/or cast their weights to ``dtype`` (diffusers' convention): bf16 / fp16
        halve the memory, the parts in ``FLOAT32_PARTS`` stay float32, and sampling runs under
        autocast in ``dtype``. ``set_autocast(dtype)`` instead keeps float32 weights."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        dtype = None if dtype is None else _check_dtype(dtype)
        if device is not None:
            device = check_device(device)
            self.vqvae.to(device)
            self.var.to(device)
            self._cuda_graphs.clear()
        if dtype is not None:
            if dtype == torch.bfloat16:  # warns once on a CPU without bf16 units (accel.precision)
                check_precision("bf16", self.device)
            cast_weights(self.var, FLOAT32_PARTS["var"], dtype)
            cast_weights(self.vqvae, FLOAT32_PARTS["vqvae"], dtype)
            self.dtype = dtype
            self._cuda_graphs.clear()
        return self

    def set_autocast(self, dtype) -> "NextScalePipeline":
        """Float32 weights, computed under autocast in ``dtype`` (bf16 / fp16; float32 = off)."""
        self.dtype = _check_dtype(dtype)
        return self

    def set_precision(self, precision: str) -> "NextScalePipeline":
        """The compute precision by name (``nextscale.accel.precision``): "fp32" (exact; the default), "bf16"
        (``to(torch.bfloat16)``: fast on GPUs and on CPUs with AMX / AVX512-BF16), "int8" (CPU: the transformer
        blocks' linears as dynamic int8, the rest fp32), "fp16" (GPU), or "auto" (bf16 on a GPU and on AMX
        CPUs, else fp32). bf16 / int8 on a CPU without their units run but warn once, with the reason."""
        p = check_precision(precision, self.device)
        disable_int8_linears(self.var)
        self.to(dtype={"fp32": torch.float32, "int8": torch.float32, "bf16": torch.bfloat16}.get(p, torch.float16))
        if p == "int8":
            enable_int8_linears(self.var)
        return self

    @property
    def precision(self) -> str:
        """ "fp32", "bf16", "fp16" or "int8" (see ``set_precision``)."""
        if int8_enabled(self.var):
            return "int8"
        return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def weights_dtype(self) -> torch.dtype:
        return self.var.blocks[0].attn.mat_qkv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.var.lvl_1L.device

    @property
    def num_classes(self) -> int:
        return self.var.num_classes

    @property
    def resolution(self) -> int:
        return self.vqvae.resolution

    @property
    def patch_nums(self):
        return self.var.patch_nums

    def class_name(self, c: int) -> str:
        if c >= self.num_classes:
            return "unconditional"
        return self.labels[c] if self.labels else str(c)

    # ---- helpers ----
    def _autocast(self):
        if self.dtype == torch.float32:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @torch.no_grad()
    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat (B, Cvae, h, w) -> images in [0, 1] (B, 3, H, W), float32."""
        with self._autocast():
            img = self.vqvae.fhat_to_img(f_hat)
        return img.float().add_(1).mul_(0.5)

    @torch.no_grad()
    def decode_scales(self, indices: List[torch.Tensor]) -> List[torch.Tensor]:
        """Images after the first 1, 2, ..., K scales (how each scale adds detail), each in [0, 1]."""
        with self._autocast():
            imgs = self.vqvae.idxBl_to_img([i.to(self.device) for i in indices], same_shape=True, last_one=False)
        return [im.float().add_(1).mul_(0.5) for im in imgs]

    def _run(
        self,
        B,
        labels,
        settings: SamplingSettings,
        *,
        generator,
        output_type,
        return_indices,
        callback_on_scale,
        show_progress,
        constraint=None,
        num_candidates=1,
        scorer=None,
    ) -> NextScalePipelineOutput:
        """Sample with one ``SamplingSettings`` (the door, ``settings_for``, made it)."""
        if settings.speedups.refiner is not None:
            settings = settings.replace(refiner=self._refiner(settings.speedups.refiner))
        check_output_type(output_type)
        N = check_count(num_candidates, "num_candidates", hi=1024)
        if N > 1 and not callable(scorer):
            raise NextScaleError(
                "num_candidates > 1 needs a scorer: a callable (images, labels) -> scores, e.g. "
                "nextscale.evaluation.scorers.MNISTScorer() for the default model or ClassifierScorer(your_classifier)"
            )
        self.check_memory(B, num_candidates)
        if callback_on_scale is not None and not callable(callback_on_scale):
            raise InputError(
                f"callback_on_scale must be callable (it gets a ScaleStep after each scale), "
                f"got {type(callback_on_scale).__name__}"
            )
        K = len(self.patch_nums)
        bar = None
        if show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=K * N, desc="scales" if N == 1 else f"scales x {N} candidates", leave=False)

        def on_scale(si, pn, f_hat, idx_Bl):
            if callback_on_scale is not None:
                callback_on_scale(ScaleStep(si, K, pn, to_output(self.decode(f_hat), output_type), idx_Bl))
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{pn}x{pn}")

        def sample(label_B):
            with self._autocast():
                return generate(
                    self.var,
                    self.vqvae,
                    B=B,
                    label_B=label_B,
                    generator=generator,
                    settings=settings,
                    constraint=constraint,
                    callback=on_scale,
                    cuda_graphs=self._cuda_graphs if self.use_cuda_graphs else None,
                )

        scores = None
        try:
            out = sample(labels)
            img = self.decode(out.f_hat)  # (B, 3, H, W) in [0, 1]
            if N > 1:  # rejection sampling: N - 1 more candidates per image, same classes, the best kept
                scores = _scores(scorer, img, out.labels, B)
                idx = [t.clone() for t in out.idx_per_scale]
                for _ in range(N - 1):
                    cand = sample(out.labels)
                    cand_img = self.decode(cand.f_hat)
                    s = _scores(scorer, cand_img, cand.labels, B)
                    better = s > scores  # ties keep the earlier candidate
                    img[better], scores = cand_img[better], torch.where(better, s, scores)
                    for t, c in zip(idx, cand.idx_per_scale):
                        t[better] = c[better]
                out.idx_per_scale = idx
        finally:
            if bar is not None:
                bar.close()
        return NextScalePipelineOutput(
            images=to_output(img, output_type),
            labels=out.labels.tolist(),
            indices=out.idx_per_scale if return_indices else None,
            scores=None if scores is None else scores.tolist(),
        )

    def bytes_per_image(self) -> int:
        """Estimated peak bytes one image of a call adds (a lower bound): the KV cache of both guidance rows
        (depth x k, v x L tokens x width), the last scale's logits (and their softmax copies), the decoder's
        full-resolution activations."""
        var, R = self.var, self.resolution
        kv = var.depth * 2 * 2 * var.L * var.C * torch.finfo(self.dtype).bits // 8
        logits = 2 * var.patch_nums[-1] ** 2 * var.V * 4 * 3
        dec = R * R * (3 + 2 * int(getattr(self.vqvae.config, "ch", 64))) * 4
        return kv + logits + dec

    def check_memory(self, B: int, num_candidates=1) -> None:
        """Refuse a call whose B images would not fit in the memory left (one line with the estimate)."""
        from nextscale.resources import check_memory

        per = self.bytes_per_image()
        check_memory(
            B * per * (2 if num_candidates not in (None, 1) else 1),
            f"{B:,} image{'s' if B != 1 else ''} of {self.resolution}x{self.resolution} in one call",
            ("pass fewer ", FieldName("class_labels"), " / ", FieldName("num_images"), " per call"),
            self.device,
        )

    def _refiner(self, refiner) -> Optional[VAR]:
        """A refiner pipeline's transformer (its tokenizer must be ours: same codebook), or a VAR."""
        if refiner is None or isinstance(refiner, VAR):
            return refiner
        if isinstance(refiner, NextScalePipeline):
            same = refiner.vqvae is self.vqvae or torch.equal(
                refiner.vqvae.quantize.embedding.weight.cpu(), self.vqvae.quantize.embedding.weight.cpu()
            )
            if not same:
                raise NextScaleError(
                    "the refiner pipeline has another tokenizer (its codebook differs): a refiner must "
                    "share this pipeline's tokenizer"
                )
            return refiner.var
        raise NextScaleError(f"refiner must be a NextScalePipeline or a VAR, got {type(refiner).__name__}")

    # ---- generation ----
    @with_setting_keywords
    def __call__(
        self,
        class_labels: Union[None, int, Sequence[int], torch.Tensor] = None,
        num_images: Optional[int] = None,
        *,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
        output_type: str = "pil",
        return_indices: bool = False,
        callback_on_scale: Optional[Callable[[ScaleStep], None]] = None,
        show_progress: bool = False,
        settings: Optional[SamplingSettings] = None,
        num_candidates: int = 1,
        scorer=None,
        **sampling: Any,
    ) -> NextScalePipelineOutput:
        """Generate images.

        class_labels: a class id, a list of ids (one image each; -1 = unconditional), or None for
            random classes (``num_images`` of them, default 1). A single int with ``num_images``
            gives that many images of the class.
        generator or seed: randomness; the same seed on the same device gives the same images.
        callback_on_scale: called with a ``ScaleStep`` after every scale (partial image included).
        settings: a ``SamplingSettings`` to start from instead of the model's recommendation.
        sampling: any field of ``SamplingSettings`` by name (speed-ups included), overriding single
            settings; None (the default) takes the model's recommended value (``self.sampling_defaults``;
            1.5 / 900 / 0.96 unless the model says). ``guidance_scale`` is the reference's cfg (>= 0;
            a list gives one weight per scale); ``top_k`` / ``top_p``: 0 turns each off;
            ``more_smooth``: Gumbel-softmax smoothing (visual, not for FID); ``guidance_cutoff``,
            ``prune_ratio`` / ``prune_last``, ``kv_budget``, ``refiner`` + ``refine_from_scale``: opt-in
            speed-ups that change the images a little (``nextscale.accel.sampling_modes``; measured in
            docs/speed.md). ``refiner`` is another pipeline (or VAR) on the same tokenizer that predicts
            scales refine_from_scale..K. Off by default: the exact path.
        num_candidates, scorer: rejection sampling (the reference's d30-re protocol): N candidates per
            image, the one with the highest ``scorer(images, labels)`` kept (``nextscale.evaluation.scorers``:
            ``MNISTScorer()`` for the default model, ``ClassifierScorer(net)`` for any classifier).
            Deterministic for a seed; N = 1 is plain sampling. ``callback_on_scale`` then streams
            every candidate.
        """
        B, labels = self.batch_labels(class_labels, num_images)
        return self._run(
            B,
            labels,
            self.settings_for(settings, **sampling),
            num_candidates=num_candidates,
            scorer=scorer,
            generator=self.make_generator(generator, seed),
            output_type=output_type,
            return_indices=return_indices,
            callback_on_scale=callback_on_scale,
            show_progress=show_progress,
        )


def load_pipeline(model=None, device=None, dtype=None, **kw) -> NextScalePipeline:
    """``NextScalePipeline.from_pretrained(model or "default")``."""
    return NextScalePipeline.from_pretrained(model or "default", device=device, dtype=dtype, **kw)
