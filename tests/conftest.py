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


def golden_path():
    for cand in (os.environ.get("NEXTSCALE_GOLDEN"), FIXTURES / "official" / "small_golden.pt",
                 ROOT.parent / "shared" / "fixtures" / "official" / "small_golden.pt"):
        if cand and Path(cand).exists():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def golden():
    p = golden_path()
    if p is None:
        pytest.skip("reference golden file not found (set NEXTSCALE_GOLDEN or place shared/ beside the repo)")
    return torch.load(p, map_location="cpu", weights_only=True)


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
