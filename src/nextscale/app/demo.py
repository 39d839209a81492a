"""Interactive demo: a local web page where the image forms scale by scale (``nextscale demo``).

A class model gets the Generate and Edit tabs; a text-to-image model (``NextScaleT2IPipeline``) a "Text to
image" tab (prompt, negative prompt, aspect-ratio dropdown from the model's tables, size class and one widget
per ``T2ISettings`` field the sampler honours), streamed scale by scale the same way (:class:`T2IDemoBackend`).

    from nextscale.app.demo import build_demo, launch_demo
    demo = build_demo(NextScalePipeline.from_pretrained("default"))
    launch_demo(demo)                                        # or: nextscale demo

Needs the optional extra ``nextscale[demo]`` (Gradio). Everything Gradio-specific is in
:func:`build_demo` / :func:`launch_demo`; the work is done by :class:`DemoBackend`, which is plain
Python (validation + calls into the pipelines) and is tested without a browser.

Server-side rules (a client can send anything through the API, not only what the widgets allow):

- one pipeline shared by every user; Gradio's queue bounds the waiting requests (``max_size``) and
  the concurrent ones (``default_concurrency_limit``); on top of that one lock serialises the
  model itself (its KV cache is state), so results of concurrent requests never mix;
- every value is validated here (type, finiteness, range) and a bad one is answered with an error
  message (``gr.Error``), never a crash; unexpected failures are logged and answered with a
  generic message;
- no network: analytics / telemetry are switched off before Gradio is imported, the theme uses
  system fonts, and the server binds to loopback unless told otherwise (then it warns).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import math
import os
import queue
import secrets
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from nextscale.errors import FieldError, FieldName, NextScaleError
from nextscale.settings import Settings, check_number, setting

__all__ = [
    "DemoBackend",
    "DemoLimits",
    "build_demo",
    "launch_demo",
    "serve",
    "startup_messages",
    "is_loopback",
    "EDIT_MODES",
    "OUTPAINT_SIDES",
    "T2IDemoBackend",
    "t2i_sampling_fields",
    "aspect_choices",
]

log = logging.getLogger("nextscale.app.demo")

EDIT_MODES = ("in-paint", "out-paint", "class edit", "variations")
OUTPAINT_SIDES = ("left", "right", "top", "bottom")
RANDOM = "random"
UNCONDITIONAL = "-1"


@dataclass
class DemoLimits:
    """What the server accepts (checked on every request, whatever the widgets allow)."""

    max_batch_size: int = 4
    max_guidance: float = 20.0
    max_seed: int = 2**31 - 1
    max_image_pixels: int = 4096 * 4096  # uploads larger than this are refused (decompression bombs)
    timeout_s: float = 600.0  # one request's generation, waiting for the model included


# ---------------------------------------------------------------------------------------------
# Validation: anything may arrive through the API. The rules are the settings' own
# (nextscale.settings); a widget only turns its value into the field's type first, and an error
# names the widget (its label) instead of the field.
# ---------------------------------------------------------------------------------------------
def _coerce(kind, v: Any):
    """A widget / API value as ``kind`` where that is unambiguous (whole floats and numeric strings
    for ints, numeric strings for floats, 0/1 for booleans); anything else is left for the rules."""
    if isinstance(v, str) and kind in (int, float):
        try:
            v = float(v.strip())
        except ValueError:
            return v
    if kind is int and isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v) == int(v):
        return int(v)
    if kind is bool and not isinstance(v, (bool, float)) and v in (0, 1):
        return bool(v)
    if kind is float and isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        return float(v)
    return v


def _int(label: str, v: Any, lo: int, hi: int) -> int:
    """A whole number in lo..hi, named ``label`` in the error."""
    v = _coerce(int, v)
    check_number(v, label, lo, hi)
    if isinstance(v, float):
        raise NextScaleError(f"{label} must be a whole number, got {v!r}")
    return int(v)


def check_bool(name: str, v: Any) -> bool:
    v = _coerce(bool, v)
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    raise NextScaleError(f"{name} must be true or false, got {v!r}")


def check_choice(name: str, v: Any, choices: Sequence[str]) -> str:
    if not isinstance(v, str) or v not in choices:
        raise NextScaleError(f"{name} must be one of {', '.join(choices)}; got {v!r}")
    return v


def label_of(f) -> str:
    """A setting's widget label: its ``label`` metadata, else its name in words."""
    return f.metadata.get("label") or f.name.replace("_", " ")


