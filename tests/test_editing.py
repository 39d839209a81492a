"""Zero-shot editing (nextscale.editing): kept tokens are the input's at every scale, the extremes
reduce to reconstruction / plain generation, out-painting places the input, bad inputs fail clearly."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from nextscale.editing import (
    NextScaleInpaintPipeline,
    finest_keep_mask,
    make_edit_constraint,
    parse_outpaint,
    scale_keep_masks,
)
from nextscale.errors import NextScaleError
from nextscale.pipelines import NextScalePipeline

R = 64  # tiny and golden models: 64 px, scales (1, 2, 3, 4), one finest token = 16 px


@pytest.fixture(scope="module")
def pipe():
    return NextScalePipeline.from_preset("tiny", seed=0)


@pytest.fixture(scope="module")
def edit(pipe):
    return NextScaleInpaintPipeline(**pipe.components)


def _image(B=1, seed=1):
    """Smooth random images (B, 3, 64, 64) in [0, 1] (many different tokens)."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(B, 3, 8, 8, generator=g), size=R, mode="bilinear").clamp(0, 1)


def _box_mask(B=1, y0=16, y1=48, x0=16, x1=48):
    m = torch.zeros(B, R, R)
    m[:, y0:y1, x0:x1] = 1  # white = regenerate
    return m


def _assert_kept(out_idx, plan):
    for si, (got, want, k) in enumerate(zip(out_idx, plan.input_indices, plan.keep)):
        assert torch.equal(got[k], want[k]), f"kept tokens differ from the input's at scale {si}"


def _sampling(**kw):
    base = dict(guidance_scale=1.5, top_k=0, top_p=0.0, output_type="pt", return_indices=True)
    base.update(kw)
    return base


# ---------------------------------------------------------------- mask rule
def test_mask_rule_per_scale_matches_reference_semantics():
    keep_px = torch.ones(1, 1, R, R, dtype=torch.bool)
    keep_px[:, :, 20:40, 0:64] = False  # rows 20..39 regenerated: finest token rows 1 and 2 touch it
    fine = finest_keep_mask(keep_px, 4)
    assert fine[0].tolist() == [[True] * 4, [False] * 4, [False] * 4, [True] * 4]  # any white pixel regenerates a token
    keep = scale_keep_masks(fine, (1, 2, 3, 4))
    # bilinear (align_corners=False) to 2x2: row means 0.5 -> not > 0.5 -> regenerated; 3x3 middle row only
    assert keep[0].tolist() == [[True]]  # 1x1: forced (<= 3 tokens), as the reference
    assert keep[1].tolist() == [[False] * 4]
    assert keep[2].reshape(3, 3).tolist() == [[True] * 3, [False] * 3, [True] * 3]
    assert torch.equal(keep[3].reshape(4, 4), fine[0])
    # nothing kept -> nothing forced (so all-white == plain generation); keep_scales forces the first k
    none = scale_keep_masks(torch.zeros(1, 4, 4, dtype=torch.bool), (1, 2, 3, 4))
    assert not any(k.any() for k in none)
    ks = scale_keep_masks(torch.zeros(1, 4, 4, dtype=torch.bool), (1, 2, 3, 4), keep_scales=2)
    assert [bool(k.all()) for k in ks] == [True, True, False, False] and not ks[2].any()
    # force rule off: the 1x1 scale follows the bilinear rule
    assert not scale_keep_masks(fine, (1, 2, 3, 4), force_keep_max_tokens=0)[0].any()


