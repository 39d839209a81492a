"""Low precision on CPU (nextscale.accel.precision / accel.lowprec): bf16 and int8 paths against the plain fp32
modules, the capability query faked, the fp32 default untouched.

Tolerances (bf16 has an 8-bit significand: 2**-8 = 0.4 % per rounding; docs/speed.md):
- one transformer block in bf16 vs fp32: max error 2 % of the output's range (measured 0.31-0.36 %), and the
  bf16 CPU kernel vs plain bf16 autocast within the same bound (they round at different points);
- teacher-forced logits in bf16: relative L2 error 2 % (measured ~0.5 %); int8: 8 % (measured ~2 %);
- decoded images in bf16 (decoder weights and activations bf16): mean |error| 0.02, max 0.25 on [-1, 1].
"""

import copy

import pytest
import torch

import nextscale.accel.cpu as cpu
import nextscale.accel.precision as P
from nextscale.accel import cpu_kernels_enabled, disable_cpu_kernels, enable_cpu_kernels
from nextscale.accel.lowprec import Int8Linear, disable_int8_linears, enable_int8_linears, int8_enabled
from nextscale.configs import get_preset
from nextscale.errors import FieldError
from nextscale.models import build_from_config
from nextscale.pipelines import FLOAT32_PARTS, NextScalePipeline, cast_weights

NO_BF16 = P.CPUCapabilities("Fake CPU", "AVX2", amx_bf16=False, avx512_bf16=False, vnni=False, avx2=True)
AVX512_BF16 = P.CPUCapabilities("Fake Zen 4", "AVX512", amx_bf16=False, avx512_bf16=True, vnni=True, avx2=True)
AMX = P.CPUCapabilities("Fake Xeon", "AVX512", amx_bf16=True, avx512_bf16=True, vnni=True, avx2=True)


def _pair(seed=0):
    """tiny models with non-trivial weights everywhere (init leaves the AdaLN gammas near zero)."""
    vae, var = build_from_config(get_preset("tiny"), seed=seed)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in var.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return vae.eval(), var.eval()


def _pipe():
    vae, var = _pair()
    return NextScalePipeline(vae, var)


@pytest.fixture
def fake_cpu(monkeypatch):
    """Set the capability query's answer; the warn-once memory is reset around the test."""
    monkeypatch.setattr(P, "_warned", set())

    def use(caps):
        monkeypatch.setattr(P, "cpu_capabilities", lambda: caps)

    return use


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_capability_query_reads_torch_and_cpuinfo(monkeypatch):
    """The one helper asks torch (what its kernels dispatch on) and falls back on /proc/cpuinfo flags."""
    for fn in ("_is_amx_tile_supported", "_is_avx512_bf16_supported", "_is_vnni_supported", "_is_avx2_supported"):
        monkeypatch.setattr(torch.cpu, fn, lambda: False, raising=False)
    monkeypatch.setattr(P, "_cpuinfo", lambda: ("Fake CPU", frozenset({"avx2", "avx512_bf16"})))
    P.cpu_capabilities.cache_clear()
    try:
        caps = P.cpu_capabilities()
        assert caps.model_name == "Fake CPU" and not caps.bf16_fast and not caps.int8_fast  # torch's answer wins
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
        monkeypatch.delattr(torch.cpu, "_is_vnni_supported")  # an older torch: the flags decide
        monkeypatch.setattr(P, "_cpuinfo", lambda: ("Fake CPU", frozenset({"avx2", "avx512_vnni"})))
        P.cpu_capabilities.cache_clear()
        caps = P.cpu_capabilities()
        assert caps.avx512_bf16 and caps.vnni and not caps.amx_bf16
        assert P.fast_precisions(caps) == ("fp32", "bf16", "int8") and "AVX512-BF16" in caps.describe()
    finally:
        P.cpu_capabilities.cache_clear()
    assert P.fast_precisions(NO_BF16) == ("fp32",) and "emulated" in P.precision_advice(NO_BF16)


def test_auto_picks_bf16_only_with_amx_or_a_gpu():
    assert P.resolve_precision("auto", "cpu", caps=NO_BF16) == "fp32"
    assert P.resolve_precision("auto", "cpu", caps=AVX512_BF16) == "fp32"  # faster here too, but never silently
    assert P.resolve_precision("auto", "cpu", caps=AMX) == "bf16"
    assert P.resolve_precision("auto", "cuda", caps=NO_BF16) == "bf16"
    assert P.resolve_precision("bf16", "cpu", caps=NO_BF16) == "bf16"  # an explicit choice is kept
    with pytest.raises(FieldError, match="precision must be one of"):
        P.resolve_precision("int4", "cpu")
    with pytest.raises(FieldError, match="int8 is a CPU mode"):
        P.check_precision("int8", "cuda")


