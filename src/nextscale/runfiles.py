"""Reading what a training run leaves on disk: ``RUN/checkpoints/step_XXXXXXXX.pt``.

Library side of the training checkpoints (``nextscale.hub`` loads a tokenizer from a
``train-tokenizer`` run folder through it; ``nextscale.train`` writes them). Every read goes
through :func:`nextscale.safeload.load_torch` (tensors only, no fallback). A planted or foreign
pickle (:class:`~nextscale.safeload.UnsafeFileError`) stops the search for the latest checkpoint;
an unreadable one (truncated, bit rot) is skipped in favour of the previous one.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch

from nextscale.errors import FieldError, FieldName, NextScaleError
from nextscale.safeload import UnsafeFileError, load_torch

__all__ = [
    "CKPT_FORMAT",
    "checkpoint_path",
    "checkpoint_steps",
    "load_checkpoint",
    "latest_checkpoint",
    "find_checkpoint",
    "checkpoint_weights",
]

#: ``state["format"]`` of a checkpoint written by :class:`nextscale.train.loop.Trainer`.
CKPT_FORMAT = "nextscale-train"

_NAME = re.compile(r"^step_(\d{8,})\.pt$")


def checkpoint_path(folder: str, step: int) -> str:
    return os.path.join(folder, f"step_{step:08d}.pt")


def checkpoint_steps(folder: str) -> List[int]:
    """Steps of the complete checkpoints in ``folder``, ascending (temp files are never listed)."""
    if not os.path.isdir(folder):
        return []
    return sorted(int(m.group(1)) for f in os.listdir(folder) if (m := _NAME.match(f)))


def load_checkpoint(path: str) -> Dict[str, Any]:
    """A training checkpoint, read tensors-only (:func:`nextscale.safeload.load_torch`, no fallback)."""
    return load_torch(path, "nextscale training checkpoint (checkpoints/step_*.pt)")


def latest_checkpoint(folder: str) -> Optional[Tuple[int, Dict[str, Any]]]:
    """``(step, state)`` of the newest readable checkpoint in ``folder``, or None.

    A refused file (a pickle holding Python objects) raises: it is never skipped silently."""
    for s in reversed(checkpoint_steps(folder)):
        p = checkpoint_path(folder, s)
        try:
            state = load_checkpoint(p)
        except UnsafeFileError as e:  # planted or foreign: never skip past it silently
            raise NextScaleError(f"{e}; remove it or use a fresh run folder") from None
        except Exception as e:
            warnings.warn(
                f"ignoring unreadable checkpoint {p} ({type(e).__name__}: {e}); trying an older one", RuntimeWarning
            )
            continue
        if isinstance(state, dict) and state.get("step") == s:
            return s, state
        warnings.warn(f"ignoring malformed checkpoint {p}", RuntimeWarning)
    return None


def find_checkpoint(run: str, not_found: str, train_hint: str) -> Tuple[str, Dict[str, Any]]:
    """``(path, state)`` of a ``step_*.pt`` file, or of the latest checkpoint of run folder ``run``.

    ``not_found`` ends the message for a missing ``run``; ``train_hint`` (the command that writes
    checkpoints) the one for a run folder without a readable checkpoint."""
    run = os.fspath(run)
    if os.path.isfile(run):
        return run, load_checkpoint(run)
    if not os.path.isdir(run):
        raise NextScaleError(f"run {run!r} not found; {not_found}")
    folder = os.path.join(run, "checkpoints")
    found = latest_checkpoint(folder)
    if found is None:
        raise NextScaleError(f"no readable checkpoint in {folder!r}; train first ({train_hint})")
    return checkpoint_path(folder, found[0]), found[1]


def checkpoint_weights(
    state: Dict[str, Any], name: str, weights: str, path: str
) -> Tuple[Dict[str, torch.Tensor], str]:
    """Module ``name``'s weights in a training checkpoint ``state`` (floats as float32) and which were
    taken: ``weights`` "ema", "raw", or "auto" (EMA when the run kept one)."""
    if weights not in ("auto", "ema", "raw"):
        raise FieldError(FieldName("weights"), f" must be auto, ema or raw, got {weights!r}")
    has_ema = name in state.get("ema", {})
    if weights == "ema" and not has_ema:
        raise FieldError(
            f"{path} has no EMA weights (train with ", FieldName("ema"), " DECAY); use ", FieldName("weights"), " raw"
        )
    use = "ema" if (weights == "ema" or (weights == "auto" and has_ema)) else "raw"
    sd = state["ema"][name] if use == "ema" else state["modules"][name]
    return {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in sd.items()}, use