def test_constraint_keeps_exact_codes_untouched_elsewhere_and_draws_nothing(pipe):
    emb = pipe.vqvae.quantize.embedding
    inp = [torch.randint(0, 64, (2, pn * pn)) for pn in (1, 2, 3, 4)]
    keep = [torch.rand(2, pn * pn) > 0.5 for pn in (1, 2, 3, 4)]
    c = make_edit_constraint(inp, keep, emb)
    sampled = [(torch.randint(0, 64, (2, pn * pn)), torch.randn(2, pn * pn, 8)) for pn in (1, 2, 3, 4)]  # soft codes
    state = torch.get_rng_state()
    for si, (idx, h) in enumerate(sampled):
        idx2, h2 = c(si, idx, h)
        k = keep[si]
        assert torch.equal(idx2[k], inp[si][k]) and torch.equal(idx2[~k], idx[~k])
        assert torch.equal(h2[k], emb(inp[si])[k]) and torch.equal(h2[~k], h[~k])
    assert torch.equal(torch.get_rng_state(), state)  # no random numbers drawn


# ---------------------------------------------------------------- acceptance on the tiny model
@pytest.mark.parametrize("more_smooth", [False, True])
def test_inpaint_kept_tokens_equal_input_at_every_scale(edit, more_smooth):
    x, m = _image(2), _box_mask(2)
    out = edit(x, m, class_labels=[3, 7], seed=0, more_smooth=more_smooth, **_sampling())
    plan = edit.prepare(x, m)
    _assert_kept(out.indices, plan)
    assert out.images.shape == (2, 3, R, R) and out.labels == [3, 7]
    regen = ~plan.keep[-1]
    assert regen.any() and not torch.equal(out.indices[-1][regen], plan.input_indices[-1][regen])  # something new


