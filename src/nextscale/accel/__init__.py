"""Opt-in speed paths. The models in ``nextscale.models`` are the reference math; this package
makes them faster without changing what they compute (beyond float rounding, tested in
``tests/test_accel.py``):

- ``accel.cpu``: CPU float32 inference kernels applied as explicit module swaps
  (``enable_cpu_kernels`` / ``disable_cpu_kernels``); pipelines enable them by default.
- ``accel.cuda_graphs``: the captured per-scale CUDA-graph runner used by the sampler on GPUs.
- ``accel.winograd`` and ``accel.workspace``: the Winograd F(4x4, 3x3) convolution and the reused
  scratch buffers the CPU kernels build on.
- ``accel.precision``: which low precisions this CPU runs fast (``cpu_capabilities``) and what the
  precision names fp32 / bf16 / int8 / auto mean (``pipe.set_precision``); ``accel.lowprec``: the int8
  block linears (``enable_int8_linears``). bf16's CPU kernel is in ``accel.cpu``. Low precision is
  opt-in and changes results within the tolerances of ``tests/test_lowprec.py``.
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
