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
    "TRANSFORMER_PRESETS",
    "infer_infinity_config",
    "load_infinity_transformer",
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
ConstantFn = Callable[[str, torch.Tensor], Optional[torch.Tensor]]


def strict_load(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    src,
    constant: ConstantFn,
    *,
    assign: bool = False,
    dtype: Optional[torch.dtype] = None,
) -> nn.Module:
    """``model.load_state_dict(state, strict=True, assign=assign)`` after checking names, shapes and constant
    buffers here (one-line :class:`CheckpointError` naming ``src`` and the first offending key).

    ``constant(key, own_tensor)`` returns the value a constant buffer must have (a real tensor, also when the
    model is on the meta device) or None for ordinary entries; constants may be missing from ``state``.
    ``dtype`` casts floating tensors (the official loader copies into float32 parameters)."""
    own = model.state_dict()
    state = dict(state)
    unexpected = [k for k in state if k not in own]
    if unexpected:
        extra = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{src}: unexpected key {unexpected[0]!r}{extra}: not a parameter of this model")
    consts = {k: constant(k, t) for k, t in own.items()}
    missing = [k for k in own if k not in state and consts[k] is None]
    if missing:
        extra = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{src}: missing key {missing[0]!r}{extra}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(
                f"{src}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)} "
                f"(a checkpoint of another configuration?)"
            )
        c = consts[k]
        if c is not None and not torch.equal(v.to(c.dtype), c):
            raise CheckpointError(
                f"{src}: {k} is a constant of the model and differs from it (a checkpoint of another configuration?)"
            )
    for k, c in consts.items():
        if k not in state:
            state[k] = c
    for k, v in state.items():
        want = dtype if dtype is not None else (own[k].dtype if not assign else None)
        if want is not None and v.is_floating_point() and v.dtype != want:
            state[k] = v.to(want)
    model.load_state_dict(state, strict=True, assign=assign)
    return model


# ------------------------------------------------------------------------------------------------ tokenizer
_WRAPPERS = ("conv", "norm")  # the thin module levels of the reference's Conv / Normalize wrappers


def _tokenizer_constant(key: str, own: torch.Tensor) -> Optional[torch.Tensor]:
    if not key.endswith("lfq.mask"):
        return None
    d = own.shape[0]  # 2^(d-1), ..., 2, 1 as int64 (a shift: for d = 64 the first entry wraps to -2^63)
    return torch.ones(d, dtype=torch.int64) << torch.arange(d - 1, -1, -1, dtype=torch.int64)


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
    return strict_load(model, tokenizer_state_for(model, sd, path), path, _tokenizer_constant)


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
    strict_load(model, tokenizer_state_for(model, sd, path), path, _tokenizer_constant)
    return model.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------ transformer
def _transformer_constant(key: str, own: torch.Tensor) -> Optional[torch.Tensor]:
    return torch.zeros(own.shape, dtype=own.dtype) if key.endswith("zero_k_bias") else None


def transformer_state_for(model: nn.Module, sd: Mapping[str, torch.Tensor], own_cfg_uncond=None) -> StateDict:
    """The official loader's rewrites: drop :data:`DROPPED_TRANSFORMER_KEYS`; fit ``cfg_uncond`` to the model's
    text_maxlen (:func:`~nextscale.models.infinity.resize_cfg_uncond`: cut, or extended by the model's own rows;
    ``own_cfg_uncond`` supplies those rows when the model is on the meta device)."""
    from nextscale.models.infinity import resize_cfg_uncond

    out = {k: v for k, v in sd.items() if k not in DROPPED_TRANSFORMER_KEYS}
    own = model.state_dict().get("cfg_uncond")
    old = out.get("cfg_uncond")
    if (
        own is not None
        and old is not None
        and old.ndim == 2
        and old.shape[1:] == own.shape[1:]
        and old.shape[0] != own.shape[0]
    ):
        out["cfg_uncond"] = resize_cfg_uncond(old, own_cfg_uncond if own_cfg_uncond is not None else own)
    return out


def _file_dtype(sd: Mapping[str, torch.Tensor]) -> Optional[torch.dtype]:
    kinds = {v.dtype for v in sd.values() if v.is_floating_point()}
    return kinds.pop() if len(kinds) == 1 else None


def load_transformer_weights(model: nn.Module, path) -> nn.Module:
    """Load a released transformer (file or sharded directory) into an existing ``model`` (copied into its
    parameters, whatever their dtype/device), strictly, after the official rewrites."""
    sd = read_state_dict(path)
    return strict_load(model, transformer_state_for(model, sd), path, _transformer_constant)


#: Released transformer presets: name -> InfinityConfig constructor name.
TRANSFORMER_PRESETS = {
    "infinity_2b": "infinity_2b",
    "infinity_2b_reg": "infinity_2b",
    "infinity_8b": "infinity_8b",
    "infinity_8b_512": "infinity_8b",
}


