"""Training checkpoints, in one place: the files, reading them, writing them, and a run's state.

Layout: ``RUN/checkpoints/step_00001234.pt``, a dict of tensors and plain Python (``format``, ``step``,
``modules``, ``optimizers``, ``scalers``, ``ema``, ``objective``, ``data``, ``rng``, ``config``); or,
for sharded (FSDP) runs, a folder ``RUN/checkpoints/step_00001234/`` written by every rank at once with
``torch.distributed.checkpoint`` (DCP): ``modules`` and ``optimizers`` as DCP shards (``*.distcp`` +
``.metadata``, keyed by parameter name, so any number of processes can load them), the rest in
``extra.pt`` (rank 0), and the marker ``COMPLETE`` written last: a folder without it (a writer killed
mid-save) is never read, only reported in one line and replaced by the next save of that step.

* Files: :func:`checkpoint_path`, :func:`checkpoint_steps`, :class:`CheckpointFolder` (save with
  ``keep_last`` rotation, find the newest readable one, remove a killed writer's temps).
* Reading: every read goes through :func:`nextscale.safeload.load_torch` (tensors only, no fallback);
  :func:`latest_checkpoint` skips an unreadable file (truncated, bit rot) in favour of the previous one,
  but a refused (planted, foreign) pickle stops the search: it is never skipped silently.
  :func:`find_checkpoint` resolves a run folder or a ``step_*.pt``; :func:`checkpoint_weights` takes one
  module's weights (EMA or raw) out of a checkpoint, for the exporters and ``nextscale.hub``.
* Writing: :func:`save_checkpoint` (atomic and durable, :func:`nextscale.atomic.atomic_path`).
* A run's state: :func:`capture_rng` / :func:`restore_rng` / :func:`seed_all` (every RNG of a process)
  and :class:`Checkpointer`, which assembles the state of a training run (weights, optimizers, loss
  scalers, EMA, objective counters, data position, the RNG streams of every rank, the run config),
  saves it, and loads it back in two halves on a resume: the weights before the modules are wrapped,
  the rest once optimizers, scalers and EMA exist. A resumed run equals an uninterrupted one.

Library code (``nextscale.hub``) reads checkpoints through this module; ``nextscale.train`` writes them.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from nextscale import dist
from nextscale.atomic import atomic_path
from nextscale.errors import FieldError, FieldName, NextScaleError
from nextscale.safeload import UnsafeFileError, load_torch

__all__ = [
    "CKPT_FORMAT",
    "COMPLETE",
    "checkpoint_path",
    "sharded_path",
    "incomplete_checkpoints",
    "check_sharded_metadata",
    "load_sharded_tensors",
    "checkpoint_steps",
    "load_checkpoint",
    "latest_checkpoint",
    "find_checkpoint",
    "checkpoint_weights",
    "save_checkpoint",
    "CheckpointFolder",
    "capture_rng",
    "restore_rng",
    "seed_all",
    "Checkpointer",
]

#: ``state["format"]`` of a checkpoint written by :class:`Checkpointer`.
CKPT_FORMAT = "nextscale-train"

_NAME = re.compile(r"^step_(\d{8,})\.pt$")
_DIR = re.compile(r"^step_(\d{8,})$")
#: The file a sharded checkpoint folder gets last: only a folder holding it is a checkpoint.
COMPLETE = "COMPLETE"
#: The non-tensor part of a sharded checkpoint (everything but modules / optimizers), rank 0's.
EXTRA = "extra.pt"


# ------------------------------------------------------------------------------------------------
# Files and reading
# ------------------------------------------------------------------------------------------------


def checkpoint_path(folder: str, step: int) -> str:
    """The checkpoint of ``step`` in ``folder``: its sharded folder when that is complete, else the file."""
    d = sharded_path(folder, step)
    return d if os.path.isfile(os.path.join(d, COMPLETE)) else os.path.join(folder, f"step_{step:08d}.pt")


def sharded_path(folder: str, step: int) -> str:
    return os.path.join(folder, f"step_{step:08d}")


def checkpoint_steps(folder: str) -> List[int]:
    """Steps of the complete checkpoints in ``folder``, ascending (temp files and sharded folders
    without their ``COMPLETE`` marker are never listed)."""
    if not os.path.isdir(folder):
        return []
    steps = set()
    for f in os.listdir(folder):
        if m := _NAME.match(f):
            steps.add(int(m.group(1)))
        elif (m := _DIR.match(f)) and os.path.isfile(os.path.join(folder, f, COMPLETE)):
            steps.add(int(m.group(1)))
    return sorted(steps)


def incomplete_checkpoints(folder: str) -> List[str]:
    """Sharded checkpoint folders without their ``COMPLETE`` marker (a writer killed mid-save)."""
    if not os.path.isdir(folder):
        return []
    return sorted(
        os.path.join(folder, f)
        for f in os.listdir(folder)
        if _DIR.match(f) and not os.path.isfile(os.path.join(folder, f, COMPLETE))
    )


# DCP's .metadata is a pickle: before DCP reads it, it is checked to name only DCP's metadata classes
_DCP_GLOBALS = {
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("collections", "OrderedDict"),
}


def check_sharded_metadata(path: str) -> None:
    """Refuse (:class:`UnsafeFileError`) a sharded checkpoint whose ``.metadata`` pickle would import
    anything but DCP's metadata classes, torch dtypes / sizes and paths: nextscale never runs code from a file."""
    import pickle

    meta = os.path.join(path, ".metadata")

    class _Checked(pickle.Unpickler):
        def find_class(self, module, name):
            ok = (
                (module, name) in _DCP_GLOBALS
                or module == "torch.distributed.checkpoint.metadata"
                or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype))
            )
            if not ok:
                raise UnsafeFileError(
                    f"{meta}: refused: the metadata would import {module}.{name}, and nextscale never runs code "
                    "from a file; use a checkpoint written by nextscale"
                )
            return super().find_class(module, name)

    try:
        with open(meta, "rb") as f:
            _Checked(f).load()
    except UnsafeFileError:
        raise
    except Exception as e:
        raise NextScaleError(f"{meta}: unreadable ({type(e).__name__}: {e})") from None


