"""nextscale.accel: the CPU kernels compute what the plain reference modules compute.

Tolerances (accel/cpu.py docstring): transformer blocks and logits 1e-5 (float summation order),
sampled tokens identical, decoded images 1e-4 (Winograd rounding), encoder token ids identical."""

import pytest
import torch

import nextscale.accel.cpu as cpu
from nextscale.accel import cpu_kernels_enabled, disable_cpu_kernels, enable_cpu_kernels, reference_kernels
from nextscale.configs import VQVAEConfig, get_preset
from nextscale.models import VQVAE, build_from_config
from nextscale.pipelines import NextScalePipeline
from nextscale.sampling import generate


def _pair(seed=0):
    vae, var = build_from_config(get_preset("tiny"), seed=seed)
    with torch.no_grad():  # non-trivial weights everywhere (init leaves AdaLN gammas near zero)
        g = torch.Generator().manual_seed(seed)
        for p in var.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return vae.eval(), var.eval()


@pytest.mark.parametrize("rows", [3, 200])  # W @ x^T path (<= SMALL_ROWS) and the reused-buffer FFN path
def test_block_kernels_equal_reference_kernels(rows, monkeypatch):
    """The CPU block kernels (small-row linears, in-place GELU, fused AdaLN) compute the same block as
    the reference's operation order, up to float summation order; reference_kernels restores it, and
    training (autograd) always takes the reference's order."""
    fast_calls = []  # which path each kernel took: counted, not inferred from the values differing (they
    real = cpu.fast_fp32  # may agree bit for bit on some CPU kind / thread count)
    monkeypatch.setattr(cpu, "fast_fp32", lambda x: fast_calls.append(real(x)) or fast_calls[-1])
    _, var = _pair()
    plain_blk = var.blocks[0]
    x = torch.randn(1, rows, var.C)
    mod = plain_blk.modulation(torch.randn(1, var.C)).detach() if not plain_blk.shared_aln else None
    with torch.no_grad():
        exact = plain_blk(x, None, attn_bias=None, mod_B16C=mod)  # the plain module
        enable_cpu_kernels(var)
        blk = var.blocks[0]
        assert type(blk) is cpu.CPUAdaLNSelfAttn and type(blk.ffn.fc1) is cpu.SmallRowsLinear
        fast_calls.clear()
        fast = blk(x, None, attn_bias=None, mod_B16C=mod)
        took_fast, fast_calls[:] = any(fast_calls), []
        with reference_kernels():
            exact_again = blk(x, None, attn_bias=None, mod_B16C=mod)
        took_fast_in_reference = any(fast_calls)
        ref_ffn = blk.ffn.fc2(
            torch.nn.functional.gelu(
                torch.nn.functional.linear(x, blk.ffn.fc1.weight, blk.ffn.fc1.bias), approximate="tanh"
            )
        )
        fast_ffn = blk.ffn(x)
    blk.train()
    train_path = blk(x, None, attn_bias=None, mod_B16C=mod)
    blk.eval()
    assert (rows <= cpu.SMALL_ROWS) == (rows == 3)
    assert took_fast and not took_fast_in_reference  # the fast kernels did run (and only outside reference_kernels) ...
    torch.testing.assert_close(fast, exact, atol=1e-5, rtol=1e-5)  # ... and compute the same block
    assert torch.equal(exact, exact_again) and torch.equal(exact, train_path.detach())
    torch.testing.assert_close(fast_ffn, ref_ffn, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", [0.0, 2.0])
def test_accelerated_sampling_gives_the_plain_tokens_and_images(cfg):
    vae, var = _pair()
    kw = dict(B=2, label_B=[1, 4], cfg=cfg, top_k=20, top_p=0.9)
    with torch.no_grad():
        plain = generate(var, vae, generator=torch.Generator().manual_seed(3), **kw)
        plain_img = vae.fhat_to_img(plain.f_hat)
        plain_logits = var(torch.tensor([1, 4]), vae.quantize.idxBl_to_var_input(plain.idx_per_scale))
        enable_cpu_kernels(vae)
        enable_cpu_kernels(var)
        fast = generate(var, vae, generator=torch.Generator().manual_seed(3), **kw)
        fast_img = vae.fhat_to_img(fast.f_hat)
        fast_logits = var(torch.tensor([1, 4]), vae.quantize.idxBl_to_var_input(fast.idx_per_scale))
    for a, b in zip(plain.idx_per_scale, fast.idx_per_scale):
        assert torch.equal(a, b)
    torch.testing.assert_close(fast_logits, plain_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_img, plain_img, atol=1e-4, rtol=0)
    assert fast_img.is_contiguous() and fast_img.shape == plain_img.shape


def test_winograd_decoder_and_direct_encoder_equal_plain():
    """A tokenizer wide enough that Winograd pays for some decoder convs: images within 1e-4 of the
    plain decoder, encoder token ids bit-identical (the encoder keeps direct convs)."""
    torch.manual_seed(0)
    cfg = VQVAEConfig(
        vocab_size=64,
        z_channels=8,
        ch=64,
        ch_mult=(1, 2, 5),
        num_res_blocks=1,
        v_patch_nums=(1, 2, 4, 8),
        using_sa=False,
    )
    plain = VQVAE.from_config(cfg).eval()
    fast = enable_cpu_kernels(VQVAE.from_config(cfg).eval())
    fast.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(plain.img_to_idxBl(x), fast.img_to_idxBl(x)))
        f = torch.randn(2, 8, 8, 8)
        want, got = plain.fhat_to_img(f), fast.fhat_to_img(f)
    assert any("_winograd_cache" in m.__dict__ for m in fast.decoder.modules())
    assert not any(isinstance(m, cpu.WinogradConv2d) for m in fast.encoder.modules())
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_swaps_keep_state_dict_and_are_undone():
    vae, var = _pair()

    def mods():
        return [*vae.named_modules(prefix="vae"), *var.named_modules(prefix="var")]

    names = {n: (type(m), m) for n, m in mods()}
    sd = {k: v.clone() for k, v in {**vae.state_dict(), **var.state_dict()}.items()}
    enable_cpu_kernels(vae)
    enable_cpu_kernels(enable_cpu_kernels(var))  # idempotent
    assert cpu_kernels_enabled(var) and cpu_kernels_enabled(vae)
    after = {**vae.state_dict(), **var.state_dict()}
    assert list(after) == list(sd) and all(torch.equal(after[k], sd[k]) for k in sd)
    for n, m in mods():
        assert names[n][1] is m  # the same module objects (optimizers, hooks keep working)
        assert isinstance(m, names[n][0])
    disable_cpu_kernels(vae)
    disable_cpu_kernels(var)
    assert not cpu_kernels_enabled(var) and not cpu_kernels_enabled(vae)
    assert all(type(m) is names[n][0] for n, m in mods())


def test_pipeline_enables_kernels_by_default_and_one_switch_turns_them_off():
    pipe = NextScalePipeline.from_preset("tiny")
    assert cpu_kernels_enabled(pipe.var) and cpu_kernels_enabled(pipe.vqvae)
    fast = pipe(class_labels=[2, 5], seed=1, guidance_scale=1.0, top_k=10, output_type="pt", return_indices=True)
    pipe.disable_cpu_kernels()
    assert not cpu_kernels_enabled(pipe.var) and not cpu_kernels_enabled(pipe.vqvae)
    plain = pipe(class_labels=[2, 5], seed=1, guidance_scale=1.0, top_k=10, output_type="pt", return_indices=True)
    assert all(torch.equal(a, b) for a, b in zip(fast.indices, plain.indices))
    torch.testing.assert_close(fast.images, plain.images, atol=1e-4, rtol=0)
