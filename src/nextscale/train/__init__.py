"""Training: the generic loop (``loop``), optimisation, logging, objectives (checkpoints: nextscale.checkpoint).

``nextscale.train.var`` trains the VAR transformer (``nextscale train``); a tokenizer objective
plugs into the same :class:`~nextscale.train.loop.Trainer`. Library code never imports this package.
"""

from nextscale.train.config import LoopConfig
from nextscale.train.loop import FitResult, Objective, StepContext, Trainer
from nextscale.train.optim import EMA, OptimSpec, Schedule, build_adamw, lr_factor, param_groups

__all__ = [
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
