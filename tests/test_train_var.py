"""`nextscale train / tokenize / export` end to end on real MNIST digits with the tiny preset."""

import json
import os

import numpy as np
import pytest
import torch

from nextscale.app.cli import main
from nextscale.data import TokenCache
from nextscale.train.var import progressive_stage
from runs import final, kill9_after_first_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


QUIET = ["--no-progress", "--eval-every", "0", "--sample-every", "-1"]


def _metrics(run, kind="train"):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def test_overfit_export_and_sample_classes(cache, tmp_path):
    """Acceptance: the loss falls far below its start and the exported model reproduces the classes."""
    from nextscale.pipelines import NextScalePipeline
    from nextscale.sampling import generate

    run = str(tmp_path / "run")
    rc = main(
        [
            "train",
            "--cache",
            cache,
            "--preset",
            "tiny",
            "--run-dir",
            run,
            "--steps",
            "80",
            "--batch-size",
            "20",
            "--lr",
            "3e-3",
            "--warmup-steps",
            "5",
            "--log-every",
            "10",
            "--ckpt-every",
            "40",
            "--ema",
            "0.9",
        ]
        + QUIET
    )
    assert rc == 0
    m = _metrics(run)
    assert m[-1]["loss"] < 0.3 * m[0]["loss"] and m[-1]["acc"] > 80
    assert {"scale/loss_4x4", "scale/acc_1x1", "tok_per_s", "img_per_s", "eta_s", "var/lr", "var/grad_norm"} <= set(
        m[-1]
    )
    out = str(tmp_path / "model")
    assert main(["export", run, "--out", out, "--weights", "raw"]) == 0
    pipe = NextScalePipeline.from_pretrained(out)
    assert pipe.num_classes == 10 and json.load(open(os.path.join(out, "labels.json"))) == [str(i) for i in range(10)]
    ds = TokenCache.open(cache).dataset("train", train=False)
    toks = torch.stack([ds[(i, -1)]["tokens"] for i in range(len(ds))])
    labels = np.array([ds[(i, -1)]["label"] for i in range(len(ds))])
    g = generate(
        pipe.var, pipe.vqvae, 10, torch.arange(10), generator=torch.Generator().manual_seed(0), cfg=1.5, top_k=1
    )
    agree = (torch.cat(g.idx_per_scale, 1)[:, None] == toks[None]).float().mean(-1)  # (10 samples, 20 training maps)
    nearest = labels[agree.argmax(1).numpy()]
    assert (nearest == np.arange(10)).sum() >= 8 and agree.max(1).values.mean() > 0.8
    imgs = pipe(
        class_labels=[0, 1],
        guidance_scale=1.5,
        top_k=1,
        top_p=0.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        show_progress=False,
    ).images
    assert imgs.shape == (2, 64, 64, 3)
    # EMA export and fine-tuning from the exported model (--init)
    assert main(["export", run, "--out", str(tmp_path / "ema"), "--weights", "ema"]) == 0
    rc = main(
        [
            "train",
            "--cache",
            cache,
            "--init",
            out,
            "--run-dir",
            str(tmp_path / "ft"),
            "--steps",
            "2",
            "--batch-size",
            "4",
        ]
        + QUIET
    )
    assert rc == 0 and final(str(tmp_path / "ft"))[0] == 2


def test_progressive_training_runs(cache, tmp_path):
    assert [progressive_stage(s, 100, 10, 0.5, 1, 4) for s in (0, 10, 20, 30, 50, 99)] == [1, 1, 1, 2, -1, -1]
    assert progressive_stage(5, 100, 10, 0.0, 1, 4) == -1
    run = str(tmp_path / "pg")
    rc = main(
        [
            "train",
            "--cache",
            cache,
            "--preset",
            "tiny",
            "--run-dir",
            run,
            "--steps",
            "8",
            "--batch-size",
            "4",
            "--progressive",
            "0.75",
            "--progressive-start",
            "0",
            "--warmup-steps",
            "2",
            "--progressive-warmup-steps",
            "2",
            "--log-every",
            "1",
        ]
        + QUIET
    )
    assert rc == 0
    stages = [r.get("prog/stage", 3) for r in _metrics(run)]
    assert stages[0] == 0 and stages[-1] == 3 and stages == sorted(stages)
    assert "scale/loss_4x4" not in _metrics(run)[0] and "scale/loss_4x4" in _metrics(run)[-1]


