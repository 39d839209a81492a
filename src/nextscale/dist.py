"""Distributed helpers: torchrun initialisation, rank queries, collectives, rank-0 printing.

Works the same with one process (nothing initialised: rank 0 of 1) and under ``torchrun``::

    torchrun --nproc_per_node=8 -m nextscale train ...                        # one node, 8 GPUs
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 \\
             --nproc_per_node=8 -m nextscale train ...                        # two nodes

The backend is NCCL when CUDA is available, gloo otherwise (CPU). Nothing here patches builtins:
use :func:`print0` where only rank 0 should speak.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, List, Optional

import torch
import torch.distributed as tdist

__all__ = [
    "init_distributed",
    "destroy",
    "initialized",
    "get_rank",
    "get_world_size",
    "get_local_rank",
    "is_main",
    "is_local_main",
    "barrier",
    "all_reduce_sum",
    "all_reduce_max",
    "all_gather_object",
    "broadcast_object",
    "print0",
    "get_device",
    "launched_by_torchrun",
]

_DEVICE: Optional[torch.device] = None


def launched_by_torchrun() -> bool:
    """True when the environment carries torchrun's rendezvous variables."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(
    device: Optional[str] = None, backend: Optional[str] = None, timeout_min: float = 30.0
) -> torch.device:
    """Join the process group described by torchrun's environment (no-op for a plain launch).

    Returns the device this rank should use: ``cuda:LOCAL_RANK`` with CUDA, else ``cpu``
    (or ``device`` when given explicitly).
    """
    global _DEVICE
    if device is None:
        device = f"cuda:{get_local_rank()}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", get_local_rank())
        torch.cuda.set_device(dev)
    if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1 and not tdist.is_initialized():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        kw = dict(backend=backend, timeout=datetime.timedelta(minutes=timeout_min))
        if backend == "nccl":
            kw["device_id"] = dev
        kw.update(_elastic_store(kw["timeout"]))
        tdist.init_process_group(**kw)
    _DEVICE = dev
    return dev


def _elastic_store(timeout: datetime.timedelta) -> dict:
    """After a torchrun restart (``--max-restarts``), a store of this attempt's own.

    The workers of a restarted attempt join the agent's store again, which still holds the previous
    attempt's keys: the process group would then connect to the dead workers' addresses ("Gloo
    connectFullMesh failed ... Connection refused"). A prefix per attempt keeps the attempts apart."""
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restart == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    world = int(os.environ["WORLD_SIZE"])
    store = tdist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False, timeout=timeout
    )
    prefixed = tdist.PrefixStore(f"nextscale/attempt_{restart}", store)
    return {"store": prefixed, "rank": int(os.environ["RANK"]), "world_size": world}


def destroy() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def get_rank() -> int:
    return tdist.get_rank() if initialized() else int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    return tdist.get_world_size() if initialized() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return get_rank() == 0


def is_local_main() -> bool:
    return get_local_rank() == 0


def get_device() -> torch.device:
    return _DEVICE if _DEVICE is not None else torch.device("cpu")


def barrier() -> None:
    if initialized():
        tdist.barrier()


def _comm_device() -> torch.device:
    return get_device() if tdist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (returns a new tensor; identity with one process)."""
    if not initialized():
        return t.clone()
    out = t.detach().to(_comm_device(), copy=True)
    tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
    return out.to(t.device)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if not initialized():
        return t.clone()
    out = t.detach().to(_comm_device(), copy=True)
    tdist.all_reduce(out, op=tdist.ReduceOp.MAX)
    return out.to(t.device)


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj`` as a list indexed by rank."""
    if not initialized():
        return [obj]
    out: List[Any] = [None] * get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not initialized():
        return obj
    box = [obj if get_rank() == src else None]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def print0(*args, **kwargs) -> None:
    """``print`` on rank 0 only (flushes)."""
    if is_main():
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)
