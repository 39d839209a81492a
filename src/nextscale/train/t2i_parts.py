"""Pieces of text-to-image training that are not the objective: the tiny T5 text encoder built here (no
download), text-encoder resolution, and the BSQ tokenizer directory (what ``train-tokenizer --bitwise``
exports and ``train-t2i --tokenizer`` reads).

Tiny T5: a word-level unigram vocabulary made from the training captions (every word once, plus single
characters so that unseen words still tokenize) and a randomly initialised ``transformers.T5EncoderModel``
seeded from the run's seed. It is frozen: its features are a fixed, deterministic function of the words
and their context, and the transformer's own text layers (``text_norm``, the text pool, ``text_proj_for_ca``)
learn to read them. It is saved as files with the exported pipeline (``text_encoder/``), so the model
loads offline.

BSQ tokenizer directory::

    model_index.json   {"_class_name": "BSQTokenizer", "bsq": ["nextscale", "BSQVAE"], ...}
    bsq/config.json    BSQConfig fields
    bsq/model.safetensors

(the ``bsq/`` folder of a text-to-image pipeline directory, so a pipeline directory works as a tokenizer too).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import string
from pathlib import Path
from typing import Optional, Sequence

import torch

from nextscale.errors import FieldError, FieldName, InputError

__all__ = [
    "TINY_T5",
    "build_tiny_t5",
    "resolve_text_encoder",
    "save_bsq_dir",
    "quiet_transformers",
    "load_bsq_any",
    "text_encoder_entry",
]

#: The tiny T5's sizes: d_model 128 = one text-pool head of the transformer (Ct5 must be a multiple of 128).
TINY_T5 = dict(d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4)
_MASK_ALIAS = "quantize.lfq.mask"


@contextlib.contextmanager
def quiet_transformers():
    """transformers' progress bars off (loading / writing weights would print bars into training logs)."""
    try:
        from transformers.utils import logging as tlog
    except ImportError:
        yield
        return
    was = tlog.is_progress_bar_enabled()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            tlog.enable_progress_bar()


def build_tiny_t5(captions: Sequence[str], seed: int = 0, max_length: int = 64):
    """A :class:`~nextscale.text.T5TextEncoder` with a vocabulary of ``captions``' words and random weights
    (seeded): deterministic for the same captions and seed."""
    import transformers

    from nextscale.text import T5TextEncoder

    words = sorted({w for c in captions for w in c.split()})
    chars = sorted(set(string.ascii_lowercase + string.digits) | {ch for w in words for ch in w})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in words] + [(ch, -5.0) for ch in chars]
    try:
        tok = transformers.T5Tokenizer(vocab=vocab, extra_ids=0)
    except TypeError:  # transformers 4 builds T5 tokenizers from a sentencepiece file only
        raise InputError(
            "the tiny text encoder needs transformers >= 5; pass text_encoder NAME (a T5 in the cache)"
        ) from None
    tok.model_max_length = max_length
    cfg = transformers.T5Config(
        vocab_size=len(vocab), decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **TINY_T5
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.T5EncoderModel(cfg)
    return T5TextEncoder(model, tok, max_length=max_length, device="cpu")


def resolve_text_encoder(spec: str, captions: Sequence[str], seed: int, max_length: int, init_dir=None):
    """The text encoder of a run: the init model's (when ``init_dir`` is given and ``spec`` is "tiny"),
    a tiny one built from ``captions`` ("tiny"), or a T5 by name/directory from the Hugging Face cache."""
    from nextscale.text import T5TextEncoder

    if spec == "tiny" and init_dir is not None:
        index = json.loads((Path(init_dir) / "model_index.json").read_text())
        entry = index.get("text_encoder")
        if not isinstance(entry, dict):
            raise FieldError(
                FieldName("init"),
                f" {str(init_dir)!r} names no text encoder; pass ",
                FieldName("text_encoder"),
                " NAME",
            )
        name = os.path.join(init_dir, entry["files"]) if "files" in entry else entry["name"]
        with quiet_transformers():
            return T5TextEncoder.from_pretrained(
                name, device="cpu", max_length=int(entry.get("max_length", max_length))
            )
    if spec == "tiny":
        return build_tiny_t5(captions, seed, max_length)
    with quiet_transformers():
        return T5TextEncoder.from_pretrained(spec, device="cpu", max_length=max_length)


def text_encoder_entry(encoder, tiny: bool) -> dict:
    """``model_index.json``'s text_encoder entry: files for the tiny/small encoder, else its name."""
    n = sum(p.numel() for p in encoder.model.parameters())
    name = str(getattr(encoder.model, "name_or_path", "") or "")
    if tiny or n <= 100_000_000 or not name:
        return {"files": "text_encoder", "max_length": encoder.max_length}
    return {"name": name, "max_length": encoder.max_length}


def save_bsq_dir(vae, out, extra: Optional[dict] = None) -> Path:
    """Write a BSQ tokenizer directory atomically (see the module docstring)."""
    from nextscale._version import __version__
    from nextscale.atomic import atomic_dir
    from nextscale.safeload import save_safetensors

    out = Path(out)
    with atomic_dir(out) as tmp:
        (tmp / "bsq").mkdir()
        (tmp / "bsq" / "config.json").write_text(json.dumps(dataclasses.asdict(vae.config), indent=2))
        sd = {k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items() if k != _MASK_ALIAS}
        save_safetensors(sd, tmp / "bsq" / "model.safetensors")
        index = {"_class_name": "BSQTokenizer", "_nextscale_version": __version__, "bsq": ["nextscale", "BSQVAE"]}
        (tmp / "model_index.json").write_text(json.dumps({**index, **(extra or {})}, indent=2))
    return out


def load_bsq_any(path):
    """A BSQ tokenizer from a tokenizer directory, a pipeline directory (its ``bsq/``) or an
    ``infinity_vae_*.pth``; eval mode, no gradients."""
    from nextscale.infinity_release import load_bsq_tokenizer
    from nextscale.models.bsq import BSQConfig

    p = Path(path)
    if (p / "bsq" / "config.json").is_file():
        cfg = BSQConfig(**json.loads((p / "bsq" / "config.json").read_text()))
        return load_bsq_tokenizer(p / "bsq" / "model.safetensors", cfg)
    if p.is_file():
        return load_bsq_tokenizer(p)
    raise FieldError(
        FieldName("tokenizer"),
        f" {str(path)!r} is not a BSQ tokenizer: give the export of a bitwise train-tokenizer run, a text-to-image "
        "pipeline directory or an infinity_vae_*.pth",
    )
