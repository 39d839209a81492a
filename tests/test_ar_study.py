"""The raster AR baseline (models/ar.py, sampling_ar.py, pipeline_ar.py, train/ar.py) and the
paper-claim studies (study.py) in their quick modes, on real MNIST digits."""

import json
import os

import numpy as np
import pytest
import torch

from nextscale.models.ar import AR_PRESETS, ARConfig, ARTransformer
from nextscale.sampling_ar import generate_ar

pytestmark = pytest.mark.usefixtures("one_thread")  # a shared 2-core CPU: 2 threads can be 100x slower


def _model(seed=0, **over):
    cfg = AR_PRESETS["ar-tiny"].replace(**over) if over else AR_PRESETS["ar-tiny"]
    torch.manual_seed(seed)
    m = ARTransformer(cfg)
    m.init_weights(
        init_head=1.0, init_adaln=1.0, init_adaln_gamma=1.0, init_std=-1
    )  # non-trivial logits and modulations
    return m.eval()


def _vae(patch_nums=(4,), V=64):
    from nextscale.configs import get_preset
    from nextscale.models import VQVAE

    torch.manual_seed(1)
    return VQVAE.from_config(get_preset("tiny").vqvae.replace(v_patch_nums=tuple(patch_nums), vocab_size=V))


@pytest.mark.parametrize("cfg", [0.0, 1.5])
def test_kv_cache_decoding_equals_full_forward(cfg):
    """Each sampled position's logits (KV cache, one token per step) == the teacher-forced forward
    of the sampled sequence; with guidance, == (1+t) cond - t uncond of two full forwards."""
    m = _model()
    rec = []
    out = generate_ar(
        m,
        None,
        3,
        [1, 4, 7],
        generator=torch.Generator().manual_seed(0),
        cfg=cfg,
        guidance_schedule="linear",
        callback=lambda i, lg, idx: rec.append(lg),
    )
    cached = torch.stack(rec, 1)  # (B, L, V)
    with torch.no_grad():
        full = m(out.labels, out.idx_BL)
        if cfg:
            unc = m(torch.full_like(out.labels, m.num_classes), out.idx_BL)
            t = torch.tensor([cfg * i / (m.L - 1) for i in range(m.L)]).view(1, -1, 1)
            full = (1 + t) * full - t * unc
    assert cached.shape == full.shape == (3, m.L, m.V)
    assert full.std() > 0.5  # the check is not on near-constant logits
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)


