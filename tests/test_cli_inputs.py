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

from nextscale.cli import main
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
    err = [ln for ln in capsys.readouterr().err.strip().splitlines()  # progress bars are not messages
           if ln.strip() and not ("it/s]" in ln or "s/it]" in ln)]
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
    (["--seed", str(2 ** 70)], ["--seed must be in [0, 2**63)"]),
    (["--num", "1000000000"], ["--num must be <= 100,000"]),
    (["--device", "tpu"], ["--device 'tpu' is not a device"]),
    (["--class", "99"], ["99", "0..9"]),
    (["--out", "nodir/o.png"], ["does not exist"]),
]


@pytest.mark.parametrize("args,needles", SAMPLE_CASES, ids=[" ".join(a) for a, _ in SAMPLE_CASES])
def test_sample_bad_values(args, needles, tmp_path, capsys, monkeypatch):
    _bad(["sample", "--device", "cpu"] + args if "--device" not in args else ["sample"] + args, tmp_path, capsys,
         monkeypatch, *needles)


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
    base = ["train", "--data", digits, "--tokenizer", "default", "--preset", "mnist", "--steps", "1", "--run-dir", "run",
            "--no-progress"]
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
    line = _bad(["info", str(tmp_path / "var_d6.pth")], tmp_path, capsys, monkeypatch, "nextscale convert", "--patch-nums")
    assert "info" not in line.split("error:", 1)[1] or "convert" in line


def test_edit_missing_image_is_no_such_file(tmp_path, capsys, monkeypatch):
    _bad(["edit", "--image", "nope.png", "--keep-scales", "2"], tmp_path, capsys, monkeypatch, "--image 'nope.png': no such file")
    _bad(["edit", "--image", "nope.png"], tmp_path, capsys, monkeypatch, "no such file")


def test_eval_tokenizer_accepts_default(digits, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["eval-tokenizer", "default", "--data", digits, "--no-rfid", "--picture", "p.png", "--max-images", "4"]) == 0
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
    leftover = tmp_path / f"cache.partial-{dead.pid}"
    (leftover / "train").mkdir(parents=True)
    assert main(["tokenize", "--data", digits, "--tokenizer", "default", "--out", str(out)]) == 0
    assert not leftover.exists() and (out / "meta.json").is_file()


def test_sample_writes_the_format_its_extension_names(tmp_path):
    from PIL import Image
    assert main(["sample", "--class", "1", "--out", str(tmp_path / "g.jpg"), "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "g.jpg").format == "JPEG"
    assert Image.open(tmp_path / "g_000_class1.jpg").format == "JPEG"


# ------------------------------------------------------------------ the Python API
@pytest.mark.parametrize("kw,msg", [
    (dict(seed=2 ** 70), r"seed must be in \[0, 2\*\*63\)"),
    (dict(seed=-1), r"seed must be in \[0, 2\*\*63\)"),
    (dict(seed=1.5), "seed must be an integer, got 1.5"),
    (dict(class_labels=[1.5]), "class_labels must be an integer, got 1.5"),
    (dict(class_labels=[True]), "class_labels must be an integer, got True"),
    (dict(class_labels=["7"]), "class_labels must be an integer, got '7'"),
    (dict(class_labels=[]), "class_labels is empty"),
    (dict(class_labels=[10]), "class 10 is out of range"),
    (dict(seed=1, generator=torch.Generator()), "either seed or generator, not both"),
    (dict(num_images=10 ** 9), "num_images must be <= 100,000"),
    (dict(num_images=0), "num_images must be >= 1"),
])
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
    _bad(["sample", "--model", str(tmp_path / "nanmodel"), "--class", "1", "--device", "cpu"], tmp_path, capsys,
         monkeypatch, "NaN/inf", "weights are not finite")