def sampling_fields() -> List[Tuple[type, Any]]:
    """The settings that are widgets, in order: every ``SamplingSettings`` field (speed-ups included)
    that is a number, a switch or a choice (not the optional ones: kv_budget, refiner, ...)."""
    from nextscale.sampling import SamplingSettings
    from nextscale.settings import field_type

    out = []
    for owner, f in SamplingSettings.flat_fields():
        kind, optional = field_type(owner, f.name)
        if optional or kind not in (bool, int, float, str) or (kind is str and not f.metadata.get("choices")):
            continue
        out.append((owner, f))
    return out


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# The backend: validation + calls into the pipelines (no Gradio here)
# ---------------------------------------------------------------------------------------------
class DemoBackend:
    """One shared pipeline behind a lock; generator methods yield ``(image, strip, status)`` after
    every scale (``strip`` is None until the end), then the final result with the per-scale strip."""

    def __init__(self, pipe, limits: Optional[DemoLimits] = None, scale_delay: float = 0.0):
        from nextscale.editing import NextScaleInpaintPipeline

        self.pipe = pipe
        self.editor = NextScaleInpaintPipeline.from_pipe(pipe)
        self.limits = limits or DemoLimits()
        self.scale_delay = float(scale_delay)  # pause between streamed scales (to watch them; 0 = none)
        self.lock = threading.Lock()  # the model (and its KV cache) serves one request at a time
        self.num_scales = len(pipe.patch_nums)
        self.vocab_size = int(getattr(pipe.vqvae, "vocab_size", 0) or 4096)
        self.max_top_k = self.vocab_size  # k = vocabulary size: no filtering
        #: the sampling widgets: (owning settings class, field), in API order after the request's own values
        self.fields = sampling_fields()
        self.labels = {f.name: label_of(f) for _, f in self.fields}
        #: what the server accepts beyond the settings' own rules (a slider's end may be lower)
        self.bounds = {
            "guidance_scale": self.limits.max_guidance,
            "top_k": self.max_top_k,
            "guidance_cutoff": self.num_scales,
            "prune_last": self.num_scales,
        }
        self._examples: Dict[str, Callable[[], Image.Image]] = {
            "shapes": self._shapes_example,
            "stripes": self._stripes_example,
        }
        for c in self._example_classes():
            self._examples[f"generated: {self.pipe.class_name(c)}"] = functools.partial(self._generated_example, c)

    # ---- classes ----
    def class_choices(self, with_random: bool = True) -> List[Tuple[str, str]]:
        """Dropdown choices (label, value); values are strings: 'random', '-1' (unconditional) or a class id."""
        out = [("random class", RANDOM)] if with_random else []
        out.append(("unconditional", UNCONDITIONAL))
        for c in range(self.pipe.num_classes):
            name = self.pipe.class_name(c)
            out.append((f"{c}: {name}" if name != str(c) else f"class {c}", str(c)))
        return out

    def parse_class(self, v: Any, allow_random: bool = True) -> Any:
        """'random' (if allowed), or an int in -1..num_classes-1 (ints and numeric strings accepted)."""
        if allow_random and v == RANDOM:
            return RANDOM
        nc = self.pipe.num_classes
        try:
            c = _int("class", v, -1, nc - 1)
        except NextScaleError:
            raise NextScaleError(
                f"class must be {'random, ' if allow_random else ''}-1 (unconditional) or a class id "
                f"0..{nc - 1}, got {v!r}"
            ) from None
        from nextscale.validate import check_class_ids

        return check_class_ids(c, nc, "class")  # the API's rule (the widget's whole-number float is an int by now)

    def _labels(self, cls, batch_size: int, seed: int) -> List[int]:
        if cls == RANDOM:
            g = torch.Generator().manual_seed(seed)
            return torch.randint(0, self.pipe.num_classes, (batch_size,), generator=g).tolist()
        return [int(cls)] * batch_size

    # ---- shared sampling arguments ----
    def upper(self, f) -> Optional[float]:
        """The largest value the server accepts for setting ``f`` (None: the setting's own rules)."""
        return self.bounds.get(f.name, f.metadata.get("soft_max"))

    def sampling_args(self, **values) -> List[Any]:
        """The sampling widgets' values in API order: ``values`` by setting name, the rest as the model
        recommends (for API clients and tests: ``/generate`` takes class, seed, random seed, batch size,
        then these)."""
        rec = self.pipe.settings.flat()
        unknown = set(values) - {f.name for _, f in self.fields}
        if unknown:
            raise NextScaleError(f"not a demo setting: {sorted(unknown)}")
        return [values.get(f.name, getattr(rec, f.name)) for _, f in self.fields]

    def check_sampling(self, values: Sequence[Any]):
        """The widgets' values (API order; missing trailing ones: the model's recommendation) -> one
        ``SamplingSettings``, checked by its own rules and this server's bounds; errors name the widget."""
        from nextscale.settings import field_type

        if len(values) > len(self.fields):
            raise NextScaleError(f"got {len(values)} sampling values; this demo takes {len(self.fields)}")
        changes = {}
        try:
            for (owner, f), v in zip(self.fields, values):
                kind = field_type(owner, f.name)[0]
                v = tuple(_coerce(kind, x) for x in v) if isinstance(v, (list, tuple)) else _coerce(kind, v)
                if v is None:
                    raise FieldError(FieldName(f.name), " must be given")
                changes[f.name] = v
            settings = self.pipe.settings.replace(**changes)
            flat = settings.flat()
            for _, f in self.fields:
                hi = self.upper(f)
                v = getattr(flat, f.name)
                for x in v if isinstance(v, tuple) else (v,):
                    if hi is not None and not isinstance(x, (bool, str)) and x > hi:
                        raise FieldError(FieldName(f.name), f" must be <= {hi:g}, got {x:g}")
        except FieldError as e:
            raise NextScaleError(e.render(lambda n: self.labels.get(n, n))) from None
        return settings

    def check_request(self, seed, random_seed, batch_size) -> Tuple[int, int]:
        """(seed, batch size) of a request; a random seed when asked."""
        lim = self.limits
        batch = _int("batch size", batch_size, 1, lim.max_batch_size)
        if check_bool("random seed", random_seed):
            seed = secrets.randbelow(lim.max_seed + 1)
        else:
            seed = _int("seed", seed, 0, lim.max_seed)
        from nextscale.validate import check_seed

        return check_seed(seed), batch  # the API's rule too (a DemoLimits.max_seed above 2**63 is still refused)

    # ---- running the model: a worker thread holds the lock, the caller streams its scales ----
    def _stream(self, run: Callable[[Callable], Any]) -> Iterator[Tuple[str, Any]]:
        q: "queue.Queue[Tuple[str, Any]]" = queue.Queue()

        def work():
            try:
                if not self.lock.acquire(timeout=self.limits.timeout_s):
                    raise NextScaleError("the server is busy; try again later")
                try:
                    out = run(lambda step: q.put(("scale", step)))
                finally:
                    self.lock.release()
                q.put(("done", out))
            except BaseException as e:  # noqa: BLE001 - handed to the request that asked
                q.put(("error", e))

        threading.Thread(target=work, name="nextscale-demo-model", daemon=True).start()
        deadline = time.monotonic() + self.limits.timeout_s
        for _ in range(self.num_scales + 1):  # K scales, then done (or an error)
            try:
                kind, val = q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise NextScaleError(f"generation took longer than {self.limits.timeout_s:g} s") from None
            if kind == "error":
                raise val
            yield kind, val
            if kind == "done":
                return
        raise NextScaleError("internal error: the model reported more scales than it has")

    @staticmethod
    def _tile(images: Sequence[Image.Image]) -> Image.Image:
        if len(images) == 1:
            return images[0]
        from nextscale.imageio import make_grid

        return make_grid(images, nrow=min(len(images), 2 if len(images) == 4 else 4))

    def _strip(
        self, per_scale: List[List[Image.Image]], lead: Optional[List[Tuple[str, List[Image.Image]]]] = None
    ) -> Image.Image:
        """Rows = images of the batch, columns = [lead columns] + image after 1, 2, ..., K scales."""
        from nextscale.imageio import make_grid

        pns = self.pipe.patch_nums
        B = len(per_scale[0])
        cell = 128  # every cell 128 px: big enough to see a tiny model's pixels, small for a 10-scale 256 px one

        def fit(im: Image.Image) -> Image.Image:
            return (
                im
                if im.size == (cell, cell)
                else im.resize((cell, cell), Image.NEAREST if im.size[0] < cell else Image.LANCZOS)
            )

        lead = lead or []
        cells, caps = [], []
        for i in range(B):
            for name, ims in lead:
                cells.append(fit(ims[i]))
                caps.append(name)
            for k, ims in enumerate(per_scale):
                cells.append(fit(ims[i]))
                caps.append(f"{pns[k]}x{pns[k]}")
        return make_grid(cells, nrow=len(lead) + len(per_scale), captions=caps)

    def _run_streaming(self, run, what: str, lead=None) -> Iterator[Tuple[Image.Image, Optional[Image.Image], str]]:
        t0 = time.monotonic()
        per_scale: List[List[Image.Image]] = []
        for kind, val in self._stream(run):
            if kind == "scale":
                per_scale.append(list(val.images))
                yield (
                    self._tile(val.images),
                    None,
                    f"scale {val.scale_index + 1}/{val.num_scales} ({val.patch_num}x{val.patch_num})…",
                )
                if self.scale_delay > 0 and val.scale_index + 1 < val.num_scales:
                    time.sleep(self.scale_delay)
            else:
                out = val
        dt = time.monotonic() - t0
        strip = self._strip(per_scale, lead) if per_scale else None
        yield self._tile(out.images), strip, f"done: {what} · {self.num_scales} scales · {dt:.1f} s"

    # ---- Generate ----
    def generate(self, class_choice, seed, random_seed, batch_size, *sampling):
        """Validate, then yield ``(image, strip, status)`` per scale and once more at the end.
        ``sampling``: the sampling widgets' values (``self.fields`` order, speed-ups included)."""
        cls = self.parse_class(class_choice)
        seed, batch = self.check_request(seed, random_seed, batch_size)
        settings = self.check_sampling(sampling)
        labels = self._labels(cls, batch, seed)
        pipe = self.pipe

        def run(cb):
            return pipe(
                class_labels=labels,
                settings=settings,
                generator=torch.Generator(device=pipe.device).manual_seed(seed),
                output_type="pil",
                callback_on_scale=cb,
            )

        names = ", ".join(dict.fromkeys(self.pipe.class_name(c) if c >= 0 else "unconditional" for c in labels))
        yield from self._run_streaming(run, f"seed {seed} · class {names}")

    # ---- Edit ----
    def _editor_value(self, value) -> Tuple[Image.Image, Optional[Image.Image]]:
        """ImageEditor value {'background', 'layers', 'composite'} -> (RGB image, L mask or None);
        every painted (non-transparent) pixel of any layer is regenerated."""
        if value is None:
            raise NextScaleError("no image: upload one or pick an example first")
        if isinstance(value, Image.Image):
            bg, layers = value, []
        elif isinstance(value, dict):
            bg, layers = value.get("background"), value.get("layers") or []
            if bg is None:
                bg = value.get("composite")
        else:
            raise NextScaleError(f"image must be an image-editor value, got {type(value).__name__}")
        if not isinstance(bg, Image.Image):
            raise NextScaleError("no image: upload one or pick an example first")
        if not isinstance(layers, (list, tuple)) or not all(isinstance(x, Image.Image) for x in layers):
            raise NextScaleError("the painted layers must be images")
        w, h = bg.size
        if w < 1 or h < 1 or w * h > self.limits.max_image_pixels:
            raise NextScaleError(f"image must have 1..{self.limits.max_image_pixels} pixels, got {w}x{h}")
        regen = np.zeros((h, w), dtype=bool)
        for i, layer in enumerate(layers):
            if layer.size != (w, h):
                raise NextScaleError(f"painted layer {i} is {layer.size[0]}x{layer.size[1]} but the image is {w}x{h}")
            arr = np.asarray(layer.convert("RGBA"))
            regen |= arr[..., 3] > 0
        mask = Image.fromarray(regen.astype(np.uint8) * 255, mode="L") if regen.any() else None
        from nextscale.imageio import to_rgb

        return to_rgb(bg, "image"), mask  # any mode and bit depth (a 16-bit PNG scaled, not clipped) or one line

    def edit(
        self, editor_value, mode, class_choice, outpaint_side, outpaint_px, keep_scales, seed, random_seed, batch_size,
        *sampling,
    ):  # fmt: skip
        """Validate, then stream an edit like :meth:`generate` (strip columns: input, regenerated, scales)."""
        mode = check_choice("mode", mode, EDIT_MODES)
        seed, batch = self.check_request(seed, random_seed, batch_size)
        settings = self.check_sampling(sampling)
        image, mask = self._editor_value(editor_value)
        R, K = self.pipe.resolution, self.num_scales
        kw: Dict[str, Any] = {}
        if mode == "in-paint":
            cls = -1
        else:
            cls = self.parse_class(class_choice)
        if mode in ("in-paint", "class edit"):
            if mask is None:
                raise NextScaleError(f"{mode}: paint the region to regenerate first (painted = regenerated)")
            if mode == "class edit" and cls in (RANDOM, -1):
                raise NextScaleError("class edit: pick the class to paint in (not random / unconditional)")
            kw["mask_image"] = mask
        elif mode == "out-paint":
            side = check_choice("out-paint side", outpaint_side, OUTPAINT_SIDES)
            m = _int("out-paint width", outpaint_px, 1, R - 1)
            kw["outpaint"] = {
                "left": (m, 0, -m, 0),
                "right": (-m, 0, m, 0),
                "top": (0, m, 0, -m),
                "bottom": (0, -m, 0, m),
            }[side]
            if mask is not None:
                kw["mask_image"] = mask
        else:  # variations: keep the first k scales, regenerate the rest (the painted region is ignored)
            kw["keep_scales"] = _int("keep scales", keep_scales, 0, K)
        labels = self._labels(cls, batch, seed)
        editor = self.editor
        if not self.lock.acquire(timeout=self.limits.timeout_s):  # prepare() tokenises with the shared tokenizer
            raise NextScaleError("the server is busy; try again later")
        try:
            plan = editor.prepare(
                image, kw.get("mask_image"), outpaint=kw.get("outpaint"), keep_scales=kw.get("keep_scales")
            )
        finally:
            self.lock.release()
        canvas = _to_pil(plan.image[0].add(1).mul(0.5))
        regen = _to_pil((~plan.keep_pixels[0]).float().expand(3, -1, -1))
        B = batch

        def run(cb):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # all-white / all-black notes: the strip shows the mask
                return editor(
                    image,
                    class_labels=labels,
                    settings=settings,
                    generator=torch.Generator(device=editor.device).manual_seed(seed),
                    output_type="pil",
                    callback_on_scale=cb,
                    **kw,
                )

        names = ", ".join(dict.fromkeys(self.pipe.class_name(c) if c >= 0 else "unconditional" for c in labels))
        pct = 100.0 * (1.0 - plan.keep[-1][0].float().mean().item())
        yield from self._run_streaming(
            run,
            f"{mode} · seed {seed} · class {names} · {pct:.0f}% of the finest tokens regenerated",
            lead=[("input", [canvas] * B), ("regen", [regen] * B)],
        )

    # ---- examples for the Edit tab ----
    def example_names(self) -> List[str]:
        return list(self._examples)

    def example(self, name) -> Image.Image:
        name = check_choice("example", name, self.example_names())
        if name.startswith("generated"):
            with self.lock:
                return self._examples[name]()
        return self._examples[name]()

    def _example_classes(self) -> List[int]:
        return sorted({0, min(1, self.pipe.num_classes - 1)})

    def _size(self) -> int:
        return max(256, self.pipe.resolution)  # big enough to paint on comfortably

    def _shapes_example(self) -> Image.Image:
        S = self._size()
        img = Image.new("RGB", (S, S), (200, 60, 50))
        d = ImageDraw.Draw(img)
        d.ellipse((S * 0.15, S * 0.15, S * 0.85, S * 0.85), fill=(40, 190, 90))
        d.rectangle((S * 0.4, S * 0.05, S * 0.6, S * 0.3), fill=(240, 220, 60))
        return img

    def _stripes_example(self) -> Image.Image:
        S = self._size()
        img = Image.new("RGB", (S, S), (30, 60, 160))
        d = ImageDraw.Draw(img)
        for i in range(0, S, S // 8):
            d.rectangle((i, 0, i + S // 16 - 1, S), fill=(240, 240, 240))
        return img

    def _generated_example(self, c: int) -> Image.Image:
        out = self.pipe(class_labels=[c], seed=0, output_type="pil")
        S = self._size()
        return out.images[0].resize((S, S), Image.LANCZOS) if out.images[0].size[0] < S else out.images[0]


# ---------------------------------------------------------------------------------------------
# Text to image: the backend of the "Text to image" tab (a NextScaleT2IPipeline). The rules are the
# class backend's (it extends DemoBackend): every value checked here whatever a client sends, one
# lock serialises the model, errors are one line naming the widget.
# ---------------------------------------------------------------------------------------------
#: prompts longer than this many characters are refused before tokenising (the encoder's limit is checked too)
MAX_PROMPT_CHARS = 2000


def t2i_sampling_fields() -> List[Tuple[type, Any]]:
    """The text-to-image settings that are widgets, in order: the ``T2ISettings`` fields the sampler honours
    that are a number, a switch or a choice with more than one value."""
    from nextscale.sampling_t2i import T2I_HONOURED, T2ISettings
    from nextscale.settings import field_type

    out = []
    for owner, f in T2ISettings.flat_fields():
        kind, optional = field_type(owner, f.name)
        if f.name not in T2I_HONOURED or optional or kind not in (bool, int, float, str):
            continue
        if kind is str and len(f.metadata.get("choices") or ()) < 2:
            continue  # one choice (guidance_schedule "constant"): nothing to pick
        out.append((owner, f))
    return out


def aspect_choices() -> List[Tuple[str, str]]:
    """Dropdown choices (label, value) of the dynamic-resolution templates: value "w:h" (width:height, what
    ``aspect_ratio`` takes), square first."""
    from nextscale.schedules import TEMPLATES

    out = []
    for t in sorted(TEMPLATES, key=lambda t: (t != 1, abs(t - 1), t)):
        fr = Fraction(t).limit_denominator(7)  # the templates are h/w of small grids (4:7 -> 0.571)
        h, w = fr.numerator, fr.denominator
        shape = "square" if h == w else ("landscape" if w > h else "portrait")
        out.append((f"{w}:{h} ({shape})", f"{w}:{h}"))
    return out


class T2IDemoBackend(DemoBackend):
    """One shared text-to-image pipeline behind a lock; :meth:`generate` yields ``(image, strip, status)`` after
    every scale (``strip`` None until the end), then the final images with the per-scale strip."""

    def __init__(self, pipe, limits: Optional[DemoLimits] = None, scale_delay: float = 0.0):
        from nextscale.pipeline_t2i import NextScaleT2IPipeline
        from nextscale.schedules import PN_CLASSES

        if not isinstance(pipe, NextScaleT2IPipeline):
            raise NextScaleError(f"T2IDemoBackend needs a NextScaleT2IPipeline, got {type(pipe).__name__}")
        self.pipe = pipe
        self.limits = limits or DemoLimits()
        self.scale_delay = float(scale_delay)
        self.lock = threading.Lock()
        self.num_scales = max(PN_CLASSES.values())  # the longest schedule (a bound of the stream)
        self.pn_choices = [pn for pn, k in PN_CLASSES.items() if k <= pipe.transformer.config.num_levels]
        self.aspects = aspect_choices()
        self.fields = t2i_sampling_fields()
        self.labels = {f.name: label_of(f) for _, f in self.fields}
        self.labels.update(prompt="prompt", negative_prompt="negative prompt", aspect_ratio="aspect ratio", pn="size")
        self.bounds = {
            "guidance_scale": self.limits.max_guidance,
            "guidance_cutoff": self.num_scales,
            "top_k": 1000,  # over 2 values per bit only 1 (greedy) and 0 (off) differ; 900 is the released no-op
        }
        #: the lowest value of a setting's widget where the settings' rules have no minimum (-n: depth - n)
        self.lower = {"cfg_insertion_layer": -(pipe.transformer.config.depth - 1)}

    def check_text(self, value, name: str, required: bool) -> Optional[str]:
        if value is None or (isinstance(value, str) and not value.strip() and not required):
            return None
        if not isinstance(value, str):
            raise NextScaleError(f"{self.labels[name]} must be text, got {type(value).__name__}")
        if len(value) > MAX_PROMPT_CHARS:
            raise NextScaleError(f"{self.labels[name]} is {len(value)} characters; at most {MAX_PROMPT_CHARS}")
        if required and not value.strip():
            raise NextScaleError(f"{self.labels[name]} is empty: describe the image")
        return value

    def generate(self, prompt, negative_prompt, aspect, pn, seed, random_seed, batch_size, *sampling):
        """Validate, then yield ``(image, strip, status)`` per scale and once more at the end. ``sampling``: the
        sampling widgets' values (``self.fields`` order; missing trailing ones: the model's recommendation)."""
        prompt = self.check_text(prompt, "prompt", True)
        negative = self.check_text(negative_prompt, "negative_prompt", False)
        aspect = check_choice("aspect ratio", aspect, [v for _, v in self.aspects])
        pn = check_choice("size", pn, self.pn_choices)
        seed, batch = self.check_request(seed, random_seed, batch_size)
        settings = self.check_sampling(sampling)
        try:
            size = self.pipe.size(aspect_ratio=aspect, pn=pn)
        except FieldError as e:
            raise NextScaleError(e.render(lambda n: self.labels.get(n, n))) from None
        pipe = self.pipe

        def run(cb):
            return pipe(
                prompt,
                negative_prompt=negative,
                aspect_ratio=aspect,
                pn=pn,
                settings=settings,
                generator=torch.Generator(device=pipe.device).manual_seed(seed),
                num_images_per_prompt=batch,
                output_type="pil",
                callback_on_scale=cb,
            )

        yield from self._run_t2i(run, size, f"seed {seed} · {size.describe}")

    def _run_t2i(self, run, size, what: str) -> Iterator[Tuple[Image.Image, Optional[Image.Image], str]]:
        t0 = time.monotonic()
        per_scale: List[List[Image.Image]] = []
        out = None
        try:
            for kind, val in self._stream(run):
                if kind == "scale":
                    per_scale.append(list(val.images))
                    h, w = val.grid_hw
                    yield self._tile(val.images), None, f"scale {val.scale_index + 1}/{val.num_scales} ({h}x{w})…"
                    if self.scale_delay > 0 and val.scale_index + 1 < val.num_scales:
                        time.sleep(self.scale_delay)
                else:
                    out = val
        except FieldError as e:  # the pipeline's checks (prompt too long ...), named as the widgets
            raise NextScaleError(e.render(lambda n: self.labels.get(n, n))) from None
        dt = time.monotonic() - t0
        strip = self._strip_t2i(per_scale, size) if per_scale else None
        yield self._tile(out.images), strip, f"done: {what} · {dt:.1f} s"

    @staticmethod
    def _strip_t2i(per_scale: List[List[Image.Image]], size) -> Image.Image:
        """Rows = images of the batch, columns = the image after 1, 2, ..., K scales (cells 128 px high)."""
        from nextscale.imageio import make_grid

        ch = 128
        cw = max(1, round(ch * size.width / size.height))
        cells, caps = [], []
        for i in range(len(per_scale[0])):
            for (h, w), ims in zip(size.schedule, per_scale):
                im = ims[i]
                cells.append(im.resize((cw, ch), Image.NEAREST if im.size[1] < ch else Image.LANCZOS))
                caps.append(f"{h}x{w}")
        return make_grid(cells, nrow=len(per_scale), captions=caps)


def _to_pil(t_3HW01: torch.Tensor) -> Image.Image:
    from nextscale.imageio import to_pil

    return to_pil(t_3HW01.detach().float().clamp(0, 1).cpu())


# ---------------------------------------------------------------------------------------------
# Gradio
# ---------------------------------------------------------------------------------------------
def _gradio():
    # No analytics, version checks or telemetry: set when the demo imports gradio, not on import of this module.
    os.environ.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_DISABLE_TELEMETRY="1")
    try:
        import gradio as gr
    except ImportError:
        raise NextScaleError("the demo needs Gradio: pip install 'nextscale[demo]'") from None
    return gr


def _theme(gr):
    """Default theme with system fonts only (no font download from anywhere)."""
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "Consolas", "monospace"]
    )