def test_bf16_on_a_cpu_without_bf16_units_warns_once_and_runs(fake_cpu, recwarn):
    """The decision for CPUs without bf16 units: bf16 is not refused (it halves the weights' memory) but warns
    once per process with the reason; auto stays fp32 there, with the exact tokens."""
    fake_cpu(NO_BF16)
    pipe = _pipe()
    exact = pipe(class_labels=[1, 2], seed=0, output_type="pt", return_indices=True, top_k=10)
    assert pipe.set_precision("auto").precision == "fp32" and not recwarn.list
    auto = pipe(class_labels=[1, 2], seed=0, output_type="pt", return_indices=True, top_k=10)
    assert all(torch.equal(a, b) for a, b in zip(exact.indices, auto.indices))
    with pytest.warns(P.LowPrecisionWarning, match="no bf16 units .* slower than fp32"):
        pipe.to(torch.bfloat16)
    assert pipe.precision == "bf16"
    recwarn.clear()
    _pipe().set_precision("bf16")  # once per process
    assert not [w for w in recwarn.list if issubclass(w.category, P.LowPrecisionWarning)]
    out = pipe(class_labels=[1, 2], seed=0, output_type="pt", top_k=10)
    assert out.images.shape == exact.images.shape
    with pytest.warns(P.LowPrecisionWarning, match="no VNNI"):
        _pipe().set_precision("int8")


def test_no_warning_where_the_units_exist(fake_cpu, recwarn):
    fake_cpu(AMX)
    pipe = _pipe().set_precision("auto")
    assert pipe.precision == "bf16" and pipe.weights_dtype == torch.bfloat16
    assert pipe.var.head.weight.dtype == torch.float32  # FLOAT32_PARTS
    pipe.set_precision("int8")
    assert pipe.precision == "int8" and not recwarn.list


