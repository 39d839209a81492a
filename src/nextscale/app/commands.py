"""Every command's settings, one dataclass each: the CLI's flags are generated from these fields
(``nextscale.app.cli_args``), each default is written here once, and the checks are the fields' rules
(``nextscale.settings``; an error names the field, the CLI prints its flag). The training commands use
the library's ``VARTrainConfig`` / ``TokenizerTrainConfig``, ``sample-fid`` the library's
``SampleFidConfig``, ``demo`` :class:`nextscale.app.demo.DemoConfig`, ``study`` the configs of
:mod:`nextscale.app.study`.

Front-end spellings live here (app/ is the front end): ``flag`` names a flag other than the field's
(``--class`` for ``classes``), ``flags`` adds spellings kept for old command lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from nextscale.data import MID_RESO
from nextscale.errors import FieldError, FieldName
from nextscale.sampling import SamplingSettings
from nextscale.sampling_t2i import T2ISettings
from nextscale.settings import Settings, check_needs, setting
from nextscale.validate import MAX_IMAGES, SEED_MAX, check_device

__all__ = [
    "SampleCommand",
    "EditCommand",
    "InfoCommand",
    "ConvertCommand",
    "ClassesCommand",
    "FidCommand",
    "TokenizeCommand",
    "ExportCommand",
    "EvalTokenizerCommand",
    "EvalT2ICommand",
    "class_id",
]

_MODEL = (
    "pipeline directory (class or text-to-image), released var_d*.pth (with vae_*.pth beside it), hub id "
    "(FoundationVision/var, FoundationVision/Infinity), or 'default' (the bundled model; the default)"
)
_VARIANT = (
    "which released transformer of a folder or hub repo of released files: d16 d20 d24 d30 d36 (VAR), "
    "2b 8b 8b-512 (Infinity), e.g. --model FoundationVision/Infinity --variant 2b: only its files are downloaded"
)
_T2I = "text to image (a text-to-image model)"
_DTYPES = ("fp32", "bf16", "fp16", "int8", "auto")


def _dtype_help() -> str:
    """--dtype's help, with what is fast on this machine (``nextscale.accel.precision``)."""
    from nextscale.accel.precision import precision_advice

    return (
        "compute precision: fp32 (exact), bf16, fp16 (GPU), int8 (CPU: dynamic int8 transformer linears), auto "
        f"(bf16 on a GPU or an AMX CPU, else fp32); default bf16 on GPU, fp32 on CPU. {precision_advice()}"
    )


#: the text-to-image sampling flags of eval-t2i
T2I_FLAGS = ("guidance_scale", "temperature", "top_k", "top_p", "cfg_insertion_layer", "guidance_cutoff")


def class_id(v: str):
    """--class values: an id (207, -1) or a class name ("golden retriever"; see nextscale classes)."""
    try:
        return int(v)
    except ValueError:
        return v


def _model(required: bool = False, help: str = _MODEL, positional: bool = False, default=None, path: str = "model"):
    """A model (or run) the command reads: a path checked before any work (``path`` rule), or a name."""
    return setting(default, help, required=required, positional=positional, path=path)


def _seed(help: str = "random seed (same seed + device = same image)"):
    return setting(0, help, min=0, max=SEED_MAX, max_open=True, must="in [0, 2**63)")


class _Checked(Settings):
    """Commands with a device field check it before any work."""

    def check_more(self) -> None:
        if getattr(self, "device", None):
            check_device(self.device, "device")


