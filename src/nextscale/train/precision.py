"""Mixed precision and the optimizer step of the training loop (:class:`Precision`).

One job: turn losses into weight updates at the precision ``--amp`` asks for. It owns the autocast
context, the fp16 loss scalers (one per optimizer, saved in checkpoints), the scaled backward of a
micro-batch loss, and the step itself: unscale, clip, the fp16 scale cap (the reference's 2**15),
and the rule that without a loss scaler a non-finite gradient norm stops the run before the
weights are written (a scaler skips such a step by itself).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, Iterable

import torch

from nextscale.errors import FieldError, FieldName
from nextscale.train.guard import FiniteGuard
from nextscale.train.optim import OptimSpec, load_parts_state_dict, parts_state_dict

__all__ = ["Precision", "AMP_MODES"]

AMP_MODES = ("none", "bf16", "fp16")

#: the reference caps the fp16 loss scale at 2**15
MAX_LOSS_SCALE = 32768.0


class Precision:
    def __init__(self, amp: str, device: torch.device):
        if amp not in AMP_MODES:
            raise FieldError(FieldName("amp"), f" must be none, bf16 or fp16, got {amp!r}")
        self.amp, self.device = amp, torch.device(device)
        self.scalers: Dict[str, torch.amp.GradScaler] = {}

    def build(self, optimizers: Iterable[str]) -> None:
        """One loss scaler per optimizer under fp16 (none otherwise)."""
        if self.amp == "fp16":
            self.scalers = {
                k: torch.amp.GradScaler(self.device.type, init_scale=2.0**11, growth_interval=1000) for k in optimizers
            }

    def autocast(self):
        """Mixed precision context for the forward pass (a no-op with amp "none")."""
        if self.amp == "none":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16)

    def backward(self, loss: torch.Tensor, optimizer: str, grad_accum: int) -> None:
        """Backward of ``loss / grad_accum`` (loss-scaled under fp16) into ``optimizer``'s grads."""
        loss = loss / grad_accum
        scaler = self.scalers.get(optimizer)
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def step(
        self, specs: Dict[str, OptimSpec], active: Iterable[str], step: int, guard: FiniteGuard
    ) -> Dict[str, torch.Tensor]:
        """Step the ``active`` optimizers (the others only drop their grads); ``step`` is the 0-based
        step being taken. Returns ``{name}/grad_norm`` (and ``{name}/scale_log2`` under fp16)."""
        active, stats = set(active), {}
        for k, spec in specs.items():
            opt, scaler = spec.optimizer, self.scalers.get(k)
            if k not in active:
                opt.zero_grad(set_to_none=True)
                continue
            if scaler is not None:
                scaler.unscale_(opt)
            clip = spec.grad_clip if spec.grad_clip > 0 else float("inf")
            if spec.clip_fn is not None:
                norm = spec.clip_fn(clip)
            else:
                norm = torch.nn.utils.clip_grad_norm_([p for p in spec.params if p.grad is not None], clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
                if scaler.get_scale() > MAX_LOSS_SCALE:
                    scaler.update(new_scale=MAX_LOSS_SCALE)
                stats[f"{k}/scale_log2"] = torch.tensor(math.log2(max(scaler.get_scale(), 1e-30)))
            else:
                guard.check_grad_norm(k, norm, step)  # no loss scaler to skip the step: never write NaN weights
                opt.step()
            opt.zero_grad(set_to_none=True)
            stats[f"{k}/grad_norm"] = norm.detach().float().cpu()
        return stats

    def state_dict(self) -> Dict[str, Any]:
        return parts_state_dict(self.scalers)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        load_parts_state_dict(self.scalers, state)
