"""The CLI on a text-to-image model (a tiny random pipeline directory with its tiny T5 saved beside it): sample
--prompt, edit --prompt, info, eval-t2i; bad prompts / sizes / ratios give one line, exit 2 and write nothing."""

import json

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
from nextscale.app.cli import main  # noqa: E402
from nextscale.pipeline_t2i import NextScaleT2IPipeline  # noqa: E402
from test_pipeline_t2i import (  # noqa: E402,F401  (fixtures)
    _tiny_pair,  # noqa: E402
    encoder,
    t5_dir,
)


@pytest.fixture(scope="module")
def t2i_dir(tmp_path_factory, encoder):  # noqa: F811
    vae, model = _tiny_pair(0, patchify=False)
    d = tmp_path_factory.mktemp("t2i") / "tiny-t2i"
    NextScaleT2IPipeline(vae, model, encoder, default_pn="0.06M").save_pretrained(d)
    return str(d)


def _files(d):
    return sorted(p.name for p in d.iterdir())


def _fails(capsys, argv, match, cwd):
    before = _files(cwd)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert _files(cwd) == before  # nothing written
    return err


def test_sample_prompt_names_the_file(t2i_dir, tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    argv = ["sample", "--model", t2i_dir, "--prompt", "A red fox, in snow!", "--aspect", "2:1", "--seed", "1"]
    assert main(argv) == 0
    im = Image.open(tmp_path / "a-red-fox-in-snow.png")
    assert im.size[0] > im.size[1]  # width:height 2:1 -> a wide image
    first = np.asarray(im)
    assert main(argv) == 0  # same seed, same image
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a-red-fox-in-snow.png")), first)
    capsys.readouterr()
    argv = ["sample", "--model", t2i_dir, "--prompt", "a cat", "a dog", "--num", "2", "--out", "pets.png", "--strip"]
    assert main(argv) == 0
    names = _files(tmp_path)
    assert "pets.png" in names and "pets_000_a-cat.png" in names and "pets_003_a-dog.png" in names
    assert "pets_strip.png" in names
    assert main(["sample", "--model", t2i_dir, "--prompt", "a cat", "--guidance-cutoff", "2", "--cfg", "4"]) == 0


def test_bad_inputs_are_one_line_and_write_nothing(t2i_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    m = ["sample", "--model", t2i_dir]
    _fails(
        capsys, m + ["--prompt", "a cat", "--class", "3"], "give either --class (a class model) or --prompt", tmp_path
    )
    _fails(capsys, m + ["--prompt", " "], "--prompt is empty; describe the image, or pass --allow-empty", tmp_path)
    _fails(capsys, m + ["--prompt", "a cat", "--aspect", "9:1"], "--aspect '9:1' (h/w 0.111) is outside", tmp_path)
    _fails(capsys, m + ["--prompt", "a cat", "--aspect", "wide"], "--aspect must look like", tmp_path)
    _fails(
        capsys, m + ["--prompt", "a cat", "--height", "33", "--width", "32"], "--height must be a positive", tmp_path
    )
    _fails(capsys, m + ["--prompt", "a cat", "--height", "32"], "give both --height and --width", tmp_path)
    _fails(capsys, m + ["--prompt", "a cat", "--pn", "2M"], "pn must be one of", tmp_path)
    _fails(capsys, m + ["--prompt", "a cat", "--prune-ratio", "0.5"], "--prune-ratio is not supported", tmp_path)
    _fails(capsys, m + ["--prompt", "a cat", "--cfg", "1", "2"], "--cfg has 2 values but the model samples 7", tmp_path)
    _fails(capsys, m + ["--prompt", "a cat " * 80], "--prompt is", tmp_path)  # longer than the encoder reads
    import nextscale.hub as hub  # no --model: the bundled default-t2i; when it is not installed, one line

    monkeypatch.setitem(hub.BUNDLED_MODELS, "default-t2i", (tmp_path / "absent", " DIR (a text-to-image pipeline)"))
    _fails(capsys, ["sample", "--prompt", "a cat"], "the bundled default-t2i model is not installed; pass --model",
           tmp_path)  # fmt: skip
    _fails(capsys, m, "--prompt is required: this is a text-to-image model", tmp_path)
    assert main(m + ["--prompt", "", "--allow-empty", "--out", "u.png"]) == 0


def test_info_on_a_t2i_directory(t2i_dir, capsys):
    assert main(["info", t2i_dir]) == 0
    out = capsys.readouterr().out
    assert "Infinity: depth 2, width 64" in out and "bits per token" in out and "0.06M: 7 scales" in out
    assert "recommended sampling: cfg 3.0, temperature 0.5" in out
    assert main(["info", t2i_dir, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["infinity"]["depth"] == 2 and d["bits_per_token"] == 6 and d["weights_bytes"]["total"] > 0


def test_info_refuses_a_nan_t2i_model(t2i_dir, tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "nan"
    shutil.copytree(t2i_dir, bad)
    f = bad / "infinity" / "model.safetensors"
    sd = load_file(str(f))
    k = next(k for k, v in sd.items() if v.is_floating_point())
    sd[k] = torch.full_like(sd[k], float("nan"))
    save_file(sd, str(f))
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN" in err[0] and "transformer" in err[0], err


def test_edit_with_a_prompt(t2i_dir, tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save("in.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save("mask.png")
    argv = ["edit", "--model", t2i_dir, "--image", "in.png", "--mask", "mask.png", "--prompt", "a red cat"]
    assert main(argv + ["--out", "e.png"]) == 0
    assert Image.open("e.png").size == (32, 32)
    _fails(capsys, argv + ["--keep-scales", "2"], "--keep-scales is for class models", tmp_path)
    _fails(capsys, argv[:-2] + ["--prompt", "a", "--class", "3"], "give either --class", tmp_path)


def test_eval_t2i(t2i_dir, tmp_path, capsys):
    out = tmp_path / "ev.json"
    argv = ["eval-t2i", t2i_dir, "--prompts-per-category", "1", "--no-fid", "--batch-size", "16", "--out", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "| category |" in table and "overall" in table
    d = json.loads(out.read_text())
    assert d["format"] == "nextscale-t2i-eval-v1" and d["settings"]["sampling"]["guidance_scale"] == 3.0
    assert main(argv[:-1] + [str(tmp_path / "ev.txt")]) == 2
