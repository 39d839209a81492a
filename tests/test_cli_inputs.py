"""Every bad input gets its true reason: one line `nextscale: error: ...`, exit 2, nothing left behind.

Cases from the trust audit (issue "Trust first"), each run in an empty working folder that must
stay as it was (no run folder, no output file, no hidden temp file).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from nextscale.app.cli import main
from nextscale.errors import NextScaleError
from nextscale.pipelines import NextScalePipeline


@pytest.fixture(scope="module")
def digits(digits32):
    return digits32


@pytest.fixture(scope="module")
def pipe():
    return NextScalePipeline.from_pretrained("default")


def _bad(argv, tmp_path, capsys, monkeypatch, *needles):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    monkeypatch.chdir(work)
    before = sorted(os.listdir(work))
    rc = main(argv)
    err = [
        ln
        for ln in capsys.readouterr().err.strip().splitlines()  # progress bars are not messages
        if ln.strip() and not ("it/s]" in ln or "s/it]" in ln)
    ]
    assert rc == 2, (rc, err)
    assert len(err) == 1 and err[0].startswith("nextscale: error: "), err
    for n in needles:
        assert n in err[0], (n, err[0])
    assert sorted(os.listdir(work)) == before, "a failed command left files behind"
    return err[0]


SAMPLE_CASES = [
    (["--out", "o.xyz"], ["'.xyz' is not an image type", ".png"]),
    (["--out", "o.docx"], ["'.docx' is not an image type"]),
    (["--out", "o"], ["has no file extension"]),
    (["--nrow", "0"], ["--nrow must be >= 1, got 0"]),
    (["--nrow", "-1"], ["--nrow must be >= 1, got -1"]),
    (["--seed", "-1"], ["--seed must be in [0, 2**63), got -1"]),
    (["--seed", str(2**70)], ["--seed must be in [0, 2**63)"]),
    (["--num", "1000000000"], ["--num must be <= 100,000"]),
    (["--device", "tpu"], ["--device 'tpu' is not a device"]),
    (["--class", "99"], ["99", "0..9"]),
    (["--out", "nodir/o.png"], ["does not exist"]),
]


@pytest.mark.parametrize("args,needles", SAMPLE_CASES, ids=[" ".join(a) for a, _ in SAMPLE_CASES])
def test_sample_bad_values(args, needles, tmp_path, capsys, monkeypatch):
    _bad(
        ["sample", "--device", "cpu"] + args if "--device" not in args else ["sample"] + args,
        tmp_path,
        capsys,
        monkeypatch,
        *needles,
    )


def test_atomic_write_error_names_the_output_not_the_temp_file(tmp_path, monkeypatch):
    """The temp file cannot be created (e.g. read-only folder as root, full disk): the error names
    the path the user asked for."""
    import tempfile

    from nextscale.imageio import save_image_atomic

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(NextScaleError, match=r"o\.png: cannot write here \(Permission denied\)") as e:
        save_image_atomic(np.zeros((4, 4, 3), np.uint8), tmp_path / "o.png")
    assert ".tmp" not in str(e.value)


TRAIN_CASES = [
    (["--lr", "nan"], ["--lr must be a finite number"]),
    (["--lr", "-1"], ["--lr must be > 0"]),
    (["--workers", "-1"], ["--workers must be >= 0"]),
    (["--batch-size", "5", "--grad-accum", "2"], ["not divisible", "--grad-accum 2"]),
    (["--seed", "-3"], ["--seed must be in [0, 2**63)"]),
    (["--weight-decay", "inf"], ["--weight-decay must be a finite number"]),
    (["--device", "tpu"], ["--device 'tpu' is not a device"]),
    (["--ckpt-every", "0"], ["--ckpt-every must be a positive integer, got 0"]),
]


@pytest.mark.parametrize("args,needles", TRAIN_CASES, ids=[" ".join(a) for a, _ in TRAIN_CASES])
def test_train_checks_everything_before_creating_the_run_folder(args, needles, digits, tmp_path, capsys, monkeypatch):
    base = [
        "train",
        "--data",
        digits,
        "--tokenizer",
        "default",
        "--preset",
        "mnist",
        "--steps",
        "1",
        "--run-dir",
        "run",
        "--no-progress",
    ]
    if "--batch-size" not in args:
        base += ["--batch-size", "4"]
    _bad(base + args, tmp_path, capsys, monkeypatch, *needles)


TOK_CASES = [
    (["--patch-nums", "1", "2", "99"], ["does not fit this tokenizer's 8x8 latent", "--patch-nums 1 2 4 6 8"]),
    (["--patch-nums", "1", "4", "2", "8"], ["does not fit"]),
    (["--lr", "nan"], ["--lr must be a finite number"]),
    (["--workers", "-1"], ["--workers must be >= 0"]),
    (["--batch-size", "6", "--grad-accum", "4"], ["not divisible"]),
]


@pytest.mark.parametrize("args,needles", TOK_CASES, ids=[" ".join(a) for a, _ in TOK_CASES])
def test_train_tokenizer_checks_before_creating_files(args, needles, digits, tmp_path, capsys, monkeypatch):
    base = ["train-tokenizer", "--data", digits, "--preset", "mnist", "--steps", "1", "--out", "run", "--no-progress"]
    _bad(base + args, tmp_path, capsys, monkeypatch, *needles)


def test_not_a_checkpoint_says_so(tmp_path, capsys, monkeypatch):
    """Empty, text, truncated safetensors: 'not a checkpoint (why)', never 'put vae_... beside it'."""
    work = tmp_path / "files"
    work.mkdir()
    (work / "empty.pth").write_bytes(b"")
    (work / "text.pth").write_text("hello, not a model\n")
    from nextscale.hub import DEFAULT_MODEL_DIR

    (work / "trunc.safetensors").write_bytes((DEFAULT_MODEL_DIR / "var" / "model.safetensors").read_bytes()[:100])
    for name, why in (("empty.pth", "an empty file"), ("text.pth", "a text file"), ("trunc.safetensors", "damaged")):
        for cmd in (["info", str(work / name)], ["sample", "--model", str(work / name), "--out", "o.png"]):
            line = _bad(cmd, tmp_path, capsys, monkeypatch, "not a checkpoint", why)
            assert "beside it" not in line


def test_info_on_unknown_schedule_points_at_convert(tmp_path, capsys, monkeypatch):
    pipe = NextScalePipeline.from_preset("tiny", seed=0)
    sd = pipe.var.state_dict()
    torch.save(sd, tmp_path / "var_d6.pth")
    line = _bad(
        ["info", str(tmp_path / "var_d6.pth")], tmp_path, capsys, monkeypatch, "nextscale convert", "--patch-nums"
    )
    assert "info" not in line.split("error:", 1)[1] or "convert" in line


def test_edit_missing_image_is_no_such_file(tmp_path, capsys, monkeypatch):
    _bad(
        ["edit", "--image", "nope.png", "--keep-scales", "2"],
        tmp_path,
        capsys,
        monkeypatch,
        "--image 'nope.png' does not exist",
    )
    _bad(["edit", "--image", "nope.png"], tmp_path, capsys, monkeypatch, "does not exist")


def test_eval_tokenizer_accepts_default(digits, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        main(["eval-tokenizer", "default", "--data", digits, "--no-rfid", "--picture", "p.png", "--max-images", "4"])
        == 0
    )
    assert (tmp_path / "p.png").is_file()


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    """Only user errors become one line: a bug (here a ValueError from inside the library) propagates."""
    import nextscale.pipelines as P

    def boom(*a, **k):
        raise ValueError("internal bug")

    monkeypatch.setattr(P, "load_pipeline", boom)
    with pytest.raises(ValueError, match="internal bug"):
        main(["sample", "--out", "x.png"])


def test_killed_sample_temp_files_are_removed_by_the_next_run(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".s.png.{dead.pid}.abcd.tmp"
    stale.write_bytes(b"half a png")
    live = tmp_path / f".s.png.{os.getpid()}.efgh.tmp"  # a writer that is still running: kept
    live.write_bytes(b"in progress")
    assert main(["sample", "--class", "1", "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 0
    assert not stale.exists() and live.exists()
    assert (tmp_path / "s.png").is_file()


def test_killed_tokenize_partial_folder_is_removed(digits, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "cache"
    leftover = tmp_path / f".cache.{dead.pid}.abcd.tmp"  # nextscale.atomic.atomic_dir's temp folder
    (leftover / "train").mkdir(parents=True)
    assert main(["tokenize", "--data", digits, "--tokenizer", "default", "--out", str(out)]) == 0
    assert not leftover.exists() and (out / "meta.json").is_file()


def test_sample_writes_the_format_its_extension_names(tmp_path):
    from PIL import Image

    assert main(["sample", "--class", "1", "--out", str(tmp_path / "g.jpg"), "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "g.jpg").format == "JPEG"
    assert Image.open(tmp_path / "g_000_class1.jpg").format == "JPEG"


# ------------------------------------------------------------------ the Python API
@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(seed=2**70), r"seed must be in \[0, 2\*\*63\)"),
        (dict(seed=-1), r"seed must be in \[0, 2\*\*63\)"),
        (dict(seed=1.5), "seed must be an integer, got 1.5"),
        (dict(class_labels=[1.5]), "class_labels must be an integer, got 1.5"),
        (dict(class_labels=[True]), "class_labels must be an integer, got True"),
        (dict(class_labels=["seven"]), "class_labels: no class named 'seven'"),
        (dict(class_labels=[[7]]), r"class_labels must be an integer, got \[7\]"),
        (dict(class_labels=[]), "class_labels is empty"),
        (dict(class_labels=[10]), "class 10 is out of range"),
        (dict(seed=1, generator=torch.Generator()), "either seed or generator, not both"),
        (dict(num_images=10**9), "num_images must be <= 100,000"),
        (dict(num_images=0), "num_images must be >= 1"),
    ],
)
def test_pipeline_rejects_bad_values(pipe, kw, msg):
    with pytest.raises(NextScaleError, match=msg):
        pipe(**kw)


def test_pipeline_accepts_numpy_and_tensor_integers(pipe):
    a = pipe(class_labels=np.array([1, 2]), seed=np.int64(3), output_type="pt").images
    b = pipe(class_labels=torch.tensor([1, 2]), seed=3, output_type="pt").images
    c = pipe(class_labels=[1, 2], seed=3, output_type="pt").images
    assert torch.equal(a, c) and torch.equal(b, c)


def test_pipeline_to_unknown_device(pipe):
    with pytest.raises(NextScaleError, match="'tpu' is not a device"):
        pipe.to("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(NextScaleError, match="no CUDA device"):
            pipe.to("cuda")


def test_nan_weights_give_a_clear_error_not_a_torch_traceback(tmp_path, capsys, monkeypatch):
    bad = NextScalePipeline.from_pretrained("default")
    with torch.no_grad():
        bad.var.head.weight.fill_(float("nan"))
    with pytest.raises(NextScaleError, match="logits at scale 1 .* are NaN/inf"):
        bad(class_labels=[1], seed=0)
    bad.save_pretrained(tmp_path / "nanmodel")
    _bad(
        ["sample", "--model", str(tmp_path / "nanmodel"), "--class", "1", "--device", "cpu"],
        tmp_path,
        capsys,
        monkeypatch,
        "NaN/inf",
        "weights are not finite",
    )


# ------------------------------------------------------------------ the rest of the audit: every command, every flag
def _work(tmp_path):
    return tmp_path / "work"


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture(scope="module")
def img(tmp_path_factory):
    from PIL import Image

    p = tmp_path_factory.mktemp("img") / "in.png"
    Image.new("RGB", (32, 32), (120, 30, 200)).save(p)
    return str(p)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A refused pickle, a released-layout transformer without its tokenizer, a plain file."""
    import fractions

    from nextscale.configs import ModelConfig, VARConfig, VQVAEConfig, scale_schedule_256
    from nextscale.models import build_from_config

    d = tmp_path_factory.mktemp("files")
    torch.save({"a": fractions.Fraction(1, 3)}, d / "objects.pth")  # needs a global: refused, never run
    cfg = ModelConfig(
        vqvae=VQVAEConfig(
            vocab_size=16,
            z_channels=4,
            ch=32,
            ch_mult=(1, 1, 1, 1, 1),
            num_res_blocks=1,
            using_sa=False,
            using_mid_sa=False,
        ),
        var=VARConfig(depth=1, embed_dim=32, num_heads=1, num_classes=2, patch_nums=scale_schedule_256),
    )
    (d / "released").mkdir()
    torch.save(
        build_from_config(cfg, seed=0)[1].state_dict(), d / "released" / "var_d1.pth"
    )  # 680 tokens, no vae_*.pth
    (d / "afile").write_text("x")
    return d


