"""Infinity text-to-image sampling (nextscale.sampling_t2i) against the official sampler's recorded values
(fixture README sections 4.4, 4.6, 5.5, 7): the bit sampler and the guidance arithmetic exactly, then the loop."""

from dataclasses import dataclass
from typing import List

import pytest
import torch

from nextscale.errors import InputError
from nextscale.models.bsq import BSQVAE, BSQConfig
from nextscale.sampling_t2i import (
    RunningSum,
    cfg_insertion,
    guide_hidden,
    guide_logits,
    guided_text,
    patchify_bits,
    per_scale_values,
    sample_bits_,
    to_uint8_bgr,
    unpatchify_bits,
)
from nextscale.schedules import tokenizer_schedule


@dataclass
class _Text:  # the TextFeatures fields (models/infinity.py); the helpers only need these names
    kv_compact: torch.Tensor
    lens: List[int]
    cu_seqlens: torch.Tensor
    max_seqlen: int


def _cases(g):
    for V, cases in g["infer"].items():
        for name, rec in cases.items():
            yield V, name, rec


def _text(g, name):
    t = g["inputs"]["texts"][name]
    return _Text(t["kv_compact"], list(t["lens"]), t["cu_seqlens_k"], t["max_seqlen_k"])


def _patchify(g, V):
    return bool(g["inf"][V]["kwargs"]["apply_spatial_patchify"])


# ---------------------------------------------------------------- part 1: no model needed


def test_sampler_reproduces_every_recorded_scale(infinity_golden):
    """From the recorded sampler input and generator state: the same in-place mask, bits and final state."""
    n = 0
    for V, name, rec in _cases(infinity_golden):
        for k, ps in enumerate(rec["per_scale"]):
            logits = ps["sampler_in"].clone()
            gen = torch.Generator().set_state(ps["rng_state_before"])
            bits = sample_bits_(logits, top_k=ps["sampler_top_k"], top_p=ps["sampler_top_p"], generator=gen)
            where = f"{V}.{name} scale {k}"
            assert torch.equal(logits, ps["sampler_filtered"]), where
            assert bits.dtype == torch.int64 and torch.equal(bits, ps["sampled"]), where
            assert torch.equal(gen.get_state(), ps["rng_state_after"]), where
            n += 1
    assert n > 0


def test_guidance_and_temperature_arithmetic_is_exact(infinity_golden):
    """get_logits_out -> sampler_in: logits * (1/tau), then cfg * cond + (1 - cfg) * uncond, bit for bit."""
    for V, name, rec in _cases(infinity_golden):
        B = rec["B"]
        for k, ps in enumerate(rec["per_scale"]):
            out = guide_logits(ps["get_logits_out"], B, rec["cfg_list"][k], rec["tau_list"][k])
            assert torch.equal(out.reshape(B, -1, 2), ps["sampler_in"]), f"{V}.{name} scale {k}"


