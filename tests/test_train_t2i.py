"""`nextscale train-t2i` / `train-tokenizer --bitwise` end to end on procedurally rendered scenes, tiny models."""

import json
import os

import numpy as np
import pytest
import torch

from nextscale.app.cli import main
from runs import final, kill9_after_first_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

QUIET = ["--no-progress", "--sample-every", "-1"]
TINY = ["--n-scales", "3", "--depth", "2", "--embed-dim", "64", "--num-heads", "2", "--text-maxlen", "16"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """24 scenes at two aspect ratios (16x16 and 8x... px buckets of a 4 px tokenizer) + a tiny BSQ tokenizer."""
    from nextscale.models.bsq import BSQVAE, BSQConfig
    from nextscale.scenes import SceneConfig, write_scene_dataset
    from nextscale.train.t2i_parts import save_bsq_dir

    root = tmp_path_factory.mktemp("t2i")
    cfg = SceneConfig(aspect_ratios=(1.0, 0.5))
    write_scene_dataset(root / "data", 24, np.random.default_rng(0), cfg, n_scales=3, patch_size=4)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = BSQVAE(BSQConfig(codebook_dim=8, base_ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, patch_size=4))
    save_bsq_dir(vae, root / "tok")
    return str(root / "data"), str(root / "tok")


def _metrics(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == "train"]


def test_kill9_then_rerun_is_bit_identical(scenes, tmp_path):
    """Acceptance: kill -9 mid-run, re-run the same command -> weights, optimizer, EMA, BSC generators and RNGs
    equal an uninterrupted run's (BSC, text dropout and stochastic depth all on)."""
    data, tok = scenes

    def cmd(run):
        return ["train-t2i", "--data", data, "--tokenizer", tok, "--run-dir", run, "--steps", "60", "--batch-size", "4",
                "--ckpt-every", "2", "--keep", "2", "--log-every", "10", "--noise-apply-layers", "2",
                "--text-dropout", "0.5", "--drop-path", "0.1", "--ema", "0.9",
                "--lr", "1e-3"] + TINY + QUIET  # fmt: skip

    ref = str(tmp_path / "ref")
    assert main(cmd(ref)) == 0
    run = str(tmp_path / "cut")
    returncode, killed_at = kill9_after_first_checkpoint(cmd(run), run, jitter_s=0.2)
    assert killed_at and returncode == -9 and killed_at[-1] < 60, (returncode, killed_at)
    assert main(cmd(run)) == 0  # the same command resumes
    (sa, a), (sb, b) = final(ref), final(run)
    assert sa == sb == 60
    for k, v in a["modules"]["infinity"].items():
        assert torch.equal(v, b["modules"]["infinity"][k]), k
    for i, st in a["optimizers"]["infinity"]["state"].items():
        for n, v in st.items():
            assert torch.equal(v, b["optimizers"]["infinity"]["state"][i][n])
    ea, eb = a["ema"], b["ema"]
    assert ea.keys() == eb.keys()
    ra, rb = a["objective"]["bsc_rng"][0], b["objective"]["bsc_rng"][0]
    assert torch.equal(ra["torch"], rb["torch"]) and torch.equal(ra["np_keys"], rb["np_keys"])
    assert ra["np_pos"] == rb["np_pos"]
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"]) and a["data"] == b["data"]
    # the pipeline exported at the end loads and draws an image
    from nextscale.pipeline_t2i import NextScaleT2IPipeline

    pipe = NextScaleT2IPipeline.from_pretrained(os.path.join(run, "pipeline"))
    img = pipe(prompt="a red circle", num_scales=3, seed=0, output_type="np").images
    assert img.shape == (1, 16, 16, 3) and np.isfinite(img).all()


def test_bsc_generators_replay_from_their_state(scenes, tmp_path):
    """The objective's BSC draws are a function of its stored generator states (state_dict -> load_state_dict)."""
    from nextscale.train.config import T2ITrainConfig
    from nextscale.train.infinity import T2IObjective

    data, tok = scenes
    tc = T2ITrainConfig(data=data, tokenizer=tok, run_dir=str(tmp_path / "r"), n_scales=3, depth=2, embed_dim=64,
                        num_heads=2, text_maxlen=16, noise_apply_layers=3, noise_apply_strength=0.5,
                        steps=1)  # fmt: skip
    ob = T2IObjective.build(tc, torch.device("cpu")).objective
    keys = [k for k in range(24) if ob.data.buckets[k] == ob.data.buckets[0]][:2]
    from nextscale.train.infinity import T2ITrainSet, collate

    ds = T2ITrainSet(ob.data, type("T", (), {"row": lambda self, i: torch.zeros(2, 128)})(), 0.0)
    batch = collate([ds[(k, 1)] for k in keys])
    b = ob.table[batch["bucket"]]
    state = ob.state_dict()
    x1, g1 = ob._inputs(batch, b, torch.device("cpu"))
    x2, g2 = ob._inputs(batch, b, torch.device("cpu"))
    ob.load_state_dict(state)
    x3, g3 = ob._inputs(batch, b, torch.device("cpu"))
    assert torch.equal(x1, x3) and torch.equal(g1, g3)  # replayed
    assert not torch.equal(g1, g2)  # and the stream advances: another draw, other flips


@pytest.mark.filterwarnings("ignore:skipped")
def test_loss_decreases_on_a_tiny_overfit_set(scenes, tmp_path):
    data, tok = scenes
    run = str(tmp_path / "of")
    args = ["train-t2i", "--data", data, "--tokenizer", tok, "--aspect-ratios", "1", "--run-dir", run,
            "--steps", "30", "--batch-size", "8", "--lr", "3e-3", "--text-dropout", "0", "--warmup-steps", "2",
            "--log-every", "5"]  # fmt: skip
    assert main(args + TINY + QUIET) == 0
    m = _metrics(run)
    assert m[-1]["loss"] < 0.8 * m[0]["loss"] and m[-1]["acc"] > m[0]["acc"] + 10, (m[0], m[-1])


def test_finetune_from_export_stays_finite_and_wrong_layout_is_one_line(scenes, tmp_path, capsys):
    from nextscale.models.bsq import BSQVAE, BSQConfig
    from nextscale.train.t2i_parts import save_bsq_dir

    data, tok = scenes
    base = str(tmp_path / "base")
    common = ["--data", data, "--steps", "3", "--batch-size", "4", "--log-every", "1"] + QUIET
    assert main(["train-t2i", "--tokenizer", tok, "--run-dir", base] + common + TINY) == 0
    model = os.path.join(base, "pipeline")
    ft = str(tmp_path / "ft")
    args = ["train-t2i", "--init", model, "--run-dir", ft, "--n-scales", "3", "--loss-weights", "sqrt_area",
            "--noise-apply-layers", "2"]  # fmt: skip
    assert main(args + common) == 0
    m = _metrics(ft)
    assert all(np.isfinite(r["loss"]) for r in m)
    cfg = json.load(open(os.path.join(ft, "config.json")))
    assert cfg["train"]["loss_weights"] == "sqrt_area" and cfg["train"]["init"] == model
    # another tokenizer (6 bits) for the 8-bit model: one line naming the difference
    save_bsq_dir(BSQVAE(BSQConfig(codebook_dim=6, base_ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, patch_size=4)),
                 tmp_path / "tok6")  # fmt: skip
    capsys.readouterr()
    rc = main(["train-t2i", "--init", model, "--tokenizer", str(tmp_path / "tok6"), "--run-dir", str(tmp_path / "x")]
              + common)  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "8 bits per token" in err[0] and "--tokenizer" in err[0], err
    rc = main(["train-t2i", "--init", str(tmp_path / "nope"), "--run-dir", str(tmp_path / "y")] + common)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--init" in err[0], err


def test_bad_captions_are_skipped_and_counted_or_refused(scenes, tmp_path, capsys):
    import shutil

    data, tok = scenes
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    (bad / "00000.txt").write_text("   \n")  # empty caption
    (bad / "00001.txt").write_bytes(b"a red \xff circle")  # not UTF-8
    (bad / "00002.png").write_bytes(b"not a png")  # not an image
    os.remove(bad / "00003.png")  # missing image
    run = str(tmp_path / "run")
    common = ["train-t2i", "--data", str(bad), "--tokenizer", tok, "--steps", "2", "--batch-size", "4"] + TINY + QUIET
    with pytest.warns(RuntimeWarning, match="skipped 4 bad sample"):
        assert main(common + ["--run-dir", run]) == 0
    derived = json.load(open(os.path.join(run, "config.json")))["derived"]
    assert derived["train_samples"] == 20
    assert derived["bad_samples"] == {"empty caption": 1, "caption not UTF-8": 1, "not an image": 1,
                                      "missing image": 1}  # fmt: skip
    capsys.readouterr()
    assert main(common + ["--run-dir", str(tmp_path / "r2"), "--on-bad", "error"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "00000.txt: empty caption" in err[0] and "00002.png" in err[0], err
    assert not os.path.exists(tmp_path / "r2" / "checkpoints")


def test_train_tokenizer_bitwise_exports_a_loadable_bsq_tokenizer(scenes, tmp_path):
    from nextscale.models.bsq import BSQVAE
    from nextscale.train.t2i_parts import load_bsq_any

    data, _ = scenes
    run = str(tmp_path / "bsq")
    args = ["train-tokenizer", "--bitwise", "--data", data, "--n-scales", "3", "--steps", "4", "--batch-size", "4",
            "--run-dir", run, "--log-every", "1", "--disc-start", "2", "--disc-layers", "1",
            "--eval-every", "0"]  # fmt: skip
    assert main(args + QUIET) == 0
    m = _metrics(run)
    assert {"rec", "bsq", "h_sample", "h_codebook", "psnr"} <= set(m[0]) and "gan/d_loss" in m[-1]
    vae = load_bsq_any(os.path.join(run, "tokenizer"))
    assert isinstance(vae, BSQVAE) and vae.codebook_dim == 8 and vae.patch_size == 4
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    summed, bits = vae.encode(x, [(1, 1), (2, 2), (4, 4)])
    assert vae.decode(summed).shape == (1, 3, 16, 16) and bits[-1].shape == (1, 4, 4, 8)
    # it is a tokenizer train-t2i takes
    assert main(["train-t2i", "--data", data, "--tokenizer", os.path.join(run, "tokenizer"), "--steps", "1",
                 "--batch-size", "4", "--run-dir", str(tmp_path / "t2i")] + TINY + QUIET) == 0  # fmt: skip