@pytest.mark.parametrize("dev", ["tpu", "cuda:7", "gpu0"])
def test_bad_device_sample_and_edit(dev, img, tmp_path, capsys, monkeypatch):
    if dev == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    _bad(["sample", "--device", dev], tmp_path, capsys, monkeypatch, f"--device {dev!r}")
    _bad(
        ["edit", "--image", img, "--keep-scales", "1", "--device", dev],
        tmp_path,
        capsys,
        monkeypatch,
        f"--device {dev!r}",
    )


def test_largest_seed_works(pipe):
    assert len(pipe(class_labels=[1], seed=2**63 - 1).images) == 1


LOOP_CASES = [  # both training commands
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--keep", "0"], "--keep"),
    (["--grad-clip", "nan"], "--grad-clip must be a finite number"),
    (["--warmup-steps", "-1"], "--warmup-steps must be >= 0"),
    (["--ema", "nan"], "--ema"),
    (["--mid-reso", "nan"], "--mid-reso must be a finite number"),
    (["--mid-reso", "0.5"], "--mid-reso must be >= 1"),
    (["--epochs", "nan"], "--epochs must be a positive number"),  # also with --steps given
    (["--seed", "-1"], "--seed must be in [0, 2**63)"),
]


@pytest.mark.parametrize("cmd", ["train", "train-tokenizer"])
@pytest.mark.parametrize("args,needle", LOOP_CASES, ids=[" ".join(a) for a, _ in LOOP_CASES])
def test_training_flags_checked_before_any_file(cmd, args, needle, digits, tmp_path, capsys, monkeypatch):
    base = (
        [cmd, "--data", digits, "--tokenizer", "default", "--preset", "mnist", "--run-dir", "run"]
        if cmd == "train"
        else [cmd, "--data", digits, "--out", "run"]
    )
    _bad(base + ["--steps", "1", "--batch-size", "4", "--no-progress"] + args, tmp_path, capsys, monkeypatch, needle)


