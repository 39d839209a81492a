"""Evaluation: Fréchet distance, IS, precision/recall, the FID Inception module, npz/stats I/O,
the `fid` command and reconstruction metrics. (sample-fid: tests/test_evaluation_sample.py)"""

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nextscale.errors import NextScaleError
from nextscale.evaluation import (
    FIDInceptionV3,
    NpzArrayReader,
    ReconstructionMetrics,
    evaluate,
    extract_features,
    feature_statistics,
    frechet_distance,
    inception_score,
    load_fid_inception,
    load_npz_stats,
    manifold_radii,
    precision_recall,
    psnr,
    resize_bilinear_tf1,
    resolve_inception_weights,
    save_stats,
    ssim,
    write_samples_npz,
)
from nextscale.evaluation.inception import INCEPTION_WEIGHTS_ENV, INCEPTION_WEIGHTS_FILE

MANIFEST = Path(__file__).parent / "fixtures" / "inception_manifest.json"


def _random_orthogonal(d, rng):
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


# ---------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_closed_form_commuting_gaussians(method):
    # Sigma1 = Q diag(a) Q^T, Sigma2 = Q diag(b) Q^T  =>  FD = |mu1-mu2|^2 + sum (sqrt a - sqrt b)^2
    rng = np.random.default_rng(0)
    d = 16
    q = _random_orthogonal(d, rng)
    a, b = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_one_dimensional_and_symmetric(method):
    # 1-D: FD(N(m1, s1^2), N(m2, s2^2)) = (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]], method=method) == pytest.approx(4.0 + 1.0)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(200, 8)), rng.normal(size=(300, 8)) * 2 + 1
    m1, s1 = feature_statistics(x)
    m2, s2 = feature_statistics(y)
    f12 = frechet_distance(m1, s1, m2, s2, method=method)
    assert f12 == pytest.approx(frechet_distance(m2, s2, m1, s1, method=method), rel=1e-9)
    assert frechet_distance(m1, s1, m1, s1, method=method) == pytest.approx(0.0, abs=1e-9)


def test_frechet_methods_agree_on_general_covariances():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(64, 32)), rng.normal(size=(64, 32))
    s1, s2 = a.T @ a / 64, b.T @ b / 64 + 0.1 * np.eye(32)  # non-commuting
    mu = np.zeros(32)
    assert frechet_distance(mu, s1, mu, s2, method="eigh") == pytest.approx(
        frechet_distance(mu, s1, mu, s2, method="sqrtm"), rel=1e-8
    )


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_near_singular_covariances_finite_and_correct(method):
    # 10 samples in 64 dims: the covariance has rank 9. Shifting the set by delta leaves the
    # covariance unchanged, so FD must be exactly |delta|^2 -- the sqrt term must equal tr(Sigma).
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(10, 64)) * rng.uniform(0.1, 3.0, 64)
    delta = rng.normal(size=64)
    mu, sigma = feature_statistics(feats)
    mu2, sigma2 = feature_statistics(feats + delta)
    assert np.linalg.matrix_rank(sigma) == 9
    fd = frechet_distance(mu, sigma, mu2, sigma2, method=method)
    assert np.isfinite(fd)
    assert fd == pytest.approx(float(delta @ delta), rel=1e-5)
    # a set against itself: 0
    assert frechet_distance(mu, sigma, mu, sigma, method=method) == pytest.approx(0.0, abs=1e-4 * np.trace(sigma))


def test_frechet_zero_covariance_uses_eps_fallback():
    # sigma1 = 0 (all samples identical) vs sigma2 = I: FD = |delta|^2 + tr(I). sqrtm(0 @ I) is
    # singular; the eps*I fallback keeps it finite (error ~ 2 d sqrt(eps)).
    d = 8
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    expected = d * 0.25 + d
    assert frechet_distance(mu1, np.zeros((d, d)), mu2, np.eye(d), method="sqrtm") == pytest.approx(expected, abs=2e-2)
    assert frechet_distance(mu1, np.zeros((d, d)), mu2, np.eye(d), method="eigh") == pytest.approx(expected, abs=1e-9)


