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
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from nextscale.errors import FieldError, FieldName, NextScaleError
from nextscale.evaluation.io import read_image, write_samples_npz
from nextscale.sampling import SamplingSettings, SpeedUps
from nextscale.settings import Settings, check_needs, fail, setting
from nextscale.validate import MAX_FID_IMAGES, SEED_MAX

__all__ = [
    "PROTOCOLS",
    "SampleFidConfig",
    "get_protocol",
    "sample_for_fid",
    "chunk_plan",
    "default_npz_path",
    "META_NAME",
]

META_NAME = "sample_fid.json"

#: Published protocols: named sampling settings. top_k=0 / top_p=0 disable that filter; more_smooth stays off.
PROTOCOLS: Dict[str, SamplingSettings] = {
    "var-readme": SamplingSettings(guidance_scale=1.5, top_k=900, top_p=0.96),
    "var-paper": SamplingSettings(guidance_scale=2.0, top_k=600, top_p=0.0),
}
DESCRIPTIONS = {
    "var-readme": "VAR README's FID protocol: cfg 1.5, top-p 0.96, top-k 900, more_smooth off",
    "var-paper": "VAR paper's protocol: cfg 2.0, top-k 600, no top-p, more_smooth off",
}
_ALIASES = {"readme": "var-readme", "paper": "var-paper"}


def get_protocol(name: str, **changes: Any) -> Tuple[str, SamplingSettings, str]:
    """(name, settings, description) of a named protocol with ``changes`` (settings by name) applied in
    one ``replace``; changed settings rename it ``<name>+custom`` so a result never claims a protocol it
    did not follow."""
    key = _ALIASES.get(name, name)
    if key not in PROTOCOLS:
        raise fail("protocol", f": unknown sampling protocol {name!r}; use one of: {', '.join(PROTOCOLS)}")
    base = PROTOCOLS[key]
    st = base.replace(**changes)
    over = {k: getattr(st.flat(), k) for k in st.flat_names() if getattr(st.flat(), k) != getattr(base.flat(), k)}
    if not over:
        return key, base, DESCRIPTIONS[key]
    shown = ", ".join(f"{k}={v}" for k, v in over.items())
    return key + "+custom", st, DESCRIPTIONS[key] + f" (overridden: {shown})"


@dataclass
class SampleFidConfig(Settings):
    """Everything ``sample_for_fid`` / ``nextscale sample-fid`` needs (the CLI's flags are these fields)."""

    model: Optional[str] = setting(
        None, "pipeline directory, released var_d*.pth, or hub id", required=True, path="model"
    )
    variant: Optional[str] = setting(
        None, "which released transformer (d16 ... d36) of a folder or hub repo of released .pth files"
    )
    out: Optional[str] = setting(
        None, "folder for the PNGs (created; re-running resumes)", required=True, path="out_dir"
    )
    # 50 per class is the ImageNet protocol (50,000 images)
    per_class: int = setting(50, "images per class (50 -> 50,000 for ImageNet)", min=1, max=MAX_FID_IMAGES)
    protocol: str = setting(
        "var-readme", "var-readme (cfg 1.5, top-p 0.96, top-k 900) or var-paper (cfg 2.0, top-k 600)"
    )
    # changes to the protocol's settings (the run is then named PROTOCOL+custom); speed-ups included
    sampling: Dict[str, Any] = setting(
        None,
        "changes to the protocol's sampling settings",
        default_factory=dict,
        settings=SamplingSettings,
        default_from="the protocol",
    )
    candidates: int = setting(1, "rejection sampling: each image is the best of N by the scorer", min=1, max=1024)
    scorer: Optional[str] = setting(
        None, "'default' (the MNIST scorer of the default model) or an MNIST scorer .safetensors", needs="candidates"
    )
    seed: int = setting(0, "base seed; chunk j uses seed + j", min=0, max=SEED_MAX, max_open=True, must="in [0, 2**63)")
    # part of the seeding: keep it fixed to reproduce
    batch: int = setting(25, "images per chunk/forward pass; part of the seeding, keep it fixed to reproduce", min=1)
    num_classes: Optional[int] = setting(None, "sample only classes 0..N-1 (default: all)", min=1)
    npz: Optional[str] = setting("", "where to pack the samples (default: OUT.npz next to the folder)")
    no_npz: bool = setting(False, "do not pack an .npz")
    device: Optional[str] = setting(None, "cpu, cuda (default: this rank's GPU if available, else cpu)")
    dtype: Optional[str] = setting(None, "compute dtype (default fp32)", choices=("fp32", "bf16", "fp16"))
    progress: bool = setting(True, "progress bar")
    max_chunks: Optional[int] = setting(None, "stop after this many chunks (tests, time slices)", min=0, hidden=True)

    def check_more(self) -> None:
        if self.device:
            from nextscale.validate import check_device

            check_device(self.device, "device")
        st = SamplingSettings().replace(**{k: v for k, v in self.sampling.items() if k != "refiner"})
        # the protocol's flags arrive with their defaults: only the changed ones count as given
        check_needs(SamplingSettings, {**st.changed(), "refiner": self.sampling.get("refiner")})
        check_needs(type(self), {"scorer": self.scorer, "candidates": self.candidates})


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
    "seed",
    "batch_size",
    "per_class",
    "num_classes",
    "total",
    "resolution",
    "device_type",
    "dtype",
)