_CSS = """
#ns-image img, #ns-edit-out img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
footer { display: none !important; }
"""


def _one_line(e: BaseException) -> str:
    """An exception's message as one line (its first non-empty line, at most 300 characters)."""
    text = e.message if isinstance(getattr(e, "message", None), str) else str(e)  # gr.Error's str() is a repr
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def _refuse(gr, what: str, e: BaseException):
    """A refused request: one log line (no traceback) and a ``gr.Error`` for the client."""
    msg = _one_line(e)
    log.warning("refused %s: %s", what, msg)
    return gr.Error(msg, print_exception=False)


def _failed(gr, what: str, e: BaseException):
    """An unexpected failure: the traceback in the log (a bug to fix), a generic message for the client."""
    log.exception("demo request %s failed", what)
    return gr.Error(f"internal error ({type(e).__name__}); see the server log", print_exception=False)


def _guard(fn):
    """Run a backend generator; NextScaleError -> gr.Error (a message) and one log line, anything else ->
    the traceback logged + a generic message. Keeps the signature (Gradio maps inputs by it)."""
    gr = _gradio()
    what = "/" + fn.__name__

    @functools.wraps(fn)
    def wrapper(*args):
        try:
            yield from fn(*args)
        except gr.Error:
            raise
        except (NextScaleError, ValueError) as e:
            raise _refuse(gr, what, e) from None
        except Exception as e:  # noqa: BLE001 - never let a request take the server down
            raise _failed(gr, what, e) from None

    return wrapper


