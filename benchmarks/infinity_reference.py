"""Import a FoundationVision/Infinity checkout on a CPU, for benchmarks only (nothing of it enters nextscale).

The reference imports ``flash_attn`` (CUDA only) and ``torchvision`` at module level and decorates its fused
AdaLN with ``torch.compile(fullgraph=True)``. These are the shims the golden fixtures were made with
(``shared/fixtures/infinity/README.md`` section 2), written here from that description:

* ``flash_attn.flash_attn_varlen_kvpacked_func``: per sequence b, queries ``q[cu_q[b]:cu_q[b+1]]`` attend to
  ``kv[cu_k[b]:cu_k[b+1]]``, non-causal exact softmax in float32 from the given (bf16) inputs, the result rounded
  once to the input dtype. ``flash_attn_func`` is never called (customized kernels are off) and raises.
* ``torchvision``: an import-only stub (timm and the tokenizer module import it; these paths never use it).
* the fused AdaLN: the undecorated function, run eagerly.

It also needs ``timm`` (0.9.6, as pinned by the reference), ``einops`` and ``imageio`` importable, e.g.
``pip install --no-deps --target DIR timm==0.9.6 einops imageio`` and ``PYTHONPATH=DIR``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

import torch


def varlen_kvpacked_attention(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, **kw):
    """flash-attn's varlen kv-packed call: q (Nq, H, c), kv (Nk, 2, H, c) -> (Nq, H, c) in q's dtype."""
    if kw.get("causal") or kw.get("dropout_p"):
        raise NotImplementedError("the shim computes non-causal attention without dropout only")
    scale = kw.get("softmax_scale") or q.shape[-1] ** -0.5
    out = torch.empty_like(q)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for b in range(len(cq) - 1):
        q_HLc = q[cq[b] : cq[b + 1]].float().transpose(0, 1)
        k_HSc, v_HSc = (t.transpose(0, 1) for t in kv[ck[b] : ck[b + 1]].float().unbind(1))
        attn_HLS = (q_HLc @ k_HSc.transpose(1, 2)) * scale
        o_HLc = attn_HLS.softmax(-1) @ v_HSc
        out[cq[b] : cq[b + 1]] = o_HLc.transpose(0, 1).to(q.dtype)
    return out


def _never(*a, **k):
    raise NotImplementedError("flash_attn_func is not shimmed (only the customized-kernel path calls it)")


class _Anything:
    """Stands for any torchvision name at import time (attribute access, calls, subclassing, dict keys)."""

    def __init__(self, *a, **k):
        pass

    def __getattr__(self, name):
        return _Anything()

    def __call__(self, *a, **k):
        return _Anything()

    def __mro_entries__(self, bases):
        return (_Anything,)


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``torchvision`` and every ``torchvision.*`` as a stub module."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        m = _StubModule(spec.name)
        m.__path__ = []
        m.__version__ = "0.0.0+stub"
        return m

    def exec_module(self, module):
        pass


def install_shims() -> None:
    if "flash_attn" not in sys.modules:
        fa = types.ModuleType("flash_attn")
        fa.flash_attn_varlen_kvpacked_func = varlen_kvpacked_attention
        fa.flash_attn_func = _never
        sys.modules["flash_attn"] = fa  # no flash_attn.ops: the reference falls back to its torch RMSNorm
    try:  # a real, loadable torchvision is used as is
        import torchvision  # noqa: F401
    except Exception:
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]
        sys.meta_path.insert(0, _StubFinder())


def import_reference(path: str):
    """-> (the reference's ``infinity.models.infinity`` module, its ``vae_model`` builder)."""
    install_shims()
    sys.path.insert(0, path)
    try:
        import infinity.models.fused_op as fused_op
        import infinity.models.infinity as ref_inf
        from infinity.models.bsq_vae.vae import vae_model
    except ImportError as e:
        raise SystemExit(
            f"cannot import the reference from {path}: {e}. It needs timm (0.9.6), einops and imageio importable "
            f"(pip install --no-deps --target DIR timm==0.9.6 einops imageio; PYTHONPATH=DIR)"
        ) from None
    for name in ("fused_ada_layer_norm", "fused_ada_rms_norm"):  # eager bodies, looked up at construction
        f = getattr(fused_op, name)
        eager = getattr(f, "__wrapped__", None) or getattr(f, "_torchdynamo_orig_callable", f)
        setattr(ref_inf, name, eager)
    return ref_inf, vae_model


def reference_kwargs(depth: int, embed_dim: int, num_heads: int, block_chunks: int, pn: str, mlp_ratio=4) -> dict:
    """The reference's ``Infinity(...)`` keywords of the released 2B model with the given sizes (the manifest
    ``infinity_2b_reg``'s config; inference: no drop path, no text dropout)."""
    return dict(
        text_channels=2048,
        text_maxlen=512,
        shared_aln=True,
        raw_scale_schedule=None,
        checkpointing="full-block",
        customized_flash_attn=False,
        fused_norm=True,
        pad_to_multiplier=128,
        use_flex_attn=False,
        inference_mode=True,
        train_h_div_w_list=[1.0],
        add_lvl_embeding_only_first_block=1,
        use_bit_label=1,
        rope2d_each_sa_layer=1,
        rope2d_normalized_by_hw=2,
        pn=pn,
        apply_spatial_patchify=0,
        depth=depth,
        embed_dim=embed_dim,
        num_heads=num_heads,
        drop_path_rate=0.0,
        cond_drop_rate=0.0,
        mlp_ratio=mlp_ratio,
        block_chunks=block_chunks,
    )
