"""The AR baseline as a pipeline: single-scale VQ-VAE + raster-order transformer, saved and loaded
like every nextscale model directory.

    pipe = ARPipeline.from_pretrained("runs/ar/model")
    out = pipe(class_labels=[0, 1, 2], guidance_scale=1.0, top_k=0, top_p=0.0, seed=0)
    out.images[0].save("x.png"); pipe.save_pretrained("copy/")

Directory layout (a pipeline directory with ``var/`` replaced by ``ar/``; ``model_type`` names the kind)::

    model_index.json    {"_class_name": "NextScaleARPipeline", "model_type": "ar", "vqvae": [...], "ar": [...]}
    vqvae/config.json   VQVAEConfig (a single-scale schedule, e.g. v_patch_nums [8])
    vqvae/model.safetensors
    ar/config.json      ARConfig
    ar/model.safetensors
    labels.json         optional class names

Written atomically (a temp directory renamed into place); loaded with ``strict=True`` through
:mod:`nextscale.safeload` (tensors only). :func:`is_ar_dir` tells such a directory from a VAR one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch

from nextscale.configs import VQVAEConfig
from nextscale.errors import CheckpointError, InputError, NextScaleError
from nextscale.models.ar import ARConfig, ARTransformer
from nextscale.models.vqvae import VQVAE
from nextscale.pipelines import (
    RECOMMENDABLE,
    NextScalePipelineOutput,
    PipelineBase,
    check_output_type,
    to_output,
    with_setting_keywords,
)
from nextscale.sampling import SamplingSettings
from nextscale.sampling_ar import check_tokenizer_fits, generate_ar

__all__ = ["ARPipeline", "AR_CLASS_NAME", "is_ar_dir", "save_ar_pipeline", "load_ar_pipeline", "load_any_pipeline"]

AR_CLASS_NAME = "NextScaleARPipeline"


def is_ar_dir(path) -> bool:
    """True for a directory written by :func:`save_ar_pipeline`."""
    p = Path(path)
    try:
        index = json.loads((p / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(index, dict) and (index.get("model_type") == "ar" or index.get("_class_name") == AR_CLASS_NAME)


def _read_json(path: Path):
    from nextscale.hub import read_json

    return read_json(path, "an AR model directory (nextscale export of an AR run)")


def save_ar_pipeline(
    out_dir,
    vae: VQVAE,
    model: ARTransformer,
    labels: Optional[Sequence[str]] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write the directory atomically (``nextscale.hub.save_model_dir``)."""
    from nextscale.hub import save_model_dir

    return save_model_dir(
        out_dir, AR_CLASS_NAME, {"vqvae": vae, "ar": model}, labels=labels, extra={"model_type": "ar", **(extra or {})}
    )


def load_ar_model(path, config: ARConfig) -> ARTransformer:
    from nextscale.hub import check_state_dict
    from nextscale.safeload import load_safetensors

    sd = load_safetensors(path, "AR transformer")
    model = ARTransformer(config)
    check_state_dict(
        model, sd, path, f"AR transformer d{config.depth} ({config.width} wide, {config.num_classes} classes)"
    )
    model.load_state_dict(sd, strict=True)
    return model.eval()


def load_ar_pipeline(path):
    """(vqvae, ar, meta) of an AR model directory."""
    from nextscale.hub import load_vqvae

    p = Path(path)
    if not is_ar_dir(p):
        raise NextScaleError(f"{p}: not an AR model directory (model_index.json with model_type 'ar')")
    index = _read_json(p / "model_index.json")
    vae = load_vqvae(
        p / "vqvae" / "model.safetensors", config=VQVAEConfig.from_dict(_read_json(p / "vqvae" / "config.json"))
    )
    model = load_ar_model(p / "ar" / "model.safetensors", ARConfig.from_dict(_read_json(p / "ar" / "config.json")))
    try:
        check_tokenizer_fits(model, vae)
    except NextScaleError as e:
        raise CheckpointError(f"{p}: {e}") from None
    labels = _read_json(p / "labels.json") if (p / "labels.json").exists() else None
    return vae, model, {"labels": labels, "index": index, "source": str(p)}