@pytest.mark.parametrize(
    "cmd,args,needle",
    [
        ("train", ["--base-lr", "nan"], "--base-lr must be a finite number"),
        ("train", ["--label-smooth", "nan"], "--label-smooth"),
        ("train", ["--cond-drop", "nan"], "--cond-drop"),
        ("train", ["--progressive", "1"], "--progressive"),
        ("train", ["--init-std", "nan"], "--init-std must be a finite number"),
        ("train", ["--schedule", "wobbly"], "unknown lr schedule 'wobbly'"),
        ("train-tokenizer", ["--disc-lr", "nan"], "--disc-lr must be a finite number"),
        ("train-tokenizer", ["--dead-threshold", "nan"], "--dead-threshold must be a finite number"),
        (
            "train-tokenizer",
            ["--beta", "nan"],
            "--beta must be a finite number",
        ),  # was a NaN loss after the run folder existed
        ("train-tokenizer", ["--eini", "nan"], "--eini must be a finite number"),
    ],
)
def test_training_command_specific_flags(cmd, args, needle, digits, tmp_path, capsys, monkeypatch):
    base = (
        [cmd, "--data", digits, "--tokenizer", "default", "--preset", "mnist", "--run-dir", "run"]
        if cmd == "train"
        else [cmd, "--data", digits, "--out", "run"]
    )
    _bad(base + ["--steps", "1", "--batch-size", "4", "--no-progress"] + args, tmp_path, capsys, monkeypatch, needle)


