"""nextscale: VAR (Visual Autoregressive Modeling, next-scale prediction) as a library.

    from nextscale import NextScalePipeline
    pipe = NextScalePipeline.from_pretrained("default")
    pipe(class_labels=[3, 7], seed=0).images[0].save("x.png")

Text to image (Infinity)::

    from nextscale import NextScaleT2IPipeline
    pipe = NextScaleT2IPipeline.from_pretrained("FoundationVision/Infinity", variant="2b")
    pipe("a red fox in snow", aspect_ratio="16:9", seed=0).images[0].save("fox.png")

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
    "NextScaleT2IPipeline",
    "T2ISettings",
    "Infinity",
    "InfinityConfig",
    "INFINITY_PRESETS",
    "BSQVAE",
    "BSQConfig",
    "BSQ_PRESETS",
]

#: text to image (Infinity), imported on first use: name -> module
_LAZY = {
    "NextScaleInpaintPipeline": "nextscale.editing",
    "NextScaleT2IPipeline": "nextscale.pipeline_t2i",
    "T2ISettings": "nextscale.sampling_t2i",
    "Infinity": "nextscale.models.infinity",
    "InfinityConfig": "nextscale.models.infinity",
    "INFINITY_PRESETS": "nextscale.models.infinity",
    "BSQVAE": "nextscale.models.bsq",
    "BSQConfig": "nextscale.models.bsq",
    "BSQ_PRESETS": "nextscale.models.bsq",
}


def __getattr__(name):  # the editing and text-to-image parts are imported lazily (optional for most users)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
