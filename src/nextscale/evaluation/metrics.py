"""Metrics on feature sets: Fréchet distance (FID / sFID / rFID), Inception Score, and the
precision / recall of Kynkäänniemi et al. (2019).

Everything here works on plain arrays of features, so any feature extractor can be used; the
conventions follow ADM's evaluator (guided-diffusion ``evaluations/evaluator.py``) and
torch-fidelity, which give the published numbers.
"""

from __future__ import annotations

import math
import warnings
from typing import Tuple, Union

import numpy as np
import torch

from nextscale.errors import InputError

__all__ = [
    "feature_statistics",
    "frechet_distance",
    "inception_score",
    "precision_recall",
    "manifold_radii",
]

ArrayLike = Union[np.ndarray, torch.Tensor]


def _np64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def feature_statistics(features: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, ``np.cov(rowvar=False)``) of (N, D) features, in float64."""
    f = _np64(features)
    if f.ndim != 2:
        raise InputError(f"features must be (N, D), got shape {f.shape}")
    if f.shape[0] < 2:
        raise InputError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    mu = f.mean(axis=0)
    sigma = np.cov(f, rowvar=False)
    return mu, np.atleast_2d(sigma)


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """tr((sigma1 sigma2)^{1/2}) for symmetric PSD matrices.

    Primary: ``scipy.linalg.sqrtm`` as in pytorch-fid / ADM, with the standard ``eps * I`` offset
    when the result is not finite (singular products). Fallback (no scipy, or sqrtm still not
    finite): the symmetric form ``tr((S1^{1/2} S2 S1^{1/2})^{1/2})`` from eigendecompositions,
    which is well defined for any PSD pair, including rank-deficient ones.
    """
    try:
        from scipy import linalg
    except ImportError:  # pragma: no cover - scipy is an 'eval' extra
        linalg = None
    if linalg is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            covmean = linalg.sqrtm(sigma1.dot(sigma2))
            if isinstance(covmean, tuple):  # old scipy with disp=False semantics
                covmean = covmean[0]
            if not np.isfinite(covmean).all():
                offset = np.eye(sigma1.shape[0]) * eps
                covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
                if isinstance(covmean, tuple):
                    covmean = covmean[0]
        if np.iscomplexobj(covmean):
            # tiny imaginary parts are numerical noise; large ones mean sqrtm failed -> fallback
            if np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                covmean = covmean.real
            else:
                covmean = None
        if covmean is not None and np.isfinite(covmean).all():
            tr = float(np.trace(covmean))
            if np.isfinite(tr):
                return tr
    return _trace_sqrt_product_eigh(sigma1, sigma2)


def _eigh(a: np.ndarray, vectors: bool = True):
    """Symmetric eigendecomposition; LAPACK's divide-and-conquer driver when scipy is there."""
    try:
        from scipy import linalg

        return linalg.eigh(a, eigvals_only=not vectors, driver="evd", check_finite=False)
    except (ImportError, TypeError, ValueError, np.linalg.LinAlgError):  # pragma: no cover
        return np.linalg.eigh(a) if vectors else np.linalg.eigvalsh(a)


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1^{1/2} S2 S1^{1/2})^{1/2}) = tr((S1 S2)^{1/2}) for PSD S1, S2. Eigenvalues of S1 below
    its numerical-rank tolerance are treated as 0 and negative rounding eigenvalues are clipped, so
    rank-deficient covariances (fewer samples than dimensions) come out exact and fast."""
    w1, v1 = _eigh((sigma1 + sigma1.T) / 2)
    # numerical rank as in np.linalg.matrix_rank: smaller eigenvalues are rounding noise around 0
    keep = w1 > (w1.max(initial=0.0) * w1.shape[0] * np.finfo(np.float64).eps)
    v1 = v1[:, keep]
    s1h = v1 * np.sqrt(w1[keep])  # S1^{1/2} = s1h @ v1.T; the nonzero spectrum of
    m = s1h.T @ sigma2 @ s1h  # S1^{1/2} S2 S1^{1/2} equals that of this r x r matrix
    if m.size == 0:
        return 0.0
    w = _eigh((m + m.T) / 2, vectors=False)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance(
    mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike, eps: float = 1e-6, method: str = "eigh"
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64:

    ``||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2})``.

    FID is this distance between the Inception pool features of two image sets.

    ``method="eigh"`` (default) computes the trace term as ``tr((S1^{1/2} S2 S1^{1/2})^{1/2})`` from
    symmetric eigendecompositions: the same number, exact for rank-deficient covariances, and ~5x
    faster than ``sqrtm`` at D = 2048. ``method="sqrtm"`` follows pytorch-fid / ADM literally
    (``scipy.linalg.sqrtm(S1 @ S2)`` with the ``eps * I`` offset when the result is not finite);
    the two agree to ~1e-6 relative on real statistics.
    """
    if method not in ("eigh", "sqrtm"):
        raise InputError(f"method must be 'eigh' or 'sqrtm', got {method!r}")
    mu1, mu2 = np.atleast_1d(_np64(mu1)), np.atleast_1d(_np64(mu2))
    sigma1, sigma2 = np.atleast_2d(_np64(sigma1)), np.atleast_2d(_np64(sigma2))
    if mu1.shape != mu2.shape:
        raise InputError(
            f"feature means have different lengths: {mu1.shape} vs {mu2.shape} (different feature extractors?)"
        )
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise InputError(f"covariance shapes {sigma1.shape} / {sigma2.shape} do not match the means {mu1.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise InputError(f"{name} contains NaN or inf (features are not finite)")
    diff = mu1 - mu2
    if method == "sqrtm":
        tr_covmean = _trace_sqrt_product(sigma1, sigma2, eps)
    else:
        tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
    fd = float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
    # rounding can make identical distributions come out as -1e-12; a true distance is >= 0
    return max(fd, 0.0)


def inception_score(logits: ArrayLike, splits: int = 10, from_logits: bool = True) -> Tuple[float, float]:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` as mean and std over ``splits`` consecutive
    splits (torch-fidelity / ADM: 10 splits; ADM takes 5,000-image splits of 50,000 samples).

    ``logits``: (N, C) class logits (the Inception's ``logits_unbiased``), or probabilities with
    ``from_logits=False``.
    """
    x = _np64(logits)
    if x.ndim != 2:
        raise InputError(f"logits must be (N, C), got shape {x.shape}")
    n = x.shape[0]
    if splits < 1 or splits > n:
        raise InputError(f"splits must be between 1 and the number of samples ({n}), got {splits}")
    if from_logits:
        x = x - x.max(axis=1, keepdims=True)
        logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
        p = np.exp(logp)
    else:
        p = x / x.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore"):
            logp = np.log(p)
    scores = []
    for idx in np.array_split(np.arange(n), splits):
        ps, lps = p[idx], logp[idx]
        py = ps.mean(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(ps > 0, ps * (lps - np.log(py)), 0.0).sum(axis=1)
        scores.append(math.exp(float(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


def _device_of(device) -> torch.device:
    if device is None:
        return torch.device("cpu")
    return torch.device(device)


def _pairwise_sq_dists(a: torch.Tensor, b: torch.Tensor, a_sq: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    d = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return d.clamp_(min=0)


def _as_tensor(x: ArrayLike, device, dtype) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return x.to(device=device, dtype=dtype)


def manifold_radii(
    features: ArrayLike, k: int = 3, batch_size: int = 4096, device=None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Squared distance from each feature vector to its k-th nearest neighbour in the same set
    (itself excluded), computed in row x column blocks so memory stays O(batch_size^2)."""
    dev = _device_of(device)
    f = _as_tensor(features, dev, dtype)
    n = f.shape[0]
    if n <= k:
        raise InputError(f"precision/recall with k={k} needs more than {k} feature vectors, got {n}")
    sq = (f * f).sum(1)
    radii = torch.empty(n, dtype=dtype, device=dev)
    for i in range(0, n, batch_size):
        rows = f[i : i + batch_size]
        best = None  # running k+1 smallest (the sample itself contributes a 0)
        for j in range(0, n, batch_size):
            d = _pairwise_sq_dists(rows, f[j : j + batch_size], sq[i : i + batch_size], sq[j : j + batch_size])
            if i == j:  # exact zero on the diagonal (the point itself), whatever the rounding
                d.fill_diagonal_(0.0)
            cand = d if best is None else torch.cat([best, d], 1)
            best = cand.topk(min(k + 1, cand.shape[1]), dim=1, largest=False).values
        radii[i : i + batch_size] = best[:, k]
    return radii


def _coverage(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor, batch_size: int) -> float:
    """Fraction of ``queries`` within ``radii`` of at least one manifold point."""
    m_sq = (manifold * manifold).sum(1)
    q_sq = (queries * queries).sum(1)
    inside = torch.zeros(queries.shape[0], dtype=torch.bool, device=queries.device)
    for i in range(0, queries.shape[0], batch_size):
        q = queries[i : i + batch_size]
        hit = torch.zeros(q.shape[0], dtype=torch.bool, device=q.device)
        for j in range(0, manifold.shape[0], batch_size):
            d = _pairwise_sq_dists(q, manifold[j : j + batch_size], q_sq[i : i + batch_size], m_sq[j : j + batch_size])
            hit |= (d <= radii[j : j + batch_size][None, :]).any(1)
        inside[i : i + batch_size] = hit
    return float(inside.double().mean().item())


def precision_recall(
    real: ArrayLike,
    fake: ArrayLike,
    k: int = 3,
    batch_size: int = 4096,
    device=None,
    dtype: torch.dtype = torch.float64,
) -> Tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) with k-NN radius ``k`` (3).

    Precision: fraction of ``fake`` samples inside the real manifold (the union of balls around
    each real feature, radius = distance to its k-th nearest real neighbour). Recall: fraction of
    ``real`` samples inside the fake manifold. Distances are computed in blocks of
    ``batch_size`` x ``batch_size``, so 50k x 50k sets fit in memory.
    """
    dev = _device_of(device)
    r = _as_tensor(real, dev, dtype)
    f = _as_tensor(fake, dev, dtype)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise InputError(
            f"real and fake features must be (N, D) with the same D, got {tuple(r.shape)} and {tuple(f.shape)}"
        )
    r_radii = manifold_radii(r, k, batch_size, dev, dtype)
    f_radii = manifold_radii(f, k, batch_size, dev, dtype)
    precision = _coverage(r, r_radii, f, batch_size)
    recall = _coverage(f, f_radii, r, batch_size)
    return precision, recall
