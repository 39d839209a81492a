"""CPU inference kernels for the VAR transformer and the VQ-VAE decoder, as explicit module swaps.

``enable_cpu_kernels(module)`` walks a model and gives the modules listed in ``SWAPS`` a subclass
whose forward computes the same function faster on CPU in float32 without autograd; every other
case (training, autograd, CUDA, half precision, ``reference_kernels()``) runs the parent class's
forward, which is the reference math in ``nextscale.models``. Subclasses add no parameters or
buffers, so the state dict, ``load_state_dict`` and ``strict=True`` loading are unchanged.
``disable_cpu_kernels(module)`` swaps them back and frees the cached Winograd weights.

What each swap does, measured on a 2-core AVX2 machine, d16, batch 1 (docs/speed.md has the
end-to-end tables; ``benchmarks/bench_inference.py`` prints them):

===============================  ==========================================  ==================
swap                             why                                         gain (this CPU)
===============================  ==========================================  ==================
``nn.Linear`` -> ``SmallRowsLinear``  (W @ x^T) for <= 128 rows: MKL streams    up to 1.7x on the
  (fc1, fc2, attn proj, head)    the weights at a third of the bandwidth      early scales
                                 for x @ W^T with 2-72 rows
``SelfAttention`` -> ``CPUSelfAttention``  the same few-row product for qkv   (same)
``FFN`` -> ``CPUFFN``            (rows, 4C) hidden layer in two reused       ~1.1x per block
                                 buffers; GELU-tanh as x*sigmoid(2z) in      (GELU alone 1.8x)
                                 place
``AdaLNSelfAttn`` -> ``CPUAdaLNSelfAttn``  modulation and gated residual as   one pass instead of
                                 one fused multiply-add each (``addcmul``)    three over (B,L,C)
``ResnetBlock`` -> ``InplaceResnetBlock``  SiLU and the residual sum in place  no page faults on
                                                                              42 MB activations
``VQVAE`` -> ``CPUVQVAE``        channels-last decoding (oneDNN ~10% faster,   1.7-2.1x decoder
  + 3x3 convs -> ``WinogradConv2d``  Winograd reads NHWC); Winograd F(4x4,3x3)  with Winograd
                                 where ``winograd_pays``
===============================  ==========================================  ==================

Tolerance (``tests/test_accel.py``): the accelerated transformer's logits equal the plain ones to
~1e-6 relative (float summation order only) and sampling gives the same tokens; the decoder's
images are within 1e-4 of the direct convolution (Winograd rounding, 5.0e-5 measured at 256 px).
The encoder keeps the direct convs, so token ids from images are bit-identical to the reference.

bf16 (``pipe.to(torch.bfloat16)``, ``accel.precision``): under bf16 autocast ``CPUAdaLNSelfAttn`` writes each
modulated LayerNorm output once, straight into the bf16 tensor the bf16 GEMMs read, and keeps the residual
stream float32 (``_fast_bf16``); the other kernels step aside (oneDNN's bf16 GEMMs need no row trick) and the
decoder runs channels-last in bf16 (oneDNN; Winograd is float32 only). ``accel.lowprec``'s int8 linears plug
into ``CPUSelfAttention.qkv`` and ``CPUFFN``.

Sampling with Gumbel smoothing turns logits into soft codes at temperatures down to 0.005, which
amplifies rounding ~200x; ``nextscale.sampling.generate`` therefore runs under
``reference_kernels()`` when ``more_smooth`` is on (a thread-local switch, like ``torch.no_grad``).
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Dict, Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale.accel.winograd import drop_winograd_cache, winograd_conv2d, winograd_eligible, winograd_pays
from nextscale.accel.workspace import workspace
from nextscale.models.var import FFN, VAR, AdaLNSelfAttn, SelfAttention
from nextscale.models.vqvae import VQVAE, ResnetBlock

__all__ = [
    "enable_cpu_kernels",
    "disable_cpu_kernels",
    "cpu_kernels",
    "cpu_kernels_enabled",
    "reference_kernels",
    "SMALL_ROWS",
    "SmallRowsLinear",
    "CPUSelfAttention",
    "CPUFFN",
    "CPUAdaLNSelfAttn",
    "InplaceResnetBlock",
    "CPUVQVAE",
    "WinogradConv2d",
    "Float32Linear",
    "Float32SmallRowsLinear",
]

#: Row count up to which a linear layer is computed as (W @ x^T)^T (see ``small_rows_linear``).
SMALL_ROWS = 128

_tls = threading.local()


@contextlib.contextmanager
def reference_kernels(enabled: bool = True):
    """Within this block the swapped modules run their parent's forward: the reference's kernels
    and operation order (``F.linear``, aten's GELU, multiply-then-add, direct convs). Thread-local."""
    prev = getattr(_tls, "reference", False)
    _tls.reference = enabled
    try:
        yield
    finally:
        _tls.reference = prev


def fast_fp32(x: torch.Tensor) -> bool:
    """Whether the CPU kernels apply: CPU, float32, no autograd, not inside ``reference_kernels``."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not getattr(_tls, "reference", False)
        and not torch.is_autocast_enabled("cpu")
    )


def _fast_bf16(x: torch.Tensor) -> bool:
    """Whether the bf16 CPU kernels apply: CPU inference under bf16 autocast (``pipe.to(torch.bfloat16)``)
    on a float32 residual stream, no autograd, not inside ``reference_kernels``."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not getattr(_tls, "reference", False)
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


def small_rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``F.linear``, computed as (W @ x^T)^T for at most ``SMALL_ROWS`` rows.

    Sampling runs the early scales on 2-72 rows (1x1 ... 6x6 tokens, twice for guidance), where
    MKL's x @ W^T streams the weights at a third of the memory bandwidth on 2 threads; the same
    product with the weight as the left operand runs up to 1.7x faster there. Same values up to
    float summation order."""
    rows = x.numel() // x.shape[-1]
    if rows > SMALL_ROWS or not fast_fp32(x):
        return F.linear(x, weight, bias)
    x_MK = x.reshape(rows, x.shape[-1])
    y_NM = torch.addmm(bias.unsqueeze(1), weight, x_MK.t()) if bias is not None else weight @ x_MK.t()
    return y_NM.t().reshape(*x.shape[:-1], weight.shape[0])


def _gelu_tanh_into(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """GELU-tanh of ``x`` written into ``out`` (not ``x``) with in-place steps only, evaluated as
    x * sigmoid(2z), z = sqrt(2/pi) (x + 0.044715 x^3): the same function, 1.8x faster than aten's."""
    k = 2 * math.sqrt(2 / math.pi)
    return torch.mul(x, x, out=out).mul_(0.044715 * k).add_(k).mul_(x).sigmoid_().mul_(x)


class SmallRowsLinear(nn.Linear):
    def forward(self, x):
        return small_rows_linear(x, self.weight, self.bias)


class _Float32Compute:
    """For the linears whose weights ``FLOAT32_PARTS`` keeps float32 (the head, the word embedding, the head's
    AdaLN): on CPU inference under autocast they compute in float32 too, not just store float32 weights.
    The head decides which token is picked; a bf16 GEMM there moves every logit by ~0.4 %. It is ~2 % of the
    transformer's FLOPs. Elsewhere (GPU, autograd, ``reference_kernels()``) autocast applies as usual."""

    def forward(self, x):
        if (
            x.device.type == "cpu"
            and self.weight.dtype == torch.float32
            and torch.is_autocast_enabled("cpu")
            and not torch.is_grad_enabled()
            and not getattr(_tls, "reference", False)
        ):
            with torch.autocast(device_type="cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)


class Float32Linear(_Float32Compute, nn.Linear):
    pass


class Float32SmallRowsLinear(_Float32Compute, SmallRowsLinear):
    pass


class CPUSelfAttention(SelfAttention):
    def qkv(self, x_BLC: torch.Tensor) -> torch.Tensor:
        if getattr(self.mat_qkv, "is_int8", False):  # accel.lowprec's int8 linear, with the q/k/v bias
            return self.mat_qkv.linear(x_BLC, self.qkv_bias(), (self.q_bias, self.v_bias))
        return small_rows_linear(x_BLC, self.mat_qkv.weight, self.qkv_bias())


class CPUFFN(FFN):
    def forward(self, x):
        if not fast_fp32(x) or self.training:
            return super().forward(x)
        rows = x.numel() // x.shape[-1]
        if rows <= SMALL_ROWS or self.fc1._forward_hooks or self.fc1._forward_pre_hooks or self._int8():
            h = self.fc1(x)  # few rows: weight-bound linears; or fc1 is hooked or int8: call it as a module
            return self.fc2(_gelu_tanh_into(h, torch.empty_like(h)))
        return self.fc2(self._hidden(x.reshape(rows, -1)).view(*x.shape[:-1], -1))

    def _int8(self) -> bool:
        return getattr(self.fc1, "is_int8", False)

    def _hidden(self, x_MC: torch.Tensor) -> torch.Tensor:
        """gelu(fc1(x)) in two reused buffers (``accel.workspace``): the (rows, 4C) hidden layer is
        the largest activation, and fresh buffers for it cost page faults on every call. fc2 reads
        the result before the next call reuses the buffers."""
        M, H = x_MC.shape[0], self.fc1.out_features
        pre = workspace("ffn_pre", M * H, x_MC.device).view(M, H)
        torch.addmm(self.fc1.bias, x_MC, self.fc1.weight.t(), out=pre)
        return _gelu_tanh_into(pre, workspace("ffn_act", M * H, x_MC.device).view(M, H))


class CPUAdaLNSelfAttn(AdaLNSelfAttn):
    def forward(self, x, cond_BD, attn_bias, kv_cache=None, mod_B16C=None):
        if self.training or not (fast_fp32(x) or _fast_bf16(x)):
            return super().forward(x, cond_BD, attn_bias, kv_cache, mod_B16C)
        if _fast_bf16(x):
            return self._forward_bf16(x, cond_BD, attn_bias, kv_cache, mod_B16C)
        if mod_B16C is None:
            mod_B16C = self.modulation(cond_BD)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mod_B16C.unbind(2)  # 6 x (B, 1, C)
        # modulation and gated residual each in one pass over (B, L, C) (fused multiply-add)
        h = self.attn(torch.addcmul(shift1, self.ln_wo_grad(x), scale1 + 1), attn_bias=attn_bias, kv_cache=kv_cache)
        x = torch.addcmul(x, h, gamma1)
        return torch.addcmul(x, self.ffn(torch.addcmul(shift2, self.ln_wo_grad(x), scale2 + 1)), gamma2)

    def _forward_bf16(self, x, cond_BD, attn_bias, kv_cache, mod_B16C):
        """Under bf16 autocast: the residual stream stays float32; each modulated LayerNorm output is written
        once, in float32 arithmetic, straight into the bf16 tensor the bf16 GEMMs read (the plain path
        writes it in float32 and autocast copies it to bf16 for every linear); the gated residual adds
        read the bf16 branch outputs in one fused multiply-add each."""
        if mod_B16C is None:
            mod_B16C = self.modulation(cond_BD)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mod_B16C.unbind(2)  # 6 x (B, 1, C)
        a = torch.empty(x.shape, dtype=torch.bfloat16, device=x.device)
        h = self.attn(torch.addcmul(shift1, self.ln_wo_grad(x), scale1 + 1, out=a), attn_bias, kv_cache)
        x = torch.addcmul(x, h, gamma1)
        f = self.ffn(torch.addcmul(shift2, self.ln_wo_grad(x), scale2 + 1, out=a))
        return torch.addcmul(x, f, gamma2)


class InplaceResnetBlock(ResnetBlock):
    def forward(self, x):
        if torch.is_grad_enabled():
            return super().forward(x)
        # SiLU and the residual sum in place: at 256 px a decoder activation is 42 MB, and fresh
        # buffers cost page faults on every call
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=True)))
        return h.add_(self.nin_shortcut(x))


