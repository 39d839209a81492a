"""Text encoders: prompts -> the Infinity transformer's text input (:class:`TextFeatures`).

Glossary: B prompts, N = sum of the prompts' token counts, Ct5 the encoder's width (2048 for flan-t5-xl),
Lpad the padded token length (512). ``lens[b]`` counts row b's tokens including the end-of-sequence token;
``kv_compact`` holds the rows' unpadded features concatenated in batch order: no padding and no mask ever reach
the transformer (every cross attention is variable-length per row).

* :class:`TextEncoder`: anything callable as ``encoder(list_of_prompts) -> TextFeatures`` plugs in.
* :class:`T5TextEncoder`: ``transformers.T5EncoderModel`` + its tokenizer, called exactly like the released
  inference scripts (max_length 512, padding to max_length, truncation; float16 on a GPU, features cast to
  float32). ``transformers`` is imported lazily (``pip install nextscale[t2i]``).
* :func:`encode_prompts` / :func:`encode_negative`: argument checks around any encoder; an empty or missing
  negative prompt means "use the model's learned unconditional rows" (None), as the released scripts do.
* :func:`pack_features`, :func:`features_from_rows`, :func:`check_text_features`: building and checking the
  packed layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Protocol, Sequence, Union, runtime_checkable

import torch

from nextscale.errors import InputError
from nextscale.models.infinity import TextFeatures  # the transformer's text input

__all__ = [
    "TextFeatures",
    "TextEncoder",
    "T5TextEncoder",
    "DEFAULT_T5",
    "encode_prompts",
    "encode_negative",
    "pack_features",
    "features_from_rows",
    "check_text_features",
]

#: The text encoder of every released Infinity model (its encoder half; d_model 2048).
DEFAULT_T5 = "google/flan-t5-xl"
_INSTALL = "pip install nextscale[t2i]"

Prompts = Union[str, Sequence[str]]


@runtime_checkable
class TextEncoder(Protocol):
    """Anything that turns a list of prompts into :class:`TextFeatures` (one row per prompt, in order)."""

    def __call__(self, prompts: List[str]) -> TextFeatures: ...


# ------------------------------------------------------------------------------------------------ packing helpers
def features_from_rows(rows: Sequence[torch.Tensor]) -> TextFeatures:
    """Pack per-prompt features ``[(len_b, Ct5), ...]`` (every len_b >= 1) into :class:`TextFeatures`."""
    if not rows:
        raise InputError("rows must hold at least one prompt's features")
    lens = [int(r.shape[0]) for r in rows]
    if any(r.ndim != 2 for r in rows) or len({int(r.shape[1]) for r in rows}) != 1 or min(lens) < 1:
        raise InputError(f"rows must be (len >= 1, Ct5) tensors of one width, got {[tuple(r.shape) for r in rows]}")
    return TextFeatures.from_lens(torch.cat(list(rows), dim=0), lens)


def pack_features(features_BLC: torch.Tensor, mask_BL: torch.Tensor) -> TextFeatures:
    """Padded encoder output + attention mask (ones first, then padding) -> :class:`TextFeatures`.

    lens = mask sums (the end-of-sequence token included); row b keeps its first lens[b] positions."""
    if features_BLC.ndim != 3 or mask_BL.shape != features_BLC.shape[:2]:
        raise InputError(
            f"features (B, L, C) and mask (B, L) disagree: {tuple(features_BLC.shape)} vs {tuple(mask_BL.shape)}"
        )
    lens = mask_BL.sum(dim=-1).tolist()
    prefix_BL = torch.arange(mask_BL.shape[1], device=mask_BL.device) < mask_BL.sum(dim=-1, keepdim=True)
    if not torch.equal(prefix_BL, mask_BL.bool()):
        raise InputError("mask must be ones then zeros in every row (right padding); the tokenizer padded on the left")
    empty = [b for b, n in enumerate(lens) if n < 1]
    if empty:
        raise InputError(f"prompt rows {empty} have no tokens at all (the tokenizer added no end-of-sequence token)")
    return features_from_rows([f[: int(n)] for f, n in zip(features_BLC.unbind(0), lens)])


def check_text_features(text, name: str = "text") -> TextFeatures:
    """Check that ``text`` is a consistent :class:`TextFeatures`; one-line :class:`InputError` naming ``name``."""
    for f in ("kv_compact", "lens", "cu_seqlens", "max_seqlen"):
        if not hasattr(text, f):
            raise InputError(
                f"{name} must be TextFeatures (kv_compact, lens, cu_seqlens, max_seqlen), got {type(text).__name__}"
            )
    kv, lens = text.kv_compact, [int(n) for n in text.lens]
    if not isinstance(kv, torch.Tensor) or kv.ndim != 2 or not kv.is_floating_point():
        raise InputError(
            f"{name}.kv_compact must be a float (N, Ct5) tensor, got {getattr(kv, 'shape', type(kv).__name__)}"
        )
    if not lens or min(lens) < 1 or sum(lens) != kv.shape[0]:
        raise InputError(f"{name}.lens must be >= 1 each and sum to kv_compact's {kv.shape[0]} rows, got {lens}")
    cu = torch.as_tensor(text.cu_seqlens).tolist()
    expect = [0]
    for n in lens:
        expect.append(expect[-1] + n)
    if cu != expect or int(text.max_seqlen) != max(lens):
        raise InputError(
            f"{name}.cu_seqlens / max_seqlen must be [0, cumsum(lens)] / max(lens) = {expect} / "
            f"{max(lens)}, got {cu} / {text.max_seqlen}"
        )
    return text


# ------------------------------------------------------------------------------------------------ argument checks
def _prompt_list(prompts, name: str) -> List[str]:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, (list, tuple)) and prompts and all(isinstance(p, str) for p in prompts):
        return list(prompts)
    raise InputError(f"{name} must be a string or a non-empty list of strings, got {prompts!r:.80}")


def encode_prompts(encoder: TextEncoder, prompts: Prompts, name: str = "prompt") -> TextFeatures:
    """``encoder(prompts)`` with the prompts checked (a string is one prompt; "" is a valid, empty prompt: the
    encoder still sees its end-of-sequence token) and the result checked (one row per prompt)."""
    plist = _prompt_list(prompts, name)
    if not callable(encoder):
        raise InputError(f"text_encoder must be callable as encoder(list_of_prompts), got {type(encoder).__name__}")
    text = check_text_features(encoder(plist), "text_encoder output")
    if len(text.lens) != len(plist):
        raise InputError(f"text_encoder returned {len(text.lens)} rows for {len(plist)} prompts")
    return text


def encode_negative(
    encoder: TextEncoder, negative_prompt: Optional[Prompts], batch_size: int, name: str = "negative_prompt"
) -> Optional[TextFeatures]:
    """Features of the negative prompt(s) for ``batch_size`` rows, or None when there is none.

    None or "" (or a list of only "") -> None: the model's learned unconditional rows are used, like the released
    scripts (an empty negative prompt is never encoded). One string serves every row (encoded once); a list must
    have ``batch_size`` entries."""
    if negative_prompt is None:
        return None
    plist = _prompt_list(negative_prompt, name)
    if all(p == "" for p in plist):
        return None
    if len(plist) == 1:
        one = encode_prompts(encoder, plist, name)
        return features_from_rows([one.kv_compact] * batch_size)
    if len(plist) != batch_size:
        raise InputError(f"{name} must be one string or {batch_size} strings (one per prompt), got {len(plist)}")
    if "" in plist:
        raise InputError(f"{name} mixes empty and non-empty entries; give every row a negative prompt or none")
    return encode_prompts(encoder, plist, name)


# ------------------------------------------------------------------------------------------------ T5
def _transformers():
    try:
        import transformers
    except ImportError:
        raise InputError(f"the T5 text encoder needs the transformers package: {_INSTALL}") from None
    return transformers


class T5TextEncoder:
    """A T5 encoder + tokenizer called like the released Infinity scripts.

    Tokenizer call: ``max_length`` 512, ``padding='max_length'``, ``truncation=True`` (a long prompt keeps its
    end-of-sequence token); features = ``last_hidden_state`` cast to float32, packed per row (:func:`pack_features`).
    The model runs in ``dtype`` on ``device`` (default: float16 on a GPU as the reference, float32 on a CPU, where
    float16 matmuls are slow or missing). Outputs live on ``device``.
    """

    def __init__(self, model, tokenizer, *, max_length: int = 512, device=None):
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise InputError(f"max_length must be a positive int, got {max_length!r}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        if device is not None:
            self.model.to(device)

    @classmethod
    def from_pretrained(
        cls,
        name: str = DEFAULT_T5,
        *,
        device=None,
        dtype=None,
        local_files_only: bool = True,
        cache_dir=None,
        max_length: int = 512,
    ) -> "T5TextEncoder":
        """Load ``name`` (a Hugging Face id found in the user's cache, or a local directory).

        ``local_files_only`` (default True: nothing is downloaded) is passed to transformers; with False a
        missing model is downloaded. ``dtype`` None: float16 on CUDA, else float32."""
        tf = _transformers()
        if not isinstance(name, (str, Path)) or not str(name).strip():
            raise InputError(f"name must be a Hugging Face model id or a directory, got {name!r}")
        device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        dtype_kw = "dtype" if int(tf.__version__.split(".")[0]) >= 5 else "torch_dtype"  # renamed in transformers 5
        kw = dict(local_files_only=local_files_only, cache_dir=None if cache_dir is None else str(cache_dir))
        try:
            tokenizer = tf.AutoTokenizer.from_pretrained(str(name), legacy=True, **kw)  # as the reference
            model = tf.T5EncoderModel.from_pretrained(str(name), **{dtype_kw: dtype}, **kw)
        except (OSError, ValueError) as e:
            from nextscale.hub import hub_fetch_hint

            where = "the Hugging Face cache" if local_files_only else "the Hugging Face Hub"
            hint = (
                f"download it first ({hub_fetch_hint(str(name))}) or pass local_files_only=False"
                if local_files_only
                else "check the name"
            )
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise InputError(f"name {str(name)!r}: no usable T5 encoder found in {where} ({first}); {hint}") from None
        tokenizer.model_max_length = max_length
        return cls(model.to(device), tokenizer, max_length=max_length)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def channels(self) -> int:
        """Ct5: the feature width (the transformer's ``text_channels``)."""
        return int(self.model.config.d_model)

    def to(self, device=None, dtype=None) -> "T5TextEncoder":
        self.model.to(device=device, dtype=dtype)
        return self

    def tokenize(self, prompts: Prompts):
        """``(input_ids_BL, attention_mask_BL)`` on the model's device, padded to ``max_length``."""
        plist = _prompt_list(prompts, "prompts")
        tok = self.tokenizer(
            text=plist, max_length=self.max_length, padding="max_length", truncation=True, return_tensors="pt"
        )
        return tok.input_ids.to(self.device), tok.attention_mask.to(self.device)

    @torch.no_grad()
    def __call__(self, prompts: Prompts) -> TextFeatures:
        ids_BL, mask_BL = self.tokenize(prompts)
        feats_BLC = self.model(input_ids=ids_BL, attention_mask=mask_BL).last_hidden_state.float()
        return pack_features(feats_BLC, mask_BL)