def test_bf16_block_kernel_against_plain_modules(monkeypatch):
    """The bf16 CPU block kernel runs under bf16 autocast (counted) and computes the fp32 block within the bf16
    tolerance, as plain bf16 autocast does; its output keeps the float32 residual stream."""
    _, var = _pair()
    blk = var.blocks[0]
    x, cond = torch.randn(1, 200, var.C), torch.randn(1, var.C)
    calls = []
    real = cpu.CPUAdaLNSelfAttn._forward_bf16
    monkeypatch.setattr(cpu.CPUAdaLNSelfAttn, "_forward_bf16", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        exact = blk(x, None, attn_bias=None, mod_B16C=blk.modulation(cond))
        vb = copy.deepcopy(var)
        cast_weights(vb, FLOAT32_PARTS["var"], torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = vb.blocks[0](x, None, attn_bias=None, mod_B16C=vb.blocks[0].modulation(cond))
            enable_cpu_kernels(vb)
            fast = vb.blocks[0](x, None, attn_bias=None, mod_B16C=vb.blocks[0].modulation(cond))
    assert calls and fast.dtype == torch.float32
    h = torch.randn(3, var.C)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # FLOAT32_PARTS compute in fp32 too
        logits = vb.head(h)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, torch.nn.functional.linear(h, vb.head.weight, vb.head.bias))
    rng = exact.abs().max()
    for got in (plain, fast):
        assert float((got.float() - exact).abs().max()) < 0.02 * rng
    assert float((fast - plain.float()).abs().max()) < 0.02 * rng


def test_bf16_pipeline_logits_tokens_and_images_close_to_fp32(fake_cpu, monkeypatch):
    """bf16 sampling: KV cache and attention in bf16, logits float32 and close, most tokens the same, images
    from the bf16 decoder close to the fp32 decoder's."""
    from nextscale.models.kv_cache import KVCache

    kv_dtypes, real_append = set(), KVCache.append
    monkeypatch.setattr(KVCache, "append", lambda self, i, k, v: kv_dtypes.add(k.dtype) or real_append(self, i, k, v))
    fake_cpu(AVX512_BF16)
    pipe = _pipe()
    kw = dict(class_labels=[1, 2, 3, 4], seed=0, output_type="pt", return_indices=True, top_k=10)
    exact = pipe(**kw)
    lab = torch.tensor([1, 2, 3, 4])
    x_in = pipe.vqvae.quantize.idxBl_to_var_input(exact.indices)
    with torch.no_grad():
        logits = pipe.var(lab, x_in)
        f_hat = pipe.vqvae.idxBl_to_fhat(exact.indices)
        pipe.set_precision("bf16")
        with pipe._autocast():
            logits_bf = pipe.var(lab, x_in)
    assert logits_bf.dtype == torch.float32 and _rel(logits_bf, logits) < 0.02
    kv_dtypes.clear()
    low = pipe(**kw)
    assert kv_dtypes == {torch.bfloat16}
    same = sum(int((a == b).sum()) for a, b in zip(exact.indices, low.indices)) / sum(a.numel() for a in low.indices)
    assert same > 0.6  # sampling diverges once one token differs; the first scales agree
    assert torch.equal(exact.indices[0], low.indices[0])
    img, img_bf = pipe.disable_cpu_kernels().decode(f_hat), _pipe().decode(f_hat)  # bf16 vs fp32 decoder
    pipe.enable_cpu_kernels()
    err = (img - img_bf).abs()
    assert float(err.mean()) < 0.02 and float(err.max()) < 0.25


def test_int8_linears_close_and_undone(fake_cpu):
    """int8 block linears: logits within the int8 tolerance; the state dict (fp32 weights) unchanged; the
    cache follows weight changes; autograd and reference_kernels take the exact fp32 linear; undone by
    set_precision / disable_int8_linears / disable_cpu_kernels."""
    fake_cpu(AVX512_BF16)
    pipe = _pipe()
    sd = {k: v.clone() for k, v in pipe.var.state_dict().items()}
    lab = torch.tensor([1, 2])
    out = pipe(class_labels=[1, 2], seed=0, output_type="pt", return_indices=True, top_k=10)
    x_in = pipe.vqvae.quantize.idxBl_to_var_input(out.indices)
    with torch.no_grad():
        exact = pipe.var(lab, x_in)
        pipe.set_precision("int8")
        assert int8_enabled(pipe.var) and isinstance(pipe.var.blocks[0].attn.mat_qkv, Int8Linear)
        q = pipe.var(lab, x_in)
        with cpu.reference_kernels():
            ref = pipe.var(lab, x_in)
    assert 0 < _rel(q, exact) < 0.08
    torch.testing.assert_close(ref, exact, atol=1e-5, rtol=1e-5)  # reference_kernels: the fp32 linears
    train = pipe.var(lab, x_in)  # autograd on: the plain float32 linears
    torch.testing.assert_close(train.detach(), exact, atol=1e-5, rtol=1e-5)
    after = pipe.var.state_dict()
    assert list(after) == list(sd) and all(torch.equal(after[k], sd[k]) for k in sd)
    assert pipe(class_labels=[1, 2], seed=0, output_type="pt").images.shape == out.images.shape
    with torch.no_grad():  # a changed weight re-makes the int8 copy (load_state_dict bumps its version)
        fc1 = pipe.var.blocks[0].ffn.fc1
        before = fc1(x_in.new_ones(3, fc1.in_features))
        pipe.var.load_state_dict({**sd, "blocks.0.ffn.fc1.weight": 2 * sd["blocks.0.ffn.fc1.weight"]})
        doubled = fc1(x_in.new_ones(3, fc1.in_features))
    assert _rel(doubled - fc1.bias, 2 * (before - fc1.bias)) < 0.02
    pipe.var.load_state_dict(sd)
    pipe.set_precision("fp32")
    assert pipe.precision == "fp32" and not int8_enabled(pipe.var) and cpu_kernels_enabled(pipe.var)
    again = pipe(class_labels=[1, 2], seed=0, output_type="pt", return_indices=True, top_k=10)
    assert all(torch.equal(a, b) for a, b in zip(out.indices, again.indices))
    enable_int8_linears(pipe.var)
    disable_int8_linears(pipe.var)
    assert type(pipe.var.blocks[0].ffn.fc1) is cpu.SmallRowsLinear and type(pipe.var.blocks[0].attn.mat_qkv) is (
        torch.nn.Linear
    )
    enable_int8_linears(pipe.var)
    disable_cpu_kernels(pipe.var)
    assert not cpu_kernels_enabled(pipe.var) and not int8_enabled(pipe.var)


def test_fp32_stays_the_default_and_exact():
    pipe = NextScalePipeline.from_pretrained("default")
    assert pipe.precision == "fp32" and pipe.dtype == torch.float32 and not int8_enabled(pipe.var)
    a = pipe(class_labels=[3, 7], seed=0, output_type="pt", return_indices=True)
    b = pipe.set_precision("fp32")(class_labels=[3, 7], seed=0, output_type="pt", return_indices=True)
    assert all(torch.equal(x, y) for x, y in zip(a.indices, b.indices)) and torch.equal(a.images, b.images)


def test_cli_dtype_int8_auto_and_info(tmp_path, capsys, fake_cpu):
    from nextscale.app.cli import main
    from nextscale.app.cli_args import device_dtype

    fake_cpu(AMX)
    assert device_dtype("cpu", "auto") == ("cpu", torch.bfloat16)
    fake_cpu(AVX512_BF16)
    assert device_dtype("cpu", "auto") == ("cpu", torch.float32) and device_dtype("cpu", "int8")[1] == torch.float32

    assert main(["info"]) == 0
    assert "fast precisions on this CPU: fp32" in capsys.readouterr().out
    out = tmp_path / "s.png"
    assert main(["sample", "--class", "1", "--dtype", "int8", "--device", "cpu", "--out", str(out)]) == 0
    assert out.exists()
