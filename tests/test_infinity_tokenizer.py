"""Infinity's bitwise tokenizer (models/bsq.py) against the official code's golden outputs and release manifests.

Tolerances (fixture README section 7): features / codes atol 1e-5, images atol 2e-4, bits and RNG states exact.
Nothing here is sized to the public fixture: variants, images and cases are read from the file."""

import json

import numpy as np
import pytest
import torch

from nextscale.errors import FieldError, InputError
from nextscale.models.bsq import (
    BSQ_PRESETS,
    BSQVAE,
    BSQConfig,
    MultiScaleBSQ,
    bits_to_codes,
    bits_to_summed,
    bitwise_self_correction,
    grid_to_tokens,
    next_scale_input,
    resize,
    scale_loss_weights,
    tokens_to_grid,
)

FEAT_ATOL, IMG_ATOL = 1e-5, 2e-4


def hw(schedule):
    """The fixture's (1, h, w) triples -> (h, w)."""
    return [(int(h), int(w)) for _, h, w in schedule]


@pytest.fixture(scope="module")
def vaes(infinity_golden):
    out = {}
    for v, rec in infinity_golden["vae"].items():
        m = BSQVAE(BSQConfig.from_reference_args(rec["args"])).eval()
        m.load_state_dict(rec["state_dict"], strict=True)
        out[v] = m
    return out


def close(a, b, atol):
    b = b.to(a.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol:g}"


# ---------------------------------------------------------------------------------------------------------------
# Layout: released manifests and the fixture's state dicts


def vae_manifests(d):
    return sorted(p for p in d.glob("infinity_vae_*.json"))


def test_every_released_tokenizer_has_a_preset(infinity_manifests):
    names = {p.stem for p in vae_manifests(infinity_manifests)}
    assert names and names == set(BSQ_PRESETS)


@pytest.mark.parametrize("name", sorted(BSQ_PRESETS))
def test_preset_layout_equals_manifest(infinity_manifests, name):
    man = json.loads((infinity_manifests / f"{name}.json").read_text())
    cfg = BSQ_PRESETS[name]
    args = man["config"]["vae_model_args"]
    fixed = man["config"]["fixed_in_vae_model"]
    assert (cfg.codebook_dim, cfg.patch_size, list(cfg.ch_mult)) == (
        args["codebook_dim"],
        args["patch_size"],
        args["encoder_ch_mult"],
    )
    assert (cfg.base_ch, cfg.num_res_blocks) == (fixed["base_ch"], fixed["num_res_blocks"])
    with torch.device("meta"):
        m = BSQVAE(cfg)
    sd = m.state_dict()
    params = dict(m.named_parameters())
    buffers = dict(m.named_buffers(remove_duplicate=False))
    assert list(sd) == list(man["keys"])  # names and order
    for k, t in sd.items():
        want = man["keys"][k]
        assert list(t.shape) == want["shape"], k
        assert str(t.dtype).removeprefix("torch.") == want["dtype"], k
        assert ("parameter" if k in params else "buffer") == want["kind"], k
        assert k in params or k in buffers
    assert sum(p.numel() for p in m.parameters()) == man["param_count"]
    assert sorted(k for k in sd if k not in params) == sorted(man["buffer_keys"])
    # the two mask names are one buffer (the reference registers the quantiser twice)
    assert m.quantize is not m.quantizer  # .quantize is the method ...
    assert m._modules["quantize"] is m.quantizer  # ... and the alias is the same module


@pytest.mark.parametrize("d", [1, 6, 8, 14, 16, 32, 63, 64])
def test_bit_mask_values(d):
    mask = MultiScaleBSQ(d).lfq.mask
    assert mask.dtype == torch.int64 and mask.shape == (d,)
    want = [2**i for i in range(d - 1, -1, -1)]
    if d == 64:  # 2^63 wraps in int64, as in the released state dicts
        want[0] = -(2**63)
    assert mask.tolist() == want


def test_fixture_state_dicts_load_strictly(infinity_golden, vaes):
    for v, rec in infinity_golden["vae"].items():
        m = vaes[v]
        assert sum(p.numel() for p in m.parameters()) == rec["param_count"]
        assert list(m.state_dict()) == list(rec["state_dict"])
        assert m.codebook_dim == m.d == rec["args"]["codebook_dim"]
        sd = m.state_dict()
        assert sd["quantizer.lfq.mask"].data_ptr() == sd["quantize.lfq.mask"].data_ptr()


# ---------------------------------------------------------------------------------------------------------------
# Config


