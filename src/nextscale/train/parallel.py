"""Data parallelism of the training loop (:class:`Parallel`): wrapping the objective's modules in DDP
or FSDP (FULL_SHARD), skipping the gradient all-reduce on accumulation micro-batches, and the
full (gathered) state dicts a checkpoint needs from sharded modules and optimizers."""

from __future__ import annotations

import contextlib
from typing import Any, Dict

import torch
import torch.nn as nn

__all__ = ["Parallel"]


class Parallel:
    def __init__(self, device: torch.device, world: int, fsdp: bool = False):
        self.device, self.world, self.fsdp = torch.device(device), world, fsdp
        self.modules: Dict[str, nn.Module] = {}
        self.wrapped: Dict[str, nn.Module] = {}

    def wrap(self, modules: Dict[str, nn.Module]) -> Dict[str, nn.Module]:
        """The modules to run training forwards through (the modules themselves in one process)."""
        self.modules = dict(modules)
        if self.world == 1:
            self.wrapped = dict(modules)
            return self.wrapped
        out = {}
        for k, m in modules.items():
            if self.fsdp:
                from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
                from torch.distributed.fsdp import ShardingStrategy

                out[k] = FSDP(
                    m,
                    sharding_strategy=ShardingStrategy.FULL_SHARD,
                    use_orig_params=True,
                    device_id=self.device if self.device.type == "cuda" else None,
                )
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
        """Context for one micro-batch: no gradient all-reduce unless it is the step's last one."""
        stack = contextlib.ExitStack()
        if not last_micro and self.world > 1:
            for m in self.wrapped.values():
                if hasattr(m, "no_sync"):
                    stack.enter_context(m.no_sync())
        return stack

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
