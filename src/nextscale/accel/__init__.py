"""Opt-in speed paths. The models in ``nextscale.models`` are the reference math; this package
makes them faster without changing what they compute (beyond float rounding, tested in
``tests/test_accel.py``):

- ``accel.cpu``: CPU float32 inference kernels applied as explicit module swaps
  (``enable_cpu_kernels`` / ``disable_cpu_kernels``); pipelines enable them by default.
- ``accel.cuda_graphs``: the captured per-scale CUDA-graph runner used by the sampler on GPUs.
- ``accel.winograd`` and ``accel.workspace``: the Winograd F(4x4, 3x3) convolution and the reused
  scratch buffers the CPU kernels build on.
"""

from nextscale.accel.cpu import (
    cpu_kernels,
    cpu_kernels_enabled,
    disable_cpu_kernels,
    enable_cpu_kernels,
    reference_kernels,
)
from nextscale.accel.cuda_graphs import CudaGraphs

__all__ = [
    "enable_cpu_kernels",
    "disable_cpu_kernels",
    "cpu_kernels",
    "cpu_kernels_enabled",
    "reference_kernels",
    "CudaGraphs",
]