def _check_meta(out_dir: str, meta: Dict[str, Any]) -> Optional[FieldError]:
    """Why ``out_dir`` cannot be resumed with ``meta`` (its samples were made otherwise), or None."""
    path = os.path.join(out_dir, META_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return None

    def flat(d):  # every setting by its flat name (the nested speed-ups too)
        out = {}
        for k, v in (d or {}).items():
            out.update(flat(v) if isinstance(v, dict) else {k: v})
        return out

    diffs = [(k, old[k], meta[k]) for k in _META_KEYS if k in old and old[k] != meta[k]]
    if "settings" in old:  # a setting added since is compared at its default
        default = flat(SamplingSettings().to_dict())
        o, n = {**default, **flat(old["settings"])}, {**default, **flat(meta["settings"])}
        diffs += [(k, o.get(k), n[k]) for k in n if o.get(k) != n[k]]
    if not diffs:
        return None
    k, was, now = diffs[0]
    return FieldError(
        f"{out_dir} holds samples made with {k}={was!r}, this run uses {now!r}; use a new ",
        FieldName("out"),
        " folder or the same settings to resume",
    )


# ---------------------------------------------------------------------------------------------
# Main entry
# ---------------------------------------------------------------------------------------------


def sample_for_fid(
    model: Any,
    config: SampleFidConfig,
    *,
    log: Callable[[str], None] = print,
    scorer: Any = None,
) -> Dict[str, Any]:
    """Sample ``config.per_class`` images of every class into ``config.out`` (see the module docstring).

    ``model``: a pipeline object, or None to load ``config.model`` (anything
    :func:`nextscale.pipelines.load_pipeline` accepts). ``config.npz``: "" -> ``<out>.npz``; ``no_npz`` ->
    do not pack; a path -> pack there. ``max_chunks``: stop after sampling that many chunks on this
    rank (testing / time-sliced jobs); the folder is then incomplete and a re-run finishes it.
    ``candidates`` > 1 with a scorer is rejection sampling (the reference's d30-re protocol): every
    image is the best of that many candidates (``NextScalePipeline.__call__``'s ``num_candidates``);
    ``scorer`` (a callable) overrides ``config.scorer``. ``config.sampling``: changes to the protocol's
    settings (any ``SamplingSettings`` field, the speed-ups included; a ``refiner`` given as a model
    path is loaded); every setting is recorded in ``sample_fid.json``.
    Returns a summary dict (on every rank; ``npz`` is set on rank 0 once packed).
    """
    c = config
    out_dir, per_class, candidates, batch_size, seed = c.out, c.per_class, c.candidates, c.batch, c.seed
    dtype = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}.get(c.dtype or "fp32")
    device = c.device
    if scorer is None and c.scorer is not None:
        scorer = c.scorer
    if candidates > 1 and scorer is None:
        raise FieldError(
            FieldName("candidates"), " > 1 needs a ", FieldName("scorer"), " (default: the MNIST scorer; or a file)"
        )
    scorer_name = scorer if isinstance(scorer, str) else type(scorer).__name__
    if candidates > 1 and not callable(scorer):
        from nextscale.evaluation.scorers import resolve_scorer

        scorer = None  # resolved below, once the model (and its class count) is known
    changes = dict(c.sampling)
    name, settings, description = get_protocol(c.protocol, **{k: v for k, v in changes.items() if k != "refiner"})
    ranks = _Ranks()
    rank, world = ranks.rank, ranks.world
    main = rank == 0

    import torch

    dtype = getattr(torch, dtype) if dtype else None
    if model is None or isinstance(model, (str, os.PathLike)):
        from nextscale.pipelines import load_pipeline

        model_name = os.fspath(model if model is not None else c.model)
        pipe = load_pipeline(model_name, device=device, dtype=dtype, variant=c.variant)
    else:
        pipe = model
        model_name = type(model).__name__
        if (device is not None or dtype is not None) and hasattr(pipe, "to"):
            pipe = pipe.to(device, dtype) or pipe
    if isinstance(changes.get("refiner"), (str, os.PathLike)):
        from nextscale.pipelines import load_pipeline

        changes["refiner"] = load_pipeline(os.fspath(changes["refiner"]), device=device)
    if changes.get("refiner") is not None:
        settings = settings.replace(refiner=changes["refiner"])
    gen_device = getattr(pipe, "device", None) or "cpu"
    n_cls = int(c.num_classes if c.num_classes is not None else pipe.num_classes)
    if n_cls < 1 or n_cls > int(pipe.num_classes):
        raise fail("num_classes", f" must be between 1 and the model's {pipe.num_classes}, got {n_cls}")
    total = per_class * n_cls
    if total > MAX_FID_IMAGES:
        raise FieldError(
            FieldName("per_class"),
            f" {per_class} x {n_cls} classes = {total:,} images, more than {MAX_FID_IMAGES:,}; use at most ",
            FieldName("per_class"),
            f" {max(1, MAX_FID_IMAGES // n_cls):,} (50 per class is the ImageNet protocol)",
        )
    res = int(pipe.resolution)
    if hasattr(pipe, "patch_nums"):  # model-dependent ranges (prune_last <= scales - 1 ...) before the folder
        from nextscale.sampling import check_for_model

        check_for_model(settings, len(pipe.patch_nums))

    meta = {
        "protocol": name,
        "description": description,
        "settings": settings.to_dict(),
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
    speedups = {k: v for k, v in settings.changed().items() if k in SpeedUps.flat_names()}
    if speedups:  # the speed-ups on, at a glance
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
        raise err or NextScaleError("another rank refused this output folder (settings differ); see its error")
    if main and not os.path.isfile(os.path.join(out_dir, META_NAME)):
        from nextscale.atomic import write_json

        write_json(os.path.join(out_dir, META_NAME), meta, indent=1)

    mine = chunk_plan(total, batch_size, rank, world)
    todo = [(c, m) for c in mine for m in [_missing(out_dir, c)] if m]
    n_chunks = math.ceil(total / batch_size)
    if main:
        log(
            f"sample-fid: {total} images ({per_class}/class x {n_cls} classes, {res}px), protocol {name} "
            f"[{description}], seed {seed}, {n_chunks} chunks of {batch_size} over {world} process(es); "
            f"rank 0 resumes with {len(mine) - len(todo)}/{len(mine)} chunks already written"
        )
    bar = None
    progress = c.progress
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
            if c.max_chunks is not None and done_now >= c.max_chunks:
                break
            j = idx.start // batch_size
            labels = [i // per_class for i in idx]
            gen = torch.Generator(device=gen_device).manual_seed(seed + j)
            out = pipe(
                class_labels=labels,
                settings=settings,
                generator=gen,
                output_type="np",
                show_progress=False,
                num_candidates=candidates,
                scorer=scorer,
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
        "protocol": name,
        "rank": rank,
        "world_size": world,
    }
    max_chunks, npz = c.max_chunks, None if c.no_npz else c.npz
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
                    f"the folder mixes runs, sample into a new output folder"
                )
            if bar is not None:
                bar.update(len(arr))
            yield arr

    try:
        return write_samples_npz(path, batches(), (total, res, res, 3), labels=labels)
    finally:
        if bar is not None:
            bar.close()
