"""Pipeline API, loading/saving, and the core CLI commands."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from nextscale import NextScaleError, NextScalePipeline
from nextscale.app.cli import main
from nextscale.errors import CheckpointError
from nextscale.hub import load_components


def test_save_load_gives_identical_images(tiny_pipe_dir, tmp_path):
    a = NextScalePipeline.from_pretrained(tiny_pipe_dir)
    out_a = a(class_labels=[1, 7], seed=3, output_type="np", return_indices=True)
    a.save_pretrained(tmp_path / "copy")
    b = NextScalePipeline.from_pretrained(tmp_path / "copy")
    out_b = b(class_labels=[1, 7], seed=3, output_type="np", return_indices=True)
    assert np.array_equal(out_a.images, out_b.images)
    for x, y in zip(out_a.indices, out_b.indices):
        assert torch.equal(x, y)
    assert out_a.images.shape == (2, 64, 64, 3) and 0 <= out_a.images.min() and out_a.images.max() <= 1
    files = sorted(str(p.relative_to(tmp_path / "copy")) for p in (tmp_path / "copy").rglob("*") if p.is_file())
    assert files == [
        "model_index.json",
        "var/config.json",
        "var/model.safetensors",
        "vqvae/config.json",
        "vqvae/model.safetensors",
    ]


def test_same_seed_same_image_other_seed_other_image(tiny_pipe_dir):
    p = NextScalePipeline.from_pretrained(tiny_pipe_dir)
    a = p(class_labels=[2, 2], seed=0, output_type="pt")
    b = p(class_labels=[2, 2], generator=torch.Generator().manual_seed(0), output_type="pt")
    c = p(class_labels=[2, 2], seed=1, output_type="pt")
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    pil = p(class_labels=3, num_images=3, seed=0, output_type="pil")
    assert len(pil.images) == 3 and pil.images[0].size == (64, 64) and pil.labels == [3, 3, 3]
    unc = p(class_labels=[-1], seed=0, output_type="np")
    assert unc.labels == [p.num_classes]


def test_callback_on_scale_streams_partial_images(tiny_pipe_dir):
    p = NextScalePipeline.from_pretrained(tiny_pipe_dir)
    steps = []
    out = p(class_labels=[4], seed=0, output_type="np", callback_on_scale=steps.append, return_indices=True)
    assert [s.patch_num for s in steps] == list(p.patch_nums)
    assert all(s.images.shape == (1, 64, 64, 3) for s in steps)
    np.testing.assert_allclose(steps[-1].images, out.images, atol=1e-6)
    assert not np.allclose(steps[0].images, steps[-1].images)
    per_scale = p.decode_scales(out.indices)
    np.testing.assert_allclose(per_scale[-1].permute(0, 2, 3, 1).numpy(), out.images, atol=1e-5)


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"guidance_scale": -1}, "guidance_scale"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -3}, "top_k"),
        ({"class_labels": [10]}, "out of range"),
        ({"class_labels": []}, "empty"),
        ({"output_type": "jpg"}, "output_type"),
    ],
)
def test_pipeline_rejects_bad_input(tiny_pipe_dir, kw, msg):
    p = NextScalePipeline.from_pretrained(tiny_pipe_dir)
    kw = {"class_labels": [1], **kw}
    with pytest.raises(NextScaleError, match=msg):
        p(**kw)


def _write_release(tmp_path, pipe):
    """Write the models as released-style bare .pth state dicts."""
    torch.save(pipe.vqvae.state_dict(), tmp_path / "vae_tiny.pth")
    torch.save(pipe.var.state_dict(), tmp_path / "var_d2.pth")
    return tmp_path / "vae_tiny.pth", tmp_path / "var_d2.pth"


def test_release_pth_loading_and_convert(tiny_pipe_dir, tmp_path, capsys):
    pipe = NextScalePipeline.from_pretrained(tiny_pipe_dir)
    vae_p, var_p = _write_release(tmp_path, pipe)
    from nextscale.hub import infer_var_config, infer_vqvae_config, load_state_dict_file

    sdv = load_state_dict_file(vae_p)
    assert infer_vqvae_config(sdv, v_patch_nums=(1, 2, 3, 4)) == pipe.vqvae.config
    sdt = load_state_dict_file(var_p)
    assert infer_var_config(sdt, patch_nums=(1, 2, 3, 4)).replace(drop_path_rate=0.0) == pipe.var.config
    assert (
        main(["convert", "--vae", str(vae_p), "--var", str(var_p), "--out", str(tmp_path / "conv")]) == 2
    )  # unknown 30-token schedule
    assert "match no released scale schedule" in capsys.readouterr().err
    assert (
        main(
            [
                "convert",
                "--vae",
                str(vae_p),
                "--var",
                str(var_p),
                "--out",
                str(tmp_path / "conv"),
                "--patch-nums",
                "1",
                "2",
                "3",
                "4",
            ]
        )
        == 0
    )
    a = pipe(class_labels=[5], seed=1, output_type="np").images
    b = NextScalePipeline.from_pretrained(tmp_path / "conv")(class_labels=[5], seed=1, output_type="np").images
    assert np.array_equal(a, b)
    # swapped files: a clear message, not a KeyError
    assert main(["convert", "--vae", str(var_p), "--var", str(vae_p), "--out", str(tmp_path / "c2")]) == 2
    assert "swap" in capsys.readouterr().err and not (tmp_path / "c2").exists()


def test_bad_checkpoints_give_clear_errors(tmp_path, tiny_pipe_dir):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pth: not a checkpoint \\(a text file\\)"):
        load_components(junk, vae_path=junk)
    evil = tmp_path / "evil.pth"

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Boom()}, evil)
    with pytest.raises(CheckpointError, match="refused.*it would import posix.system.*never runs code"):
        load_components(evil, vae_path=evil)
    pipe = NextScalePipeline.from_pretrained(tiny_pipe_dir)
    sd = pipe.var.state_dict()
    sd.pop("head.bias")
    sd["extra.weight"] = torch.zeros(1)
    from nextscale.hub import check_state_dict

    with pytest.raises(CheckpointError, match="1 missing keys \\(e.g. head.bias\\).*1 unexpected keys"):
        check_state_dict(pipe.var, sd, "x.pth", "VAR")
    sd = pipe.var.state_dict()
    sd["head.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match="shape mismatch.*head.weight is \\(3, 3\\)"):
        check_state_dict(pipe.var, sd, "x.pth", "VAR")
    with pytest.raises(CheckpointError, match="swap"):
        from nextscale.hub import infer_var_config

        infer_var_config(pipe.vqvae.state_dict())


def test_hub_id_offline_cache(tmp_path, tiny_pipe_dir, monkeypatch):
    pytest.importorskip("huggingface_hub")
    # A hub cache laid out as huggingface_hub writes it; HF_HUB_OFFLINE forbids any network access.
    snap = tmp_path / "hub" / "models--someone--tiny-var" / "snapshots" / ("a" * 40)
    import shutil

    shutil.copytree(tiny_pipe_dir, snap)
    (tmp_path / "hub" / "models--someone--tiny-var" / "refs").mkdir(parents=True)
    (tmp_path / "hub" / "models--someone--tiny-var" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    p = NextScalePipeline.from_pretrained("someone/tiny-var", cache_dir=str(tmp_path / "hub"))
    assert p.num_classes == 10
    with pytest.raises(NextScaleError, match="HF_HUB_OFFLINE"):
        NextScalePipeline.from_pretrained("someone/absent", cache_dir=str(tmp_path / "hub"))


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "nextscale", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_cli_sample_writes_grid_singles_strip(tiny_pipe_dir, tmp_path):
    r = _cli(
        "sample",
        "--model",
        str(tiny_pipe_dir),
        "--class",
        "1",
        "3",
        "--seed",
        "0",
        "--out",
        str(tmp_path / "g.png"),
        "--strip",
        "--device",
        "cpu",
    )  # the in-process reference below runs on the CPU (the CLI would pick a GPU)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["g.png", "g_000_class1.png", "g_001_class3.png", "g_strip.png"]
    from PIL import Image

    one = np.asarray(Image.open(tmp_path / "g_000_class1.png"))
    ref = NextScalePipeline.from_pretrained(tiny_pipe_dir)(class_labels=[1, 3], seed=0, output_type="pil").images[0]
    # same tokens; a thread count other than the subprocess's may move a pixel by one level of 255
    assert np.abs(one.astype(int) - np.asarray(ref).astype(int)).max() <= 1


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--class", "12"], "unknown class id 12"),
        (["--cfg", "-1"], "--cfg must be >= 0"),
        (["--top-p", "1.5"], "--top-p must be in [0, 1]"),
        (["--model", "/nonexistent/model"], "does not exist"),
        (["--out", "/nonexistent-dir/x.png"], "does not exist"),
    ],
)
def test_cli_bad_input_one_line_no_traceback_no_file(tiny_pipe_dir, tmp_path, args, msg, capsys):
    base = ["sample", "--model", str(tiny_pipe_dir), "--out", str(tmp_path / "o.png")]
    assert main([*base, *args]) == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert err[-1].startswith("nextscale: error:") and msg in err[-1], err
    assert not list(tmp_path.iterdir())


def test_cli_error_in_a_real_process_has_no_traceback(tmp_path):
    r = _cli("sample", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o.png"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("nextscale: error:")


def test_cli_info_json(tiny_pipe_dir):
    r = _cli("info", str(tiny_pipe_dir), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["num_classes"] == 10 and info["patch_nums"] == [1, 2, 3, 4] and info["tokens"] == 30
