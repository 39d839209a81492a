"""Zero-shot editing: in-painting, out-painting, class-conditional editing and variations.

VAR edits without training (paper, Sec. 4.4): the input image is tokenised at every scale; while
the one generation loop (:func:`nextscale.sampling.generate`) runs, a ``constraint`` replaces,
right after each scale is sampled, the tokens of the *kept* region by the input's tokens (and
their code vectors, which is what the next scale and the decoder see). The other tokens are
sampled as usual, conditioned on the kept ones through attention and f_hat.

    edit = NextScaleInpaintPipeline(**pipe.components)                       # no reload
    out = edit(image=img, mask_image=mask, class_labels=207, seed=0)        # white = regenerate
    out = edit(image=img, outpaint=(64, 0, 0, 0), seed=0)                   # extend to the left
    out = edit(image=img, keep_scales=4, seed=0)                            # a variation

Mask semantics (documented in docs/editing.md; the reference is ``demo_zero_shot_edit.ipynb``):

1. Pixels: the mask (diffusers convention: white = regenerate, black = keep) must be binary unless
   ``mask_threshold`` is given (then values >= threshold are regenerated). It gets the same
   crop/resize/placement as the image; a model-grid pixel is regenerated if any white mask pixel
   falls in it.
2. Finest scale (pn_K x pn_K tokens, one token = ``downsample`` x ``downsample`` pixels): a token is
   kept only if all its pixels are kept (so every white pixel is regenerated).
3. Coarser scales, as the reference: the finest keep map is resized bilinearly (align_corners=False)
   to pn x pn and thresholded at > 0.5.
4. Scales with at most ``force_keep_max_tokens`` (= 3, the reference's rule: the 1x1 scale) tokens
   are kept entirely - unless the mask keeps nothing at all (then nothing is forced, so an
   all-white mask is exactly unconstrained generation).
5. ``keep_scales=k`` keeps every token of the first k scales (variations); the mask applies after.

Shapes: B batch, R model resolution (pixels), K scales, l = pn*pn tokens of one scale, Cv code dim.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale.errors import NextScaleError
from nextscale.pipelines import (
    NextScalePipeline,
    NextScalePipelineOutput,
    ScaleStep,
    check_label_count,
    with_setting_keywords,
)
from nextscale.sampling import SamplingSettings

__all__ = [
    "NextScaleInpaintPipeline",
    "EditPlan",
    "finest_keep_mask",
    "scale_keep_masks",
    "make_edit_constraint",
    "parse_outpaint",
    "FORCE_KEEP_MAX_TOKENS",
]

#: The reference keeps every token of scales with at most this many tokens (``ph * pw <= 3``: the 1x1 scale).
FORCE_KEEP_MAX_TOKENS = 3

ImageInput = Any  # PIL image, path, np (H, W, 3) / (B, H, W, 3), torch (3, H, W) / (B, 3, H, W) in [0, 1], or a list
MaskInput = Any  # PIL image, path, np / torch (H, W), (B, H, W), (B, 1, H, W) in [0, 1] (or bool / uint8), or a list


# ---------------------------------------------------------------------------------------------
# Masks per scale and the constraint (pure functions: no pipeline needed)
# ---------------------------------------------------------------------------------------------
def finest_keep_mask(keep_B1HW: torch.Tensor, pn_last: int) -> torch.Tensor:
    """Pixel keep map (B, 1, R, R) bool -> finest-scale keep map (B, pn_last, pn_last) bool.

    A token is kept only if every pixel it covers is kept (one regenerated pixel regenerates it).
    """
    regen_B1hw = F.adaptive_max_pool2d((~keep_B1HW).float(), pn_last)
    return regen_B1hw[:, 0] == 0


def scale_keep_masks(
    keep_Bhw: torch.Tensor,
    patch_nums: Sequence[int],
    keep_scales: int = 0,
    force_keep_max_tokens: int = FORCE_KEEP_MAX_TOKENS,
) -> List[torch.Tensor]:
    """Finest keep map (B, pn_K, pn_K) bool -> K keep masks (B, l_k) bool, one per scale.

    Scale k: ``bilinear(keep, (pn_k, pn_k), align_corners=False) > 0.5`` (the reference's rule; the
    identity at the finest scale); scales with <= ``force_keep_max_tokens`` tokens are kept
    entirely for every sample that keeps at least one token; the first ``keep_scales`` scales are
    kept entirely.
    """
    B = keep_Bhw.shape[0]
    keep_B1hw = keep_Bhw.unsqueeze(1).float()
    keeps_any_B1 = keep_Bhw.reshape(B, -1).any(dim=1, keepdim=True)
    out = []
    for si, pn in enumerate(patch_nums):
        k_Bl = F.interpolate(keep_B1hw, size=(pn, pn), mode="bilinear", align_corners=False).gt(0.5).reshape(B, pn * pn)
        if pn * pn <= force_keep_max_tokens:
            k_Bl = k_Bl | keeps_any_B1
        if si < keep_scales:
            k_Bl = torch.ones_like(k_Bl)
        out.append(k_Bl)
    return out


def make_edit_constraint(input_idx: List[torch.Tensor], keep: List[torch.Tensor], embedding: nn.Embedding):
    """The ``constraint(si, idx_Bl, h_BlCv)`` for :func:`nextscale.sampling.generate`.

    input_idx: K x (B, l) the input's tokens; keep: K x (B, l) bool. Kept positions get the input's
    token id and its exact code vector (also with ``more_smooth``, whose sampled codes are soft);
    the other positions are returned untouched, and no random number is drawn.
    """
    with torch.no_grad():
        input_h = [embedding(idx_Bl).float() for idx_Bl in input_idx]  # K x (B, l, Cv)

    def constraint(si: int, idx_Bl: torch.Tensor, h_BlCv: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        k_Bl = keep[si]
        if not bool(k_Bl.any()):
            return idx_Bl, h_BlCv
        idx_Bl = torch.where(k_Bl, input_idx[si], idx_Bl)
        h_BlCv = torch.where(k_Bl.unsqueeze(-1), input_h[si], h_BlCv.float())
        return idx_Bl, h_BlCv

    return constraint


def parse_outpaint(value: Union[str, Sequence[int], None]) -> Optional[Tuple[int, int, int, int]]:
    """``"left,top,right,bottom"`` or a 4-sequence of ints (pixels of the model canvas) -> tuple."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        try:
            vals = [int(p) for p in parts]
        except ValueError:
            raise NextScaleError(
                f"outpaint must be four integers 'left,top,right,bottom' (pixels), got {value!r}"
            ) from None
    else:
        vals = list(value)
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
            raise NextScaleError(f"outpaint must be four integers (left, top, right, bottom) in pixels, got {value!r}")
    if len(vals) != 4:
        raise NextScaleError(f"outpaint needs four margins left,top,right,bottom (pixels), got {len(vals)}: {value!r}")
    return tuple(int(v) for v in vals)


