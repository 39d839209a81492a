"""One path from a command's config to a trained run, and from a run to its export, for every objective.

    train(VARObjective, VARTrainConfig(data=..., tokenizer=...))   # nextscale train (train_var)
    train(TokenizerObjective, TokenizerTrainConfig(data=...))      # nextscale train-tokenizer
    export(VARObjective, "runs/var-d16", "my-model")               # nextscale export (export_run)

What differs per objective, the objective declares (the last section of
:class:`~nextscale.train.loop.Objective`): its ``kind`` (``config.json``'s "kind", the default run
folder ``runs/KIND-PRESET``), how a config is ``build`` into an objective, data and a run config,
what the run folder needs before training (``prepare_run_dir``) and after it (``after_fit``), and
what it ``exports``: one module's weights (raw or EMA), written by ``save_export``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, Tuple, Type

import torch

from nextscale import dist
from nextscale.checkpoint import CKPT_FORMAT, checkpoint_weights, find_checkpoint
from nextscale.errors import FieldError, FieldName, NextScaleError
from nextscale.safeload import check_finite
from nextscale.train.loop import FitResult, Objective, run_fit
from nextscale.train.memory import check_run_fits

__all__ = ["train", "export", "schedule_length", "check_same_run"]


def schedule_length(tc, n_train: int) -> Tuple[int, int]:
    """(optimizer steps per epoch, optimizer steps of the run): ``tc.steps``, else ``tc.epochs`` passes."""
    iters = math.ceil(n_train / tc.batch_size)
    return iters, int(tc.steps) if tc.steps is not None else max(1, int(round(tc.epochs * iters)))


def check_same_run(objective: Type[Objective], run_dir: str, run_config: Dict[str, Any]) -> None:
    """Refuse to resume ``run_dir`` when its ``config.json`` is of another kind of run, another model
    or another tokenizer than ``run_config``."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        old = json.load(f)
    key = objective.model_key
    new = json.loads(json.dumps(run_config["model"][key]))  # as config.json holds it (tuples are lists there)
    if old.get("kind") not in (None, run_config["kind"]) or old.get("model", {}).get(key) != new:
        raise FieldError(
            f"{run_dir!r} holds a run of another model; use a new ",
            FieldName("run_dir"),
            " or the same ",
            FieldName("preset"),
            "/",
            FieldName("init"),
        )
    fp = run_config.get("derived", {}).get("tokenizer_fingerprint")
    if old.get("derived", {}).get("tokenizer_fingerprint") not in (None, fp):
        raise FieldError(
            f"{run_dir!r} was trained with another tokenizer; use a new ",
            FieldName("run_dir"),
            " or the same ",
            FieldName("tokenizer"),
        )


def train(objective: Type[Objective], tc, **build_kw) -> FitResult:
    """Train (or resume) a run of ``objective`` configured by ``tc``; under torchrun every rank calls
    it (the process group is joined here). ``build_kw`` go to ``objective.build``."""
    tc.validate()  # every rule, before any folder or file exists
    device = dist.init_distributed(tc.device)
    default = f"{objective.kind}-{tc.preset if getattr(tc, 'init', None) is None else 'finetune'}"
    tc = dataclasses.replace(tc, run_dir=tc.run_dir or os.path.join("runs", default))
    parts = objective.build(tc, device, **build_kw)
    check_run_fits(tc, parts, device, dist.get_world_size())  # before the run folder: a batch too big is refused now
    if dist.is_main():
        check_same_run(objective, tc.run_dir, parts.run_config)
        parts.objective.prepare_run_dir(tc.run_dir)
    dist.barrier()

    def after_fit(trainer, res: FitResult) -> None:
        if res.finished and dist.is_main():
            parts.objective.after_fit(tc.run_dir, res, trainer.log)
        dist.barrier()

    cfg = tc.loop_config(tc.run_dir, parts.total, device)
    return run_fit(parts.objective, cfg, parts.train_set, parts.val_set, parts.run_config, after_fit=after_fit)


def export(objective: Type[Objective], run: str, out: str, weights: str = "auto") -> Dict[str, Any]:
    """A run folder's newest checkpoint (or one ``step_*.pt``) of ``objective`` -> its export in ``out``.
    ``weights``: "ema", "raw", or "auto" (EMA when the run kept one). Returns what was exported."""
    path, state = find_checkpoint(
        run, "pass a run folder (with checkpoints/) or a step_*.pt file", objective.train_hint
    )
    kind = (state.get("config") or {}).get("kind")
    if (
        state.get("format") != CKPT_FORMAT
        or objective.exports not in state.get("modules", {})
        or kind
        not in (
            None,
            objective.kind,
        )
    ):
        raise NextScaleError(f"{path} is not a training checkpoint of the {objective.title}")
    sd, use = checkpoint_weights(state, objective.exports, weights, path)
    check_finite(sd, f"{path} ({use} weights)")  # a diverged run is refused, never exported as a model
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    extra = {"training": {"checkpoint": os.path.abspath(path), "step": int(state["step"]), "weights": use}}
    with torch.no_grad():
        objective.save_export(state, sd, run_dir, out, extra)
    return {"checkpoint": path, "step": int(state["step"]), "weights": use, "out": out}
