"""Loading and saving weights: released reference ``.pth`` files, safetensors, pipeline directories, hub ids.

Every file is read through :mod:`nextscale.safeload` (``torch.load(weights_only=True)``, no fallback):
a checkpoint can never run code. Configurations are inferred from tensor shapes, so ``var_d16.pth`` ...
``var_d36.pth`` and
``vae_ch160v4096z32.pth`` need no extra arguments.

Pipeline directory layout (what ``save_pretrained`` writes and ``from_pretrained`` reads)::

    model_index.json            {"_class_name": "NextScalePipeline", "vqvae": [...], "var": [...]}
    vqvae/config.json           VQVAEConfig fields
    vqvae/model.safetensors
    var/config.json             VARConfig fields
    var/model.safetensors
    labels.json                 optional: list of class names

A tokenizer-only directory (``nextscale train-tokenizer`` / ``export-tokenizer`` / ``train``'s
``RUN/tokenizer``) has the same layout without ``var/``; its ``model_index.json`` says
``"_class_name": "NextScaleTokenizer"``. ``load_components`` returns ``(vqvae, None, meta)`` for it.

Tokenizers have one loader and one saver: :func:`load_tokenizer` (every place a VQ-VAE can come
from: "default", a pipeline or tokenizer directory, a released ``.pth`` / ``.safetensors``, a
``train-tokenizer`` run folder or its ``step_*.pt``) and :func:`save_tokenizer` (atomic).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from nextscale.atomic import atomic_dir
from nextscale.configs import ConfigError, VARConfig, VQVAEConfig, scale_schedule_256, scale_schedule_512
from nextscale.errors import CheckpointError, FieldError, FieldName, NextScaleError
from nextscale.models.var import VAR
from nextscale.models.vqvae import VQVAE

__all__ = [
    "load_state_dict_file",
    "infer_vqvae_config",
    "infer_var_config",
    "load_vqvae",
    "load_var",
    "load_components",
    "save_components",
    "save_model_dir",
    "read_json",
    "resolve_model_path",
    "DEFAULT_MODEL_DIR",
    "check_state_dict",
    "TOKENIZER_CLASS_NAME",
    "is_tokenizer_dir",
    "load_tokenizer",
    "save_tokenizer",
    "tokenizer_from_checkpoint",
    "hub_download",
    "hub_snapshot",
    "hub_cli",
    "hub_fetch_hint",
    "hub_offline",
    "HubFileMissing",
    "released_class_names",
    "released_info",
]

#: ``model_index.json`` ``_class_name`` of a tokenizer-only directory (no ``var/``).
TOKENIZER_CLASS_NAME = "NextScaleTokenizer"

#: The model shipped inside the package (see the default-model recipe); "default" resolves here.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "default"
#: The text-to-image model shipped inside the package (recipes/default_t2i.sh); "default-t2i" resolves here.
DEFAULT_T2I_DIR = Path(__file__).resolve().parent / "assets" / "default_t2i"
#: name -> (bundled pipeline directory, what to pass instead when it is not installed)
BUNDLED_MODELS = {
    "default": (DEFAULT_MODEL_DIR, " DIR (a pipeline directory or var_d*.pth)"),
    "default-t2i": (DEFAULT_T2I_DIR, " DIR (a text-to-image pipeline directory)"),
}


def bundled_model_dir(name: str) -> Path:
    """The directory of a model shipped inside the package (``BUNDLED_MODELS``); one line when it is absent."""
    path, instead = BUNDLED_MODELS[name]
    if not (path / "model_index.json").exists():
        raise FieldError(f"the bundled {name} model is not installed; pass ", FieldName("model"), instead)
    return path


_KNOWN_SCHEDULES = {sum(p * p for p in s): s for s in (scale_schedule_256, scale_schedule_512)}

#: The reference's released files (Hugging Face repo ``FoundationVision/var``): one tokenizer and a
#: transformer per depth. ``variant="d16"`` picks ``var_d16.pth``.
RELEASED_REPO = "FoundationVision/var"
RELEASED_TOKENIZER = "vae_ch160v4096z32.pth"
RELEASED_VARIANTS = ("d16", "d20", "d24", "d30", "d36")


def _variants_in(folder: Path) -> List[str]:
    return sorted((p.stem[len("var_") :] for p in folder.glob("var_d*.pth")), key=lambda v: (len(v), v))


def _check_variant(variant) -> str:
    if not isinstance(variant, str) or not re.fullmatch(r"d\d+", variant):
        raise NextScaleError(
            f"variant {variant!r} is not a transformer depth; the reference released {', '.join(RELEASED_VARIANTS)}"
        )
    return variant


# ------------------------------------------------------------------ raw files
def load_state_dict_file(path) -> Dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``.pth``/``.pt`` (safely, tensors only).

    Accepts a bare state dict or the usual wrappers (``{'model': sd}``, ``{'state_dict': sd}``,
    the reference trainer's ``{'trainer': {'var_wo_ddp': sd}}``).
    """
    from nextscale.safeload import load_weights

    path = Path(path)
    obj = load_weights(path, "checkpoint")
    return _unwrap(obj, path)


