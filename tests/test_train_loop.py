"""The generic training loop with a toy objective: resume is bit-identical, checkpoints are atomic,
schedules match the reference, accumulation is exact, signals stop cleanly."""

import math
import os
import signal

import pytest
import torch
import torch.nn as nn

from nextscale.checkpoint import CheckpointFolder, capture_rng, restore_rng, save_checkpoint
from nextscale.errors import NextScaleError
from nextscale.train import (
    LoopConfig,
    Objective,
    OptimSpec,
    Schedule,
    Trainer,
    build_adamw,
    lr_factor,
    param_groups,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class ToyData(torch.utils.data.Dataset):
    def __init__(self, n=10):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, key):
        i, seed = key
        noise = torch.randn(8, generator=torch.Generator().manual_seed(seed % 2**63)) * 0.1 if seed >= 0 else 0
        return {"image": self.x[i] + noise, "label": int(self.y[i]), "u_drop": 1.0, "n_bad": 0}


class ToyObjective(Objective):
    def __init__(self, dropout=0.2, kill_at=None):
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Dropout(dropout), nn.Linear(16, 3))
        self.kill_at = kill_at

    def modules(self):
        return {"net": self.net}

    def configure_optimizers(self, total, wrapped):
        opt = build_adamw(param_groups(self.net), lr=1e-2)
        return {
            "net": OptimSpec(
                opt,
                list(self.net.parameters()),
                Schedule(lr=1e-2, total=total, warmup=2, wd=0.05, wd_end=0.01),
                grad_clip=1.0,
            )
        }

    def train_step(self, batch, ctx):
        if self.kill_at is not None and ctx.step == self.kill_at and ctx.micro == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        with ctx.autocast():
            logits = ctx.wrapped["net"](batch["image"])
        loss = nn.functional.cross_entropy(logits.float(), batch["label"])
        ctx.backward(loss, "net")
        return {"loss": loss.detach()}

    def eval_step(self, batch):
        loss = nn.functional.cross_entropy(self.net(batch["image"]), batch["label"], reduction="sum")
        return {"loss": (loss, len(batch["label"]))}


def _fit(run_dir, steps=6, kill_at=None, **kw):
    cfg = LoopConfig(
        run_dir=str(run_dir),
        max_steps=steps,
        batch_size=kw.pop("batch_size", 4),
        ckpt_every=2,
        log_every=1,
        progress=False,
        **kw,
    )
    ob = ToyObjective(kill_at=kill_at)
    res = Trainer(ob, cfg, ToyData(), val_set=ToyData(4), run_config={"toy": 1}).fit()
    return res, ob


def _state(run_dir):
    step, st = CheckpointFolder(os.path.join(run_dir, "checkpoints")).latest()
    return step, st


@pytest.mark.parametrize("amp,ema,accum", [("none", 0.0, 1), ("bf16", 0.9, 2), ("fp16", 0.0, 1)])
def test_resume_after_sigterm_is_bit_identical(tmp_path, amp, ema, accum):
    ref, _ = _fit(tmp_path / "a", amp=amp, ema=ema, grad_accum=accum)
    assert ref.finished and ref.step == 6
    cut, _ = _fit(tmp_path / "b", kill_at=3, amp=amp, ema=ema, grad_accum=accum)
    assert cut.interrupted == signal.SIGTERM and cut.step == 4 and not cut.finished
    again, _ = _fit(tmp_path / "b", amp=amp, ema=ema, grad_accum=accum)
    assert again.finished
    (sa, a), (sb, b) = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert sa == sb == 6
    for k in a["modules"]["net"]:
        assert torch.equal(a["modules"]["net"][k], b["modules"]["net"][k]), k
    for (k1, v1), (k2, v2) in zip(a["optimizers"]["net"]["state"].items(), b["optimizers"]["net"]["state"].items()):
        for n in v1:
            assert torch.equal(v1[n], v2[n])
    if ema:
        for k in a["ema"]["net"]:
            assert torch.equal(a["ema"]["net"][k], b["ema"]["net"][k])
    if amp == "fp16":
        assert a["scalers"] == b["scalers"]
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    assert a["data"] == b["data"]
    assert (tmp_path / "a" / "metrics.jsonl").read_text().count('"kind": "val"') == 1
    assert (tmp_path / "a" / "config.json").is_file() and (tmp_path / "a" / "log.txt").is_file()


def test_grad_accum_equals_big_batch(tmp_path):
    # dropout off: 4 x 1 micro-batch vs 2 x 2 micro-batches see the same samples -> same update
    def run(d, accum):
        cfg = LoopConfig(run_dir=str(d), max_steps=3, batch_size=4, grad_accum=accum, ckpt_every=100, progress=False)
        ob = ToyObjective(dropout=0.0)
        Trainer(ob, cfg, ToyData()).fit()
        return ob.net.state_dict()

    a, b = run(tmp_path / "a", 1), run(tmp_path / "b", 2)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_rerun_of_finished_run_is_a_noop(tmp_path):
    _fit(tmp_path, steps=2)
    ck = CheckpointFolder(os.path.join(tmp_path, "checkpoints"))
    p = ck.path(2)
    before = os.stat(p)
    metrics = (tmp_path / "metrics.jsonl").read_bytes()
    res, ob = _fit(tmp_path, steps=2)
    assert res.finished and res.step == 2
    after = os.stat(p)
    assert ck.steps() == [2]
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )  # not rewritten
    assert (tmp_path / "metrics.jsonl").read_bytes() == metrics  # no step trained, evaluated or logged again


