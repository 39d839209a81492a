"""Released Infinity checkpoints -> nextscale modules, strictly.

The official loaders are lenient (README of the fixtures, section 1): the transformer loads with strict=False and
the tokenizer copies whatever keys it recognises. Here every parameter must be found and every key must be used;
what does not fit is a :class:`~nextscale.errors.CheckpointError` of one line naming the file and the key.

Files (all read through :mod:`nextscale.safeload`, tensors only):

* transformer, 2B: ``infinity_2b_reg.pth``, a plain state dict (a full training checkpoint
  ``{'trainer': {'gpt_fsdp': state_dict}}`` is unwrapped as the official "slim" step does);
* transformer, 8B: a directory with ``model.safetensors.index.json`` or ``pytorch_model.bin.index.json`` and the
  shards it names (an unsharded ``model.safetensors`` / ``pytorch_model.bin`` directory works too);
* tokenizer: ``infinity_vae_*.pth``, ``torch.load(...)['vae']``, keys either in the module's naming
  (``encoder.conv_in.conv.weight``, ``...norm1.norm.weight``) or without the thin wrapper level
  (``encoder.conv_in.weight``, ``...norm1.weight``): both are accepted, mixed too.

Rewrites (the official transformer loader's, and nothing else): the keys ``lvl_1L``, ``attn_bias_for_masking``,
``Infinity_visible_kvlen``, ``Infinity_invisible_qlen`` are dropped; ``cfg_uncond`` is cut or extended to the
model's ``text_maxlen``. Constant buffers (the ``zero_k_bias`` zeros, the tokenizer's bit ``mask`` and its alias)
may be absent from a file -- they are then the module's own values -- but when present they must hold exactly
those values (a differing value means the file belongs to another model).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

import torch
import torch.nn as nn

from nextscale.errors import CheckpointError, InputError
from nextscale.safeload import load_weights

__all__ = [
    "read_state_dict",
    "read_sharded",
    "read_tokenizer_state",
    "tokenizer_state_for",
    "infer_bsq_config",
    "load_bsq_tokenizer",
    "load_tokenizer_weights",
    "transformer_state_for",
    "load_transformer_weights",
    "strict_load",
    "DROPPED_TRANSFORMER_KEYS",
]

#: Non-parameter entries that older official checkpoints may carry; the official loader drops them.
DROPPED_TRANSFORMER_KEYS = ("lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen", "Infinity_invisible_qlen")
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")

StateDict = Dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------------------ reading files
def _tensors_only(sd, path, what: str) -> StateDict:
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError(f"{path}: not a {what} (expected a dict of tensors, got {type(sd).__name__})")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: not a {what} (entry {bad[0]!r} is not a named tensor)")
    return dict(sd)


def read_sharded(directory, what: str = "sharded transformer checkpoint") -> StateDict:
    """All tensors of a Hugging Face style sharded directory (``*.index.json`` + shards), or of a directory
    holding one ``model.safetensors`` / ``pytorch_model.bin``. Every key of the index must be in its shard and
    every shard key must be in the index."""
    d = Path(directory)
    index = next((d / f for f in _INDEX_FILES if (d / f).is_file()), None)
    if index is None:
        single = next((d / f for f in _SINGLE_FILES if (d / f).is_file()), None)
        if single is None:
            raise CheckpointError(f"{d}: no {' or '.join(_INDEX_FILES + _SINGLE_FILES)} in this directory")
        return _tensors_only(load_weights(single, what), single, what)
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(
            f"{index}: not a shard index (expected JSON with a 'weight_map' of key -> file)"
        ) from None
    out: StateDict = {}
    for shard in sorted(set(weight_map.values())):
        p = d / shard
        if Path(shard).is_absolute() or ".." in Path(shard).parts:  # the index must not point outside the folder
            raise CheckpointError(f"{index}: shard name {shard!r} leaves the checkpoint directory")
        if not p.is_file():
            raise CheckpointError(f"{index}: names shard {shard}, which is missing from {d}")
        part = _tensors_only(load_weights(p, what), p, what)
        want = {k for k, v in weight_map.items() if v == shard}
        if want - set(part):
            raise CheckpointError(f"{p}: lacks {sorted(want - set(part))[0]!r}, which the index puts in this shard")
        if set(part) - want:
            raise CheckpointError(f"{p}: holds {sorted(set(part) - want)[0]!r}, which the index does not list here")
        out.update(part)
    return out


def read_state_dict(path, what: str = "transformer checkpoint") -> StateDict:
    """A transformer state dict from a ``.pth`` / ``.safetensors`` file or a sharded directory."""
    p = Path(path)
    if p.is_dir():
        return read_sharded(p)
    sd = load_weights(p, what)
    if isinstance(sd, Mapping) and isinstance(sd.get("trainer"), Mapping) and "gpt_fsdp" in sd["trainer"]:
        sd = sd["trainer"]["gpt_fsdp"]  # a full training checkpoint: the official "slim" step takes this entry
    return _tensors_only(sd, p, what)


def read_tokenizer_state(path, what: str = "Infinity tokenizer checkpoint") -> StateDict:
    """The tokenizer's tensors: ``torch.load(path)['vae']`` (a plain state dict of tensors is accepted too)."""
    p = Path(path)
    obj = load_weights(p, what)
    if isinstance(obj, Mapping) and "vae" in obj:
        obj = obj["vae"]
    elif isinstance(obj, Mapping) and obj and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p}: not a {what} (no 'vae' entry; top-level keys: {', '.join(map(str, obj))[:80]})")
    return _tensors_only(obj, p, what)


