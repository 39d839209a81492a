"""Text-to-image (Infinity) pipeline directories, and the released Infinity files on the Hugging Face hub.

Pipeline directory (what ``NextScaleT2IPipeline.save_pretrained`` writes and ``from_pretrained`` reads)::

    model_index.json            {"_class_name": "NextScaleT2IPipeline", "bsq": [...], "infinity": [...],
                                 "text_encoder": {"name": "google/flan-t5-xl", "max_length": 512}
                                              or {"files": "text_encoder", "max_length": N} or null,
                                 "sampling_defaults": {...}, "default_pn": "1M"}
    bsq/config.json             BSQConfig fields (the tokenizer)
    bsq/model.safetensors       (the quantiser's bit mask once: its alias is the same buffer)
    infinity/config.json        InfinityConfig fields (the transformer)
    infinity/model.safetensors
    text_encoder/               only for a small encoder stored as files (transformers' save_pretrained)

The flan-t5-xl encoder (1.2B parameters, ~11 GB of files to download) is stored by name: it is read from the user's
Hugging Face cache at load time (``hf download google/flan-t5-xl`` once).

Released files (``FoundationVision/Infinity``): ``variant="2b"`` needs ``infinity_2b_reg.pth`` +
``infinity_vae_d32reg.pth``; ``"8b"`` the sharded ``infinity_8b_weights/`` (its ``*.index.json`` and the shards it
names) + ``infinity_vae_d56_f8_14_patchify.pth``; ``"8b-512"`` ``infinity_8b_512x512_weights/`` + the same
tokenizer. Only those files are fetched (``hf_hub_download``), read strictly (:mod:`nextscale.infinity_release`) and
converted once into ``<hub cache>/nextscale-converted/FoundationVision--Infinity/<commit>/<variant>/`` (written
atomically); later loads read that directory's safetensors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from nextscale.errors import CheckpointError, FieldError, NextScaleError
from nextscale.hub import HubFileMissing as _Missing  # the repository has no such file (not: it could not be fetched)
from nextscale.hub import hub_download, hub_offline, hub_snapshot

__all__ = [
    "T2I_CLASS_NAME",
    "RELEASED_REPO",
    "RELEASED_VARIANTS",
    "ReleasedVariant",
    "RELEASED_SAMPLING",
    "is_t2i_dir",
    "load_t2i_dir",
    "save_t2i_dir",
    "resolve_t2i_path",
    "released_layout",
]

#: ``model_index.json`` ``_class_name`` of a text-to-image pipeline directory.
T2I_CLASS_NAME = "NextScaleT2IPipeline"
RELEASED_REPO = "FoundationVision/Infinity"
#: The released inference settings (``tools/run_infinity.py``): cfg 3, tau 0.5, top-k 900 (a no-op on bits),
#: top-p 0.97, guidance on the logits.
RELEASED_SAMPLING = {"guidance_scale": 3.0, "temperature": 0.5, "top_k": 900, "top_p": 0.97, "cfg_insertion_layer": 0}
_MASK_ALIAS = "quantize.lfq.mask"  # the tokenizer registers its bit mask twice (README 8.11); stored once


@dataclass(frozen=True)
class ReleasedVariant:
    """The files of one released model in ``FoundationVision/Infinity``."""

    name: str
    transformer: str  # a file, or a folder of shards (ends with "/")
    tokenizer: str
    default_pn: str  # the size the model was trained for


RELEASED_VARIANTS: Dict[str, ReleasedVariant] = {
    "2b": ReleasedVariant("2b", "infinity_2b_reg.pth", "infinity_vae_d32reg.pth", "1M"),
    "8b": ReleasedVariant("8b", "infinity_8b_weights/", "infinity_vae_d56_f8_14_patchify.pth", "1M"),
    "8b-512": ReleasedVariant("8b-512", "infinity_8b_512x512_weights/", "infinity_vae_d56_f8_14_patchify.pth", "0.25M"),
}
_SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _variant(variant) -> ReleasedVariant:
    if variant not in RELEASED_VARIANTS:
        raise NextScaleError(
            f"variant {variant!r} is not a released Infinity model; choose one of {', '.join(RELEASED_VARIANTS)}"
        )
    return RELEASED_VARIANTS[variant]


# ------------------------------------------------------------------------------------------------ directories
def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NextScaleError(f"{path}: missing; is this {what}?") from None
    except (OSError, json.JSONDecodeError) as e:
        raise NextScaleError(f"{path}: unreadable ({e})") from None


def is_t2i_dir(path) -> bool:
    p = Path(path)
    if not (p / "model_index.json").is_file():
        return False
    try:
        return json.loads((p / "model_index.json").read_text()).get("_class_name") == T2I_CLASS_NAME
    except (OSError, ValueError, AttributeError):
        return False


def _config(cls, path: Path):
    d = _read_json(path, "a text-to-image pipeline directory")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names) if isinstance(d, dict) else ["<not an object>"]
    if unknown:
        raise CheckpointError(f"{path}: unknown {cls.__name__} field {unknown[0]!r}")
    try:
        return cls(**d)
    except (FieldError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def load_t2i_dir(path) -> Tuple[torch.nn.Module, torch.nn.Module, Dict[str, Any]]:
    """(tokenizer, transformer, model_index) of a pipeline directory, strictly, in the files' dtype (float32 when
    mixed), on the CPU, eval mode, no gradients."""
    from nextscale.infinity_release import load_bsq_tokenizer, load_infinity_transformer
    from nextscale.models.bsq import BSQConfig
    from nextscale.models.infinity import InfinityConfig

    p = Path(path)
    index = _read_json(p / "model_index.json", "a text-to-image pipeline directory")
    if not isinstance(index, dict) or index.get("_class_name") != T2I_CLASS_NAME:
        name = index.get("_class_name") if isinstance(index, dict) else None
        raise NextScaleError(
            f"{p} holds a {name or 'non-pipeline'} directory, not a text-to-image one; load it with "
            f"NextScalePipeline.from_pretrained"
        )
    vae = load_bsq_tokenizer(p / "bsq" / "model.safetensors", _config(BSQConfig, p / "bsq" / "config.json"))
    icfg = _config(InfinityConfig, p / "infinity" / "config.json")
    model = load_infinity_transformer(p / "infinity" / "model.safetensors", icfg, dtype=None)
    return vae, model, index


def _config_json(cfg) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2)


def save_t2i_dir(
    out_dir,
    vae,
    model,
    *,
    text_encoder_entry: Optional[dict],
    write_text_encoder=None,
    extra: Optional[dict] = None,
) -> Path:
    """Write a pipeline directory atomically (filled beside ``out_dir``, renamed into place; a failure leaves
    nothing). ``write_text_encoder(folder)`` writes a small encoder's files into ``text_encoder/``."""
    from nextscale._version import __version__
    from nextscale.atomic import atomic_dir
    from nextscale.safeload import save_safetensors

    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        (tmp / "bsq").mkdir()
        (tmp / "bsq" / "config.json").write_text(_config_json(vae.config))
        save_safetensors(
            {k: v for k, v in vae.state_dict().items() if k != _MASK_ALIAS}, tmp / "bsq" / "model.safetensors"
        )
        (tmp / "infinity").mkdir()
        (tmp / "infinity" / "config.json").write_text(_config_json(model.config))
        save_safetensors(model.state_dict(), tmp / "infinity" / "model.safetensors")
        if write_text_encoder is not None:
            write_text_encoder(tmp / "text_encoder")
        index = {
            "_class_name": T2I_CLASS_NAME,
            "_nextscale_version": __version__,
            "bsq": ["nextscale", "BSQVAE"],
            "infinity": ["nextscale", "Infinity"],
            "text_encoder": text_encoder_entry,
            **(extra or {}),
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


# ------------------------------------------------------------------------------------------------ the hub
class _Hub:
    """hf_hub_download of single files with one-line errors."""

    def __init__(self, repo: str, revision, cache_dir, local_files_only: bool):
        try:
            import huggingface_hub  # noqa: F401
        except ImportError:
            raise NextScaleError(
                f"{repo}: not a local path; to load hub ids install huggingface_hub (pip install 'nextscale[hub]')"
            ) from None
        self.repo, self.revision, self.cache_dir, self.local = repo, revision, cache_dir, local_files_only

    def get(self, filename: str) -> Path:
        return hub_download(
            self.repo, filename, revision=self.revision, cache_dir=self.cache_dir, local_files_only=self.local
        )


def _snapshot_commit(path: Path) -> str:
    parts = path.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else "local"


def _get_transformer(hub: _Hub, v: ReleasedVariant) -> Path:
    """The transformer file, or the shard folder with its index and every shard it names."""
    if not v.transformer.endswith("/"):
        return hub.get(v.transformer)
    index, errors = None, []
    for name in _SHARD_INDEXES:
        try:
            index = hub.get(v.transformer + name)
            break
        except NextScaleError as e:
            errors.append(e)
    if index is None:
        raise errors[0]
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise CheckpointError(
            f"{index}: not a shard index (expected JSON with a 'weight_map' of key -> file)"
        ) from None
    for s in shards:  # a shard is a file of that folder: the index must not send downloads elsewhere
        if not isinstance(s, str) or not re.fullmatch(r"[\w.-]+", s) or s in (".", ".."):
            raise CheckpointError(f"{index}: shard name {s!r} is not a file of {v.transformer}")
        hub.get(v.transformer + s)
    return index.parent


def _converted_root(cache_dir) -> Path:
    if cache_dir:
        return Path(cache_dir)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def convert_release(transformer_path, tokenizer_path, out_dir, *, default_pn: str, extra: Optional[dict] = None):
    """Released files -> a pipeline directory (the text encoder by name: flan-t5-xl)."""
    from nextscale.infinity_release import load_bsq_tokenizer, load_infinity_transformer
    from nextscale.text import DEFAULT_T5

    vae = load_bsq_tokenizer(tokenizer_path)
    model = load_infinity_transformer(transformer_path, vae_bits=vae.codebook_dim, dtype=None)
    return save_t2i_dir(
        out_dir,
        vae,
        model,
        text_encoder_entry={"name": DEFAULT_T5, "max_length": 512},
        extra={"sampling_defaults": dict(RELEASED_SAMPLING), "default_pn": default_pn, **(extra or {})},
    )


def _local_release(folder: Path, v: ReleasedVariant) -> Tuple[Path, Path]:
    tf, tok = folder / v.transformer.rstrip("/"), folder / v.tokenizer
    for f in (tf, tok):
        if not f.exists():
            raise NextScaleError(
                f"{folder} has no {f.name}: variant {v.name!r} needs {v.transformer} and {v.tokenizer}"
            )
    return tf, tok


def resolve_t2i_path(
    name_or_path, *, variant=None, cache_dir=None, revision=None, local_files_only=None
) -> Tuple[Path, Optional[dict]]:
    """(a pipeline directory, or a released file pair) for ``name_or_path``:

    * a pipeline directory -> (it, None);
    * a folder of released files + ``variant`` -> (the folder, {"transformer", "tokenizer", "default_pn"}):
      loaded directly, nothing written;
    * a hub id + ``variant`` -> the converted directory in the hub cache (converted on first use);
    * a hub id of a pipeline directory -> ``snapshot_download`` of it.

    ``local_files_only`` None follows ``HF_HUB_OFFLINE``. ``"default-t2i"``: the bundled model (``nextscale.hub``)."""
    if name_or_path == "default-t2i":
        from nextscale.hub import bundled_model_dir

        if variant is not None:
            raise NextScaleError("variant= picks one of several released transformers; the default model has one")
        return bundled_model_dir("default-t2i"), None
    if variant is not None:
        v = _variant(variant)
    p = Path(os.path.expanduser(str(name_or_path)))
    if p.exists():
        if is_t2i_dir(p):
            if variant is not None:
                raise NextScaleError(f"{p} is a pipeline directory (one model); variant= picks a released file set")
            return p, None
        if not p.is_dir():
            raise NextScaleError(
                f"{p}: not a text-to-image pipeline directory (no model_index.json naming {T2I_CLASS_NAME})"
            )
        if variant is None:
            raise NextScaleError(
                f"{p}: not a pipeline directory; for a folder of released files pass variant= "
                f"({', '.join(RELEASED_VARIANTS)})"
            )
        tf, tok = _local_release(p, v)
        return p, {"transformer": tf, "tokenizer": tok, "default_pn": v.default_pn}
    repo = str(name_or_path)
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo):
        raise NextScaleError(f"{repo}: no such file or directory (and not a hub id org/name)")
    local = hub_offline() if local_files_only is None else bool(local_files_only)
    hub = _Hub(repo, revision, cache_dir, local)
    if variant is None:
        note = f"; for the released models pass variant= ({', '.join(RELEASED_VARIANTS)})"
        snap = hub_snapshot(repo, revision=revision, cache_dir=cache_dir, local_files_only=local, note=note)
        if not is_t2i_dir(snap):
            raise NextScaleError(
                f"{repo} is not a text-to-image pipeline directory; for released files pass variant= "
                f"({', '.join(RELEASED_VARIANTS)})"
            )
        return snap, None
    try:
        tf = _get_transformer(hub, v)
        tok = hub.get(v.tokenizer)
    except _Missing as e:
        raise NextScaleError(f"{e} (variant {v.name!r} needs {v.transformer} and {v.tokenizer})") from None
    commit = _snapshot_commit(tok)
    out = _converted_root(cache_dir) / "nextscale-converted" / repo.replace("/", "--") / commit / v.name
    if not (out / "model_index.json").exists():
        convert_release(
            tf,
            tok,
            out,
            default_pn=v.default_pn,
            extra={
                "converted_from": {
                    "repo": repo,
                    "commit": commit,
                    "variant": v.name,
                    "files": [v.transformer, v.tokenizer],
                }
            },
        )
    return out, None