def test_class_conditional_edit_changes_only_the_region(edit):
    x, m = _image(1), _box_mask(1, 0, 32, 0, 64)
    a = edit(x, m, class_labels=1, seed=0, **_sampling())
    b = edit(x, m, class_labels=8, seed=0, **_sampling())
    plan = edit.prepare(x, m)
    _assert_kept(a.indices, plan)
    _assert_kept(b.indices, plan)
    assert a.labels == [1] and b.labels == [8]
    # the class reaches the region (on a trained model: the random tiny one barely uses its class):
    # with the same seed, two classes regenerate it differently and keep the rest
    ed = NextScaleInpaintPipeline.from_pretrained("default")
    r = ed.resolution
    x2 = torch.rand(1, 3, r, r, generator=torch.Generator().manual_seed(0))
    m2 = torch.zeros(1, r, r)
    m2[:, :, r // 2 :] = 1
    p2 = ed.prepare(x2, m2)
    kw = dict(guidance_scale=0.0, top_k=0, top_p=0.0, output_type="pt", return_indices=True)
    a2, b2 = (ed(x2, m2, class_labels=c, seed=0, **kw) for c in (1, 8))
    _assert_kept(a2.indices, p2)
    _assert_kept(b2.indices, p2)
    changed = [bool((ia[~k] != ib[~k]).any()) for ia, ib, k in zip(a2.indices, b2.indices, p2.keep) if (~k).any()]
    assert any(changed), "the region's tokens do not depend on the class"
    c = edit(x, m, class_labels=1, seed=0, **_sampling())
    assert all(torch.equal(i, j) for i, j in zip(a.indices, c.indices))  # the seed decides


def test_keep_everything_returns_input_tokens_and_reconstruction(edit):
    x = _image(2)
    with pytest.warns(UserWarning, match="reconstruction"):
        out = edit(x, torch.zeros(2, R, R), class_labels=[0, 5], seed=3, more_smooth=True, **_sampling())
    plan = edit.prepare(x, torch.zeros(2, R, R))
    assert all(torch.equal(a, b) for a, b in zip(out.indices, plan.input_indices))
    with torch.no_grad():
        recon = edit.vqvae.idxBl_to_img(plan.input_indices, same_shape=True, last_one=True).add(1).mul(0.5)
    torch.testing.assert_close(out.images, recon, atol=1e-5, rtol=0)


@pytest.mark.parametrize("more_smooth", [False, True])
def test_regenerate_everything_equals_unconstrained_generation(pipe, edit, more_smooth):
    kw = dict(guidance_scale=2.0, top_k=20, top_p=0.9, more_smooth=more_smooth, output_type="pt", return_indices=True)
    ref = pipe(class_labels=[2, -1], seed=11, **kw)
    with pytest.warns(UserWarning, match="plain generation"):
        out = edit(_image(2), torch.ones(2, R, R), class_labels=[2, -1], seed=11, **kw)
    assert all(torch.equal(a, b) for a, b in zip(out.indices, ref.indices))
    assert torch.equal(out.images, ref.images) and out.labels == ref.labels


def test_keep_scales_extremes_and_variations(pipe, edit):
    x = _image(1)
    plan = edit.prepare(x, keep_scales=4)
    with pytest.warns(UserWarning):
        full = edit(x, keep_scales=4, seed=0, **_sampling())
    assert all(torch.equal(a, b) for a, b in zip(full.indices, plan.input_indices))
    with pytest.warns(UserWarning, match="plain generation"):
        none = edit(x, keep_scales=0, class_labels=4, seed=5, **_sampling())
    ref = pipe(class_labels=4, seed=5, **_sampling())
    assert all(torch.equal(a, b) for a, b in zip(none.indices, ref.indices))
    var = edit(x, keep_scales=2, seed=1, **_sampling())
    assert all(torch.equal(var.indices[si], plan.input_indices[si]) for si in range(2))
    assert not torch.equal(var.indices[3], plan.input_indices[3])
    # with a mask: the first k scales are kept entirely, the mask applies to the finer ones
    p2 = edit.prepare(x, _box_mask(1), keep_scales=3)
    assert all(bool(k.all()) for k in p2.keep[:3]) and torch.equal(p2.keep[3], edit.prepare(x, _box_mask(1)).keep[3])


def test_outpaint_size_placement_and_kept_tokens(edit):
    # a 32 x 64 (w x h) image into the right half of the canvas: margins left=32, top=0, right=0, bottom=0
    half = _image(1)[:, :, :, :32]
    out = edit(
        half[0],
        outpaint=(32, 0, 0, 0),
        class_labels=2,
        seed=0,
        more_smooth=True,
        top_k=0,
        top_p=0.0,
        output_type="pil",
        return_indices=True,
    )
    assert out.images[0].size == (R, R)
    plan = edit.prepare(half[0], outpaint=(32, 0, 0, 0))
    assert torch.equal(plan.image[0, :, :, 32:], half[0].mul(2).sub(1))  # original pixels in place
    assert plan.keep_pixels[0, 0, :, 32:].all() and not plan.keep_pixels[0, 0, :, :32].any()
    assert plan.keep[-1].reshape(4, 4)[:, 2:].all() and not plan.keep[-1].reshape(4, 4)[:, :2].any()
    _assert_kept(out.indices, plan)
    # shift beyond the edge (negative margin) and shrink, with a mask inside the image, as strings
    shifted = edit.prepare(_image(1), _box_mask(1, 0, 16, 0, 16), outpaint="-32,0,32,0")
    assert torch.equal(shifted.image[0, :, :, :32], _image(1)[0, :, :, 32:].mul(2).sub(1))
    assert shifted.keep_pixels[0, 0, :, :32].all() and not shifted.keep_pixels[0, 0, :, 32:].any()
    small = edit.prepare(_image(1), outpaint=(16, 16, 16, 16))
    assert small.keep[-1].reshape(4, 4)[1:3, 1:3].all() and int(small.keep[-1].sum()) == 4
    o = edit(_image(1), outpaint=(16, 16, 16, 16), seed=0, **_sampling())
    _assert_kept(o.indices, small)


def test_resizing_batching_and_input_types(edit, tmp_path):
    # a non-square PIL image is center-cropped to a square and resized; the mask gets the same crop
    big = Image.fromarray((np.random.default_rng(0).random((80, 96, 3)) * 255).astype(np.uint8))
    mask = Image.new("L", (96, 80), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 7, 79), fill=255)  # only in the cropped-away left strip
    plan = edit.prepare(big, mask)
    assert plan.image.shape == (1, 3, R, R) and plan.keep_pixels.all()
    mask.save(tmp_path / "m.png")
    big.save(tmp_path / "i.png")
    p2 = edit.prepare(str(tmp_path / "i.png"), tmp_path / "m.png")
    assert torch.equal(p2.image, plan.image)
    # one image and several labels -> one edit per label; numpy uint8 inputs
    arr = (_image(1)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    out = edit(arr, (_box_mask(1)[0].numpy() * 255).astype(np.uint8), class_labels=[1, 2, 3], seed=0, **_sampling())
    assert out.images.shape[0] == 3 and out.labels == [1, 2, 3]
    # a gray mask is accepted with mask_threshold
    soft = _box_mask(1) * 0.7
    assert torch.equal(
        edit.prepare(_image(1), soft, mask_threshold=0.5).keep[-1], edit.prepare(_image(1), _box_mask(1)).keep[-1]
    )


def test_components_are_shared_and_loading(pipe, tiny_pipe_dir):
    import nextscale

    e = nextscale.NextScaleInpaintPipeline(**pipe.components)
    assert e.var is pipe.var and e.vqvae is pipe.vqvae
    e2 = NextScaleInpaintPipeline.from_pipe(pipe)
    assert e2.var is pipe.var and e2.dtype == pipe.dtype
    e3 = NextScaleInpaintPipeline.from_pretrained(tiny_pipe_dir)
    assert isinstance(e3, NextScaleInpaintPipeline) and e3.resolution == R


# ---------------------------------------------------------------- golden (reference) model
def _golden_edit(g, name="var"):
    from nextscale.models import VAR, VQVAE

    kw = dict(g["config"]["vae"])
    kw["v_patch_nums"] = tuple(kw["v_patch_nums"])
    vae = VQVAE(**kw)
    vae.load_state_dict(g["vae_state_dict"], strict=True)
    kw = dict(g["config"]["var"])
    kw["patch_nums"] = tuple(kw["patch_nums"])
    kw.update(g["config"]["variants"][name])
    var = VAR(vae_local=vae, **kw)
    var.load_state_dict(g[name]["state_dict"], strict=True)
    return NextScaleInpaintPipeline(vae, var)


def test_golden_model_regenerate_all_matches_reference_and_kept_tokens(golden):
    edit = _golden_edit(golden)
    x = golden["input_img"].add(1).mul(0.5)  # (2, 3, 64, 64)
    for case in ("k40_p096", "cfg4_smooth", "uncond_int"):
        ref = golden["var"]["infer"][case]
        a = ref["args"]
        with pytest.warns(UserWarning):
            out = edit(
                x,
                torch.ones(2, R, R),
                class_labels=a["label_B"],
                seed=a["g_seed"],
                guidance_scale=a["cfg"],
                top_k=a["top_k"],
                top_p=a["top_p"],
                more_smooth=a["more_smooth"],
                output_type="pt",
                return_indices=True,
            )
        for si, (got, want) in enumerate(zip(out.indices, ref["idx_per_scale"])):
            assert torch.equal(got, want), f"{case}: tokens differ from the reference at scale {si}"
    plan = edit.prepare(x, _box_mask(2, 0, 40, 8, 64))
    assert all(torch.equal(a, b) for a, b in zip(plan.input_indices, golden["vae_out"]["img_to_idxBl"]))
    out = edit(
        x,
        _box_mask(2, 0, 40, 8, 64),
        class_labels=[1, 7],
        seed=0,
        guidance_scale=4.0,
        top_k=0,
        top_p=0.0,
        more_smooth=True,
        output_type="pt",
        return_indices=True,
    )
    _assert_kept(out.indices, plan)
    # class-conditional editing: another class regenerates the region differently, the rest stays
    other = edit(
        x,
        _box_mask(2, 0, 40, 8, 64),
        class_labels=[4, 4],
        seed=0,
        guidance_scale=4.0,
        top_k=0,
        top_p=0.0,
        more_smooth=True,
        output_type="pt",
        return_indices=True,
    )
    _assert_kept(other.indices, plan)
    assert any(not torch.equal(a, b) for a, b in zip(out.indices, other.indices))


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda e: e(_image(1), torch.zeros(1, 32, 32)), "mask 0 is 32x32 but image 0 is 64x64"),
        (lambda e: e(_image(1), _box_mask(1) * 0.5), "not binary"),
        (lambda e: e(_image(1)), "nothing to edit"),
        (lambda e: e(_image(1), keep_scales=5), "keep_scales must be an integer in 0..4"),
        (lambda e: e(_image(1), keep_scales=-1), "keep_scales"),
        (lambda e: e(_image(1), outpaint=(1, 2, 3)), "four margins"),
        (lambda e: e(_image(1), outpaint="a,b,c,d"), "four integers"),
        (lambda e: e(_image(1), outpaint=(40, 0, 30, 0)), "leaves no room"),
        (lambda e: e(_image(1), outpaint=(64, 0, 0, 0)), r"must be in \(-64, 64\)"),
        (lambda e: e(_image(1), outpaint=(0, 0, 56, 0)), "covers no whole 16-pixel token"),
        (lambda e: e(_image(1), _box_mask(1), class_labels=10), "class 10 is out of range"),
        (lambda e: e(_image(2), _box_mask(1), class_labels=[1, 2, 3]), "3 class labels for 2 images"),
        (lambda e: e(_image(2), _box_mask(3)), "3 masks for a batch of 2"),
        (lambda e: e(_image(1) * 2 - 1, _box_mask(1)), r"\[0, 1\]"),
        (lambda e: e(torch.zeros(1, 4, 64, 64), _box_mask(1)), "must be"),
        (lambda e: e(_image(1), _box_mask(1) * 2), "mask values must be in"),
        (lambda e: e(_image(1), _box_mask(1), mask_threshold=0), "mask_threshold"),
        (lambda e: e(None, _box_mask(1)), "image is required"),
        (lambda e: e("/nonexistent/x.png", _box_mask(1)), "does not exist"),
        (lambda e: e(_image(1), _box_mask(1), top_k=-1), "top_k"),
    ],
)
def test_bad_inputs_raise_clear_errors(edit, call, match):
    with pytest.raises(NextScaleError, match=match):
        call(edit)