def test_batch_of_two_equals_two_batches_of_one():
    m = _model()
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, m.V, (2, m.L), generator=g)
    lab = torch.tensor([2, 9])
    with torch.no_grad():
        both = m(lab, idx)
        one = torch.cat([m(lab[i : i + 1], idx[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(both, one, atol=1e-5, rtol=0)
    # greedy sampling (top_k=1): no random draw depends on the batch composition
    kw = dict(cfg=1.0, top_k=1, top_p=0.0)
    two = generate_ar(m, None, 2, [2, 9], **kw).idx_BL
    ones = torch.cat([generate_ar(m, None, 1, [c], **kw).idx_BL for c in (2, 9)])
    assert torch.equal(two, ones)


def test_save_load_gives_identical_samples(tmp_path):
    from nextscale.pipeline_ar import ARPipeline, is_ar_dir

    pipe = ARPipeline(
        _vae(),
        _model(),
        labels=[str(i) for i in range(10)],
        sampling_defaults={"guidance_scale": 1.0, "top_k": 8, "top_p": 0.9},
    )
    a = pipe(class_labels=[0, 3, 5], seed=7, output_type="np", return_indices=True)
    pipe.save_pretrained(tmp_path / "m")
    assert is_ar_dir(tmp_path / "m")
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["model_type"] == "ar" and index["sampling_defaults"]["top_k"] == 8
    assert sorted(os.listdir(tmp_path / "m")) == ["ar", "labels.json", "model_index.json", "vqvae"]
    back = ARPipeline.from_pretrained(tmp_path / "m")
    b = back(class_labels=[0, 3, 5], seed=7, output_type="np", return_indices=True)
    assert torch.equal(a.indices[0], b.indices[0]) and np.array_equal(a.images, b.images)
    assert back.sampling_defaults == pipe.sampling_defaults and back.class_name(3) == "3"
    from nextscale.errors import NextScaleError
    from nextscale.pipelines import NextScalePipeline

    with pytest.raises(
        NextScaleError,
        match=r"is a raster-order AR baseline \(issue #15\), not a VAR pipeline: "
        r"load it with nextscale.pipeline_ar.ARPipeline",
    ):
        NextScalePipeline.from_pretrained(tmp_path / "m")  # not "a tokenizer-only directory"
    # strict load: a file of another size is refused with the reason
    from nextscale.errors import CheckpointError
    from nextscale.pipeline_ar import save_ar_pipeline

    save_ar_pipeline(tmp_path / "bad", _vae(), _model())
    (tmp_path / "bad" / "ar" / "config.json").write_text(AR_PRESETS["ar-tiny"].replace(embed_dim=64).to_json())
    with pytest.raises(CheckpointError, match="shape mismatch"):
        ARPipeline.from_pretrained(tmp_path / "bad")


def test_sampler_options_and_refusals():
    from nextscale.errors import InputError, NextScaleError

    m = _model()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(
        generate_ar(m, None, 2, None, generator=g1, top_k=5, top_p=0.9).idx_BL,
        generate_ar(m, None, 2, None, generator=g2, top_k=5, top_p=0.9).idx_BL,
    )
    with pytest.raises(InputError, match="more_smooth"):
        generate_ar(m, None, 1, [0], more_smooth=True)
    with pytest.raises(NextScaleError, match="single-scale tokenizer"):
        generate_ar(m, _vae(patch_nums=(1, 2, 4)), 1, [0])
    with pytest.raises(Exception, match="divisible"):
        ARConfig(depth=3, embed_dim=100)


def test_fit_recovers_a_known_power_law():
    from nextscale.app.study import fit_power_law

    N = np.logspace(5, 7.5, 6)
    alpha, beta = -0.07, 2.5e-4
    L = (beta * N) ** alpha
    f = fit_power_law(N, L)
    assert f["alpha"] == pytest.approx(alpha, abs=1e-9) and f["beta"] == pytest.approx(beta, rel=1e-6)
    assert f["r"] == pytest.approx(-1.0, abs=1e-12) and f["n_points"] == 6
    noisy = L * np.exp(np.random.default_rng(0).normal(0, 0.002, len(N)))  # 0.2 % multiplicative noise
    g = fit_power_law(N, noisy)
    assert abs(g["alpha"] - alpha) < 0.005 and g["r"] < -0.99
    assert fit_power_law(N, N**0.3)["r"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def digits_split(tmp_path_factory):
    """20 training + 20 held-out real digits at 32 px (export_mnist split='both')."""
    from nextscale.data import export_mnist

    d = str(tmp_path_factory.mktemp("digits_split"))
    return export_mnist(d, n_per_class=2, split="both", resolution=32)


def test_quick_scaling_study_writes_files_and_resumes(digits_split, tmp_path):
    from PIL import Image

    from nextscale.app.study import scaling_study

    out = str(tmp_path / "scaling")
    r = scaling_study(out, data=digits_split, quick=True, progress=False)
    for f in ("scaling.json", "scaling.md", "scaling.png"):
        assert os.path.isfile(os.path.join(out, f)), f
    assert Image.open(os.path.join(out, "scaling.png")).size[0] > 1000
    pts = r["points"]
    assert [p["depth"] for p in pts] == [1, 2, 3] and all(p["trained_steps_this_call"] == 3 for p in pts)
    assert pts[0]["params"] < pts[1]["params"] < pts[2]["params"] and all(p["train_flops"] > 0 for p in pts)
    for name in ("test_loss", "test_error", "test_loss_last", "test_error_last", "test_loss_vs_flops"):
        assert np.isfinite(r["fits"][name]["alpha"]) and -1 <= r["fits"][name]["r"] <= 1
    assert json.load(open(os.path.join(out, "scaling.json")))["points"][2]["test_loss"] == pts[2]["test_loss"]
    assert "| 3 | 48 |" in open(os.path.join(out, "scaling.md")).read()
    # re-running continues: nothing is retrained, the same numbers come back
    again = scaling_study(out, data=digits_split, quick=True, progress=False)
    assert all(p["trained_steps_this_call"] == 0 and p["resumed_from"] == 3 for p in again["points"])
    assert [p["test_loss"] for p in again["points"]] == [p["test_loss"] for p in pts]
    # a longer budget continues the same runs from their checkpoints
    from nextscale.app.study import StudyRecipe

    more = scaling_study(
        out,
        data=digits_split,
        quick=True,
        progress=False,
        recipe=StudyRecipe(steps=4, batch_size=4, lr=1e-3, warmup_steps=1),
    )
    assert all(p["resumed_from"] == 3 and p["trained_steps_this_call"] == 1 and p["steps"] == 4 for p in more["points"])
    # the CLI front end: the same study (quick recipe: 3 steps, all done -> evaluation only), one line of result
    from nextscale.app.cli import main

    assert main(["study", "scaling", "--out", out, "--data", digits_split, "--quick", "--no-progress"]) == 0
    assert main(["study", "scaling", "--out", out, "--steps", "0"]) == 2
    # report-only: a size whose run is not finished is left out, nothing trains
    done = scaling_study(
        out,
        data=digits_split,
        quick=True,
        progress=False,
        train=False,
        recipe=StudyRecipe(steps=4, batch_size=4, lr=1e-3, warmup_steps=1),
    )
    assert done["complete"] and all(p["trained_steps_this_call"] == 0 for p in done["points"])
    from nextscale.errors import NextScaleError

    with pytest.raises(NextScaleError, match="only 0 finished"):
        scaling_study(
            out,
            data=digits_split,
            quick=True,
            progress=False,
            train=False,
            recipe=StudyRecipe(steps=5, batch_size=4, lr=1e-3, warmup_steps=1),
        )


def test_quick_ar_vs_var_study_writes_files_and_resumes(digits_split, tmp_path):
    from nextscale.app.study import ar_vs_var_study
    from nextscale.pipeline_ar import ARPipeline

    out = str(tmp_path / "arvar")
    r = ar_vs_var_study(out, data=digits_split, quick=True, progress=False)
    for f in (
        "ar_vs_var.json",
        "ar_vs_var.md",
        "ar_vs_var.png",
        "samples_var.png",
        "samples_ar.png",
        "classifier.safetensors",
    ):
        assert os.path.isfile(os.path.join(out, f)), f
    v, a = r["rows"]["VAR"], r["rows"]["AR"]
    assert v["steps"] == a["steps"] == 3 and v["trained_steps_this_call"] == a["trained_steps_this_call"] == 3
    assert abs(v["params"] - a["params"]) / v["params"] < 0.15  # equal size, up to the embeddings
    assert v["sampling_steps"] == 3 and a["sampling_steps"] == 16
    for row in (v, a):
        assert 0 <= row["class_accuracy"] <= 1 and np.isfinite(row["fid"]) and 0 <= row["precision"] <= 1
        assert row["seconds_per_image_b1"] > 0 and row["seconds_per_image_b50"] > 0
    # the AR run's export is an AR pipeline directory, trained on a single-scale tokenizer
    pipe = ARPipeline.from_pretrained(a["source"])
    assert pipe.vqvae.v_patch_nums == (4,) and pipe(class_labels=[1], seed=0, output_type="np").images.shape == (
        1,
        16,
        16,
        3,
    )
    assert "| sampling steps" in open(os.path.join(out, "ar_vs_var.md")).read()
    from nextscale.app.cli import main  # nextscale sample works on an AR directory

    assert (
        main(
            [
                "sample",
                "--model",
                a["source"],
                "--class",
                "1",
                "2",
                "--seed",
                "0",
                "--out",
                str(tmp_path / "g.png"),
                "--strip",
            ]
        )
        == 0
    )
    assert os.path.isfile(tmp_path / "g.png") and os.path.isfile(tmp_path / "g_strip.png")
    again = ar_vs_var_study(out, data=digits_split, quick=True, progress=False)
    assert again["rows"]["VAR"]["trained_steps_this_call"] == again["rows"]["AR"]["trained_steps_this_call"] == 0
    assert again["rows"]["AR"]["fid"] == a["fid"] and again["rows"]["VAR"]["class_accuracy"] == v["class_accuracy"]
