"""Trust: no file can run code, training never continues on NaN, buffers survive EMA/export, outputs
follow the umask.

A malicious pickle (its ``__reduce__`` would write a marker file) is planted in every place the
project reads a file; every command must refuse it with one line, exit non-zero, and the marker
must not exist afterwards.
"""

import json
import os
import shutil
import stat

import pytest
import torch

from nextscale.app.cli import main
from nextscale.checkpoint import CheckpointFolder
from nextscale.errors import NonFiniteError
from nextscale.safeload import UnsafeFileError, load_torch
from nextscale.train.optim import EMA

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = ["--no-progress", "--eval-every", "0", "--sample-every", "-1"]


class _Evil:
    """Unpickling this calls ``exec``: it writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def plant(path, marker, wrap=lambda e: {"state_dict": e}):
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    torch.save(wrap(_Evil(marker)), str(path))
    return str(path)


@pytest.fixture(scope="module")
def var_run(cache, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("vr") / "run")
    assert (
        main(
            [
                "train",
                "--cache",
                cache,
                "--preset",
                "tiny",
                "--run-dir",
                run,
                "--steps",
                "1",
                "--batch-size",
                "4",
                "--ema",
                "0.9",
            ]
            + QUIET
        )
        == 0
    )
    return run


@pytest.fixture(scope="module")
def tok_run(digits, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("tr") / "run")
    assert (
        main(
            [
                "train-tokenizer",
                "--data",
                digits,
                "--preset",
                "tiny",
                "--out",
                run,
                "--steps",
                "1",
                "--batch-size",
                "4",
                "--disc-weight",
                "0",
                "--perceptual-weight",
                "0",
            ]
            + QUIET
        )
        == 0
    )
    return run


def _copy_run(run, tmp_path, evil_step=99):
    """A copy of ``run`` with a planted newest checkpoint."""
    dst = str(tmp_path / "run")
    shutil.copytree(run, dst)
    marker = tmp_path / "PWNED"
    plant(
        CheckpointFolder(os.path.join(dst, "checkpoints")).path(evil_step),
        marker,
        wrap=lambda e: {"format": "nextscale-train", "step": evil_step, "modules": e},
    )
    return dst, marker


def _error_line(err: str) -> str:
    """The one error line of a failed command (progress/log lines of a started run may precede it)."""
    lines = err.strip().splitlines()
    errors = [ln for ln in lines if "error" in ln.lower() or "Traceback" in ln]
    assert len(errors) == 1 and lines[-1].startswith("nextscale: error: "), err
    return lines[-1]


def _refused(argv, marker, capsys, tmp_path):
    before = set(os.listdir(tmp_path))
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert not os.path.exists(marker), "code in a planted pickle ran"
    line = _error_line(err)
    assert "refused" in line and "never runs code" in line, line
    return before


def test_safe_loader_refuses_and_never_runs_code(tmp_path):
    marker = tmp_path / "PWNED"
    p = plant(tmp_path / "evil.pth", marker)
    with pytest.raises(UnsafeFileError, match="never runs code"):
        load_torch(p)
    assert not marker.exists()


@pytest.mark.parametrize(
    "place",
    [
        "sample_model",
        "info",
        "convert_var",
        "convert_vae",
        "tokenize_tokenizer",
        "train_tokenizer",
        "train_init",
        "fid_inception",
        "lpips_weights",
        "sample_default_dir",
    ],
)
def test_planted_pickle_in_model_and_weight_paths(place, tmp_path, digits, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    evil_var = plant(tmp_path / "rel" / "var_d16.pth", marker)
    evil_vae = plant(tmp_path / "rel" / "vae_ch160v4096z32.pth", marker)
    evil = plant(tmp_path / "evil.pth", marker)
    out = str(tmp_path / "out")
    argv = {
        "sample_model": ["sample", "--model", evil_var, "--out", str(tmp_path / "s.png")],
        "sample_default_dir": ["sample", "--model", str(tmp_path / "rel"), "--out", str(tmp_path / "s.png")],
        "info": ["info", evil_var],
        "convert_var": ["convert", "--vae", evil_vae, "--var", evil_var, "--out", out],
        "convert_vae": ["convert", "--vae", evil_vae, "--var", evil, "--out", out],
        "tokenize_tokenizer": ["tokenize", "--data", digits, "--tokenizer", evil_vae, "--out", out],
        "train_tokenizer": [
            "train",
            "--data",
            digits,
            "--tokenizer",
            evil_vae,
            "--preset",
            "tiny",
            "--run-dir",
            out,
            "--steps",
            "1",
        ]
        + QUIET,
        "train_init": [
            "train",
            "--data",
            digits,
            "--tokenizer",
            "default",
            "--init",
            evil,
            "--run-dir",
            out,
            "--steps",
            "1",
        ]
        + QUIET,
        "fid_inception": ["fid", "--samples", digits, "--ref", digits, "--inception-weights", evil, "--no-progress"],
        "lpips_weights": [
            "train-tokenizer",
            "--data",
            digits,
            "--preset",
            "tiny",
            "--out",
            out,
            "--steps",
            "1",
            "--lpips-weights",
            evil,
            "--perceptual-weight",
            "1",
        ]
        + QUIET,
    }[place]
    _refused(argv, marker, capsys, tmp_path)


@pytest.mark.parametrize("place", ["export", "resume", "export_step_file"])
def test_planted_pickle_in_var_run_folder(place, var_run, cache, tmp_path, capsys):
    run, marker = _copy_run(var_run, tmp_path)
    ck = CheckpointFolder(os.path.join(run, "checkpoints"))
    argv = {
        "export": ["export", run, "--out", str(tmp_path / "m")],
        "export_step_file": ["export", ck.path(99), "--out", str(tmp_path / "m")],
        "resume": ["train", "--cache", cache, "--preset", "tiny", "--run-dir", run, "--steps", "2", "--batch-size", "4"]
        + QUIET,
    }[place]
    _refused(argv, marker, capsys, tmp_path)
    assert not (tmp_path / "m").exists()
    assert ck.steps() == [1, 99]  # nothing was trained or written on top of the planted file


@pytest.mark.parametrize(
    "place",
    ["export_tokenizer", "eval_tokenizer_step", "eval_tokenizer_run", "resume_tokenizer", "train_with_tokenizer_run"],
)
def test_planted_pickle_in_tokenizer_run_folder(place, tok_run, digits, tmp_path, capsys):
    run, marker = _copy_run(tok_run, tmp_path)
    shutil.rmtree(os.path.join(run, "tokenizer"), ignore_errors=True)  # force the checkpoint path
    step = CheckpointFolder(os.path.join(run, "checkpoints")).path(99)
    argv = {
        "export_tokenizer": ["export-tokenizer", run, "--out", str(tmp_path / "m")],
        "eval_tokenizer_step": [
            "eval-tokenizer",
            step,
            "--data",
            digits,
            "--no-rfid",
            "--picture",
            str(tmp_path / "p.png"),
        ],
        "eval_tokenizer_run": [
            "eval-tokenizer",
            run,
            "--data",
            digits,
            "--no-rfid",
            "--picture",
            str(tmp_path / "p.png"),
        ],
        "resume_tokenizer": [
            "train-tokenizer",
            "--data",
            digits,
            "--preset",
            "tiny",
            "--out",
            run,
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--disc-weight",
            "0",
            "--perceptual-weight",
            "0",
        ]
        + QUIET,
        "train_with_tokenizer_run": [
            "train",
            "--data",
            digits,
            "--tokenizer",
            run,
            "--preset",
            "tiny",
            "--run-dir",
            str(tmp_path / "v"),
            "--steps",
            "1",
        ]
        + QUIET,
    }[place]
    _refused(argv, marker, capsys, tmp_path)
    assert not (tmp_path / "m").exists() and not (tmp_path / "p.png").exists()


def test_token_cache_with_pickled_arrays_is_refused(cache, tmp_path, capsys):
    import numpy as np

    dst = str(tmp_path / "cache")
    shutil.copytree(cache, dst)
    marker = tmp_path / "PWNED"
    arr = np.empty(3, dtype=object)
    arr[0] = _Evil(marker)
    np.save(os.path.join(dst, "train", "labels.npy"), arr, allow_pickle=True)
    rc = main(["train", "--cache", dst, "--preset", "tiny", "--run-dir", str(tmp_path / "r"), "--steps", "1"] + QUIET)
    err = _error_line(capsys.readouterr().err)
    assert rc != 0 and "Python objects" in err, err
    assert not marker.exists()


def test_training_checkpoints_load_tensors_only(var_run, tok_run):
    """What the trainers write is readable by the safe loader (no fallback is ever needed)."""
    for run in (var_run, tok_run):
        ck = CheckpointFolder(os.path.join(run, "checkpoints"))
        st = load_torch(ck.path(ck.steps()[-1]))
        assert st["step"] == ck.steps()[-1] and st["rng"] and st["optimizers"]


# ------------------------------------------------------------------ buffers are not parameters
def test_ema_copies_buffers_and_keeps_minus_inf_mask():
    from nextscale.models.var import VAR  # noqa: F401  (the real mask comes from the model below)
    from nextscale.pipelines import NextScalePipeline

    var = NextScalePipeline.from_preset("tiny", seed=0).var
    mask = var.attn_bias_for_masking.clone()
    assert torch.isinf(mask).any()
    ema = EMA(var, 0.9)
    with torch.no_grad():
        for p in var.parameters():
            p.add_(1.0)
    ema.update(var)
    sd = ema.state_dict()
    assert torch.equal(sd["attn_bias_for_masking"], mask)  # bit-identical, -inf kept, no NaN
    assert torch.equal(sd["lvl_1L"], var.lvl_1L)
    for k, p in var.named_parameters():  # parameters are averaged: 0.9 * old + 0.1 * (old + 1)
        assert torch.allclose(sd[k], p.detach() - 0.9, atol=1e-5), k
    assert all(torch.isfinite(v).all() for k, v in sd.items() if k != "attn_bias_for_masking")


def test_bundled_default_model_has_no_nan():
    from safetensors.torch import load_file

    from nextscale.hub import DEFAULT_MODEL_DIR

    for part in ("vqvae", "var"):
        sd = load_file(str(DEFAULT_MODEL_DIR / part / "model.safetensors"))
        assert not any(torch.isnan(v).any() for v in sd.values() if v.is_floating_point()), part


def test_nan_mask_export_is_repaired_on_load(tmp_path):
    """Exports written before the EMA fix (NaN mask) load with the schedule's mask and a warning."""
    from safetensors.torch import load_file, save_file

    from nextscale.pipelines import NextScalePipeline

    pipe = NextScalePipeline.from_preset("tiny", seed=0)
    pipe.save_pretrained(tmp_path / "m")
    p = tmp_path / "m" / "var" / "model.safetensors"
    sd = load_file(str(p))
    sd["attn_bias_for_masking"] = torch.where(torch.isinf(sd["attn_bias_for_masking"]), float("nan"), 0.0)
    save_file(sd, str(p))
    with pytest.warns(RuntimeWarning, match="EMA fix"):
        again = NextScalePipeline.from_pretrained(tmp_path / "m")
    assert torch.equal(again.var.attn_bias_for_masking, pipe.var.attn_bias_for_masking)