def test_parse_outpaint():
    assert parse_outpaint("8, -16,0,4") == (8, -16, 0, 4)
    assert parse_outpaint([1, 2, 3, 4]) == (1, 2, 3, 4) and parse_outpaint(None) is None
    with pytest.raises(NextScaleError):
        parse_outpaint([1.5, 2, 3, 4])


# ---------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("edit")
    im = Image.new("RGB", (64, 64), (200, 50, 50))
    ImageDraw.Draw(im).ellipse((10, 10, 50, 50), fill=(30, 200, 90))
    im.save(d / "in.png")
    m = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(m).rectangle((16, 16, 47, 47), fill=255)
    m.save(d / "mask.png")
    Image.new("L", (64, 64), 0).save(d / "black.png")
    Image.new("L", (32, 32), 255).save(d / "small.png")
    jm = Image.new("RGB", (64, 64), (0, 0, 0))
    ImageDraw.Draw(jm).ellipse((13, 11, 45, 50), fill=(255, 255, 255))
    jm.save(d / "mask.jpg", quality=50)  # JPEG: gray pixels around the edge
    return d


def test_cli_edit_inpaint_outpaint_variations(tiny_pipe_dir, files, capsys):
    from nextscale.app.cli import main

    d = files
    base = ["edit", "--model", str(tiny_pipe_dir), "--image", str(d / "in.png"), "--seed", "0", "--device", "cpu"]
    assert main(base + ["--mask", str(d / "mask.png"), "--class", "3", "--out", str(d / "o.png"), "--compare"]) == 0
    assert Image.open(d / "o.png").size == (R, R) and (d / "o_compare.png").exists()
    assert main(base + ["--outpaint=-16,0,16,0", "--out", str(d / "op.png")]) == 0
    assert Image.open(d / "op.png").size == (R, R)
    assert main(base + ["--keep-scales", "2", "--num", "2", "--out", str(d / "v.png")]) == 0
    assert (d / "v_000.png").exists() and (d / "v_001.png").exists()
    # same seed, same command -> same pixels
    assert main(base + ["--mask", str(d / "mask.png"), "--class", "3", "--out", str(d / "o2.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(d / "o.png")), np.asarray(Image.open(d / "o2.png")))


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--mask", "black.png"], "all black"),
        (["--mask", "small.png"], "mask 0 is 32x32 but image 0 is 64x64"),
        (["--mask", "mask.jpg"], "not binary"),
        ([], "nothing to edit"),
        (["--mask", "mask.png", "--class", "12"], "unknown class id 12"),
        (["--keep-scales", "9"], "--keep-scales must be an integer in 0..4"),
        (["--outpaint", "1,2"], "four margins"),
        (["--mask", "missing.png"], "does not exist"),
    ],
)
def test_cli_edit_errors(tiny_pipe_dir, files, capsys, extra, match):
    from nextscale.app.cli import main

    extra = [str(files / x) if x.endswith((".png", ".jpg")) else x for x in extra]
    rc = main(
        [
            "edit",
            "--model",
            str(tiny_pipe_dir),
            "--image",
            str(files / "in.png"),
            "--device",
            "cpu",
            "--out",
            str(files / "err.png"),
        ]
        + extra
    )
    err = capsys.readouterr().err
    assert rc == 2 and match in err and err.startswith("nextscale: error:")
    assert not (files / "err.png").exists()


def test_cli_gray_mask_with_threshold(tiny_pipe_dir, files):
    from nextscale.app.cli import main

    assert (
        main(
            [
                "edit",
                "--model",
                str(tiny_pipe_dir),
                "--image",
                str(files / "in.png"),
                "--mask",
                str(files / "mask.jpg"),
                "--mask-threshold",
                "0.5",
                "--device",
                "cpu",
                "--out",
                str(files / "t.png"),
            ]
        )
        == 0
    )
    # the CLI is the in-process edit with that threshold (CLI defaults: seed 0, the model's sampling settings)
    from nextscale.editing import NextScaleInpaintPipeline
    from nextscale.imageio import load_image

    ed = NextScaleInpaintPipeline.from_pretrained(tiny_pipe_dir)

    def in_process(mask, threshold):
        return ed(
            load_image(files / "in.png"),
            load_image(mask),
            class_labels=[-1],
            mask_threshold=threshold,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images[0]

    def cli(mask, threshold, out):
        assert (
            main(
                [
                    "edit",
                    "--model",
                    str(tiny_pipe_dir),
                    "--image",
                    str(files / "in.png"),
                    "--mask",
                    str(mask),
                    "--mask-threshold",
                    str(threshold),
                    "--device",
                    "cpu",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        return np.asarray(Image.open(out), dtype=np.float32) / 255

    want = in_process(files / "mask.jpg", 0.5)
    got = np.asarray(Image.open(files / "t.png"), dtype=np.float32) / 255
    assert np.abs(got - want).max() <= 1 / 255 + 1e-6  # PNG rounding only
    # a mask whose tokens depend on the threshold (mask.jpg's gray edge does not move any token): a 0.35-gray
    # token and a 0.75-gray token; 0.5 regenerates only the second, 0.3 both
    gray = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(gray).rectangle((0, 0, 15, 15), fill=90)
    ImageDraw.Draw(gray).rectangle((32, 32, 47, 47), fill=190)
    gray.save(files / "gray.png")
    keep = {
        t: ed.prepare(load_image(files / "in.png"), load_image(files / "gray.png"), mask_threshold=t).keep[-1]
        for t in (0.5, 0.3)
    }
    assert int((~keep[0.5]).sum()) == 1 and int((~keep[0.3]).sum()) == 2
    for t in (0.5, 0.3):
        assert (
            np.abs(cli(files / "gray.png", t, files / f"g{t}.png") - in_process(files / "gray.png", t)).max()
            <= 1 / 255 + 1e-6
        )
