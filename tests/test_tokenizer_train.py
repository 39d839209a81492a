"""`nextscale train-tokenizer / export-tokenizer / eval-tokenizer` on real MNIST digits with a tiny
16 px tokenizer (the mnist preset at width 32, one residual block, V = 32, scales 1-2-4)."""

import json
import os
import random
import shutil
import subprocess
import sys
import time

import pytest
import torch

from nextscale.app.cli import main
from nextscale.checkpoint import CheckpointFolder
from nextscale.data import export_mnist
from nextscale.errors import NextScaleError

ARCH = [
    "--preset",
    "mnist",
    "--ch",
    "32",
    "--num-res-blocks",
    "1",
    "--vocab-size",
    "32",
    "--patch-nums",
    "1",
    "2",
    "4",
    "--disc-ch",
    "16",
    "--disc-layers",
    "2",
]
QUIET = ["--no-progress", "--eval-every", "0", "--sample-every", "-1"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    d = tmp_path_factory.mktemp("digits")
    export_mnist(str(d), n_per_class=2, split="both", resolution=16)  # 20 train + 20 held-out real digits
    return str(d)


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("tok") / "run")
    rc = main(
        [
            "train-tokenizer",
            "--data",
            digits,
            "--out",
            run,
            "--steps",
            "20",
            "--batch-size",
            "8",
            "--lr",
            "3e-3",
            "--disc-start",
            "14",
            "--reinit-dead-every",
            "5",
            "--log-every",
            "2",
            "--ckpt-every",
            "10",
            "--no-progress",
            "--eval-every",
            "10",
            "--sample-every",
            "0",
        ]
        + ARCH
    )
    assert rc == 0
    return run


def _metrics(run, kind="train"):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def _final(run):
    return CheckpointFolder(os.path.join(run, "checkpoints")).latest()


def test_loss_falls_codebook_and_gan_are_logged(trained):
    m = _metrics(trained)
    before = [r for r in m if r["step"] <= 14]  # the GAN starts at step 14 (first logged at 16)
    after = [r for r in m if r["step"] >= 16]
    assert before[-1]["rec"] < 0.5 * before[0]["rec"] and before[-1]["psnr"] > before[0]["psnr"] + 3
    assert {
        "loss",
        "vq",
        "usage",
        "codes/usage_1x1",
        "codes/usage_4x4",
        "codes/ppl_2x2",
        "vae/grad_norm",
        "vae/lr",
    } <= set(m[-1])
    assert all("gan/d_loss" not in r for r in before)
    assert all({"gan/d_loss", "gan/g_loss", "gan/d_weight", "disc/grad_norm"} <= set(r) for r in after)
    assert all(r["gan/d_weight"] >= 0 for r in after)
    val = _metrics(trained, "val")
    assert [v["step"] for v in val] == [10, 20] and {"psnr", "ssim", "rec", "vq"} <= set(val[0])
    step, st = _final(trained)
    assert step == 20 and set(st["modules"]) == {"vae", "disc"} and set(st["optimizers"]) == {"vae", "disc"}
    assert st["objective"]["record_hit"] == 20 and st["objective"]["n_reinit"] > 0
    assert os.path.isfile(os.path.join(trained, "samples", "step_00000020.png"))  # per-scale progress picture
    assert os.path.isfile(os.path.join(trained, "tokenizer", "model_index.json"))  # exported on completion


