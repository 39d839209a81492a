"""Reliability round 3: every command validates its whole configuration before any work, folder or
download; a request that cannot fit in memory is refused up front; one true reason per refusal.

The cases are classes of input, generated from the commands' own config fields where they can be:
every field with a ``path`` rule of every command gets every bad path of its kind (missing, a folder
for a file, a file for a folder, a FIFO, a device, an unwritable place) and must answer with one line
``nextscale: error: FLAG 'PATH' <the true reason>``, exit 2, no file left, within seconds.
"""

import dataclasses
import functools
import os
import time

import pytest
import torch

from nextscale.app import cli
from nextscale.errors import InputError, NextScaleError
from test_cli_inputs import _bad

#: every refusal comes this fast (the issue: none later than 5 s after the start)
FAST_S = 5.0

#: the CLI's parser, built once for this module (building it takes longer than a refusal)
_parser = functools.lru_cache(maxsize=1)(cli.build_parser)


@pytest.fixture(autouse=True)
def _one_parser(monkeypatch):
    monkeypatch.setattr(cli, "build_parser", _parser)


@functools.lru_cache(maxsize=1)
def _commands():
    """(argv prefix, config class, {field: flag}) of every command and sub-command of the CLI."""
    p = _parser()
    out = []

    def walk(parser, prefix):
        for a in parser._actions:
            if a.__class__.__name__ == "_SubParsersAction":
                for name, sp in a.choices.items():
                    walk(sp, prefix + [name])
        cfg = parser.get_default("_config")
        if cfg is not None and len(prefix) >= 1:
            out.append((prefix, cli._config_class(cfg), dict(parser.get_default("_flags") or {})))

    walk(p, [])
    return out


def _path_fields(cls):
    fields = cls.flat_fields() if hasattr(cls, "flat_fields") else [(cls, f) for f in dataclasses.fields(cls)]
    return [f for _, f in fields if f.metadata.get("path")]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, digits32):
    """Good and bad paths of every kind, outside the working folder."""
    from PIL import Image

    d = tmp_path_factory.mktemp("inputs")
    Image.new("RGB", (32, 32), (120, 30, 200)).save(d / "in.png")
    (d / "afile.txt").write_text("x")
    (d / "adir.png").mkdir()  # a folder named like an output file
    os.mkfifo(d / "fifo")
    return {"dir": digits32, "file": str(d / "in.png"), "root": d}


def _good(kind, inputs):
    return {
        "file": inputs["file"],
        "dir": inputs["dir"],
        "entry": inputs["dir"],
        "model": "default",
        "out_dir": "newdir",
        "out_file": "o.png",
    }[kind]


#: how many bad classes each kind of path has (the cases are generated before the paths exist)
N_BAD = {"file": 4, "dir": 3, "entry": 3, "model": 3, "out_dir": 3, "out_file": 2}


def _bad_values(kind, inputs):
    """(bad value, what the message must say) for a path of ``kind``."""
    r = inputs["root"]
    missing = (str(r / "nope" / "missing.png"), "does not exist")
    fifo = (str(r / "fifo"), "FIFO")
    if kind == "file":
        return [missing, (str(r), "is a folder, not a file"), fifo, ("/dev/zero", "character device")]
    if kind == "dir":
        return [missing, (str(r / "afile.txt"), "is a file, not a folder"), fifo]
    if kind in ("entry", "model"):
        return [missing, fifo, ("/dev/zero", "character device")]
    if kind == "out_dir":
        return [
            (str(r / "afile.txt"), "is an existing file, not a folder"),
            (str(r / "afile.txt" / "sub"), "is a file, not a folder"),
            ("/proc/nextscale-out", "not writable"),
        ]
    return [(str(r / "adir.png"), "is a folder"), ("/proc/nextscale-out.png", "not writable")]


def _cases():
    out = []
    for prefix, cls, flags in _commands():
        for f in _path_fields(cls):
            for i in range(N_BAD[f.metadata["path"]]):
                out.append(pytest.param(prefix, cls, f.name, i, id=f"{' '.join(prefix)} {flags.get(f.name)} #{i}"))
    return out


