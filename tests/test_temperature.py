"""``temperature`` (issue #22 item 7): one field of ``SamplingSettings`` and its use in the two loops.

It reaches every layer without an edit there: the pipelines and editing (keywords come from the
settings' fields), the CLI flag (generated), the demo widget (generated) and ``sample_fid.json``
(every setting recorded). 1 is the exact reference path; other values change the distribution the
expected way; a per-scale tuple must have one value per scale.
"""

import json

import numpy as np
import pytest
import torch

from nextscale.errors import FieldError
from nextscale.sampling import SamplingSettings, generate


def test_temperature_one_is_the_golden_parity_path(golden):
    """temperature=1 (and one 1 per scale) gives exactly the reference's tokens, f_hat and RNG state."""
    from test_golden import ATOL, SMOOTH_ATOL, _case_call, _vae, _var

    vae = _vae(golden)
    for name in ("var", "var_shared"):
        var = _var(golden, name, vae).eval()
        for case, ref in golden[name]["infer"].items():
            a = ref["args"]
            K = len(var.patch_nums)
            for tau in (1.0, (1.0,) * K):
                gen = torch.Generator().manual_seed(a["g_seed"]) if a["g_seed"] is not None else None
                lab = _case_call(var, a)
                out = generate(
                    var,
                    vae,
                    B=a["B"],
                    label_B=lab,
                    generator=gen,
                    cfg=a["cfg"],
                    top_k=a["top_k"],
                    top_p=a["top_p"],
                    more_smooth=a["more_smooth"],
                    temperature=tau,
                )
                for si, (got, want) in enumerate(zip(out.idx_per_scale, ref["idx_per_scale"])):
                    assert torch.equal(got, want), f"{name}/{case} tau={tau}: tokens differ at scale {si}"
                atol = SMOOTH_ATOL if a["more_smooth"] else ATOL
                torch.testing.assert_close(out.f_hat, ref["f_hat_final"], atol=atol, rtol=ATOL)
                if gen is not None:
                    assert torch.equal(gen.get_state(), ref["rng_state_after"]), f"{name}/{case}"


@pytest.fixture(scope="module")
def default_pipe():
    from nextscale.pipelines import NextScalePipeline

    return NextScalePipeline.from_pretrained("default")


class _Stop(Exception):
    pass


def _first_scale_tokens(pipe, tau, n=400, seed=0, all_scales=False):
    """Scale-1 tokens of ``n`` images of class 3 (no guidance, no filter): the one-token scale whose
    context (the class) is the same for every temperature (the loop stops there unless ``all_scales``);
    with ``all_scales`` also every scale's tokens."""
    got = {}

    def stop(si, pn, f_hat, idx_Bl):
        got.setdefault("first", idx_Bl.reshape(-1).clone())
        if not all_scales:
            raise _Stop

    g = torch.Generator().manual_seed(seed)
    try:
        out = generate(
            pipe.var, pipe.vqvae, n, [3] * n, generator=g, cfg=0.0, top_k=0, top_p=0.0, temperature=tau, callback=stop
        ).idx_per_scale
    except _Stop:
        out = None
    return got["first"], out


def _entropy(tokens, V):
    p = torch.bincount(tokens, minlength=V).float()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def test_lower_temperature_sharpens_higher_flattens(default_pipe):
    """On a fixed-seed batch: the sampled tokens' entropy grows with the temperature and their agreement
    with the argmax token falls (the trained default model; scale 1, one token per image)."""
    V = default_pipe.var.V
    argmax = int(_first_scale_tokens(default_pipe, 1e-3, n=8)[0].unique().item())  # tau -> 0: the argmax
    ent, agree = {}, {}
    for tau in (0.5, 1.0, 2.0):
        tok, _ = _first_scale_tokens(default_pipe, tau)
        ent[tau], agree[tau] = _entropy(tok, V), float((tok == argmax).float().mean())
    assert ent[0.5] < ent[1.0] < ent[2.0], ent
    assert agree[0.5] > agree[1.0] > agree[2.0], agree
    # the last scale (many tokens, its context differs per run): still sharper at lower temperature
    last = {
        tau: _entropy(_first_scale_tokens(default_pipe, tau, n=32, all_scales=True)[1][-1].reshape(-1), V)
        for tau in (0.5, 2.0)
    }
    assert last[0.5] < last[2.0], last


def test_per_scale_temperature_changes_only_its_scales_and_is_length_checked(default_pipe):
    K = len(default_pipe.patch_nums)
    _, exact = _first_scale_tokens(default_pipe, 1.0, n=16, all_scales=True)
    _, late = _first_scale_tokens(default_pipe, (1.0,) * (K - 1) + (3.0,), n=16, all_scales=True)
    # the draws per scale are the same count whatever the probabilities: earlier scales are untouched
    assert all(torch.equal(a, b) for a, b in zip(exact[:-1], late[:-1]))
    assert not torch.equal(exact[-1], late[-1])
    with pytest.raises(FieldError, match=f"temperature has 2 values but the model samples {K} scales"):
        _first_scale_tokens(default_pipe, (1.0, 0.5), n=2)
    for bad in (0.0, -1.0, float("nan"), (1.0, 0.0), "hot"):
        with pytest.raises(FieldError, match="^temperature must be"):
            SamplingSettings().replace(temperature=bad)