def test_guidance_form_matters_at_the_last_bit():
    """uncond + cfg * (cond - uncond) is not the reference's arithmetic; 1/tau is not /tau."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 50, 8, generator=g) * 3
    ours = guide_logits(x, 2, 3.0, 0.7)
    other = x[2:] / 0.7 + 3.0 * (x[:2] / 0.7 - x[2:] / 0.7)
    assert torch.allclose(ours, other, atol=1e-5) and not torch.equal(ours, other)
    assert torch.equal(guide_logits(x[:2], 2, 3.0, 0.7), x[:2] * (1 / 0.7))  # bs == B: temperature only


def test_hidden_guidance_copies_the_mix_to_both_halves():
    h = torch.randn(4, 3, 5)
    out = guide_hidden(h, 2.5)
    assert torch.equal(out[:2], out[2:]) and torch.equal(out[:2], 2.5 * h[:2] + (1 - 2.5) * h[2:])


def test_global_generator_equals_a_seeded_generator(infinity_golden):
    """The reference's g_seed=None uses torch.manual_seed's global generator: our explicit
    Generator().manual_seed(s) starts in the same state."""
    found = 0
    for V, name, rec in _cases(infinity_golden):
        if rec["args"].get("g_seed") is None and rec["args"].get("torch_seed") is not None:
            s = rec["args"]["torch_seed"]
            assert torch.equal(torch.Generator().manual_seed(s).get_state(), rec["per_scale"][0]["rng_state_before"])
            saved = torch.get_rng_state()
            try:
                torch.manual_seed(s)
                assert torch.equal(torch.get_rng_state(), rec["per_scale"][0]["rng_state_before"])
            finally:
                torch.set_rng_state(saved)
            found += 1
    assert found > 0


def test_uint8_bgr_compat_output(infinity_golden):
    for V, name, rec in _cases(infinity_golden):
        assert torch.equal(to_uint8_bgr(rec["decoded"]), rec["img"]), f"{V}.{name}"


def test_unpatchify_matches_recorded_bits(infinity_golden):
    """Sampled transformer-layout bits -> tokenizer-layout bits (pixel_shuffle(2) for the patch-8 variant)."""
    for V, name, rec in _cases(infinity_golden):
        p = _patchify(infinity_golden, V)
        for k, ps in enumerate(rec["per_scale"]):
            _, h, w = rec["scale_schedule"][k]
            bits = unpatchify_bits(ps["sampled"].view(rec["B"], h, w, -1), p)
            assert torch.equal(bits, ps["bits"].squeeze(1)), f"{V}.{name} scale {k}"
            assert torch.equal(bits, rec["bits_per_scale"][k].squeeze(1))
            assert torch.equal(patchify_bits(bits, p), ps["sampled"].view(rec["B"], h, w, -1))


def test_guided_text_rows(infinity_golden):
    """The doubled text input: conditional rows, then cfg_uncond[:lens[b]] per row or the negative prompt."""
    g = infinity_golden
    for V, name, rec in _cases(g):
        text = _text(g, rec["args"]["text"])
        if any(c != 1 for c in rec["cfg_list"]):
            neg = rec["args"].get("negative")
            t2 = guided_text(text, g["inf"][V]["state_dict"]["cfg_uncond"], _text(g, neg) if neg else None)
            lens = text.lens + (_text(g, neg).lens if neg else text.lens)
            assert t2.lens == lens and t2.max_seqlen == max(lens)
            assert t2.cu_seqlens.dtype == torch.int32
            assert t2.cu_seqlens.tolist() == [0] + torch.tensor(lens).cumsum(0).tolist()
        else:
            t2 = text
        assert torch.equal(t2.kv_compact, rec["text_norm_in"]), f"{V}.{name}"


def test_one_negative_row_serves_every_image():
    t = _Text(torch.randn(7, 4), [3, 4], torch.tensor([0, 3, 7], dtype=torch.int32), 4)
    neg = _Text(torch.randn(2, 4), [2], torch.tensor([0, 2], dtype=torch.int32), 2)
    t2 = guided_text(t, torch.zeros(8, 4), neg)
    assert t2.lens == [3, 4, 2, 2] and torch.equal(t2.kv_compact[7:], neg.kv_compact.repeat(2, 1))
    with pytest.raises(InputError, match="negative_text"):
        guided_text(t, torch.zeros(8, 4), _Text(torch.randn(6, 4), [2, 2, 2], torch.zeros(4, dtype=torch.int32), 2))


def test_per_scale_values_and_their_errors():
    assert per_scale_values(3, 4, "cfg_list") == [3.0] * 4
    assert per_scale_values([1, 2.5, 4], 3, "cfg_list") == [1.0, 2.5, 4.0]
    assert per_scale_values(torch.tensor([0.5, 1.0]), 2, "tau_list", positive=True) == [0.5, 1.0]
    with pytest.raises(InputError, match="cfg_list"):
        per_scale_values([1, 2], 3, "cfg_list")
    with pytest.raises(InputError, match="tau_list"):
        per_scale_values([1, 0.0], 2, "tau_list", positive=True)
    with pytest.raises(InputError, match="tau_list"):
        per_scale_values("hot", 2, "tau_list", positive=True)
    with pytest.raises(InputError, match=r"cfg_list\[1\]"):
        per_scale_values([1, float("nan")], 2, "cfg_list")


def test_cfg_insertion_layer_parsing():
    assert cfg_insertion(0, 4) == (True, [])
    assert cfg_insertion([-1], 4) == (False, [3])
    assert cfg_insertion([0, -3, -1], 4) == (True, [1, 3])
    for bad in ([], [1], [-4], [0.5], True):
        with pytest.raises(InputError, match="cfg_insertion_layer"):
            cfg_insertion(bad, 4)


def test_sampler_top_k_1_is_greedy_and_top_k_900_is_a_no_op():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 40, 2, generator=g)
    greedy = sample_bits_(x.clone(), top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy, x.argmax(-1))
    a, b = x.clone(), x.clone()
    ba = sample_bits_(a, top_k=900, generator=torch.Generator().manual_seed(1))
    bb = sample_bits_(b, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, x) and torch.equal(ba, bb)


def _vae(g, V):
    vae = BSQVAE(BSQConfig.from_reference_args(g["vae"][V]["args"]))
    vae.load_state_dict(g["vae"][V]["state_dict"], strict=True)
    return vae.eval()


@torch.no_grad()
def test_recorded_bits_give_the_recorded_codes_inputs_sum_and_image(infinity_golden):
    """The model-free half of the loop: bits -> codes -> running sum -> next-scale inputs (exact), -> image."""
    g = infinity_golden
    for V in g["infer"]:
        vae, p = _vae(g, V), _patchify(g, V)
        for name, rec in g["infer"][V].items():
            tok = tokenizer_schedule([s[1:] for s in rec["scale_schedule"]], p)
            assert tok == [tuple(s[1:]) for s in rec["vae_scale_schedule"]]
            rs = RunningSum(tok, p)
            for k, ps in enumerate(rec["per_scale"]):
                codes = rs.add(rec["bits_per_scale"][k].squeeze(1))
                assert torch.equal(codes, ps["codes"].squeeze(2)), f"{V}.{name} scale {k}"
                if k + 1 < len(tok):
                    assert torch.equal(rs.next_input(k + 1), ps["next_scale_input"]), f"{V}.{name} scale {k}"
            assert torch.equal(rs.summed_BdHW, rec["summed_codes"]), f"{V}.{name}"
            if rec["summed_codes"].shape[-1] <= 4:  # decoding the big ones costs seconds; the tokenizer tests do it
                torch.testing.assert_close(vae.decode(rs.summed_BdHW), rec["decoded"], atol=2e-4, rtol=0)