def _guard_fn(fn):
    gr = _gradio()
    what = "/" + fn.__name__

    @functools.wraps(fn)
    def wrapper(*args):
        try:
            return fn(*args)
        except (NextScaleError, ValueError) as e:
            raise _refuse(gr, what, e) from None
        except Exception as e:  # noqa: BLE001
            raise _failed(gr, what, e) from None

    return wrapper


def _quiet_preprocessing(gr, demo, inputs: Dict[str, Sequence[Any]]) -> None:
    """Gradio checks a request's values before our code sees them (a slider's range, a dropdown's choices, the
    payload's shape) and prints a full traceback for each refusal. Here each check of the events' ``inputs``
    (api name -> input components) answers with one line naming the widget instead: one log line, no
    traceback. Per instance, nothing global is patched."""
    for what, comps in inputs.items():
        for comp in comps:
            if getattr(comp, "_nextscale_quiet", False):
                continue
            label = getattr(comp, "label", None) or type(comp).__name__

            def preprocess(payload, _pre=comp.preprocess, _what=what, _label=label, _comp=comp):
                try:
                    return _pre(payload)
                except gr.Error as e:  # a range / choice check: named after the widget
                    raise _refuse(gr, _what, NextScaleError(f"{_label}: {_one_line(e)}")) from None
                except Exception as e:  # noqa: BLE001 - a value of the wrong type is a refusal, not a crash
                    number = isinstance(_comp, (gr.Slider, gr.Number))
                    why = "expected a number" if number else f"cannot read this value ({type(e).__name__})"
                    raise _refuse(gr, _what, NextScaleError(f"{_label}: {why}, got {payload!r:.80}")) from None

            comp.preprocess = preprocess
            comp._nextscale_quiet = True
    whole = getattr(demo, "preprocess_data", None)
    if whole is None:  # pragma: no cover - another Gradio
        return

    async def preprocess_data(block_fn, *args, **kw):  # the payload's shape, before any component sees it
        try:
            return await whole(block_fn, *args, **kw)
        except gr.Error:
            raise
        except Exception as e:  # noqa: BLE001
            raise _refuse(gr, "/" + str(getattr(block_fn, "api_name", "") or "request"), e) from None

    demo.preprocess_data = preprocess_data