def _unwrap(obj: Any, path) -> Dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, dict):
            for key in ("state_dict", "model", "ema", "var_wo_ddp", "vae_wo_ddp", "trainer"):
                if key in obj and isinstance(obj[key], dict):
                    obj = obj[key]
                    break
            else:
                break
        else:
            break
    raise CheckpointError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")


def check_state_dict(model: torch.nn.Module, sd: Dict[str, torch.Tensor], source, what: str) -> None:
    """Raise a readable error for missing/unexpected keys or shape mismatches (before loading)."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(f"{source}: does not fit a {what}: {'; '.join(parts)}")
    bad = [
        (k, tuple(sd[k].shape), tuple(v.shape))
        for k, v in own.items()
        if tuple(sd[k].shape) != tuple(v.shape) and k != "quantize.ema_vocab_hit_SV"
    ]
    if bad:
        k, got, want = bad[0]
        raise CheckpointError(
            f"{source}: shape mismatch for {what}: {k} is {got}, expected {want} ({len(bad)} mismatching tensors)"
        )


# ------------------------------------------------------------------ config inference
def _require_keys(sd: Dict[str, torch.Tensor], keys, what: str, source) -> None:
    for k in keys:
        if k not in sd:
            raise CheckpointError(
                f"{source}: not a {what} state dict (no {k!r}); did you swap the tokenizer and transformer files?"
            )


def infer_vqvae_config(sd: Dict[str, torch.Tensor], v_patch_nums=None, source="checkpoint") -> VQVAEConfig:
    """Rebuild the tokenizer configuration from a state dict's key names and shapes."""
    _require_keys(sd, ("quantize.embedding.weight", "encoder.conv_in.weight"), "VQ-VAE", source)
    V, Cvae = sd["quantize.embedding.weight"].shape
    ch = sd["encoder.conv_in.weight"].shape[0]
    levels = sorted({int(m.group(1)) for k in sd for m in [re.match(r"encoder\.down\.(\d+)\.", k)] if m})
    ch_mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels)
    nrb = len({int(m.group(1)) for k in sd for m in [re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)] if m})
    using_sa = any(k.startswith(f"encoder.down.{levels[-1]}.attn.") for k in sd)
    using_mid_sa = "encoder.mid.attn_1.qkv.weight" in sd
    ks = sd["quant_conv.weight"].shape[-1]
    if any(k.startswith("quantize.quant_resi.qresi_ls.") for k in sd):
        share = 1 + max(
            int(re.match(r"quantize\.quant_resi\.qresi_ls\.(\d+)\.", k).group(1))
            for k in sd
            if k.startswith("quantize.quant_resi.qresi_ls.")
        )
        counts = 0
    elif any(k.startswith("quantize.quant_resi.qresi.") for k in sd):
        share, counts = 1, 0
    else:
        ids = [int(m.group(1)) for k in sd for m in [re.match(r"quantize\.quant_resi\.(\d+)\.", k)] if m]
        share, counts = 0, (max(ids) + 1 if ids else 0)
    K = sd["quantize.ema_vocab_hit_SV"].shape[0] if "quantize.ema_vocab_hit_SV" in sd else None
    if v_patch_nums is None:
        v_patch_nums = scale_schedule_256 if K in (None, 10) else None
        if v_patch_nums is None:
            raise CheckpointError(
                f"{source}: cannot tell the scale schedule of a {K}-scale tokenizer; pass v_patch_nums"
            )
    try:
        return VQVAEConfig(
            vocab_size=int(V),
            z_channels=int(Cvae),
            ch=int(ch),
            ch_mult=ch_mult,
            num_res_blocks=nrb,
            quant_conv_ks=int(ks),
            share_quant_resi=share,
            default_qresi_counts=counts,
            v_patch_nums=tuple(v_patch_nums),
            using_sa=using_sa,
            using_mid_sa=using_mid_sa,
        )
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from None


