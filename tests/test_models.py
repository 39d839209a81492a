"""Model specification: released layouts, round trips and equivalences on tiny configs."""

import json

import pytest
import torch

from conftest import FIXTURES
from nextscale import build_vae_var
from nextscale.configs import ConfigError, ModelConfig, VARConfig, VQVAEConfig, get_preset
from nextscale.models import VAR, VQVAE, build_from_config
from nextscale.sampling import generate

MANIFESTS = FIXTURES / "official" / "manifests"


@pytest.mark.parametrize(
    "preset,manifest",
    [("d16", "var_d16"), ("d20", "var_d20"), ("d24", "var_d24"), ("d30", "var_d30"), ("d36", "var_d36_512")],
)
def test_presets_equal_released_manifests(preset, manifest):
    cfg = get_preset(preset)
    with torch.device("meta"):
        vae = VQVAE.from_config(cfg.vqvae)
        var = VAR.from_config(cfg.var, vae)
    summary = json.loads((MANIFESTS / "summary.json").read_text())
    for model, name in ((var, manifest), (vae, "vqvae_512" if preset == "d36" else "vqvae")):
        man = json.loads((MANIFESTS / f"{name}.json").read_text())
        sd = model.state_dict()
        assert list(sd) == list(man["keys"]), name
        for k, spec in man["keys"].items():
            assert list(sd[k].shape) == spec["shape"], k
            assert str(sd[k].dtype).removeprefix("torch.") == spec["dtype"], k
        assert sum(p.numel() for p in model.parameters()) == summary[name]["param_count"]
    c = cfg.var
    assert (c.width, c.heads, c.dpr) == (64 * c.depth, c.depth, pytest.approx(0.1 * c.depth / 24))


def test_build_vae_var_reference_keywords_and_no_global_patching():
    before = torch.nn.Linear.reset_parameters
    vae, var = build_vae_var(device="cpu", patch_nums=(1, 2, 3, 4), V=64, Cvae=8, ch=32, num_classes=10, depth=2)
    assert torch.nn.Linear.reset_parameters is before
    assert var.C == 128 and var.num_heads == 2 and not vae.training
    assert not any(p.requires_grad for p in vae.parameters())


def test_config_errors_say_the_fix():
    with pytest.raises(ConfigError, match="did you mean 'depth'"):
        VARConfig.from_dict({"detph": 3})
    with pytest.raises(ConfigError, match="strictly increasing"):
        VQVAEConfig(v_patch_nums=(1, 3, 2))
    with pytest.raises(ConfigError, match="divisible"):
        VARConfig(depth=2, embed_dim=100, num_heads=3)
    with pytest.raises(ConfigError, match="scale schedules differ"):
        ModelConfig(vqvae=VQVAEConfig(v_patch_nums=(1, 2)), var=VARConfig(patch_nums=(1, 2, 3)))
    with pytest.raises(ConfigError, match="unknown preset 'd17'.*d16"):
        get_preset("d17")
    assert ModelConfig.from_dict(get_preset("tiny").to_dict()) == get_preset("tiny")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    vae, var = build_from_config(get_preset("tiny"), seed=0)
    with torch.no_grad():  # make the tiny model's outputs non-trivial (init keeps blocks near identity)
        for p in var.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return vae, var.eval()