def test_tiny_preset_with_the_default_tokenizer_names_the_preset_that_fits(digits, tmp_path, capsys, monkeypatch):
    _bad(
        [
            "train",
            "--data",
            digits,
            "--tokenizer",
            "default",
            "--preset",
            "tiny",
            "--run-dir",
            "r",
            "--steps",
            "1",
            "--batch-size",
            "4",
            "--no-progress",
        ],
        tmp_path,
        capsys,
        monkeypatch,
        "--preset mnist / mnist-small has the tokenizer's scales",
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--workers", "-1"], "--workers must be >= 0"),
        (["--batch-size", "0"], "--batch-size"),
        (["--device", "tpu"], "--device 'tpu'"),
        (["--mid-reso", "nan"], "--mid-reso"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_tokenize_bad_values(args, needle, digits, tmp_path, capsys, monkeypatch):
    _bad(
        ["tokenize", "--data", digits, "--tokenizer", "default", "--out", "cache"] + args,
        tmp_path,
        capsys,
        monkeypatch,
        needle,
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--device", "tpu"], "--device 'tpu'"),
        (["--mid-reso", "nan"], "--mid-reso"),
        (["--picture", "p.xyz"], "--picture 'p.xyz': '.xyz' is not an image type"),
    ],
)
def test_eval_tokenizer_bad_values(args, needle, digits, tmp_path, capsys, monkeypatch):
    _bad(["eval-tokenizer", "default", "--data", digits, "--no-rfid"] + args, tmp_path, capsys, monkeypatch, needle)


@pytest.mark.parametrize(
    "args,needle",
    [
        (
            ["--per-class", "1000000000"],
            "--per-class must be <= 1,000,000",
        ),  # was a MemoryError (the whole .npz up front)
        (["--per-class", "200000"], "2,000,000 images, more than 1,000,000"),
        (["--seed", "-1"], "--seed must be in [0, 2**63)"),
        (["--device", "tpu"], "--device 'tpu'"),
        (["--batch", "0"], "--batch"),
        (["--cfg", "nan"], "--cfg must be a finite number"),
    ],
)
def test_sample_fid_bad_values(args, needle, tmp_path, capsys, monkeypatch):
    _bad(
        ["sample-fid", "--model", "default", "--out", "fid", "--no-progress"] + args,
        tmp_path,
        capsys,
        monkeypatch,
        needle,
    )


def test_fid_bad_device(digits, tmp_path, capsys, monkeypatch):
    _bad(
        ["fid", "--samples", digits, "--ref", digits, "--device", "tpu"],
        tmp_path,
        capsys,
        monkeypatch,
        "--device 'tpu'",
    )


MORE_SAMPLE_CASES = [
    (["--num", "0"], "--num must be >= 1"),
    (["--num", "60000", "--class", "1", "2"], "must be <= 100,000"),
    (["--batch-size", "0"], "--batch-size"),
    (["--cfg", "nan"], "--cfg must be a finite number"),
    (["--top-p", "2"], "--top-p"),
    (["--top-k", "-1"], "--top-k"),
    (["--seed", str(2**63)], "--seed must be in [0, 2**63)"),
]


@pytest.mark.parametrize("args,needle", MORE_SAMPLE_CASES, ids=[" ".join(a) for a, _ in MORE_SAMPLE_CASES])
def test_sample_more_bad_values(args, needle, tmp_path, capsys, monkeypatch):
    _bad(["sample", "--device", "cpu"] + args, tmp_path, capsys, monkeypatch, needle)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--seed", "-1"], "--seed"),
        (["--num", "1000000000"], "--num"),
        (["--num", "0"], "--num"),
        (["--class", "99"], "99"),
        (["--out", "o.docx"], "'.docx' is not an image type"),
        (["--mask", "nomask.png"], "--mask 'nomask.png' does not exist"),
    ],
)
def test_edit_bad_values(args, needle, img, tmp_path, capsys, monkeypatch):
    _bad(
        ["edit", "--image", img, "--keep-scales", "1", "--device", "cpu"] + args, tmp_path, capsys, monkeypatch, needle
    )


