"""Evaluation: FID / sFID / IS / precision-recall in PyTorch (no TensorFlow), reconstruction
metrics for tokenizers, and deterministic, resumable, sharded sampling for FID (``sample-fid``).

See ``docs/evaluation.md`` for the protocol.
"""

from nextscale.evaluation.evaluate import (
    compute_reference_stats,
    evaluate,
    extract_features,
    features_to_stats,
    load_reference,
)
from nextscale.evaluation.inception import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILE,
    FIDInceptionV3,
    load_fid_inception,
    resize_bilinear_tf1,
    resolve_inception_weights,
)
from nextscale.evaluation.io import (
    NpzArrayReader,
    load_npz_stats,
    open_image_source,
    save_stats,
    write_samples_npz,
)
from nextscale.evaluation.metrics import (
    feature_statistics,
    frechet_distance,
    inception_score,
    manifold_radii,
    precision_recall,
)
from nextscale.evaluation.recon import ReconstructionMetrics, psnr, ssim
from nextscale.evaluation.sample import PROTOCOLS, SampleFidConfig, get_protocol, sample_for_fid

__all__ = [
    "FIDInceptionV3",
    "load_fid_inception",
    "resize_bilinear_tf1",
    "resolve_inception_weights",
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_FILE",
    "frechet_distance",
    "feature_statistics",
    "inception_score",
    "precision_recall",
    "manifold_radii",
    "extract_features",
    "evaluate",
    "load_reference",
    "compute_reference_stats",
    "features_to_stats",
    "NpzArrayReader",
    "open_image_source",
    "save_stats",
    "load_npz_stats",
    "write_samples_npz",
    "psnr",
    "ssim",
    "ReconstructionMetrics",
    "PROTOCOLS",
    "SampleFidConfig",
    "get_protocol",
    "sample_for_fid",
]
