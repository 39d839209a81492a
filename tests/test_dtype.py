"""dtype as diffusers users expect: to(dtype) / from_pretrained(torch_dtype=) cast the weights,
FLOAT32_PARTS stay float32; set_autocast keeps float32 weights; float32 is the default on CPU."""

import pytest
import torch

from nextscale.errors import NextScaleError
from nextscale.pipelines import FLOAT32_PARTS, NextScalePipeline


def _dtypes(module):
    return {n: p.dtype for n, p in module.state_dict().items() if p.is_floating_point()}


def test_float32_is_the_default_on_cpu():
    pipe = NextScalePipeline.from_pretrained("default")
    assert pipe.dtype == torch.float32 and pipe.weights_dtype == torch.float32
    assert set(_dtypes(pipe.var).values()) == {torch.float32} and set(_dtypes(pipe.vqvae).values()) == {torch.float32}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cast_pipeline_keeps_the_float32_parts_and_samples(dtype):
    pipe = NextScalePipeline.from_preset("tiny")
    fp32_bytes = sum(p.numel() * p.element_size() for p in pipe.var.parameters())
    ref = pipe(class_labels=[1, 2], seed=0, output_type="np", top_k=10)
    pipe.to(dtype)
    assert pipe.dtype == dtype and pipe.weights_dtype == dtype
    for model, parts in ((pipe.var, FLOAT32_PARTS["var"]), (pipe.vqvae, FLOAT32_PARTS["vqvae"])):
        for name, dt in _dtypes(model).items():
            keep = name.split(".")[0] in parts
            assert dt == (torch.float32 if keep else dtype), name
    assert sum(p.numel() * p.element_size() for p in pipe.var.parameters()) < 0.75 * fp32_bytes
    if dtype == torch.float16:
        return  # CPU fp16 autocast coverage varies by torch build; the GPU test covers sampling
    out = pipe(class_labels=[1, 2], seed=0, output_type="np", top_k=10)
    assert out.images.shape == ref.images.shape and out.images.min() >= 0 and out.images.max() <= 1


def test_from_pretrained_torch_dtype_and_explicit_autocast(tmp_path):
    pipe = NextScalePipeline.from_pretrained("default", torch_dtype=torch.bfloat16)
    assert pipe.weights_dtype == torch.bfloat16 and pipe.var.head.weight.dtype == torch.float32
    pipe(class_labels=[3], seed=0, output_type="np")
    ac = NextScalePipeline.from_pretrained("default").set_autocast(torch.bfloat16)
    assert ac.dtype == torch.bfloat16 and ac.weights_dtype == torch.float32
    with pytest.raises(NextScaleError, match="either torch_dtype or dtype"):
        NextScalePipeline.from_pretrained("default", torch_dtype=torch.bfloat16, dtype=torch.float16)
    with pytest.raises(NextScaleError, match="dtype must be torch.float32, torch.bfloat16 or torch.float16"):
        NextScalePipeline.from_pretrained("default").to(torch.int8)