def _argv(prefix, cls, flags, target, bad, inputs):
    argv, pos = list(prefix), []
    for f in _path_fields(cls):
        md = f.metadata
        if f.name != target and not md.get("required"):
            continue
        v = bad if f.name == target else _good(md["path"], inputs)
        if md.get("positional"):
            pos.append(v)
        else:
            argv += [flags[f.name], v]
    return argv[: len(prefix)] + pos + argv[len(prefix) :]


@pytest.mark.parametrize("prefix,cls,name,i", _cases())
def test_every_path_of_every_command_gets_its_true_reason(prefix, cls, name, i, inputs, tmp_path, capsys, monkeypatch):
    """Missing / folder-for-file / file-for-folder / FIFO / device / unwritable: one line naming the flag,
    the user's path and the reason; exit 2; nothing left; in seconds (validated before any work)."""
    flags = dict(next(fl for p, c, fl in _commands() if p == prefix))
    kind = next(f for f in _path_fields(cls) if f.name == name).metadata["path"]
    values = _bad_values(kind, inputs)
    assert len(values) == N_BAD[kind]
    bad, reason = values[i]
    argv = _argv(prefix, cls, flags, name, bad, inputs)
    t0 = time.perf_counter()
    line = _bad(argv, tmp_path, capsys, monkeypatch, reason, repr(bad))
    assert time.perf_counter() - t0 < FAST_S, "refused too late"
    flag = flags[name]
    assert flag in line or flag == name.upper(), (flag, line)  # positional arguments are named by their path
    assert ".tmp" not in line and "partial-" not in line, line  # never an internal temp name


def test_the_generated_cases_cover_the_commands():
    names = {" ".join(p) for p, cls, _ in _commands() if _path_fields(cls)}
    for cmd in ("sample", "edit", "info", "convert", "fid", "sample-fid", "tokenize", "train", "train-tokenizer",
                "train-t2i", "export", "eval-tokenizer", "eval-t2i", "study scaling", "study ar-vs-var"):  # fmt: skip
        assert cmd in names, cmd


