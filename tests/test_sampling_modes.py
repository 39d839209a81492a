"""The opt-in sampling speed-ups (nextscale.accel.sampling_modes): off, or at their neutral
setting, each gives exactly the exact path's tokens; on, each does less work."""

import copy

import pytest
import torch

from nextscale.accel.sampling_modes import ScaleWindowKVCache, pivotal_tokens
from nextscale.configs import get_preset
from nextscale.errors import NextScaleError
from nextscale.models import build_from_config
from nextscale.pipelines import NextScalePipeline
from nextscale.sampling import SamplingSettings, generate

PRESET = get_preset("tiny").replace(
    var=get_preset("tiny").var.replace(patch_nums=(1, 2, 3, 4, 6, 8)),
    vqvae=get_preset("tiny").vqvae.replace(v_patch_nums=(1, 2, 3, 4, 6, 8)),
)
K = 6


def _pair(seed=0):
    vae, var = build_from_config(PRESET, seed=seed)
    with torch.no_grad():  # non-trivial weights (init leaves AdaLN gammas near zero)
        g = torch.Generator().manual_seed(seed + 1)
        for p in var.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return vae.eval(), var.eval()


@pytest.fixture(scope="module")
def pair():
    return _pair()


def _run(pair, seed=0, cfg=2.0, **kw):
    vae, var = pair
    return generate(
        vae=vae, var=var, B=2, label_B=[1, 4], generator=torch.Generator().manual_seed(seed), cfg=cfg, top_k=20, **kw
    )


def _tokens(out):
    return [t.clone() for t in out.idx_per_scale]


def _same(a, b):
    return len(a.idx_per_scale) == len(b.idx_per_scale) and all(
        torch.equal(x, y) for x, y in zip(a.idx_per_scale, b.idx_per_scale)
    )


def _rows_through_blocks(var):
    rows = []
    h = var.blocks[0].register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0] * a[0].shape[1]))
    return rows, h


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neutral_settings_give_the_exact_tokens(pair, seed):
    exact = _run(pair, seed)
    st = SamplingSettings(guidance_scale=2.0, top_k=20, top_p=0.0)
    assert st.is_exact() and not st.replace(guidance_cutoff=1).is_exact()
    assert _same(exact, _run(pair, seed, settings=st.replace(guidance_cutoff=0)))
    assert _same(exact, _run(pair, seed, settings=st.replace(prune_ratio=0.0)))
    # an unlimited budget through the windowed cache, and a prune ratio so small that every token
    # is kept but through the gather / restore path: the same tokens, bit for bit
    assert _same(exact, _run(pair, seed, settings=st.replace(kv_budget=(K, K))))
    assert _same(exact, _run(pair, seed, settings=st.replace(prune_ratio=1e-9, prune_last=3)))
    vae, var = pair
    assert _same(exact, _run(pair, seed, refiner=var, refine_from_scale=3))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_refiner_with_the_same_weights_gives_the_same_tokens_through_its_prefill(pair, k):
    """A different object with the same weights goes through the refiner's prefill (one block-causal
    pass over scales < k): its cache equals the scale-by-scale one up to float summation order."""
    vae, var = pair
    twin = copy.deepcopy(var)
    exact = _run(pair, 5)
    rows, h = _rows_through_blocks(twin)
    got = _run(pair, 5, refiner=twin, refine_from_scale=k)
    h.remove()
    L_k = sum(p * p for p in var.patch_nums[:k])
    assert rows[0] == 4 * L_k  # the prefill: every earlier token, cond + uncond rows, in one pass
    assert _same(exact, got)


def test_refiner_takes_over_the_last_scales(pair):
    vae, var = pair
    _, other = _pair(seed=7)
    exact = _run(pair, 0)
    got = _run(pair, 0, refiner=other, refine_from_scale=4)
    assert all(torch.equal(a, b) for a, b in zip(exact.idx_per_scale[:4], got.idx_per_scale[:4]))
    assert not all(torch.equal(a, b) for a, b in zip(exact.idx_per_scale[4:], got.idx_per_scale[4:]))


def test_guidance_cutoff_skips_the_unconditional_rows_of_the_last_scales(pair):
    vae, var = pair
    exact = _run(pair, 3)
    rows, h = _rows_through_blocks(var)
    cut = _run(pair, 3, settings=SamplingSettings().replace(guidance_scale=2.0, top_k=20, top_p=0.0, guidance_cutoff=2))
    h.remove()
    ls = [p * p for p in var.patch_nums]
    assert rows == [4 * l for l in ls[:-2]] + [2 * l for l in ls[-2:]]
    assert all(torch.equal(a, b) for a, b in zip(exact.idx_per_scale[: K - 2], cut.idx_per_scale[: K - 2]))
    no_cfg = _run(pair, 3, cfg=0.0)
    assert _same(
        no_cfg,
        _run(pair, 3, settings=SamplingSettings().replace(guidance_scale=2.0, top_k=20, top_p=0.0, guidance_cutoff=K)),
    )
    with pytest.raises(NextScaleError, match="guidance_cutoff must be <= the number of scales"):
        _run(pair, 3, settings=SamplingSettings().replace(guidance_scale=2.0, guidance_cutoff=K + 1))