@dataclass
class _Sampling(_Checked):
    """What sample and edit share: the model, the sampling settings, seed, device and dtype."""

    model: Optional[str] = _model()
    variant: Optional[str] = setting(None, _VARIANT, metavar="dNN")
    # changes to the model's recommended settings (None: the model's value); speed-ups included
    sampling: Dict[str, Any] = setting(
        None, "sampling settings", default_factory=dict, settings=SamplingSettings, from_model=True
    )
    seed: int = _seed()
    device: Optional[str] = setting(None, "cpu, cuda, cuda:1 ... (default: cuda if available)")
    dtype: Optional[str] = setting(None, _dtype_help(), choices=_DTYPES)

    # text to image: the prompt replaces the class; the size is an aspect ratio of the model's tables or pixels
    prompt: Optional[list] = setting(
        None, "what to draw (a text-to-image model); several quoted prompts = one image each", nargs="+", group=_T2I
    )
    negative_prompt: Optional[str] = setting(
        None, "what to steer away from (default: the model's learned empty prompt)", group=_T2I
    )
    aspect_ratio: Optional[str] = setting(
        None, "width:height (16:9, 1:1, 9:16 ...) of the model's tables; default square", flag="--aspect", group=_T2I
    )
    height: Optional[int] = setting(None, "image height in pixels (a size of the model's tables)", min=1, group=_T2I)
    width: Optional[int] = setting(None, "image width in pixels (with height)", min=1, group=_T2I)
    pn: Optional[str] = setting(
        None, "size class: 0.06M (~256 px), 0.25M (~512), 0.60M (~768), 1M (~1024); default the model's", group=_T2I
    )
    allow_empty_prompt: bool = setting(
        False, "accept an empty prompt (unconditional)", flag="--allow-empty", group=_T2I
    )
    # Infinity's one extra sampling setting (the other sampling flags serve both kinds of model)
    t2i_sampling: Dict[str, Any] = setting(
        None, "text-to-image settings", default_factory=dict, settings=T2ISettings, only=("cfg_insertion_layer",)
    )

    def check_more(self) -> None:
        super().check_more()
        SamplingSettings().replace(**{k: v for k, v in self.sampling.items() if k != "refiner"})
        check_needs(SamplingSettings, self.sampling)  # a flag that acts only with another one is refused alone
        if self.prompt is not None and getattr(self, "class_labels", None) not in (None, []):
            raise FieldError(
                "give either ",
                FieldName("class_labels"),
                " (a class model) or ",
                FieldName("prompt"),
                " (a text-to-image model), not both",
            )


@dataclass
class SampleCommand(_Sampling):
    class_labels: Optional[list] = setting(
        None,
        "class ids or names (-1 = unconditional; see nextscale classes); "
        "default: all classes of a model with <= 16 classes, else 8 random",
        flag="--class",
        nargs="*",
        parse=class_id,
    )
    num: Optional[int] = setting(
        None, "images per class given (default 1), or the number of random-class images", min=1, max=MAX_IMAGES
    )
    out: str = setting(
        "samples.png", "grid image path; single images go to OUT_STEM_<i>.png beside it", path="out_file"
    )
    strip: bool = setting(False, "also write OUT_STEM_strip.png: each image after 1, 2, ..., K scales")
    nrow: Optional[int] = setting(None, "images per grid row", min=1, must=">= 1")
    singles: bool = setting(True, "write one PNG per image besides the grid")
    batch_size: int = setting(16, "images per forward pass", min=1)

    def check_more(self) -> None:
        super().check_more()
        if self.class_labels == []:  # `--class` with no value: never silently "every class"
            raise FieldError(
                FieldName("class_labels"),
                " was given no value; give class ids or names (see nextscale classes), or leave it out",
            )


@dataclass
class EditCommand(_Sampling):
    image: Optional[str] = setting(
        None,
        "image to edit (center-cropped to a square and resized to the model resolution)",
        required=True,
        path="file",
    )
    mask: Optional[str] = setting(
        None, "same size as the image; white = regenerate, black = keep (binary; see mask_threshold)", path="file"
    )
    class_labels: Optional[Any] = setting(
        None,
        "class (id or name) of the regenerated content (-1 = unconditional, the default)",
        flag="--class",
        parse=class_id,
    )
    outpaint: Optional[str] = setting(
        None,
        "place the image inside the model canvas with these margins in canvas pixels (negative = beyond the edge: "
        "write --outpaint=-32,0,32,0); the rest is generated",
        metavar="L,T,R,B",
    )
    keep_scales: Optional[int] = setting(
        None, "keep the first K scales of the image, regenerate the finer ones (variations)", min=0, metavar="K"
    )
    mask_threshold: Optional[float] = setting(
        None, "accept a gray mask: pixels >= this (0..1] are regenerated", min=0.0, min_open=True, max=1.0
    )
    num: int = setting(
        1,
        "number of edits of the image (different samples); > 1 writes a grid to out and OUT_STEM_<i>.png",
        min=1,
        max=MAX_IMAGES,
    )
    out: str = setting("edit.png", "output image path", path="out_file")
    compare: bool = setting(
        False, "also write OUT_STEM_compare.png: input canvas | mask (white = regenerated) | result(s)"
    )