def test_pipeline_and_editing_take_it_by_name(default_pipe):
    from nextscale.editing import NextScaleInpaintPipeline

    kw = dict(class_labels=[1, 2], seed=5, output_type="pt", return_indices=True)
    base = default_pipe(**kw)
    one = default_pipe(**kw, temperature=1.0)
    assert all(torch.equal(a, b) for a, b in zip(base.indices, one.indices))
    cold = default_pipe(**kw, temperature=0.3)
    assert cold.indices[-1].shape == base.indices[-1].shape and not torch.equal(cold.indices[-1], base.indices[-1])
    edit = NextScaleInpaintPipeline.from_pipe(default_pipe)
    img = torch.rand(3, default_pipe.resolution, default_pipe.resolution)
    white = torch.ones(default_pipe.resolution, default_pipe.resolution)
    with pytest.warns(UserWarning, match="keeps nothing"):
        e = edit(img, white, class_labels=[1, 2], seed=5, output_type="pt", return_indices=True, temperature=0.3)
    assert all(torch.equal(a, b) for a, b in zip(e.indices, cold.indices))  # all-white mask = plain generation


def test_ar_baseline_honours_it():
    from nextscale.models.ar import ARConfig, ARTransformer
    from nextscale.sampling_ar import generate_ar

    torch.manual_seed(0)
    m = ARTransformer(ARConfig(depth=1, embed_dim=32, num_heads=1, num_classes=10, side=2, vocab_size=16)).eval()

    def run(**kw):
        return generate_ar(m, None, 64, [0] * 64, generator=torch.Generator().manual_seed(1), **kw).idx_BL

    assert torch.equal(run(), run(temperature=1.0))
    assert not torch.equal(run(), run(temperature=0.05))
    with pytest.raises(FieldError, match="temperature has 3 values but the model samples 4"):
        run(temperature=(1.0, 1.0, 1.0))


def test_it_reaches_the_cli_flag_the_demo_widget_and_sample_fid_json(default_pipe, tiny_pipe_dir, tmp_path, capsys):
    from nextscale.app.cli import build_parser, main
    from nextscale.app.cli_args import config_from_args
    from nextscale.app.commands import EditCommand, SampleCommand
    from nextscale.app.demo import DemoBackend, sampling_fields

    # the CLI: a flag, one number or one per scale, checked with the flag's name
    p = build_parser()
    assert (
        config_from_args(SampleCommand, p.parse_args(["sample", "--temperature", "0.5"])).sampling["temperature"] == 0.5
    )
    per = config_from_args(EditCommand, p.parse_args(["edit", "--image", "x", "--temperature", "1", "0.5"]))
    assert per.sampling["temperature"] == (1.0, 0.5)
    assert main(["sample", "--temperature", "0", "--out", str(tmp_path / "t.png")]) == 2
    assert "--temperature must be > 0" in capsys.readouterr().err
    assert main(["sample", "--temperature", "0.5", "--out", str(tmp_path / "t.png"), "--device", "cpu"]) == 0
    # the demo: a widget, and its value reaches the pipeline
    assert "temperature" in [f.name for _, f in sampling_fields()]
    backend = DemoBackend(default_pipe)
    vals = backend.sampling_args(guidance_scale=0.0, top_k=0, top_p=0.0, temperature=0.4)
    *_, (img, _, status) = list(backend.generate("3", 7, False, 1, *vals))
    want = default_pipe(
        class_labels=[3], guidance_scale=0.0, top_k=0, top_p=0.0, temperature=0.4, seed=7, output_type="pil"
    )
    assert np.array_equal(np.asarray(img), np.asarray(want.images[0]))
    with pytest.raises(Exception, match="temperature must be <= 5"):
        next(backend.generate("3", 7, False, 1, *backend.sampling_args(temperature=50.0)))
    # sample-fid: recorded in sample_fid.json, and the run no longer claims the plain protocol
    out = tmp_path / "fid"
    argv = ["sample-fid", "--model", str(tiny_pipe_dir), "--out", str(out), "--per-class", "1", "--num-classes", "2"]
    assert main(argv + ["--temperature", "0.7", "--no-progress", "--no-npz", "--device", "cpu"]) == 0
    meta = json.loads((out / "sample_fid.json").read_text())
    assert meta["settings"]["temperature"] == 0.7 and meta["protocol"] == "var-readme+custom"
    capsys.readouterr()
    assert main(argv + ["--no-progress", "--no-npz", "--device", "cpu"]) == 2  # resuming with another temperature
    assert "holds samples made with protocol='var-readme+custom'" in capsys.readouterr().err