def test_pruning_runs_fewer_tokens_and_still_samples_every_position(pair):
    vae, var = pair
    rows, h = _rows_through_blocks(var)
    out = _run(
        pair,
        1,
        settings=SamplingSettings().replace(guidance_scale=2.0, top_k=20, top_p=0.0, prune_ratio=0.75, prune_last=2),
    )
    h.remove()
    ls = [p * p for p in var.patch_nums]
    assert rows[:-2] == [4 * l for l in ls[:-2]]
    assert rows[-2:] == [4 * -(-l // 4) for l in ls[-2:]]  # a quarter of each pruned scale goes through
    assert [t.shape for t in out.idx_per_scale] == [(2, l) for l in ls]
    assert all(((t >= 0) & (t < var.V)).all() for t in out.idx_per_scale)


def test_pivotal_tokens_pick_the_positions_that_differ_from_the_mean():
    codes = torch.zeros(1, 9, 4)
    codes[0, [2, 7], :] = 5.0
    assert pivotal_tokens(codes, 0.8).tolist() == [[2, 7]]
    assert pivotal_tokens(codes, 0.0).tolist() == [list(range(9))]


def test_kv_budget_evicts_the_middle_scales(pair):
    vae, var = pair
    sizes = []
    real = ScaleWindowKVCache.advance

    def spy(self, l):
        real(self, l)
        sizes.append(sorted({j for chunks in self.chunks for j, _, _ in chunks}))

    ScaleWindowKVCache.advance = spy
    try:
        out = _run(
            pair, 2, settings=SamplingSettings().replace(guidance_scale=2.0, top_k=20, top_p=0.0, kv_budget=(1, 1))
        )
    finally:
        ScaleWindowKVCache.advance = real
    # after scale s the cache keeps scale 0 and scale s (what scale s + 1 attends to besides itself)
    assert sizes == [[0], [0, 1], [0, 2], [0, 3], [0, 4], [0, 5]]
    assert len(out.idx_per_scale) == K


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(guidance_cutoff=-1), "guidance_cutoff must be >= 0"),
        (dict(prune_ratio=1.0), "prune_ratio must be < 1"),
        (dict(prune_last=0), "prune_last must be >= 1"),
        (dict(kv_budget=(1,)), r"kv_budget must be \(first, recent\)"),
        (dict(kv_budget=(1, -1)), "must be >= 0"),
        (dict(top_k=-1), "top_k must be >= 0"),
        (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
        (dict(guidance_schedule="cosine"), "guidance_schedule must be one of linear, constant"),
    ],
)
def test_settings_refuse_bad_values_naming_the_field(kw, msg):
    with pytest.raises(NextScaleError, match=msg):
        SamplingSettings().replace(**kw)


def test_settings_refuse_unknown_keys_with_a_suggestion():
    with pytest.raises(NextScaleError, match="unknown key 'top_kk'; did you mean 'top_k'"):
        SamplingSettings().replace(top_kk=3)


def test_refiner_must_share_tokenizer_and_schedule(pair):
    vae, var = pair
    _, small = build_from_config(get_preset("tiny"), seed=0)  # 4 scales, not 6
    with pytest.raises(NextScaleError, match="refiner's patch_nums"):
        _run(pair, refiner=small, refine_from_scale=2)
    with pytest.raises(NextScaleError, match="needs refine_from_scale"):
        _run(pair, refiner=copy.deepcopy(var))
    with pytest.raises(NextScaleError, match=r"refine_from_scale must be in 0..5"):
        _run(pair, refiner=copy.deepcopy(var), refine_from_scale=6)


def test_pipeline_passes_the_modes_and_a_refiner_pipeline():
    pipe = NextScalePipeline.from_preset(PRESET, seed=0)
    twin = NextScalePipeline(copy.deepcopy(pipe.vqvae), copy.deepcopy(pipe.var))
    kw = dict(class_labels=[2, 3], seed=4, guidance_scale=1.5, top_k=20, output_type="pt", return_indices=True)
    exact = pipe(**kw)
    assert all(torch.equal(a, b) for a, b in zip(exact.indices, pipe(**kw, refiner=twin, refine_from_scale=2).indices))
    fast = pipe(**kw, guidance_cutoff=2, prune_ratio=0.5, kv_budget=(2, 2))
    assert fast.images.shape == exact.images.shape
    other = NextScalePipeline.from_preset(PRESET, seed=9)
    with pytest.raises(NextScaleError, match="another tokenizer"):
        pipe(**kw, refiner=other, refine_from_scale=2)
