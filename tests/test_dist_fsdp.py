"""Training beyond one machine (issue #25), on CPU with gloo: FSDP2 per block == DDP == one process;
sharded checkpoints (DCP) resumed on another number of processes, exported, a half-written one
ignored; old single-file checkpoints resumed under fsdp; activation checkpointing / compile change
nothing beyond float noise; the memory plan. Tiny on purpose (2 shared CPU cores)."""

import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from nextscale.app.cli import main
from nextscale.checkpoint import COMPLETE, CheckpointFolder, load_checkpoint
from nextscale.data import export_mnist

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 4
COMMON = [
    "train",
    "--tokenizer",
    "random",
    "--preset",
    "tiny",
    "--steps",
    str(STEPS),
    "--batch-size",
    "8",
    "--hflip",
    "--lr",
    "1e-3",
    "--warmup-steps",
    "1",
    "--ckpt-every",
    "2",
    "--keep",
    "5",
    "--log-every",
    "2",
    "--no-progress",
    "--eval-every",
    "0",
    "--sample-every",
    "-1",
]
TOL = dict(rtol=1e-4, atol=1e-5)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args, nproc=2, extra=(), script=None, timeout=300):
    """``python -m torch.distributed.run`` on localhost (gloo), ``-m nextscale`` or ``script``."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    target = [script] if script else ["-m", "nextscale"]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *extra]
    cmd += [f"--master_port={_free_port()}"] if "--rdzv-backend=c10d" not in extra else []
    p = subprocess.run(cmd + target + args, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-4000:]
    return p


def weights(run, step=None):
    folder = CheckpointFolder(os.path.join(run, "checkpoints"))
    if step is None:
        s, state = folder.latest()
    else:
        s, state = step, load_checkpoint(folder.path(step))
    return s, state


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **TOL, msg=k)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    d = tmp_path_factory.mktemp("fsdp") / "digits"
    export_mnist(str(d), n_per_class=2, split="train", resolution=64)
    return str(d)


@pytest.fixture(scope="module")
def one_run(digits, tmp_path_factory):
    """The single-process reference (DDP mode = plain, single-file checkpoints at steps 2 and 4)."""
    run = str(tmp_path_factory.mktemp("one") / "run")
    assert main(COMMON + ["--data", digits, "--run-dir", run]) == 0
    return run


@pytest.mark.dist
def test_fsdp2_equals_ddp_equals_one_process_and_resharded_resume(digits, one_run, tmp_path, capsys):
    """Acceptance: FSDP2 (2 processes, per block) == DDP (2) == one process after STEPS steps; the
    sharded checkpoint of step 2 resumed on ONE process ends equal too; export reads it."""
    fsdp, ddp = str(tmp_path / "fsdp"), str(tmp_path / "ddp")
    p = torchrun(COMMON + ["--data", digits, "--run-dir", fsdp, "--parallel", "fsdp"])
    assert "memory plan per rank (fsdp, 2 processes)" in p.stderr and "peak memory per rank" in p.stderr
    torchrun(COMMON + ["--data", digits, "--run-dir", ddp])
    (s1, a), (s2, b), (s3, c) = weights(one_run), weights(ddp), weights(fsdp)
    assert s1 == s2 == s3 == STEPS and c["world_size"] == 2 and len(c["rng"]) == 2
    ck = os.path.join(fsdp, "checkpoints", f"step_{STEPS:08d}")
    assert os.path.isfile(os.path.join(ck, COMPLETE)) and len([f for f in os.listdir(ck) if f.endswith(".distcp")]) == 2
    assert_same(a["modules"]["var"], b["modules"]["var"])
    assert_same(a["modules"]["var"], c["modules"]["var"])
    for k in ("exp_avg", "exp_avg_sq"):  # the optimizer states too (keyed by name in the sharded one)
        got = {n: st[k] for n, st in c["optimizers"]["var"]["state"].items()}
        want = dict(zip(got, [a["optimizers"]["var"]["state"][i][k] for i in sorted(a["optimizers"]["var"]["state"])]))
        assert len(got) == len(a["optimizers"]["var"]["state"])
        for n in got:
            assert got[n].shape == want[n].shape, n

    # resume the sharded step-2 checkpoint on 1 process; a half-written step-3 folder is skipped in one line
    res = str(tmp_path / "resumed")
    shutil.copytree(fsdp, res)
    shutil.rmtree(os.path.join(res, "checkpoints", f"step_{STEPS:08d}"))
    os.makedirs(os.path.join(res, "checkpoints", "step_00000003"))
    capsys.readouterr()
    assert main(COMMON + ["--data", digits, "--run-dir", res, "--parallel", "fsdp"]) == 0
    err = capsys.readouterr().err
    assert err.count("step_00000003: no COMPLETE marker") == 1, err
    assert "resumed from" in err and "world size changed (2 -> 1)" in err
    s4, d = weights(res)
    assert s4 == STEPS and "sharded" in d
    assert_same(a["modules"]["var"], d["modules"]["var"])

    # nextscale export of a sharded checkpoint -> the usual model directory
    out = str(tmp_path / "export")
    assert main(["export", fsdp, "--out", out]) == 0
    from safetensors.torch import load_file

    exported = load_file(os.path.join(out, "var", "model.safetensors"))
    for k, v in c["modules"]["var"].items():
        if k in exported:
            torch.testing.assert_close(exported[k].float(), v.float(), msg=k)
    assert len(exported) > 0


def test_old_single_file_checkpoint_resumes_under_fsdp(digits, one_run, tmp_path):
    res = str(tmp_path / "old")
    shutil.copytree(one_run, res)
    os.remove(os.path.join(res, "checkpoints", f"step_{STEPS:08d}.pt"))
    assert main(COMMON + ["--data", digits, "--run-dir", res, "--parallel", "fsdp"]) == 0
    (_, a), (s, b) = weights(one_run), weights(res)
    assert s == STEPS and "sharded" in b  # fsdp runs write sharded checkpoints from then on
    assert_same(a["modules"]["var"], b["modules"]["var"])


def test_grad_checkpointing_changes_nothing(digits, one_run, tmp_path):
    run = str(tmp_path / "ac")
    assert main(COMMON + ["--data", digits, "--run-dir", run, "--grad-checkpointing"]) == 0
    assert_same(weights(one_run)[1]["modules"]["var"], weights(run)[1]["modules"]["var"])


@pytest.mark.slow
def test_compile_changes_nothing_beyond_float_noise(digits, one_run, tmp_path, capsys):
    from nextscale.train.parallel import compile_skip_reason

    run = str(tmp_path / "compiled")
    assert main(COMMON + ["--data", digits, "--run-dir", run, "--compile", "--steps", "2"]) == 0
    why = compile_skip_reason(torch.device("cpu"))
    if why:
        assert f"compile skipped: {why}" in capsys.readouterr().err
    a, b = weights(one_run, 2)[1]["modules"]["var"], weights(run)[1]["modules"]["var"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=k)


def test_refused_sharded_metadata(tmp_path):
    """DCP's .metadata is a pickle: one that would import anything else is refused, never run."""
    import pickle

    from nextscale.checkpoint import check_sharded_metadata
    from nextscale.safeload import UnsafeFileError

    d = tmp_path / "step_00000001"
    d.mkdir()
    (d / ".metadata").write_bytes(pickle.dumps(os.system))
    with pytest.raises(UnsafeFileError, match="refused: the metadata would import"):
        check_sharded_metadata(str(d))


