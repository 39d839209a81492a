"""Data parallelism of the training loop (:class:`Parallel`): wrapping the objective's modules in DDP
or in PyTorch's FSDP2 (``fully_shard`` on every transformer block, then on the root), activation
checkpointing and ``torch.compile`` per block, skipping the gradient all-reduce on accumulation
micro-batches, gradient clipping of sharded parameters, and the full (gathered) state dicts a
single-file checkpoint needs (sharded checkpoints: :mod:`nextscale.checkpoint`, no gather).

Blocks: :func:`block_modules` finds a model's transformer blocks (its ``blocks``: VAR's and the AR
baseline's ``nn.ModuleList``, the Infinity transformer's list over its chunks); a model laid out
otherwise declares them through ``Objective.block_modules()``. Each block becomes one FSDP2 unit: its
parameters are gathered just before its forward / backward and freed right after, so a rank holds
``1/world`` of the model plus one block at a time (the old FSDP1 wrapping of the whole model
gathered everything at once).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

__all__ = ["Parallel", "PARALLEL_MODES", "block_modules", "compile_skip_reason"]

PARALLEL_MODES = ("ddp", "fsdp")


def block_modules(model: nn.Module) -> List[nn.Module]:
    """The transformer blocks of ``model``: its ``blocks`` (a ModuleList, or a list / tuple of modules such
    as the Infinity transformer's property over its chunks); empty when it has none."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.ModuleList, list, tuple)) and all(isinstance(b, nn.Module) for b in blocks):
        return list(blocks)
    return []


def compile_skip_reason(device: torch.device) -> Optional[str]:
    """Why ``torch.compile`` cannot run here (one line), or None when it can."""
    import shutil
    import sys

    if sys.platform == "win32":
        return "torch.compile is not supported on Windows"
    if torch.device(device).type == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
        return "torch.compile on CPU needs a C++ compiler (g++), none found"
    if torch.device(device).type == "mps":
        return "torch.compile does not support MPS training"
    return None


def _checkpointed(forward: Callable, *args, **kwargs):
    # non-reentrant: works with kwargs, with FSDP2's hooks outside it and keeps the RNG of dropout
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    from torch.utils.checkpoint import checkpoint

    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


class Parallel:
    """``mode`` "ddp" or "fsdp"; ``grad_checkpointing`` / ``compile`` act on the blocks in any world size."""

    def __init__(
        self,
        device: torch.device,
        world: int,
        mode: str = "ddp",
        grad_checkpointing: bool = False,
        compile: bool = False,
        log: Optional[Callable[[str], None]] = None,
    ):
        if mode not in PARALLEL_MODES:
            from nextscale.errors import FieldError, FieldName

            raise FieldError(FieldName("parallel"), f" must be ddp or fsdp, got {mode!r}")
        self.device, self.world, self.mode = torch.device(device), world, mode
        self.grad_checkpointing, self.compile = grad_checkpointing, compile
        self.log = log or (lambda s: None)
        self.modules: Dict[str, nn.Module] = {}
        self.wrapped: Dict[str, nn.Module] = {}

    @property
    def fsdp(self) -> bool:
        """Parameters are sharded (FSDP2 with more than one process)."""
        return self.mode == "fsdp" and self.world > 1

    def mixed_precision(self):
        """FSDP2's policy: bf16 compute with fp32 master weights and fp32 gradient reductions on a GPU;
        fp32 throughout on the CPU (gloo), so sharded and single-process runs compare."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        if self.device.type == "cuda":
            return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        return MixedPrecisionPolicy()

    def _per_block(self, blocks: List[nn.Module]) -> None:
        """Activation checkpointing and compile of each block, in place (names and weights unchanged:
        the instance's ``forward`` is replaced, so checkpoints and exports are not affected)."""
        if self.compile:
            why = compile_skip_reason(self.device)
            if why:
                self.log(f"compile skipped: {why}")
            elif not blocks:
                self.log("compile skipped: the model declares no blocks")
            else:
                for b in blocks:
                    b.forward = torch.compile(b.forward)
        if self.grad_checkpointing:
            if not blocks:
                self.log("grad_checkpointing skipped: the model declares no blocks")
            for b in blocks:
                b.forward = functools.partial(_checkpointed, b.forward)

    def wrap(self, modules: Dict[str, nn.Module], blocks: Optional[Dict[str, List[nn.Module]]] = None):
        """The modules to run training forwards through (the modules themselves in one process).
        ``blocks``: each module's transformer blocks (default :func:`block_modules`)."""
        self.modules = dict(modules)
        blocks = blocks if blocks is not None else {k: block_modules(m) for k, m in modules.items()}
        for k in modules:
            self._per_block(blocks.get(k, []))
        # FSDP2 warns when a root returns a view (in-place ops on it would skip its backward hook); the
        # objectives only read the logits (out-of-place loss), so the warning is noise here
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        if self.world == 1:
            self.wrapped = dict(modules)
            return self.wrapped
        out = {}
        for k, m in modules.items():
            if self.mode == "fsdp":
                from torch.distributed.fsdp import fully_shard

                mp = self.mixed_precision()
                for b in blocks.get(k, []):
                    fully_shard(b, mp_policy=mp)
                out[k] = fully_shard(m, mp_policy=mp)  # the root: embeddings, head, what no block holds
            else:
                import inspect

                from torch.nn.parallel import DistributedDataParallel as DDP

                # buffers are identical on every rank (masks, ids): no per-forward buffer sync
                sync = (
                    {"forward_sync_buffers": False}
                    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
                    else {"broadcast_buffers": False}
                )
                out[k] = DDP(
                    m,
                    device_ids=[self.device.index] if self.device.type == "cuda" else None,
                    find_unused_parameters=False,
                    **sync,
                )
        self.wrapped = out
        return out

    def no_sync(self, last_micro: bool):
        """Context for one micro-batch: no gradient all-reduce unless it is the step's last one
        (FSDP2: no reduce-scatter; the unsharded gradients accumulate until the last micro-batch)."""
        stack = contextlib.ExitStack()
        if self.world > 1:
            for m in self.wrapped.values():
                if hasattr(m, "set_requires_gradient_sync"):  # FSDP2
                    m.set_requires_gradient_sync(last_micro)
                elif not last_micro and hasattr(m, "no_sync"):
                    stack.enter_context(m.no_sync())
        return stack

    def clip_fn(self, params: List[nn.Parameter]) -> Callable[[float], torch.Tensor]:
        """Gradient clipping of sharded parameters: the global norm (a collective), then the scale."""

        def clip(max_norm: float) -> torch.Tensor:
            grads = [p.grad for p in params if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads)
            if hasattr(norm, "full_tensor"):  # a DTensor: the sum of the shards' squares over ranks
                norm = norm.full_tensor()
            torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, norm)
            return norm

        return clip

    def module_of(self, optim_name: str) -> str:
        """The module an optimizer belongs to: the same name, else the first module."""
        return optim_name if optim_name in self.modules else next(iter(self.modules))

    def module_state(self, name: str) -> Dict[str, torch.Tensor]:
        """Full CPU state dict of module ``name`` (collective under FSDP)."""
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(
                self.wrapped[name], options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return {k: v.detach().cpu().clone() for k, v in self.modules[name].state_dict().items()}

    def optim_state(self, name: str, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
        """Full state dict of optimizer ``name`` (collective under FSDP)."""
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(
                self.wrapped[self.module_of(name)],
                optimizer,
                options=StateDictOptions(full_state_dict=True, cpu_offload=True),
            )
        return optimizer.state_dict()

    def load_optim_state(self, name: str, optimizer: torch.optim.Optimizer, state: Dict[str, Any]) -> None:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(
                self.wrapped[self.module_of(name)], optimizer, state, options=StateDictOptions(full_state_dict=True)
            )
        else:
            optimizer.load_state_dict(state)

    # ---- sharded (torch.distributed.checkpoint) state: each rank's own shards, no gather ----
    def sharded_state(self, optim_specs: Dict[str, Any]) -> Dict[str, Any]:
        """``{"modules": {name: sd}, "optimizers": {name: sd}}`` with DTensor shards under FSDP (plain
        tensors otherwise), keyed by parameter names so any world size can load them."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        mods = {k: get_model_state_dict(self._target(k)) for k in self.modules}
        opts = {
            k: get_optimizer_state_dict(self._target(self.module_of(k)), spec.optimizer)
            for k, spec in optim_specs.items()
        }
        return {"modules": mods, "optimizers": opts}

    def load_sharded_state(self, state: Dict[str, Any], optim_specs: Dict[str, Any]) -> None:
        """Put what :meth:`sharded_state`'s layout loaded (re-sharded by DCP) into modules and optimizers."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        for k in self.modules:
            set_model_state_dict(self._target(k), state["modules"][k])
        for k, spec in optim_specs.items():
            if k in state["optimizers"]:
                set_optimizer_state_dict(self._target(self.module_of(k)), spec.optimizer, state["optimizers"][k])

    def _target(self, name: str) -> nn.Module:
        # FSDP2 modules are the modules themselves; DDP's wrapper would prefix "module." to every name
        return self.wrapped.get(name, self.modules[name]) if self.fsdp else self.modules[name]
