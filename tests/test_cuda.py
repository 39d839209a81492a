"""The GPU path: fp32 parity with CPU and the reference, mixed precision (bf16/fp16 autocast with
SDPA flash/efficient kernels), training with AMP, torchrun (NCCL) and FSDP.

Skipped where there is no CUDA device (CI has none); run on a GPU machine with
``python -m pytest -q tests/test_cuda.py``.
"""

import os
import subprocess
import sys

import pytest
import torch

from nextscale.app.cli import main
from nextscale.configs import get_preset
from nextscale.data import export_mnist
from nextscale.models import build_from_config
from nextscale.sampling import generate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
QUIET = ["--no-progress", "--eval-every", "0", "--sample-every", "-1"]


@pytest.fixture(autouse=True)
def exact_fp32():
    """TF32 off: fp32 on the GPU must be comparable with the CPU at 1e-4."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(scope="module")
def tiny():
    vae, var = build_from_config(get_preset("tiny"), seed=0)
    with torch.no_grad():  # non-trivial outputs (the init keeps blocks near identity)
        for p in var.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return vae.eval(), var.eval()


def _to(models, dev):
    import copy

    vae, var = (copy.deepcopy(m) for m in models)
    vae.to(dev)
    var.to(dev)
    var.vae_proxy = (vae,)
    var.vae_quant_proxy = (vae.quantize,)
    return vae, var


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_golden_on_cuda_fp32(golden):
    """The reference's golden teacher-forced logits and decoded images, computed on the GPU."""
    from test_golden import _vae, _var

    vae = _vae(golden).cuda()
    var = _var(golden, "var", vae).cuda().eval()
    ref = golden["var"]["forward"]
    with torch.no_grad():
        logits = var(ref["label_B"].cuda(), ref["x_BLCv_wo_first_l"].cuda())
        img = vae.fhat_to_img(golden["vae_out"]["f_to_fhat"][-1].cuda())
    torch.testing.assert_close(logits.cpu(), ref["logits"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(img.cpu(), golden["vae_out"]["fhat_to_img"], atol=1e-4, rtol=0)


def test_cuda_fp32_equals_cpu(tiny):
    vae, var = tiny
    gvae, gvar = _to(tiny, "cuda")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    lab = torch.tensor([1, 8])
    with torch.no_grad():
        idx = vae.img_to_idxBl(x)
        gidx = gvae.img_to_idxBl(x.cuda())
        assert all(torch.equal(a, b.cpu()) for a, b in zip(idx, gidx))
        inp = vae.quantize.idxBl_to_var_input(idx)
        torch.testing.assert_close(gvar(lab.cuda(), inp.cuda()).cpu(), var(lab, inp), atol=1e-4, rtol=1e-4)
        f_hat = vae.idxBl_to_fhat(idx)
        torch.testing.assert_close(gvae.fhat_to_img(f_hat.cuda()).cpu(), vae.fhat_to_img(f_hat), atol=1e-4, rtol=0)


@pytest.mark.parametrize("amp", ["fp32", "bf16", "fp16"])
def test_kv_cache_generation_equals_full_forward_on_cuda(tiny, amp):
    """KV-cache decoding (flash SDPA, no mask) == teacher forcing (masked SDPA) in every precision."""
    vae, var = _to(tiny, "cuda")
    heads = []
    hook = var.head.register_forward_hook(lambda m, i, o: heads.append(o.detach().float()))
    ac = torch.autocast("cuda", dtype=DTYPES.get(amp, torch.float32), enabled=amp != "fp32")
    with ac:
        out = generate(
            var,
            vae,
            B=2,
            label_B=torch.tensor([3, 5]),
            generator=torch.Generator("cuda").manual_seed(0),
            cfg=2.0,
            top_k=10,
        )
    hook.remove()
    with torch.no_grad(), ac:
        x = vae.quantize.idxBl_to_var_input(out.idx_per_scale)
        full_BLV = var(out.labels, x).float()
    tol = {"fp32": 1e-5, "bf16": 3e-2, "fp16": 5e-3}[amp]
    for si, (b, e) in enumerate(var.begin_ends):
        assert _rel(heads[si][:2], full_BLV[:, b:e]) < tol, (si, _rel(heads[si][:2], full_BLV[:, b:e]))
    assert all(t.device.type == "cuda" for t in out.idx_per_scale)


def test_pipeline_on_cuda_bf16_repeatable_and_close_to_fp32(tiny_pipe_dir):
    from nextscale import NextScalePipeline

    p = NextScalePipeline.from_pretrained(tiny_pipe_dir).to("cuda")
    a = p(class_labels=[1, 7], seed=3, output_type="pt", return_indices=True)  # fp32
    pb = NextScalePipeline.from_pretrained(tiny_pipe_dir).to("cuda", torch.bfloat16)
    b1 = pb(class_labels=[1, 7], seed=3, output_type="pt", return_indices=True)
    b2 = pb(class_labels=[1, 7], seed=3, output_type="pt", return_indices=True)
    assert torch.equal(b1.images, b2.images)  # same seed, same image
    assert b1.images.shape == a.images.shape and torch.isfinite(b1.images).all()
    assert 0 <= b1.images.min() and b1.images.max() <= 1
    # the same tokens decode to nearly the same image in bf16 and fp32
    with torch.no_grad():
        ref = p.vqvae.idxBl_to_img([i.cuda() for i in a.indices], same_shape=True, last_one=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = p.vqvae.idxBl_to_img([i.cuda() for i in a.indices], same_shape=True, last_one=True)
    assert (ref.float() - low.float()).abs().mean() < 0.02


def test_batch_of_two_equals_two_batches_of_one_on_cuda(tiny):
    vae, var = _to(tiny, "cuda")
    x = torch.rand(2, 3, 64, 64, device="cuda") * 2 - 1
    lab = torch.tensor([1, 8], device="cuda")
    with torch.no_grad():
        inp = vae.quantize.idxBl_to_var_input(vae.img_to_idxBl(x))
        two = var(lab, inp)
        ones = torch.cat([var(lab[i : i + 1], inp[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(two, ones, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    d = tmp_path_factory.mktemp("digits")
    export_mnist(str(d), n_per_class=2, split="train", resolution=64)
    return str(d)


def _losses(run):
    import json

    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if r["kind"] == "train"]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_train_var_on_cuda_with_amp(digits, tmp_path, amp):
    run = str(tmp_path / "run")
    assert (
        main(
            [
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
                "40",
                "--batch-size",
                "20",
                "--lr",
                "3e-3",
                "--warmup-steps",
                "5",
                "--log-every",
                "5",
                "--amp",
                amp,
                "--device",
                "cuda",
            ]
            + QUIET
        )
        == 0
    )
    loss = _losses(run)
    assert all(map(lambda v: v == v, loss)) and loss[-1] < 0.6 * loss[0]
    assert main(["export", run, "--out", str(tmp_path / "model")]) == 0


@pytest.mark.parametrize("fsdp", [False, True])
def test_torchrun_nccl_one_gpu(digits, tmp_path, fsdp):
    """torchrun + NCCL (DDP, or FSDP full sharding) trains and exports a loadable model."""
    run = str(tmp_path / "run")
    args = (
        [
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
            "20",
            "--batch-size",
            "10",
            "--lr",
            "3e-3",
            "--warmup-steps",
            "2",
            "--log-every",
            "5",
            "--ckpt-every",
            "10",
            "--amp",
            "bf16",
        ]
        + QUIET
        + (["--fsdp"] if fsdp else [])
    )
    p = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_port=29517", "-m", "nextscale"]
        + args,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    loss = _losses(run)
    assert loss[-1] < loss[0]
    out = str(tmp_path / "model")
    assert main(["export", run, "--out", out]) == 0
    from nextscale import NextScalePipeline

    img = NextScalePipeline.from_pretrained(out).to("cuda")(class_labels=[3], seed=0, output_type="pt").images
    assert img.shape == (1, 3, 64, 64) and torch.isfinite(img).all()


def test_train_tokenizer_on_cuda_bf16(tmp_path):
    d = str(tmp_path / "digits")
    export_mnist(d, n_per_class=2, split="both", resolution=16)
    run = str(tmp_path / "tok")
    assert (
        main(
            [
                "train-tokenizer",
                "--data",
                d,
                "--out",
                run,
                "--steps",
                "20",
                "--batch-size",
                "8",
                "--lr",
                "3e-3",
                "--disc-start",
                "10",
                "--log-every",
                "5",
                "--amp",
                "bf16",
                "--device",
                "cuda",
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
            + QUIET
        )
        == 0
    )
    loss = _losses(run)
    assert all(v == v for v in loss)


def test_sample_cli_on_cuda(tmp_path):
    out = str(tmp_path / "grid.png")
    assert (
        main(
            [
                "sample",
                "--model",
                "default",
                "--class",
                "3",
                "7",
                "--seed",
                "0",
                "--device",
                "cuda",
                "--dtype",
                "bf16",
                "--out",
                out,
            ]
        )
        == 0
    )
    assert os.path.getsize(out) > 0


def test_fid_inception_cuda_equals_cpu():
    from nextscale.evaluation.inception import FIDInceptionV3

    torch.manual_seed(0)
    net = FIDInceptionV3()
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        a = net(x)
        b = net.cuda()(x.cuda())
    assert set(a) == set(b) == {"pool", "logits_unbiased", "spatial"}
    for k in a:
        torch.testing.assert_close(b[k].cpu(), a[k], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("amp", ["fp32", "bf16"])
def test_cuda_graphs_give_the_same_tokens_as_eager(tiny, amp):
    """Replaying captured per-scale graphs == eager execution, bit for bit, across calls and batch sizes."""
    from nextscale.sampling import CudaGraphs

    vae, var = _to(tiny, "cuda")
    graphs = CudaGraphs()
    ac = torch.autocast("cuda", dtype=DTYPES.get(amp, torch.float32), enabled=amp != "fp32")
    for labels, seed in (([3, 5], 0), ([1, 1], 1), ([7], 2), ([2, 9], 3)):
        kw = dict(B=len(labels), label_B=torch.tensor(labels), cfg=2.0, top_k=10, top_p=0.9)
        with ac:
            e = generate(var, vae, generator=torch.Generator("cuda").manual_seed(seed), **kw)
            g = generate(var, vae, generator=torch.Generator("cuda").manual_seed(seed), cuda_graphs=graphs, **kw)
        assert all(torch.equal(a, b) for a, b in zip(e.idx_per_scale, g.idx_per_scale)), (labels, seed)
        assert torch.equal(e.f_hat, g.f_hat)
    assert not graphs.failed and len(graphs._sets) == 2  # batch 2 and batch 1 (x2 for guidance)


def test_pipeline_uses_cuda_graphs_with_eager_results(tiny_pipe_dir):
    from nextscale import NextScalePipeline

    p = NextScalePipeline.from_pretrained(tiny_pipe_dir).to("cuda", torch.bfloat16)
    assert p.use_cuda_graphs
    a = p(class_labels=[1, 7], seed=3, output_type="pt", return_indices=True)
    b = p(class_labels=[1, 7], seed=3, output_type="pt", return_indices=True)
    p.use_cuda_graphs = False
    c = p(class_labels=[1, 7], seed=3, output_type="pt", return_indices=True)
    assert p._cuda_graphs._sets and not p._cuda_graphs.failed
    for x, y, z in zip(a.indices, b.indices, c.indices):
        assert torch.equal(x, y) and torch.equal(x, z)
    assert torch.equal(a.images, c.images)