# ------------------------------------------------------------------ flags that only act with another one
@pytest.mark.parametrize(
    "argv,needles",
    [
        (["sample", "--prune-last", "3"], ["--prune-last only acts together with --prune-ratio"]),
        (["sample", "--refine-from-scale", "2"], ["--refine-from-scale only acts together with --refiner"]),
        (["sample-fid", "--model", "default", "--out", "f", "--scorer", "default"], ["--scorer", "--candidates"]),
        (["sample", "--class"], ["--class was given no value"]),
        (["sample", "--prune-last", "99", "--prune-ratio", "0.5"], ["--prune-last must be <= 4", "5 scales"]),
        (["sample-fid", "--model", "default", "--out", "f", "--prune-last", "9", "--prune-ratio", ".5"], ["<= 4"]),
        (["study", "ar-vs-var", "--out", "s", "--cfg", "-1"], ["--cfg must be >= 0"]),
        (
            ["study", "ar-vs-var", "--out", "s", "--prune-ratio", "0.5"],
            ["--prune-ratio is not supported by the raster"],
        ),
        (["study", "scaling", "--out", "s", "--threads", "-2"], ["--threads must be a positive integer"]),
        (["study", "scaling", "--out", "s", "--depths", "-1"], ["--depths must be integers >= 1"]),
        (["study", "scaling", "--out", "s", "--report-only"], ["no finished run to report"]),
        (["study", "scaling", "--out", "s", "--lr", "nan"], ["--lr must be a finite number"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0] in ("sample", "sample-fid", "study") else "",
)
def test_dependent_flags_and_model_ranges(argv, needles, tmp_path, capsys, monkeypatch):
    t0 = time.perf_counter()
    _bad([*argv, "--device", "cpu"] if argv[0] == "sample" else argv, tmp_path, capsys, monkeypatch, *needles)
    assert time.perf_counter() - t0 < FAST_S


def test_study_library_calls_name_the_argument_before_any_folder(tmp_path):
    from nextscale.app.study import ar_vs_var_study, scaling_study

    out = tmp_path / "study"
    with pytest.raises(NextScaleError, match=r"^depths must be integers >= 1"):  # not VARConfig.depth
        scaling_study(str(out), depths=(-1, 2))
    with pytest.raises(NextScaleError, match=r"^per_class must be a positive integer"):
        ar_vs_var_study(str(out), per_class=0)
    with pytest.raises(NextScaleError, match=r"^var_model '.*nope' does not exist"):
        ar_vs_var_study(str(out), var_model=str(tmp_path / "nope"))
    assert not out.exists()


def test_study_refuses_a_broken_classifier_before_training(tmp_path, capsys, monkeypatch):
    from safetensors.torch import save_file

    p = tmp_path / "clf.safetensors"
    save_file({"w": torch.full((4,), float("nan"))}, str(p))
    _bad(["study", "ar-vs-var", "--out", "s", "--classifier", str(p)], tmp_path, capsys, monkeypatch, "--classifier")
    q = tmp_path / "clf.pth"
    torch.save({"x": 1}, q)
    _bad(["study", "ar-vs-var", "--out", "s", "--classifier", str(q)], tmp_path, capsys, monkeypatch, "--classifier")


# ------------------------------------------------------------------ memory: refused up front with the estimate
def test_batch_larger_than_the_data_is_refused_at_once(digits32, tmp_path, capsys, monkeypatch):
    base = ["train", "--data", digits32, "--tokenizer", "default", "--preset", "mnist", "--steps", "1"]
    t0 = time.perf_counter()
    _bad(
        [*base, "--batch-size", "100000", "--run-dir", "r"],
        tmp_path,
        capsys,
        monkeypatch,
        "--batch-size",
        "would need about",
    )
    assert time.perf_counter() - t0 < FAST_S


def test_a_run_that_cannot_fit_in_memory_is_refused_with_the_estimate(digits32, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NEXTSCALE_MEMORY_LIMIT", "1M")
    base = ["train", "--data", digits32, "--tokenizer", "default", "--preset", "mnist", "--steps", "1"]
    line = _bad([*base, "--batch-size", "8", "--run-dir", "r"], tmp_path, capsys, monkeypatch, "needs about")
    assert "1.0 MiB" in line and "--batch-size" in line and "--grad-accum" in line


def test_the_image_cap_and_memory_apply_to_the_api(monkeypatch, pipe):
    labels = [1] * 10**7
    t0 = time.perf_counter()
    try:
        pipe(class_labels=labels)
    except NextScaleError as e:
        took, msg = time.perf_counter() - t0, str(e)
    assert took < 1.0 and "class_labels holds 10,000,000 labels" in msg and "100,000" in msg, msg
    from nextscale.editing import NextScaleInpaintPipeline

    edit = NextScaleInpaintPipeline(pipe.vqvae, pipe.var)
    with pytest.raises(NextScaleError, match=r"class_labels holds 200,000 labels"):
        edit(torch.zeros(3, 32, 32), class_labels=[1] * 200_000, keep_scales=2)
    monkeypatch.setenv("NEXTSCALE_MEMORY_LIMIT", "1M")
    with pytest.raises(NextScaleError, match=r"3 images of 32x32 in one call needs about .* 1\.0 MiB"):
        pipe(class_labels=[1, 2, 3])
    with pytest.raises(NextScaleError, match=r"1 image of 32x32 in one call needs about"):
        edit(torch.zeros(3, 32, 32), keep_scales=2)


def test_resources_reads_this_machine():
    from nextscale.resources import available_memory

    have = available_memory()
    assert have is None or have > 0


# ------------------------------------------------------------------ the API: one clear error up front
@pytest.fixture(scope="module")
def pipe():
    from nextscale.pipelines import NextScalePipeline

    return NextScalePipeline.from_pretrained("default")


def test_api_arguments_are_checked_before_the_loop(pipe):
    from nextscale.pipelines import NextScalePipeline

    with pytest.raises(InputError, match="callback_on_scale must be callable"):
        pipe(class_labels=[1], callback_on_scale="x")
    with pytest.raises(InputError, match=r"from_pretrained\(\) got an unknown keyword 'revison'.*'revision'"):
        NextScalePipeline.from_pretrained("default", revison="main")


@pytest.mark.parametrize(
    "scorer,msg",
    [
        (lambda im, lab: torch.zeros(len(im) + 1), "returned 2 scores for 1 images"),
        (lambda im, lab: torch.full((len(im),), float("nan")), "NaN/inf"),
        (lambda im, lab: "best", "one number per image"),
    ],
    ids=["wrong-count", "nan", "not-numbers"],
)
def test_a_bad_scorer_is_named(scorer, msg, pipe):
    with pytest.raises(InputError, match=msg):
        pipe(class_labels=[1], num_candidates=2, scorer=scorer, seed=0)


# ------------------------------------------------------------------ no NaN passes silently
@pytest.fixture(scope="module")
def nan_model(tmp_path_factory):
    from nextscale.pipelines import NextScalePipeline

    d = tmp_path_factory.mktemp("nan") / "model"
    pipe = NextScalePipeline.from_preset("tiny", seed=0)
    with torch.no_grad():
        for p in pipe.var.parameters():
            p.fill_(float("nan"))
    pipe.save_pretrained(d)
    return d


def test_convert_and_info_refuse_nan_weights(nan_model, tmp_path, capsys, monkeypatch):
    conv = ["convert", "--vae", str(nan_model / "vqvae" / "model.safetensors")]
    conv += ["--var", str(nan_model / "var" / "model.safetensors"), "--out", "o", "--patch-nums", "1", "2", "3", "4"]
    _bad(conv, tmp_path, capsys, monkeypatch, "NaN/inf")
    _bad(["info", str(nan_model)], tmp_path, capsys, monkeypatch, "NaN/inf")


def test_export_refuses_nan_weights(tmp_path, monkeypatch):
    from nextscale.safeload import check_finite

    with pytest.raises(NextScaleError, match=r"run \(raw weights\): w holds NaN/inf"):
        check_finite({"w": torch.tensor([1.0, float("inf")])}, "run (raw weights)")


def test_a_binary_labels_file_is_named(nan_model, tmp_path, capsys, monkeypatch):
    p = tmp_path / "labels.txt"
    p.write_bytes(bytes(range(128, 256)))
    conv = ["convert", "--vae", str(nan_model / "vqvae" / "model.safetensors"), "--out", "o", "--labels", str(p)]
    conv += ["--var", str(nan_model / "var" / "model.safetensors")]
    _bad(conv, tmp_path, capsys, monkeypatch, "--labels", "not a UTF-8 text file")


def test_temp_names_never_reach_the_user(tmp_path, monkeypatch):
    """A folder that cannot be created (read-only mount, /proc) is named as the user gave it."""
    import tempfile

    from nextscale.atomic import atomic_dir

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied", "/x/.out.123.abc.tmp")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(NextScaleError, match=r"out: cannot write here \(Permission denied\)") as e:
        with atomic_dir(tmp_path / "out"):
            pass
    assert ".tmp" not in str(e.value)


def test_text_to_image_cap_and_memory(tmp_path, monkeypatch):
    from nextscale.pipeline_t2i import NextScaleT2IPipeline
    from nextscale.text import T5TextEncoder
    from test_pipeline_t2i import _tiny_pair, _tiny_t5

    vae, model = _tiny_pair(0, patchify=False)
    enc = T5TextEncoder.from_pretrained(_tiny_t5(tmp_path / "t5"), device="cpu")
    t2i = NextScaleT2IPipeline(vae, model, enc, default_pn="0.06M")
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"200,000 prompts x num_images_per_prompt 1 exceed 100,000"):
        t2i(["a red fox"] * 200_000)
    assert time.perf_counter() - t0 < 1.0  # before any prompt is tokenised
    monkeypatch.setenv("NEXTSCALE_MEMORY_LIMIT", "1K")
    with pytest.raises(NextScaleError, match=r"^2 images of \d+x\d+ in one call needs about .* 1\.0 KiB"):
        t2i("a red fox", num_images_per_prompt=2, num_scales=4, output_type="pt")