def infer_var_config(sd: Dict[str, torch.Tensor], patch_nums=None, source="checkpoint") -> VARConfig:
    """Rebuild the transformer configuration (depth, width, classes, schedule, AdaLN kind) from shapes."""
    _require_keys(sd, ("class_emb.weight", "pos_1LC"), "VAR", source)
    n_cls, C = sd["class_emb.weight"].shape
    L = sd["pos_1LC"].shape[1]
    depth = 1 + max(int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m)
    l2 = "blocks.0.attn.scale_mul_1H11" in sd
    heads = sd["blocks.0.attn.scale_mul_1H11"].shape[1] if l2 else depth
    mlp_ratio = sd["blocks.0.ffn.fc1.weight"].shape[0] / C
    shared = "shared_ada_lin.1.weight" in sd
    if patch_nums is None:
        patch_nums = _KNOWN_SCHEDULES.get(int(L))
        if patch_nums is None:
            raise FieldError(  # names the setting to give (a front end shows its flag)
                f"{source}: {L} tokens match no released scale schedule; convert it once with its schedule: "
                f"nextscale convert {Path(str(source)).name} with ",
                FieldName("patch_nums"),
                " 1 2 3 ...",
            )
    if sum(p * p for p in patch_nums) != L:
        raise CheckpointError(
            f"{source}: has {L} tokens but patch_nums {tuple(patch_nums)} give {sum(p * p for p in patch_nums)} "
            "(wrong resolution?)"
        )
    return VARConfig(
        depth=depth,
        embed_dim=int(C),
        num_heads=int(heads),
        num_classes=int(n_cls) - 1,
        mlp_ratio=mlp_ratio,
        shared_aln=shared,
        attn_l2_norm=l2,
        patch_nums=tuple(patch_nums),
        drop_path_rate=0.1 * depth / 24,
    )


# ------------------------------------------------------------------ building + loading
def load_vqvae(path, config: Optional[VQVAEConfig] = None, v_patch_nums=None) -> VQVAE:
    sd = load_state_dict_file(path)
    cfg = config or infer_vqvae_config(sd, v_patch_nums=v_patch_nums, source=path)
    vae = VQVAE.from_config(cfg, test_mode=True)
    check_state_dict(vae, sd, path, "VQ-VAE")
    vae.load_state_dict(sd, strict=True)
    return vae


def load_var(path, vae: VQVAE, config: Optional[VARConfig] = None) -> VAR:
    sd = load_state_dict_file(path)
    cfg = config or infer_var_config(sd, patch_nums=None, source=path)
    if tuple(cfg.patch_nums) != tuple(vae.v_patch_nums):
        if config is None and sum(p * p for p in vae.v_patch_nums) == cfg.L:
            cfg = cfg.replace(patch_nums=vae.v_patch_nums)
        elif config is None:
            vae = _reschedule(vae, cfg.patch_nums)
        else:
            raise CheckpointError(
                f"{path}: transformer schedule {cfg.patch_nums} does not match the tokenizer's {vae.v_patch_nums}"
            )
    var = VAR.from_config(cfg, vae)
    check_state_dict(var, sd, path, f"VAR d{cfg.depth} ({cfg.width} wide, {cfg.num_classes} classes)")
    if sd["word_embed.weight"].shape[1] != vae.Cvae or sd["head.weight"].shape[0] != vae.vocab_size:
        raise CheckpointError(
            f"{path}: transformer expects Cvae={sd['word_embed.weight'].shape[1]}, V={sd['head.weight'].shape[0]} "
            f"but the tokenizer has Cvae={vae.Cvae}, V={vae.vocab_size}"
        )
    sd = _repair_derived_buffers(var, sd, path)
    var.load_state_dict(sd, strict=True)
    return var


#: VAR buffers that are pure functions of the scale schedule (no learnt content).
_DERIVED_VAR_BUFFERS = ("lvl_1L", "attn_bias_for_masking")


def _repair_derived_buffers(var: VAR, sd: Dict[str, torch.Tensor], path) -> Dict[str, torch.Tensor]:
    """Exports made before the EMA fix carry a NaN attention mask (EMA lerp'ed -inf into NaN). The
    mask and level ids follow from the schedule alone, so a file whose copy differs from the one the
    schedule gives is loaded with the right one (and says so) instead of training or sampling on NaN."""
    import warnings

    own = var.state_dict()
    bad = [k for k in _DERIVED_VAR_BUFFERS if k in sd and not torch.equal(sd[k].to(own[k].dtype), own[k])]
    if not bad:
        return sd
    warnings.warn(
        f"{path}: {', '.join(bad)} did not match the scale schedule (an export from before nextscale's "
        f"EMA fix); using the values the schedule gives. Re-export the model to silence this.",
        RuntimeWarning,
    )
    return {**sd, **{k: own[k] for k in bad}}


