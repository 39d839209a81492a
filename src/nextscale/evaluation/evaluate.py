"""From images to FID / sFID / IS / precision / recall, with any feature extractor.

    from nextscale.evaluation import evaluate, load_fid_inception
    res = evaluate("samples/", "VIRTUAL_imagenet256_labeled.npz",
                   inception_weights="pt_inception-2015-12-05-6726825d.pth")
    res["fid"], res["is"], res["precision"], res["recall"]

A feature extractor is any ``torch.nn.Module`` that maps a uint8 (N, 3, H, W) RGB batch (values
0..255, on the module's device) to either a (N, D) tensor (used for FID and precision/recall), a
tuple ``(pool, logits[, spatial])``, or a dict with any of the keys ``"pool"``,
``"logits_unbiased"`` (or ``"logits"``) and ``"spatial"`` -- the keys :class:`FIDInceptionV3`
returns.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from nextscale.errors import NextScaleError
from nextscale.evaluation.io import ImageSource, load_npz_stats, npz_keys, open_image_source, save_stats
from nextscale.evaluation.metrics import feature_statistics, frechet_distance, inception_score, precision_recall

__all__ = [
    "extract_features",
    "evaluate",
    "load_reference",
    "compute_reference_stats",
    "features_to_stats",
    "format_results",
]

Source = Union[str, np.ndarray, ImageSource]


def module_device(m: torch.nn.Module, device=None) -> torch.device:
    if device is not None:
        return torch.device(device)
    for t in list(m.parameters()) + list(m.buffers()):
        return t.device
    return torch.device("cpu")


def normalize_output(out: Any) -> Dict[str, torch.Tensor]:
    if isinstance(out, torch.Tensor):
        d = {"pool": out}
    elif isinstance(out, (tuple, list)):
        d = dict(zip(("pool", "logits_unbiased", "spatial"), out))
    elif isinstance(out, dict):
        d = dict(out)
        if "logits_unbiased" not in d and "logits" in d:
            d["logits_unbiased"] = d.pop("logits")
    else:
        raise TypeError(f"feature extractor returned {type(out).__name__}; return a (N, D) tensor, a tuple or a dict")
    res = {}
    for k, v in d.items():
        if v is None or k not in ("pool", "logits_unbiased", "spatial"):
            continue
        v = v.reshape(v.shape[0], -1) if v.dim() != 2 else v
        res[k] = v
    if "pool" not in res:
        raise TypeError("feature extractor output has no 'pool' features")
    return res


@torch.no_grad()
def extract_features(
    extractor: torch.nn.Module,
    source: Source,
    batch_size: int = 50,
    device=None,
    progress: bool = False,
    desc: str = "features",
) -> Dict[str, np.ndarray]:
    """Run ``extractor`` over every image of ``source`` (folder, npz, uint8 NHWC array).
    Returns float32 arrays keyed ``pool`` (and ``logits_unbiased``/``spatial`` when provided)."""
    src = source if isinstance(source, ImageSource) else open_image_source(source)
    dev = module_device(extractor, device)
    was_training = extractor.training
    extractor.eval()
    chunks: Dict[str, list] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(src), desc=desc, unit="img", dynamic_ncols=True)
    try:
        for b in src.batches(batch_size):
            b = np.ascontiguousarray(b)
            x = torch.from_numpy(b if b.flags.writeable else b.copy()).permute(0, 3, 1, 2).to(dev)
            out = normalize_output(extractor(x))
            for k, v in out.items():
                chunks.setdefault(k, []).append(v.detach().float().cpu().numpy())
            if bar is not None:
                bar.update(len(b))
    finally:
        if bar is not None:
            bar.close()
        extractor.train(was_training)
    if not chunks:
        raise NextScaleError(f"no images to evaluate in {src.path or 'the array'}")
    return {k: np.concatenate(v, 0) for k, v in chunks.items()}


def features_to_stats(feats: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """mu/sigma (and mu_s/sigma_s from spatial features) plus the pool features themselves."""
    mu, sigma = feature_statistics(feats["pool"])
    st = {"mu": mu, "sigma": sigma, "features": feats["pool"].astype(np.float32)}
    if "spatial" in feats:
        st["mu_s"], st["sigma_s"] = feature_statistics(feats["spatial"])
    if "logits_unbiased" in feats:
        st["logits_unbiased"] = feats["logits_unbiased"]
    return st


def _is_stats_file(path: str) -> bool:
    return os.path.isfile(path) and "mu" in npz_keys(path)


def load_reference(
    ref: Source,
    extractor: Optional[torch.nn.Module] = None,
    *,
    need_features: bool = True,
    batch_size: int = 50,
    device=None,
    progress: bool = False,
) -> Dict[str, Any]:
    """Reference statistics from any of:

    * our saved stats (``mu``, ``sigma`` [, ``mu_s``, ``sigma_s``, ``features``]);
    * ADM's reference batches (``VIRTUAL_imagenet256_labeled.npz``: ``arr_0`` images plus
      precomputed ``mu``/``sigma``/``mu_s``/``sigma_s``): the precomputed statistics are used for
      FID/sFID (as ADM's evaluator does) and the ``arr_0`` images give features for
      precision/recall (only when ``need_features``);
    * a folder of images or an npz of images without statistics (features computed here).

    Returns a dict with ``mu``, ``sigma`` and, when available, ``mu_s``, ``sigma_s``, ``features``,
    plus ``n`` (number of images behind the features, or None) and ``origin``.
    """
    out: Dict[str, Any] = {"n": None}
    has_images = True
    if isinstance(ref, (str, os.PathLike)) and _is_stats_file(os.fspath(ref)):
        path = os.fspath(ref)
        out.update(load_npz_stats(path))
        out["origin"] = "precomputed statistics in " + os.path.basename(path)
        has_images = "arr_0" in npz_keys(path)
        if "features" in out:
            out["n"] = len(out["features"])
            return out
        if not (need_features and has_images):
            return out
    if not has_images:
        return out
    if extractor is None:
        raise NextScaleError("reference images need a feature extractor; pass inception_weights or extractor=")
    src = ref if isinstance(ref, ImageSource) else open_image_source(ref)
    feats = extract_features(extractor, src, batch_size=batch_size, device=device, progress=progress, desc="reference")
    st = features_to_stats(feats)
    st.pop("logits_unbiased", None)
    for k, v in st.items():
        out.setdefault(k, v)  # precomputed mu/sigma win (ADM protocol)
    out["features"] = st["features"]
    out["n"] = len(st["features"])
    out.setdefault("origin", "images")
    return out


def compute_reference_stats(
    ref: Source, extractor: torch.nn.Module, out_path: str, batch_size: int = 50, device=None, progress: bool = False
) -> str:
    """Compute and save reference statistics (+ pool features) for later ``--ref`` use."""
    feats = extract_features(extractor, ref, batch_size=batch_size, device=device, progress=progress, desc="reference")
    st = features_to_stats(feats)
    return save_stats(
        out_path, st["mu"], st["sigma"], mu_s=st.get("mu_s"), sigma_s=st.get("sigma_s"), features=st["features"]
    )


def evaluate(
    samples: Source,
    ref: Source,
    extractor: Optional[torch.nn.Module] = None,
    *,
    inception_weights: Optional[str] = None,
    device=None,
    batch_size: int = 50,
    splits: int = 10,
    k: int = 3,
    pr: bool = True,
    sfid: bool = True,
    fid_method: str = "eigh",
    save_sample_stats: Optional[str] = None,
    save_ref_stats: Optional[str] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """FID, sFID, IS and precision/recall of ``samples`` against ``ref``.

    ``extractor`` defaults to the FID Inception v3 loaded from ``inception_weights`` (or
    ``$NEXTSCALE_INCEPTION_WEIGHTS``). Metrics the extractor or the reference cannot provide
    (IS without logits, sFID without spatial features, PR without reference features) are None.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if extractor is None:
        from nextscale.evaluation.inception import load_fid_inception

        extractor = load_fid_inception(inception_weights, device=device, spatial=sfid)
    else:
        extractor = extractor.to(device)
    sample_stats: Dict[str, Any]
    if (
        isinstance(samples, (str, os.PathLike))
        and _is_stats_file(os.fspath(samples))
        and "arr_0" not in npz_keys(os.fspath(samples))
    ):
        sample_stats = dict(load_npz_stats(os.fspath(samples)))
        n_samples = len(sample_stats["features"]) if "features" in sample_stats else None
    else:
        feats = extract_features(
            extractor, samples, batch_size=batch_size, device=device, progress=progress, desc="samples"
        )
        sample_stats = features_to_stats(feats)
        n_samples = len(feats["pool"])
        if save_sample_stats:
            save_stats(
                save_sample_stats,
                sample_stats["mu"],
                sample_stats["sigma"],
                mu_s=sample_stats.get("mu_s"),
                sigma_s=sample_stats.get("sigma_s"),
                features=sample_stats["features"],
            )
    refd = load_reference(ref, extractor, need_features=pr, batch_size=batch_size, device=device, progress=progress)
    if save_ref_stats and refd.get("features") is not None:
        save_stats(
            save_ref_stats,
            refd["mu"],
            refd["sigma"],
            mu_s=refd.get("mu_s"),
            sigma_s=refd.get("sigma_s"),
            features=refd["features"],
        )
    if np.shape(refd["mu"]) != np.shape(sample_stats["mu"]):
        raise NextScaleError(
            f"reference statistics have {np.shape(refd['mu'])[0]} dims but the samples' features have "
            f"{np.shape(sample_stats['mu'])[0]}; use the same feature extractor for both"
        )
    res: Dict[str, Any] = {
        "fid": frechet_distance(
            sample_stats["mu"], sample_stats["sigma"], refd["mu"], refd["sigma"], method=fid_method
        ),
        "sfid": None,
        "is": None,
        "is_std": None,
        "precision": None,
        "recall": None,
        "num_samples": n_samples,
        "num_ref": refd.get("n"),
        "ref_origin": refd.get("origin", "images"),
        "k": k,
        "is_splits": splits,
    }
    if sfid and "mu_s" in sample_stats and "mu_s" in refd:
        res["sfid"] = frechet_distance(
            sample_stats["mu_s"], sample_stats["sigma_s"], refd["mu_s"], refd["sigma_s"], method=fid_method
        )
    if "logits_unbiased" in sample_stats and n_samples and n_samples >= splits:
        res["is"], res["is_std"] = inception_score(sample_stats["logits_unbiased"], splits=splits)
    if pr and sample_stats.get("features") is not None and refd.get("features") is not None:
        dev = torch.device(device)
        dtype = torch.float32 if dev.type == "cuda" else torch.float64
        res["precision"], res["recall"] = precision_recall(
            refd["features"], sample_stats["features"], k=k, device=dev, dtype=dtype
        )
    return res


def format_results(res: Dict[str, Any], splits: Optional[int] = None) -> str:
    """The lines ``nextscale fid`` prints for an :func:`evaluate` result (metrics that are None are left out)."""
    lines = []
    for key, label in (
        ("fid", "FID"),
        ("sfid", "sFID"),
        ("is", "Inception Score"),
        ("precision", "Precision"),
        ("recall", "Recall"),
    ):
        if res.get(key) is not None:
            extra = f" ± {res['is_std']:.4f}" + (f" ({splits} splits)" if splits else "") if key == "is" else ""
            lines.append(f"{label}: {res[key]:.4f}{extra}")
    lines.append(f"samples: {res['num_samples']}, reference: {res['num_ref'] or '-'} images ({res['ref_origin']})")
    return "\n".join(lines)