def test_bad_batch_sizes(tmp_path):
    for bs, ac in ((0, 1), (3, 2), (4, 0)):
        with pytest.raises(NextScaleError):
            _fit(tmp_path, batch_size=bs, grad_accum=ac)


def test_checkpoint_manager_ignores_partial_and_corrupt(tmp_path):
    m = CheckpointFolder(str(tmp_path), keep_last=2)
    for s in (2, 4, 6):
        m.save(s, {"step": s, "w": torch.full((3,), float(s))})
    assert m.steps() == [4, 6]  # pruned to the last 2
    (tmp_path / ".step_00000008.pt.tmp-123").write_bytes(b"half a checkp")  # a killed writer's temp file
    (tmp_path / "step_00000010.pt").write_bytes(b"\x80garbage")  # unreadable
    with pytest.warns(RuntimeWarning):
        step, st = m.latest()
    assert step == 6 and torch.equal(st["w"], torch.full((3,), 6.0))
    m.clean_temp()
    assert not any(f.startswith(".") for f in os.listdir(tmp_path))


def test_save_checkpoint_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "x.pt"
    save_checkpoint({"a": 1}, str(p))

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(Exception):
        save_checkpoint({"a": Boom()}, str(p))
    assert torch.load(p) == {"a": 1} and os.listdir(tmp_path) == ["x.pt"]


def test_rng_capture_restore_roundtrip():
    import random

    import numpy as np

    st = capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(2))
    restore_rng(st)
    b = (random.random(), np.random.rand(), torch.rand(2))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


#: lr factor of the reference's ``lr_wd_annealing`` (utils/lr_control.py), worked out by hand for warmup 10,
#: 111 steps (so after warmup p = (t - 10) / 100), wp0 = 0.005, wpe = 0.01. Warmup: 0.005 + 0.995 t / 10.
#: cos: wpe + (1 - wpe)(1 + cos(pi p)) / 2.  lin / lin0: 1 while p < 0.15 / 0.05, then
#: wpe + (1 - wpe)(1 - p) / (1 - T).  lin00: wpe + (1 - wpe)(1 - p).  exp: 1 while p < 0.15, then
#: wpe^((p - 0.15) / 0.85).  lin0.8: mid = (1 + wpe + (1 - wpe) 0.2) / 2 = 0.604; 1 - (1 - mid) p / 0.8
#: while p < 0.8, then wpe + (mid - wpe)(1 - p) / 0.2.
_C1, _C9 = math.cos(0.1 * math.pi), math.cos(0.9 * math.pi)
# t:        0      5       10   20 (p = 0.1)                 60 (p = 0.5)              100 (p = 0.9)             110
KNOWN_LR = {
    "cos": [0.005, 0.5025, 1.0, 0.01 + 0.99 * (1 + _C1) / 2, 0.505, 0.01 + 0.99 * (1 + _C9) / 2, 0.01],
    "lin": [0.005, 0.5025, 1.0, 1.0, 0.01 + 0.99 * 0.5 / 0.85, 0.01 + 0.99 * 0.1 / 0.85, 0.01],
    "lin0": [0.005, 0.5025, 1.0, 0.01 + 0.99 * 0.9 / 0.95, 0.01 + 0.99 * 0.5 / 0.95, 0.01 + 0.99 * 0.1 / 0.95, 0.01],
    "lin00": [0.005, 0.5025, 1.0, 0.901, 0.505, 0.109, 0.01],
    "exp": [0.005, 0.5025, 1.0, 1.0, 0.01 ** (7 / 17), 0.01 ** (15 / 17), 0.01],
    "lin0.8": [0.005, 0.5025, 1.0, 0.9505, 0.7525, 0.307, 0.01],
}


@pytest.mark.parametrize("sche", sorted(KNOWN_LR))
def test_schedules_match_reference(sche):
    got = [lr_factor(sche, t, 10, 111, 0.005, 0.01) for t in (0, 5, 10, 20, 60, 100, 110)]
    assert got == pytest.approx(KNOWN_LR[sche], rel=1e-12, abs=1e-12)
    # weight decay: the reference's cosine from wd to wd_end over all steps, t / (total - 1)
    s = Schedule(lr=2.0, total=111, warmup=10, kind=sche, wd=0.05, wd_end=0.01)
    assert [s.wd_at(t) for t in (0, 55, 110)] == pytest.approx([0.05, 0.03, 0.01], rel=1e-12)
    assert s.lr_at(60) == pytest.approx(2.0 * KNOWN_LR[sche][4], rel=1e-12)
    with pytest.raises(NextScaleError):
        lr_factor("nope", 50, 10, 100)
    with pytest.raises(NextScaleError):
        lr_factor("lin1.5", 50, 10, 100)


def test_param_groups_no_decay():
    net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    net.pos_1LC = nn.Parameter(torch.zeros(1, 3, 4))
    g = {x["name"]: x for x in param_groups(net, no_decay_keys=("pos_1LC",))}
    assert len(g["decay"]["params"]) == 1 and g["decay"]["wd_sc"] == 1.0
    assert len(g["no_decay"]["params"]) == 4 and g["no_decay"]["wd_sc"] == 0.0