# ---------------------------------------------------------------------------------------------
# Input conversion
# ---------------------------------------------------------------------------------------------
def _unit_array(a: np.ndarray) -> np.ndarray:
    """A numpy image as float32 in [0, 1] for 8- and 16-bit integers (255 / 65535 = white); floats as they are."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    return a.astype(np.float32)


def images_to_list(image: ImageInput) -> List[torch.Tensor]:
    """-> list of (3, H, W) float32 in [0, 1] (sizes may differ)."""
    from PIL import Image

    if image is None:
        raise NextScaleError("image is required: pass a PIL image, a path, or a [0, 1] tensor (3, H, W)")
    if isinstance(image, (list, tuple)):
        if not image:
            raise NextScaleError("image is an empty list")
        out = []
        for x in image:
            out += images_to_list(x)
        return out
    if isinstance(image, (str, Path)):
        from nextscale.imageio import load_image

        image = load_image(image)
    if isinstance(image, Image.Image):
        from nextscale.imageio import to_rgb

        arr = np.asarray(to_rgb(image, "image"), dtype=np.float32) / 255.0  # any mode and bit depth
        return [torch.from_numpy(arr).permute(2, 0, 1).contiguous()]
    if isinstance(image, np.ndarray):
        arr = _unit_array(image)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise NextScaleError(f"numpy images must be (H, W, 3) or (B, H, W, 3), got shape {image.shape}")
        t = torch.from_numpy(arr).permute(0, 3, 1, 2)
    elif isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[1] != 3:
            raise NextScaleError(f"image tensors must be (3, H, W) or (B, 3, H, W), got shape {tuple(image.shape)}")
    else:
        raise NextScaleError(
            f"unsupported image type {type(image).__name__}: pass a PIL image, a path, a numpy array or a tensor"
        )
    if t.numel() and (t.min() < -1e-4 or t.max() > 1 + 1e-4):
        raise NextScaleError(
            f"image values must be in [0, 1] (got {t.min().item():.3g}..{t.max().item():.3g}); "
            "for a [-1, 1] tensor pass (x + 1) / 2"
        )
    return [x.clamp(0, 1) for x in t]


def masks_to_list(mask: MaskInput) -> List[torch.Tensor]:
    """-> list of (H, W) float32 in [0, 1] (1 = white = regenerate)."""
    from PIL import Image

    if isinstance(mask, (list, tuple)):
        if not mask:
            raise NextScaleError("mask_image is an empty list")
        out = []
        for x in mask:
            out += masks_to_list(x)
        return out
    if isinstance(mask, (str, Path)):
        from nextscale.imageio import load_image

        mask = load_image(mask, mask=True)
    if isinstance(mask, Image.Image):
        from nextscale.imageio import to_rgb

        mask = to_rgb(mask, "mask_image", background=None)  # any bit depth; the colour decides, not the alpha
        return [torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)]
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(_unit_array(mask))
    if not isinstance(mask, torch.Tensor):
        raise NextScaleError(
            f"unsupported mask_image type {type(mask).__name__}: pass a PIL image, a path, a numpy array or a tensor"
        )
    t = mask.detach().cpu()
    t = t.float() if t.dtype == torch.bool else (t.float() / 255.0 if t.dtype == torch.uint8 else t.float())
    if t.ndim == 2:
        t = t[None]
    elif t.ndim == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 3:
        raise NextScaleError(f"mask tensors must be (H, W), (B, H, W) or (B, 1, H, W), got shape {tuple(mask.shape)}")
    if t.numel() and (t.min() < -1e-4 or t.max() > 1 + 1e-4):
        raise NextScaleError(
            f"mask values must be in [0, 1] (white = 1 = regenerate), got {t.min().item():.3g}..{t.max().item():.3g}"
        )
    return list(t.clamp(0, 1))


def binarize_mask(m_hw: torch.Tensor, threshold: Optional[float], i: int) -> torch.Tensor:
    """(H, W) in [0, 1] -> bool regenerate map."""
    if threshold is None:
        gray = (m_hw > 0) & (m_hw < 1)
        if gray.any():
            n = int(gray.sum())
            raise NextScaleError(
                f"mask {i} is not binary: {n} of {m_hw.numel()} pixels are gray (neither black nor white); "
                "use pure black (keep) / white (regenerate), e.g. save it as PNG, not JPEG, "
                "or pass mask_threshold=0.5 to regenerate pixels >= 0.5"
            )
        return m_hw >= 1
    return m_hw >= threshold


def crop_to_aspect(x_CHW: torch.Tensor, w: int, h: int) -> Tuple[int, int, int, int]:
    """Centered crop box (y0, y1, x0, x1) of x with the aspect ratio w:h."""
    _, H, W = x_CHW.shape
    if W * h > H * w:  # too wide
        cw = max(1, round(H * w / h))
        x0 = (W - cw) // 2
        return 0, H, x0, x0 + cw
    ch = max(1, round(W * h / w))
    y0 = (H - ch) // 2
    return y0, y0 + ch, 0, W


def resize_image(x_CHW: torch.Tensor, h: int, w: int, mode: str) -> torch.Tensor:
    if x_CHW.shape[-2:] == (h, w):
        return x_CHW
    if mode == "area":
        return F.interpolate(x_CHW[None], size=(h, w), mode="area")[0]
    return F.interpolate(x_CHW[None], size=(h, w), mode="bicubic", align_corners=False, antialias=True)[0].clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------
@dataclass
class EditPlan:
    """Everything an edit is made of (``NextScaleInpaintPipeline.prepare``)."""

    image: torch.Tensor  # (B, 3, R, R) in [-1, 1]: the canvas the model sees (input placed in it)
    keep_pixels: torch.Tensor  # (B, 1, R, R) bool: pixels whose content is kept
    input_indices: List[torch.Tensor]  # K x (B, l_k): the canvas's tokens
    keep: List[torch.Tensor]  # K x (B, l_k) bool: tokens teacher-forced from input_indices


class NextScaleInpaintPipeline(NextScalePipeline):
    """Zero-shot editing with a VQ-VAE + VAR pair: in-painting, out-painting, class-conditional
    editing and variations, through the one generation loop.

    Build from a loaded pipeline without reloading: ``NextScaleInpaintPipeline(**pipe.components)``
    or ``NextScaleInpaintPipeline.from_pipe(pipe)``; ``from_pretrained`` works as for the base class.
    """

    force_keep_max_tokens: int = FORCE_KEEP_MAX_TOKENS

    @classmethod
    def from_pipe(cls, pipe: NextScalePipeline) -> "NextScaleInpaintPipeline":
        """Share ``pipe``'s models (and its compute dtype)."""
        out = cls(**pipe.components)
        out.dtype = pipe.dtype
        return out

    # ---- inputs -> canvas, keep masks and tokens ----
    @torch.no_grad()
    def encode(self, image_B3HW: torch.Tensor) -> List[torch.Tensor]:
        """Images (B, 3, R, R) in [-1, 1] -> K x (B, l_k) token ids. Always float32 (token choice is
        an argmin over distances, which lower precision could flip)."""
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self.vqvae.img_to_idxBl(image_B3HW.to(self.device, torch.float32))

    def prepare(
        self,
        image: ImageInput,
        mask_image: MaskInput = None,
        outpaint=None,
        keep_scales: Optional[int] = None,
        mask_threshold: Optional[float] = None,
        batch_size: Optional[int] = None,
    ) -> EditPlan:
        """Place the image(s) on the model canvas, build the per-scale keep masks, tokenise.

        Without ``outpaint`` the image is center-cropped to a square and resized to R x R (bicubic,
        antialiased; untouched when already R x R). With ``outpaint=(left, top, right, bottom)``
        (pixels of the R x R canvas, negative = beyond the edge) the image is center-cropped to the
        aspect of the box ``[left, R - right) x [top, R - bottom)`` and resized into it; the rest of
        the canvas is filled by repeating the image's edge pixels and is regenerated. ``mask_image``
        (same size as the image) marks what to regenerate inside the image.
        """
        R, K = self.resolution, len(self.patch_nums)
        imgs = images_to_list(image)
        masks = masks_to_list(mask_image) if mask_image is not None else None
        outpaint = parse_outpaint(outpaint)
        if keep_scales is not None:
            if (
                isinstance(keep_scales, bool)
                or not isinstance(keep_scales, (int, np.integer))
                or not 0 <= keep_scales <= K
            ):
                raise NextScaleError(
                    f"keep_scales must be an integer in 0..{K} (this model has {K} scales), got {keep_scales!r}"
                )
        if masks is None and outpaint is None and keep_scales is None:
            raise NextScaleError(
                "nothing to edit: pass mask_image (white = regenerate), outpaint=(left, top, right, bottom) "
                "or keep_scales=k (variations)"
            )
        if mask_threshold is not None and not (isinstance(mask_threshold, (int, float)) and 0 < mask_threshold <= 1):
            raise NextScaleError(
                f"mask_threshold must be in (0, 1] (pixels >= it are regenerated), got {mask_threshold!r}"
            )

        B = batch_size or max(len(imgs), len(masks or []))
        for name, n in (("images", len(imgs)), ("masks", len(masks) if masks is not None else 1)):
            if n not in (1, B):
                raise NextScaleError(f"got {n} {name} for a batch of {B}: give one (used for all) or {B}")
        imgs = imgs * B if len(imgs) == 1 else imgs
        if masks is not None:
            masks = masks * B if len(masks) == 1 else masks

        x0, y0, x1, y1 = 0, 0, R, R
        if outpaint is not None:
            left, top, right, bottom = outpaint
            if any(not -R < m < R for m in outpaint):
                raise NextScaleError(
                    f"outpaint margins must be in ({-R}, {R}) pixels of the {R}x{R} canvas, got {outpaint}"
                )
            x0, y0, x1, y1 = left, top, R - right, R - bottom
            if x1 - x0 < 1 or y1 - y0 < 1:
                raise NextScaleError(
                    f"outpaint {outpaint} leaves no room for the image: left + right and top + bottom "
                    f"must be < {R} (the canvas size)"
                )
        bw, bh = x1 - x0, y1 - y0
        # the visible part of the box on the canvas, in box and in canvas coordinates
        vy0, vy1, vx0, vx1 = max(0, -y0), bh - max(0, y1 - R), max(0, -x0), bw - max(0, x1 - R)

        canvas, keep_px = [], []
        for i, img in enumerate(imgs):
            _, H, W = img.shape
            # no mask: out-painting keeps the whole image; variations (keep_scales only) keep no region
            regen_hw = torch.full((H, W), outpaint is None, dtype=torch.bool)
            if masks is not None:
                if tuple(masks[i].shape) != (H, W):
                    raise NextScaleError(
                        f"mask {i} is {masks[i].shape[1]}x{masks[i].shape[0]} but image {i} is {W}x{H} "
                        "(width x height): give a mask of the image's size"
                    )
                regen_hw = binarize_mask(masks[i], mask_threshold, i)
            cy0, cy1, cx0, cx1 = crop_to_aspect(img, bw, bh)
            box_img = resize_image(img[:, cy0:cy1, cx0:cx1], bh, bw, "bicubic")  # (3, bh, bw)
            box_regen = resize_image(regen_hw[None, cy0:cy1, cx0:cx1].float(), bh, bw, "area")[0] > 0  # (bh, bw)
            vis = box_img[:, vy0:vy1, vx0:vx1]
            pad = (max(0, x0), max(0, R - x1), max(0, y0), max(0, R - y1))
            canvas.append(F.pad(vis[None], pad, mode="replicate")[0] if any(pad) else vis)
            k_HW = torch.zeros(R, R, dtype=torch.bool)
            k_HW[max(0, y0) : min(R, y1), max(0, x0) : min(R, x1)] = ~box_regen[vy0:vy1, vx0:vx1]
            keep_px.append(k_HW)
        image_B3HW = torch.stack(canvas).mul(2).sub(1).to(self.device)  # (B, 3, R, R) in [-1, 1]
        keep_B1HW = torch.stack(keep_px).unsqueeze(1).to(self.device)  # (B, 1, R, R) bool

        finest_Bhw = finest_keep_mask(keep_B1HW, self.patch_nums[-1])
        if outpaint is not None and not finest_Bhw.reshape(B, -1).any(dim=1).all():
            raise NextScaleError(
                f"outpaint {outpaint}: the placed image covers no whole {R // self.patch_nums[-1]}-pixel "
                "token of the canvas, so nothing of it would be kept; use smaller margins"
            )
        keep = scale_keep_masks(finest_Bhw, self.patch_nums, keep_scales or 0, self.force_keep_max_tokens)
        return EditPlan(image=image_B3HW, keep_pixels=keep_B1HW, input_indices=self.encode(image_B3HW), keep=keep)

    # ---- editing ----
    @with_setting_keywords
    def __call__(
        self,
        image: ImageInput,
        mask_image: MaskInput = None,
        class_labels: Union[None, int, Sequence[int], torch.Tensor] = None,
        *,
        outpaint: Union[None, str, Sequence[int]] = None,
        keep_scales: Optional[int] = None,
        mask_threshold: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
        output_type: str = "pil",
        return_indices: bool = False,
        callback_on_scale: Optional[Callable[[ScaleStep], None]] = None,
        show_progress: bool = False,
        settings: Optional[SamplingSettings] = None,
        **sampling: Any,
    ) -> NextScalePipelineOutput:
        """Edit image(s); white mask pixels are regenerated, black ones kept (diffusers convention).

        image: PIL image, path, np (H, W, 3) / (B, H, W, 3) or torch (3, H, W) / (B, 3, H, W) in
            [0, 1], or a list; resized/cropped to the model resolution (see ``prepare``).
        mask_image: same size as the image (one mask for all or one per image); binary, or give
            ``mask_threshold``. Optional with ``outpaint`` / ``keep_scales``.
        class_labels: None or -1 = unconditional (the reference's in-painting); a class id
            regenerates the region under that class (class-conditional editing); a list gives one
            label per image (a single image is repeated for every label).
        outpaint: (left, top, right, bottom) margins in pixels of the R x R canvas (or "l,t,r,b").
        keep_scales: keep the first k scales of the input entirely (k = 0..K): variations.
        Other arguments (``settings`` and every ``SamplingSettings`` field by name, the opt-in speed-ups
        included) as ``NextScalePipeline.__call__``. The same seed gives the same edit; a mask that
        regenerates everything gives exactly ``NextScalePipeline``'s image for that seed.
        """
        settings = self.settings_for(settings, **sampling)  # the door: one settings object
        from nextscale.validate import check_class_ids

        labels = None
        check_label_count(class_labels)
        check_label_count(image if isinstance(image, (list, tuple)) else None, "image")
        if class_labels is not None:  # integers only (the pipeline's rule): 1.5, True, '7' are refused
            labels = check_class_ids(class_labels, self.num_classes, class_names=self.labels)
            labels = [labels] if isinstance(labels, int) else labels

        imgs = images_to_list(image)  # B x (3, H, W) in [0, 1]
        n_lab = len(labels) if labels is not None else 1
        B = max(len(imgs), n_lab)
        if n_lab not in (1, B) or len(imgs) not in (1, B):
            raise NextScaleError(
                f"got {n_lab} class labels for {len(imgs)} images: give one label (used for all) or {len(imgs)}"
            )
        labels = [-1] * B if labels is None else (labels * B if len(labels) == 1 else labels)
        self.check_memory(B)  # refused with the estimate, before the plan and the loop

        plan = self.prepare(
            imgs, mask_image, outpaint=outpaint, keep_scales=keep_scales, mask_threshold=mask_threshold, batch_size=B
        )
        kept = torch.stack([k.float().mean() for k in plan.keep])
        if bool((kept == 1).all()):
            warnings.warn(
                "every token is kept (an all-black mask, or keep_scales = number of scales): the result is "
                "the input's reconstruction; paint the region to regenerate white",
                UserWarning,
                stacklevel=2,
            )
        elif bool((kept == 0).all()):
            warnings.warn(
                "the mask keeps nothing (all white): this is plain generation; paint the region to keep black",
                UserWarning,
                stacklevel=2,
            )
        constraint = make_edit_constraint(plan.input_indices, plan.keep, self.vqvae.quantize.embedding)
        return self._run(
            B,
            labels,
            settings,
            generator=self.make_generator(generator, seed),
            output_type=output_type,
            return_indices=return_indices,
            callback_on_scale=callback_on_scale,
            show_progress=show_progress,
            constraint=constraint,
        )
