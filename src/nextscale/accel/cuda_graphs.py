"""Captured CUDA graphs of the VAR transformer, one per scale: the sampler's opt-in GPU fast path.

``nextscale.sampling.generate(..., cuda_graphs=CudaGraphs())`` replays each scale's transformer as
one graph: the same kernels in the same order, so the same tokens as eager execution. Measured on
an H100 (docs/speed.md): d16 at batch 1 launches ~6,000 small kernels per image and the GPU mostly
waits for them; graphs remove that launch cost. ``NextScalePipeline`` keeps one instance on CUDA.
"""

from __future__ import annotations

import warnings

import torch

from nextscale.models.var import VAR, KVCache

__all__ = ["CudaGraphs"]


class CudaGraphs:
    """Captured CUDA graphs of the transformer, one per scale, for repeated sampling on a GPU.

    At batch 1-16 a d16 generation launches ~6,000 small kernels and the GPU mostly waits for them;
    replaying one graph per scale removes that cost. Graphs are captured on the first call for a
    (model, batch, autocast dtype) and replayed afterwards, with the KV cache, AdaLN modulations and
    inputs/outputs in static buffers. Keep one instance per pipeline (``NextScalePipeline`` does, on
    CUDA); ``clear()`` frees the graphs and their memory (needed after moving the model).
    Weights may change in place between calls (the graphs read them by address), not be replaced.
    """

    def __init__(self):
        self._sets = {}
        self.failed = False

    def clear(self) -> None:
        self._sets.clear()

    def runner(self, var: VAR, B2: int, mods, cond_BD, head_mod):
        amp = torch.is_autocast_enabled()  # CUDA autocast
        if not amp:
            dt = torch.float32
        elif hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
            dt = torch.get_autocast_dtype("cuda")
        else:
            dt = torch.get_autocast_gpu_dtype()
        key = (id(var), B2, dt, cond_BD.device)
        gs = self._sets.get(key)
        if gs is None or gs["var"] is not var:
            # autocast's cache of cast weights lives only as long as the caller's autocast block: the
            # graphs must cast the weights themselves, so warm-up and capture run with the cache off
            if self.failed:
                return None
            try:
                with torch.autocast("cuda", dtype=dt, enabled=amp, cache_enabled=False):
                    gs = self._sets[key] = self._capture(var, B2, mods, cond_BD, head_mod)
            except RuntimeError as e:  # e.g. a kernel that cannot be captured: run eagerly from now on
                warnings.warn(f"CUDA graph capture failed ({e}); sampling without graphs")
                self.failed = True
                self._sets.clear()
                return None
        for dst, src in zip(gs["mods"], mods):
            dst.copy_(src)
        gs["cond"].copy_(cond_BD)
        gs["head_mod"].copy_(head_mod)

        def run(si: int, x_BlC: torch.Tensor) -> torch.Tensor:
            gs["x"][si].copy_(x_BlC)
            gs["graphs"][si].replay()
            return gs["logits"][si]

        return run

    @staticmethod
    def _capture(var: VAR, B2: int, mods, cond_BD, head_mod):
        static_mods = [m.clone() for m in mods]
        cond, hmod = cond_BD.clone(), head_mod.clone()
        xs = [cond_BD.new_zeros(B2, pn * pn, var.C) for pn in var.patch_nums]
        cache = KVCache(var.depth, var.L)

        def body(si):
            cache.pos = var.begin_ends[si][0]
            return var.next_scale_logits(xs[si], cache, static_mods, cond, hmod)

        side = torch.cuda.Stream(device=cond_BD.device)
        side.wait_stream(torch.cuda.current_stream(cond_BD.device))
        with torch.cuda.stream(side):  # warm-up (allocates the cache, initialises kernels) off the capture
            for si in range(len(var.patch_nums)):
                body(si)
        torch.cuda.current_stream(cond_BD.device).wait_stream(side)
        pool = torch.cuda.graph_pool_handle()
        graphs, logits = [], []
        for si in range(len(var.patch_nums)):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                logits.append(body(si))
            graphs.append(g)
        return {
            "var": var,
            "mods": static_mods,
            "cond": cond,
            "head_mod": hmod,
            "x": xs,
            "graphs": graphs,
            "logits": logits,
            "cache": cache,
        }
