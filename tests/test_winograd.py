"""Winograd F(4x4, 3x3) conv (nextscale.accel.winograd) against F.conv2d(padding=1)."""

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from nextscale.accel import winograd as wg

# Measured max |winograd - float64 conv| / max |output| on these shapes (20 seeds each): 1.4e-6
# (F.conv2d fp32: 6e-7); the tolerance leaves a 15x margin.
REL_TOL = 2e-5


def _ref(x, w, b):
    return F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=1)


def test_matrices_exact_correlation():
    at, g, bt = (
        torch.tensor([[float(v) for v in row] for row in m], dtype=torch.float64) for m in wg.winograd_matrices()
    )
    gen = torch.Generator().manual_seed(0)
    d, k = torch.randn(6, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen, dtype=torch.float64)
    y = at @ ((g @ k) * (bt @ d))
    assert torch.allclose(y, torch.stack([d[i : i + 3] @ k for i in range(4)]), atol=1e-12)
    # B^T rows are scaled to integers (exact in fp32); Lavin's points give the same function
    assert all(v.denominator == 1 for row in wg.winograd_matrices()[2] for v in row)
    lav = wg.winograd_matrices((Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2), None))
    at2, g2, bt2 = (torch.tensor([[float(v) for v in row] for row in m], dtype=torch.float64) for m in lav)
    assert torch.allclose(at2 @ ((g2 @ k) * (bt2 @ d)), y, atol=1e-12)


@pytest.mark.parametrize(
    "B,Cin,Cout,H,W,cl,bias",
    [
        (1, 8, 8, 8, 8, True, True),
        (2, 5, 7, 5, 7, True, True),  # odd sizes, Cin != Cout, batch 2
        (2, 16, 12, 13, 10, False, True),  # contiguous (NCHW) input, H and W not multiples of 4
        (1, 12, 16, 6, 17, True, False),  # no bias
        (2, 3, 4, 1, 1, True, True),  # a single pixel
        (1, 24, 20, 3, 9, False, False),
    ],
)
@pytest.mark.parametrize("chunked", [False, True])
def test_matches_conv2d(B, Cin, Cout, H, W, cl, bias, chunked):
    gen = torch.Generator().manual_seed(B * 1000 + Cin * 31 + H * 7 + W)
    x = torch.randn(B, Cin, H, W, generator=gen)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(Cout, Cin, 3, 3, generator=gen) / (9 * Cin) ** 0.5
    b = torch.randn(Cout, generator=gen) if bias else None
    kw = dict(rows_per_chunk=1) if chunked else {}  # chunked: one tile row per chunk
    with torch.no_grad():
        y = wg.winograd_conv3x3(x, wg.transform_weight(w), b, Cout, **kw)
    assert y.shape == (B, Cout, H, W) and y.dtype == torch.float32
    assert y.is_contiguous(memory_format=torch.channels_last)
    ref = _ref(x, w, b)
    rel = ((y.double() - ref).abs().max() / ref.abs().max()).item()
    assert rel < REL_TOL, rel
    direct = F.conv2d(x, w, b, padding=1)
    assert ((y - direct).abs().max() / direct.abs().max()).item() < REL_TOL


def test_realistic_layer_and_inference_mode():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 48, 3, 1, 1)
    x = F.silu(torch.randn(2, 64, 40, 36)).contiguous(memory_format=torch.channels_last)
    assert wg.winograd_eligible(conv)
    with torch.inference_mode():  # workspace is kept apart for inference-mode tensors
        y1 = wg.winograd_conv2d(conv, x)
    with torch.no_grad():
        y2 = wg.winograd_conv2d(conv, x)
        ref = conv(x)
    assert torch.equal(y1, y2)
    assert ((y2 - ref).abs().max() / ref.abs().max()).item() < REL_TOL


def test_requires_no_grad():
    conv = torch.nn.Conv2d(4, 4, 3, 1, 1)
    with pytest.raises(RuntimeError, match="inference-only"):
        wg.winograd_conv3x3(torch.randn(1, 4, 5, 5, requires_grad=True), wg.transform_weight(conv.weight), conv.bias, 4)


