"""The generic training loop: steps, gradient accumulation, AMP, DDP/FSDP, checkpoints, resume,
logging, signals, progress. What is trained, and how the loss is computed, is an :class:`Objective`.

One optimizer step = ``grad_accum`` micro-batches on every rank; the global batch is
``micro_batch * world_size * grad_accum``. Everything that influences the result is either a
function of the step (schedules, data order, per-sample augmentation / class dropout) or saved in
the checkpoint (weights, optimizer, loss scalers, EMA, objective counters, every RNG of every rank),
so a resumed run is bit-identical to an uninterrupted one (given the same hardware and world size).

Writing a new objective (see :class:`nextscale.train.var.VARObjective`)::

    class MyObjective(Objective):
        def modules(self):              return {"gen": self.gen, "disc": self.disc}
        def configure_optimizers(self, total_steps, wrapped):  -> {"gen": OptimSpec, "disc": OptimSpec}
        def train_step(self, batch, ctx):
            loss_g = ...; ctx.backward(loss_g, "gen")
            loss_d = ...; ctx.backward(loss_d, "disc")
            return {"loss_g": loss_g.detach(), "loss_d": loss_d.detach()}
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from nextscale import dist
from nextscale.data import ResumableBatchSampler, ShardedEvalSampler
from nextscale.errors import NextScaleError, NonFiniteError
from nextscale.train.checkpoint import CheckpointManager, capture_rng, restore_rng
from nextscale.train.logging import RunLogger, format_duration
from nextscale.train.optim import EMA, OptimSpec

__all__ = ["LoopConfig", "TrainConfigBase", "Objective", "StepContext", "Trainer", "FitResult"]

CKPT_FORMAT = "nextscale-train"


@dataclass
class LoopConfig:
    """Loop settings (objective-independent). Batch sizes are per optimizer step, all ranks together."""
    run_dir: str
    max_steps: int
    batch_size: int                  # global batch per optimizer step (reference: --bs)
    grad_accum: int = 1              # micro-batches per step (reference: --ac)
    amp: str = "none"                # none | bf16 | fp16 (fp16 uses a loss scaler)
    ema_decay: float = 0.0           # 0: no EMA
    ckpt_every: int = 1000           # steps between checkpoints (also at the end and on SIGTERM/Ctrl-C)
    keep_last: int = 3               # checkpoints kept on disk
    log_every: int = 10
    eval_every: int = 0              # 0: evaluate only at the end (when there is validation data)
    sample_every: int = 0            # 0: sample grid only at the end; < 0: never
    eval_batch_size: int = 0         # per rank; 0: the training micro-batch
    seed: int = 0
    workers: int = 0                 # DataLoader worker processes per rank
    device: str = "cpu"
    fsdp: bool = False               # shard parameters/grads/optimizer (FULL_SHARD) instead of DDP
    progress: bool = True            # tqdm bar on the main rank

    def micro_batch(self, world_size: int) -> int:
        if self.batch_size <= 0:
            raise NextScaleError(f"--batch-size must be a positive integer, got {self.batch_size}")
        if self.grad_accum <= 0:
            raise NextScaleError(f"--grad-accum must be a positive integer, got {self.grad_accum}")
        per = self.batch_size / (world_size * self.grad_accum)
        if per != int(per) or per < 1:
            raise NextScaleError(f"--batch-size {self.batch_size} is not divisible by world size {world_size} x --grad-accum {self.grad_accum}; pick a multiple of {world_size * self.grad_accum}")
        return int(per)


@dataclass
class TrainConfigBase:
    """Loop knobs shared by the command configs (``VARTrainConfig``, ``TokenizerTrainConfig``).

    Subclasses add the rest, including the fields :meth:`loop_config` reads: ``batch_size``,
    ``grad_accum``, ``amp``, ``ema``, ``eval_every`` and ``sample_every`` (their defaults differ
    per command or belong to its optimisation settings)."""
    seed: int = 0
    workers: Optional[int] = None          # None: 4 on CUDA, 0 on CPU
    device: Optional[str] = None
    ckpt_every: int = 1000
    keep_last: int = 3
    log_every: int = 20
    progress: bool = True

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def check_loop(self) -> None:
        """The loop settings' rules, checked before a run creates any folder or file."""
        from nextscale.validate import check_device, check_seed
        check_seed(self.seed, "--seed")
        if self.workers is not None and self.workers < 0:
            raise NextScaleError(f"--workers must be >= 0 (0 = load in the main process), got {self.workers}")
        for flag, v in (("--ckpt-every", self.ckpt_every), ("--keep", self.keep_last), ("--log-every", self.log_every)):
            if v < 1:
                raise NextScaleError(f"{flag} must be >= 1, got {v}")
        if self.eval_every < 0:
            raise NextScaleError(f"--eval-every must be >= 0 (0 = at the end only), got {self.eval_every}")
        if self.sample_every < -1:
            raise NextScaleError(f"--sample-every must be >= -1 (0 = at the end only, -1 = never), got {self.sample_every}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise NextScaleError(f"--amp must be none, bf16 or fp16, got {self.amp!r}")
        if self.device is not None and not os.environ.get("LOCAL_RANK"):
            check_device(self.device, "--device")
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if self.batch_size is None or self.batch_size <= 0:
            raise NextScaleError(f"--batch-size must be a positive integer, got {self.batch_size}")
        if self.grad_accum <= 0:
            raise NextScaleError(f"--grad-accum must be a positive integer, got {self.grad_accum}")
        if self.batch_size % (world * self.grad_accum):
            raise NextScaleError(f"--batch-size {self.batch_size} is not divisible by world size {world} x --grad-accum "
                                 f"{self.grad_accum}; pick a multiple of {world * self.grad_accum}")

    def check_rates(self, *names: str) -> None:
        """Each named float field is finite and >= 0 (None allowed); ``lr``-like ones > 0."""
        for n in names:
            v = getattr(self, n)
            if v is None:
                continue
            flag = "--" + n.replace("_", "-")
            if not math.isfinite(float(v)):
                raise NextScaleError(f"{flag} must be a finite number, got {v}")
            if n.endswith("lr") and v <= 0:
                raise NextScaleError(f"{flag} must be > 0, got {v}")
            if v < 0:
                raise NextScaleError(f"{flag} must be >= 0, got {v}")

    def loop_config(self, run_dir: str, max_steps: int, device: torch.device, fsdp: bool = False) -> LoopConfig:
        """The :class:`LoopConfig` of this run on ``device`` (resolves the default worker count)."""
        workers = self.workers if self.workers is not None else (4 if device.type == "cuda" else 0)
        return LoopConfig(run_dir=run_dir, max_steps=max_steps, batch_size=self.batch_size, grad_accum=self.grad_accum,
                          amp=self.amp, ema_decay=self.ema, ckpt_every=self.ckpt_every, keep_last=self.keep_last,
                          log_every=self.log_every, eval_every=self.eval_every, sample_every=self.sample_every,
                          seed=self.seed, workers=workers, device=str(device), fsdp=fsdp, progress=self.progress)


class StepContext:
    """Handed to ``Objective.train_step``: where the step is, autocast and backward."""

    def __init__(self, trainer: "Trainer"):
        self._t = trainer
        self.step = 0                # optimizer step being computed (0-based)
        self.micro = 0               # micro-batch index within the step
        self.device = trainer.device

    @property
    def grad_accum(self) -> int:
        return self._t.cfg.grad_accum

    @property
    def max_steps(self) -> int:
        return self._t.cfg.max_steps

    def autocast(self):
        """Mixed precision context for the forward pass (a no-op without --amp)."""
        amp = self._t.cfg.amp
        if amp == "none":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def backward(self, loss: torch.Tensor, optimizer: str) -> None:
        """Backward of ``loss`` (averaged over micro-batches, loss-scaled for fp16) into the grads
        of optimizer ``optimizer``'s parameters."""
        loss = loss / self._t.cfg.grad_accum
        scaler = self._t.scalers.get(optimizer)
        (scaler.scale(loss) if scaler is not None else loss).backward()


class Objective:
    """What the loop trains. Subclasses own modules, optimizers and the loss."""

    def modules(self) -> Dict[str, nn.Module]:
        """The trainable modules by name (their state goes into checkpoints)."""
        raise NotImplementedError

    def distribute(self, wrapped: Dict[str, nn.Module]) -> None:
        """Receive the DDP/FSDP-wrapped modules to use for training forwards (default: ignored)."""
        self.wrapped = wrapped

    def configure_optimizers(self, total_steps: int) -> Dict[str, OptimSpec]:
        raise NotImplementedError

    def active_optimizers(self, step: int) -> List[str]:
        """Optimizers stepped at ``step`` (default all; a GAN may start its discriminator later)."""
        return list(self.optim_specs)

    def train_step(self, batch: Dict[str, Any], ctx: StepContext) -> Dict[str, torch.Tensor]:
        """Forward + ``ctx.backward(loss, name)`` for one micro-batch; returns scalar metrics."""
        raise NotImplementedError

    def eval_step(self, batch: Dict[str, Any]) -> Dict[str, Tuple[torch.Tensor, float]]:
        """Metric name -> (sum over the batch, count); the loop sums over batches and ranks."""
        return {}

    def sample_images(self, step: int) -> Optional[np.ndarray]:
        """uint8 (N, H, W, 3) for a progress grid, or None."""
        return None

    def units_per_sample(self) -> Dict[str, float]:
        """Extra throughput units, e.g. {"tok": L} logs tokens/s next to images/s."""
        return {}

    def ema_modules(self) -> List[str]:
        """Modules that get an EMA copy when the loop's ema_decay > 0."""
        return list(self.modules())[:1]

    def state_dict(self) -> Dict[str, Any]:
        """Objective state that is not in modules/optimizers (e.g. progressive-training counters)."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


@dataclass
class FitResult:
    step: int
    finished: bool
    interrupted: Optional[int] = None        # signal number when stopped by SIGTERM / SIGINT
    checkpoint: Optional[str] = None
    bad_images: int = 0
    last_metrics: Dict[str, float] = field(default_factory=dict)


def _non_finite_loss(out: Dict[str, Any]) -> Optional[Tuple[str, float]]:
    """(name, value) of the first NaN/inf loss in a train_step's outputs, else None."""
    for k, v in out.items():
        if "loss" in k.split("/")[-1] and torch.is_tensor(v) and not bool(torch.isfinite(v.detach().float()).all()):
            return k, float(v.detach().float().reshape(-1)[0])
    return None


class Trainer:
    def __init__(self, objective: Objective, cfg: LoopConfig, train_set, val_set=None,
                 run_config: Optional[Dict[str, Any]] = None, logger: Optional[RunLogger] = None):
        if cfg.amp not in ("none", "bf16", "fp16"):
            raise NextScaleError(f"--amp must be none, bf16 or fp16, got {cfg.amp!r}")
        if cfg.max_steps <= 0:
            raise NextScaleError(f"the number of training steps must be positive, got {cfg.max_steps}")
        self.objective, self.cfg = objective, cfg
        self.train_set, self.val_set = train_set, val_set
        self.run_config = run_config or {}
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = torch.device(cfg.device)
        self.micro = cfg.micro_batch(self.world)
        if len(train_set) == 0:
            raise NextScaleError("the training set is empty; add images to the data folder")
        self.log = logger or RunLogger(cfg.run_dir, enabled=dist.is_main())
        self.ckpt = CheckpointManager(os.path.join(cfg.run_dir, "checkpoints"), cfg.keep_last)
        self.scalers: Dict[str, torch.amp.GradScaler] = {}
        self.emas: Dict[str, EMA] = {}
        self.step = 0
        self._stop: Optional[int] = None

    # ---------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, Any]:
        ob = self.objective
        counter = self.step * self.cfg.grad_accum
        epoch, index = divmod(self.step, math.ceil(len(self.train_set) / self.cfg.batch_size))
        rngs = dist.all_gather_object(capture_rng())
        return {
            "format": CKPT_FORMAT, "step": self.step, "world_size": self.world,
            "modules": {k: self._module_state(k) for k in ob.modules()},
            "optimizers": {k: self._optim_state(k) for k in ob.optim_specs},
            "scalers": {k: s.state_dict() for k, s in self.scalers.items()},
            "ema": {k: e.state_dict() for k, e in self.emas.items()},
            "objective": ob.state_dict(),
            "data": {"counter": counter, "epoch": epoch, "index": index},
            "rng": rngs,
            "config": json.loads(json.dumps(self.run_config, default=str)),
        }

    def _module_state(self, name: str) -> Dict[str, torch.Tensor]:
        m = self.wrapped[name]
        if self.cfg.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
            return get_model_state_dict(m, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.detach().cpu().clone() for k, v in self.objective.modules()[name].state_dict().items()}

    def _optim_state(self, name: str) -> Dict[str, Any]:
        spec = self.objective.optim_specs[name]
        if self.cfg.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
            return get_optimizer_state_dict(self.wrapped[self._module_of(name)], spec.optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return spec.optimizer.state_dict()

    def _module_of(self, optim_name: str) -> str:
        mods = self.objective.modules()
        return optim_name if optim_name in mods else next(iter(mods))

    def _load_modules(self, state: Dict[str, Any]) -> None:
        for k, m in self.objective.modules().items():
            if k not in state["modules"]:
                raise NextScaleError(f"checkpoint has no weights for {k!r}; use a fresh --run-dir")
            m.load_state_dict(state["modules"][k])

    def _load_rest(self, state: Dict[str, Any]) -> None:
        ob = self.objective
        for k, spec in ob.optim_specs.items():
            if k in state["optimizers"]:
                if self.cfg.fsdp:
                    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
                    set_optimizer_state_dict(self.wrapped[self._module_of(k)], spec.optimizer, state["optimizers"][k],
                                             options=StateDictOptions(full_state_dict=True))
                else:
                    spec.optimizer.load_state_dict(state["optimizers"][k])
        for k, s in self.scalers.items():
            if k in state.get("scalers", {}):
                s.load_state_dict(state["scalers"][k])
        for k, e in self.emas.items():
            if k in state.get("ema", {}):
                e.load_state_dict(state["ema"][k])
        ob.load_state_dict(state.get("objective", {}))
        rngs = state.get("rng") or []
        if len(rngs) == self.world:
            restore_rng(rngs[self.rank])
        else:
            self.log.info(f"world size changed ({len(rngs)} -> {self.world}): RNG streams re-seeded; the run continues but is not bit-identical to an uninterrupted one")
            self._seed(self.cfg.seed + 1000 * self.step)

    # ---------------------------------------------------------------- set-up
    def _seed(self, seed: int) -> None:
        import random
        s = seed * 1009 + self.rank
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)

    def _wrap(self) -> Dict[str, nn.Module]:
        mods = self.objective.modules()
        if self.world == 1:
            return dict(mods)
        out = {}
        for k, m in mods.items():
            if self.cfg.fsdp:
                from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, ShardingStrategy
                out[k] = FSDP(m, sharding_strategy=ShardingStrategy.FULL_SHARD, use_orig_params=True,
                              device_id=self.device if self.device.type == "cuda" else None)
            else:
                import inspect

                from torch.nn.parallel import DistributedDataParallel as DDP
                # buffers are identical on every rank (masks, ids): no per-forward buffer sync
                sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
                        else {"broadcast_buffers": False})
                out[k] = DDP(m, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                             find_unused_parameters=False, **sync)
        return out

    def _loader(self, counter: int) -> Iterator[Dict[str, Any]]:
        sampler = ResumableBatchSampler(len(self.train_set), self.micro, self.rank, self.world, self.cfg.seed,
                                        start=counter, grad_accum=self.cfg.grad_accum)
        self.iters_per_epoch = sampler.iters_per_epoch
        ld = torch.utils.data.DataLoader(self.train_set, batch_sampler=sampler, num_workers=self.cfg.workers,
                                         pin_memory=self.device.type == "cuda", persistent_workers=False,
                                         generator=torch.Generator().manual_seed(self.cfg.seed))  # not the global RNG
        return iter(ld)

    def _write_run_config(self) -> None:
        if not dist.is_main():
            return
        path = os.path.join(self.cfg.run_dir, "config.json")
        cfg = json.loads(json.dumps(self.run_config, default=str))
        if os.path.isfile(path):
            with open(path) as f:
                old = json.load(f)
            changed = sorted(k for k in set(old) | set(cfg) if old.get(k) != cfg.get(k))
            if changed:
                self.log.info(f"resuming with changed settings: {', '.join(changed)}")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(cfg, f, indent=2)
        os.replace(tmp, path)

    # ---------------------------------------------------------------- signals
    @contextlib.contextmanager
    def _signals(self):
        """SIGTERM / SIGINT request a checkpoint and a clean exit at the next step boundary."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: give up immediately
            self._stop = signum

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    # ---------------------------------------------------------------- the loop
    def fit(self) -> FitResult:
        cfg, ob = self.cfg, self.objective
        os.makedirs(cfg.run_dir, exist_ok=True)
        self._seed(cfg.seed)
        if dist.is_main():
            self.ckpt.clean_temp()
        found = self.ckpt.latest()
        dist.barrier()
        if found is not None:
            self.step, state = found
            if state.get("format") != CKPT_FORMAT:
                raise NextScaleError(f"{self.ckpt.path(self.step)} is not a nextscale training checkpoint; use a fresh --run-dir")
            self._load_modules(state)
        for m in ob.modules().values():
            m.to(self.device)
        self.wrapped = self._wrap()
        ob.distribute(self.wrapped)
        ob.optim_specs = ob.configure_optimizers(cfg.max_steps)
        if cfg.amp == "fp16":
            self.scalers = {k: torch.amp.GradScaler(self.device.type, init_scale=2.0 ** 11, growth_interval=1000) for k in ob.optim_specs}
        if cfg.ema_decay > 0:
            if cfg.fsdp:
                raise NextScaleError("--ema is not supported with --fsdp; drop one of them")
            mods = ob.modules()
            self.emas = {k: EMA(mods[k], cfg.ema_decay) for k in ob.ema_modules()}
        if found is not None:
            self._load_rest(state)
            del state
            self.log.info(f"resumed from {self.ckpt.path(self.step)} (step {self.step}/{cfg.max_steps})")
        self._check_weights_finite(f"at step {self.step} (from the checkpoint)" if found is not None else "before training (from --init?)")
        self._write_run_config()
        res = FitResult(step=self.step, finished=self.step >= cfg.max_steps)
        if self.step >= cfg.max_steps:
            self.log.info(f"nothing to do: the run in {cfg.run_dir} already reached step {self.step} (raise --steps/--epochs to continue)")
            res.checkpoint = self.ckpt.path(self.step) if self.step in self.ckpt.steps() else None
            return res
        n_params = sum(p.numel() for m in ob.modules().values() for p in m.parameters() if p.requires_grad)
        self.log.info(f"training {n_params / 1e6:.2f}M params on {self.world} x {self.device.type}: {len(self.train_set)} samples, "
                      f"batch {cfg.batch_size} = {self.micro} x {self.world} rank(s) x {cfg.grad_accum} accum, steps {self.step} -> {cfg.max_steps}, amp {cfg.amp}")
        data = self._loader(self.step * cfg.grad_accum)
        ctx = StepContext(self)
        units = {"img": 1.0, **ob.units_per_sample()}
        sums: Dict[str, torch.Tensor] = {}
        n_sum, t_log, bad_images = 0, time.time(), 0
        t_steps: List[float] = []
        bar = None
        if cfg.progress and dist.is_main():
            from tqdm.auto import tqdm
            bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        last_eval = last_sample = -1
        with self._signals():
            try:
                while self.step < cfg.max_steps:
                    t0 = time.time()
                    ctx.step = self.step
                    lrs = {k: spec.schedule.apply(spec.optimizer, self.step) for k, spec in ob.optim_specs.items()}
                    for m in ob.modules().values():
                        m.train()
                    bad_loss = None
                    for micro in range(cfg.grad_accum):
                        ctx.micro = micro
                        batch = next(data)
                        bad_images += int(batch["n_bad"].sum()) if "n_bad" in batch else 0
                        sync = micro == cfg.grad_accum - 1
                        with contextlib.ExitStack() as stack:
                            if not sync and self.world > 1:
                                for m in self.wrapped.values():
                                    if hasattr(m, "no_sync"):
                                        stack.enter_context(m.no_sync())
                            out = ob.train_step(batch, ctx)
                        bad_loss = bad_loss or _non_finite_loss(out)
                        for k, v in out.items():
                            v = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v))
                            sums[k] = sums.get(k, 0) + v / cfg.grad_accum
                    self._check_finite(bad_loss)
                    stats = self._optimizer_step()
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0) + v
                    for k, e in self.emas.items():
                        e.update(ob.modules()[k])
                    self.step += 1
                    n_sum += 1
                    t_steps.append(time.time() - t0)
                    if bar is not None:
                        bar.update(1)
                    stop = self._stop_requested()
                    if self.step % cfg.log_every == 0 or self.step == cfg.max_steps or stop:
                        res.last_metrics = self._log_train(sums, n_sum, lrs, t_steps, units, bar)
                        sums, n_sum, t_steps = {}, 0, t_steps[-20:]
                    if self.step % cfg.ckpt_every == 0 or self.step == cfg.max_steps or stop:
                        res.checkpoint = self._save()
                    if stop:
                        res.interrupted = stop
                        self.log.info(f"stopped by signal {stop} at step {self.step}; re-run the same command to resume")
                        break
                    if cfg.eval_every > 0 and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                        with self._isolated_rng():
                            self._evaluate()
                        last_eval = self.step
                    if cfg.sample_every > 0 and self.step % cfg.sample_every == 0 and self.step < cfg.max_steps:
                        with self._isolated_rng():
                            self._sample()
                        last_sample = self.step
            finally:
                if bar is not None:
                    bar.close()
        res.step = self.step
        res.finished = self.step >= cfg.max_steps
        bad_total = int(dist.all_reduce_sum(torch.tensor(float(bad_images))).item())
        res.bad_images = bad_total
        if bad_total:
            self.log.info(f"skipped {bad_total} unreadable image(s) in total (replaced by the next readable one); see the first warning for a path")
        if res.finished:
            if self.val_set is not None and last_eval != self.step:
                self._evaluate()
            if cfg.sample_every >= 0 and last_sample != self.step:
                self._sample()
            self.log.info(f"finished: step {self.step}, checkpoint {res.checkpoint}")
        return res

    @contextlib.contextmanager
    def _isolated_rng(self):
        """Evaluation and sampling must not move the training RNG streams (a resumed run skips
        the ones that happened before its checkpoint)."""
        st = capture_rng()
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                yield
        finally:
            restore_rng(st)

    def _stop_requested(self) -> Optional[int]:
        flag = torch.tensor(float(self._stop or 0))
        if self.world > 1:  # every rank must stop at the same step
            flag = dist.all_reduce_max(flag)
        return int(flag.item()) or None

    def _check_finite(self, bad: Optional[Tuple[str, float]]) -> None:
        """Stop before the optimizer step when a loss is NaN/inf, on every rank at once: stepping
        would write NaN into the weights, the EMA and every later checkpoint."""
        flag = torch.tensor(1.0 if bad else 0.0)
        if self.world > 1:
            flag = dist.all_reduce_max(flag)
        if float(flag) == 0.0:
            return
        what = f"{bad[0]} is {bad[1]}" if bad else "a loss on another rank is not finite"
        self._fail(f"step {self.step + 1}: {what}; stopped before updating the weights{self._last_good()} "
                   f"(lower --lr, set --grad-clip, prefer --amp bf16 over fp16, or check the data and --init weights)")

    def _fail(self, msg: str) -> None:
        self.log.info(f"error: {msg}", echo=False)  # the console gets it once, from the caller
        raise NonFiniteError(msg)

    def _last_good(self) -> str:
        steps = self.ckpt.steps()
        return f"; the last good checkpoint is {self.ckpt.path(steps[-1])}" if steps else "; no checkpoint was written"

    def _check_weights_finite(self, source: str) -> None:
        for name, m in self.objective.modules().items():
            for k, p in m.named_parameters():
                if not bool(torch.isfinite(p.detach()).all()):
                    self._fail(f"{name}.{k} holds NaN/inf values {source}; train from finite weights "
                               f"(a fresh run, or an --init model that samples)")

    def _optimizer_step(self) -> Dict[str, torch.Tensor]:
        ob, stats = self.objective, {}
        active = set(ob.active_optimizers(self.step))
        for k, spec in ob.optim_specs.items():
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
                if scaler.get_scale() > 32768.0:  # the reference caps the fp16 loss scale at 2**15
                    scaler.update(new_scale=32768.0)
                stats[f"{k}/scale_log2"] = torch.tensor(math.log2(max(scaler.get_scale(), 1e-30)))
            else:
                if not bool(torch.isfinite(norm)):  # no loss scaler to skip the step: never write NaN weights
                    self._fail(f"step {self.step + 1}: the gradient norm of {k!r} is {float(norm)}; stopped before "
                               f"updating the weights{self._last_good()} (lower --lr or set --grad-clip)")
                opt.step()
            opt.zero_grad(set_to_none=True)
            stats[f"{k}/grad_norm"] = norm.detach().float().cpu()
        return stats

    def _log_train(self, sums, n, lrs, t_steps, units, bar) -> Dict[str, float]:
        keys = sorted(sums)
        vec = torch.stack([sums[k].float().cpu().reshape(()) / n for k in keys]) if keys else torch.zeros(0)
        vec = dist.all_reduce_sum(vec) / self.world
        vals = {k: float(v) for k, v in zip(keys, vec.tolist())}
        dt = float(np.mean(t_steps)) if t_steps else float("nan")
        imgs = self.cfg.batch_size / dt if dt > 0 else float("nan")
        for u, per in units.items():
            vals[f"{u}_per_s"] = imgs * per
        for k, (lr, wd) in lrs.items():
            vals[f"{k}/lr"], vals[f"{k}/wd"] = lr, wd
        eta = dt * (self.cfg.max_steps - self.step)
        vals["eta_s"] = eta
        vals["epoch"] = self.step / max(self.iters_per_epoch, 1)
        if dist.is_main():
            self.log.metrics(self.step, vals, "train")
            main = [k for k in keys if "/" not in k][:4]
            txt = "  ".join(f"{k} {vals[k]:.4f}" for k in main)
            self.log.info(f"step {self.step}/{self.cfg.max_steps}  {txt}  {imgs:.1f} img/s  "
                          + "  ".join(f"{vals[f'{u}_per_s']:.0f} {u}/s" for u in units if u != "img")
                          + f"  eta {format_duration(eta)}")
            if bar is not None and main:
                bar.set_postfix({k: f"{vals[k]:.3f}" for k in main[:2]}, refresh=False)
        return vals

    def _save(self) -> str:
        state = self.state_dict()  # collective (gathers RNG states / FSDP shards) on every rank
        path = None
        if dist.is_main():
            path = self.ckpt.save(self.step, state)
        dist.barrier()
        return path or self.ckpt.path(self.step)

    @torch.no_grad()
    def _evaluate(self) -> Dict[str, float]:
        if self.val_set is None:
            return {}
        ob = self.objective
        for m in ob.modules().values():
            m.eval()
        bs = self.cfg.eval_batch_size or self.micro
        sampler = ShardedEvalSampler(len(self.val_set), bs, self.rank, self.world)
        ld = torch.utils.data.DataLoader(self.val_set, batch_sampler=sampler, num_workers=self.cfg.workers,
                                         generator=torch.Generator().manual_seed(0))
        sums: Dict[str, float] = {}
        counts: Dict[str, float] = {}
        for batch in ld:
            for k, (s, c) in ob.eval_step(batch).items():
                sums[k] = sums.get(k, 0.0) + float(s)
                counts[k] = counts.get(k, 0.0) + float(c)
        keys = sorted(dist.broadcast_object(sorted(sums)))
        vec = torch.tensor([[sums.get(k, 0.0), counts.get(k, 0.0)] for k in keys], dtype=torch.float64).reshape(-1, 2)
        vec = dist.all_reduce_sum(vec)
        vals = {k: (s / c if c else float("nan")) for k, (s, c) in zip(keys, vec.tolist())}
        for m in ob.modules().values():
            m.train()
        if dist.is_main() and vals:
            self.log.metrics(self.step, vals, "val")
            main = [k for k in keys if "/" not in k]
            self.log.info(f"val @ step {self.step}: " + "  ".join(f"{k} {vals[k]:.4f}" for k in main))
        return vals

    def _sample(self) -> None:
        if self.cfg.fsdp or not dist.is_main():
            return
        try:
            imgs = self.objective.sample_images(self.step)
        except Exception as e:  # a progress picture must never kill a run
            self.log.info(f"sampling failed at step {self.step}: {type(e).__name__}: {e}")
            return
        if imgs is not None:
            p = self.log.image(self.step, imgs)
            self.log.info(f"samples: {p}")