# ------------------------------------------------------------------------------------------------ strict matching
def _check_constant(src, key: str, given: torch.Tensor, own: torch.Tensor) -> None:
    if given.shape != own.shape or not torch.equal(given.to(own.dtype), own.to("cpu")):
        raise CheckpointError(
            f"{src}: {key} is a constant of the model and differs from it (a checkpoint of another configuration?)"
        )


def strict_load(model: nn.Module, state: Mapping[str, torch.Tensor], src, constant: Callable[[str], bool]) -> nn.Module:
    """``model.load_state_dict(state, strict=True)`` after checking names, shapes and constant buffers ourselves
    (one-line :class:`CheckpointError` naming ``src`` and the first offending key). Keys for which
    ``constant(key)`` holds may be missing (the module keeps its own value) and must match when present."""
    own = model.state_dict()
    state = dict(state)
    unexpected = [k for k in state if k not in own]
    if unexpected:
        extra = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{src}: unexpected key {unexpected[0]!r}{extra}: not a parameter of this model")
    missing = [k for k in own if k not in state and not constant(k)]
    if missing:
        extra = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{src}: missing key {missing[0]!r}{extra}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(
                f"{src}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)} "
                f"(a checkpoint of another configuration?)"
            )
        if constant(k):
            _check_constant(src, k, v, own[k])
    for k in own:
        if k not in state:
            state[k] = own[k]  # constant buffers only (checked above)
    model.load_state_dict(state, strict=True)
    return model


# ------------------------------------------------------------------------------------------------ tokenizer
_WRAPPERS = ("conv", "norm")  # the thin module levels of the reference's Conv / Normalize wrappers


def _is_tokenizer_constant(key: str) -> bool:
    return key.endswith("lfq.mask")


def tokenizer_state_for(model: nn.Module, sd: Mapping[str, torch.Tensor], src="checkpoint") -> StateDict:
    """Rename a tokenizer checkpoint's keys to ``model``'s: each key is taken verbatim, or with the wrapper level
    ``.conv.`` / ``.norm.`` inserted before ``weight`` / ``bias``. A key that fits nothing, or two keys that land
    on the same parameter, are errors."""
    own = model.state_dict()
    out: StateDict = {}
    origin: Dict[str, str] = {}
    for k, v in sd.items():
        cands = [k] if k in own else []
        head, dot, leaf = k.rpartition(".")
        if not cands and dot and leaf in ("weight", "bias"):
            cands = [f"{head}.{w}.{leaf}" for w in _WRAPPERS if f"{head}.{w}.{leaf}" in own]
        if not cands:
            raise CheckpointError(
                f"{src}: unexpected key {k!r}: matches no tokenizer parameter (with or without the .conv/.norm level)"
            )
        target = cands[0]
        if target in out:
            raise CheckpointError(f"{src}: keys {origin[target]!r} and {k!r} both give {target}")
        out[target], origin[target] = v, k
    return out


def infer_bsq_config(sd: Mapping[str, torch.Tensor]):
    """The :class:`~nextscale.models.bsq.BSQConfig` a tokenizer state dict was made with (either naming):
    d from ``encoder.conv_out``, base_ch from ``encoder.conv_in``, ch_mult from each level's first block,
    num_res_blocks from level 0, patch size from the number of down-samplings."""
    from nextscale.models.bsq import BSQConfig

    def w(name: str) -> torch.Tensor:
        for k in (f"{name}.weight", f"{name}.conv.weight", f"{name}.norm.weight"):
            if k in sd:
                return sd[k]
        raise CheckpointError(f"tokenizer state dict: no {name}.weight, cannot tell its configuration")

    base_ch = int(w("encoder.conv_in").shape[0])
    d = int(w("encoder.conv_out").shape[0])
    levels = sorted({int(m.group(1)) for k in sd for m in [re.match(r"encoder\.down\.(\d+)\.", k)] if m})
    if not levels or levels != list(range(len(levels))):
        raise CheckpointError("tokenizer state dict: no encoder.down.{i} levels, cannot tell its configuration")
    ch_mult = tuple(int(w(f"encoder.down.{i}.block.0.conv1").shape[0]) // base_ch for i in levels)
    n_blocks = len({m.group(1) for k in sd for m in [re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)] if m})
    n_down = sum(1 for i in levels if any(k.startswith(f"encoder.down.{i}.downsample.") for k in sd))
    image_channels = int(w("encoder.conv_in").shape[1])
    return BSQConfig(
        codebook_dim=d,
        base_ch=base_ch,
        ch_mult=ch_mult,
        num_res_blocks=n_blocks,
        patch_size=2**n_down,
        image_channels=image_channels,
    )


