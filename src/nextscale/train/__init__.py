"""Training: the generic loop (``loop``), checkpoints, optimisation, logging, and objectives.

``nextscale.train.var`` trains the VAR transformer (``nextscale train``); a tokenizer objective
plugs into the same :class:`~nextscale.train.loop.Trainer`. Library code never imports this package.
"""

from nextscale.train.checkpoint import CheckpointManager, atomic_save, capture_rng, restore_rng
from nextscale.train.loop import FitResult, LoopConfig, Objective, StepContext, Trainer
from nextscale.train.optim import EMA, OptimSpec, Schedule, build_adamw, lr_factor, param_groups

__all__ = [
    "CheckpointManager",
    "atomic_save",
    "capture_rng",
    "restore_rng",
    "FitResult",
    "LoopConfig",
    "Objective",
    "StepContext",
    "Trainer",
    "EMA",
    "OptimSpec",
    "Schedule",
    "build_adamw",
    "lr_factor",
    "param_groups",
]