def test_config_from_reference_args_and_errors(infinity_golden):
    for rec in infinity_golden["vae"].values():
        a = rec["args"]
        cfg = BSQConfig.from_reference_args(a)
        assert (cfg.codebook_dim, cfg.base_ch, list(cfg.ch_mult), cfg.patch_size) == (
            a["codebook_dim"],
            a["base_ch"],
            a["encoder_ch_mult"],
            a["patch_size"],
        )
        with pytest.raises(FieldError, match="cnn_attention"):
            BSQConfig.from_reference_args({**a, "cnn_attention": "mid"})
        with pytest.raises(FieldError, match="decoder_ch_mult"):
            BSQConfig.from_reference_args({**a, "decoder_ch_mult": [1] + list(a["encoder_ch_mult"])})
    with pytest.raises(FieldError, match="base_ch"):  # 40 channels: neither 32 nor 24 groups
        BSQConfig(codebook_dim=8, base_ch=40, ch_mult=(1, 1), patch_size=2)
    with pytest.raises(FieldError, match="ch_mult"):  # patch 16 needs 5 levels
        BSQConfig(codebook_dim=8, base_ch=32, ch_mult=(1, 1, 1), patch_size=16)
    with pytest.raises(FieldError, match="patch_size"):
        BSQConfig(codebook_dim=8, patch_size=12)
    # GroupNorm rule: 32 groups where possible, else 24 (the hidden fixture's base_ch 48)
    m = BSQVAE(BSQConfig(codebook_dim=4, base_ch=48, ch_mult=(1, 2), patch_size=2))
    assert m.encoder.conv_in.conv.out_channels == 48
    assert m.encoder.down[0].block[0].norm1.norm.num_groups == 24
    assert m.encoder.down[1].block[0].norm2.norm.num_groups == 32


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer parity (every variant x every image of the fixture)


@torch.no_grad()
def test_tokenizer_parity(infinity_golden, vaes):
    for v, m in vaes.items():
        for image, rec in infinity_golden["tokenizer"][v].items():
            x = infinity_golden["inputs"]["images"][image][v]
            sched = hw(rec["vae_scale_schedule"])
            raw = m.encode_raw(x)
            close(raw, rec["raw_features"], FEAT_ATOL)
            out = m.quantizer(raw, sched)
            assert len(out.bits) == len(sched)
            for k in range(len(sched)):
                close(out.lfq_in[k], rec["lfq_in"][k].squeeze(2), FEAT_ATOL)
                close(out.q[k], rec["lfq_quantized"][k].squeeze(2), FEAT_ATOL)
                assert out.bits[k].dtype == torch.int64
                assert torch.equal(out.bits[k], rec["bit_indices"][k].squeeze(1).long()), (v, image, k)
                close(bits_to_codes(rec["bit_indices"][k].squeeze(1)), rec["codes_per_scale"][k].squeeze(2), FEAT_ATOL)
            for k, vi in enumerate(rec["var_inputs"]):
                close(out.var_inputs[k], vi.squeeze(2), FEAT_ATOL)
            close(out.summed_BdHW, rec["quantized_out"], FEAT_ATOL)
            close(m.decode(out.summed_BdHW), rec["decode"], IMG_ATOL)
            bits = [b.squeeze(1) for b in rec["bit_indices"]]
            close(m.bits_to_summed(bits, sched), rec["decode_from_indices_summed_codes"].squeeze(2), FEAT_ATOL)
            close(m.decode_bits(bits, sched), rec["decode_from_indices"], IMG_ATOL)
            # the agreed short API gives the same
            summed, bits2 = m.quantize(raw, sched)
            assert torch.equal(summed, out.summed_BdHW) and all(map(torch.equal, bits2, out.bits))


# ---------------------------------------------------------------------------------------------------------------
# Round trips and equivalences


@torch.no_grad()
def test_decode_bits_equals_decode_of_summed_and_batch_equals_rows(infinity_golden, vaes):
    for v, m in vaes.items():
        for image, rec in infinity_golden["tokenizer"][v].items():
            x = infinity_golden["inputs"]["images"][image][v]
            sched = hw(rec["vae_scale_schedule"])
            summed, bits = m.encode(x, sched)
            # the straight-through codes are within an ulp of the exact ones
            close(m.bits_to_summed(bits, sched), summed, 1e-6)
            close(m.decode_bits(bits, sched), m.decode(summed), IMG_ATOL)
            if x.shape[0] > 1:
                for b in range(x.shape[0]):
                    s_b, bits_b = m.encode(x[b : b + 1], sched)
                    close(s_b, summed[b : b + 1], FEAT_ATOL)
                    assert all(torch.equal(p, q[b : b + 1]) for p, q in zip(bits_b, bits))
                    close(m.decode(s_b), m.decode(summed[b : b + 1]), IMG_ATOL)