def test_export_loads_back_and_feeds_tokenize(trained, digits, tmp_path, capsys):
    from nextscale import hub
    from nextscale.pipelines import NextScalePipeline

    out = str(tmp_path / "tok")
    assert main(["export-tokenizer", trained, "--out", out]) == 0
    assert json.load(open(os.path.join(out, "model_index.json")))["_class_name"] == hub.TOKENIZER_CLASS_NAME
    _, st = _final(trained)
    for vae in (
        hub.load_components(out)[0],
        hub.load_tokenizer(trained),
        hub.load_tokenizer(out),
    ):
        assert vae.v_patch_nums == (1, 2, 4) and vae.vocab_size == 32
        for k, v in vae.state_dict().items():
            assert torch.equal(v, st["modules"]["vae"][k]), k
    assert hub.load_components(out)[1] is None and hub.load_components(out)[2]["tokenizer_only"]
    with pytest.raises(NextScaleError, match="tokenizer-only"):
        NextScalePipeline.from_pretrained(out)
    cache = str(tmp_path / "cache")
    assert main(["tokenize", "--data", digits, "--tokenizer", out, "--out", cache]) == 0  # the VAR trainer's loader
    meta = json.load(open(os.path.join(cache, "meta.json")))
    assert meta["L"] == 1 + 4 + 16 and meta["splits"] == {"train": 20, "val": 20}
    ft = str(tmp_path / "ft")  # fine-tuning starts from the exported weights (--init)
    assert (
        main(
            [
                "train-tokenizer",
                "--data",
                digits,
                "--init",
                out,
                "--out",
                ft,
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--disc-weight",
                "0",
                "--lr",
                "1e-12",
            ]
            + QUIET
        )
        == 0
    )
    _, st_ft = _final(ft)
    assert st_ft["config"]["model"]["vqvae"] == st["config"]["model"]["vqvae"]
    assert torch.allclose(
        st_ft["modules"]["vae"]["decoder.conv_out.weight"], st["modules"]["vae"]["decoder.conv_out.weight"], atol=1e-6
    )


def test_eval_tokenizer_reports_and_draws_scales(trained, digits, tmp_path, capsys):
    pic, js = str(tmp_path / "scales.png"), str(tmp_path / "r.json")
    assert main(["eval-tokenizer", trained, "--data", digits, "--picture", pic, "--json", js, "--rows", "3"]) == 0
    txt = capsys.readouterr().out
    assert "PSNR" in txt and "SSIM" in txt and "code usage" in txt and "rFID n/a" in txt and "perplexity" in txt
    r = json.load(open(js))
    assert r["num_images"] == 20 and len(r["usage_by_scale"]) == len(r["psnr_by_scale"]) == 3
    assert r["psnr"] == pytest.approx(r["psnr_by_scale"][-1], abs=1e-6) and 0 < r["ssim"] <= 1
    from PIL import Image

    assert Image.open(pic).size == (4 * 16 * 8, 3 * 16 * 8)  # [original, 1, 2, 3 scales] x 3 rows, 8x upscaled
    # the untrained model is far worse
    from nextscale.evaluation.tokenizer import evaluate_tokenizer
    from nextscale.train.config import TokenizerTrainConfig
    from nextscale.train.tokenizer import build_vae

    fresh = build_vae(
        TokenizerTrainConfig(data=digits, ch=32, num_res_blocks=1, vocab_size=32, patch_nums=(1, 2, 4))
    ).eval()
    assert evaluate_tokenizer(fresh, digits, rfid=False)["psnr"] < r["psnr"] - 2


def _cmd(data, run, steps=6):
    return (
        [
            "train-tokenizer",
            "--data",
            data,
            "--out",
            run,
            "--steps",
            str(steps),
            "--batch-size",
            "4",
            "--lr",
            "2e-3",
            "--disc-start",
            "2",
            "--reinit-dead-every",
            "2",
            "--hflip",
            "--ema",
            "0.9",
            "--ckpt-every",
            "2",
            "--keep",
            "10",
            "--log-every",
            "3",
        ]
        + ARCH
        + QUIET
    )


def _assert_same(a, b):
    for name in ("vae", "disc"):
        for k, v in a["modules"][name].items():
            assert torch.equal(v, b["modules"][name][k]), (name, k)
        for i, s in a["optimizers"][name]["state"].items():
            for n, v in s.items():
                assert torch.equal(v, b["optimizers"][name]["state"][i][n]), (name, i, n)
    for k, v in a["ema"]["vae"].items():
        assert torch.equal(v, b["ema"]["vae"][k]), k
    assert a["objective"] == b["objective"] and a["data"] == b["data"]
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])


