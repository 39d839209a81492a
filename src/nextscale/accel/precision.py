"""Which low precisions are fast on this machine, and what a precision name means.

One helper, :func:`cpu_capabilities`, answers "does this CPU have bf16 / int8 units?" from torch's own
query (``torch.cpu._is_amx_tile_supported`` & co., what oneDNN and fbgemm dispatch on) with
``/proc/cpuinfo`` flags as the fallback; ``nextscale info`` and ``--help`` print its answer.

Precisions (``PRECISIONS``; the CLI's ``--dtype``, the pipelines' ``set_precision``):

- ``fp32``: the exact path (the default everywhere on CPU): the reference's tokens for a seed.
- ``bf16``: bf16 weights for the transformer blocks and the decoder (``FLOAT32_PARTS`` stay fp32),
  bf16 GEMMs, attention and KV cache, fp32 residual stream, logits and sampling
  (``nextscale.accel.cpu`` runs its CPU kernels in bf16 too). Fast where the CPU has AMX-BF16 or
  AVX512-BF16 (or on a GPU); elsewhere bf16 is emulated in software and several times slower than
  fp32: it still runs (bf16 halves the weights' memory, a valid reason to ask for it) but warns once
  per process, with the reason (:func:`check_precision`). Never picked silently.
- ``int8``: the transformer blocks' linear layers as dynamic int8 (torch's own quantised linear,
  fbgemm/oneDNN; weights int8 per output channel, activations quantised per call); everything else
  fp32. CPU only. Fast with VNNI (AVX512-VNNI / AVX-VNNI / AMX-INT8); warns once without.
- ``auto``: bf16 on a GPU and on CPUs with AMX-BF16 (where bf16 runs 3.6-4x fp32 matmul speed);
  fp32 everywhere else, including AVX512-BF16 CPUs (there bf16 is faster too but the choice is left
  to the user: ``auto`` only switches where the gain is large and was measured in the issue).
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from nextscale.errors import FieldError, FieldName

__all__ = [
    "PRECISIONS",
    "CPUCapabilities",
    "cpu_capabilities",
    "fast_precisions",
    "resolve_precision",
    "check_precision",
    "LowPrecisionWarning",
    "precision_advice",
]

PRECISIONS = ("fp32", "bf16", "int8", "auto")


class LowPrecisionWarning(UserWarning):
    """A low precision was asked for on a CPU without the units that make it fast (emitted once per process)."""


@dataclass(frozen=True)
class CPUCapabilities:
    """What this CPU offers for low precision (``cpu_capabilities()``)."""

    model_name: str  # /proc/cpuinfo "model name" ("" when unknown)
    torch_capability: str  # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ...
    amx_bf16: bool  # Intel AMX tiles with bf16 (Sapphire Rapids and later)
    avx512_bf16: bool  # AVX512-BF16 dot products (Cooper Lake, AMD Zen 4 and later)
    vnni: bool  # int8 dot products: AVX512-VNNI, AVX-VNNI or AMX-INT8
    avx2: bool

    @property
    def bf16_fast(self) -> bool:
        return self.amx_bf16 or self.avx512_bf16

    @property
    def int8_fast(self) -> bool:
        return self.vnni

    def units(self) -> Tuple[str, ...]:
        names = ("amx_bf16", "avx512_bf16", "vnni", "avx2")
        return tuple(n.upper().replace("_", "-") for n in names if getattr(self, n))

    def describe(self) -> str:
        """``AMD EPYC (torch AVX512; AVX512-BF16, VNNI, AVX2)``: the CPU kind benchmark tables print."""
        name = self.model_name or "unknown CPU"
        return f"{name} (torch {self.torch_capability}; {', '.join(self.units()) or 'no bf16/int8 units'})"


def _cpuinfo() -> Tuple[str, frozenset]:
    """(model name, flags) of the first processor in /proc/cpuinfo; ("", {}) where there is none."""
    name, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = val.strip()
                elif key == "flags" and not flags:
                    flags = frozenset(val.split())
                if name and flags:
                    break
    except OSError:
        pass
    return name, flags


def _torch_query(fn: str, fallback: bool) -> bool:
    """torch's own CPU feature query (cpuinfo + OS support, what its kernels dispatch on), or ``fallback``
    where this torch build lacks it."""
    q = getattr(torch.cpu, fn, None)
    if q is None:
        return fallback
    try:
        return bool(q())
    except Exception:  # noqa: BLE001 - a query that fails says nothing; the flags decide
        return fallback


@functools.lru_cache(maxsize=1)
def cpu_capabilities() -> CPUCapabilities:
    """This CPU's low-precision units (cached; ``cpu_capabilities.cache_clear()`` re-reads)."""
    name, flags = _cpuinfo()
    amx = _torch_query("_is_amx_tile_supported", "amx_tile" in flags) and ("amx_bf16" in flags or not flags)
    return CPUCapabilities(
        model_name=name,
        torch_capability=torch.backends.cpu.get_cpu_capability(),
        amx_bf16=amx,
        avx512_bf16=_torch_query("_is_avx512_bf16_supported", "avx512_bf16" in flags),
        vnni=_torch_query("_is_vnni_supported", bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})),
        avx2=_torch_query("_is_avx2_supported", "avx2" in flags),
    )


