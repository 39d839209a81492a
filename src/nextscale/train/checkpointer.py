"""Checkpoints of a training run and resuming from them (:class:`Checkpointer`).

One job: everything that makes a resumed run equal an uninterrupted one. It assembles the state
(module weights, optimizers, loss scalers, EMA, objective counters, data position, the RNG streams
of every rank, the run config), saves it atomically with ``keep_last`` rotation
(:class:`~nextscale.train.checkpoint.CheckpointManager`), finds the newest readable checkpoint for a
resume and loads it back in two halves: the weights before the modules are wrapped, the rest once
optimizers, scalers and EMA exist. A refused (planted) ``step_*.pt`` stops a resume: it is never
skipped in favour of an older checkpoint.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, Optional, Tuple

from nextscale import dist
from nextscale.errors import NextScaleError
from nextscale.runfiles import CKPT_FORMAT
from nextscale.train.checkpoint import CheckpointManager, capture_rng, restore_rng, seed_all
from nextscale.train.ema import EMAHolder
from nextscale.train.parallel import Parallel
from nextscale.train.precision import Precision

__all__ = ["Checkpointer"]


class Checkpointer:
    def __init__(
        self,
        folder: str,
        keep_last: int,
        objective,
        parallel: Parallel,
        precision: Precision,
        ema: EMAHolder,
        *,
        batch_size: int,
        grad_accum: int,
        n_train: int,
        seed: int,
        run_config: Optional[Dict[str, Any]] = None,
        log=None,
    ):
        self.files = CheckpointManager(folder, keep_last)
        self.objective, self.parallel, self.precision, self.ema = objective, parallel, precision, ema
        self.batch_size, self.grad_accum, self.n_train, self.seed = batch_size, grad_accum, n_train, seed
        self.run_config = run_config or {}
        self.log = log
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def path(self, step: int) -> str:
        return self.files.path(step)

    def existing(self, step: int) -> Optional[str]:
        """The checkpoint of ``step`` when it is on disk."""
        return self.files.path(step) if step in self.files.steps() else None

    def last_good(self) -> str:
        """Message tail naming the newest checkpoint on disk (for the NaN refusals)."""
        steps = self.files.steps()
        return f"; the last good checkpoint is {self.files.path(steps[-1])}" if steps else "; no checkpoint was written"

    # ---------------------------------------------------------------- save
    def state_dict(self, step: int) -> Dict[str, Any]:
        """The full training state at ``step`` (collective: gathers RNG states / FSDP shards)."""
        ob = self.objective
        epoch, index = divmod(step, math.ceil(self.n_train / self.batch_size))
        rngs = dist.all_gather_object(capture_rng())
        return {
            "format": CKPT_FORMAT,
            "step": step,
            "world_size": self.world,
            "modules": {k: self.parallel.module_state(k) for k in ob.modules()},
            "optimizers": {k: self.parallel.optim_state(k, spec.optimizer) for k, spec in ob.optim_specs.items()},
            "scalers": self.precision.state_dict(),
            "ema": self.ema.state_dict(),
            "objective": ob.state_dict(),
            "data": {"counter": step * self.grad_accum, "epoch": epoch, "index": index},
            "rng": rngs,
            "config": json.loads(json.dumps(self.run_config, default=str)),
        }

    def save(self, step: int) -> str:
        """Write the checkpoint of ``step`` (main rank; older ones beyond ``keep_last`` removed). Collective."""
        state = self.state_dict(step)
        path = None
        if dist.is_main():
            path = self.files.save(step, state)
        dist.barrier()
        return path or self.files.path(step)

    # ---------------------------------------------------------------- resume
    def find_latest(self) -> Optional[Tuple[int, Dict[str, Any]]]:
        """``(step, state)`` to resume from, or None for a fresh run (collective: ends in a barrier).
        A killed writer's temp files are removed first; a refused pickle raises."""
        if dist.is_main():
            self.files.clean_temp()
        found = self.files.latest()
        dist.barrier()
        if found is not None and found[1].get("format") != CKPT_FORMAT:
            raise NextScaleError(
                f"{self.files.path(found[0])} is not a nextscale training checkpoint; use a fresh --run-dir"
            )
        return found

    def load_modules(self, state: Dict[str, Any]) -> None:
        """The weights (before the modules are moved and wrapped)."""
        for k, m in self.objective.modules().items():
            if k not in state["modules"]:
                raise NextScaleError(f"checkpoint has no weights for {k!r}; use a fresh --run-dir")
            m.load_state_dict(state["modules"][k])

    def load_rest(self, state: Dict[str, Any], step: int) -> None:
        """Optimizers, loss scalers, EMA, objective counters and RNG streams (once they all exist)."""
        ob = self.objective
        for k, spec in ob.optim_specs.items():
            if k in state["optimizers"]:
                self.parallel.load_optim_state(k, spec.optimizer, state["optimizers"][k])
        self.precision.load_state_dict(state.get("scalers", {}))
        self.ema.load_state_dict(state.get("ema", {}))
        ob.load_state_dict(state.get("objective", {}))
        rngs = state.get("rng") or []
        if len(rngs) == self.world:
            restore_rng(rngs[self.rank])
        else:
            if self.log is not None:
                self.log.info(
                    f"world size changed ({len(rngs)} -> {self.world}): RNG streams re-seeded; the run continues "
                    f"but is not bit-identical to an uninterrupted one"
                )
            seed_all(self.seed + 1000 * step, self.rank)