def infer_infinity_config(sd: Mapping[str, torch.Tensor], vae_bits: Optional[int] = None, **overrides):
    """The :class:`~nextscale.models.infinity.InfinityConfig` of a transformer state dict, from its shapes.

    The token width d' does not tell d = d' from the patchified d' = 4d: give ``vae_bits`` (the tokenizer's d) when
    the model patchifies; without it d = d'. ``overrides`` set the non-shape fields (e.g. ``cond_drop_rate``)."""
    from nextscale.models.infinity import InfinityConfig

    def shape(k):
        if k not in sd:
            raise CheckpointError(f"transformer state dict: no {k}, cannot tell its configuration")
        return tuple(sd[k].shape)

    C = shape("pos_start")[-1]
    token_bits = shape("word_embed.weight")[1]
    chunks = sorted({int(m.group(1)) for k in sd for m in [re.match(r"block_chunks\.(\d+)\.module\.", k)] if m})
    per = len({m.group(1) for k in sd for m in [re.match(r"block_chunks\.0\.module\.(\d+)\.", k)] if m})
    if not chunks or chunks != list(range(len(chunks))) or per < 1:
        raise CheckpointError("transformer state dict: no block_chunks.{c}.module.{j} blocks (the released layout)")
    ffn = shape("block_chunks.0.module.0.ffn.fc1.weight")[0]
    if vae_bits is None:
        vae_bits, patchify = token_bits, False
    elif token_bits == 4 * vae_bits:
        patchify = True
    elif token_bits == vae_bits:
        patchify = False
    else:
        raise CheckpointError(
            f"transformer state dict: token width {token_bits} fits neither d = {vae_bits} nor 4d (patchified)"
        )
    kw = dict(
        depth=len(chunks) * per,
        embed_dim=C,
        num_heads=shape("block_chunks.0.module.0.sa.scale_mul_1H11")[1],
        vae_bits=int(vae_bits),
        apply_spatial_patchify=patchify,
        text_channels=shape("text_norm.weight")[0],
        text_maxlen=shape("cfg_uncond")[0],
        block_chunks=len(chunks),
        mlp_ratio=ffn / C,
        num_levels=shape("lvl_embed.weight")[0],
    )
    kw.update(overrides)
    return InfinityConfig(**kw)


def _infinity_config(config, sd, vae_bits):
    from nextscale.models.infinity import InfinityConfig

    if config is None:
        return infer_infinity_config(sd, vae_bits, text_maxlen=512)  # the official loader's text_maxlen
    if isinstance(config, str):
        if config not in TRANSFORMER_PRESETS:
            raise InputError(f"config {config!r} is not a transformer preset; known: {', '.join(TRANSFORMER_PRESETS)}")
        return getattr(InfinityConfig, TRANSFORMER_PRESETS[config])()
    if not isinstance(config, InfinityConfig):
        raise InputError(f"config must be an InfinityConfig, a preset name or None, got {type(config).__name__}")
    return config


def load_infinity_transformer(
    path, config=None, *, vae_bits: Optional[int] = None, dtype: Optional[torch.dtype] = torch.float32, model_cls=None
):
    """An :class:`~nextscale.models.infinity.Infinity` holding the weights of ``path`` (``infinity_2b_reg.pth`` or an
    8B sharded directory), in eval mode without gradients, on the CPU.

    ``config``: an InfinityConfig, a preset name (``'infinity_2b'``, ``'infinity_8b'``) or None (read from the
    shapes; ``vae_bits`` then tells a patchifying model, see :func:`infer_infinity_config`; text_maxlen 512 as the
    official loader). The module is built on the meta device and takes the file's tensors (no second copy of the
    weights in memory); ``dtype`` (default float32, like the official loader; None keeps the file's) casts them.
    ``model_cls``: a subclass of Infinity without extra state (the compat wrapper) instead of Infinity."""
    from nextscale.models.infinity import Infinity, initial_cfg_uncond

    sd = read_state_dict(path)
    cfg = _infinity_config(config, sd, vae_bits)
    with torch.device("meta"):
        model = (model_cls or Infinity)(cfg)
    own_uncond = None
    if "cfg_uncond" in sd and sd["cfg_uncond"].shape[0] < cfg.text_maxlen:
        own_uncond = initial_cfg_uncond(cfg.text_maxlen, cfg.text_channels)
    state = transformer_state_for(model, sd, own_uncond)
    if dtype is None:
        dtype = _file_dtype(sd) or torch.float32
    strict_load(model, state, path, _transformer_constant, assign=True, dtype=dtype)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:  # a non-persistent buffer would stay unmaterialised: better a clear error than a crash later
        raise CheckpointError(f"{path}: {left[0]} was not loaded (meta tensor after loading)")
    return model.eval().requires_grad_(False)
