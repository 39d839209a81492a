"""Low-precision CPU inference as explicit swaps: int8 linears for the transformer; bf16 lives in ``accel.cpu``.

bf16 (``pipe.to(torch.bfloat16)`` / ``set_precision("bf16")``): the pipeline casts the blocks and the decoder
to bf16 (``FLOAT32_PARTS`` stay fp32) and samples under bf16 autocast; ``accel.cpu`` then runs bf16 GEMMs
(oneDNN: AMX or AVX512-BF16), SDPA and a bf16 KV cache in the blocks with the modulated LayerNorm written
straight into bf16 (``CPUAdaLNSelfAttn._forward_bf16``), a float32 residual stream, float32 logits and
sampling, and the decoder in bf16 channels-last oneDNN convolutions (Winograd is fp32 only).

int8 (``enable_int8_linears(var)`` / ``set_precision("int8")``): the four linears of every block (qkv,
attention projection, fc1, fc2) run as torch's dynamic int8 linear (``torch.ao.nn.quantized.dynamic.Linear``:
weights int8 per output channel, activations quantised per call, fbgemm / oneDNN VNNI kernels); the
embeddings, AdaLN, head, attention and the decoder stay fp32. The swap adds no parameters: the float32
weights stay (state dict, ``save_pretrained`` and ``strict=True`` loading unchanged) and the packed int8
copy (a quarter of their size) is cached on the module, re-made when a weight changes (its version
counter). Anything but CPU fp32 inference (autograd, autocast, ``reference_kernels()``, i.e. Gumbel
smoothing) computes the plain float32 linear. ``disable_int8_linears`` undoes it.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale.accel.cpu import fast_fp32
from nextscale.models.var import VAR

__all__ = ["Int8Linear", "enable_int8_linears", "disable_int8_linears", "int8_enabled", "int8_available"]


def int8_available() -> bool:
    """Whether this torch build has a quantised engine for dynamic int8 linears on x86/ARM CPUs."""
    engines = torch.backends.quantized.supported_engines
    return any(e in engines for e in ("x86", "fbgemm", "onednn", "qnnpack"))


def _quantize(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Module:
    """torch's dynamic int8 linear for (weight, bias), weights quantised per output channel."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    lin.weight = nn.Parameter(weight.detach().float(), requires_grad=False)
    if bias is not None:
        lin.bias = nn.Parameter(bias.detach().float(), requires_grad=False)
    lin.qconfig = per_channel_dynamic_qconfig
    with warnings.catch_warnings():  # torch 2.13 marks eager quantisation deprecated (moving to torchao)
        warnings.simplefilter("ignore")
        return DynamicQuantizedLinear.from_float(lin)


class Int8Linear(nn.Linear):
    """``nn.Linear`` whose CPU fp32 inference runs as a dynamic int8 linear (module docstring)."""

    is_int8 = True

    def forward(self, x):
        return self.linear(x, self.bias, (self.bias,))

    def linear(self, x: torch.Tensor, bias: Optional[torch.Tensor], sources: Sequence[Optional[torch.Tensor]]):
        """``F.linear(x, self.weight, bias)`` in int8 on the fast path; ``sources``: the tensors ``bias`` is made
        of (the cache is re-made when any of them or the weight changes)."""
        if not fast_fp32(x):
            return F.linear(x, self.weight, bias)
        key = tuple((t.data_ptr(), t._version) for t in (self.weight, *sources) if t is not None)
        cached = self.__dict__.get("_int8_cache")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_int8_cache"] = (key, _quantize(self.weight, bias))
        return cached[1](x)


def _block_linears(var: VAR):
    for b in var.blocks:
        yield b.attn, "mat_qkv"
        yield b.attn, "proj"
        yield b.ffn, "fc1"
        yield b.ffn, "fc2"


def enable_int8_linears(module: nn.Module) -> nn.Module:
    """Give every VAR inside ``module`` int8 block linears (in place; idempotent). The CPU kernels
    (``accel.cpu.enable_cpu_kernels``) must be on: they route the attention's qkv and the FFN through them."""
    from nextscale.accel.cpu import enable_cpu_kernels

    enable_cpu_kernels(module)
    for m in module.modules():
        if isinstance(m, VAR):
            for owner, name in _block_linears(m):
                lin = getattr(owner, name)
                if isinstance(lin, nn.Linear) and not isinstance(lin, Int8Linear):
                    lin.__class__ = Int8Linear
    return module


def disable_int8_linears(module: nn.Module) -> nn.Module:
    """Undo ``enable_int8_linears``: the float32 linears again (as ``enable_cpu_kernels`` sets them)."""
    from nextscale.accel.cpu import SmallRowsLinear

    for m in module.modules():
        if isinstance(m, VAR):
            for owner, name in _block_linears(m):
                lin = getattr(owner, name)
                if isinstance(lin, Int8Linear):
                    lin.__dict__.pop("_int8_cache", None)
                    lin.__class__ = nn.Linear if name == "mat_qkv" else SmallRowsLinear
    return module


def int8_enabled(module: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in module.modules())