@torch.no_grad()
def test_non_square_schedules_and_quantiser_invariants():
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(3, 6, 5, 7, generator=g)
    m = MultiScaleBSQ(6)
    for sched in ([(1, 1), (2, 3), (3, 4), (5, 7)], [(5, 7)], [(1, 2), (1, 7), (5, 7)]):
        out = m(raw, sched)
        assert [tuple(b.shape) for b in out.bits] == [(3, h, w, 6) for h, w in sched]
        assert [tuple(q.shape) for q in out.q] == [(3, 6, h, w) for h, w in sched]
        assert len(out.var_inputs) == len(sched) - 1
        # every quantised position sits on the sphere's corners +-d^-0.5 (straight-through rounding aside)
        for q, bits in zip(out.q, out.bits):
            close(q.abs(), torch.full_like(q, 6**-0.5), 1e-6)
            close(q, bits_to_codes(bits), 1e-6)
        # the summed codes are the codes of the bits, resized and added up (decode_from_indices)
        close(bits_to_summed(out.bits, sched), out.summed_BdHW, 1e-6)
        # the first scale's input is the area average of the raw features
        h0, w0 = sched[0]
        close(out.lfq_in[0], torch.nn.functional.adaptive_avg_pool2d(raw, (h0, w0)), 1e-6)
    with pytest.raises(InputError, match="latent grid"):
        m(raw, [(1, 1), (2, 3)])
    with pytest.raises(InputError, match="scales"):
        bits_to_summed(m(raw, [(5, 7)]).bits, [(1, 1), (5, 7)])


def test_resize_identity_modes_and_layout():
    x = torch.randn(2, 4, 3, 5)
    assert resize(x, (3, 5), "trilinear") is x and resize(x, (3, 5), "area") is x
    y = resize(x, (6, 10), "trilinear")
    assert y.shape == (2, 4, 6, 10)
    # same as the reference's 5-D call
    ref = torch.nn.functional.interpolate(x.unsqueeze(2), size=(1, 6, 10), mode="trilinear").squeeze(2)
    assert torch.equal(y, ref)
    close(resize(x, (1, 2), "area"), torch.nn.functional.adaptive_avg_pool2d(x, (1, 2)), 0.0)
    with pytest.raises(InputError, match="mode"):
        resize(x, (1, 1), "bilinear")


def test_bits_to_codes_values():
    bits = torch.randint(0, 2, (2, 3, 4, 14), generator=torch.Generator().manual_seed(1))
    c = bits_to_codes(bits)
    assert c.shape == (2, 14, 3, 4)
    close(c.norm(dim=1), torch.ones(2, 3, 4), 1e-6)
    close(c, (bits.permute(0, 3, 1, 2).float() * 2 - 1) * 14**-0.5, 1e-7)


def test_tokens_grid_round_trip():
    x = torch.randn(2, 3, 4, 6)
    for patchify in (False, True):
        t = grid_to_tokens(x, patchify)
        assert t.shape == ((2, 6, 12) if patchify else (2, 24, 3))
        assert torch.equal(tokens_to_grid(t, (4, 6), patchify), x)
    # patchified token (0, 0) holds the 2x2 top-left block, channels ordered (bit, dy, dx)
    t = grid_to_tokens(x, True)
    assert torch.equal(t[:, 0], x[:, :, :2, :2].reshape(2, 12))
    assert next_scale_input(x, (2, 2), True).shape == (2, 1, 12)


# ---------------------------------------------------------------------------------------------------------------
# Bitwise self-correction


def run_bsc(rec, patchify):
    a = rec["args"]
    np_rng = np.random.RandomState(a["np_seed"]) if "np_seed" in a else None
    gen = torch.Generator().manual_seed(a["torch_seed"]) if "torch_seed" in a else None
    out = bitwise_self_correction(
        rec["raw_features"],
        hw(rec["vae_scale_schedule"]),
        noise_apply_layers=a["noise_apply_layers"],
        noise_apply_strength=a["noise_apply_strength"],
        noise_apply_requant=bool(a["noise_apply_requant"]),
        patchify=patchify,
        np_rng=np_rng,
        generator=gen,
    )
    return out, gen


def is_patchified(infinity_golden, v):
    return bool(infinity_golden["inf"][v]["kwargs"].get("apply_spatial_patchify", 0))


