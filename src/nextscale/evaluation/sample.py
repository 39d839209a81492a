"""``nextscale sample-fid``: sample the images an FID evaluation needs, on one or many processes.

Determinism: the N = per_class x num_classes images are cut into fixed chunks of ``batch_size``
images. Chunk ``j`` covers global indices ``[j*batch_size, (j+1)*batch_size)``, samples class
``index // per_class`` for each index and draws from
``torch.Generator(device=pipe.device).manual_seed(seed + j)``. An image's pixels therefore depend
only on (model, protocol, seed, batch_size, device type, its index) -- not on the number of
processes or on how often the run was interrupted. (CPU and CUDA generators give different
streams: the same seed gives different images on CPU and GPU.) Chunk ``j`` is sampled by
rank ``j % world_size``, so ranks never overlap and leave no gaps.

Files: ``OUT/{index:06d}.png`` (PNG only; JPEG artefacts would change FID), each written to a
temporary name and renamed. ``OUT/sample_fid.json`` records the protocol. A re-run skips every
chunk whose PNGs all exist and decode; a chunk cut short by a kill is sampled again and only its
missing (or undecodable) PNGs are written, so no finished image is ever rewritten. At the end rank 0 packs
``OUT.npz`` in ADM's layout
(``arr_0`` uint8 (N, H, W, 3), ``labels`` int64 (N,)).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from nextscale.errors import NextScaleError
from nextscale.evaluation.io import read_image, write_samples_npz

__all__ = [
    "SamplingProtocol",
    "PROTOCOLS",
    "get_protocol",
    "sample_for_fid",
    "chunk_plan",
    "default_npz_path",
    "META_NAME",
]

META_NAME = "sample_fid.json"


@dataclass(frozen=True)
class SamplingProtocol:
    name: str
    cfg: float
    top_k: int
    top_p: float
    more_smooth: bool
    description: str


#: Published protocols. top_k=0 / top_p=0 disable that filter. more_smooth stays off for FID.
PROTOCOLS: Dict[str, SamplingProtocol] = {
    "var-readme": SamplingProtocol(
        "var-readme",
        cfg=1.5,
        top_k=900,
        top_p=0.96,
        more_smooth=False,
        description="VAR README's FID protocol: cfg 1.5, top-p 0.96, top-k 900, more_smooth off",
    ),
    "var-paper": SamplingProtocol(
        "var-paper",
        cfg=2.0,
        top_k=600,
        top_p=0.0,
        more_smooth=False,
        description="VAR paper's protocol: cfg 2.0, top-k 600, no top-p, more_smooth off",
    ),
}
_ALIASES = {"readme": "var-readme", "paper": "var-paper"}


def get_protocol(
    name: str,
    cfg: Optional[float] = None,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    more_smooth: Optional[bool] = None,
) -> SamplingProtocol:
    """A named protocol, optionally with overrides (then renamed ``<name>+custom`` so a result
    never claims a protocol it did not follow)."""
    key = _ALIASES.get(name, name)
    if key not in PROTOCOLS:
        raise NextScaleError(f"unknown sampling protocol {name!r}; use one of: {', '.join(PROTOCOLS)}")
    p = PROTOCOLS[key]
    over = {
        k: v
        for k, v in dict(cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth).items()
        if v is not None and v != getattr(p, k)
    }
    if not over:
        return p
    d = asdict(p)
    d.update(over)
    d["name"] = key + "+custom"
    d["description"] = p.description + " (overridden: " + ", ".join(f"{k}={v}" for k, v in over.items()) + ")"
    if d["top_k"] < 0 or not (0.0 <= d["top_p"] <= 1.0):
        raise NextScaleError(f"top_k must be >= 0 and top_p in [0, 1], got top_k={d['top_k']} top_p={d['top_p']}")
    return SamplingProtocol(**d)


# ---------------------------------------------------------------------------------------------
# Ranks (thin layer over nextscale.dist, so it can be swapped)
# ---------------------------------------------------------------------------------------------


class _Ranks:
    def __init__(self):
        try:
            from nextscale import dist as d

            self._d = d
        except ImportError:  # pragma: no cover
            self._d = None

    def _td(self):
        import torch.distributed as td

        return td if td.is_available() and td.is_initialized() else None

    @property
    def rank(self) -> int:
        if self._d is not None:
            return self._d.get_rank()
        td = self._td()
        return td.get_rank() if td else 0

    @property
    def world(self) -> int:
        if self._d is not None:
            return self._d.get_world_size()
        td = self._td()
        return td.get_world_size() if td else 1

    def barrier(self) -> None:
        if self._d is not None:
            self._d.barrier()
        elif self._td():
            self._td().barrier()

    def all_ok(self, ok: bool) -> bool:
        """True when every rank says ok (so one rank's error stops all, no hang)."""
        td = self._td()
        if td is None:
            return ok
        import torch

        t = torch.tensor([0 if ok else 1], dtype=torch.int64)
        if td.get_backend() == "nccl":
            t = t.cuda()
        td.all_reduce(t)
        return int(t.item()) == 0


# ---------------------------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------------------------


def chunk_plan(total: int, batch_size: int, rank: int = 0, world: int = 1) -> List[range]:
    """Index ranges of the chunks that ``rank`` samples (chunk j goes to rank j % world)."""
    n_chunks = math.ceil(total / batch_size)
    return [range(j * batch_size, min((j + 1) * batch_size, total)) for j in range(rank, n_chunks, world)]


def default_npz_path(out_dir: str) -> str:
    """``samples/`` -> ``samples.npz`` next to the folder."""
    return os.path.normpath(os.path.abspath(out_dir)) + ".npz"


def _png(out_dir: str, i: int) -> str:
    return os.path.join(out_dir, f"{i:06d}.png")


def _readable(path: str) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:
        return False


def _missing(out_dir: str, idx: range) -> List[int]:
    """Indices of ``idx`` whose PNG is absent or does not decode (e.g. cut off by a kill)."""
    return [i for i in idx if not (os.path.isfile(_png(out_dir, i)) and _readable(_png(out_dir, i)))]


def _remove_stale_tmp(out_dir: str) -> None:
    for n in os.listdir(out_dir):
        if n.startswith(".") and n.endswith(".tmp") and ".png." in n:
            try:
                os.remove(os.path.join(out_dir, n))
            except OSError:
                pass


def _save_png(out_dir: str, i: int, img: np.ndarray, rank: int) -> None:
    from PIL import Image

    from nextscale.atomic import atomic_path

    with atomic_path(_png(out_dir, i), sweep=False) as tmp:  # swept once per run: _remove_stale_tmp
        Image.fromarray(img).save(tmp, format="PNG")


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8, as VAR's reference evaluation does (x * 255, clipped, truncated)."""
    x = np.asarray(images)
    if x.dtype == np.uint8:
        return x
    return np.clip(x.astype(np.float32) * 255.0, 0, 255).astype(np.uint8)


_META_KEYS = (
    "protocol",
    "cfg",
    "top_k",
    "top_p",
    "more_smooth",
    "seed",
    "batch_size",
    "per_class",
    "num_classes",
    "total",
    "resolution",
    "device_type",
    "dtype",
)


def _check_meta(out_dir: str, meta: Dict[str, Any]) -> Optional[str]:
    path = os.path.join(out_dir, META_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return None
    for k in _META_KEYS:
        if k in old and old[k] != meta[k]:
            return (
                f"{out_dir} holds samples made with {k}={old[k]!r}, this run uses {meta[k]!r}; "
                f"use a new --out folder or the same settings to resume"
            )
    return None


# ---------------------------------------------------------------------------------------------
# Main entry
# ---------------------------------------------------------------------------------------------


def sample_for_fid(
    model: Any,
    out_dir: str,
    *,
    per_class: int = 50,
    protocol: str = "var-readme",
    cfg: Optional[float] = None,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    more_smooth: Optional[bool] = None,
    seed: int = 0,
    batch_size: int = 25,
    num_classes: Optional[int] = None,
    npz: Optional[str] = "",
    device=None,
    dtype=None,
    progress: bool = True,
    max_chunks: Optional[int] = None,
    log: Callable[[str], None] = print,
    candidates: int = 1,
    scorer: Any = None,
    speedups: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Sample ``per_class`` images of every class into ``out_dir`` (see the module docstring).

    ``model``: anything :func:`nextscale.pipelines.load_pipeline` accepts, or a pipeline object.
    ``npz``: "" -> ``<out_dir>.npz``; None -> do not pack; a path -> pack there.
    ``max_chunks``: stop after sampling that many chunks on this rank (testing / time-sliced jobs);
    the folder is then incomplete and a re-run finishes it.
    ``candidates`` > 1 with a ``scorer`` is rejection sampling (the reference's d30-re protocol): every
    image is the best of that many candidates (``NextScalePipeline.__call__``'s ``num_candidates``).
    ``speedups``: the opt-in sampling speed-ups (``guidance_cutoff``, ``prune_ratio``, ``prune_last``,
    ``kv_budget``, ``refiner`` + ``refine_from_scale``), recorded in ``sample_fid.json``.
    Returns a summary dict (on every rank; ``npz`` is set on rank 0 once packed).
    """
    from nextscale.sampling import SamplingSettings
    from nextscale.validate import MAX_FID_IMAGES, check_count, check_seed

    per_class = check_count(per_class, "--per-class", hi=MAX_FID_IMAGES)
    candidates = check_count(candidates, "--candidates", hi=1024)
    if candidates > 1 and scorer is None:
        raise NextScaleError("--candidates > 1 needs --scorer (default: the MNIST scorer; or a scorer file)")
    scorer_name = scorer if isinstance(scorer, str) else type(scorer).__name__
    if candidates > 1 and not callable(scorer):
        from nextscale.evaluation.scorers import resolve_scorer

        scorer = None  # resolved below, once the model (and its class count) is known
    batch_size = check_count(batch_size, "--batch")
    seed = check_seed(seed, "--seed")
    proto = get_protocol(protocol, cfg, top_k, top_p, more_smooth)
    SamplingSettings(guidance_scale=proto.cfg, top_k=proto.top_k, top_p=proto.top_p)  # raises naming the field
    ranks = _Ranks()
    rank, world = ranks.rank, ranks.world
    main = rank == 0

    if isinstance(model, (str, os.PathLike)):
        from nextscale.pipelines import load_pipeline

        pipe = load_pipeline(os.fspath(model), device=device, dtype=dtype)
        model_name = os.fspath(model)
    else:
        pipe = model
        model_name = type(model).__name__
        if (device is not None or dtype is not None) and hasattr(pipe, "to"):
            pipe = pipe.to(device, dtype) or pipe
    gen_device = getattr(pipe, "device", None) or "cpu"
    n_cls = int(num_classes if num_classes is not None else pipe.num_classes)
    if n_cls < 1 or n_cls > int(pipe.num_classes):
        raise NextScaleError(f"--num-classes must be between 1 and the model's {pipe.num_classes}, got {n_cls}")
    total = per_class * n_cls
    if total > MAX_FID_IMAGES:
        raise NextScaleError(
            f"--per-class {per_class} x {n_cls} classes = {total:,} images, more than {MAX_FID_IMAGES:,}; "
            f"use at most --per-class {max(1, MAX_FID_IMAGES // n_cls):,} (50 per class is the ImageNet protocol)"
        )
    res = int(pipe.resolution)

    import torch

    meta = {
        "protocol": proto.name,
        "description": proto.description,
        "cfg": proto.cfg,
        "top_k": proto.top_k,
        "top_p": proto.top_p,
        "more_smooth": proto.more_smooth,
        "seed": seed,
        "batch_size": batch_size,
        "per_class": per_class,
        "num_classes": n_cls,
        "total": total,
        "resolution": res,
        "format": "png",
        "labels": "index // per_class",
        "chunk_seed": "seed + chunk_index",
        "model": model_name,
        "torch": torch.__version__,
        "device_type": torch.device(gen_device).type,
        "dtype": str(dtype or "float32"),
    }
    speedups = dict(speedups or {})
    if speedups:  # recorded only when on, so folders written before stay valid
        meta["speedups"] = {k: (type(v).__name__ if k == "refiner" else v) for k, v in speedups.items()}
    if candidates != 1:
        meta.update(candidates=candidates, scorer=scorer_name)
        if scorer is None:
            scorer = resolve_scorer(scorer_name, int(pipe.num_classes))
    os.makedirs(out_dir, exist_ok=True)
    err = _check_meta(out_dir, meta)
    if main and err is None:
        _remove_stale_tmp(out_dir)  # left by a killed run; no rank writes before the check below
    if not ranks.all_ok(err is None):
        raise NextScaleError(err or "another rank refused this output folder (settings differ); see its error")
    if main and not os.path.isfile(os.path.join(out_dir, META_NAME)):
        from nextscale.atomic import write_json

        write_json(os.path.join(out_dir, META_NAME), meta, indent=1)

    mine = chunk_plan(total, batch_size, rank, world)
    todo = [(c, m) for c in mine for m in [_missing(out_dir, c)] if m]
    n_chunks = math.ceil(total / batch_size)
    if main:
        log(
            f"sample-fid: {total} images ({per_class}/class x {n_cls} classes, {res}px), protocol {proto.name} "
            f"[{proto.description}], seed {seed}, {n_chunks} chunks of {batch_size} over {world} process(es); "
            f"rank 0 resumes with {len(mine) - len(todo)}/{len(mine)} chunks already written"
        )
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(mine),
            initial=len(mine) - len(todo),
            desc=f"sample-fid rank 0/{world}",
            unit="chunk",
            dynamic_ncols=True,
        )
    done_now = 0
    ok, error = True, None
    try:
        for idx, need in todo:
            if max_chunks is not None and done_now >= max_chunks:
                break
            j = idx.start // batch_size
            labels = [i // per_class for i in idx]
            gen = torch.Generator(device=gen_device).manual_seed(seed + j)
            out = pipe(
                class_labels=labels,
                guidance_scale=proto.cfg,
                top_k=proto.top_k,
                top_p=proto.top_p,
                more_smooth=proto.more_smooth,
                generator=gen,
                output_type="np",
                show_progress=False,
                num_candidates=candidates,
                scorer=scorer,
                **speedups,
            )
            imgs = _to_uint8(out.images)
            if imgs.shape != (len(idx), res, res, 3):
                raise RuntimeError(
                    f"pipeline returned images of shape {imgs.shape}, expected {(len(idx), res, res, 3)}"
                )
            need = set(need)
            for i, im in zip(idx, imgs):  # the whole chunk is sampled (seeding), only missing images are written
                if i in need:
                    _save_png(out_dir, i, im, rank)
            done_now += 1
            if bar is not None:
                bar.update(1)
    except BaseException as e:  # let the other ranks finish their barrier instead of hanging
        ok, error = False, e
    finally:
        if bar is not None:
            bar.close()
    if isinstance(error, KeyboardInterrupt):
        raise error
    all_ok = ranks.all_ok(ok)
    if error is not None:
        raise error
    if not all_ok:
        raise NextScaleError(
            "another rank failed while sampling; see its error, then re-run the same command to resume"
        )

    summary: Dict[str, Any] = {
        "out": out_dir,
        "total": total,
        "sampled_chunks": done_now,
        "skipped_chunks": len(mine) - len(todo),
        "complete": False,
        "npz": None,
        "protocol": proto.name,
        "rank": rank,
        "world_size": world,
    }
    stopped_early = max_chunks is not None and done_now < len(todo)
    if not ranks.all_ok(not stopped_early):
        return summary
    missing = [i for i in range(total) if not os.path.isfile(_png(out_dir, i))] if main else []
    if main and missing:
        raise NextScaleError(
            f"{len(missing)} images missing in {out_dir} (first: {_png(out_dir, missing[0])}); "
            f"re-run the same command to fill the gaps"
        )
    summary["complete"] = True
    if main and npz is not None:
        path = npz or default_npz_path(out_dir)
        summary["npz"] = pack_npz(out_dir, total, per_class, res, path, progress=progress)
        log(f"sample-fid: wrote {path} (arr_0 uint8 {total}x{res}x{res}x3, labels)")
    ranks.barrier()
    return summary


def pack_npz(
    out_dir: str, total: int, per_class: int, res: int, path: str, progress: bool = False, batch: int = 256
) -> str:
    """Pack ``OUT/000000.png ...`` into an ADM-style npz (streamed; temp file + os.replace)."""
    labels = np.arange(total, dtype=np.int64) // per_class
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="pack npz", unit="img", dynamic_ncols=True)

    def batches():
        for s in range(0, total, batch):
            arr = np.stack([read_image(_png(out_dir, i)) for i in range(s, min(s + batch, total))])
            if arr.shape[1:] != (res, res, 3):
                raise NextScaleError(
                    f"images in {out_dir} are {arr.shape[2]}x{arr.shape[1]}, expected {res}x{res}; "
                    f"the folder mixes runs, sample into a new --out"
                )
            if bar is not None:
                bar.update(len(arr))
            yield arr

    try:
        return write_samples_npz(path, batches(), (total, res, res, 3), labels=labels)
    finally:
        if bar is not None:
            bar.close()