def test_frechet_rejects_mismatched_and_nonfinite():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError):
        frechet_distance(np.array([np.nan, 0]), np.eye(2), np.zeros(2), np.eye(2))


# ---------------------------------------------------------------------------------------------
# Inception Score
# ---------------------------------------------------------------------------------------------


def test_inception_score_known_answers():
    c, splits = 20, 10
    labels = np.arange(c * splits * 3) % c  # every split holds every class equally often
    confident = np.full((len(labels), c), -50.0)
    confident[np.arange(len(labels)), labels] = 50.0
    mean, std = inception_score(confident, splits=splits)
    assert mean == pytest.approx(c, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    # everything predicted as the same class: IS = 1
    same = np.zeros_like(confident)
    same[:, 3] = 50.0
    assert inception_score(same, splits=splits)[0] == pytest.approx(1.0, abs=1e-9)
    # uniform predictions: IS = 1
    assert inception_score(np.zeros((40, c)), splits=4)[0] == pytest.approx(1.0)
    # probabilities: half the samples sure of class 0, half split 50/50 between 0 and 1:
    # p(y) = (3/4, 1/4); KL = 1/2 [log(4/3)] + 1/2 [1/2 log(2/3) + 1/2 log(2)]
    probs = np.array([[1.0, 0.0], [0.5, 0.5]] * 5)
    kl = 0.5 * np.log(4 / 3) + 0.5 * (0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25))
    assert inception_score(probs, splits=1, from_logits=False)[0] == pytest.approx(np.exp(kl), rel=1e-12)
    with pytest.raises(ValueError):
        inception_score(confident[:5], splits=10)


# ---------------------------------------------------------------------------------------------
# Precision / recall
# ---------------------------------------------------------------------------------------------


def test_manifold_radii_hand_computed_and_blocked():
    pts = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])
    # 3rd-nearest other point: 0 -> 6, 1 -> 5, 3 -> 3, 6 -> 5, 10 -> 9 (squared distances returned)
    expected = np.array([36.0, 25.0, 9.0, 25.0, 81.0])
    np.testing.assert_allclose(manifold_radii(pts, k=3).numpy(), expected)
    np.testing.assert_allclose(manifold_radii(pts, k=3, batch_size=2).numpy(), expected)
    np.testing.assert_allclose(manifold_radii(pts, k=1).numpy(), [1.0, 1.0, 4.0, 9.0, 16.0])


def test_precision_recall_known_answers():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 16))
    assert precision_recall(real, real.copy(), k=3, batch_size=64) == (1.0, 1.0)
    far = rng.normal(size=(150, 16)) + 100.0
    assert precision_recall(real, far, k=3, batch_size=64) == (0.0, 0.0)
    # fakes = the reals plus as many far-away points: half the fakes are real-looking (P = 0.5),
    # and every real point is covered by a fake ball (R = 1)
    far2 = rng.normal(size=(200, 16)) + 100.0
    p, r = precision_recall(real, np.concatenate([real, far2]), k=3, batch_size=50)
    assert p == pytest.approx(200 / 400) and r == 1.0


def test_precision_hand_computed_1d():
    real = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])  # radii 6, 5, 3, 5, 9
    fake = np.array([[20.0], [18.0], [-7.0], [-5.5]])  # out (10 > 9), in (8 <= 9), out, in (5.5 <= 6)
    p, _ = precision_recall(real, fake, k=3, batch_size=2)
    assert p == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# The FID Inception module
# ---------------------------------------------------------------------------------------------


def test_inception_state_dict_matches_manifest():
    manifest = json.loads(MANIFEST.read_text())
    sd = FIDInceptionV3().state_dict()
    assert len(sd) == manifest["n_keys"] == 566
    assert list(sd) == list(manifest["keys"])  # same keys, same order
    for k, v in manifest["keys"].items():
        assert list(sd[k].shape) == v["shape"], k
        assert str(sd[k].dtype).replace("torch.", "") == v["dtype"], k
    assert sum(t.numel() for t in sd.values()) == manifest["numel"]