def test_out_under_a_file_is_refused_before_sampling(files, tmp_path, capsys, monkeypatch):
    out = files / "afile" / "x.png"
    line = _bad(["sample", "--class", "1", "--out", str(out)], tmp_path, capsys, monkeypatch, str(out), "is a file")
    assert ".tmp" not in line and "it/s" not in capsys.readouterr().err  # refused before any sampling


@pytest.mark.parametrize("ext,fmt", [(".webp", "WEBP"), (".png", "PNG"), (".jpeg", "JPEG")])
def test_every_output_file_takes_the_extension(ext, fmt, tmp_path):
    from PIL import Image

    assert main(["sample", "--class", "1", "2", "--out", str(tmp_path / f"o{ext}"), "--strip", "--device", "cpu"]) == 0
    names = sorted(os.listdir(tmp_path))
    assert names == sorted(f"o{s}{ext}" for s in ("", "_000_class1", "_001_class2", "_strip")), names
    assert {Image.open(tmp_path / n).format for n in names} == {fmt}


def test_stale_temps_of_singles_go_other_files_stay(tmp_path):
    dead = _dead_pid()
    stale = [tmp_path / f".x.png.{dead}.a.tmp", tmp_path / f".x_000_class1.png.{dead}.b.tmp"]
    other = tmp_path / f".notes.txt.{dead}.c.tmp"  # not an output of this run: untouched
    for f in stale + [other]:
        f.write_bytes(b"half")
    assert main(["sample", "--class", "1", "--out", str(tmp_path / "x.png"), "--device", "cpu"]) == 0
    assert not any(f.exists() for f in stale) and other.exists()