def session_capacity(demo) -> int:
    """How many browser / API sessions Gradio keeps in memory. Gradio copies the page's whole configuration for
    every new session (0.1-0.2 MB here: every widget, the class dropdowns) and keeps up to 10,000 of them, so
    a server that sees a new session per request grows without a plateau. The demo keeps no per-session state
    (no ``gr.State``): a session evicted between its requests just gets a fresh copy, so a few times the
    requests that can be in flight (queued + running) is plenty."""
    q = getattr(demo, "_queue", None)
    waiting = int(getattr(q, "max_size", None) or 32)
    running = getattr(q, "default_concurrency_limit", None)
    running = int(running) if isinstance(running, int) else 1
    return max(32, 2 * (waiting + running))


def build_demo(
    pipe,
    *,
    max_batch_size: int = 4,
    concurrency_limit: int = 1,
    max_queue: int = 32,
    scale_delay: float = 0.0,
    title: str = "nextscale: next-scale prediction",
    limits: Optional[DemoLimits] = None,
):
    """The Gradio app for ``pipe`` (a :class:`~nextscale.pipelines.NextScalePipeline`, or a
    :class:`~nextscale.pipeline_t2i.NextScaleT2IPipeline`: a "Text to image" tab, ``/generate_t2i``), queued:
    at most ``max_queue`` waiting requests and ``concurrency_limit`` running ones (the model itself
    runs one request at a time behind a lock). Start it with :func:`launch_demo`.

    API endpoints (``gradio_client``): ``/generate`` (class, seed, random_seed, batch_size, then one value
    per sampling setting in ``backend.fields`` order: ``backend.sampling_args(**by_name)`` builds them; trailing
    ones may be left out = the model's recommendation) and ``/edit`` (editor value, mode, class, out-paint side,
    out-paint px, keep scales, then the same request and sampling values); both stream (image, strip, status).
    """
    from nextscale.pipeline_t2i import NextScaleT2IPipeline
    from nextscale.sampling import SamplingSettings, SpeedUps

    gr = _gradio()
    _SPEED = SpeedUps
    limits = limits or DemoLimits(max_batch_size=max_batch_size)
    if isinstance(pipe, NextScaleT2IPipeline):  # a text-to-image model: its own tab (T2IDemoBackend)
        return _build_t2i_demo(pipe, limits, scale_delay, max_queue, concurrency_limit, title)
    backend = DemoBackend(pipe, limits=limits, scale_delay=scale_delay)
    R, K = pipe.resolution, backend.num_scales
    _MAIN = {f.name for f in dataclasses.fields(SamplingSettings) if f.name != "speedups"}
    pns = "×".join(str(p) for p in pipe.patch_nums)
    rec = pipe.settings.flat()  # the model's recommendation: the widgets' start values
    demo_kwargs: Dict[str, Any] = dict(title=title, analytics_enabled=False, delete_cache=(1800, 3600))
    if not _launch_takes("theme"):  # Gradio < 6 takes the theme and css here
        demo_kwargs.update(theme=_theme(gr), css=_CSS)

    def widget(f, prefix: str):
        """The widget of setting ``f``, generated from its metadata (range, step, label, help)."""
        from nextscale.sampling import SamplingSettings
        from nextscale.settings import field_type

        md, kind = f.metadata, field_type(SamplingSettings if f.name in _MAIN else _SPEED, f.name)[0]
        v = getattr(rec, f.name)
        v = v[0] if isinstance(v, tuple) else v
        if f.name == "guidance_scale" and pipe.num_classes <= 1:
            v = 0.0  # an unconditional model: guidance has nothing to steer
        info, eid = md.get("note") or md.get("help", ""), f"{prefix}-{f.name.replace('_', '-')}"
        if kind is bool:
            return gr.Checkbox(value=bool(v), label=label_of(f), info=md.get("help"), elem_id=eid)
        if kind is str:
            return gr.Radio(list(md["choices"]), value=v, label=label_of(f), elem_id=eid)
        hi = backend.upper(f)
        hi = min(hi, md["soft_max"]) if hi is not None and md.get("soft_max") is not None else hi
        hi = hi if hi is not None else md.get("max", 10)
        lo = md.get("min", 0)
        step = md.get("step", 1 if kind is int else 0.01)
        return gr.Slider(lo, hi, value=min(max(v, lo), hi), step=step, label=label_of(f), info=info, elem_id=eid)

    def sampling_controls(prefix: str):
        """(seed, random seed, batch size) + one widget per sampling setting (``backend.fields`` order)."""
        main = [f for owner, f in backend.fields if f.name in _MAIN]
        fast = [f for owner, f in backend.fields if f.name not in _MAIN]
        with gr.Row():
            widgets = {f.name: widget(f, prefix) for f in main}
        with gr.Row():
            seed = gr.Number(
                value=0, precision=0, minimum=0, maximum=limits.max_seed, label="seed", elem_id=f"{prefix}-seed"
            )
            random_seed = gr.Checkbox(value=False, label="random seed", elem_id=f"{prefix}-random")
            batch = gr.Slider(1, limits.max_batch_size, value=1, step=1, label="batch size", elem_id=f"{prefix}-batch")
        with gr.Accordion("speed-ups (approximate, docs/speed.md)", open=False):
            with gr.Row():
                widgets.update({f.name: widget(f, prefix) for f in fast})
        return [seed, random_seed, batch] + [widgets[f.name] for _, f in backend.fields]

    with gr.Blocks(**demo_kwargs) as demo:
        gr.Markdown(
            f"## {title}\nThe image forms scale by scale ({pns} tokens per side), coarse to fine. "
            f"Model: {R}×{R} px, {pipe.num_classes} classes{'' if pipe.labels else ' (no class names)'}."
        )
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=1):
                        cls = gr.Dropdown(
                            backend.class_choices(),
                            value="0" if pipe.num_classes else RANDOM,
                            label="class",
                            filterable=True,
                            elem_id="gen-class",
                        )
                        gen_controls = sampling_controls("gen")
                        gen_btn = gr.Button("Generate", variant="primary", elem_id="gen-button")
                    with gr.Column(scale=1):
                        gen_img = gr.Image(
                            label="image (streamed scale by scale)",
                            type="pil",
                            format="png",
                            interactive=False,
                            height=320,
                            elem_id="ns-image",
                        )
                        gen_status = gr.Markdown("", elem_id="gen-status")
                gen_strip = gr.Image(
                    label="per scale", type="pil", format="png", interactive=False, elem_id="gen-strip"
                )
            with gr.Tab("Edit", id="edit"):
                with gr.Row():
                    with gr.Column(scale=1):
                        editor = gr.ImageEditor(
                            label="image: paint the region to regenerate",
                            type="pil",
                            image_mode=None,  # the upload as it is: to_rgb converts any bit depth faithfully
                            sources=["upload", "clipboard"],
                            format="png",
                            height=360,
                            brush=gr.Brush(colors=["#ffffff"], default_color="#ffffff", color_mode="fixed"),
                            layers=False,
                            transforms=(),
                            elem_id="edit-editor",
                        )
                        with gr.Row():
                            example = gr.Dropdown(
                                backend.example_names(),
                                value=backend.example_names()[0],
                                label="example",
                                elem_id="edit-example",
                            )
                            ex_btn = gr.Button("Load example", elem_id="edit-load")
                            use_btn = gr.Button("Use generated image", elem_id="edit-use")
                    with gr.Column(scale=1):
                        mode = gr.Radio(
                            list(EDIT_MODES),
                            value="in-paint",
                            label="mode",
                            elem_id="edit-mode",
                            info="in-paint: regenerate the painted region · out-paint: shift the image and "
                            "generate a new strip · class edit: repaint as the class · variations: keep k scales",
                        )
                        e_cls = gr.Dropdown(
                            backend.class_choices(),
                            value=UNCONDITIONAL,
                            label="class (class edit, out-paint, variations)",
                            elem_id="edit-class",
                        )
                        with gr.Row():
                            side = gr.Radio(
                                list(OUTPAINT_SIDES),
                                value="right",
                                label="out-paint: new strip on the",
                                elem_id="edit-side",
                            )
                            step = max(1, R // pipe.patch_nums[-1])
                            amount = gr.Slider(
                                step,
                                R - step,
                                value=max(step, (R // 4) // step * step),
                                step=step,
                                label=f"out-paint width (px of {R})",
                                elem_id="edit-amount",
                            )
                        keep = gr.Slider(
                            0,
                            K,
                            value=max(1, K // 2),
                            step=1,
                            label=f"variations: keep the first k of {K} scales",
                            elem_id="edit-keep",
                        )
                edit_controls = sampling_controls("edit")
                edit_btn = gr.Button("Edit", variant="primary", elem_id="edit-button")
                with gr.Row():
                    edit_img = gr.Image(
                        label="result (streamed scale by scale)",
                        type="pil",
                        format="png",
                        interactive=False,
                        height=320,
                        elem_id="ns-edit-out",
                    )
                    edit_status = gr.Markdown("", elem_id="edit-status")
                edit_strip = gr.Image(
                    label="input · regenerated (white) · per scale",
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id="edit-strip",
                )

        common = dict(concurrency_id="model")
        gen_btn.click(
            _guard(backend.generate),
            inputs=[cls] + gen_controls,
            outputs=[gen_img, gen_strip, gen_status],
            api_name="generate",
            **common,
        )
        edit_btn.click(
            _guard(backend.edit),
            inputs=[editor, mode, e_cls, side, amount, keep] + edit_controls,
            outputs=[edit_img, edit_strip, edit_status],
            api_name="edit",
            **common,
        )
        ex_btn.click(_guard_fn(backend.example), inputs=[example], outputs=[editor], api_name="example", **common)

        def use_generated(img):
            if img is None:
                raise gr.Error("generate an image first", print_exception=False)
            return img

        use_btn.click(use_generated, inputs=[gen_img], outputs=[editor], api_name=False)

    demo.queue(max_size=max_queue, default_concurrency_limit=concurrency_limit)
    _quiet_preprocessing(
        gr,
        demo,
        {
            "/generate": [cls] + gen_controls,
            "/edit": [editor, mode, e_cls, side, amount, keep] + edit_controls,
            "/example": [example],
        },
    )
    demo.nextscale_backend = backend  # for tests and embedding
    return demo


def _build_t2i_demo(pipe, limits, scale_delay, max_queue, concurrency_limit, title):
    """The text-to-image app: prompt, negative prompt, aspect ratio (the model's templates), size class, seed,
    batch, and one widget per honoured ``T2ISettings`` field, generated from its metadata. API endpoint
    ``/generate_t2i`` (prompt, negative prompt, aspect, pn, seed, random_seed, batch_size, then the sampling values
    in ``backend.fields`` order); it streams (image, strip, status)."""
    from nextscale.settings import field_type

    gr = _gradio()
    backend = T2IDemoBackend(pipe, limits=limits, scale_delay=scale_delay)
    rec = pipe.settings.flat()
    demo_kwargs: Dict[str, Any] = dict(title=title, analytics_enabled=False, delete_cache=(1800, 3600))
    if not _launch_takes("theme"):
        demo_kwargs.update(theme=_theme(gr), css=_CSS)

    def widget(owner, f):
        md, kind = f.metadata, field_type(owner, f.name)[0]
        v = getattr(rec, f.name)
        v = v[0] if isinstance(v, tuple) else v
        eid = f"t2i-{f.name.replace('_', '-')}"
        if kind is bool:
            return gr.Checkbox(value=bool(v), label=label_of(f), info=md.get("help"), elem_id=eid)
        if kind is str:
            return gr.Radio(list(md["choices"]), value=v, label=label_of(f), elem_id=eid)
        hi = backend.upper(f)
        hi = min(hi, md["soft_max"]) if hi is not None and md.get("soft_max") is not None else hi
        hi = hi if hi is not None else md.get("max", 10)
        lo = md.get("min", backend.lower.get(f.name, 0))
        step = md.get("step", 1 if kind is int else 0.01)
        info = md.get("note") or md.get("help", "")
        return gr.Slider(lo, hi, value=min(max(v, lo), hi), step=step, label=label_of(f), info=info, elem_id=eid)

    cfg = pipe.transformer.config
    with gr.Blocks(**demo_kwargs) as demo:
        gr.Markdown(
            f"## {title}\nText to image (Infinity, depth {cfg.depth}): the image forms scale by scale, coarse to "
            f"fine, in any aspect ratio of the model's tables."
        )
        with gr.Tabs():
            with gr.Tab("Text to image", id="t2i"):
                with gr.Row():
                    with gr.Column(scale=1):
                        prompt = gr.Textbox(label="prompt", lines=2, elem_id="t2i-prompt")
                        negative = gr.Textbox(label="negative prompt", lines=1, elem_id="t2i-negative")
                        with gr.Row():
                            aspect = gr.Dropdown(
                                backend.aspects, value=backend.aspects[0][1], label="aspect ratio", elem_id="t2i-aspect"
                            )
                            pn = gr.Dropdown(
                                backend.pn_choices,
                                value=pipe.default_pn
                                if pipe.default_pn in backend.pn_choices
                                else backend.pn_choices[0],
                                label="size",
                                elem_id="t2i-pn",
                            )
                        with gr.Row():
                            seed = gr.Number(value=0, precision=0, minimum=0, maximum=limits.max_seed, label="seed")
                            random_seed = gr.Checkbox(value=False, label="random seed")
                            batch = gr.Slider(1, limits.max_batch_size, value=1, step=1, label="batch size")
                        with gr.Row():
                            controls = [widget(o, f) for o, f in backend.fields]
                        btn = gr.Button("Generate", variant="primary", elem_id="t2i-button")
                    with gr.Column(scale=1):
                        img = gr.Image(
                            label="image (streamed scale by scale)", type="pil", format="png", interactive=False
                        )
                        status = gr.Markdown("", elem_id="t2i-status")
                strip = gr.Image(label="per scale", type="pil", format="png", interactive=False, elem_id="t2i-strip")
        btn.click(
            _guard(backend.generate),
            inputs=[prompt, negative, aspect, pn, seed, random_seed, batch] + controls,
            outputs=[img, strip, status],
            api_name="generate_t2i",
            concurrency_id="model",
        )
    demo.queue(max_size=max_queue, default_concurrency_limit=concurrency_limit)
    _quiet_preprocessing(
        gr, demo, {"/generate_t2i": [prompt, negative, aspect, pn, seed, random_seed, batch] + controls}
    )
    demo.nextscale_backend = backend
    return demo


def _launch_takes(name: str) -> bool:
    import inspect

    gr = _gradio()
    return name in inspect.signature(gr.Blocks.launch).parameters


def launch_demo(demo, host: str = "127.0.0.1", port: int = 0, *, block: bool = True, quiet: bool = True, **kw):
    """``demo.launch`` with the offline settings (no share link, no SSR/node, no MCP, system-font
    theme, bounded uploads); ``port`` 0 = ``DemoConfig``'s default. Returns ``(app, local_url, share_url)``
    when ``block=False``."""
    port = port or _DEFAULT.port
    gr = _gradio()
    opts: Dict[str, Any] = dict(
        server_name=host,
        server_port=int(port),
        share=False,
        quiet=quiet,
        prevent_thread_lock=not block,
        max_file_size="25mb",
        show_error=True,
    )  # shows preprocessing errors (wrong types); ours are gr.Error anyway
    for name, value in (
        ("ssr_mode", False),
        ("mcp_server", False),
        ("enable_monitoring", False),
        ("pwa", False),
        ("footer_links", []),  # no footer: its API page shows example pictures from the web
        ("run_history", False),  # nothing recorded (and never offered to upload to the hub)
        ("state_session_capacity", session_capacity(demo)),  # bounded memory: see session_capacity
        ("theme", _theme(gr)),
        ("css", _CSS),
    ):
        if _launch_takes(name):
            opts[name] = value
    opts.update(kw)
    return demo.launch(**opts)


@dataclass
class DemoConfig(Settings):
    """``nextscale demo``'s settings (the CLI's flags are these fields; each default written here once)."""

    model: Optional[str] = setting(
        None,
        "pipeline directory (class or text-to-image), var_d*.pth, hub id (FoundationVision/Infinity with a variant) "
        "or 'default' (the bundled model; the default)",
    )
    variant: Optional[str] = setting(
        None, "which released transformer (d16 ... d36, or Infinity's 2b 8b 8b-512) of a folder or hub repo"
    )
    host: str = setting(
        "127.0.0.1", "address to listen on (anything but loopback is reachable by others: a warning is printed)"
    )
    port: int = setting(7860, "port", min=0, max=65535)
    device: Optional[str] = setting(None, "cpu, cuda, cuda:1 ... (default: cuda if available)")
    dtype: Optional[str] = setting(
        None, "compute dtype (default: bf16 on GPU, fp32 on CPU)", choices=("fp32", "bf16", "fp16")
    )
    max_batch_size: int = setting(4, "largest batch a request may ask for", min=1, max=64)
    concurrency: int = setting(1, "requests worked on at once (the model still runs one at a time)", min=1, max=16)
    queue_size: int = setting(32, "requests allowed to wait; more are refused with a message", min=1, max=10_000)
    scale_delay: float = setting(0.0, "pause (s) between streamed scales, to watch a fast model", min=0.0, max=10.0)


_DEFAULT = DemoConfig()


def serve(
    model: Optional[str] = None,
    host: str = _DEFAULT.host,
    port: int = _DEFAULT.port,
    *,
    device=None,
    dtype=None,
    max_batch_size: int = _DEFAULT.max_batch_size,
    concurrency_limit: int = _DEFAULT.concurrency,
    max_queue: int = _DEFAULT.queue_size,
    scale_delay: float = _DEFAULT.scale_delay,
    print_fn: Callable[[str], None] = print,
    block: bool = True,
    variant: Optional[str] = None,
):
    """Load the model once and serve the demo (``nextscale demo``). Loopback by default; any
    other address is an explicit choice and gets a warning (there is no authentication).
    Returns the running ``gr.Blocks`` when ``block=False`` (``.close()`` stops it). ``device`` /
    ``dtype``: a device string and a torch dtype (or None)."""
    _gradio()
    c = DemoConfig(
        model=model,
        variant=variant,
        host=host,
        port=port,
        max_batch_size=max_batch_size,
        concurrency=concurrency_limit,
        queue_size=max_queue,
        scale_delay=scale_delay,
    )
    return _serve(c, device, dtype, print_fn, block)


def serve_config(c: DemoConfig, print_fn: Callable[[str], None] = print, block: bool = True):
    """:func:`serve` for a :class:`DemoConfig` (what ``nextscale demo`` runs)."""
    from nextscale.app.cli_args import device_dtype

    _gradio()
    dev, dt = device_dtype(c.device, c.dtype)
    return _serve(c, dev, dt, print_fn, block)


def _serve(c: DemoConfig, device, dtype, print_fn, block):
    from nextscale.app.cli_t2i import is_t2i
    from nextscale.pipelines import load_pipeline

    if is_t2i(c.model, c.variant):
        from nextscale.pipeline_t2i import NextScaleT2IPipeline

        pipe = NextScaleT2IPipeline.from_pretrained(c.model, variant=c.variant, device=device, torch_dtype=dtype)
        what = f"text-to-image model {c.model}"
    else:
        pipe = load_pipeline(c.model, device=device, dtype=dtype, variant=c.variant)
        what = f"model {c.model or 'default'} ({pipe.resolution}px, {pipe.num_classes} classes)"
    demo = build_demo(
        pipe,
        max_batch_size=c.max_batch_size,
        concurrency_limit=c.concurrency,
        max_queue=c.queue_size,
        scale_delay=c.scale_delay,
    )
    for line in startup_messages(c.host, c.port, what):
        print_fn(line)
    log_to_console()
    launch_demo(demo, host=c.host, port=c.port, block=block)
    return demo


def log_to_console() -> None:
    """The server's console log: one line per refused request ("nextscale demo: refused /generate: ..."), a
    traceback only for an unexpected failure. Added once, and only when nobody configured this logger."""
    if log.handlers:
        return
    h = logging.StreamHandler()
    h.setFormatter(logging.Formatter("nextscale demo: %(message)s"))
    log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False  # not twice when the root logger prints too


def startup_messages(host: str, port: int, what: str = "demo") -> List[str]:
    """What ``nextscale demo`` prints: the URL, and a warning first when not on loopback."""
    out = []
    if not is_loopback(host):
        out.append(
            f"nextscale demo: WARNING: listening on {host}, not loopback: anyone who can reach this machine "
            "on that address can use the demo and its model (no authentication). Use --host 127.0.0.1 to keep it local."
        )
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    out.append(f"nextscale demo: {what} on http://{shown}:{port}/  (Ctrl+C to stop)")
    return out
