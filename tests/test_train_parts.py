"""The pieces the training commands are built from: the one tokenizer loader / saver in ``nextscale.hub``
(atomic, every source kind round-trips) and the loop's collaborators (checkpoints, precision, EMA,
signals)."""
import os
import stat

import pytest
import torch

from nextscale import hub
from nextscale.configs import get_preset
from nextscale.errors import NextScaleError
from nextscale.models import VQVAE

pytestmark = pytest.mark.usefixtures("one_thread")


def _small_cfg():
    return get_preset("mnist").vqvae.replace(ch=32, num_res_blocks=1, vocab_size=32, v_patch_nums=(1, 2, 4))


def _vae(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = VQVAE.from_config(_small_cfg(), test_mode=True)
    vae.quantize.ema_vocab_hit_SV.uniform_()  # a buffer with content: it must round-trip too
    return vae


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k].float(), sb[k].float()), k


def _tokenizer_run(run, vae, ema_vae=None, step=3):
    """A train-tokenizer run folder with one checkpoint in the loop's format (no training needed)."""
    from nextscale.train.checkpoint import CheckpointManager
    st = {"format": "nextscale-train", "step": step, "modules": {"vae": vae.state_dict()},
          "config": {"kind": "tokenizer", "model": {"vqvae": vae.config.to_dict()}}}
    if ema_vae is not None:
        st["ema"] = {"vae": ema_vae.state_dict()}
    return CheckpointManager(os.path.join(run, "checkpoints")).save(step, st)


# ------------------------------------------------------------------ hub.save_tokenizer / hub.load_tokenizer
def test_load_tokenizer_round_trips_every_source_kind(tmp_path, tiny_pipe_dir):
    from safetensors.torch import save_file
    vae, ema = _vae(0), _vae(1)
    tok = hub.save_tokenizer(vae, tmp_path / "tok")
    assert hub.is_tokenizer_dir(tok) and sorted(os.listdir(tok)) == ["model_index.json", "vqvae"]
    _same(hub.load_tokenizer(tok), vae)                               # tokenizer directory
    _same(hub.load_tokenizer(str(tok)), vae)
    _same(hub.load_tokenizer(tok / "vqvae" / "model.safetensors", v_patch_nums=(1, 2, 4)), vae)  # .safetensors
    torch.save(vae.state_dict(), tmp_path / "vae_small.pth")
    _same(hub.load_tokenizer(tmp_path / "vae_small.pth", v_patch_nums=(1, 2, 4)), vae)          # .pth
    torch.save({"model": vae.state_dict()}, tmp_path / "plain.pt")
    _same(hub.load_tokenizer(tmp_path / "plain.pt", v_patch_nums=(1, 2, 4)), vae)               # a .pt state dict
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp_path / "x.safetensors"))
    from types import SimpleNamespace
    preset = SimpleNamespace(vqvae=_small_cfg())  # only its tokenizer part is read
    _same(hub.load_tokenizer(tmp_path / "x.safetensors", preset=preset), vae)  # the schedule from the preset
    run = tmp_path / "run"
    step_file = _tokenizer_run(str(run), vae, ema)
    _same(hub.load_tokenizer(run), ema)                               # run folder: latest checkpoint, EMA weights
    _same(hub.load_tokenizer(step_file), ema)                         # its step_*.pt
    vae_raw, use = hub.tokenizer_from_checkpoint(step_file, weights="raw")
    assert use == "raw"
    _same(vae_raw, vae)
    only = tmp_path / "only_export"                                   # run folder holding only its export
    hub.save_tokenizer(vae, only / "tokenizer")
    _same(hub.load_tokenizer(only), vae)
    pipe = hub.load_components(tiny_pipe_dir)[0]                      # pipeline directory
    _same(hub.load_tokenizer(tiny_pipe_dir), pipe)
    _same(hub.load_tokenizer("default"), hub.load_components(hub.resolve_model_path("default"))[0])  # the bundled model's
    tiny = get_preset("tiny")
    from nextscale.models import build_from_config
    _same(hub.load_tokenizer("random", preset=tiny, seed=3), build_from_config(tiny, seed=3, init_var=False)[0])
    for got in (hub.load_tokenizer(tok), hub.load_tokenizer(run)):
        assert not got.training


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(NextScaleError, match="not found"):
        hub.load_tokenizer(tmp_path / "missing")
    with pytest.raises(NextScaleError, match="holds no tokenizer"):
        hub.load_tokenizer(tmp_path)
    with pytest.raises(NextScaleError, match="needs --preset"):
        hub.load_tokenizer("random")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(NextScaleError, match="no readable checkpoint"):
        hub.load_tokenizer(tmp_path / "run")
    from nextscale.train.checkpoint import atomic_save
    var_ckpt = str(tmp_path / "step_00000001.pt")
    atomic_save({"format": "nextscale-train", "step": 1, "modules": {"var": {}}, "config": {"model": {}}}, var_ckpt)
    with pytest.raises(NextScaleError, match="not a tokenizer training checkpoint"):
        hub.load_tokenizer(var_ckpt)


def test_save_tokenizer_is_atomic(tmp_path, monkeypatch):
    import nextscale.safeload as safeload
    vae = _vae(0)
    out = tmp_path / "tok"
    real = safeload.save_safetensors

    def half_then_fail(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")
    monkeypatch.setattr(safeload, "save_safetensors", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        hub.save_tokenizer(vae, out)
    assert os.listdir(tmp_path) == []                                 # no partial folder, no temp left behind
    monkeypatch.setattr(safeload, "save_safetensors", real)
    hub.save_tokenizer(vae, out)
    monkeypatch.setattr(safeload, "save_safetensors", half_then_fail)
    with pytest.raises(OSError):
        hub.save_tokenizer(_vae(1), out)                              # a failed overwrite keeps the old one
    monkeypatch.setattr(safeload, "save_safetensors", real)
    assert os.listdir(tmp_path) == ["tok"]
    _same(hub.load_tokenizer(out), vae)


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_save_tokenizer_follows_the_umask(mask, tmp_path):
    old = os.umask(mask)
    try:
        out = hub.save_tokenizer(_vae(0), tmp_path / "tok")
    finally:
        os.umask(old)
    for d in (out, out / "vqvae"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o777 & ~mask
    for f in (out / "model_index.json", out / "vqvae" / "config.json", out / "vqvae" / "model.safetensors"):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o666 & ~mask


def test_library_never_imports_train_and_hub_has_no_cycle():
    import subprocess
    import sys
    code = ("import sys, nextscale.hub as h; assert h.load_tokenizer and h.save_tokenizer; "
            "import nextscale.pipelines, nextscale.evaluation.tokenizer; "
            "bad = [m for m in sys.modules if m.startswith('nextscale.train')]; assert not bad, bad; "
            "import nextscale, nextscale._version as v; assert nextscale.__version__ == v.__version__")
    subprocess.run([sys.executable, "-c", code], check=True)