def test_real_kill9_during_sample_then_rerun_leaves_only_the_outputs(tmp_path):
    code = (
        "import os, signal, PIL.Image\n"
        "orig = PIL.Image.Image.save\n"
        "def save(self, fp, *a, **k):\n"
        "    orig(self, fp, *a, **k); os.kill(os.getpid(), signal.SIGKILL)\n"  # killed inside the atomic write
        "PIL.Image.Image.save = save\n"
        "from nextscale.app.cli import main\n"
        "main(['sample', '--class', '1', '--out', 'x.png', '--device', 'cpu'])\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True)
    assert r.returncode == -9 and any(n.endswith(".tmp") for n in os.listdir(tmp_path)), os.listdir(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "nextscale", "sample", "--class", "1", "--out", "x.png", "--device", "cpu"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["x.png", "x_000_class1.png"]


@pytest.mark.parametrize("labels", [1.5, True, [["7"]], torch.tensor([1.0]), torch.tensor(True), np.array([1.5])])
def test_more_non_integer_class_labels(pipe, labels):
    with pytest.raises(NextScaleError, match="class_labels must be an integer"):
        pipe(class_labels=labels, seed=0)


@pytest.mark.parametrize(
    "labels", [np.int32(3), [np.int64(3)], torch.tensor(3), [torch.tensor(3)], "3", ["3"]]
)  # "3": the class name
def test_more_integer_like_class_labels(pipe, labels):
    assert pipe(class_labels=labels, seed=0, output_type="np").labels == [3]


@pytest.mark.parametrize("seed", [True, "3", 1.0, torch.tensor(1.0)])
def test_more_non_integer_seeds(pipe, seed):
    with pytest.raises(NextScaleError, match="seed must be an integer"):
        pipe(class_labels=[1], seed=seed)


def test_num_images_must_be_an_integer(pipe):
    with pytest.raises(NextScaleError, match="num_images must be an integer"):
        pipe(num_images=1.5)


def test_editing_pipeline_has_the_same_rules(pipe):
    from nextscale.editing import NextScaleInpaintPipeline

    ed = NextScaleInpaintPipeline.from_pipe(pipe)
    x = torch.rand(3, 32, 32)
    for bad in ([1.5], [True], 2.5):
        with pytest.raises(NextScaleError, match="class_labels must be an integer"):
            ed(x, class_labels=bad, keep_scales=1, seed=0)
    with pytest.raises(NextScaleError, match="class_labels: no class named 'seven'"):
        ed(x, class_labels=["seven"], keep_scales=1, seed=0)
    with pytest.raises(NextScaleError, match="class 10 is out of range"):
        ed(x, class_labels=10, keep_scales=1, seed=0)
    with pytest.raises(NextScaleError, match=r"seed must be in \[0, 2\*\*63\)"):
        ed(x, keep_scales=1, seed=-1)
    with pytest.raises(NextScaleError, match="either seed or generator"):
        ed(x, keep_scales=1, seed=0, generator=torch.Generator())
    assert ed(x, class_labels=np.int64(3), keep_scales=1, seed=0).labels == [3]


def test_demo_uses_the_same_rules(pipe):
    from nextscale.app.demo import DemoBackend, DemoLimits

    b = DemoBackend(pipe, limits=DemoLimits(max_seed=2**64))  # even a looser widget limit cannot pass a bad seed
    with pytest.raises(NextScaleError, match=r"seed must be in \[0, 2\*\*63\)"):
        b.check_request(2**63, False, 1)
    with pytest.raises(NextScaleError, match="class"):
        b.parse_class(True)


@pytest.mark.parametrize("cmd", ["info", "sample"])
def test_refused_pickle_is_one_line(cmd, files, tmp_path, capsys, monkeypatch):
    argv = ["info", str(files / "objects.pth")] if cmd == "info" else ["sample", "--model", str(files / "objects.pth")]
    line = _bad(argv, tmp_path, capsys, monkeypatch, "refused", "fractions.Fraction")
    assert "beside it" not in line and "weights_only" not in line


def test_only_a_real_transformer_asks_for_its_tokenizer(files, tmp_path, capsys, monkeypatch):
    _bad(["info", str(files / "released" / "var_d1.pth")], tmp_path, capsys, monkeypatch, "needs its tokenizer", "vae_")


def test_config_errors_are_user_errors():
    from nextscale.configs import ConfigError, VQVAEConfig

    assert issubclass(ConfigError, NextScaleError) and issubclass(ConfigError, ValueError)
    with pytest.raises(NextScaleError, match="multiple of 32"):
        VQVAEConfig(ch=33)


def test_errors_in_a_subprocess_are_one_line_without_traceback(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for args, key in (
        (["sample", "--device", "tpu"], "tpu"),
        (["sample", "--out", "o.docx"], ".docx"),
        (["sample-fid", "--model", "default", "--out", "f", "--per-class", "1000000000"], "--per-class"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "nextscale"] + args, cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and key in r.stderr, r.stderr
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ docs drift
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def test_readme_lists_every_command():
    from nextscale.app.cli import _REGISTRY

    readme = _read("README.md")
    assert [n for n in _REGISTRY if f"`{n}`" not in readme] == []


def test_every_command_has_a_description():
    from nextscale.app.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert [n for n, p in sub.choices.items() if not p.description] == []


def test_readme_says_guidance_scale_takes_the_per_scale_list():
    readme = _read("README.md")
    assert '`guidance_schedule="constant"` or a per-scale list' not in readme
    assert "`guidance_scale` may also be a list with one weight per scale" in readme


def test_demo_doc_and_slider_agree():
    import re

    from nextscale.app.demo import DemoLimits

    doc = _read("docs", "demo.md")
    assert float(re.search(r"guidance 0\.\.(\d+)", doc).group(1)) == DemoLimits().max_guidance
    assert "slider stops at 10" in doc


def test_quickest_training_run_is_written_down_and_runs(digits, tmp_path, monkeypatch):
    cmd = (
        "nextscale train --data digits --tokenizer default --preset mnist --steps 20 --batch-size 16 "
        "--run-dir runs/quick"
    )
    assert cmd in _read("README.md") and cmd in _read("docs", "training.md")
    monkeypatch.chdir(tmp_path)
    os.symlink(digits, "digits")
    argv = cmd.split()[1:]
    argv[argv.index("--steps") + 1] = "2"  # the documented command, shortened
    assert main(argv + ["--no-progress"]) == 0
    assert os.listdir("runs/quick/checkpoints")
