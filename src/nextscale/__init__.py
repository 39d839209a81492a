"""nextscale: VAR (Visual Autoregressive Modeling, next-scale prediction) as a library.

    from nextscale import NextScalePipeline
    pipe = NextScalePipeline.from_pretrained("default")
    pipe(class_labels=[3, 7], seed=0).images[0].save("x.png")

Drop-in for scripts written against the reference code::

    from nextscale import VQVAE, VAR, build_vae_var
"""

from nextscale._version import __version__  # noqa: E402
from nextscale.compat import VAR, VQVAE, build_vae_var  # noqa: E402
from nextscale.configs import PRESETS, ModelConfig, VARConfig, VQVAEConfig, get_preset  # noqa: E402
from nextscale.errors import NextScaleError  # noqa: E402
from nextscale.models import build_from_config  # noqa: E402
from nextscale.pipelines import NextScalePipeline, NextScalePipelineOutput, load_pipeline  # noqa: E402

__all__ = [
    "__version__",
    "VQVAE",
    "VAR",
    "build_vae_var",
    "build_from_config",
    "NextScalePipeline",
    "NextScalePipelineOutput",
    "load_pipeline",
    "PRESETS",
    "get_preset",
    "ModelConfig",
    "VQVAEConfig",
    "VARConfig",
    "NextScaleError",
]


def __getattr__(name):  # editing pipeline is imported lazily (it is optional for most users)
    if name == "NextScaleInpaintPipeline":
        from nextscale.editing import NextScaleInpaintPipeline

        return NextScaleInpaintPipeline
    raise AttributeError(name)