def test_bsc_parity(infinity_golden):
    for v, cases in infinity_golden["bsc"].items():
        patchify = is_patchified(infinity_golden, v)
        for name, rec in cases.items():
            a = rec["args"]
            if "torch_seed" in a:  # a seeded Generator is what torch.manual_seed(s) leaves on CPU
                assert torch.equal(
                    torch.Generator().manual_seed(a["torch_seed"]).get_state(), rec["torch_rng_state_before"]
                )
            out, gen = run_bsc(rec, patchify)
            close(out.x_BLC_wo_prefix, rec["x_BLC_wo_prefix"], FEAT_ATOL)
            assert len(out.gt_bits) == len(rec["gt_ms_idx_Bl"])
            for k, want in enumerate(rec["gt_ms_idx_Bl"]):
                assert out.gt_bits[k].dtype == torch.int64 and torch.equal(out.gt_bits[k], want.long()), (v, name, k)
            assert [rd["value"] for rd in rec["np_randint"]] == [round(s * 100) for s in out.strengths]
            assert out.strengths == pytest.approx(rec["noise_strengths"], abs=0)
            flipped = [f for f in out.flipped_bits if f is not None]
            if a["noise_apply_requant"]:
                assert len(flipped) == len(rec["pred_bit_indices_requant"])
                for f, want in zip(flipped, rec["pred_bit_indices_requant"]):
                    assert torch.equal(f, want.squeeze(1).long())
            if "torch_rng_state_after" in rec:
                assert torch.equal(gen.get_state(), rec["torch_rng_state_after"]), (v, name)


@torch.no_grad()
def test_bsc_clean_equals_tokenizer_and_no_requant_changes_nothing(infinity_golden, vaes):
    for v, cases in infinity_golden["bsc"].items():
        patchify = is_patchified(infinity_golden, v)
        for name, rec in cases.items():
            sched = hw(rec["vae_scale_schedule"])
            raw = rec["raw_features"]
            clean = bitwise_self_correction(raw, sched, patchify=patchify)
            _, bits = vaes[v].quantize(raw, sched)
            for k, b in enumerate(bits):  # without noise the targets are the tokenizer's bits
                assert torch.equal(clean.gt_bits[k], grid_to_tokens(b.permute(0, 3, 1, 2), patchify))
            a = rec["args"]
            if a["noise_apply_layers"] > 0 and not a["noise_apply_requant"]:
                noisy, _ = run_bsc(rec, patchify)
                assert torch.equal(noisy.x_BLC_wo_prefix, clean.x_BLC_wo_prefix)
                assert all(map(torch.equal, noisy.gt_bits, clean.gt_bits))
                assert any(f is not None and not torch.equal(f, b) for f, b in zip(noisy.flipped_bits, bits))


def test_bsc_batch_equals_rows_and_needs_rngs():
    g = torch.Generator().manual_seed(3)
    raw = torch.randn(3, 4, 6, 8, generator=g)
    sched = [(2, 2), (4, 4), (6, 8)]
    full = bitwise_self_correction(raw, sched, patchify=True)
    assert full.x_BLC_wo_prefix.shape == (3, (16 + 48) // 4, 16)
    for b in range(3):
        row = bitwise_self_correction(raw[b : b + 1], sched, patchify=True)
        close(row.x_BLC_wo_prefix, full.x_BLC_wo_prefix[b : b + 1], 1e-6)
        assert all(torch.equal(p, q[b : b + 1]) for p, q in zip(row.gt_bits, full.gt_bits))
    with pytest.raises(InputError, match="np_rng"):
        bitwise_self_correction(raw, sched, noise_apply_layers=1, noise_apply_strength=0.2)
    with pytest.raises(InputError, match="even"):
        bitwise_self_correction(raw, [(1, 1), (6, 8)], patchify=True)


# ---------------------------------------------------------------------------------------------------------------
# Per-scale loss weights


def test_scale_loss_weights():
    sched = [(1, 1), (2, 2), (4, 4)]
    u = scale_loss_weights(sched)
    assert u.shape == (21,) and torch.allclose(u, torch.full((21,), 1 / 21))
    w = scale_loss_weights(sched, "sqrt_area")
    raw = [4.0] + [2.0] * 4 + [1.0] * 16  # sqrt(l_K / l_k) per token
    assert torch.allclose(w, torch.tensor(raw) / sum(raw))
    assert w.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(scale_loss_weights([(1, 1, 1), (1, 2, 2), (1, 4, 4)], "sqrt_area"), w)  # (t, h, w) too
    with pytest.raises(InputError, match="mode"):
        scale_loss_weights(sched, "area")