def test_eligibility():
    assert not wg.winograd_eligible(torch.nn.Conv2d(4, 4, 3, 2, 1))
    assert not wg.winograd_eligible(torch.nn.Conv2d(4, 4, 3, 1, 0))
    assert not wg.winograd_eligible(torch.nn.Conv2d(4, 4, 1, 1, 0))
    assert not wg.winograd_eligible(torch.nn.Conv2d(4, 4, 3, 1, 1, groups=2))


def test_weight_cache_recomputes_after_change():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, 1, 1)
    sd_keys = set(conv.state_dict())
    x = torch.randn(1, 6, 9, 7)
    with torch.no_grad():
        wg.winograd_conv2d(conv, x)
        cache = conv._winograd_cache
        U0 = cache.U
        wg.winograd_conv2d(conv, x)
        assert cache.U is U0  # cached: same weight value
        assert set(conv.state_dict()) == sd_keys  # not a parameter / buffer

        conv.weight.mul_(-2.0)  # in-place change bumps weight._version
        y = wg.winograd_conv2d(conv, x)
        assert cache.U is not U0
        assert torch.allclose(cache.U, wg.transform_weight(conv.weight))
        assert torch.allclose(y, conv(x), atol=1e-5)

        U1 = cache.U
        conv.load_state_dict({"weight": torch.randn(5, 6, 3, 3), "bias": torch.zeros(5)})  # copy_ in place
        y = wg.winograd_conv2d(conv, x)
        assert cache.U is not U1 and torch.allclose(y, conv(x), atol=1e-5)

        conv.weight = torch.nn.Parameter(torch.randn(5, 6, 3, 3))  # new parameter object
        y = wg.winograd_conv2d(conv, x)
        assert torch.allclose(y, conv(x), atol=1e-5)


def test_winograd_pays_only_with_enough_channels_and_pixels():
    assert not wg.winograd_pays(64, 64, 64, 64)  # few channels: the transforms cost more than they save
    assert not wg.winograd_pays(128, 128, 16, 16) and wg.winograd_pays(128, 128, 32, 32)
    assert wg.winograd_pays(320, 160, 256, 256) and not wg.winograd_pays(320, 64, 256, 256)
    assert wg.winograd_pays(320, 320, 4, 4) and wg.winograd_pays(640, 640, 16, 16)


def test_decoder_uses_winograd_only_where_enabled_and_frees_its_cache():
    from nextscale.accel.cpu import WinogradConv2d, disable_cpu_kernels, enable_cpu_kernels
    from nextscale.configs import VQVAEConfig
    from nextscale.models import VQVAE

    torch.manual_seed(0)
    # channels 64 / 128 / 320 at 32 / 16 / 8 px: some decoder convs pay for Winograd, some do not
    vae = VQVAE.from_config(
        VQVAEConfig(
            vocab_size=64,
            z_channels=8,
            ch=64,
            ch_mult=(1, 2, 5),
            num_res_blocks=1,
            v_patch_nums=(1, 2, 4, 8),
            using_sa=False,
        )
    ).eval()
    enable_cpu_kernels(vae)
    sizes = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, a: sizes.__setitem__(m, a[0].shape[-2:]))
        for m in vae.decoder.modules()
        if isinstance(m, WinogradConv2d)
    ]
    f = torch.randn(1, vae.Cvae, 8, 8)
    with torch.no_grad():
        fast = vae.fhat_to_img(f)
        for h in hooks:
            h.remove()
        cached = {m: "_winograd_cache" in m.__dict__ for m in sizes}
        assert any(cached.values()) and not all(cached.values())
        assert all(c == wg.winograd_pays(m.in_channels, m.out_channels, *sizes[m]) for m, c in cached.items())
        assert not any("_winograd_cache" in m.__dict__ for m in vae.encoder.modules())  # encoder stays direct
        disable_cpu_kernels(vae)
        assert not any("_winograd_cache" in m.__dict__ for m in vae.decoder.modules())
        direct = vae.fhat_to_img(f)
    torch.testing.assert_close(fast, direct, atol=1e-4, rtol=0)
