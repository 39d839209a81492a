"""What the training loop reports (:class:`Hooks`): the run's ``config.json``, the start line, the
progress bar, train metrics every ``log_every`` steps (averaged over ranks), evaluation on the
validation set and sample pictures (every ``eval_every`` / ``sample_every`` steps and at the end,
with the training RNG streams isolated from them), the end lines. Nothing here changes training."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from nextscale import dist
from nextscale.atomic import write_json
from nextscale.checkpoint import capture_rng, restore_rng
from nextscale.data import ShardedEvalSampler
from nextscale.train.logging import RunLogger, format_duration

__all__ = ["Hooks"]


class Hooks:
    def __init__(self, cfg, objective, log: RunLogger, val_set=None, micro: int = 1, ema=None):
        """``cfg``: the :class:`~nextscale.train.config.LoopConfig`; ``micro``: the per-rank micro-batch;
        ``ema``: the EMA copies by module name (the loop's, filled once built), for the sample pictures."""
        self.cfg, self.objective, self.log, self.val_set, self.micro = cfg, objective, log, val_set, micro
        self.ema = ema if ema is not None else {}
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = torch.device(cfg.device)
        self.iters_per_epoch = 1
        self.units: Dict[str, float] = {"img": 1.0}
        self.sums: Dict[str, torch.Tensor] = {}
        self.n_sum = 0
        self.t_steps: List[float] = []
        self.bar = None
        self.last_eval = self.last_sample = -1

    # ---------------------------------------------------------------- start / end
    def write_run_config(self, run_config: Dict[str, Any]) -> None:
        """``RUN/config.json`` (atomically); on a resume, log which settings changed."""
        if not dist.is_main():
            return
        path = os.path.join(self.cfg.run_dir, "config.json")
        cfg = json.loads(json.dumps(run_config, default=str))
        if os.path.isfile(path):
            with open(path) as f:
                old = json.load(f)
            changed = sorted(k for k in set(old) | set(cfg) if old.get(k) != cfg.get(k))
            if changed:
                self.log.info(f"resuming with changed settings: {', '.join(changed)}")
        write_json(path, cfg)

    def start(self, step: int, n_samples: int) -> None:
        """The start line (before the data loader exists)."""
        cfg, ob = self.cfg, self.objective
        n_params = sum(p.numel() for m in ob.modules().values() for p in m.parameters() if p.requires_grad)
        self.log.info(
            f"training {n_params / 1e6:.2f}M params on {self.world} x {self.device.type}: {n_samples} samples, "
            f"batch {cfg.batch_size} = {self.micro} x {self.world} rank(s) x {cfg.grad_accum} accum, steps {step} -> "
            f"{cfg.max_steps}, amp {cfg.amp}"
        )

    def open_bar(self, step: int) -> None:
        """Throughput units and the progress bar (main rank, with ``progress``)."""
        self.units = {"img": 1.0, **self.objective.units_per_sample()}
        if self.cfg.progress and dist.is_main():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.cfg.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def end(self, step: int, finished: bool, bad_images: int, checkpoint: Optional[str]) -> None:
        """The end lines; a finished run is evaluated and sampled once more unless that just happened."""
        if bad_images:
            self.log.info(
                f"skipped {bad_images} unreadable image(s) in total (replaced by the next readable one); see the "
                "first warning for a path"
            )
        if finished:
            if self.val_set is not None and self.last_eval != step:
                self.evaluate(step)
            if self.cfg.sample_every >= 0 and self.last_sample != step:
                self.sample(step)
            self.log.info(f"finished: step {step}, checkpoint {checkpoint}")

    # ---------------------------------------------------------------- per step
    def add_micro(self, out: Dict[str, Any], grad_accum: int) -> None:
        """Accumulate one micro-batch's train_step outputs (averaged over the step's micro-batches)."""
        for k, v in out.items():
            v = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v))
            self.sums[k] = self.sums.get(k, 0) + v / grad_accum

    def add_stats(self, stats: Dict[str, torch.Tensor]) -> None:
        """Accumulate one optimizer step's statistics (grad norms, loss scales)."""
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0) + v

    def step_done(self, dt: float) -> None:
        self.n_sum += 1
        self.t_steps.append(dt)
        if self.bar is not None:
            self.bar.update(1)

    def log_due(self, step: int, stop) -> bool:
        return step % self.cfg.log_every == 0 or step == self.cfg.max_steps or bool(stop)

    def log_train(self, step: int, lrs: Dict[str, Any]) -> Dict[str, float]:
        """Log the metrics accumulated since the last call, averaged over steps and ranks (collective)."""
        sums, n, t_steps, units, bar = self.sums, self.n_sum, self.t_steps, self.units, self.bar
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
        eta = dt * (self.cfg.max_steps - step)
        vals["eta_s"] = eta
        vals["epoch"] = step / max(self.iters_per_epoch, 1)
        if dist.is_main():
            self.log.metrics(step, vals, "train")
            main = [k for k in keys if "/" not in k][:4]
            txt = "  ".join(f"{k} {vals[k]:.4f}" for k in main)
            self.log.info(
                f"step {step}/{self.cfg.max_steps}  {txt}  {imgs:.1f} img/s  "
                + "  ".join(f"{vals[f'{u}_per_s']:.0f} {u}/s" for u in units if u != "img")
                + f"  eta {format_duration(eta)}"
            )
            if bar is not None and main:
                bar.set_postfix({k: f"{vals[k]:.3f}" for k in main[:2]}, refresh=False)
        self.sums, self.n_sum, self.t_steps = {}, 0, t_steps[-20:]
        return vals

    def periodic(self, step: int) -> None:
        """Evaluate / sample when ``eval_every`` / ``sample_every`` say so (not at the last step: :meth:`end` does)."""
        cfg = self.cfg
        if cfg.eval_every > 0 and step % cfg.eval_every == 0 and step < cfg.max_steps:
            with self._isolated_rng():
                self.evaluate(step)
        if cfg.sample_every > 0 and step % cfg.sample_every == 0 and step < cfg.max_steps:
            with self._isolated_rng():
                self.sample(step)

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

    # ---------------------------------------------------------------- eval / sample
    @torch.no_grad()
    def evaluate(self, step: int) -> Dict[str, float]:
        """Objective.eval_step summed over the validation set and the ranks (collective)."""
        self.last_eval = step
        if self.val_set is None:
            return {}
        ob = self.objective
        for m in ob.modules().values():
            m.eval()
        bs = self.cfg.eval_batch_size or self.micro
        sampler = ShardedEvalSampler(len(self.val_set), bs, self.rank, self.world)
        ld = torch.utils.data.DataLoader(
            self.val_set,
            batch_sampler=sampler,
            num_workers=self.cfg.workers,
            generator=torch.Generator().manual_seed(0),
        )
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
            self.log.metrics(step, vals, "val")
            main = [k for k in keys if "/" not in k]
            self.log.info(f"val @ step {step}: " + "  ".join(f"{k} {vals[k]:.4f}" for k in main))
        return vals

    def sample(self, step: int) -> None:
        """A progress picture from Objective.sample_images (main rank; never with FSDP; a failure is logged, not "
        "raised)."""
        self.last_sample = step
        if self.cfg.fsdp or not dist.is_main():
            return
        try:
            imgs = self.objective.sample_images(step, self.ema)
        except Exception as e:  # a progress picture must never kill a run
            self.log.info(f"sampling failed at step {step}: {type(e).__name__}: {e}")
            return
        if imgs is not None:
            p = self.log.image(step, imgs)
            self.log.info(f"samples: {p}")