@dataclass
class InfoCommand(Settings):
    model: Optional[str] = _model(help="pipeline directory, var_d*.pth, hub id or 'default'", positional=True,
                                  default="default")  # fmt: skip
    variant: Optional[str] = setting(None, _VARIANT, metavar="dNN")
    json: bool = setting(False, "machine-readable output")


@dataclass
class ClassesCommand(Settings):
    model: Optional[str] = _model(help="pipeline directory, var_d*.pth, hub id or 'default'", positional=True,
                                  default="default")  # fmt: skip
    variant: Optional[str] = setting(None, _VARIANT, metavar="dNN")
    grep: Optional[str] = setting(None, "only the classes whose name (or ImageNet alias) contains WORD", metavar="WORD")


@dataclass
class ConvertCommand(Settings):
    vae: Optional[str] = setting(None, "released tokenizer, e.g. vae_ch160v4096z32.pth", required=True, path="entry")
    var: Optional[str] = setting(
        None, "released transformer, e.g. var_d16.pth (preset inferred from shapes)", required=True, path="entry"
    )
    out: Optional[str] = setting(None, "output directory", required=True, path="out_dir")
    labels: Optional[str] = setting(None, "optional text file: one class name per line", path="file")
    patch_nums: Optional[Tuple[int, ...]] = setting(None, "scale schedule, only for non-released token counts", min=1)


@dataclass
class FidCommand(_Checked):
    samples: Optional[str] = setting(
        None, "folder of PNGs, an .npz with arr_0 (ADM layout), or saved stats", required=True, path="entry"
    )
    ref: Optional[str] = setting(
        None,
        "ADM reference batch (VIRTUAL_imagenet256_labeled.npz), stats saved with save_stats/save_ref_stats, "
        "or a folder / .npz of images",
        required=True,
        path="entry",
    )
    inception_weights: Optional[str] = setting(
        None, "pt_inception-2015-12-05-6726825d.pth (default: $NEXTSCALE_INCEPTION_WEIGHTS)", path="file"
    )
    batch_size: int = setting(50, "images per Inception forward", min=1)
    device: Optional[str] = setting(None, "cpu or cuda (default: cuda if available)")
    splits: int = setting(10, "Inception Score splits", min=1)
    k: int = setting(3, "k-th neighbour radius for precision/recall", min=1)
    pr: bool = setting(True, "precision/recall (needs reference images)")
    sfid: bool = setting(True, "sFID")
    fid_method: str = setting(
        "eigh", "matrix square root: eigh (stable) or sqrtm (pytorch-fid's literal form)", choices=("eigh", "sqrtm")
    )
    save_stats: Optional[str] = setting(None, "save the samples' mu/sigma/features to this .npz", path="out_file")
    save_ref_stats: Optional[str] = setting(
        None, "save the reference's statistics (+features) to this .npz for reuse", path="out_file"
    )
    json: Optional[str] = setting(None, "also write the results as JSON here", path="out_file")
    progress: bool = setting(True, "progress bars")


