"""The text-to-image default model's pictures (README, docs/default_t2i.md) and its pinned-bits test fixture.

    python tools/t2i_pictures.py                       # docs/images/default_t2i_grid.png + default_t2i_scales.png
    python tools/t2i_pictures.py --model DIR --out-dir /tmp/pics
    python tools/t2i_pictures.py --fixture tests/fixtures/default_t2i_bits.json   # re-pin (after re-shipping)

Grid: one row per prompt (the README's prompt first, then one per category, some stating a combination never in
the training split), ``--per-prompt`` images each, seeds 0.. in one call per prompt. Scales: one image forming
scale by scale (each scale's partial image, decoded; the model samples 5 scales, 1x1 .. 8x8 tokens).
Everything uses the model's recommended sampling settings (``model_index.json`` ``sampling_defaults``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from nextscale.pipeline_t2i import NextScaleT2IPipeline

README_PROMPT = "a green 4 on the left of a red square"
PROMPTS = [
    README_PROMPT,
    "a photo of a hexagon",  # single object
    "a blue circle and a yellow seven",  # colour binding
    "three red triangles",  # counting
    "a purple star above an orange 2",  # position
    "two small green squares below a large blue 8",  # composite
]
CELL = 96  # pixels per image in the pictures (the model makes 32 x 32; nearest-neighbour upscaling)


def _label(text: str, width: int, height: int = 20) -> Image.Image:
    im = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(im).text((4, 4), text, fill=(0, 0, 0))
    return im


def _row(images, text: str, cell: int = CELL, pad: int = 4, label_w: int = 260) -> Image.Image:
    row = Image.new("RGB", (label_w + len(images) * (cell + pad), cell + pad), (255, 255, 255))
    row.paste(_label(text, label_w - 8, 20), (0, cell // 2 - 10))
    for i, im in enumerate(images):
        row.paste(im.resize((cell, cell), Image.NEAREST), (label_w + i * (cell + pad), pad // 2))
    return row


def _stack(rows) -> Image.Image:
    out = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), (255, 255, 255))
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height
    return out


def grid(pipe, prompts, per_prompt: int) -> Image.Image:
    rows = []
    for p in prompts:
        ims = pipe([p] * per_prompt, generator=torch.Generator().manual_seed(0), output_type="pil").images
        rows.append(_row(ims, p))
    return _stack(rows)


def scales(pipe, prompt: str, seed: int = 0) -> Image.Image:
    steps = []
    out = pipe(prompt, seed=seed, output_type="pil", callback_on_scale=lambda s: steps.append(s))
    ims = [s.images[0] for s in steps]
    row = _row(ims, prompt)
    names = Image.new("RGB", (row.width, 20), (255, 255, 255))
    d = ImageDraw.Draw(names)
    for i, s in enumerate(steps):
        d.text((260 + i * (CELL + 4) + 4, 4), f"{s.grid_hw[0]}x{s.grid_hw[1]} tokens", fill=(0, 0, 0))
    assert out.images[0].tobytes() == ims[-1].tobytes()  # the last scale is the image
    return _stack([row, names])


def fixture(pipe, path: str, model: str) -> None:
    prompts, seed = [README_PROMPT, "three red triangles"], 0
    out = pipe(prompts, seed=seed, output_type="np", return_bits=True)
    w = 2 ** torch.arange(out.bits[0].shape[-1])
    data = {
        "prompts": prompts,
        "seed": seed,
        "sampling": pipe.sampling_defaults,
        "bits": [(b.long() * w).sum(-1).tolist() for b in out.bits],  # per scale, each token's bits as one int
        "provenance": f"python tools/t2i_pictures.py --model {model} --fixture {path} (torch {torch.__version__}, "
        f"{platform.machine()})",
    }
    Path(path).write_text(json.dumps(data) + "\n")
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default-t2i")
    ap.add_argument("--out-dir", default="docs/images")
    ap.add_argument("--per-prompt", type=int, default=6)
    ap.add_argument("--fixture", default=None, help="write the pinned-bits fixture here instead of the pictures")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    pipe = NextScaleT2IPipeline.from_pretrained(a.model)
    if a.fixture:
        return fixture(pipe, a.fixture, a.model)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid(pipe, PROMPTS, a.per_prompt).save(out / "default_t2i_grid.png")
    scales(pipe, README_PROMPT).save(out / "default_t2i_scales.png")
    print(f"wrote {out / 'default_t2i_grid.png'} and {out / 'default_t2i_scales.png'}")


if __name__ == "__main__":
    main()