# ------------------------------------------------------------------ what needs no weights
def _is_released_repo(name_or_path) -> bool:
    """``name_or_path`` names the reference's hub repo (and is no local folder of that name)."""
    return str(name_or_path).lower() == RELEASED_REPO.lower() and not Path(str(name_or_path)).exists()


def released_class_names(name_or_path, variant: Optional[str]) -> Optional[List[str]]:
    """The class names of a released transformer of the reference's hub repo, without its weights (they are
    ImageNet-1k's, which ship with the package); None for any other model (load it to know)."""
    if variant is None or not _is_released_repo(name_or_path):
        return None
    if _check_variant(variant) not in RELEASED_VARIANTS:
        raise NextScaleError(
            f"{RELEASED_REPO} has no var_{variant}.pth (the reference released {', '.join(RELEASED_VARIANTS)})"
        )
    from nextscale.classes import imagenet_class_names

    return imagenet_class_names()


def released_info(name_or_path, variant: Optional[str], cache_dir=None, revision=None) -> Optional[Dict[str, Any]]:
    """What ``nextscale info`` shows about a released transformer of the reference's hub repo that is not in the
    local cache yet, from its preset (the release presets match the checkpoints; parameters counted on the meta
    device: nothing downloaded, nothing allocated). None when the model is something else or already cached (then
    load it: its weights are read and checked)."""
    labels = released_class_names(name_or_path, variant)
    if labels is None:
        return None
    try:
        hub_download(RELEASED_REPO, f"var_{variant}.pth", revision=revision, cache_dir=cache_dir, local_files_only=True)
        return None  # cached: describe the real file
    except NextScaleError:
        pass
    from nextscale.configs import get_preset

    cfg = get_preset(variant)
    var_cfg = dataclasses.replace(  # the sizes spelled out, as a checkpoint's inferred configuration has them
        cfg.var, embed_dim=cfg.var.width, num_heads=cfg.var.heads, drop_path_rate=cfg.var.dpr
    )
    with torch.device("meta"):
        vae = VQVAE.from_config(cfg.vqvae, test_mode=True)
        var = VAR.from_config(var_cfg, vae)
    return {
        "resolution": cfg.resolution,
        "num_classes": var_cfg.num_classes,
        "patch_nums": list(var_cfg.patch_nums),
        "tokens": var_cfg.L,
        "var": var_cfg.to_dict(),
        "vqvae": cfg.vqvae.to_dict(),
        "var_parameters": sum(p.numel() for p in var.parameters()),
        "vqvae_parameters": sum(p.numel() for p in vae.parameters()),
        "has_class_names": True,
        "labels": labels,
        "downloaded": False,
        "note": f"described from the release's configuration; the weights are not in the local cache "
        f"({hub_fetch_hint(RELEASED_REPO, f'var_{variant}.pth')} fetches them)",
    }


def _reschedule(vae: VQVAE, patch_nums) -> VQVAE:
    """The same tokenizer weights under another scale schedule (the 512px model reuses the 256px tokenizer)."""
    new = VQVAE.from_config(vae.config.replace(v_patch_nums=tuple(patch_nums)), test_mode=True)
    new.load_state_dict(vae.state_dict(), strict=True)
    return new


def read_json(path: Path, what: str = "a nextscale model directory") -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NextScaleError(f"{path}: missing; is this {what}?") from None
    except json.JSONDecodeError as e:
        raise NextScaleError(f"{path}: invalid JSON ({e})") from None


