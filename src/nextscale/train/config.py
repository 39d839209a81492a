"""The training configs: every setting of ``nextscale train`` / ``nextscale train-tokenizer``, once.

Each field carries its own documentation and rules as dataclass ``metadata``:

* ``help``: what it does (the CLI's help text; the default is appended from the field itself),
* ``alias``: the official FoundationVision/VAR trainer's argument name (``bs``, ``tblr`` ...), if any,
* ``min`` / ``max`` (``min_open`` / ``max_open``: exclusive), ``choices``: the allowed values,
* ``must``: the rule in words when a range alone would read badly ("a decay in [0, 1)"),
* ``note``: what special values mean ("0 = off"), repeated in the error message,
* ``group``: the CLI's argument group; ``flags``: extra CLI spellings kept for compatibility.

The rules are :mod:`nextscale.settings`' (one engine for every config). The CLI flags are generated
from these fields (``nextscale.app.cli_args``), so a setting, its default, its help and its check exist
in one place. Values are checked on construction (``__post_init__``:
types, ranges, choices, rules between fields) and again by :meth:`TrainConfigBase.validate` before
a run starts (the rules that depend on the machine: devices, world size, files). Errors are
:class:`~nextscale.errors.FieldError` s that name the field (``batch_size must be >= 1``); the CLI
prints the flag instead (``--batch-size must be >= 1``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Tuple

from nextscale.data import MID_RESO
from nextscale.errors import FieldError, FieldName, NextScaleError

# the rule engine lives in nextscale.settings (one for every config); these names stay importable from here
from nextscale.settings import check_keys, check_paths, field_type, setting, type_hints  # noqa: F401
from nextscale.settings import check_value as _check_value
from nextscale.settings import fail as _fail
from nextscale.train.precision import AMP_MODES

__all__ = [
    "TrainConfigBase",
    "LoopConfig",
    "VARTrainConfig",
    "TokenizerTrainConfig",
    "T2ITrainConfig",
    "setting",
    "field_type",
    "field_checked",
]


def field_checked(check: Callable, name: str, *args, **kw):
    """Run a ``nextscale.validate`` check that names its argument; re-raise naming the field."""
    mark = "\x00"
    try:
        return check(*args, mark, **kw)
    except NextScaleError as e:
        head, _, tail = str(e).partition(mark)
        raise FieldError(head, FieldName(name), tail) from None


# CLI groups (shown in this order)
DATA, LENGTH, OPTIM, INIT, PROG, LOSS, LOOP = (
    "data and model",
    "length and batch",
    "optimisation",
    "initialisation of a fresh model",
    "progressive training",
    "losses (defaults: VQGAN / LlamaGen)",
    "loop",
)


@dataclass
class TrainConfigBase:
    """The settings of the training loop, shared by the command configs (``VARTrainConfig``,
    ``TokenizerTrainConfig``) and the loop's own :class:`LoopConfig`: declared here once (a command
    with another default re-states only the default, :func:`_like`)."""

    #: Field groups in CLI order.
    GROUPS: ClassVar[Tuple[str, ...]] = (DATA, LENGTH, OPTIM, INIT, PROG, LOSS, LOOP)

    # Everything random (init, data order, augmentation, class dropout) derives from it: same seed, same run.
    seed: int = setting(
        0,
        "random seed of the run (init, data order, augmentation)",
        alias="seed",
        group=LOOP,
        min=0,
        max=2**63,
        max_open=True,
        must="in [0, 2**63)",
    )
    # Loader processes cost memory per rank; 0 keeps the data in the main process (debuggable, slow).
    workers: Optional[int] = setting(
        None,
        "data loader workers per process; default 4 on GPU, 0 on CPU",
        alias="workers",
        group=LOOP,
        min=0,
        note="0 = load in the main process",
    )
    # None: the rank's GPU under torchrun (cuda:LOCAL_RANK), else cuda if available, else cpu.
    device: Optional[str] = setting(None, "default: cuda:LOCAL_RANK if available, else cpu", group=LOOP)
    # Checkpoints bound the work lost to a crash; each is a full state (weights, optimizer, RNGs).
    ckpt_every: int = setting(
        1000, "steps between checkpoints (also at the end and on SIGTERM/Ctrl-C)", group=LOOP, min=1
    )
    # Older checkpoints are pruned: disk use stays bounded on long runs.
    keep_last: int = setting(3, "checkpoints kept", group=LOOP, min=1, flags=("--keep",))
    # Log lines are cheap, but each one synchronises the loss across ranks.
    log_every: int = setting(20, "steps between log lines", group=LOOP, min=1)
    # The bar is drawn on the main rank only; off for logs that go to files.
    progress: bool = setting(True, "tqdm progress bar", group=LOOP)
    # Flipped copies double the data; off in the reference's ImageNet recipe.
    hflip: bool = setting(False, "random horizontal flips", alias="hflip", group=DATA)
    # Resize the shorter side to mid_reso x the resolution, then random-crop (at least 1: the crop must fit).
    mid_reso: float = setting(
        MID_RESO,
        "resize the shorter side to this x resolution, then random-crop",
        alias="mid_reso",
        group=DATA,
        min=1.0,
        max=4.0,
    )
    # Global: all GPUs together; the per-GPU micro-batch is batch_size / (world x grad_accum).
    batch_size: int = setting(
        768, "global batch per optimizer step, all GPUs together", alias="bs", group=LENGTH, min=1
    )
    grad_accum: int = setting(1, "micro-batches per step", alias="ac", group=LENGTH, min=1)
    # The reference's fp16=0/1/2 is none/fp16/bf16; fp16 uses loss scaling.
    amp: str = setting("none", "mixed precision; fp16 uses loss scaling", alias="fp16", group=OPTIM, choices=AMP_MODES)
    ema: float = setting(
        0.0,
        "EMA decay of the weights, 0 = off (export uses EMA when kept)",
        group=OPTIM,
        min=0.0,
        max=1.0,
        max_open=True,
        must="a decay in [0, 1)",
    )
    # A validation pass / a sample grid costs about as much as a few steps: every few thousand steps.
    eval_every: int = setting(5000, "steps between validation passes", group=LOOP, min=0, note="0 = at the end only")
    sample_every: int = setting(
        5000, "steps between sample pictures", group=LOOP, min=-1, note="0 = at the end only, -1 = never"
    )

    # -- scaling out (issue #25): sharding, activation checkpointing, compile --
    # DDP keeps a full copy per GPU (fastest while it fits); fsdp shards each block (FSDP2) + sharded checkpoints.
    parallel: str = setting(
        "ddp",
        "ddp: a full model per process; fsdp: parameters, grads and optimizer state sharded per block "
        "(FSDP2, bf16 compute on GPU) with sharded checkpoints",
        group=LOOP,
        choices=("ddp", "fsdp"),
    )
    # Recomputes each block's forward in the backward: activations of one block instead of all, ~+30% time.
    grad_checkpointing: bool = setting(
        False, "activation checkpointing per block (less memory, ~1/3 more compute)", group=LOOP
    )
    # Compiling costs minutes at start; it pays off on long GPU runs.
    compile: bool = setting(False, "torch.compile each block (skipped with a reason where unsupported)", group=LOOP)

    def __post_init__(self):
        self.check_values()

    # -- checks --------------------------------------------------------------------------------------
    def check_values(self) -> None:
        """Every field against its type and rules, then the rules between fields (no machine state)."""
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _check_value(type(self), f, getattr(self, f.name)))
        self.micro_batch(world=1)
        self.check_more()

    def check_more(self) -> None:
        """Rules between fields of a subclass (called by :meth:`check_values`)."""

    def validate(self) -> None:
        """All rules, including those of this machine and run (devices, world size, input files);
        called before a run creates any folder or file."""
        from nextscale.validate import check_device

        self.check_values()
        if self.device is not None and not os.environ.get("LOCAL_RANK"):
            field_checked(check_device, "device", self.device)
        check_paths(self)  # the paths a user gave: exist, are a file / a folder, writable
        self.micro_batch(world=int(os.environ.get("WORLD_SIZE", "1") or 1))

    def micro_batch(self, world: int = 1) -> int:
        """The per-rank micro-batch ``batch_size / (world x grad_accum)`` (the one divisibility check)."""
        if self.batch_size % (world * self.grad_accum):
            by = f"world size {world} x " if world > 1 else ""
            raise FieldError(
                FieldName("batch_size"),
                f" {self.batch_size} is not divisible by {by}",
                FieldName("grad_accum"),
                f" {self.grad_accum}; pick a multiple of {world * self.grad_accum}",
            )
        return self.batch_size // (world * self.grad_accum)

    # -- conversions ---------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """A config from a mapping (e.g. a run's ``config.json``); unknown keys are errors with a suggestion."""
        cls.check_keys(d)
        return cls(**dict(d))

    def replace(self, **changes):
        """A copy with ``changes`` (checked like :meth:`from_dict`)."""
        self.check_keys(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def check_keys(cls, keys) -> None:
        check_keys(cls, keys, reference="the reference trainer's")

    def loop_config(self, run_dir: str, max_steps: int, device) -> "LoopConfig":
        """The :class:`LoopConfig` of this run: these settings, the run folder, the number of steps and
        the device (and the command's ``fsdp``, when it has one)."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfigBase)}
        shared["device"] = str(device)
        if getattr(self, "fsdp", False):  # the older spelling of parallel="fsdp"
            shared["parallel"] = "fsdp"
        return LoopConfig(**shared, run_dir=run_dir, max_steps=max_steps, fsdp=shared["parallel"] == "fsdp")


def _like(name: str, default: Any, **metadata) -> Any:
    """Field ``name`` of :class:`TrainConfigBase` with another default (and ``metadata`` changes) for
    one command; the help, alias and rules stay those of the one declaration."""
    f = {f.name: f for f in dataclasses.fields(TrainConfigBase)}[name]
    return field(default=default, metadata={**f.metadata, **metadata})


@dataclass(kw_only=True)
class LoopConfig(TrainConfigBase):
    """What :class:`~nextscale.train.loop.Trainer` runs: the loop settings of :class:`TrainConfigBase`
    plus what a command derives (:meth:`TrainConfigBase.loop_config`). Here ``device`` None means the
    CPU, and ``workers`` None 4 per process on a GPU, else 0."""

    run_dir: str = field(metadata=dict(help="run folder (checkpoints, logs, samples)"))
    max_steps: int = field(metadata=dict(help="optimizer steps of the whole run", min=1))
    # parallel == "fsdp" (derived; the objectives and hooks read it)
    fsdp: bool = field(default=False, metadata=dict(help="parallel is fsdp"))
    eval_batch_size: int = field(default=0, metadata=dict(help="per rank; 0 = the training micro-batch", min=0))

    def __post_init__(self):
        if self.device is None:
            self.device = "cpu"
        if self.workers is None:  # loader processes cost memory per rank: only where they pay off
            self.workers = 4 if str(self.device).startswith("cuda") else 0
        if self.fsdp:  # fsdp is parallel == "fsdp", either spelling
            self.parallel = "fsdp"
        self.fsdp = self.parallel == "fsdp"
        super().__post_init__()


@dataclass
class VARTrainConfig(TrainConfigBase):
    """Every knob of ``nextscale train``; defaults are the reference recipe (reference name: ``alias``)."""

    # -- data / model --
    # A folder of class sub-folders (DIR/train + DIR/val, or one folder); images directly in DIR = unconditional.
    data: Optional[str] = setting(
        None,
        "image folder: one sub-folder per class (DIR/train + DIR/val, or a single folder); "
        "images directly in DIR = unconditional",
        alias="data_path",
        group=DATA,
        path="dir",
    )
    # Pre-encoded tokens: no VQ-VAE encoder at train time (the reference encodes on the fly).
    cache: Optional[str] = setting(
        None, "token cache from `nextscale tokenize` (no VQ-VAE encoder at train time)", group=DATA, path="dir"
    )
    tokenizer: Optional[str] = setting(
        None,
        "VQ-VAE: pipeline dir, vae_*.pth, 'default', or 'random' (smoke tests); "
        "default: the cache's / the init model's",
        group=DATA,
        path="model",
    )
    init: Optional[str] = setting(
        None,
        "fine-tune from a released or exported model (pipeline dir, var_d*.pth, 'default')",
        group=DATA,
        path="model",
    )
    # A named preset, not a depth: the presets also fix the scale schedule and the AdaLN kind.
    preset: str = setting(
        "d16", "architecture of a fresh model (tiny, mnist, d16, d20, d24, d30, d36)", alias="depth", group=DATA
    )
    run_dir: Optional[str] = setting(
        None, "run folder (checkpoints, logs, samples); default runs/var-PRESET", group=DATA, path="out_dir"
    )
    # -- schedule length --
    steps: Optional[int] = setting(None, "optimizer steps (overrides epochs)", group=LENGTH, min=1)
    # Checked even with steps given: a bad value is never silently ignored.
    epochs: float = setting(
        250.0, "passes over the data", alias="ep", group=LENGTH, min=0.0, min_open=True, must="a positive number"
    )
    # -- optimisation --
    # The reference scales the lr linearly with the batch (base at 256 images).
    base_lr: float = setting(
        1e-4, "peak lr = base_lr x batch_size / 256", alias="tblr", group=OPTIM, min=0.0, min_open=True
    )
    lr: Optional[float] = setting(
        None, "absolute peak lr (overrides base_lr)", alias="tlr", group=OPTIM, min=0.0, min_open=True
    )
    weight_decay: float = setting(0.05, "AdamW weight decay", alias="twd", group=OPTIM, min=0.0)
    weight_decay_end: Optional[float] = setting(
        None, "cosine-annealed to this; default = weight_decay", alias="twde", group=OPTIM, min=0.0
    )
    grad_clip: float = setting(2.0, "max grad norm", alias="tclip", group=OPTIM, note="<= 0 = off")
    label_smooth: float = setting(
        0.0,
        "label smoothing of the cross-entropy",
        alias="ls",
        group=OPTIM,
        min=0.0,
        max=1.0,
        max_open=True,
        must="in [0, 1)",
    )
    # In steps, not epochs (the reference's wp = ep/50 is 2% of the run).
    warmup_steps: Optional[int] = setting(
        None, "linear lr warm-up; default 2% of the steps", alias="wp", group=OPTIM, min=0
    )
    warmup_start: float = setting(0.005, "lr factor at step 0", alias="wp0", group=OPTIM, min=0.0)
    lr_end: float = setting(0.01, "final lr factor", alias="wpe", group=OPTIM, min=0.0)
    schedule: Optional[str] = setting(
        None,
        "lr schedule: cos, lin, lin0, lin00, exp, linT; default lin0 (lin<progressive> with progressive)",
        alias="sche",
        group=OPTIM,
    )
    cond_drop: Optional[float] = setting(
        None,
        "class dropout for guidance; default the model's (0.1)",
        group=OPTIM,
        min=0.0,
        max=1.0,
        max_open=True,
        must="in [0, 1)",
    )
    # -- init of a fresh model --
    init_adaln: float = setting(0.5, "AdaLN init scale", alias="aln", group=INIT)
    init_adaln_gamma: float = setting(1e-5, "AdaLN gamma init scale", alias="alng", group=INIT)
    init_head: float = setting(0.02, "head init scale", alias="hd", group=INIT)
    init_std: float = setting(-1.0, "weight init std; -1 = sqrt(1/3C)", alias="ini", group=INIT)
    shared_aln: Optional[bool] = setting(
        None, "one AdaLN shared by all blocks; default: the preset's", alias="saln", group=INIT
    )
    attn_l2_norm: Optional[bool] = setting(None, "cosine attention; default: the preset's", alias="anorm", group=INIT)
    # -- progressive training --
    progressive: float = setting(
        0.0,
        "grow the scales during this fraction of training, 0 = off",
        alias="pg",
        group=PROG,
        min=0.0,
        max=1.0,
        max_open=True,
        must="the fraction of training that grows the scales, in [0, 1)",
    )
    progressive_start: int = setting(4, "first stage: index of the last scale trained", alias="pg0", group=PROG, min=0)
    # In steps (the reference's pgwp = ep/300).
    progressive_warmup_steps: Optional[int] = setting(
        None, "fade-in of a new scale; default steps/300", alias="pgwp", group=PROG, min=0
    )
    # -- loop (the rest: TrainConfigBase) --
    # FSDP for the largest models (d30/d36); DDP otherwise.
    fsdp: bool = setting(False, "the same as --parallel fsdp (kept for older command lines)", group=LOOP)

    def check_more(self) -> None:
        if self.schedule is not None:
            from nextscale.train.optim import lr_factor

            try:
                lr_factor(self.schedule, 50, 0, 100)  # an unknown name raises here
            except NextScaleError as e:
                raise _fail("schedule", f": {e}") from None

    def validate(self) -> None:
        super().validate()
        if (self.data is None) == (self.cache is None):
            raise FieldError(
                "pass exactly one of ",
                FieldName("data"),
                " DIR (images) or ",
                FieldName("cache"),
                " DIR (from nextscale tokenize)",
            )


@dataclass
class TokenizerTrainConfig(TrainConfigBase):
    """Every knob of ``nextscale train-tokenizer`` (defaults: VQGAN / LlamaGen, see ``nextscale.train.tokenizer``)."""

    data: Optional[str] = setting(
        None,
        "image folder (DIR/train + DIR/val, class sub-folders, or images directly in DIR)",
        group=DATA,
        required=True,
        path="dir",
    )
    # Only the preset's vqvae part is used (and not with init).
    preset: str = setting("mnist", "architecture of a fresh tokenizer (tiny, mnist, d16 ...)", group=DATA)
    init: Optional[str] = setting(
        None,
        "fine-tune: vae_ch160v4096z32.pth, a tokenizer/pipeline directory or a run folder",
        group=DATA,
        path="model",
    )
    run_dir: Optional[str] = setting(
        None,
        "run folder (checkpoints, logs, pictures, tokenizer/); default runs/tokenizer-PRESET",
        group=DATA,
        path="out_dir",
        flags=("--out",),
    )
    # Architecture overrides of a fresh tokenizer (None = the preset's).
    vocab_size: Optional[int] = setting(None, "codebook size V (default: the preset's)", group=DATA, min=1)
    z_channels: Optional[int] = setting(None, "code vector width Cvae (default: the preset's)", group=DATA, min=1)
    ch: Optional[int] = setting(
        None, "encoder/decoder base width, a multiple of 32 (default: the preset's)", group=DATA, min=1
    )
    num_res_blocks: Optional[int] = setting(
        None, "residual blocks per level (default: the preset's)", group=DATA, min=1
    )
    patch_nums: Optional[Tuple[int, ...]] = setting(
        None, "scale schedule, e.g. 1 2 4 6 8 (a single number = 1-scale baseline)", group=DATA, min=1
    )
    # VQGAN's uniform init by default; the others are for experiments.
    eini: float = setting(
        -1.0, "codebook init of a fresh model: <0 uniform +-|eini|/V (VQGAN), >0 trunc-normal std, 0 N(0,1)", group=DATA
    )
    # -- schedule length --
    steps: Optional[int] = setting(None, "optimizer steps (overrides epochs)", group=LENGTH, min=1)
    epochs: float = setting(
        40.0, "passes over the data", group=LENGTH, min=0.0, min_open=True, must="a positive number"
    )
    # -- optimisation (LlamaGen vq_train: AdamW 0.9/0.95, constant lr, no decay, clip 1) --
    lr: float = setting(1e-4, "autoencoder lr (AdamW 0.9/0.95)", group=OPTIM, min=0.0, min_open=True)
    disc_lr: Optional[float] = setting(None, "discriminator lr; default = lr", group=OPTIM, min=0.0, min_open=True)
    weight_decay: float = setting(0.0, "AdamW weight decay", group=OPTIM, min=0.0)
    grad_clip: float = setting(1.0, "max grad norm per network", group=OPTIM, note="<= 0 = off")
    warmup_steps: int = setting(0, "linear lr warm-up", group=OPTIM, min=0)
    lr_end: float = setting(1.0, "final lr factor of a cosine decay; 1 = constant", group=OPTIM, min=0.0)
    # -- losses --
    rec_loss: str = setting("l2", "pixel loss (LlamaGen: l2)", group=LOSS, choices=("l2", "l1"))
    rec_weight: float = setting(1.0, "weight of the pixel loss", group=LOSS, min=0.0)
    codebook_weight: float = setting(1.0, "weight of the VQ loss", group=LOSS, min=0.0)
    beta: Optional[float] = setting(None, "commitment weight; default the config's 0.25", group=LOSS, min=0.0)
    # LPIPS needs local VGG16 + LPIPS weights: off without them (nothing is downloaded).
    lpips_weights: Optional[str] = setting(
        None, "local LPIPS weights (file or folder: VGG16 features.* + lin*.model.1.weight); off without it", group=LOSS
    )
    perceptual_weight: float = setting(1.0, "LPIPS weight (with lpips_weights)", group=LOSS, min=0.0)
    disc_weight: float = setting(0.5, "GAN weight, 0 = no discriminator (LlamaGen: 0.5)", group=LOSS, min=0.0)
    # The GAN starts late (LlamaGen: 20000): early on it only fights the reconstruction.
    disc_start: int = setting(20000, "step at which the GAN starts", group=LOSS, min=0)
    adaptive_weight: bool = setting(True, "VQGAN's adaptive GAN weight at the last decoder layer", group=LOSS)
    disc_layers: int = setting(3, "PatchGAN depth", group=LOSS, min=1)
    disc_ch: int = setting(64, "PatchGAN base width", group=LOSS, min=1)
    # -- codebook restart --
    reinit_dead_every: int = setting(
        0, "re-initialise dead codes every N steps (codebook restart), 0 = off", group=LOSS, min=0
    )
    dead_threshold: float = setting(1e-3, "dead = running hits summed over scales below this", group=LOSS, min=0.0)
    # -- bitwise (BSQ) tokenizer: Infinity's; the architecture fields above then size the BSQ-VAE --
    bitwise: bool = setting(
        False,
        "train Infinity's bitwise BSQ tokenizer instead of the VQ-VAE (preset tiny/mnist: 8 bits, 4 px tokens; "
        "small: 16 bits, 8 px; or infinity_vae_d16/d24/d32/d64; z_channels = bits, ch = base width)",
        group=LOSS,
    )
    ch_mult: Optional[Tuple[int, ...]] = setting(None, "bitwise: width multipliers per level (default: the preset's)",
                                                 group=DATA, min=1)  # fmt: skip
    patch_size: Optional[int] = setting(None, "bitwise: pixels per token, a power of 2 (default: the preset's)",
                                        group=DATA, min=1)  # fmt: skip
    pn: str = setting("0.06M", "bitwise: the square scale schedule's size class (Infinity's tables)", group=DATA)
    n_scales: Optional[int] = setting(None, "bitwise: only the first N scales (smaller images)", group=DATA, min=1)
    # BSQ's entropy penalty (per-sample entropy down, codebook entropy up), as Infinity's quantiser weighs it.
    entropy_weight: float = setting(0.1, "bitwise: weight of the entropy penalty", group=LOSS, min=0.0)
    entropy_gamma: float = setting(1.0, "bitwise: weight of the codebook-entropy (usage) term inside it", group=LOSS,
                                   min=0.0)  # fmt: skip
    inv_temperature: float = setting(100.0, "bitwise: inverse temperature of the soft bit assignment", group=LOSS,
                                     min=0.0, min_open=True)  # fmt: skip
    # -- loop (the rest: TrainConfigBase) --
    # Shorter runs than VAR's on smaller images: smaller batches, validation and pictures more often.
    batch_size: int = _like("batch_size", 32)
    eval_every: int = _like("eval_every", 2000)
    sample_every: int = _like("sample_every", 2000)

    def validate(self) -> None:
        super().validate()
        if self.data is None:
            raise FieldError("pass ", FieldName("data"), " DIR (a folder of images)")
        if self.lpips_weights is not None and not os.path.exists(self.lpips_weights):
            raise _fail(
                "lpips_weights",
                f" {self.lpips_weights!r} not found (LPIPS needs local VGG16 + LPIPS weights; it is off without it)",
            )


BSC = "bitwise self-correction (Infinity)"


@dataclass
class T2ITrainConfig(TrainConfigBase):
    """Every knob of ``nextscale train-t2i`` (Infinity text-to-image; reference names, from Infinity's
    ``arg_util.py``, in ``alias``). A fresh model's sizes are the fields below; ``init`` takes them from a model."""

    GROUPS: ClassVar[Tuple[str, ...]] = (DATA, LENGTH, OPTIM, BSC, INIT, LOOP)

    # -- data / model --
    data: Optional[str] = setting(
        None,
        "captioned images: a folder of images + same-name .txt captions, or a .jsonl of {image, caption}",
        alias="data_path",
        group=DATA,
        required=True,
        path="entry",
    )
    # Bad samples (empty / non-UTF-8 caption, missing or broken image, ratio outside the tables) are reported by name.
    on_bad: str = setting("skip", "bad samples: skip them (counted, named) or refuse the data", group=DATA,
                          choices=("skip", "error"))  # fmt: skip
    tokenizer: Optional[str] = setting(
        None,
        "BSQ tokenizer: a tokenizer directory (train-tokenizer --bitwise), a text-to-image pipeline directory "
        "or an infinity_vae_*.pth; default: the init model's",
        group=DATA,
        path="model",
    )
    text_encoder: str = setting(
        "tiny",
        "'tiny' (a small T5 initialised here from the captions' words, no download), a T5 name in the Hugging Face "
        "cache (google/flan-t5-xl) or a T5 directory; with init: the model's own",
        alias="t5_path",
        group=DATA,
        path="model",
    )
    init: Optional[str] = setting(
        None, "fine-tune from a text-to-image pipeline directory (an export of train-t2i, or a converted release)",
        group=DATA, path="model",
    )  # fmt: skip
    run_dir: Optional[str] = setting(
        None, "run folder (checkpoints, logs, samples); default runs/t2i-PRESET", group=DATA, path="out_dir"
    )
    preset: str = setting("tiny", "name of a fresh model's size (only used in the run folder's default name)",
                          group=DATA)  # fmt: skip
    pn: str = setting("0.06M", "image size class of the schedules (0.06M ~256 px with 16 px tokens)", alias="pn",
                      group=DATA)  # fmt: skip
    n_scales: Optional[int] = setting(None, "use only the first N scales of each schedule (small images)", group=DATA,
                                      min=1)  # fmt: skip
    aspect_ratios: Optional[str] = setting(
        None, "aspect-ratio buckets, comma-separated h/w numbers (1,0.5) or W:H like the pipeline (16:9); "
        "default: every template of the table", group=DATA, metavar="R,R,...",
    )  # fmt: skip
    cache: bool = setting(True, "encode the images once into RUN/cache/bits when bitwise self-correction is off "
                          "(the captions are always encoded once, into RUN/cache/text)", group=DATA)  # fmt: skip
    depth: int = setting(4, "blocks of a fresh transformer", alias="depth", group=DATA, min=1)
    embed_dim: int = setting(128, "width C of a fresh transformer", alias="embed_dim", group=DATA, min=4)
    num_heads: int = setting(4, "attention heads of a fresh transformer (C / heads a multiple of 4)", group=DATA,
                             min=1)  # fmt: skip
    block_chunks: int = setting(2, "the released layout's block chunks (names only; depth must divide by it)",
                                group=DATA, min=2)  # fmt: skip
    text_maxlen: int = setting(64, "text tokens per caption (the encoder's max length, cfg_uncond rows)",
                               alias="tlen", group=DATA, min=1)  # fmt: skip
    # -- length --
    steps: Optional[int] = setting(None, "optimizer steps (overrides epochs)", group=LENGTH, min=1)
    epochs: float = setting(100.0, "passes over the data", alias="ep", group=LENGTH, min=0.0, min_open=True,
                            must="a positive number")  # fmt: skip
    # -- optimisation (Infinity's arg_util defaults where they apply) --
    lr: float = setting(6e-4, "peak lr (AdamW 0.9/0.95)", alias="tlr", group=OPTIM, min=0.0, min_open=True)
    weight_decay: float = setting(0.005, "AdamW weight decay", alias="twd", group=OPTIM, min=0.0)
    grad_clip: float = setting(2.0, "max grad norm", alias="tclip", group=OPTIM, note="<= 0 = off")
    warmup_steps: Optional[int] = setting(None, "linear lr warm-up; default 2% of the steps", alias="wp", group=OPTIM,
                                          min=0)  # fmt: skip
    warmup_start: float = setting(0.005, "lr factor at step 0", alias="wp0", group=OPTIM, min=0.0)
    lr_end: float = setting(0.3, "final lr factor", alias="wpe", group=OPTIM, min=0.0)
    schedule: str = setting("cos", "lr schedule: cos, lin, lin0, exp", alias="sche", group=OPTIM)
    # The model's learned cfg_uncond rows replace a dropped caption's features (length-matched), as the reference.
    text_dropout: float = setting(0.1, "caption dropout for guidance (the row becomes the learned cfg_uncond)",
                                  alias="cfg", group=OPTIM, min=0.0, max=1.0, max_open=True,
                                  must="in [0, 1)")  # fmt: skip
    drop_path: float = setting(0.0, "stochastic depth of a fresh model's last block", alias="drop_path_rate",
                               group=OPTIM, min=0.0, max=1.0, max_open=True, must="in [0, 1)")  # fmt: skip
    # The reference's reweight_loss_by_scale=1 crashes (a tuple's .prod()); sqrt_area is what it intends.
    loss_weights: str = setting("uniform", "per-scale loss weights: uniform (1/L per token) or sqrt_area (coarse "
                                "scales count more; the reference's reweight_loss_by_scale=1)",
                                alias="reweight_loss_by_scale", group=OPTIM,
                                choices=("uniform", "sqrt_area"))  # fmt: skip
    # -- bitwise self-correction --
    noise_apply_layers: int = setting(-1, "flip bits on the first N scales (BSC); -1 / 0 = off",
                                      alias="noise_apply_layers", group=BSC, min=-1)  # fmt: skip
    noise_apply_strength: float = setting(0.3, "max flip probability per scale (drawn in [0, this] per scale)",
                                          alias="noise_apply_strength", group=BSC, min=0.0, max=1.0)  # fmt: skip
    noise_apply_requant: bool = setting(True, "re-quantise the flipped bits, so later scales learn to correct them",
                                        alias="noise_apply_requant", group=BSC)  # fmt: skip
    # -- loop --
    batch_size: int = _like("batch_size", 16)
    eval_every: int = _like("eval_every", 0)
    sample_every: int = _like("sample_every", 2000)
    fsdp: bool = setting(False, "shard parameters/optimizer across GPUs instead of DDP", group=LOOP)

    def check_more(self) -> None:
        from nextscale.train.optim import lr_factor

        try:
            lr_factor(self.schedule, 50, 0, 100)
        except NextScaleError as e:
            raise _fail("schedule", f": {e}") from None

    def validate(self) -> None:
        super().validate()
        if self.data is None:
            raise FieldError("pass ", FieldName("data"), " DIR or FILE.jsonl (captioned images)")
        if self.tokenizer is None and self.init is None:
            raise FieldError(
                "pass ",
                FieldName("tokenizer"),
                " (a BSQ tokenizer: the export of a bitwise train-tokenizer run) or ",
                FieldName("init"),
            )