class ARPipeline(PipelineBase):
    """Class-conditional generation with a single-scale VQ-VAE + the raster-order AR transformer.

    The call mirrors :class:`~nextscale.pipelines.NextScalePipeline` (same sampling options, same
    output); ``indices`` holds one (B, L) map. The same CPU kernels as VAR's pipeline are on
    (``nextscale.accel``), so speed comparisons use the same implementation of the shared blocks.
    """

    def __init__(
        self,
        vqvae: VQVAE,
        ar: ARTransformer,
        labels: Optional[Sequence[str]] = None,
        sampling_defaults: Optional[Dict[str, Any]] = None,
    ):
        check_tokenizer_fits(ar, vqvae)
        self.vqvae, self.ar = vqvae.eval(), ar.eval()
        if labels is not None and len(labels) != ar.num_classes:
            raise NextScaleError(f"labels has {len(labels)} names but the model has {ar.num_classes} classes")
        self.labels = list(labels) if labels is not None else None
        unknown = set(sampling_defaults or {}) - set(RECOMMENDABLE)
        if unknown:
            raise NextScaleError(f"sampling_defaults: unknown keys {sorted(unknown)}; allowed: {sorted(RECOMMENDABLE)}")
        self.settings = SamplingSettings(**(sampling_defaults or {}))
        self.enable_cpu_kernels()

    model_type = "ar"

    def _models(self):
        return self.vqvae, self.ar

    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None) -> "ARPipeline":
        vae, ar, meta = load_ar_pipeline(path)
        pipe = cls(vae, ar, labels=meta["labels"], sampling_defaults=meta["index"].get("sampling_defaults"))
        return pipe.to(device, dtype)

    def save_pretrained(self, out_dir) -> None:
        extra = (
            {"sampling_defaults": self.sampling_defaults}
            if self.sampling_defaults != {k: getattr(SamplingSettings(), k) for k in RECOMMENDABLE}
            else None
        )
        # save the plain modules' weights (the CPU kernel swaps keep parameter names, so this is only for clarity)
        save_ar_pipeline(out_dir, self.vqvae, self.ar, labels=self.labels, extra=extra)

    def to(self, device=None, dtype=None) -> "ARPipeline":
        """Move to ``device``; the baseline samples in float32 (``dtype`` None or float32)."""
        if dtype is not None and dtype != torch.float32:
            raise NextScaleError(f"the AR baseline samples in float32; got dtype {dtype} (leave the dtype unset)")
        if device is not None:
            self.vqvae.to(device)
            self.ar.to(device)
        return self

    @property
    def patch_nums(self):
        """The one scale (a tuple, as ``NextScalePipeline.patch_nums``)."""
        return tuple(self.vqvae.v_patch_nums)

    @torch.no_grad()
    def decode_scales(self, indices) -> list:
        """The images of ``indices`` ([(B, L)]): a single-scale model has one "scale", the final image."""
        return [self.decode(self.vqvae.idxBl_to_fhat([indices[-1].to(self.device)]))]

    @property
    def device(self) -> torch.device:
        return self.ar.pos_1LC.device

    @property
    def num_classes(self) -> int:
        return self.ar.num_classes

    @property
    def resolution(self) -> int:
        return self.vqvae.resolution

    def class_name(self, c: int) -> str:
        if self.labels is not None and 0 <= c < len(self.labels):
            return self.labels[c]
        return str(c)

    @torch.no_grad()
    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat (B, Cvae, h, w) -> images in [0, 1] (B, 3, H, W), float32."""
        return self.vqvae.fhat_to_img(f_hat).float().add_(1).mul_(0.5)

    @torch.no_grad()
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
        callback_on_scale=None,
        show_progress: bool = False,
        settings: Optional[SamplingSettings] = None,
        num_candidates: int = 1,
        scorer=None,
        **sampling: Any,
    ) -> NextScalePipelineOutput:
        """Generate images; the arguments are those of ``NextScalePipeline.__call__`` (a per-position
        guidance list instead of a per-scale one). What the baseline cannot honour is refused with one
        line naming it (``sampling_ar.HONOURED``; rejection sampling, per-scale callbacks), never ignored."""
        st = self.settings_for(settings, **sampling)
        if num_candidates != 1:
            raise InputError("num_candidates > 1 (rejection sampling) is not supported by the AR baseline")
        if callback_on_scale is not None:
            raise InputError("callback_on_scale is not supported by the AR baseline (it has no scales)")
        B, labels = self.batch_labels(class_labels, num_images)
        check_output_type(output_type)
        out = generate_ar(self.ar, self.vqvae, B, labels, generator=self.make_generator(generator, seed), settings=st)
        images = to_output(self.decode(out.f_hat), output_type)
        return NextScalePipelineOutput(
            images=images, labels=out.labels.tolist(), indices=[out.idx_BL] if return_indices else None
        )


def load_any_pipeline(model=None, device=None, dtype=None, variant=None, **kw):
    """An :class:`ARPipeline` for an AR model directory, else ``nextscale.pipelines.load_pipeline``'s
    pipeline (VAR: a directory, "default", a hub id or a released ``var_d*.pth``). What ``nextscale
    sample`` loads."""
    if model is not None and model != "default" and variant is None:
        from nextscale.hub import resolve_model_path

        try:
            path = resolve_model_path(model)
        except NextScaleError:
            path = None
        if path is not None and is_ar_dir(path):
            return ARPipeline.from_pretrained(path, device=device, dtype=dtype)
    from nextscale.pipelines import load_pipeline

    return load_pipeline(model, device=device, dtype=dtype, variant=variant, **kw)