def load_components(
    path, vae_path=None, patch_nums=None, variant: Optional[str] = None
) -> Tuple[VQVAE, VAR, Dict[str, Any]]:
    """(vqvae, var, meta) from a pipeline directory, a released ``.pth`` (tokenizer found beside it or
    given as ``vae_path``), or a directory holding released ``.pth`` files. ``meta['labels']`` may
    hold class names. A tokenizer-only directory gives ``(vqvae, None, meta)`` with
    ``meta['tokenizer_only'] = True``."""
    p = Path(path)
    if is_tokenizer_dir(p):  # tokenizer-only directory: there is no transformer to return
        vae, index = _load_tokenizer_dir(p)
        return vae, None, {"labels": None, "index": index, "source": str(p), "tokenizer_only": True}
    if p.is_dir() and (p / "model_index.json").exists():
        index = read_json(p / "model_index.json")
        if index.get("model_type") == "ar":
            raise NextScaleError(
                f"{p} is a raster-order AR baseline (issue #15), not a VAR pipeline: load it with "
                f"nextscale.pipeline_ar.ARPipeline.from_pretrained, or nextscale sample with model {p}"
            )
        vcfg = VQVAEConfig.from_dict(read_json(p / "vqvae" / "config.json"))
        tcfg = VARConfig.from_dict(read_json(p / "var" / "config.json"))
        vae = load_vqvae(p / "vqvae" / "model.safetensors", config=vcfg)
        var = load_var(p / "var" / "model.safetensors", vae, config=tcfg)
        labels = None
        if (p / "labels.json").exists():
            labels = read_json(p / "labels.json")
        return vae, var, {"labels": labels, "index": index, "source": str(p)}
    if p.is_dir():
        found = _variants_in(p)
        if not found:
            raise NextScaleError(
                f"{p}: neither a nextscale model directory (no model_index.json) nor a folder with var_d*.pth"
            )
        if variant is None and len(found) > 1:
            raise NextScaleError(
                f"{p} holds {len(found)} transformers ({', '.join(found)}): choose one with "
                f"variant= (e.g. variant={found[0]!r})"
            )
        variant = found[0] if variant is None else _check_variant(variant)
        if variant not in found:
            raise NextScaleError(f"{p} has no var_{variant}.pth; it holds {', '.join(found)}")
        return load_components(p / f"var_{variant}.pth", vae_path=vae_path, patch_nums=patch_nums)
    if not p.exists():
        raise NextScaleError(f"{p}: no such file or directory")
    sd = load_state_dict_file(p)  # first: a file that is no checkpoint at all must say so, not ask for a tokenizer
    tcfg = infer_var_config(sd, patch_nums=patch_nums, source=p)
    if vae_path is None:
        cands = sorted(p.parent.glob("vae_*.pth"))
        if not cands:
            raise NextScaleError(
                f"{p}: a released transformer needs its tokenizer: put vae_ch160v4096z32.pth beside it or pass it "
                "explicitly"
            )
        vae_path = cands[0]
    vae = load_vqvae(vae_path, v_patch_nums=tcfg.patch_nums)
    var = load_var(p, vae, config=tcfg)
    labels = None
    if var.num_classes == 1000:  # the released models: ImageNet-1k in its standard order
        from nextscale.classes import imagenet_class_names

        labels = imagenet_class_names()
    return vae, var, {"labels": labels, "source": str(p)}


def save_model_dir(
    out_dir,
    class_name: str,
    models: Dict[str, torch.nn.Module],
    labels: Optional[List[str]] = None,
    extra: Optional[dict] = None,
) -> Path:
    """Write a model directory atomically (:func:`nextscale.atomic.atomic_dir`): ``NAME/config.json`` +
    ``NAME/model.safetensors`` (CPU copies) per entry of ``models``, ``model_index.json`` naming
    ``class_name`` and each component's class (plus ``extra``), and ``labels.json`` when given. The
    one writer of pipeline, tokenizer and AR model directories."""
    from nextscale._version import __version__
    from nextscale.safeload import save_safetensors

    out = Path(out_dir)
    index = {"_class_name": class_name, "_nextscale_version": __version__}
    index.update({name: ["nextscale", type(m).__name__] for name, m in models.items()})
    index.update(extra or {})
    with atomic_dir(out) as tmp:
        for name, m in models.items():
            (tmp / name).mkdir()
            (tmp / name / "config.json").write_text(m.config.to_json())
            save_safetensors(m.state_dict(), tmp / name / "model.safetensors")
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        if labels is not None:
            (tmp / "labels.json").write_text(json.dumps(list(labels), indent=1))
    return out


def save_components(
    out_dir, vae: VQVAE, var: VAR, labels: Optional[List[str]] = None, extra: Optional[dict] = None
) -> Path:
    """Write a pipeline directory atomically (a temp dir renamed into place)."""
    return save_model_dir(out_dir, "NextScalePipeline", {"vqvae": vae, "var": var}, labels=labels, extra=extra)


