"""Evaluating a multi-scale tokenizer (``nextscale eval-tokenizer MODEL --data DIR``).

Every image of the folder's ``val`` split (or of the folder itself) is resized (shorter side ->
``mid_reso * R``), center-cropped to the tokenizer's resolution R, encoded and rebuilt. Reported:

* ``psnr`` / ``ssim`` of the full reconstruction (images in [0, 1], ``nextscale.evaluation.recon``),
  and ``psnr_by_scale``: PSNR of the image rebuilt from the first 1, 2, ..., K scales;
* ``usage_by_scale``: % of the V codes that scale k uses at least once on the evaluated images,
  ``usage_any``: % used by any scale, ``perplexity_by_scale``: exp(entropy) of each scale's code histogram;
* ``rfid`` through the evaluation module's FID feature code when Inception weights are available
  (``--inception-weights`` or ``NEXTSCALE_INCEPTION_WEIGHTS``); otherwise ``None`` with a note;
* a picture (``--picture``): rows of [original, rebuilt from 1 scale, 2 scales, ..., K scales].
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from nextscale.data import MID_RESO
from nextscale.settings import fail

__all__ = ["evaluate_tokenizer", "format_report", "codebook_stats", "per_scale_reconstructions", "scale_grid"]


@torch.no_grad()
def codebook_stats(hits_SV: torch.Tensor) -> Tuple[List[float], List[float]]:
    """(usage % of codes hit, perplexity) per scale from hit counts (S, V)."""
    usage, ppl = [], []
    for h in hits_SV.float():
        tot = h.sum()
        usage.append(float((h > 0).float().mean() * 100))
        if tot <= 0:
            ppl.append(0.0)
            continue
        p = h / tot
        ent = -(p[p > 0] * p[p > 0].log()).sum()
        ppl.append(float(ent.exp()))
    return usage, ppl


@torch.no_grad()
def per_scale_reconstructions(vae, x: torch.Tensor) -> List[torch.Tensor]:
    """Images rebuilt from the first 1, 2, ..., K scales (each in [-1, 1])."""
    return vae.img_to_reconstructed_img(x, last_one=False)


def scale_grid(vae, x: torch.Tensor, upscale: Optional[int] = None) -> np.ndarray:
    """uint8 (rows*R, (K+1)*R, 3): per row the original, then the image rebuilt from 1..K scales."""
    recs = per_scale_reconstructions(vae, x)
    cols = [x] + recs
    arr = torch.stack(cols, dim=1)  # (N, K+1, 3, R, R)
    arr = ((arr.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    N, K1, _, R, _ = arr.shape
    img = arr.permute(0, 3, 1, 4, 2).reshape(N * R, K1 * R, 3).numpy()
    up = upscale if upscale is not None else max(1, 128 // R)
    if up > 1:
        img = img.repeat(up, axis=0).repeat(up, axis=1)
    return img


@torch.no_grad()
def evaluate_tokenizer(vae, data: str, **kw) -> Dict[str, Any]:
    """Reconstruction report of a tokenizer on an image folder (see ``_evaluate``); decodes with
    the CPU kernels of ``nextscale.accel`` (same images within 1e-4, ~2x faster decoding)."""
    from nextscale.accel import cpu_kernels

    with cpu_kernels(vae):
        return _evaluate(vae, data, **kw)


def _evaluate(
    vae,
    data: str,
    batch_size: int = 64,
    max_images: Optional[int] = None,
    picture: Optional[str] = None,
    picture_rows: int = 4,
    inception_weights: Optional[str] = None,
    rfid: bool = True,
    device=None,
    mid_reso: float = MID_RESO,
    workers: int = 0,
    progress: bool = False,
) -> Dict[str, Any]:
    from nextscale.data import ImageFolder, find_split, scan_image_folder
    from nextscale.evaluation.recon import ReconstructionMetrics, psnr

    if batch_size <= 0:
        raise fail("batch_size", f" must be a positive integer, got {batch_size}")
    if max_images is not None and max_images <= 0:
        raise fail("max_images", f" must be a positive integer, got {max_images}")
    root = find_split(data, "val") or find_split(data, "train")
    samples, classes = scan_image_folder(root)
    R = vae.resolution
    ds = ImageFolder(root, R, train=False, mid_reso=mid_reso, samples=samples, classes=classes)
    n = len(ds) if max_images is None else min(len(ds), max_images)
    dev = torch.device(device or next(vae.parameters()).device)
    vae = vae.to(dev).eval()

    extractor, note = None, None
    if rfid:
        try:
            from nextscale.evaluation.inception import load_fid_inception

            extractor = load_fid_inception(inception_weights, device=dev)
        except Exception as e:  # weights are never downloaded: no local file -> no rFID
            if inception_weights:  # asked for explicitly: a bad path is an error, not a note
                raise
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            note = f"rFID skipped: {msg[:200]}"
    metrics = ReconstructionMetrics(extractor, device=dev if extractor is not None else None)
    K, V = len(vae.v_patch_nums), vae.vocab_size
    hits = torch.zeros(K, V, dtype=torch.float64)
    psnr_k = [[] for _ in range(K)]
    t0 = time.time()
    from tqdm.auto import tqdm

    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    first = None
    for b in tqdm(batches, desc="eval-tokenizer", disable=not progress, unit="batch"):
        x = torch.stack([ds[(i, -1)]["image"] for i in b]).to(dev)
        if first is None:
            first = x[:picture_rows].clone()
        f = vae.img_to_f(x)
        idx = vae.quantize.f_to_idxBl_or_fhat(f, to_fhat=False)
        for k, ids in enumerate(idx):
            hits[k] += torch.bincount(ids.reshape(-1).cpu(), minlength=V).double()
        fhats = vae.quantize.f_to_idxBl_or_fhat(f, to_fhat=True)
        a = (x + 1) / 2
        for k, fh in enumerate(fhats):
            img = (vae.fhat_to_img(fh) + 1) / 2
            psnr_k[k].append(psnr(a, img, reduction="none").cpu())
        metrics.update(a, img)
    res = metrics.compute()
    usage, ppl = codebook_stats(hits)
    out: Dict[str, Any] = {
        "psnr": res["psnr"],
        "ssim": res["ssim"],
        "rfid": res["rfid"],
        "num_images": res["num_images"],
        "resolution": R,
        "patch_nums": list(vae.v_patch_nums),
        "vocab_size": V,
        "psnr_by_scale": [float(torch.cat(p)[torch.isfinite(torch.cat(p))].mean()) for p in psnr_k],
        "usage_by_scale": usage,
        "perplexity_by_scale": ppl,
        "usage_any": float((hits.sum(0) > 0).double().mean() * 100),
        "seconds": round(time.time() - t0, 2),
        "data": root,
    }
    if note:
        out["note"] = note
    if picture:
        from PIL import Image

        grid = scale_grid(vae, first)
        os.makedirs(os.path.dirname(os.path.abspath(picture)), exist_ok=True)
        Image.fromarray(grid).save(picture)
        out["picture"] = picture
    return out


def format_report(r: Dict[str, Any]) -> str:
    pns = r["patch_nums"]
    lines = [
        f"{r['num_images']} images at {r['resolution']}px from {r['data']}",
        f"PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}" if r.get("ssim") is not None else f"PSNR {r['psnr']:.2f} dB",
        "rFID "
        + (f"{r['rfid']:.2f}" if r.get("rfid") is not None else "n/a" + (f" ({r['note']})" if r.get("note") else "")),
        "PSNR from the first k scales: " + "  ".join(f"{pn}x{pn}:{v:.2f}" for pn, v in zip(pns, r["psnr_by_scale"])),
        f"code usage (% of V={r['vocab_size']}): "
        + "  ".join(f"{pn}x{pn}:{u:.1f}" for pn, u in zip(pns, r["usage_by_scale"]))
        + f"  any scale:{r['usage_any']:.1f}",
        "perplexity: " + "  ".join(f"{pn}x{pn}:{p:.1f}" for pn, p in zip(pns, r["perplexity_by_scale"])),
    ]
    if r.get("picture"):
        lines.append(f"per-scale picture: {r['picture']}")
    return "\n".join(lines)


def save_json(r: Dict[str, Any], path: str) -> None:
    from nextscale.atomic import write_json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json(path, r, indent=1)