@dataclass
class TokenizeCommand(_Checked):
    data: Optional[str] = setting(
        None, "image folder (DIR/train + DIR/val, or one folder of class sub-folders)", required=True, path="dir"
    )
    tokenizer: Optional[str] = setting(
        None, "VQ-VAE: pipeline dir, vae_*.pth, 'default', or 'random' (needs preset)", required=True, path="model"
    )
    out: Optional[str] = setting(None, "cache folder to write (atomically)", required=True, path="out_dir")
    preset: Optional[str] = setting(None, "architecture for a random tokenizer / released .pth schedules")
    flip: bool = setting(True, "also store the h-flipped view (training with hflip needs it)")
    mid_reso: float = setting(MID_RESO, "shorter side -> this x resolution before the center crop", min=1.0, max=4.0)
    batch_size: int = setting(64, "images per forward pass", min=1)
    workers: int = setting(0, "data loader workers", min=0)
    device: Optional[str] = setting(None, "default: cuda if available, else cpu")
    seed: int = _seed("seed of a random tokenizer")
    overwrite: bool = setting(False, "replace an existing cache at out")


@dataclass
class ExportCommand(Settings):
    run: Optional[str] = _model(
        True, "run folder (its latest checkpoint) or a checkpoints/step_*.pt file", positional=True, path="entry"
    )
    out: Optional[str] = setting(None, "directory to write", required=True, path="out_dir")
    weights: str = setting("auto", "auto = EMA when the run kept one", choices=("auto", "ema", "raw"))


@dataclass
class EvalT2ICommand(_Checked):
    model: Optional[str] = _model(
        True, "text-to-image pipeline directory or FoundationVision/Infinity (with variant)", positional=True
    )
    variant: Optional[str] = setting(None, "released Infinity variant: 2b 8b 8b-512", metavar="VARIANT")
    prompts_per_category: int = setting(8, "evaluation prompts per category (nextscale.scenes.eval_prompts)", min=1)
    images_per_prompt: int = setting(1, "images generated per prompt", min=1, max=MAX_IMAGES)
    seed: int = _seed("seed of the prompts and of the images (chunk j: seed + j)")
    batch_size: int = setting(8, "images per pipeline call", min=1)
    pn: Optional[str] = setting(None, "size class (default: the model's)")
    fid: bool = setting(True, "also the FID against real renders of the same prompts")
    out: str = setting("eval_t2i.json", "results (JSON, written atomically)", path="out_file")
    sampling: Dict[str, Any] = setting(
        None, "sampling settings", default_factory=dict, settings=T2ISettings, only=T2I_FLAGS, from_model=True
    )
    device: Optional[str] = setting(None, "cpu, cuda ... (default: cuda if available)")
    dtype: Optional[str] = setting(None, "compute dtype (default: bf16 on GPU, fp32 on CPU)", choices=("fp32", "bf16"))
    progress: bool = setting(True, "progress bar")


@dataclass
class EvalTokenizerCommand(_Checked):
    model: Optional[str] = _model(
        True, "tokenizer directory, pipeline directory, train-tokenizer run folder, step_*.pt or vae_*.pth", True
    )
    data: Optional[str] = setting(None, "image folder; its val/ split when present", required=True, path="dir")
    batch_size: int = setting(64, "images per forward pass", min=1)
    max_images: Optional[int] = setting(None, "evaluate only the first N images", min=1)
    picture: Optional[str] = setting(
        None,
        "PNG: rows of [original, rebuilt from 1, 2, ..., K scales]; default MODEL-dir/eval_scales.png for run folders",
        path="out_file",
    )
    rows: int = setting(4, "images in the picture", min=1)
    patch_nums: Optional[Tuple[int, ...]] = setting(None, "scale schedule for a released .pth", min=1)
    inception_weights: Optional[str] = setting(
        None,
        "FID Inception weights for rFID (else $NEXTSCALE_INCEPTION_WEIGHTS; rFID is skipped without them)",
        path="file",
    )
    rfid: bool = setting(True, "rFID (with Inception weights)")
    mid_reso: float = setting(MID_RESO, "shorter side -> this x resolution before the center crop", min=1.0, max=4.0)
    device: Optional[str] = setting(None, "default: cuda if available, else cpu")
    json: Optional[str] = setting(None, "also write the numbers to this JSON file", path="out_file")

    def check_more(self) -> None:
        super().check_more()
        if self.picture is not None:  # its folder is created when missing
            from nextscale.validate import image_format

            image_format(self.picture, "picture")