def _manifest_state_dict(seed=0, with_counters=True):
    """A state dict with the manifest's layout and random values (stands in for the real file)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in json.loads(MANIFEST.read_text())["keys"].items():
        if v["dtype"] == "int64":
            if with_counters:
                sd[k] = torch.zeros(v["shape"], dtype=torch.int64)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(v["shape"], generator=g) + 0.5
        else:
            sd[k] = torch.randn(v["shape"], generator=g) * 0.1
    return sd


def test_inception_strict_load_and_forward_shapes():
    m = FIDInceptionV3()
    m.load_state_dict(_manifest_state_dict(), strict=True)
    x = torch.randint(0, 256, (2, 3, 64, 48), dtype=torch.uint8)
    with torch.no_grad():
        out = m(x)
    assert out["pool"].shape == (2, 2048) and out["logits_unbiased"].shape == (2, 1008)
    assert out["spatial"].shape == (2, 7 * 17 * 17)
    assert all(torch.isfinite(v).all() for v in out.values())
    # logits are fc without the bias
    torch.testing.assert_close(out["logits_unbiased"], out["pool"] @ m.fc.weight.T)


def test_inception_forward_at_299_random_init():
    m = FIDInceptionV3(spatial=False)
    x = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8)
    with torch.no_grad():
        out = m(x)
    assert set(out) == {"pool", "logits_unbiased"}
    assert out["pool"].shape == (2, 2048) and out["logits_unbiased"].shape == (2, 1008)
    assert (out["pool"] >= 0).all()  # post-ReLU average


def _fixture_maker():
    """tests/fixtures/make_inception_fixture.py as a module (its seeded, well-conditioned state dict)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_inception_fixture", MANIFEST.parent / "make_inception_fixture.py"
    )
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    return mk


def test_inception_matches_independent_fixture():
    """pool features and unbiased logits equal those of an independent functional implementation of the FID
    network (tests/fixtures/make_inception_fixture.py, run once; its seeded weights in the manifest layout)."""
    mk = _fixture_maker()
    fx = torch.load(MANIFEST.parent / "inception_activations.pt", map_location="cpu", weights_only=True)
    assert torch.equal(fx["images"], mk.images())
    m = FIDInceptionV3(spatial=False)
    m.load_state_dict(mk.seeded_state_dict(fx["seed"]), strict=True)
    with torch.no_grad():
        out = m(fx["images"])
    # 94 float32 convs, other summation orders (and another CPU kind): ~1e-6 relative is typical
    for k in ("pool", "logits_unbiased"):
        scale = fx[k].abs().max()
        torch.testing.assert_close(out[k], fx[k], rtol=1e-4, atol=1e-4 * scale, msg=lambda s: f"{k}: {s}")
    assert (fx["pool"][0] - fx["pool"][1]).abs().max() > 0.1 * fx["pool"].abs().max()  # two different images


def test_resize_tf1_hand_computed():
    x = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]])
    # TF1: output i samples source i * in/out (no half-pixel shift), right/bottom neighbour clamped
    expected = torch.tensor(
        [[[[0, 5, 10, 10], [10, 15, 20, 20], [20, 25, 30, 30], [20, 25, 30, 30]]]], dtype=torch.float32
    )
    torch.testing.assert_close(resize_bilinear_tf1(x, 4), expected)
    # differs from torch's half-pixel bilinear (so the rule matters)
    assert not torch.allclose(F.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False), expected)
    # downsampling 4 -> 3: sources 0, 4/3, 8/3 -> values 0, 4, 8
    row = torch.tensor([[[[0.0, 3.0, 6.0, 9.0]]]])
    torch.testing.assert_close(resize_bilinear_tf1(row, (1, 3)), torch.tensor([[[[0.0, 4.0, 8.0]]]]))
    # align_corners=True maps the corners onto each other
    torch.testing.assert_close(
        resize_bilinear_tf1(x, 3, align_corners=True), torch.tensor([[[[0.0, 5, 10], [10, 15, 20], [20, 25, 30]]]])
    )
    # the network applies it, then (x - 128) / 128
    m = FIDInceptionV3()
    img = torch.randint(0, 256, (1, 3, 20, 30), dtype=torch.uint8)
    torch.testing.assert_close(m.preprocess(img), (resize_bilinear_tf1(img.float(), 299) - 128) / 128)