class _Toy(torch.nn.Module):
    """8 blocks of width 64: big enough that sharding over 4 beats gathering one block at a time."""

    C, num_heads = 64, 2

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(64, 64) for _ in range(8))

    def forward(self, x):
        for b in self.blocks:
            x = torch.tanh(b(x))
        return x


def test_memory_plan_shards_with_the_world():
    from nextscale.train.memory import memory_plan
    from nextscale.train.parallel import block_modules

    toy = _Toy()
    mods, blocks = {"m": toy}, {"m": block_modules(toy)}
    one = memory_plan(mods, blocks, 1, False, 8, 30.0)
    four = memory_plan(mods, blocks, 4, True, 2, 30.0)
    ac = memory_plan(mods, blocks, 1, False, 8, 30.0, grad_checkpointing=True)
    assert four.optimizer * 4 == one.optimizer and four.grads < one.grads and four.params < one.params
    assert four.activations * 4 == one.activations and ac.activations < one.activations
    assert "memory plan per rank (fsdp, 4 processes)" in four.line(4, "fsdp")


def test_grad_checkpointing_recomputes_each_block_and_keeps_names():
    from nextscale.train.parallel import Parallel

    toy, ref = _Toy(), _Toy()
    ref.load_state_dict(toy.state_dict())
    calls, hooks, inner = [], [], toy.blocks[0].forward
    toy.blocks[0].forward = lambda *a: calls.append(1) or inner(*a)
    toy.blocks[0].register_forward_hook(lambda *a: hooks.append(1))
    Parallel(torch.device("cpu"), 1, "ddp", grad_checkpointing=True).wrap({"m": toy})
    x = torch.randn(3, 64)
    toy(x).square().sum().backward()
    ref(x).square().sum().backward()
    assert list(toy.state_dict()) == list(ref.state_dict())  # checkpoints / exports see the same names
    for p, q in zip(toy.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    assert len(calls) == 2 and len(hooks) == 1  # recomputed in the backward (forward only: hooks ran once)


KILLER = '''"""Under torchrun: rank 1 kills itself (SIGKILL) at step 3 of the first attempt; else plain nextscale."""
import os, signal, sys
from nextscale.app.cli import main
from nextscale.train import loop

_orig = loop.Trainer._train_step


def _train_step(self, data, ctx):
    if self.step == 3 and self.rank == 1 and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        os.kill(os.getpid(), signal.SIGKILL)
    return _orig(self, data, ctx)


loop.Trainer._train_step = _train_step
sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.dist
@pytest.mark.slow
def test_elastic_restart_after_kill_9_equals_uninterrupted(digits, one_run, tmp_path):
    """torchrun --max-restarts 1 (localhost c10d rendezvous): rank 1 is SIGKILLed at step 3; the job
    restarts by itself from the last complete (sharded) checkpoint, step 2, and ends equal."""
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    run = str(tmp_path / "elastic")
    rdzv = [
        "--max-restarts=1",
        "--monitor-interval=0.5",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=localhost:{_free_port()}",
    ]
    p = torchrun(COMMON + ["--data", digits, "--run-dir", run, "--parallel", "fsdp"], extra=rdzv, script=str(script))
    assert "exitcode: -9" in p.stderr, p.stderr[-3000:]  # the kill happened (torchrun saw it)
    assert "resumed from" in p.stderr and "step_00000002 (step 2/4)" in p.stderr
    (_, a), (s, b) = weights(one_run), weights(run)
    assert s == STEPS
    assert_same(a["modules"]["var"], b["modules"]["var"])


@pytest.mark.dist
@pytest.mark.slow
def test_two_nodes_of_two_then_resumed_on_two_processes(digits, one_run, tmp_path):
    """torchrun --nnodes 2 --nproc-per-node 2 (two "nodes" on localhost, c10d rendezvous) trains (FSDP2
    with activation checkpointing) with sharded checkpoints; its step-2 checkpoint (4 shards) resumed on
    2 processes ends equal too."""
    run, port = str(tmp_path / "nodes"), _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rdzv = ["--nnodes=2", "--nproc-per-node=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{port}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *rdzv, "--rdzv-id=nodes", "-m", "nextscale"]
    cmd += COMMON + ["--data", digits, "--run-dir", run, "--parallel", "fsdp", "--grad-checkpointing"]  # + AC
    nodes = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    outs = [n.communicate(timeout=300) for n in nodes]
    assert all(n.returncode == 0 for n in nodes), outs[0][1][-3000:] + outs[1][1][-3000:]
    (_, a), (s, b) = weights(one_run), weights(run)
    assert s == STEPS and b["world_size"] == 4 and len(b["rng"]) == 4
    assert_same(a["modules"]["var"], b["modules"]["var"])
    two = str(tmp_path / "two")
    shutil.copytree(run, two)
    shutil.rmtree(os.path.join(two, "checkpoints", f"step_{STEPS:08d}"))
    p = torchrun(COMMON + ["--data", digits, "--run-dir", two, "--parallel", "fsdp"])
    assert "world size changed (4 -> 2)" in p.stderr
    s2, c = weights(two)
    assert s2 == STEPS and c["world_size"] == 2
    assert_same(a["modules"]["var"], c["modules"]["var"])


def test_infinity_blocks_are_found_and_checkpointing_keeps_its_gradients():
    """The text-to-image transformer plugs in: its ``blocks`` (a list over its chunks) are the units."""
    from nextscale.models.infinity import Infinity, InfinityConfig, TextFeatures
    from nextscale.models.rope import build_rope_cache
    from nextscale.train.parallel import Parallel, block_modules

    cfg = InfinityConfig(
        depth=2, embed_dim=128, num_heads=2, vae_bits=6, text_channels=128, text_maxlen=8, block_chunks=2
    )
    torch.manual_seed(0)
    a, b = Infinity(cfg), Infinity(cfg)
    b.load_state_dict(a.state_dict())
    assert len(block_modules(a)) == 2
    Parallel(torch.device("cpu"), 1, "fsdp", grad_checkpointing=True).wrap({"t": a})
    text = TextFeatures.from_lens(torch.randn(9, 128), [4, 5])
    sched = [(1, 1), (2, 2), (4, 4)]
    x = torch.randn(2, sum(h * w for h, w in sched[1:]), cfg.token_bits)
    rope = build_rope_cache(sched + [(8, 8)], cfg.head_dim)
    for m in (a, b):
        m.train()
        torch.manual_seed(1)  # the same drop-path draws in both (the recompute replays its own)
        m(text, x, sched, rope).square().mean().backward()
    assert list(a.state_dict()) == list(b.state_dict())
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=n)


@pytest.fixture(scope="module")
def t2i_scenes(tmp_path_factory):
    """8 square scenes (one bucket, 4 batches of 2: the same global batches on 1 and 2 processes) + a tiny BSQ."""
    import numpy as np

    from nextscale.models.bsq import BSQVAE, BSQConfig
    from nextscale.scenes import SceneConfig, write_scene_dataset
    from nextscale.train.t2i_parts import save_bsq_dir

    root = tmp_path_factory.mktemp("t2i_fsdp")
    write_scene_dataset(root / "data", 8, np.random.default_rng(0), SceneConfig(aspect_ratios=(1.0,)), n_scales=3,
                        patch_size=4)  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = BSQVAE(BSQConfig(codebook_dim=8, base_ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, patch_size=4))
    save_bsq_dir(vae, root / "tok")
    return str(root / "data"), str(root / "tok")


@pytest.mark.dist
def test_t2i_fsdp2_equals_ddp_equals_one_process(t2i_scenes, tmp_path):
    """Acceptance for the text-to-image transformer: global batch 4 (2 per rank; one process accumulates 2 x 2),
    text dropout on (a function of each sample's seed), 4 steps; the sharded run resumes on one process."""
    data, tok = t2i_scenes
    args = ["train-t2i", "--data", data, "--tokenizer", tok, "--steps", str(STEPS), "--batch-size", "4",
            "--ckpt-every", "2", "--keep", "5", "--log-every", "2", "--lr", "1e-3", "--warmup-steps", "1",
            "--text-dropout", "0.3", "--n-scales", "3", "--depth", "2", "--embed-dim", "64", "--num-heads", "2",
            "--text-maxlen", "16", "--no-progress", "--sample-every", "-1"]  # fmt: skip
    one, ddp, fsdp = (str(tmp_path / n) for n in ("one", "ddp", "fsdp"))
    assert main(args + ["--run-dir", one, "--grad-accum", "2"]) == 0
    torchrun(args + ["--run-dir", ddp])
    torchrun(args + ["--run-dir", fsdp, "--parallel", "fsdp"])
    (s1, a), (s2, b), (s3, c) = weights(one), weights(ddp), weights(fsdp)
    assert s1 == s2 == s3 == STEPS and "sharded" in c
    assert_same(a["modules"]["infinity"], b["modules"]["infinity"])
    assert_same(a["modules"]["infinity"], c["modules"]["infinity"])

    res = str(tmp_path / "resumed")  # the sharded step-2 checkpoint, finished on one process
    shutil.copytree(fsdp, res)
    shutil.rmtree(os.path.join(res, "checkpoints", f"step_{STEPS:08d}"))
    assert main(args + ["--run-dir", res, "--parallel", "fsdp", "--grad-accum", "2"]) == 0
    s4, d = weights(res)
    assert s4 == STEPS
    assert_same(a["modules"]["infinity"], d["modules"]["infinity"])


@pytest.mark.dist
def test_bitwise_tokenizer_trains_under_ddp(t2i_scenes, tmp_path):
    """train-tokenizer --bitwise on 2 processes: the DDP wrapper's forward runs (it once called a method the
    wrapper lacks), the checkpoint records both ranks, and the export is a loadable, finite tokenizer."""
    from nextscale.train.t2i_parts import load_bsq_any

    data, _ = t2i_scenes
    run = str(tmp_path / "bsq")
    args = ["train-tokenizer", "--bitwise", "--data", data, "--n-scales", "3", "--steps", "2", "--batch-size", "4"]
    torchrun(args + ["--run-dir", run, "--log-every", "1", "--eval-every", "0", "--disc-weight", "0", "--no-progress"])
    s, state = weights(run)
    assert s == 2 and state["world_size"] == 2
    vae = load_bsq_any(os.path.join(run, "tokenizer"))
    assert all(torch.isfinite(p).all() for p in vae.parameters())