class WinogradConv2d(nn.Conv2d):
    """A 3x3 / stride 1 / padding 1 conv computed with Winograd F(4x4, 3x3) where it pays
    (``accel.winograd``): 4x fewer multiplies; the transformed weights (4x the conv's size: ~0.9 GB
    for the released tokenizer) are cached on the module until ``disable_cpu_kernels``."""

    def forward(self, x):
        if (
            fast_fp32(x)
            and self.weight.dtype == torch.float32
            and winograd_pays(self.in_channels, self.out_channels, x.shape[-2], x.shape[-1])
        ):
            return winograd_conv2d(self, x)
        return super().forward(x)


class CPUVQVAE(VQVAE):
    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        # decode in channels-last layout: oneDNN convolutions run ~10% faster in NHWC and the
        # Winograd path reads NHWC (values equal up to float reordering). On an H100 the layout made
        # no difference in fp32 and cost 3 ms at batch 1 in bf16, so CUDA keeps NCHW.
        if f_hat.device.type != "cpu" or getattr(_tls, "reference", False):
            return super().fhat_to_img(f_hat)
        h = self.post_quant_conv(f_hat).contiguous(memory_format=torch.channels_last)
        return self.decoder(h).clamp_(-1, 1).contiguous()


#: base class -> accelerated subclass, for modules of exactly the base class.
SWAPS: Dict[Type[nn.Module], Type[nn.Module]] = {
    SelfAttention: CPUSelfAttention,
    FFN: CPUFFN,
    AdaLNSelfAttn: CPUAdaLNSelfAttn,
    ResnetBlock: InplaceResnetBlock,
    VQVAE: CPUVQVAE,
}
_UNSWAP = {v: k for k, v in {**SWAPS, nn.Linear: SmallRowsLinear, nn.Conv2d: WinogradConv2d}.items()}
_UNSWAP.update({Float32Linear: nn.Linear, Float32SmallRowsLinear: nn.Linear})


