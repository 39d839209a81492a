"""The generic training loop: steps, gradient accumulation, AMP, DDP/FSDP, checkpoints, resume,
logging, signals, progress. What is trained, and how the loss is computed, is an :class:`Objective`.

One optimizer step = ``grad_accum`` micro-batches on every rank; the global batch is
``micro_batch * world_size * grad_accum``. Everything that influences the result is either a
function of the step (schedules, data order, per-sample augmentation / class dropout) or saved in
the checkpoint (weights, optimizer, loss scalers, EMA, objective counters, every RNG of every rank),
so a resumed run is bit-identical to an uninterrupted one (given the same hardware and world size).

The loop hands an objective what it builds, explicitly: the DDP/FSDP-wrapped modules to
``configure_optimizers(total_steps, wrapped)`` and, through the step context, to ``train_step``
(``ctx.wrapped[name]``); the EMA copies to ``sample_images(step, ema)``; after ``fit`` they are
in the :class:`FitResult` (``result.ema``). Nothing is set on the objective from outside.

Writing a new objective (see :class:`nextscale.train.var.VARObjective`)::

    class MyObjective(Objective):
        def modules(self):              return {"gen": self.gen, "disc": self.disc}
        def configure_optimizers(self, total_steps, wrapped):  -> {"gen": OptimSpec, "disc": OptimSpec}
        def train_step(self, batch, ctx):
            loss_g = ...(ctx.wrapped["gen"](...)); ctx.backward(loss_g, "gen")
            loss_d = ...; ctx.backward(loss_d, "disc")
            return {"loss_g": loss_g.detach(), "loss_d": loss_d.detach()}

A command that trains it (build, train, export: :mod:`nextscale.train.run`) also needs the
declarations of :class:`Objective`'s last section: ``kind``, ``exports``, ``build``, ``save_export``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from nextscale import dist
from nextscale.checkpoint import Checkpointer, seed_all
from nextscale.data import ResumableBatchSampler
from nextscale.errors import NextScaleError
from nextscale.train.config import LoopConfig
from nextscale.train.ema import EMAHolder
from nextscale.train.guard import FiniteGuard, first_bad_loss
from nextscale.train.hooks import Hooks
from nextscale.train.logging import RunLogger
from nextscale.train.memory import fmt_bytes, memory_plan, peak_memory
from nextscale.train.optim import EMA, OptimSpec
from nextscale.train.parallel import Parallel
from nextscale.train.precision import Precision
from nextscale.train.signals import StopSignals

__all__ = ["Objective", "RunParts", "StepContext", "Trainer", "FitResult", "run_fit"]


class StepContext:
    """Handed to ``Objective.train_step``: where the step is, autocast and backward."""

    def __init__(self, trainer: "Trainer"):
        self._t = trainer
        self.step = 0  # optimizer step being computed (0-based)
        self.micro = 0  # micro-batch index within the step
        self.device = trainer.device

    @property
    def wrapped(self) -> Dict[str, nn.Module]:
        """The modules by name as training forwards must call them (DDP/FSDP-wrapped when distributed)."""
        return self._t.parallel.wrapped

    @property
    def grad_accum(self) -> int:
        return self._t.cfg.grad_accum

    @property
    def max_steps(self) -> int:
        return self._t.cfg.max_steps

    def autocast(self):
        """Mixed precision context for the forward pass (a no-op with amp "none")."""
        return self._t.precision.autocast()

    def backward(self, loss: torch.Tensor, optimizer: str) -> None:
        """Backward of ``loss`` (averaged over micro-batches, loss-scaled for fp16) into the grads
        of optimizer ``optimizer``'s parameters."""
        self._t.precision.backward(loss, optimizer, self._t.cfg.grad_accum)


