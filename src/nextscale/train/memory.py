"""The memory plan of a training run (bytes per rank, printed before the first step) and the peak
measured at the end, so a user sees whether a run fits before it starts.

Plan per rank (AdamW, fp32 master weights): parameters 4 bytes each, gradients 4, optimizer state 8
(exp_avg + exp_avg_sq), all divided by the world size under FSDP (plus one block gathered at a time,
twice with prefetching); activations estimated per block with Korthikanti et al.'s count
(``B L C (34 + 5 a L / C)`` half-precision bytes per transformer layer, doubled in fp32); with
activation checkpointing only each block's input is kept, plus one block's activations in its backward.
An estimate: the peak also holds the data, the loss, temporary buffers and the allocator's slack.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from nextscale.resources import fmt_bytes

__all__ = ["MemoryPlan", "memory_plan", "peak_memory", "fmt_bytes"]


@dataclass
class MemoryPlan:
    params: int
    grads: int
    optimizer: int
    activations: Optional[int]  # None: the model does not say its width / tokens

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + (self.activations or 0)

    def line(self, world: int, mode: str) -> str:
        act = fmt_bytes(self.activations) if self.activations is not None else "unknown"
        return (
            f"memory plan per rank ({mode}, {world} process{'es' if world > 1 else ''}): parameters "
            f"{fmt_bytes(self.params)}, gradients {fmt_bytes(self.grads)}, optimizer {fmt_bytes(self.optimizer)}, "
            f"activations ~{act}; total ~{fmt_bytes(self.total)}"
        )


def _width(m: nn.Module) -> Optional[int]:
    for name in ("C", "embed_dim", "width"):
        v = getattr(m, name, None)
        if isinstance(v, int):
            return v
    cfg = getattr(m, "config", None)
    return getattr(cfg, "embed_dim", None) if cfg is not None else None


def memory_plan(
    modules: Dict[str, nn.Module],
    blocks: Dict[str, List[nn.Module]],
    world: int,
    sharded: bool,
    micro_batch: int,
    tokens: Optional[float],
    grad_checkpointing: bool = False,
    compute_bytes: int = 4,
) -> MemoryPlan:
    """Bytes per rank of ``modules`` trained with AdamW at ``micro_batch`` samples of ``tokens`` tokens."""
    n_train = sum(p.numel() for m in modules.values() for p in m.parameters() if p.requires_grad)
    n_params = sum(p.numel() for m in modules.values() for p in m.parameters())
    buffers = sum(b.numel() * b.element_size() for m in modules.values() for b in m.buffers())  # never sharded
    div = world if sharded else 1
    gathered = 0
    if sharded and world > 1:  # one block unsharded in the compute dtype, the next one prefetched
        big = max((sum(p.numel() for p in b.parameters()) for bl in blocks.values() for b in bl), default=0)
        gathered = 2 * big * compute_bytes
    params = 4 * n_params // div + buffers + gathered
    grads = 4 * n_train // div + (gathered if sharded and world > 1 else 0)
    optimizer = 8 * n_train // div
    act = None
    for k, m in modules.items():
        C, heads, depth = _width(m), getattr(m, "num_heads", None), len(blocks.get(k, []))
        if C and tokens and depth:
            L, B = float(tokens), micro_batch
            a = heads or 1
            per_block = B * L * C * (34 + 5 * a * L / C) * compute_bytes / 2
            if grad_checkpointing:
                per = depth * B * L * C * compute_bytes + per_block
            else:
                per = depth * per_block
            act = int((act or 0) + per)
    return MemoryPlan(params, grads, optimizer, act)


def peak_memory(device: torch.device) -> int:
    """Peak bytes of this process: CUDA ``max_memory_allocated``; on the CPU the peak resident set size
    (``getrusage``: the whole process, the Python interpreter and libraries included)."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def check_run_fits(tc, parts, device, world: int) -> None:
    """Refuse a run up front (before its folder exists) whose batch cannot be drawn from the data, or
    whose planned memory (:func:`memory_plan`) exceeds what this machine has left: minutes of work that
    would end in a kernel kill (exit 137) are one line in a second instead."""
    from nextscale.errors import FieldError, FieldName
    from nextscale.resources import check_memory

    ob = parts.objective
    micro = tc.micro_batch(world)
    tokens = ob.units_per_sample().get("tok")
    gpu_bf16 = torch.device(device).type == "cuda" and getattr(tc, "amp", "none") != "none"
    plan = memory_plan(
        ob.modules(), ob.block_modules(), world, getattr(tc, "parallel", "ddp") == "fsdp", micro, tokens,
        getattr(tc, "grad_checkpointing", False), compute_bytes=2 if gpu_bf16 else 4,
    )  # fmt: skip
    try:
        n = len(parts.train_set)
    except TypeError:
        n = None
    if n is not None and tc.batch_size > n:
        raise FieldError(
            FieldName("batch_size"), f" {tc.batch_size:,} is larger than the data set ({n:,} training samples; "
            f"it would need about {fmt_bytes(plan.total)} per process); use at most ", f"{n:,}",
        )  # fmt: skip
    per_sample = max(1, (plan.activations or 0) // max(1, micro))
    check_memory(
        plan.total,
        f"a micro-batch of {micro:,} (batch_size {tc.batch_size:,}: parameters, gradients, optimizer, activations)",
        ("lower ", FieldName("batch_size"), " or raise ", FieldName("grad_accum"),
         f" (about {fmt_bytes(per_sample)} of activations per sample)"),
        device,
    )  # fmt: skip