def test_resume_is_bit_identical(digits, tmp_path):
    """A run resumed from an intermediate checkpoint ends exactly where an uninterrupted one does
    (GAN active, dead-code restarts, EMA, flips: everything that could drift)."""
    run = str(tmp_path / "run")
    assert main(_cmd(digits, run)) == 0
    _, ref = _final(run)
    ck = CheckpointFolder(os.path.join(run, "checkpoints"))
    for s in (4, 6):  # as if the process had died right after writing step 2
        os.remove(ck.path(s))
    shutil.rmtree(os.path.join(run, "tokenizer"))
    assert main(_cmd(digits, run)) == 0
    step, again = _final(run)
    assert step == 6 and "resumed from" in open(os.path.join(run, "log.txt")).read()
    _assert_same(ref, again)
    assert ref["objective"]["n_reinit"] > 0  # the restart path really ran
    assert main(_cmd(digits, run)) == 0  # finished run: nothing to do


@pytest.mark.slow
def test_kill9_then_rerun_is_bit_identical(digits, tmp_path, one_thread):
    # one intra-op thread here and in the killed process: bit-identity needs the same thread count
    ref = str(tmp_path / "ref")
    assert main(_cmd(digits, ref, steps=14)) == 0
    run = str(tmp_path / "cut")
    p = subprocess.Popen(
        [sys.executable, "-m", "nextscale"] + _cmd(digits, run, steps=14),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    ck = CheckpointFolder(os.path.join(run, "checkpoints"))
    t0 = time.time()
    while not ck.steps() and p.poll() is None and time.time() - t0 < 120:
        time.sleep(0.02)
    time.sleep(random.Random().uniform(0.0, 0.5))
    p.kill()
    p.wait()
    assert ck.steps(), "the run never wrote a checkpoint"
    assert p.returncode == -9 and ck.steps()[-1] < 14, (p.returncode, ck.steps())  # killed mid-run, not after the end
    assert main(_cmd(digits, run, steps=14)) == 0
    (sa, a), (sb, b) = _final(ref), _final(run)
    assert sa == sb == 14
    _assert_same(a, b)


def test_one_scale_baseline_l1_without_gan(digits, tmp_path):
    run = str(tmp_path / "one")
    rc = main(
        [
            "train-tokenizer",
            "--data",
            digits,
            "--out",
            run,
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--patch-nums",
            "4",
            "--rec-loss",
            "l1",
            "--disc-weight",
            "0",
            "--preset",
            "mnist",
            "--ch",
            "32",
            "--num-res-blocks",
            "1",
            "--vocab-size",
            "32",
        ]
        + QUIET
    )
    assert rc == 0
    _, st = _final(run)
    assert set(st["modules"]) == {"vae"} and st["config"]["model"]["vqvae"]["v_patch_nums"] == [4]


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--data", "{tmp}/missing"], "does not exist"),
        (["--data", "{tmp}/empty"], "no images"),
        (["--data", "{digits}", "--batch-size", "0"], "batch-size"),
        (["--data", "{digits}", "--preset", "d17"], "unknown preset"),
        (["--data", "{digits}", "--lpips-weights", "{tmp}/nope.pth"], "lpips"),
        (["--data", "{digits}", "--disc-layers", "3"], "too deep"),
        (["--data", "{digits}", "--init", "{tmp}/missing.pth"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_error(args, msg, tmp_path, digits, capsys):
    (tmp_path / "empty").mkdir()
    args = [a.format(tmp=tmp_path, digits=digits) for a in args]
    if "--preset" not in args:
        args = (
            args
            + [
                "--preset",
                "mnist",
                "--ch",
                "32",
                "--num-res-blocks",
                "1",
                "--patch-nums",
                "1",
                "2",
                "4",
                "--disc-ch",
                "16",
            ]
            + (["--disc-layers", "2"] if "--disc-layers" not in args else [])
        )
    rc = main(["train-tokenizer"] + args + ["--out", str(tmp_path / "r"), "--steps", "1"] + QUIET)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("nextscale: error:") and msg in err[0], err


@pytest.mark.parametrize(
    "args,msg",
    [
        (["{tmp}/missing", "--data", "{tmp}"], "does not exist"),
        (["{tmp}", "--data", "{tmp}"], "holds no tokenizer"),
    ],
)
def test_eval_bad_input_is_one_line_error(args, msg, tmp_path, capsys):
    rc = main(["eval-tokenizer"] + [a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and msg in err[0], err


# ------------------------------------------------------------------ unit checks of the recipe
def test_losses_discriminator_and_codebook_stats():
    from nextscale.evaluation.tokenizer import codebook_stats
    from nextscale.train.tokenizer import PatchDiscriminator, adaptive_weight, hinge_d_loss, hinge_g_loss

    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * ((0 + 0.5) / 2 + (0 + 1) / 2))
    assert hinge_g_loss(fake).item() == pytest.approx(1.0)
    d = PatchDiscriminator(3, 16, 2)
    assert d(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 6, 6)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    w = torch.nn.Parameter(torch.randn(4, 4))
    x = torch.randn(3, 4)
    nll, g = (x @ w).pow(2).mean(), -(x @ w).mean() * 0.1
    gn = torch.autograd.grad(nll, w, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g, w, retain_graph=True)[0].norm()
    assert adaptive_weight(nll, g, w).item() == pytest.approx((gn / (gg + 1e-4)).item(), rel=1e-5)
    assert adaptive_weight(nll, g * 0, w).item() == pytest.approx(min((gn / 1e-4).item(), 1e4), rel=1e-5)  # clamped
    usage, ppl = codebook_stats(torch.tensor([[1.0, 1, 1, 1], [4.0, 0, 0, 0]]))
    assert usage == [100.0, 25.0] and ppl[0] == pytest.approx(4.0) and ppl[1] == pytest.approx(1.0)


def test_dead_codes_are_reinitialised_to_batch_residuals(digits):
    from nextscale.data import ImageFolder
    from nextscale.train.config import TokenizerTrainConfig
    from nextscale.train.tokenizer import TokenizerObjective, build_vae

    tc = TokenizerTrainConfig(
        data=digits, ch=32, num_res_blocks=1, vocab_size=32, patch_nums=(1, 2, 4), reinit_dead_every=1
    )
    vae = build_vae(tc)
    ob = TokenizerObjective(vae, None, tc)
    ds = ImageFolder(os.path.join(digits, "train"), 16, train=False)
    x = torch.stack([ds[(i, -1)]["image"] for i in range(8)])
    q = vae.quantize
    q.record_hit = 5
    q.ema_vocab_hit_SV.fill_(1.0)
    q.ema_vocab_hit_SV[:, :10] = 0.0  # codes 0..9 never hit on any scale
    before = q.embedding.weight.detach().clone()
    # the batch's residuals, computed here from the quantiser's cumulative f_hat: the vector scale k
    # quantises is area(f - f_hat_{k-1}) at k x k (the last scale: f - f_hat_{K-2} itself)
    vae.eval()
    with torch.no_grad():
        f = vae.img_to_f(x).float()
        fhats = q.f_to_idxBl_or_fhat(f, to_fhat=True)
    vae.train()
    C, K = f.shape[1], len(q.v_patch_nums)
    pool = []
    for si, pn in enumerate(q.v_patch_nums):
        rest = f - (fhats[si - 1] if si else 0)
        rest = torch.nn.functional.interpolate(rest, size=(pn, pn), mode="area") if si != K - 1 else rest
        pool.append(rest.permute(0, 2, 3, 1).reshape(-1, C))
    pool = torch.cat(pool)
    ob._reinit_dead(x, step=3)
    after = q.embedding.weight.detach()
    assert not torch.equal(before[:10], after[:10]) and torch.equal(before[10:], after[10:])
    assert ob.n_reinit == 10 and torch.unique(after[:10], dim=0).shape[0] == 10
    # each restarted code is one of those residuals plus a 1e-3 * std jitter (|jitter| ~ 1e-3 sqrt(C) std)
    d = torch.cdist(after[:10], pool).min(dim=1).values
    jitter = 1e-3 * C**0.5 * pool.std()
    assert (d < 5 * jitter).all(), (d / jitter).tolist()
    # ... which is far closer than the residuals are to each other (so "near" singles one out)
    dp = torch.cdist(pool, pool) + torch.eye(len(pool)) * 1e9
    spread = dp.min(dim=1).values
    assert jitter * 5 < spread[spread > 1e-6].median() / 10


def _lpips_by_definition(sd, x, y):
    """LPIPS-VGG (lpips v0.1) written out from its definition with plain functional ops on the state
    dict of the two files: inputs (x - shift) / scale with lpips' ScalingLayer constants; VGG16's 13
    3x3 convs (+ReLU) in 5 blocks, 2x2 max-pool between blocks, the last ReLU of each block tapped
    (relu1_2 ... relu5_3); each tap unit-normalised over channels (eps 1e-10), squared difference,
    weighted by the 1x1 lin weights (a channel sum), spatial mean; summed over the 5 taps."""
    import torch.nn.functional as F

    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    blocks = [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]]  # torchvision vgg16.features conv indices

    def taps(z):
        h, out = (z - shift) / scale, []
        for bi, convs in enumerate(blocks):
            if bi:
                h = F.max_pool2d(h, kernel_size=2, stride=2)
            for i in convs:
                h = F.relu(F.conv2d(h, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1))
            out.append(h)
        return out

    total = torch.zeros(x.shape[0], 1, 1, 1)
    for k, (a, b) in enumerate(zip(taps(x), taps(y))):
        na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = sd[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
        total = total + ((na - nb).pow(2) * w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    return total


def test_lpips_from_local_weights(tmp_path, digits):
    from nextscale.train.config import TokenizerTrainConfig
    from nextscale.train.lpips import LPIPS
    from nextscale.train.tokenizer import TokenizerObjective

    torch.manual_seed(0)
    ref = LPIPS()
    for m in ref.modules():
        if isinstance(m, torch.nn.Conv2d) and m.out_channels == 1:
            m.weight.data.abs_()  # lin weights are non-negative in LPIPS
        elif isinstance(m, torch.nn.Conv2d):  # variance-preserving VGG: every tap (down to relu5_3 at 1x1)
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")  # still tells x from y, so each
            torch.nn.init.normal_(m.bias, std=0.01)  # of the 5 terms counts (>= 5e-3 of d)
    sd = {k: v for k, v in ref.state_dict().items() if k not in ("shift", "scale")}
    torch.save({k: v for k, v in sd.items() if k.startswith("features.")}, tmp_path / "vgg16.pth")
    torch.save({k: v for k, v in sd.items() if k.startswith("lin")}, tmp_path / "vgg.pth")
    lp = LPIPS.from_weights(str(tmp_path))  # a folder holding both files
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1, torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    files = {
        **torch.load(tmp_path / "vgg16.pth", weights_only=True),
        **torch.load(tmp_path / "vgg.pth", weights_only=True),
    }
    want = _lpips_by_definition(files, x, y)
    got = lp(x, y)
    assert got.shape == (2, 1, 1, 1) and (want > 0).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert lp(x, x).abs().max() < 1e-6
    with pytest.raises(NextScaleError, match="lacks"):
        LPIPS.from_weights(str(tmp_path / "vgg.pth"))  # lin weights alone are not enough
    tc = TokenizerTrainConfig(
        data=digits,
        ch=32,
        num_res_blocks=1,
        vocab_size=32,
        patch_nums=(1, 2, 4),
        disc_weight=0,
        lpips_weights=str(tmp_path),
        steps=1,
        batch_size=2,
    )
    ob = TokenizerObjective.build(tc, torch.device("cpu")).objective
    assert isinstance(ob.lpips, LPIPS)
