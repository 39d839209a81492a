"""The memory budget of a request: its estimated peak against the memory this process may still use,
refused up front (with the estimate and the fix) instead of being killed by the kernel minutes later.

Available memory: on a GPU ``torch.cuda.mem_get_info`` (free bytes); on the CPU the kernel's
``MemAvailable`` (``/proc/meminfo``; psutil's ``available`` where /proc is absent), capped by the
cgroup's limit minus its usage (a container's ``memory.max``, v2, or ``memory.limit_in_bytes``, v1).
None when nothing says (the check then passes). Estimates are lower bounds of the real peak (the
allocator's slack, temporaries and the interpreter come on top), so a refusal is never a false alarm
for the estimate's part; ``NEXTSCALE_MEMORY_LIMIT`` (bytes, or with a K/M/G suffix) overrides the
available memory (tests, or a share of a shared machine).
"""

from __future__ import annotations

import os
from typing import Optional

from nextscale.errors import FieldError

__all__ = ["available_memory", "check_memory", "fmt_bytes"]


def fmt_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _parse_bytes(s: str) -> Optional[int]:
    s = s.strip().upper().rstrip("B").rstrip("I")
    mult = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}.get(s[-1:], 1)
    try:
        return int(float(s[:-1] if mult > 1 else s) * mult)
    except ValueError:
        return None


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            v = f.read().strip()
    except OSError:
        return None
    return int(v) if v.isdigit() else None


def _cgroup_room() -> Optional[int]:
    """The cgroup's limit minus its usage (None: no limit)."""
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        lim = _read_int(limit)
        if lim is not None and lim < 1 << 60:  # v1 says "no limit" with a huge number
            return max(0, lim - (_read_int(usage) or 0))
    return None


def _host_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or unsupported here: nothing says
        return None


def available_memory(device=None) -> Optional[int]:
    """Bytes this process may still allocate on ``device`` (None / cpu: host memory); None when unknown."""
    env = os.environ.get("NEXTSCALE_MEMORY_LIMIT")
    if env:
        v = _parse_bytes(env)
        if v is not None:
            return v
    if device is not None and str(device).startswith("cuda"):
        import torch

        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, AssertionError):
            return None
    host, room = _host_available(), _cgroup_room()
    if host is None or room is None:
        return host if room is None else room
    return min(host, room)


def check_memory(estimate: float, what: str, fix, device=None) -> None:
    """Refuse a request whose estimated peak ``estimate`` (bytes) exceeds the available memory.

    ``what`` says what needs it ("20 images of 256x256"); ``fix`` is the remedy, a string or the parts
    of a :class:`FieldError` (field names as :class:`~nextscale.errors.FieldName`, a front end shows its flag)."""
    have = available_memory(device)
    if have is None or estimate <= have:
        return
    where = "GPU memory" if device is not None and str(device).startswith("cuda") else "memory"
    parts = fix if isinstance(fix, (tuple, list)) else (fix,)
    raise FieldError(
        f"{what} needs about {fmt_bytes(estimate)} but only {fmt_bytes(have)} of {where} is available; ", *parts
    )