def test_inception_weights_file_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    with pytest.raises(NextScaleError) as e:
        resolve_inception_weights(None)
    assert INCEPTION_WEIGHTS_FILE in str(e.value) and "pytorch-fid" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(NextScaleError, match=INCEPTION_WEIGHTS_FILE):
        resolve_inception_weights(str(tmp_path / "nope.pth"))
    # pytorch-fid's file has no num_batches_tracked counters: still loads
    path = tmp_path / INCEPTION_WEIGHTS_FILE
    torch.save(_manifest_state_dict(1, with_counters=False), path)
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(tmp_path))  # a folder holding the file works too
    m = load_fid_inception(None)
    torch.testing.assert_close(m.fc.bias, torch.load(path)["fc.bias"])
    # a state dict of another network: a clear error
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(NextScaleError, match="not the FID Inception"):
        load_fid_inception(str(bad))


# ---------------------------------------------------------------------------------------------
# npz / stats I/O
# ---------------------------------------------------------------------------------------------


def test_samples_npz_layout_matches_adm(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(10, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(10) // 5
    path = write_samples_npz(str(tmp_path / "s.npz"), iter([imgs[:4], imgs[4:]]), imgs.shape, labels=labels)
    with np.load(path, allow_pickle=False) as z:  # what ADM's evaluator does: np.load(...)["arr_0"]
        assert sorted(z.keys()) == ["arr_0", "labels"]
        assert z["arr_0"].dtype == np.uint8 and z["arr_0"].shape == (10, 8, 8, 3)
        np.testing.assert_array_equal(z["arr_0"], imgs)
        assert z["labels"].dtype == np.int64
        np.testing.assert_array_equal(z["labels"], labels)
    with zipfile.ZipFile(path) as zf:  # uncompressed members, like np.savez
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    # streamed batch reader (also on a compressed npz, as some reference batches are)
    np.testing.assert_array_equal(np.concatenate(list(NpzArrayReader(path).batches(3))), imgs)
    np.savez_compressed(tmp_path / "c.npz", arr_0=imgs)
    np.testing.assert_array_equal(np.concatenate(list(NpzArrayReader(str(tmp_path / "c.npz")).batches(4))), imgs)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    with pytest.raises(ValueError):  # wrong count: no file left behind
        write_samples_npz(str(tmp_path / "bad.npz"), iter([imgs[:3]]), imgs.shape)
    assert not (tmp_path / "bad.npz").exists() and not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_stats_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(20, 6)).astype(np.float32)
    mu, sigma = feature_statistics(f)
    p = save_stats(str(tmp_path / "ref"), mu, sigma, features=f)
    assert p.endswith(".npz")
    st = load_npz_stats(p)
    np.testing.assert_array_equal(st["mu"], mu)
    np.testing.assert_array_equal(st["sigma"], sigma)
    np.testing.assert_array_equal(st["features"], f)
    assert st["mu"].dtype == np.float64


# ---------------------------------------------------------------------------------------------
# evaluate() with a pluggable extractor
# ---------------------------------------------------------------------------------------------


class ColorStats(torch.nn.Module):
    """A toy extractor: per-channel mean and std of the uint8 image (N, 6)."""

    def forward(self, x):
        x = x.float() / 255
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


def _images(seed, n, lo=0, hi=256, size=8):
    return np.random.default_rng(seed).integers(lo, hi, size=(n, size, size, 3), dtype=np.uint8)


def test_evaluate_pluggable_extractor_and_references(tmp_path):
    ex = ColorStats()
    a, b = _images(0, 40), _images(1, 40, 0, 128)
    fa, fb = extract_features(ex, a, batch_size=7)["pool"], extract_features(ex, b)["pool"]
    assert fa.shape == (40, 6)
    same = evaluate(a, a.copy(), extractor=ex, batch_size=16)
    assert same["fid"] == pytest.approx(0.0, abs=1e-8)
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    assert same["is"] is None and same["sfid"] is None  # this extractor has no logits / spatial features
    res = evaluate(a, b, extractor=ex)
    assert res["fid"] == pytest.approx(frechet_distance(*feature_statistics(fa), *feature_statistics(fb)), rel=1e-9)
    assert res["fid"] > 0.01 and res["num_samples"] == 40 and res["num_ref"] == 40
    # our saved statistics as the reference (no features saved: no precision/recall)
    ref_stats = save_stats(str(tmp_path / "b_stats.npz"), *feature_statistics(fb))
    r2 = evaluate(a, ref_stats, extractor=ex)
    assert r2["fid"] == pytest.approx(res["fid"], rel=1e-9) and r2["precision"] is None
    # ADM-style reference batch: arr_0 images plus precomputed mu/sigma. FID uses the precomputed
    # statistics (here: those of `a`, so FID = 0), precision/recall use the arr_0 images (`b`).
    mu_a, sig_a = feature_statistics(fa)
    np.savez(tmp_path / "adm_ref.npz", arr_0=b, mu=mu_a, sigma=sig_a)
    r3 = evaluate(a, str(tmp_path / "adm_ref.npz"), extractor=ex, save_ref_stats=str(tmp_path / "cache.npz"))
    assert r3["fid"] == pytest.approx(0.0, abs=1e-8)
    assert r3["num_ref"] == 40
    p_ab, r_ab = precision_recall(fb, fa)
    assert (r3["precision"], r3["recall"]) == (p_ab, r_ab)
    # the cached reference statistics give the same result
    r4 = evaluate(a, str(tmp_path / "cache.npz"), extractor=ex)
    assert (r4["fid"], r4["precision"], r4["recall"]) == pytest.approx((r3["fid"], r3["precision"], r3["recall"]))


class ToyInception(torch.nn.Module):
    """Returns the same dict keys as FIDInceptionV3, in small dimensions."""

    def forward(self, x):
        x = x.float() / 255
        pool = torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)
        spatial = F.adaptive_avg_pool2d(x, 2).flatten(1)
        return {"pool": pool, "logits": pool[:, :4] * 10, "spatial": spatial}