def _linears(var: VAR):
    """(linear, class) pairs: FFN fc1/fc2 and attention proj take ``SmallRowsLinear``, the head
    ``Float32SmallRowsLinear``; the word embedding and the head's AdaLN see B rows once per call and take
    ``Float32Linear`` (plain ``F.linear``, float32 under autocast)."""
    for b in var.blocks:
        yield b.ffn.fc1, SmallRowsLinear
        yield b.ffn.fc2, SmallRowsLinear
        yield b.attn.proj, SmallRowsLinear
    yield var.head, Float32SmallRowsLinear
    yield var.word_embed, Float32Linear
    yield var.head_nm.ada_lin[-1], Float32Linear


def enable_cpu_kernels(module: nn.Module) -> nn.Module:
    """Swap in the CPU kernels (in place; returns ``module``). Accepts a ``VAR``, a ``VQVAE`` or any
    module containing them. Idempotent."""
    for m in module.modules():
        new = SWAPS.get(type(m))
        if new is not None:
            m.__class__ = new
        if isinstance(m, VAR):
            for lin, cls in _linears(m):
                if type(lin) is nn.Linear:
                    lin.__class__ = cls
        if isinstance(m, VQVAE):
            for conv in m.decoder.modules():  # the encoder keeps direct convs: bit-identical token ids
                if type(conv) is nn.Conv2d and winograd_eligible(conv):
                    conv.__class__ = WinogradConv2d
    return module


def disable_cpu_kernels(module: nn.Module) -> nn.Module:
    """Undo ``enable_cpu_kernels``: the plain reference modules again; frees Winograd weights."""
    for m in module.modules():
        if getattr(m, "is_int8", False):  # accel.lowprec's int8 linear: back to the plain one too
            m.__dict__.pop("_int8_cache", None)
            m.__class__ = nn.Linear
            continue
        base = _UNSWAP.get(type(m))
        if base is not None:
            if isinstance(m, WinogradConv2d):
                drop_winograd_cache(m)
            m.__class__ = base
    return module


@contextlib.contextmanager
def cpu_kernels(*modules: nn.Module):
    """Run a block with the CPU kernels on for ``modules``; each is put back as it was on exit."""
    was = [cpu_kernels_enabled(m) for m in modules]
    for m in modules:
        enable_cpu_kernels(m)
    try:
        yield
    finally:
        for m, on in zip(modules, was):
            if not on:
                disable_cpu_kernels(m)


def cpu_kernels_enabled(module: nn.Module) -> bool:
    """Whether any module inside ``module`` carries a CPU kernel."""
    return any(type(m) in _UNSWAP or getattr(m, "is_int8", False) for m in module.modules())