class Objective:
    """What the loop trains. Subclasses own modules, optimizers and the loss."""

    def modules(self) -> Dict[str, nn.Module]:
        """The trainable modules by name (their state goes into checkpoints)."""
        raise NotImplementedError

    def configure_optimizers(self, total_steps: int, wrapped: Dict[str, nn.Module]) -> Dict[str, OptimSpec]:
        """Optimizer specs by name, over the parameters of the ``wrapped`` (DDP/FSDP) modules."""
        raise NotImplementedError

    def active_optimizers(self, step: int) -> Optional[List[str]]:
        """Optimizers stepped at ``step`` (None: all; a GAN may start its discriminator later)."""
        return None

    def train_step(self, batch: Dict[str, Any], ctx: StepContext) -> Dict[str, torch.Tensor]:
        """Forward (through ``ctx.wrapped``) + ``ctx.backward(loss, name)`` for one micro-batch; returns
        scalar metrics."""
        raise NotImplementedError

    def eval_step(self, batch: Dict[str, Any]) -> Dict[str, Tuple[torch.Tensor, float]]:
        """Metric name -> (sum over the batch, count); the loop sums over batches and ranks."""
        return {}

    def sample_images(self, step: int, ema: Dict[str, EMA]) -> Optional[np.ndarray]:
        """uint8 (N, H, W, 3) for a progress grid, or None; ``ema``: the EMA copies by module name
        (empty without EMA), which the pictures should show when there are some."""
        return None

    def batch_sampler(self, micro: int, rank: int, world: int, seed: int, start: int, grad_accum: int):
        """The training batch sampler (yielding lists of ``(index, sample_seed)`` keys, resumable at micro-batch
        ``start``, with ``iters_per_epoch``), or None for the default
        :class:`~nextscale.data.ResumableBatchSampler` (e.g. aspect-ratio buckets: one bucket per batch)."""
        return None

    def collate(self, items: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Batch the data set's items (None: torch's default collate)."""
        return None

    def units_per_sample(self) -> Dict[str, float]:
        """Extra throughput units, e.g. {"tok": L} logs tokens/s next to images/s."""
        return {}

    def block_modules(self) -> Dict[str, List[nn.Module]]:
        """Each module's transformer blocks: the units of FSDP sharding, activation checkpointing and
        compile. Default: a module's ``blocks`` ModuleList (VAR, the AR baseline); override for others."""
        from nextscale.train.parallel import block_modules

        return {k: block_modules(m) for k, m in self.modules().items()}

    def ema_modules(self) -> List[str]:
        """Modules that get an EMA copy when the loop's ema (decay) > 0."""
        return list(self.modules())[:1]

    def state_dict(self) -> Dict[str, Any]:
        """Objective state that is not in modules/optimizers (e.g. progressive-training counters)."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    # ---- what a command needs (nextscale.train.run): the kind of run, building it, its export ----
    #: ``config.json``'s "kind" of the run; also its default folder ``runs/KIND-PRESET``.
    kind: ClassVar[str] = ""
    #: The module whose weights an export ships (raw or EMA), a key of :meth:`modules`.
    exports: ClassVar[str] = ""
    #: Key of ``run_config["model"]`` that a resumed run must match.
    model_key: ClassVar[str] = ""
    #: What is trained, in messages ("VAR transformer"); how to train a run (for a folder without a checkpoint).
    title: ClassVar[str] = ""
    train_hint: ClassVar[str] = ""

    @classmethod
    def build(cls, tc, device: torch.device, **kw) -> "RunParts":
        """The objective, data and run config of command config ``tc`` (no training)."""
        raise NotImplementedError

    def prepare_run_dir(self, run_dir: str) -> None:
        """Write what the run folder needs besides checkpoints before training (main rank)."""

    def after_fit(self, run_dir: str, result: "FitResult", log: RunLogger) -> None:
        """Run after a finished fit (main rank), e.g. export the result."""

    @classmethod
    def save_export(cls, state: Dict[str, Any], weights: Dict[str, torch.Tensor], run_dir: str, out: str, extra):
        """Write the export of checkpoint ``state`` (``weights``: its :attr:`exports` module's, raw or
        EMA) to ``out``; ``extra`` goes into the export's ``model_index.json``."""
        raise NotImplementedError


class RunParts(NamedTuple):
    """What :meth:`Objective.build` returns: the objective and its data, the run's ``config.json``
    content and the number of optimizer steps."""

    objective: Objective
    train_set: Any
    val_set: Any
    run_config: Dict[str, Any]
    total: int


@dataclass
class FitResult:
    step: int
    finished: bool
    interrupted: Optional[int] = None  # signal number when stopped by SIGTERM / SIGINT
    checkpoint: Optional[str] = None
    bad_images: int = 0
    last_metrics: Dict[str, float] = field(default_factory=dict)
    ema: Dict[str, EMA] = field(default_factory=dict)  # the EMA copies by module name (empty without EMA)