def _image(B, seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize("share", [0, 1, 2, 4])
def test_encode_decode_round_trip_all_phi_variants(share):
    cfg = get_preset("tiny").vqvae.replace(share_quant_resi=share)
    torch.manual_seed(0)
    vae = VQVAE.from_config(cfg)
    x = _image(2)
    with torch.no_grad():
        idx = vae.img_to_idxBl(x)
        assert [t.shape for t in idx] == [(2, pn * pn) for pn in cfg.v_patch_nums]
        f = vae.img_to_f(x)
        fhat = vae.quantize.f_to_idxBl_or_fhat(f, to_fhat=True)[-1]
        # tokens -> f_hat reproduces the encoder-side cumulative f_hat, and decoding agrees
        torch.testing.assert_close(vae.idxBl_to_fhat(idx), fhat, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            vae.idxBl_to_img(idx, same_shape=True, last_one=True), vae.fhat_to_img(fhat), atol=1e-4, rtol=0
        )
        # re-encoding the code-sum f_hat's tokens is a fixed point of the nearest-code search at scale 1
        again = vae.quantize.f_to_idxBl_or_fhat(fhat, to_fhat=False)
        assert torch.equal(again[0], idx[0])


def test_quantizer_residual_decreases_with_scales():
    torch.manual_seed(0)
    vae = VQVAE.from_config(get_preset("tiny").vqvae)
    vae.quantize.eini(0.08)
    with torch.no_grad():
        f = vae.img_to_f(_image(4))
        errs = [(f - fh).pow(2).mean().item() for fh in vae.quantize.f_to_idxBl_or_fhat(f, to_fhat=True)]
    # every added scale removes part of the residual: the error never grows, and falls overall
    assert all(b <= a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < errs[0]


def test_znorm_nearest_code_is_cosine_argmax():
    torch.manual_seed(0)
    vae = VQVAE.from_config(get_preset("tiny").vqvae.replace(using_znorm=True))
    z = torch.randn(50, 8)
    w = vae.quantize.embedding.weight
    want = torch.argmax(torch.nn.functional.cosine_similarity(z[:, None], w[None], dim=-1), dim=1)
    assert torch.equal(vae.quantize.nearest_code(z), want)


def test_kv_cache_generation_equals_full_teacher_forcing(tiny):
    vae, var = tiny
    heads = []
    h = var.head.register_forward_hook(lambda m, i, o: heads.append(o.detach()))
    out = generate(
        var, vae, B=2, label_B=torch.tensor([3, 5]), generator=torch.Generator().manual_seed(0), cfg=2.0, top_k=10
    )
    h.remove()
    with torch.no_grad():
        x = vae.quantize.idxBl_to_var_input(out.idx_per_scale)
        full_BLV = var(out.labels, x)  # conditional half
        unc_BLV = var(torch.full_like(out.labels, var.num_classes), x)
    for si, (b, e) in enumerate(var.begin_ends):
        torch.testing.assert_close(heads[si][:2], full_BLV[:, b:e], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(heads[si][2:], unc_BLV[:, b:e], atol=1e-5, rtol=1e-5)
    # f_hat of generation == f_hat rebuilt from its tokens
    torch.testing.assert_close(out.f_hat, vae.idxBl_to_fhat(out.idx_per_scale), atol=1e-5, rtol=1e-5)


def test_batch_of_two_equals_two_batches_of_one(tiny):
    vae, var = tiny
    x = _image(2, seed=3)
    with torch.no_grad():
        idx2 = vae.img_to_idxBl(x)
        idx1 = [vae.img_to_idxBl(x[i : i + 1]) for i in range(2)]
        for s in range(len(idx2)):
            assert torch.equal(idx2[s], torch.cat([idx1[0][s], idx1[1][s]]))
        lab = torch.tensor([1, 8])
        lg2 = var(lab, vae.quantize.idxBl_to_var_input(idx2))
        lg1 = torch.cat([var(lab[i : i + 1], vae.quantize.idxBl_to_var_input(idx1[i])) for i in range(2)])
        torch.testing.assert_close(lg2, lg1, atol=1e-5, rtol=1e-5)
        im2 = vae.idxBl_to_img(idx2, same_shape=True, last_one=True)
        im1 = torch.cat([vae.idxBl_to_img(idx1[i], same_shape=True, last_one=True) for i in range(2)])
        torch.testing.assert_close(im2, im1, atol=1e-4, rtol=0)


def test_class_dropout_only_in_training(tiny):
    vae, var = tiny
    x = vae.quantize.idxBl_to_var_input(vae.img_to_idxBl(_image(2)))
    lab = torch.tensor([1, 2])
    p = 1.0 - 1e-9  # always drop when training
    try:
        with torch.no_grad():
            ev = var.eval()(lab, x, cond_drop_rate=p)
            tr = var.train()(lab, x, cond_drop_rate=p)
            null = var.eval()(torch.full_like(lab, var.num_classes), x)
        assert not torch.allclose(ev, tr)
        torch.testing.assert_close(tr, null)
    finally:
        var.eval()


def test_progressive_forward_prefix_equals_full(tiny):
    vae, var = tiny
    x = vae.quantize.idxBl_to_var_input(vae.img_to_idxBl(_image(2)))
    lab = torch.tensor([0, 4])
    with torch.no_grad():
        full = var(lab, x)
        part = var(lab, x, prog_si=2)
    e = var.begin_ends[2][1]
    assert part.shape == (2, e, var.V)
    torch.testing.assert_close(part, full[:, :e], atol=1e-5, rtol=1e-5)


def test_no_guidance_skips_uncond_half_with_same_tokens(tiny):
    """cfg 0 (a float or a per-scale list of zeros) runs only the B conditional rows; a run forced
    through the guidance path (2B rows, weight 1e-30: (1 + t) * cond - t * uncond == cond in float32)
    draws the same tokens."""
    vae, var = tiny
    rows = []
    h = var.head.register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))

    def run(cfg):
        rows.clear()
        out = generate(var, vae, B=2, label_B=[1, 2], generator=torch.Generator().manual_seed(4), cfg=cfg, top_k=5)
        return out, list(rows)

    try:
        guided, guided_rows = run([1e-30] * 4)
        skipped = [run(0.0), run([0.0] * 4)]
    finally:
        h.remove()
    assert guided_rows == [4] * 4  # every scale through the head with the unconditional half
    for out, r in skipped:
        assert r == [2] * 4, r  # ... which the skip path never computes
        for si, (x, y) in enumerate(zip(out.idx_per_scale, guided.idx_per_scale)):
            assert torch.equal(x, y), f"scale {si}"


def test_guidance_schedules():
    from nextscale.sampling import guidance_weights

    assert guidance_weights(1.5, 4) == [0.0, 0.5, 1.0, 1.5]
    assert guidance_weights(2.0, 3, "constant") == [2.0, 2.0, 2.0]
    assert guidance_weights([0, 1, 2], 3) == [0.0, 1.0, 2.0]


def test_top_k_top_p_masks():
    from nextscale.sampling import sample_top_k_top_p_

    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]]))
    lg = logits.clone()
    sample_top_k_top_p_(lg, top_k=2, generator=torch.Generator().manual_seed(0))
    assert torch.isinf(lg[0, 0, 2:]).all() and torch.isfinite(lg[0, 0, :2]).all()
    lg = logits.clone()
    sample_top_k_top_p_(lg, top_p=0.7, generator=torch.Generator().manual_seed(0))  # keeps 0.5 + 0.3
    assert torch.isfinite(lg[0, 0, :2]).all() and torch.isinf(lg[0, 0, 2:]).all()
    lg = logits.clone()
    idx = sample_top_k_top_p_(lg, top_k=1, top_p=0.1, generator=torch.Generator().manual_seed(0))
    assert idx.item() == 0