def fast_precisions(caps: Optional[CPUCapabilities] = None) -> Tuple[str, ...]:
    """The precisions that run fast on this CPU: always fp32, bf16 with AMX/AVX512-BF16, int8 with VNNI."""
    caps = caps or cpu_capabilities()
    return ("fp32",) + (("bf16",) if caps.bf16_fast else ()) + (("int8",) if caps.int8_fast else ())


def precision_advice(caps: Optional[CPUCapabilities] = None) -> str:
    """One line for ``nextscale info`` / ``--help``: what is fast here and what ``auto`` picks."""
    caps = caps or cpu_capabilities()
    slow = [p for p in ("bf16", "int8") if p not in fast_precisions(caps)]
    line = f"fast precisions on this CPU: {', '.join(fast_precisions(caps))}"
    if slow:
        line += f" ({', '.join(slow)} emulated: slower than fp32)"
    return line + f"; auto picks {resolve_precision('auto', 'cpu', caps=caps)} here"


def _is_cpu(device) -> bool:
    return torch.device(device if device is not None else "cpu").type == "cpu"


def resolve_precision(precision: str, device=None, caps: Optional[CPUCapabilities] = None) -> str:
    """``precision`` (one of ``PRECISIONS``) as the one that runs: ``auto`` -> bf16 on a GPU and on CPUs with
    AMX-BF16, else fp32. The others are returned as given (``check_precision`` judges them)."""
    if precision not in PRECISIONS + ("fp16",):
        raise FieldError(FieldName("precision"), f" must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if not _is_cpu(device):
        return "bf16"
    caps = caps or cpu_capabilities()
    return "bf16" if caps.amx_bf16 else "fp32"


_warned = set()


def check_precision(precision: str, device=None, caps: Optional[CPUCapabilities] = None) -> str:
    """Resolve ``precision`` for ``device`` and judge it: int8 off CPU is refused (``FieldError``); bf16 / int8
    on a CPU without their units warn once per process (``LowPrecisionWarning``) with the reason, and run.
    ``NEXTSCALE_LOWPREC_QUIET=1`` silences the warning (a user who has read it once)."""
    p = resolve_precision(precision, device, caps)
    if not _is_cpu(device):
        if p == "int8":
            raise FieldError(FieldName("precision"), " int8 is a CPU mode (dynamic int8 linears); use bf16 on a GPU")
        return p
    caps = caps or cpu_capabilities()
    why = None
    if p == "bf16" and not caps.bf16_fast:
        why = (
            "this CPU has no bf16 units (no AMX-BF16 or AVX512-BF16): bf16 runs emulated, several times slower "
            "than fp32 (it still halves the weights' memory); fp32 is the fast and exact choice here"
        )
    elif p == "int8" and not caps.int8_fast:
        why = "this CPU has no VNNI (AVX512-VNNI / AVX-VNNI / AMX-INT8): int8 linears gain little or nothing over fp32"
    if why and p not in _warned and os.environ.get("NEXTSCALE_LOWPREC_QUIET") != "1":
        _warned.add(p)
        warnings.warn(f"precision {p}: {why} ({caps.describe()})", LowPrecisionWarning, stacklevel=3)
    return p