class Trainer:
    """Runs an :class:`Objective` for ``cfg.max_steps`` optimizer steps, resuming from the run's
    latest checkpoint. The work is split between collaborators with one job each:

    ``checkpointer`` (:class:`~nextscale.train.checkpointer.Checkpointer`): state, save, resume;
    ``parallel`` (:class:`~nextscale.train.parallel.Parallel`): DDP / FSDP2 wrapping per block, activation
    checkpointing, compile, no_sync;
    ``precision`` (:class:`~nextscale.train.precision.Precision`): autocast, loss scalers, the optimizer step;
    ``ema`` (:class:`~nextscale.train.ema.EMAHolder`); ``guard`` (:class:`~nextscale.train.guard.FiniteGuard`):
    the NaN rules; ``signals`` (:class:`~nextscale.train.signals.StopSignals`): SIGTERM / SIGINT;
    ``hooks`` (:class:`~nextscale.train.hooks.Hooks`): logs, metrics, progress, evaluation, samples.
    """

    def __init__(
        self,
        objective: Objective,
        cfg: LoopConfig,
        train_set,
        val_set=None,
        run_config: Optional[Dict[str, Any]] = None,
        logger: Optional[RunLogger] = None,
    ):
        self.objective, self.cfg = objective, cfg
        self.train_set, self.val_set = train_set, val_set
        self.run_config = run_config or {}
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = torch.device(cfg.device)
        self.micro = cfg.micro_batch(self.world)  # checks the divisibility by this world size
        if len(train_set) == 0:
            raise NextScaleError("the training set is empty; add images to the data folder")
        self.log = logger or RunLogger(cfg.run_dir, enabled=dist.is_main())
        self.parallel = Parallel(
            self.device, self.world, cfg.parallel, cfg.grad_checkpointing, cfg.compile, log=self.log.info
        )
        self.precision = Precision(cfg.amp, self.device)
        self.ema = EMAHolder(cfg.ema, cfg.fsdp)
        self.optim_specs: Dict[str, OptimSpec] = {}
        self.checkpointer = Checkpointer(
            os.path.join(cfg.run_dir, "checkpoints"),
            cfg.keep_last,
            objective,
            self.parallel,
            self.precision,
            self.ema,
            batch_size=cfg.batch_size,
            grad_accum=cfg.grad_accum,
            n_train=len(train_set),
            seed=cfg.seed,
            run_config=self.run_config,
            log=self.log,
            sharded=cfg.parallel == "fsdp",  # every rank writes its shards: no full gather on one rank
        )
        self.guard = FiniteGuard(self.log, self.checkpointer.last_good, self.world)
        self.signals = StopSignals(self.world)
        self.hooks = Hooks(cfg, objective, self.log, val_set, self.micro, ema=self.ema.emas)
        self.step = 0
        self.bad_images = 0

    def state_dict(self) -> Dict[str, Any]:
        return self.checkpointer.state_dict(self.step)

    # ---------------------------------------------------------------- the loop
    def fit(self) -> FitResult:
        cfg = self.cfg
        self._prepare()
        res = FitResult(step=self.step, finished=self.step >= cfg.max_steps, ema=self.ema.emas)
        if res.finished:
            self.log.info(
                f"nothing to do: the run in {cfg.run_dir} already reached step {self.step} (raise the number of "
                "steps or epochs to continue)"
            )
            res.checkpoint = self.checkpointer.existing(self.step)
            return res
        self.hooks.start(self.step, len(self.train_set))
        data = self._loader(self.step * cfg.grad_accum)
        ctx = StepContext(self)
        self.hooks.open_bar(self.step)
        with self.signals:
            try:
                while self.step < cfg.max_steps:
                    lrs = self._train_step(data, ctx)
                    stop = self.signals.requested()
                    if self.hooks.log_due(self.step, stop):
                        res.last_metrics = self.hooks.log_train(self.step, lrs)
                    if self.step % cfg.ckpt_every == 0 or self.step == cfg.max_steps or stop:
                        res.checkpoint = self.checkpointer.save(self.step)
                    if stop:
                        res.interrupted = stop
                        self.log.info(
                            f"stopped by signal {stop} at step {self.step}; re-run the same command to resume"
                        )
                        break
                    self.hooks.periodic(self.step)
            finally:
                self.hooks.close()
        res.step, res.finished = self.step, self.step >= cfg.max_steps
        res.bad_images = int(dist.all_reduce_sum(torch.tensor(float(self.bad_images))).item())
        peaks = dist.all_gather_object(peak_memory(self.device))
        what = "max_memory_allocated" if self.device.type == "cuda" else "peak RSS"
        self.log.info(f"peak memory per rank ({what}): " + ", ".join(fmt_bytes(p) for p in peaks))
        self.hooks.end(self.step, res.finished, res.bad_images, res.checkpoint)
        return res

    def _prepare(self) -> None:
        """Resume (or start): weights, wrapping, optimizers, loss scalers, EMA, the rest of the state;
        refuse non-finite start weights; write the run's config.json."""
        cfg, ob = self.cfg, self.objective
        os.makedirs(cfg.run_dir, exist_ok=True)
        seed_all(cfg.seed, self.rank)
        found = self.checkpointer.find_latest()
        resumed = found is not None
        if resumed:
            self.step = found[0]
            self.checkpointer.load_modules(found[1])
        for m in ob.modules().values():
            m.to(self.device)
        blocks = ob.block_modules()
        self._memory_plan(blocks)
        wrapped = self.parallel.wrap(ob.modules(), blocks)
        self.optim_specs = ob.configure_optimizers(cfg.max_steps, wrapped)
        if self.parallel.fsdp:  # sharded parameters: the global norm is a collective over the shards
            for spec in self.optim_specs.values():
                spec.clip_fn = self.parallel.clip_fn(spec.params)
        self.checkpointer.set_optimizers(self.optim_specs)
        self.precision.build(self.optim_specs)
        self.ema.build(ob)
        if resumed:
            self.checkpointer.load_rest(found[1], self.step)
            found = None
            self.log.info(f"resumed from {self.checkpointer.path(self.step)} (step {self.step}/{cfg.max_steps})")
        self.guard.check_weights(
            ob.modules(), f"at step {self.step} (from the checkpoint)" if resumed else "before training (from init?)"
        )
        self.hooks.write_run_config(self.run_config)

    def _memory_plan(self, blocks: Dict[str, List[nn.Module]]) -> None:
        """One line before the first step: bytes per rank for weights, grads, optimizer, activations."""
        tokens = self.objective.units_per_sample().get("tok")
        gpu_bf16 = self.device.type == "cuda" and (self.cfg.parallel == "fsdp" or self.cfg.amp != "none")
        plan = memory_plan(
            self.objective.modules(),
            blocks,
            self.world,
            self.cfg.parallel == "fsdp",
            self.micro,
            tokens,
            self.cfg.grad_checkpointing,
            compute_bytes=2 if gpu_bf16 else 4,
        )
        self.log.info(plan.line(self.world, self.cfg.parallel))

    def _train_step(self, data: Iterator[Dict[str, Any]], ctx: "StepContext") -> Dict[str, Any]:
        """One optimizer step: ``grad_accum`` micro-batches, the NaN check, the update, the EMA.
        Returns the step's (lr, wd) per optimizer."""
        cfg, ob = self.cfg, self.objective
        t0 = time.time()
        ctx.step = self.step
        lrs = {k: spec.schedule.apply(spec.optimizer, self.step) for k, spec in self.optim_specs.items()}
        for m in ob.modules().values():
            m.train()
        bad_loss = None
        for micro in range(cfg.grad_accum):
            ctx.micro = micro
            batch = next(data)
            self.bad_images += int(batch["n_bad"].sum()) if "n_bad" in batch else 0
            with self.parallel.no_sync(last_micro=micro == cfg.grad_accum - 1):
                out = ob.train_step(batch, ctx)
            bad_loss = bad_loss or first_bad_loss(out)
            self.hooks.add_micro(out, cfg.grad_accum)
        self.guard.check_losses(bad_loss, self.step)
        active = ob.active_optimizers(self.step)
        active = list(self.optim_specs) if active is None else active
        self.hooks.add_stats(self.precision.step(self.optim_specs, active, self.step, self.guard))
        self.ema.update(ob.modules())
        self.step += 1
        self.hooks.step_done(time.time() - t0)
        return lrs

    def _loader(self, counter: int) -> Iterator[Dict[str, Any]]:
        ob = self.objective
        sampler = ob.batch_sampler(self.micro, self.rank, self.world, self.cfg.seed, counter, self.cfg.grad_accum)
        if sampler is None:
            sampler = ResumableBatchSampler(
                len(self.train_set),
                self.micro,
                self.rank,
                self.world,
                self.cfg.seed,
                start=counter,
                grad_accum=self.cfg.grad_accum,
            )
        collate = ob.collate if type(ob).collate is not Objective.collate else None
        self.iters_per_epoch = self.hooks.iters_per_epoch = sampler.iters_per_epoch
        ld = torch.utils.data.DataLoader(
            self.train_set,
            batch_sampler=sampler,
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )  # not the global RNG
        return iter(ld)


def run_fit(
    objective: "Objective",
    cfg: LoopConfig,
    train_set,
    val_set=None,
    run_config: Optional[Dict[str, Any]] = None,
    after_fit=None,
) -> FitResult:
    """Build the :class:`Trainer`, fit, run ``after_fit(trainer, result)`` if given, and close the log."""
    trainer = Trainer(objective, cfg, train_set, val_set, run_config=run_config)
    try:
        res = trainer.fit()
        if after_fit is not None:
            after_fit(trainer, res)
        return res
    finally:
        trainer.log.close()