def released_layout(name_or_path, variant, cache_dir=None, revision=None):
    """A released model of ``FoundationVision/Infinity`` whose transformer is not in the local cache yet, as the
    parts of a pipeline on the meta device, (tokenizer, transformer, index) like
    :func:`released_files_pipeline_parts` (its presets' layout: no weights, nothing downloaded or allocated), for
    what needs no weights (``nextscale info``); None for anything else or a cached release (then load it)."""
    if variant is None or str(name_or_path).lower() != RELEASED_REPO.lower() or Path(str(name_or_path)).exists():
        return None
    v = _variant(variant)
    first = v.transformer + _SHARD_INDEXES[0] if v.transformer.endswith("/") else v.transformer
    try:
        hub_download(RELEASED_REPO, first, revision=revision, cache_dir=cache_dir, local_files_only=True)
        return None  # cached: describe the real files
    except NextScaleError:
        pass
    from nextscale.infinity_release import TRANSFORMER_PRESETS
    from nextscale.models.bsq import BSQ_PRESETS, BSQVAE
    from nextscale.models.infinity import Infinity, InfinityConfig

    preset = TRANSFORMER_PRESETS["infinity_8b" if v.name.startswith("8b") else "infinity_2b"]
    with torch.device("meta"):
        vae = BSQVAE(BSQ_PRESETS[v.tokenizer.rsplit(".", 1)[0]])
        model = Infinity(getattr(InfinityConfig, preset)())
    return vae, model, {"sampling_defaults": dict(RELEASED_SAMPLING), "default_pn": v.default_pn}


def released_files_pipeline_parts(info: dict):
    """(tokenizer, transformer, index) straight from a folder of released files (nothing written)."""
    from nextscale.infinity_release import load_bsq_tokenizer, load_infinity_transformer
    from nextscale.text import DEFAULT_T5

    vae = load_bsq_tokenizer(info["tokenizer"])
    model = load_infinity_transformer(info["transformer"], vae_bits=vae.codebook_dim, dtype=None)
    index = {
        "text_encoder": {"name": DEFAULT_T5, "max_length": 512},
        "sampling_defaults": dict(RELEASED_SAMPLING),
        "default_pn": info["default_pn"],
    }
    return vae, model, index
