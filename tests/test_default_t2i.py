"""The bundled text-to-image default model (scenes, 32 px): loads offline, samples deterministically, fine-tunes,
and the README's first text-to-image command works."""

import json

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from nextscale.hub import DEFAULT_T2I_DIR
from nextscale.pipeline_t2i import NextScaleT2IPipeline

pytestmark = pytest.mark.skipif(
    not (DEFAULT_T2I_DIR / "model_index.json").exists(), reason="text-to-image default model not bundled"
)
README_PROMPT = "a green 4 on the left of a red square"


@pytest.fixture(scope="module")
def pipe():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")  # nothing may be fetched: the model and its text encoder are files here
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    try:
        yield NextScaleT2IPipeline.from_pretrained("default-t2i")
    finally:
        mp.undo()


def pack(bits):
    """Per scale, each token's d bits as one int (bit i = 2**i): a compact, exact fixture."""
    w = 2 ** torch.arange(bits[0].shape[-1])
    return [(b.long() * w).sum(-1).tolist() for b in bits]


def test_default_t2i_layout_size_and_defaults(pipe):
    total = sum(p.stat().st_size for p in DEFAULT_T2I_DIR.rglob("*") if p.is_file())
    assert total <= 15 * 2**20
    size = pipe.size()
    assert (size.height, size.width, len(size.schedule)) == (32, 32, 5)  # the 5 scales it was trained on
    index = json.loads((DEFAULT_T2I_DIR / "model_index.json").read_text())
    assert pipe.sampling_defaults == NextScaleT2IPipeline.from_pretrained(DEFAULT_T2I_DIR).sampling_defaults
    for k, v in index["sampling_defaults"].items():
        assert pipe.sampling_defaults[k] == (tuple(v) if isinstance(v, list) else v)


def test_default_t2i_bits_are_pinned(pipe):
    """The same seed and prompt give the same bits: a change detector, pinned when the model was shipped (torch
    2.13.0+cpu, x86_64; ``tools/t2i_pictures.py --fixture`` regenerates it). Sampling is float32 with exact
    multinomial draws, so another CPU kind could in principle flip a near-tied draw."""
    pinned = json.loads((FIXTURES / "default_t2i_bits.json").read_text())
    out = pipe(pinned["prompts"], seed=pinned["seed"], output_type="np", return_bits=True)
    assert pack(out.bits) == pinned["bits"]
    again = pipe(pinned["prompts"], generator=torch.Generator().manual_seed(pinned["seed"]), output_type="np")
    assert np.array_equal(out.images, again.images) and out.images.shape == (len(pinned["prompts"]), 32, 32, 3)


def test_readme_first_t2i_command(tmp_path, monkeypatch):
    from nextscale.app.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--prompt", README_PROMPT, "--seed", "0"]) == 0  # no --model: the bundled default-t2i
    from PIL import Image

    im = Image.open(tmp_path / "a-green-4-on-the-left-of-a-red-square.png")
    assert im.size == (32, 32)


def test_finetune_from_default_stays_finite(tmp_path):
    from nextscale.app.cli import main
    from nextscale.scenes import SceneConfig, write_scene_dataset

    data = write_scene_dataset(tmp_path / "scenes", 4, np.random.default_rng(3), SceneConfig(aspect_ratios=(1.0,)),
                               pn="0.06M", n_scales=5, patch_size=4)  # fmt: skip
    run = tmp_path / "ft"
    argv = ["train-t2i", "--data", str(data), "--init", "default-t2i", "--steps", "1", "--batch-size", "2", "--lr",
            "1e-4", "--run-dir", str(run), "--sample-every", "-1", "--no-progress", "--log-every", "1"]  # fmt: skip
    assert main(argv) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r.get("kind") == "train" and "loss" in r]
    assert losses and all(np.isfinite(losses))
    tuned = NextScaleT2IPipeline.from_pretrained(run / "pipeline")
    assert tuned.size().height == 32  # the default's 5 scales carried over (no --n-scales given)
    for p in tuned.transformer.parameters():
        assert torch.isfinite(p).all()