_BSQ_FIELDS = ("codebook_dim", "base_ch", "ch_mult", "num_res_blocks", "patch_size", "image_channels")


def load_tokenizer_weights(model: nn.Module, path) -> nn.Module:
    """Load an ``infinity_vae_*.pth`` into an existing tokenizer module, strictly (see the module docstring)."""
    sd = read_tokenizer_state(path)
    return strict_load(model, tokenizer_state_for(model, sd, path), path, _is_tokenizer_constant)


def load_bsq_tokenizer(path, config=None):
    """A :class:`~nextscale.models.bsq.BSQVAE` with the weights of ``path``, in eval mode without gradients.

    ``config``: a :class:`~nextscale.models.bsq.BSQConfig`, a preset name (``'infinity_vae_d32reg'``) or None
    (read from the file's shapes)."""
    from nextscale.models.bsq import BSQ_PRESETS, BSQVAE, BSQConfig

    sd = read_tokenizer_state(path)
    if config is None:
        config = infer_bsq_config(sd)
    else:
        if isinstance(config, str):
            if config not in BSQ_PRESETS:
                raise InputError(f"config {config!r} is not a tokenizer preset; known: {', '.join(BSQ_PRESETS)}")
            config = BSQ_PRESETS[config]
        elif not isinstance(config, BSQConfig):
            raise InputError(f"config must be a BSQConfig, a preset name or None, got {type(config).__name__}")
        try:
            found = infer_bsq_config(sd)
        except (CheckpointError, ValueError):  # ValueError: the FieldErrors of a config that cannot exist
            found = None
        if found is not None and found != config:  # name the difference instead of the first odd key
            diff = ", ".join(
                f"{f}={getattr(found, f)} (not {getattr(config, f)})"
                for f in _BSQ_FIELDS
                if getattr(found, f) != getattr(config, f)
            )
            raise CheckpointError(f"{path}: a tokenizer with {diff}: not the configuration asked for")
    model = BSQVAE(config)
    strict_load(model, tokenizer_state_for(model, sd, path), path, _is_tokenizer_constant)
    return model.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------ transformer
def _is_transformer_constant(key: str) -> bool:
    return key.endswith("zero_k_bias")


def _resize_cfg_uncond(old: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """The official rule: keep the first min(len) rows; when the file has fewer rows than ``text_maxlen``, the
    remaining rows are the model's own (its initial values)."""
    n = min(old.shape[0], own.shape[0])
    if n == own.shape[0]:
        return old[:n]
    return torch.cat([old.to(dtype=own.dtype), own[n:].to("cpu")])


def transformer_state_for(
    model: nn.Module, sd: Mapping[str, torch.Tensor], resize_cfg_uncond: Optional[Callable] = None
) -> StateDict:
    """The official loader's rewrites: drop :data:`DROPPED_TRANSFORMER_KEYS`, fit ``cfg_uncond`` to the model's
    text_maxlen (``resize_cfg_uncond(old, own)``; default: the official rule)."""
    out = {k: v for k, v in sd.items() if k not in DROPPED_TRANSFORMER_KEYS}
    own = model.state_dict()
    if (
        "cfg_uncond" in out
        and "cfg_uncond" in own
        and out["cfg_uncond"].ndim == 2
        and out["cfg_uncond"].shape[1:] == own["cfg_uncond"].shape[1:]
    ):
        out["cfg_uncond"] = (resize_cfg_uncond or _resize_cfg_uncond)(out["cfg_uncond"], own["cfg_uncond"])
    return out


def load_transformer_weights(model: nn.Module, path, resize_cfg_uncond: Optional[Callable] = None) -> nn.Module:
    """Load a released transformer (file or sharded directory) into ``model`` strictly, after the rewrites."""
    sd = read_state_dict(path)
    return strict_load(model, transformer_state_for(model, sd, resize_cfg_uncond), path, _is_transformer_constant)