def _finite_dir(d):
    from safetensors.torch import load_file

    for part in ("vqvae", "var"):
        sd = load_file(os.path.join(d, part, "model.safetensors"))
        bad = [k for k, v in sd.items() if v.is_floating_point() and torch.isnan(v).any()]
        assert not bad, (part, bad)


def test_fine_tune_from_default_and_from_ema_export(digits, tmp_path, capsys):
    """`--init default` (the report's case), then `--init` of that run's EMA export: finite loss,
    finite exported weights, and the export samples."""

    def tune(init, run):
        rc = main(
            [
                "train",
                "--data",
                digits,
                "--tokenizer",
                "default",
                "--init",
                init,
                "--run-dir",
                run,
                "--steps",
                "3",
                "--batch-size",
                "4",
                "--ema",
                "0.9",
            ]
            + QUIET
        )
        assert rc == 0
        with open(os.path.join(run, "metrics.jsonl")) as f:
            losses = [r["loss"] for r in map(json.loads, f) if r["kind"] == "train"]
        assert losses and all(v == v and abs(v) < 1e3 for v in losses), losses

    run1, m1 = str(tmp_path / "r1"), str(tmp_path / "m1")
    tune("default", run1)
    assert main(["export", run1, "--out", m1, "--weights", "ema"]) == 0
    _finite_dir(m1)
    run2, m2 = str(tmp_path / "r2"), str(tmp_path / "m2")
    tune(m1, run2)
    assert main(["export", run2, "--out", m2, "--weights", "ema"]) == 0
    _finite_dir(m2)
    assert (
        main(["sample", "--model", m2, "--class", "1", "2", "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 0
    )
    assert (tmp_path / "s.png").is_file()


# ------------------------------------------------------------------ NaN never trains
def test_nan_loss_stops_with_one_line_and_keeps_last_good_checkpoint(cache, tmp_path, capsys, monkeypatch):
    from nextscale.train import var as train_var

    run = str(tmp_path / "run")
    base = [
        "train",
        "--cache",
        cache,
        "--preset",
        "tiny",
        "--run-dir",
        run,
        "--batch-size",
        "4",
        "--ckpt-every",
        "1",
    ] + QUIET
    assert main(base + ["--steps", "2"]) == 0
    ck = CheckpointFolder(os.path.join(run, "checkpoints"))
    good = ck.path(2)
    before = (os.stat(good).st_mtime_ns, load_torch(good)["modules"]["var"])

    orig = train_var.VARObjective.train_step

    def poisoned(self, batch, ctx):
        out = orig(self, batch, ctx)
        if ctx.step == 3:  # the 4th step (0-based 3) goes NaN
            out["loss"] = torch.tensor(float("nan"))
        return out

    monkeypatch.setattr(train_var.VARObjective, "train_step", poisoned)
    capsys.readouterr()
    rc = main(base + ["--steps", "6"])
    err = _error_line(capsys.readouterr().err)
    assert rc != 0
    assert "step 4" in err and "loss is nan" in err and "step_00000003.pt" in err, err
    assert ck.steps()[-1] == 3  # step 3 was good and saved; nothing after it
    st = load_torch(ck.path(3))
    assert all(torch.isfinite(v).all() for k, v in st["modules"]["var"].items() if k != "attn_bias_for_masking")
    assert os.stat(good).st_mtime_ns == before[0] or not os.path.exists(good)
    with open(os.path.join(run, "log.txt")) as f:
        assert "loss is nan" in f.read()


def test_non_finite_init_weights_are_refused_before_training(cache, tmp_path, capsys):
    from nextscale.pipelines import NextScalePipeline

    pipe = NextScalePipeline.from_preset("tiny", seed=0)
    with torch.no_grad():
        pipe.var.head.weight[0, 0] = float("nan")
    pipe.save_pretrained(tmp_path / "bad")
    rc = main(
        [
            "train",
            "--cache",
            cache,
            "--init",
            str(tmp_path / "bad"),
            "--run-dir",
            str(tmp_path / "r"),
            "--steps",
            "2",
            "--batch-size",
            "4",
        ]
        + QUIET
    )
    err = _error_line(capsys.readouterr().err)
    assert rc != 0 and "head.weight" in err and "NaN" in err, err
    assert not os.path.isdir(tmp_path / "r" / "checkpoints") or not os.listdir(tmp_path / "r" / "checkpoints")


# ------------------------------------------------------------------ umask
@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_outputs_follow_the_umask(mask, tmp_path):
    from nextscale.pipelines import NextScalePipeline

    old = os.umask(mask)
    try:
        assert main(["sample", "--class", "1", "--out", str(tmp_path / "g.png"), "--device", "cpu"]) == 0
        NextScalePipeline.from_pretrained("default").save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    want_f, want_d = 0o666 & ~mask, 0o777 & ~mask
    files = [
        tmp_path / "g.png",
        tmp_path / "g_000_class1.png",
        tmp_path / "m" / "var" / "model.safetensors",
        tmp_path / "m" / "model_index.json",
    ]
    for f in files:
        assert stat.S_IMODE(os.stat(f).st_mode) == want_f, (f, oct(os.stat(f).st_mode))
    for d in (tmp_path / "m", tmp_path / "m" / "var"):
        assert stat.S_IMODE(os.stat(d).st_mode) == want_d, (d, oct(os.stat(d).st_mode))


def test_nonfinite_error_is_a_user_error():
    from nextscale.errors import NextScaleError

    assert issubclass(NonFiniteError, NextScaleError)