def load_sharded_tensors(path: str) -> Dict[str, Any]:
    """The DCP part of a sharded checkpoint, whole, in this process (no process group needed):
    ``{"modules": {name: state_dict}, "optimizers": {name: state_dict}}`` (for export and inspection)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    check_sharded_metadata(path)
    sd: Dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _load_state_dict(sd, storage_reader=FileSystemReader(path), planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    return sd


def load_checkpoint(path: str, tensors: bool = True) -> Dict[str, Any]:
    """A training checkpoint, read tensors-only (:func:`nextscale.safeload.load_torch`, no fallback).

    A sharded folder is read whole (``modules`` and ``optimizers`` gathered in this process); with
    ``tensors=False`` only its ``extra.pt`` is read and ``state["sharded"]`` names the folder (a
    resume then loads each rank's shards itself, :class:`Checkpointer`)."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, COMPLETE)):
            raise NextScaleError(f"{path} is an incomplete sharded checkpoint (no {COMPLETE} marker)")
        state = load_torch(os.path.join(path, EXTRA), "nextscale training checkpoint (extra.pt)")
        if isinstance(state, dict):
            state["sharded"] = path
            if tensors:
                state.update(load_sharded_tensors(path))
        return state
    return load_torch(path, "nextscale training checkpoint (checkpoints/step_*.pt)")


def latest_checkpoint(folder: str, tensors: bool = True) -> Optional[Tuple[int, Dict[str, Any]]]:
    """``(step, state)`` of the newest readable checkpoint in ``folder``, or None (``tensors``: see
    :func:`load_checkpoint`).

    A refused file (a pickle holding Python objects) raises: it is never skipped silently."""
    for s in reversed(checkpoint_steps(folder)):
        p = checkpoint_path(folder, s)
        try:
            state = load_checkpoint(p, tensors=tensors)
        except UnsafeFileError as e:  # planted or foreign: never skip past it silently
            raise NextScaleError(f"{e}; remove it or use a fresh run folder") from None
        except Exception as e:
            warnings.warn(
                f"ignoring unreadable checkpoint {p} ({type(e).__name__}: {e}); trying an older one", RuntimeWarning
            )
            continue
        if isinstance(state, dict) and state.get("step") == s:
            return s, state
        warnings.warn(f"ignoring malformed checkpoint {p}", RuntimeWarning)
    return None


def find_checkpoint(run: str, not_found: str, train_hint: str) -> Tuple[str, Dict[str, Any]]:
    """``(path, state)`` of a ``step_*.pt`` file, or of the latest checkpoint of run folder ``run``.

    ``not_found`` ends the message for a missing ``run``; ``train_hint`` (the command that writes
    checkpoints) the one for a run folder without a readable checkpoint."""
    run = os.fspath(run)
    if os.path.isfile(run) or os.path.isfile(os.path.join(run, COMPLETE)):
        return run, load_checkpoint(run)
    if not os.path.isdir(run):
        raise NextScaleError(f"run {run!r} not found; {not_found}")
    folder = os.path.join(run, "checkpoints")
    found = latest_checkpoint(folder)
    if found is None:
        raise NextScaleError(f"no readable checkpoint in {folder!r}; train first ({train_hint})")
    return checkpoint_path(folder, found[0]), found[1]


def checkpoint_weights(
    state: Dict[str, Any], name: str, weights: str, path: str
) -> Tuple[Dict[str, torch.Tensor], str]:
    """Module ``name``'s weights in a training checkpoint ``state`` (floats as float32) and which were
    taken: ``weights`` "ema", "raw", or "auto" (EMA when the run kept one)."""
    if weights not in ("auto", "ema", "raw"):
        raise FieldError(FieldName("weights"), f" must be auto, ema or raw, got {weights!r}")
    has_ema = name in state.get("ema", {})
    if weights == "ema" and not has_ema:
        raise FieldError(
            f"{path} has no EMA weights (train with ", FieldName("ema"), " DECAY); use ", FieldName("weights"), " raw"
        )
    use = "ema" if (weights == "ema" or (weights == "auto" and has_ema)) else "raw"
    sd = state["ema"][name] if use == "ema" else state["modules"][name]
    return {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in sd.items()}, use


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def save_checkpoint(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` so that readers see either the old file or the complete new one,
    also after a power cut (the file and its folder are fsync'ed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path, durable=True) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


class CheckpointFolder:
    """Save / find / prune the ``step_XXXXXXXX.pt`` files of one folder."""

    def __init__(self, folder: str, keep_last: int = 3):
        self.folder, self.keep_last = folder, max(1, int(keep_last))

    def path(self, step: int) -> str:
        return checkpoint_path(self.folder, step)

    def steps(self) -> List[int]:
        """Steps of the complete checkpoints on disk, ascending (temp files are never listed)."""
        return checkpoint_steps(self.folder)

    def save(self, step: int, state: Dict[str, Any]) -> str:
        p = self.path(step)
        save_checkpoint(state, p)
        self.prune()
        return p

    def prune(self) -> None:
        import shutil

        steps = self.steps()
        for s in steps[: -self.keep_last]:
            p = self.path(s)
            try:
                shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
            except FileNotFoundError:
                pass
        for d in incomplete_checkpoints(self.folder):  # killed writers' folders older than the newest checkpoint
            if steps and int(os.path.basename(d)[5:]) < steps[-1]:
                shutil.rmtree(d, ignore_errors=True)

    def clean_temp(self) -> None:
        """Remove the temp files (``.step_*``) of killed writers (call on the writing rank at start-up,
        before any checkpoint is written)."""
        if not os.path.isdir(self.folder):
            return
        for f in os.listdir(self.folder):
            if f.startswith(".step_"):
                try:
                    os.remove(os.path.join(self.folder, f))
                except OSError:
                    pass

    def latest(self, tensors: bool = True) -> Optional[Tuple[int, Dict[str, Any]]]:
        """``(step, state)`` of the newest readable checkpoint, or None (a refused pickle raises:
        it stops a resume instead of being skipped)."""
        return latest_checkpoint(self.folder, tensors=tensors)


# ------------------------------------------------------------------------------------------------
# RNG states, in a form torch.load(weights_only=True) accepts (tensors, ints, tuples)
# ------------------------------------------------------------------------------------------------


def capture_rng() -> Dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states of this process."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    st = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def seed_all(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch for ``rank`` of a run seeded ``seed`` (distinct per rank)."""
    s = seed * 1009 + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def restore_rng(st: Dict[str, Any]) -> None:
    v, state, gauss = st["python"]
    random.setstate((v, tuple(state), gauss))
    kind, keys, pos, has_gauss, g = st["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, g))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# ------------------------------------------------------------------------------------------------
# The state of a training run
# ------------------------------------------------------------------------------------------------


class Checkpointer:
    """Everything that makes a resumed run equal an uninterrupted one.

    Its collaborators are the training loop's (``nextscale.train``): ``objective`` (``modules()``,
    ``state_dict()``), ``parallel`` (gathered module / optimizer states of DDP / FSDP modules),
    ``precision`` (loss scalers), ``ema`` (the EMA copies); ``optim_specs`` (name -> spec with an
    ``optimizer``) is given once the optimizers exist (:meth:`set_optimizers`)."""

    def __init__(
        self,
        folder: str,
        keep_last: int,
        objective,
        parallel,
        precision,
        ema,
        *,
        batch_size: int,
        grad_accum: int,
        n_train: int,
        seed: int,
        run_config: Optional[Dict[str, Any]] = None,
        log=None,
        sharded: bool = False,
    ):
        self.files = CheckpointFolder(folder, keep_last)
        self.sharded = sharded  # every rank writes its shards (DCP) instead of rank 0 a gathered file
        self.objective, self.parallel, self.precision, self.ema = objective, parallel, precision, ema
        self.optim_specs: Dict[str, Any] = {}
        self.batch_size, self.grad_accum, self.n_train, self.seed = batch_size, grad_accum, n_train, seed
        self.run_config = run_config or {}
        self.log = log
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def set_optimizers(self, optim_specs: Dict[str, Any]) -> None:
        self.optim_specs = optim_specs

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
        state = self.extra_state(step)
        state["modules"] = {k: self.parallel.module_state(k) for k in self.objective.modules()}
        state["optimizers"] = {k: self.parallel.optim_state(k, spec.optimizer) for k, spec in self.optim_specs.items()}
        return state

    def extra_state(self, step: int) -> Dict[str, Any]:
        """Everything but the weights and optimizer states (collective: gathers every rank's RNG states)."""
        ob = self.objective
        epoch, index = divmod(step, math.ceil(self.n_train / self.batch_size))
        rngs = dist.all_gather_object(capture_rng())
        return {
            "format": CKPT_FORMAT,
            "step": step,
            "world_size": self.world,
            "module_names": sorted(ob.modules()),
            "scalers": self.precision.state_dict(),
            "ema": self.ema.state_dict(),
            "objective": ob.state_dict(),
            "data": {"counter": step * self.grad_accum, "epoch": epoch, "index": index},
            "rng": rngs,
            "config": json.loads(json.dumps(self.run_config, default=str)),
        }

    def save(self, step: int) -> str:
        """Write the checkpoint of ``step`` (main rank; older ones beyond ``keep_last`` removed). Collective."""
        if self.sharded:
            return self.save_sharded(step)
        state = self.state_dict(step)
        path = None
        if dist.is_main():
            path = self.files.save(step, state)
        dist.barrier()
        return path or self.files.path(step)

    def save_sharded(self, step: int) -> str:
        """Every rank writes its own shards of the weights and optimizer states (DCP, no gather); rank 0
        the rest (``extra.pt``) and, once all is on disk, the ``COMPLETE`` marker. Collective."""
        import shutil

        import torch.distributed.checkpoint as dcp

        path = sharded_path(self.files.folder, step)
        extra = self.extra_state(step)
        tensors = self.parallel.sharded_state(self.optim_specs)
        if dist.is_main():
            if os.path.exists(path):  # a killed writer's half folder of this step (or an older run's)
                shutil.rmtree(path)
            os.makedirs(path)
        dist.barrier()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "assuming the intent is to save in a single process"
            dcp.save(tensors, checkpoint_id=path)  # ends when every rank's files are written and fsync'ed
        if dist.is_main():
            save_checkpoint(extra, os.path.join(path, EXTRA))
            with atomic_path(os.path.join(path, COMPLETE), durable=True) as tmp, open(tmp, "w") as f:
                f.write(f"step {step}, {self.world} processes\n")
            self.files.prune()
        dist.barrier()
        return path

    # ---------------------------------------------------------------- resume
    def find_latest(self) -> Optional[Tuple[int, Dict[str, Any]]]:
        """``(step, state)`` to resume from, or None for a fresh run (collective: ends in a barrier).
        A killed writer's temp files are removed first; a refused pickle raises. A sharded checkpoint's
        state has only its ``extra.pt`` part; its shards are read by :meth:`load_rest`."""
        if dist.is_main():
            self.files.clean_temp()
            newest = max(self.files.steps() or [-1])
            for d in incomplete_checkpoints(self.files.folder):
                if int(os.path.basename(d)[5:]) > newest and self.log is not None:
                    self.log.info(f"ignoring {d}: no {COMPLETE} marker (its writer stopped mid-save)")
        found = self.files.latest(tensors=False)
        dist.barrier()
        if found is not None and found[1].get("format") != CKPT_FORMAT:
            path = self.files.path(found[0])
            raise FieldError(f"{path} is not a nextscale training checkpoint; use a fresh ", FieldName("run_dir"))
        return found

    def load_modules(self, state: Dict[str, Any]) -> None:
        """The weights (before the modules are moved and wrapped; a sharded checkpoint's in :meth:`load_rest`)."""
        if "sharded" in state:
            return
        for k, m in self.objective.modules().items():
            if k not in state["modules"]:
                raise FieldError(f"checkpoint has no weights for {k!r}; use a fresh ", FieldName("run_dir"))
            m.load_state_dict(state["modules"][k])

    def load_rest(self, state: Dict[str, Any], step: int) -> None:
        """Optimizers, loss scalers, EMA, objective counters and RNG streams (once they all exist); the
        weights and optimizer states of a sharded checkpoint too, re-sharded to this world size by DCP."""
        if "sharded" in state:
            import torch.distributed.checkpoint as dcp

            check_sharded_metadata(state["sharded"])
            tensors = self.parallel.sharded_state(self.optim_specs)  # this world's layout, filled in place
            missing = set(self.objective.modules()) - set(state.get("module_names", self.objective.modules()))
            if missing:
                raise FieldError(f"checkpoint has no weights for {sorted(missing)}; use a fresh ", FieldName("run_dir"))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dcp.load(tensors, checkpoint_id=state["sharded"])
            self.parallel.load_sharded_state(tensors, self.optim_specs)
        else:
            for k, spec in self.optim_specs.items():
                if k in state["optimizers"]:
                    self.parallel.load_optim_state(k, spec.optimizer, state["optimizers"][k])
        self.precision.load_state_dict(state.get("scalers", {}))
        self.ema.load_state_dict(state.get("ema", {}))
        self.objective.load_state_dict(state.get("objective", {}))
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
