"""DDP (gloo, 2 CPU processes) == one process with the same global batch; dist helpers alone."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from nextscale import dist
from nextscale.app.cli import main
from nextscale.checkpoint import CheckpointFolder
from nextscale.data import export_mnist

pytestmark = pytest.mark.usefixtures("one_thread")


def test_single_process_helpers():
    assert dist.get_rank() == 0 and dist.get_world_size() == 1 and dist.is_main()
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(dist.all_reduce_sum(t), t) and dist.all_gather_object({"a": 1}) == [{"a": 1}]
    assert dist.broadcast_object(3) == 3
    dist.barrier()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.dist
def test_ddp_two_processes_equal_one_process(tmp_path):
    """Acceptance: 2 gloo processes x batch B == 1 process x batch 2B after 5 steps (allclose),
    with class dropout, random crops and flips on (they are drawn per sample, not per process)."""
    data = str(tmp_path / "digits")
    export_mnist(data, n_per_class=2, split="train", resolution=64)
    common = [
        "train",
        "--data",
        data,
        "--tokenizer",
        "random",
        "--preset",
        "tiny",
        "--steps",
        "5",
        "--batch-size",
        "8",
        "--hflip",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "1",
        "--ckpt-every",
        "5",
        "--log-every",
        "5",
        "--no-progress",
        "--eval-every",
        "0",
        "--sample-every",
        "-1",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={_free_port()}",
            "-m",
            "nextscale",
        ]
        + common
        + ["--run-dir", str(tmp_path / "ddp")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "2 x cpu" in p.stderr
    assert main(common + ["--run-dir", str(tmp_path / "one")]) == 0
    (s1, a), (s2, b) = [CheckpointFolder(str(tmp_path / r / "checkpoints")).latest() for r in ("one", "ddp")]
    assert s1 == s2 == 5 and b["world_size"] == 2 and len(b["rng"]) == 2
    for k, v in a["modules"]["var"].items():
        torch.testing.assert_close(v, b["modules"]["var"][k], rtol=1e-4, atol=1e-5, msg=k)
    # the weights did train, each far beyond the tolerance used above (else "equal" would prove little)
    init = _init_params()
    tol = {k: 1e-5 + 1e-4 * v.abs().max().item() for k, v in init.items()}
    moved = {k: (a["modules"]["var"][k] - v).abs().max().item() for k, v in init.items()}
    small = sorted(k for k in init if moved[k] < 10 * tol[k])
    assert len(small) <= len(init) // 10, f"{len(small)}/{len(init)} tensors barely moved: {small[:5]}"


def _init_params():
    from nextscale.configs import get_preset
    from nextscale.models import VAR, build_from_config

    vae = build_from_config(get_preset("tiny"), seed=0, init_var=False)[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        var = VAR.from_config(get_preset("tiny").var, vae)
        var.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
    return {k: p.detach() for k, p in var.named_parameters()}
