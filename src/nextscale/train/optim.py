"""Optimisation pieces shared by every objective: parameter groups, AdamW, the reference's lr /
weight-decay schedules, gradient stepping with AMP loss scaling and clipping, EMA.

The schedule (reference ``utils/lr_control.lr_wd_annealing``), as a function of the optimizer step
``t`` out of ``T`` with ``W`` warm-up steps::

    lr(t) = base * (wp0 + (1 - wp0) * t / W)                       t < W  (linear warm-up)
    lr(t) = base * f(p),  p = (t - W) / (T - 1 - W) in [0, 1]         afterwards, f by --schedule:
      cos    wpe + (1 - wpe) * (1 + cos(pi p)) / 2
      lin    1 until p = 0.15, then linear to wpe          lin0  same with 0.05 (reference default)
      lin00  linear from 1 to wpe                          linT  (T a float, e.g. lin0.8) two linear pieces
      exp    1 until p = 0.15, then exponential to wpe
    wd(t) = wd_end + (wd - wd_end) * (1 + cos(pi t / (T - 1))) / 2  (cosine over the whole run)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

from nextscale.errors import NextScaleError

__all__ = ["Schedule", "lr_factor", "param_groups", "build_adamw", "OptimSpec", "EMA", "SCHEDULES"]

SCHEDULES = ("cos", "lin", "lin0", "lin00", "exp", "linT (T a float in (0, 1), e.g. lin0.8)")


def lr_factor(kind: str, t: int, warmup: int, total: int, wp0: float = 0.005, wpe: float = 0.01) -> float:
    """Multiplier of the peak lr at optimizer step ``t`` (0-based) of ``total``."""
    if t < warmup:
        return wp0 + (1 - wp0) * t / warmup
    p = min(max((t - warmup) / max(total - 1 - warmup, 1), 0.0), 1.0)
    rest = 1 - p
    if kind == "cos":
        return wpe + (1 - wpe) * (0.5 + 0.5 * math.cos(math.pi * p))
    if kind in ("lin", "lin0", "exp"):
        T = 0.05 if kind == "lin0" else 0.15
        if p < T:
            return 1.0
        if kind == "exp":
            return math.exp((p - T) / (1 - T) * math.log(wpe))
        return wpe + (1 - wpe) * rest / (1 - T)
    if kind == "lin00":
        return wpe + (1 - wpe) * rest
    if kind.startswith("lin"):
        try:
            T = float(kind[3:])
        except ValueError:
            T = -1.0
        if not 0 < T < 1:
            raise NextScaleError(f"unknown lr schedule {kind!r}; choose one of: {', '.join(SCHEDULES)}")
        mid = (1 + wpe + (1 - wpe) * (1 - T)) / 2
        return 1 + (mid - 1) * p / T if p < T else wpe + (mid - wpe) * rest / (1 - T)
    raise NextScaleError(f"unknown lr schedule {kind!r}; choose one of: {', '.join(SCHEDULES)}")


@dataclass
class Schedule:
    """Peak lr / weight decay and their schedule over ``total`` optimizer steps."""

    lr: float
    total: int
    warmup: int = 0
    kind: str = "lin0"
    wp0: float = 0.005
    wpe: float = 0.01
    wd: float = 0.05
    wd_end: Optional[float] = None

    def __post_init__(self):
        lr_factor(self.kind, self.warmup, self.warmup, max(self.total, self.warmup + 2))  # validate kind

    def lr_at(self, t: int) -> float:
        return self.lr * lr_factor(self.kind, t, self.warmup, self.total, self.wp0, self.wpe)

    def wd_at(self, t: int) -> float:
        end = self.wd if self.wd_end is None else self.wd_end
        p = t / max(self.total - 1, 1)
        return end + (self.wd - end) * (0.5 + 0.5 * math.cos(math.pi * min(p, 1.0)))

    def apply(self, optimizer: torch.optim.Optimizer, t: int) -> Tuple[float, float]:
        """Set every group's lr / weight_decay (scaled by its ``lr_sc`` / ``wd_sc``); returns (lr, wd)."""
        lr, wd = self.lr_at(t), self.wd_at(t)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_sc", 1.0)
            g["weight_decay"] = wd * g.get("wd_sc", 1.0)
        return lr, wd


def param_groups(model: nn.Module, no_decay_keys: Iterable[str] = ()) -> List[dict]:
    """Two AdamW groups: decayed weights, and no decay for 1-D tensors (norms, gains), biases and
    any parameter whose name contains one of ``no_decay_keys`` (positional / level embeddings)."""
    keys = tuple(no_decay_keys)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith("bias") or any(k in name for k in keys):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "wd_sc": 1.0, "lr_sc": 1.0, "name": "decay"})
    if no_decay:
        groups.append({"params": no_decay, "wd_sc": 0.0, "lr_sc": 1.0, "name": "no_decay"})
    return groups


def build_adamw(groups: List[dict], lr: float, betas=(0.9, 0.95), fused: Optional[bool] = None) -> torch.optim.AdamW:
    """AdamW with the reference's betas (0.9, 0.95); fused on CUDA when available."""
    if fused is None:
        fused = all(p.is_cuda for g in groups for p in g["params"])
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=0.0, fused=bool(fused) or None)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=0.0)


@dataclass
class OptimSpec:
    """One optimizer of an objective, with what the loop needs to step it."""

    optimizer: torch.optim.Optimizer
    params: List[nn.Parameter]
    schedule: Schedule
    grad_clip: float = 0.0  # <= 0: no clipping (the norm is still measured and logged)
    clip_fn: Optional[Callable[[float], torch.Tensor]] = None  # e.g. FSDP's module.clip_grad_norm_


class EMA:
    """Exponential moving average of a module's floating-point *parameters* (kept in fp32).

    Buffers are not parameters: they are copied as they are at every update, never averaged. The
    VAR attention mask holds -inf, and ``lerp`` of -inf with -inf is NaN (0 * inf), so averaging it
    poisoned every EMA export; integer buffers and running statistics are state, not weights.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.decay = float(decay)
        self.params = {k for k, p in module.named_parameters() if p.is_floating_point()}
        self.shadow: Dict[str, torch.Tensor] = {
            k: v.detach().clone().float() if k in self.params else v.detach().clone()
            for k, v in module.state_dict().items()
        }

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for k, v in module.state_dict().items():
            s = self.shadow[k]
            if k in self.params:
                s.lerp_(v.detach().float(), 1.0 - self.decay)
            else:
                s.copy_(v)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.shadow.items()}

    def load_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        for k, v in sd.items():
            self.shadow[k].copy_(v)

    def copy_to(self, module: nn.Module) -> None:
        sd = module.state_dict()
        module.load_state_dict({k: self.shadow[k].to(sd[k].dtype) for k in sd})


def parts_state_dict(parts: Dict[str, Any]) -> Dict[str, Any]:
    """``{name: part.state_dict()}`` of a dict of stateful parts (EMAs, loss scalers)."""
    return {k: p.state_dict() for k, p in parts.items()}


def load_parts_state_dict(parts: Dict[str, Any], state: Dict[str, Any]) -> None:
    """The inverse of :func:`parts_state_dict`; parts missing from ``state`` keep their state."""
    for k, p in parts.items():
        if k in state:
            p.load_state_dict(state[k])
