"""The loop's NaN rules (:class:`FiniteGuard`): training never writes NaN/inf into the weights.

* start weights (fresh, ``--init`` or a checkpoint) must be finite;
* a NaN/inf loss stops the run before the optimizer step, on every rank at once (the flag is
  all-reduced, so no rank steps while another stops);
* without a loss scaler, a non-finite gradient norm stops it too (:class:`~nextscale.train.precision.Precision`).

Each refusal is one :class:`~nextscale.errors.NonFiniteError` that names the last good checkpoint,
and is written to ``log.txt`` (the console gets it once, from the caller).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn

from nextscale import dist
from nextscale.errors import NonFiniteError

__all__ = ["FiniteGuard", "first_bad_loss"]


def first_bad_loss(out: Dict[str, Any]) -> Optional[Tuple[str, float]]:
    """(name, value) of the first NaN/inf loss in a train_step's outputs, else None."""
    for k, v in out.items():
        if "loss" in k.split("/")[-1] and torch.is_tensor(v) and not bool(torch.isfinite(v.detach().float()).all()):
            return k, float(v.detach().float().reshape(-1)[0])
    return None


class FiniteGuard:
    def __init__(self, log, last_good: Callable[[], str] = lambda: "", world: int = 1):
        """``log``: the run's logger (``info(msg, echo=False)``); ``last_good()``: the message tail
        naming the last good checkpoint."""
        self.log, self.last_good, self.world = log, last_good, world

    def fail(self, msg: str) -> None:
        if self.log is not None:
            self.log.info(f"error: {msg}", echo=False)  # the console gets it once, from the caller
        raise NonFiniteError(msg)

    def check_weights(self, modules: Dict[str, nn.Module], source: str) -> None:
        for name, m in modules.items():
            for k, p in m.named_parameters():
                if not bool(torch.isfinite(p.detach()).all()):
                    self.fail(
                        f"{name}.{k} holds NaN/inf values {source}; train from finite weights "
                        f"(a fresh run, or an init model that samples)"
                    )

    def check_losses(self, bad: Optional[Tuple[str, float]], step: int) -> None:
        """Stop before the optimizer step of 0-based ``step`` when a loss is NaN/inf here or on any
        other rank: stepping would write NaN into the weights, the EMA and every later checkpoint."""
        flag = torch.tensor(1.0 if bad else 0.0)
        if self.world > 1:
            flag = dist.all_reduce_max(flag)
        if float(flag) == 0.0:
            return
        what = f"{bad[0]} is {bad[1]}" if bad else "a loss on another rank is not finite"
        self.fail(
            f"step {step + 1}: {what}; stopped before updating the weights{self.last_good()} "
            f"(lower lr, set grad_clip, prefer amp bf16 over fp16, or check the data and the init weights)"
        )

    def check_grad_norm(self, name: str, norm: torch.Tensor, step: int) -> None:
        if not bool(torch.isfinite(norm)):
            self.fail(
                f"step {step + 1}: the gradient norm of {name!r} is {float(norm)}; stopped before "
                f"updating the weights{self.last_good()} (lower lr or set grad_clip)"
            )
