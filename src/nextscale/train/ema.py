"""The loop's EMA holder (:class:`EMAHolder`): which modules get an exponential moving average,
updating them after each optimizer step, and their state in checkpoints."""

from __future__ import annotations

from typing import Any, Dict

import torch.nn as nn

from nextscale.errors import FieldError, FieldName
from nextscale.train.optim import EMA, load_parts_state_dict, parts_state_dict

__all__ = ["EMAHolder"]


class EMAHolder:
    def __init__(self, decay: float, fsdp: bool = False):
        self.decay, self.fsdp = float(decay), fsdp
        self.emas: Dict[str, EMA] = {}

    def build(self, objective) -> None:
        """An :class:`EMA` of each of ``objective.ema_modules()`` when the decay is > 0."""
        if self.decay <= 0:
            return
        if self.fsdp:
            raise FieldError(FieldName("ema"), " is not supported with ", FieldName("fsdp"), "; drop one of them")
        mods = objective.modules()
        # filled in place: the loop's hooks hold this dict from before fit() (the sample pictures use the EMA)
        self.emas.clear()
        self.emas.update({k: EMA(mods[k], self.decay) for k in objective.ema_modules()})

    def update(self, modules: Dict[str, nn.Module]) -> None:
        for k, e in self.emas.items():
            e.update(modules[k])

    def state_dict(self) -> Dict[str, Any]:
        return parts_state_dict(self.emas)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        load_parts_state_dict(self.emas, state)