def test_evaluate_sfid_and_is_with_dict_extractor():
    a, b = _images(6, 20), _images(7, 20, 0, 128)
    res = evaluate(a, b, extractor=ToyInception(), splits=2)
    fa, fb = extract_features(ToyInception(), a), extract_features(ToyInception(), b)
    assert set(fa) == {"pool", "logits_unbiased", "spatial"} and fa["spatial"].shape == (20, 12)
    assert res["sfid"] == pytest.approx(
        frechet_distance(*feature_statistics(fa["spatial"]), *feature_statistics(fb["spatial"])), rel=1e-9
    )
    assert res["is"] == pytest.approx(inception_score(fa["logits_unbiased"], splits=2)[0], rel=1e-9)
    assert evaluate(a, b, extractor=ToyInception(), sfid=False, pr=False, splits=2)["sfid"] is None


def test_evaluate_folder_source_and_errors(tmp_path):
    from PIL import Image

    imgs = _images(2, 6)
    d = tmp_path / "imgs"
    d.mkdir()
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(d / f"{i:06d}.png")
    (d / "notes.txt").write_text("ignored")
    f = extract_features(ColorStats(), str(d))["pool"]
    np.testing.assert_allclose(f, extract_features(ColorStats(), imgs)["pool"])
    with pytest.raises(NextScaleError, match="not found"):
        extract_features(ColorStats(), str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NextScaleError, match="no images"):
        extract_features(ColorStats(), str(tmp_path / "empty"))
    with pytest.raises(NextScaleError, match="uint8"):
        extract_features(ColorStats(), imgs.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# `nextscale fid` end to end (random-weight Inception in the manifest layout)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # Inception forwards at 299 + a 2048-d eigendecomposition: ~5-10 s on 2 idle CPU cores
def test_fid_cli_end_to_end(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from nextscale.app.cli import main

    weights = tmp_path / INCEPTION_WEIGHTS_FILE
    torch.save(_fixture_maker().seeded_state_dict(3), weights)  # activations that tell images apart (IS > 1)
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(weights))
    samples = tmp_path / "samples"
    samples.mkdir()
    for i, im in enumerate(_images(4, 4, size=32)):  # 4 images each: k = 3 needs > 3; keeps CPU time low
        Image.fromarray(im).save(samples / f"{i:06d}.png")
    np.savez(tmp_path / "ref.npz", arr_0=_images(5, 4, 0, 200, size=32))
    out_json = tmp_path / "res.json"
    rc = main(
        [
            "fid",
            "--samples",
            str(samples),
            "--ref",
            str(tmp_path / "ref.npz"),
            "--batch-size",
            "4",
            "--splits",
            "2",
            "--device",
            "cpu",
            "--no-progress",
            "--json",
            str(out_json),
            "--save-ref-stats",
            str(tmp_path / "refstats.npz"),
            "--no-sfid",
        ]
    )  # sFID: a 2nd 2048-d FD, slow on CPU
    assert rc == 0
    text = capsys.readouterr().out
    for label in ("FID:", "Inception Score:", "Precision:", "Recall:"):
        assert label in text
    res = json.loads(out_json.read_text())
    assert np.isfinite(res["fid"]) and res["fid"] > 0 and res["sfid"] is None
    # the command is evaluate() on the same inputs, printed and saved as such
    want = evaluate(
        str(samples),
        str(tmp_path / "ref.npz"),
        inception_weights=str(weights),
        device="cpu",
        batch_size=4,
        splits=2,
        sfid=False,
        save_ref_stats=str(tmp_path / "want_refstats.npz"),
    )
    assert res["sfid"] is want["sfid"] is None
    for key in ("fid", "is", "is_std", "precision", "recall", "num_samples", "num_ref"):
        assert res[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    assert res["num_samples"] == res["num_ref"] == 4 and res["is"] > 1 + 1e-6  # not the degenerate IS = 1
    for key, label in (("fid", "FID"), ("precision", "Precision"), ("recall", "Recall")):
        assert f"{label}: {want[key]:.4f}" in text
    st, want_st = load_npz_stats(str(tmp_path / "refstats.npz")), load_npz_stats(str(tmp_path / "want_refstats.npz"))
    assert st["mu"].shape == (2048,) and st["features"].shape == (4, 2048)
    for key in ("mu", "sigma", "features"):
        np.testing.assert_array_equal(st[key], want_st[key])
    # a user error: one line, exit code 2
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV)
    assert main(["fid", "--samples", str(samples), "--ref", str(tmp_path / "ref.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and INCEPTION_WEIGHTS_FILE in err


# ---------------------------------------------------------------------------------------------
# Reconstruction metrics
# ---------------------------------------------------------------------------------------------


def test_psnr_ssim_known_values():
    a = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.8
    assert float(psnr(a, a + 0.1)) == pytest.approx(20.0)  # MSE 0.01 -> 20 dB
    assert float(psnr(a, a + 0.01)) == pytest.approx(40.0)
    assert float(ssim(a, a)) == pytest.approx(1.0)
    assert float(ssim(a, a[:, [2, 1, 0]])) == pytest.approx(float(ssim(a[:, [2, 1, 0]], a)))  # symmetric
    # constant images u, v: SSIM = (2uv + C1) / (u^2 + v^2 + C1)
    u, v, c1 = 0.3, 0.6, 0.01**2
    got = ssim(torch.full((1, 3, 12, 12), u), torch.full((1, 3, 12, 12), v))
    assert float(got) == pytest.approx((2 * u * v + c1) / (u * u + v * v + c1), rel=1e-9)
    noisy = (a + 0.2 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert 0 < float(ssim(a, noisy)) < 0.9
    assert ssim(a, noisy, reduction="none").shape == (2,)


def test_reconstruction_metrics_rfid():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16, generator=g)
    m = ReconstructionMetrics(ColorStats())
    m.update(x[:4], x[:4])
    m.update(x[4:], x[4:])
    r = m.compute()
    assert r["rfid"] == pytest.approx(0.0, abs=1e-9) and r["ssim"] == pytest.approx(1.0) and r["num_images"] == 8
    m2 = ReconstructionMetrics(ColorStats())
    m2.update(x, (x * 0.5))
    r2 = m2.compute()
    assert r2["rfid"] > 0.01 and r2["psnr"] < 20 and r2["ssim"] < 1