# ------------------------------------------------------------------ tokenizer-only directories
def is_tokenizer_dir(path) -> bool:
    """True for a directory written by :func:`save_tokenizer` (``model_index.json`` naming
    ``NextScaleTokenizer``, or ``vqvae/`` without ``var/`` beside a ``model_index.json``)."""
    p = Path(path)
    if not (p.is_dir() and (p / "model_index.json").is_file()):
        return False
    try:
        index = json.loads((p / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if isinstance(index, dict) and index.get("_class_name") == TOKENIZER_CLASS_NAME:
        return True
    if isinstance(index, dict) and index.get("model_type") == "ar":  # the raster-AR baseline has vqvae/ + ar/
        return False
    return (p / "vqvae" / "config.json").is_file() and not (p / "var").exists()


def _load_tokenizer_dir(p: Path) -> Tuple[VQVAE, dict]:
    index = read_json(p / "model_index.json")
    vcfg = VQVAEConfig.from_dict(read_json(p / "vqvae" / "config.json"))
    return load_vqvae(p / "vqvae" / "model.safetensors", config=vcfg), index


def _load_vqvae_dir(p: Path) -> VQVAE:
    """The VQ-VAE of a directory holding ``vqvae/config.json`` (tokenizer or pipeline directory)."""
    if (p / "model_index.json").is_file():
        return _load_tokenizer_dir(p)[0]
    return load_vqvae(
        p / "vqvae" / "model.safetensors", config=VQVAEConfig.from_dict(read_json(p / "vqvae" / "config.json"))
    )


def tokenizer_from_checkpoint(path, state: Optional[Dict[str, Any]] = None, weights: str = "auto") -> Tuple[VQVAE, str]:
    """(frozen eval-mode VQ-VAE, "ema" | "raw") of a ``train-tokenizer`` checkpoint ``step_*.pt``
    (``state``: the file's content when already read); ``weights`` "auto" takes the EMA when kept."""
    from nextscale.checkpoint import CKPT_FORMAT, checkpoint_weights, load_checkpoint

    if state is None:
        state = load_checkpoint(path)
    cfg = (state.get("config") or {}).get("model", {}).get("vqvae") if isinstance(state, dict) else None
    if cfg is None or state.get("format") != CKPT_FORMAT or "vae" not in state.get("modules", {}):
        raise NextScaleError(f"{path} is not a tokenizer training checkpoint (nextscale train-tokenizer)")
    sd, use = checkpoint_weights(state, "vae", weights, path)
    vae = VQVAE.from_config(VQVAEConfig.from_dict(cfg), test_mode=True)
    vae.load_state_dict(sd)
    return vae.eval(), use


def load_tokenizer(source, v_patch_nums=None, preset=None, seed: int = 0) -> VQVAE:
    """A frozen VQ-VAE from anywhere one can come from:

    - ``"default"``: the bundled model's tokenizer;
    - a tokenizer directory (:func:`save_tokenizer`) or a pipeline directory;
    - a ``train-tokenizer`` run folder: its latest checkpoint (``checkpoints/``), else its
      exported ``tokenizer/``; or one of its ``step_*.pt`` checkpoints (EMA weights when kept);
    - a released ``vae_*.pth`` or a ``.safetensors`` / ``.pth`` state dict (config inferred from the
      shapes; ``v_patch_nums``, else ``preset``'s, names the scale schedule);
    - ``"random"``: ``preset``'s architecture, randomly initialised from ``seed`` (smoke tests only).

    Every file is read through :mod:`nextscale.safeload` (tensors only, no fallback)."""
    if source == "random":
        if preset is None:
            raise FieldError(FieldName("tokenizer"), " random needs ", FieldName("preset"))
        from nextscale.models import build_from_config

        return build_from_config(preset, seed=seed, init_var=False)[0]
    if source == "default":  # the bundled model's tokenizer, as every other command accepts
        return _load_vqvae_dir(resolve_model_path("default"))
    if source is None or not os.path.exists(os.fspath(source)):
        raise NextScaleError(
            f"tokenizer {None if source is None else os.fspath(source)!r} not found; "
            f"pass a tokenizer/pipeline directory, a run folder or a vae_*.pth"
        )
    from nextscale.checkpoint import CKPT_FORMAT, find_checkpoint, load_checkpoint

    src = os.fspath(source)
    p = Path(src)
    if p.is_dir():
        if (p / "vqvae" / "config.json").is_file():
            return _load_vqvae_dir(p)
        if (p / "checkpoints").is_dir():
            path, state = find_checkpoint(
                src, "pass a train-tokenizer run folder or a step_*.pt file", f"nextscale train-tokenizer --out {src}"
            )
            return tokenizer_from_checkpoint(path, state)[0]
        if (p / "tokenizer" / "vqvae" / "config.json").is_file():
            return _load_vqvae_dir(p / "tokenizer")
        raise NextScaleError(
            f"{src!r} holds no tokenizer (expected vqvae/config.json, model_index.json or checkpoints/)"
        )
    if src.endswith(".pt"):  # a training checkpoint, or a state dict saved as .pt
        state = load_checkpoint(src)
        if isinstance(state, dict) and state.get("format") == CKPT_FORMAT:
            return tokenizer_from_checkpoint(src, state)[0]
    if v_patch_nums is None and preset is not None:
        v_patch_nums = preset.vqvae.v_patch_nums
    return load_vqvae(src, v_patch_nums=v_patch_nums)


def save_tokenizer(vae: VQVAE, out_dir, extra: Optional[dict] = None) -> Path:
    """Write a tokenizer directory (``model_index.json`` + ``vqvae/``) atomically: it is filled in
    a temp directory beside ``out_dir`` (umask modes) and renamed into place; a failure leaves
    no partial folder. ``extra`` goes into ``model_index.json``."""
    return save_model_dir(out_dir, TOKENIZER_CLASS_NAME, {"vqvae": vae}, extra=extra)


def resolve_model_path(name_or_path, cache_dir=None, revision=None, variant: Optional[str] = None) -> Path:
    """A local path, "default" (the bundled model), or a Hugging Face hub id ("org/name").

    ``variant`` ("d16" ... "d36") picks one released transformer: from a folder of released ``.pth``
    files, or from a hub repo of them (``FoundationVision/var``), where only the tokenizer and that
    transformer are fetched (``hf_hub_download``, with its progress bar) and converted once into a
    cached pipeline directory (``<hub cache>/nextscale-converted/...``, written atomically), so the
    next load is a plain safetensors load. Other hub ids (pipeline directories) go through
    ``snapshot_download``. ``HF_HUB_OFFLINE=1`` searches only the local cache; nothing is downloaded
    for local paths or "default".
    """
    if name_or_path in (None, "default"):
        if variant is not None:
            raise NextScaleError("variant= picks one of several released transformers; the default model has one")
        return bundled_model_dir("default")
    p = Path(os.path.expanduser(str(name_or_path)))
    if p.exists():
        if variant is not None:
            variant = _check_variant(variant)
            if not p.is_dir() or (p / "model_index.json").exists():
                raise NextScaleError(f"{p}: variant= picks a var_d*.pth in a folder of released files; this is not one")
            if not (p / f"var_{variant}.pth").exists():
                raise NextScaleError(
                    f"{p} has no var_{variant}.pth; it holds {', '.join(_variants_in(p)) or 'no var_d*.pth'}"
                )
            return p / f"var_{variant}.pth"
        return p
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", str(name_or_path)) and not str(name_or_path).startswith((".", "/")):
        try:
            import huggingface_hub
        except ImportError:
            raise NextScaleError(
                f"{name_or_path}: not a local path; to load hub ids install huggingface_hub (pip install "
                "'nextscale[hub]')"
            ) from None
        del huggingface_hub  # only its presence is checked here
        if variant is not None:
            return _hub_variant(str(name_or_path), _check_variant(variant), cache_dir, revision, hub_offline())
        return hub_snapshot(str(name_or_path), revision=revision, cache_dir=cache_dir)
    raise NextScaleError(f"{name_or_path}: no such file or directory")


# ------------------------------------------------------------------ the hub: the cache first, one quick try
#: seconds to wait for the hub to answer at all before saying it cannot be reached (huggingface_hub itself retries
#: a refused connection 5 times over ~30 s, printing a warning each time)
HUB_PROBE_TIMEOUT = 3.0
_probe_cache: Dict[str, Tuple[float, Optional[str]]] = {}


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set: only the local cache is searched."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def hub_cli() -> str:
    """The installed command that downloads hub files: ``hf`` (huggingface_hub >= 0.34), else ``huggingface-cli``."""
    try:
        from importlib.metadata import entry_points

        if any(
            ep.name == "hf" for ep in entry_points(group="console_scripts") if ep.value.startswith("huggingface_hub")
        ):
            return "hf"
    except Exception:  # noqa: BLE001 - metadata of an odd install: fall through
        pass
    return "huggingface-cli"


def hub_fetch_hint(repo: str, filename: Optional[str] = None) -> str:
    """The command that fetches ``repo`` (one file of it) into the cache, as the installed CLI spells it."""
    return f"{hub_cli()} download {repo}" + (f" {filename}" if filename else "")


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT) -> Optional[str]:
    """Why the hub cannot be reached (None: it answers), asked once with a short timeout and no retries, through
    huggingface_hub's own HTTP client (so its endpoint, proxies and certificates apply); remembered for a minute."""
    import time

    from huggingface_hub import constants

    url = constants.ENDPOINT
    hit = _probe_cache.get(url)
    if hit is not None and time.monotonic() - hit[0] < 60:
        return hit[1]
    try:
        from huggingface_hub.utils import get_session

        get_session().head(url, timeout=timeout)  # any HTTP answer (even an error status) means reachable
        why = None
    except Exception as e:  # noqa: BLE001 - connection refused, timeout, DNS, TLS: all "cannot be reached"
        why = f"{url} does not answer: {_first_line(e)}"
    _probe_cache[url] = (time.monotonic(), why)
    return why


def _offline_why() -> str:
    what = "HF_HUB_OFFLINE is set" if hub_offline() else "local_files_only"
    return f"{what} and it is not in the local hub cache"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


class HubFileMissing(NextScaleError):
    """The repository has no such file (as opposed to: it could not be fetched)."""


def hub_download(repo: str, filename: str, *, revision=None, cache_dir=None, local_files_only=None) -> Path:
    """One file of a hub repo, fast when offline: the local cache first (no network at all), then, unless
    ``local_files_only`` (None: ``HF_HUB_OFFLINE``), one short check that the hub answers, then ``hf_hub_download``.
    Every failure is one :class:`NextScaleError` line naming the command that fetches the file
    (:class:`HubFileMissing` when the repository has no such file)."""
    import huggingface_hub
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    local = hub_offline() if local_files_only is None else bool(local_files_only)
    kw = dict(repo_id=repo, filename=filename, revision=revision, cache_dir=cache_dir)
    try:
        return Path(huggingface_hub.hf_hub_download(**kw, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache (or a broken entry): fetch it below
        pass
    fetch = f"fetch it with {hub_fetch_hint(repo, filename)}"
    if local:
        raise NextScaleError(f"{repo}: {filename} is not available ({_offline_why()}); {fetch}")
    why = hub_unreachable()
    if why is not None:
        raise NextScaleError(
            f"{repo}: {filename} is not available (the hub cannot be reached: {why}); {fetch} when online"
        )
    try:
        return Path(huggingface_hub.hf_hub_download(**kw))
    except LocalEntryNotFoundError:  # before EntryNotFoundError: it may be a subclass of it
        raise NextScaleError(
            f"{repo}: {filename} is not available (the hub cannot be reached); {fetch} when online"
        ) from None
    except EntryNotFoundError:
        raise HubFileMissing(f"{repo} has no {filename}") from None
    except Exception as e:  # noqa: BLE001 - other hub errors (auth, repo not found) vary by version
        raise NextScaleError(f"{repo}: could not get {filename} from the hub: {_first_line(e)}") from None


def hub_snapshot(repo: str, *, revision=None, cache_dir=None, local_files_only=None, note: str = "") -> Path:
    """A whole hub repo (a pipeline directory), like :func:`hub_download`: the cache first, then one short check,
    then ``snapshot_download``; one line on failure (``note`` appended)."""
    import huggingface_hub

    local = hub_offline() if local_files_only is None else bool(local_files_only)
    kw = dict(repo_id=repo, revision=revision, cache_dir=cache_dir)
    try:
        return Path(huggingface_hub.snapshot_download(**kw, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache: fetch it below
        pass
    fetch = f"fetch it with {hub_fetch_hint(repo)}"
    if local:
        raise NextScaleError(f"{repo}: not available ({_offline_why()}); {fetch}{note}")
    why = hub_unreachable()
    if why is not None:
        raise NextScaleError(f"{repo}: not available (the hub cannot be reached: {why}); {fetch} when online{note}")
    try:
        return Path(huggingface_hub.snapshot_download(**kw))
    except Exception as e:  # noqa: BLE001 - hub errors vary by version; report one line
        raise NextScaleError(f"{repo}: could not get it from the hub: {_first_line(e)}{note}") from None


def _hub_variant(repo: str, variant: str, cache_dir, revision, offline: bool) -> Path:
    """The tokenizer and ``var_<variant>.pth`` of a hub repo of released files, converted once."""
    from huggingface_hub import constants

    def get(filename: str) -> Path:
        try:
            return hub_download(repo, filename, revision=revision, cache_dir=cache_dir, local_files_only=offline)
        except HubFileMissing as e:
            raise NextScaleError(
                str(e)
                + (f" (the reference released {', '.join(RELEASED_VARIANTS)})" if filename.startswith("var_") else "")
            ) from None

    var_file = get(f"var_{variant}.pth")
    vae_file = get(RELEASED_TOKENIZER)
    commit = var_file.parent.name  # .../snapshots/<commit>/var_d16.pth
    root = Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)
    out = root / "nextscale-converted" / repo.replace("/", "--") / commit / variant
    if not (out / "model_index.json").exists():
        vae, var, meta = load_components(var_file, vae_path=vae_file)
        save_components(
            out,
            vae,
            var,
            labels=meta["labels"],
            extra={"converted_from": {"repo": repo, "commit": commit, "files": [RELEASED_TOKENIZER, var_file.name]}},
        )
    return out