def test_images_with_validation_samples_and_bad_files(digits, tmp_path):
    import shutil

    data = str(tmp_path / "d")
    shutil.copytree(os.path.join(digits, "train"), os.path.join(data, "train"))
    for c in range(10):
        os.makedirs(os.path.join(data, "val", str(c)))
        first = sorted(os.listdir(os.path.join(data, "train", str(c))))[0]
        shutil.copy(os.path.join(data, "train", str(c), first), os.path.join(data, "val", str(c), "v.png"))
    (tmp_path / "d/train/3/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    run = str(tmp_path / "run")
    rc = main(
        [
            "train",
            "--data",
            data,
            "--tokenizer",
            "random",
            "--preset",
            "tiny",
            "--run-dir",
            run,
            "--steps",
            "4",
            "--batch-size",
            "21",
            "--hflip",
            "--eval-every",
            "2",
            "--sample-every",
            "4",
            "--log-every",
            "2",
            "--no-progress",
        ]
    )
    assert rc == 0
    val = _metrics(run, "val")
    assert [v["step"] for v in val] == [2, 4] and {"loss", "acc", "loss_tail", "scale/acc_2x2"} <= set(val[0])
    assert os.path.isfile(os.path.join(run, "samples", "step_00000004.png"))
    assert "unreadable" in open(os.path.join(run, "log.txt")).read()
    cfg = json.load(open(os.path.join(run, "config.json")))
    assert cfg["derived"]["steps"] == 4 and cfg["classes"] == [str(i) for i in range(10)]


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--data", "{tmp}/missing"], "does not exist"),
        (["--data", "{tmp}/empty"], "no images"),
        (["--data", "{tmp}/txt"], "no images"),
        (["--data", "{digits}", "--batch-size", "0"], "batch-size"),
        (["--data", "{digits}", "--preset", "d17"], "unknown preset"),
        (["--cache", "{cache}", "--tokenizer", "random", "--preset", "tiny", "--seed", "1"], "another tokenizer"),
        (["--data", "{digits}", "--preset", "tiny"], "--tokenizer"),
    ],
)
def test_bad_input_is_one_line_error(args, msg, tmp_path, digits, cache, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "txt/a").mkdir(parents=True)
    (tmp_path / "txt/a/readme.txt").write_text("x")
    args = [a.format(tmp=tmp_path, digits=digits, cache=cache) for a in args]
    if "--tokenizer" not in args and "--cache" not in args and msg != "--tokenizer":
        args += ["--tokenizer", "random", "--preset", "tiny"] if "--preset" not in args else ["--tokenizer", "random"]
    rc = main(["train"] + args + ["--run-dir", str(tmp_path / "r"), "--steps", "1"] + QUIET)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("nextscale: error:") and msg in err[0], err


@pytest.mark.slow
def test_kill9_then_rerun_is_bit_identical(digits, tmp_path):
    """Acceptance: kill -9 at a random moment after a checkpoint exists, re-run the same command ->
    final weights, optimizer state and RNG equal those of an uninterrupted run (torch.equal)."""

    def cmd(run):
        return [
            "train",
            "--data",
            digits,
            "--tokenizer",
            "random",
            "--preset",
            "tiny",
            "--run-dir",
            run,
            "--steps",
            "14",
            "--batch-size",
            "6",
            "--hflip",
            "--ckpt-every",
            "2",
            "--keep",
            "2",
            "--log-every",
            "7",
            "--lr",
            "1e-3",
        ] + QUIET

    ref = str(tmp_path / "ref")
    assert main(cmd(ref)) == 0
    run = str(tmp_path / "cut")
    returncode, killed_at = kill9_after_first_checkpoint(cmd(run), run, jitter_s=0.6)
    assert killed_at, "the run never wrote a checkpoint"
    # the kill landed mid-run (otherwise resuming a finished run would make the equality trivial)
    assert returncode == -9 and killed_at[-1] < 14, (returncode, killed_at)
    assert main(cmd(run)) == 0  # the same command resumes
    (sa, a), (sb, b) = final(ref), final(run)
    assert sa == sb == 14
    for k, v in a["modules"]["var"].items():
        assert torch.equal(v, b["modules"]["var"][k]), k
    for i, st in a["optimizers"]["var"]["state"].items():
        for n, v in st.items():
            assert torch.equal(v, b["optimizers"]["var"]["state"][i][n])
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"]) and a["data"] == b["data"]
