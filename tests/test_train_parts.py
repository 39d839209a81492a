"""The pieces the training commands are built from: the one tokenizer loader / saver in ``nextscale.hub``
(atomic, every source kind round-trips) and the loop's collaborators (checkpoints, precision, EMA,
signals)."""

import os
import stat

import pytest
import torch

from nextscale import hub
from nextscale.configs import get_preset
from nextscale.errors import NextScaleError
from nextscale.models import VQVAE

pytestmark = pytest.mark.usefixtures("one_thread")


def _small_cfg():
    return get_preset("mnist").vqvae.replace(ch=32, num_res_blocks=1, vocab_size=32, v_patch_nums=(1, 2, 4))


def _vae(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = VQVAE.from_config(_small_cfg(), test_mode=True)
    vae.quantize.ema_vocab_hit_SV.uniform_()  # a buffer with content: it must round-trip too
    return vae


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k].float(), sb[k].float()), k


def _tokenizer_run(run, vae, ema_vae=None, step=3):
    """A train-tokenizer run folder with one checkpoint in the loop's format (no training needed)."""
    from nextscale.checkpoint import CheckpointFolder

    st = {
        "format": "nextscale-train",
        "step": step,
        "modules": {"vae": vae.state_dict()},
        "config": {"kind": "tokenizer", "model": {"vqvae": vae.config.to_dict()}},
    }
    if ema_vae is not None:
        st["ema"] = {"vae": ema_vae.state_dict()}
    return CheckpointFolder(os.path.join(run, "checkpoints")).save(step, st)


# ------------------------------------------------------------------ hub.save_tokenizer / hub.load_tokenizer
def test_load_tokenizer_round_trips_every_source_kind(tmp_path, tiny_pipe_dir):
    from safetensors.torch import save_file

    vae, ema = _vae(0), _vae(1)
    tok = hub.save_tokenizer(vae, tmp_path / "tok")
    assert hub.is_tokenizer_dir(tok) and sorted(os.listdir(tok)) == ["model_index.json", "vqvae"]
    _same(hub.load_tokenizer(tok), vae)  # tokenizer directory
    _same(hub.load_tokenizer(str(tok)), vae)
    _same(hub.load_tokenizer(tok / "vqvae" / "model.safetensors", v_patch_nums=(1, 2, 4)), vae)  # .safetensors
    torch.save(vae.state_dict(), tmp_path / "vae_small.pth")
    _same(hub.load_tokenizer(tmp_path / "vae_small.pth", v_patch_nums=(1, 2, 4)), vae)  # .pth
    torch.save({"model": vae.state_dict()}, tmp_path / "plain.pt")
    _same(hub.load_tokenizer(tmp_path / "plain.pt", v_patch_nums=(1, 2, 4)), vae)  # a .pt state dict
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp_path / "x.safetensors"))
    from types import SimpleNamespace

    preset = SimpleNamespace(vqvae=_small_cfg())  # only its tokenizer part is read
    _same(hub.load_tokenizer(tmp_path / "x.safetensors", preset=preset), vae)  # the schedule from the preset
    run = tmp_path / "run"
    step_file = _tokenizer_run(str(run), vae, ema)
    _same(hub.load_tokenizer(run), ema)  # run folder: latest checkpoint, EMA weights
    _same(hub.load_tokenizer(step_file), ema)  # its step_*.pt
    vae_raw, use = hub.tokenizer_from_checkpoint(step_file, weights="raw")
    assert use == "raw"
    _same(vae_raw, vae)
    only = tmp_path / "only_export"  # run folder holding only its export
    hub.save_tokenizer(vae, only / "tokenizer")
    _same(hub.load_tokenizer(only), vae)
    pipe = hub.load_components(tiny_pipe_dir)[0]  # pipeline directory
    _same(hub.load_tokenizer(tiny_pipe_dir), pipe)
    _same(
        hub.load_tokenizer("default"), hub.load_components(hub.resolve_model_path("default"))[0]
    )  # the bundled model's
    tiny = get_preset("tiny")
    from nextscale.models import build_from_config

    _same(hub.load_tokenizer("random", preset=tiny, seed=3), build_from_config(tiny, seed=3, init_var=False)[0])
    for got in (hub.load_tokenizer(tok), hub.load_tokenizer(run)):
        assert not got.training


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(NextScaleError, match="not found"):
        hub.load_tokenizer(tmp_path / "missing")
    with pytest.raises(NextScaleError, match="holds no tokenizer"):
        hub.load_tokenizer(tmp_path)
    with pytest.raises(NextScaleError, match="needs preset"):
        hub.load_tokenizer("random")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(NextScaleError, match="no readable checkpoint"):
        hub.load_tokenizer(tmp_path / "run")
    from nextscale.checkpoint import save_checkpoint

    var_ckpt = str(tmp_path / "step_00000001.pt")
    save_checkpoint({"format": "nextscale-train", "step": 1, "modules": {"var": {}}, "config": {"model": {}}}, var_ckpt)
    with pytest.raises(NextScaleError, match="not a tokenizer training checkpoint"):
        hub.load_tokenizer(var_ckpt)


def test_save_tokenizer_is_atomic(tmp_path, monkeypatch):
    import nextscale.safeload as safeload

    vae = _vae(0)
    out = tmp_path / "tok"
    real = safeload.save_safetensors

    def half_then_fail(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safeload, "save_safetensors", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        hub.save_tokenizer(vae, out)
    assert os.listdir(tmp_path) == []  # no partial folder, no temp left behind
    monkeypatch.setattr(safeload, "save_safetensors", real)
    hub.save_tokenizer(vae, out)
    monkeypatch.setattr(safeload, "save_safetensors", half_then_fail)
    with pytest.raises(OSError):
        hub.save_tokenizer(_vae(1), out)  # a failed overwrite keeps the old one
    monkeypatch.setattr(safeload, "save_safetensors", real)
    assert os.listdir(tmp_path) == ["tok"]
    _same(hub.load_tokenizer(out), vae)


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_save_tokenizer_follows_the_umask(mask, tmp_path):
    old = os.umask(mask)
    try:
        out = hub.save_tokenizer(_vae(0), tmp_path / "tok")
    finally:
        os.umask(old)
    for d in (out, out / "vqvae"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o777 & ~mask
    for f in (out / "model_index.json", out / "vqvae" / "config.json", out / "vqvae" / "model.safetensors"):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o666 & ~mask


def test_library_never_imports_train_and_hub_has_no_cycle():
    import subprocess
    import sys

    code = (
        "import sys, nextscale.hub as h; assert h.load_tokenizer and h.save_tokenizer; "
        "import nextscale.pipelines, nextscale.evaluation.tokenizer; "
        "bad = [m for m in sys.modules if m.startswith('nextscale.train')]; assert not bad, bad; "
        "import nextscale, nextscale._version as v; assert nextscale.__version__ == v.__version__"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ the loop's collaborators
import signal  # noqa: E402

import torch.nn as nn  # noqa: E402

from nextscale.errors import NonFiniteError  # noqa: E402
from nextscale.train.optim import OptimSpec, Schedule, build_adamw, param_groups  # noqa: E402


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


class _Toy:
    """The objective surface the collaborators read (modules, ema_modules, state), plus the optimizer
    specs the trainer would hold (handed to the checkpointer with set_optimizers)."""

    def __init__(self, seed=0):
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
        self.counter = 0
        self.optim_specs = {
            "net": OptimSpec(
                build_adamw(param_groups(self.net), lr=1e-2),
                list(self.net.parameters()),
                Schedule(lr=1e-2, total=10),
                grad_clip=1.0,
            )
        }

    def modules(self):
        return {"net": self.net}

    def ema_modules(self):
        return ["net"]

    def state_dict(self):
        return {"counter": self.counter}

    def load_state_dict(self, st):
        self.counter = st.get("counter", 0)


class _Log:
    def __init__(self):
        self.lines = []

    def info(self, msg, echo=None):
        self.lines.append(msg)


def _parts(folder, keep_last=2, amp="none", ema=0.9, seed=0):
    from nextscale.checkpoint import Checkpointer
    from nextscale.train.ema import EMAHolder
    from nextscale.train.parallel import Parallel
    from nextscale.train.precision import Precision

    ob = _Toy(seed)
    par = Parallel(torch.device("cpu"), 1)
    par.wrap(ob.modules())
    prec = Precision(amp, torch.device("cpu"))
    prec.build(ob.optim_specs)
    holder = EMAHolder(ema)
    holder.build(ob)
    log = _Log()
    ck = Checkpointer(
        str(folder),
        keep_last,
        ob,
        par,
        prec,
        holder,
        batch_size=4,
        grad_accum=2,
        n_train=10,
        seed=0,
        run_config={"x": 1},
        log=log,
    )
    ck.set_optimizers(ob.optim_specs)
    return ob, prec, holder, ck, log


def _train_a_step(ob, prec, holder, step):
    from nextscale.train.guard import FiniteGuard

    loss = ob.net(torch.randn(3, 4)).pow(2).mean()
    prec.backward(loss, "net", 1)
    prec.step(ob.optim_specs, ["net"], step, FiniteGuard(None))
    holder.update(ob.modules())
    ob.counter += 1


def test_checkpointer_rotation_latest_and_resume(tmp_path):
    ob, prec, holder, ck, _ = _parts(tmp_path / "ck", keep_last=2)
    for step in range(1, 5):
        _train_a_step(ob, prec, holder, step - 1)
        ck.save(step)
    assert ck.files.steps() == [3, 4]  # keep_last rotation
    assert ck.existing(4) == ck.path(4) and ck.existing(1) is None
    assert ck.last_good().endswith(ck.path(4))
    want = {k: v.clone() for k, v in ob.net.state_dict().items()}
    want_ema = {k: v.clone() for k, v in holder.emas["net"].shadow.items()}
    want_opt = ob.optim_specs["net"].optimizer.state_dict()
    (tmp_path / "ck" / ".step_00000005.pt.tmp-1").write_bytes(b"half")  # a killed writer's temp file
    ob2, prec2, holder2, ck2, _ = _parts(tmp_path / "ck", keep_last=2, seed=1)
    step, state = ck2.find_latest()
    assert step == 4 and state["data"] == {"counter": 8, "epoch": 1, "index": 1} and state["config"] == {"x": 1}
    assert not any(f.startswith(".") for f in os.listdir(tmp_path / "ck"))  # temp files cleaned
    ck2.load_modules(state)
    ck2.load_rest(state, step)
    for k, v in ob2.net.state_dict().items():
        assert torch.equal(v, want[k]), k
    for k, v in holder2.emas["net"].shadow.items():
        assert torch.equal(v, want_ema[k]), k
    got_opt = ob2.optim_specs["net"].optimizer.state_dict()
    for i, st in want_opt["state"].items():
        for n, t in st.items():
            assert torch.equal(got_opt["state"][i][n], t)
    assert ob2.counter == 4


def test_checkpointer_refused_pickle_stops_the_resume(tmp_path):
    ob, prec, holder, ck, _ = _parts(tmp_path / "ck", keep_last=5)
    _train_a_step(ob, prec, holder, 0)
    ck.save(1)
    marker = tmp_path / "PWNED"
    torch.save({"step": 2, "x": _Evil(marker)}, ck.path(2))  # planted: never skipped in favour of step 1
    (tmp_path / "ck" / "step_00000003.pt").write_bytes(b"\x80garbage")  # unreadable: skipped with a warning
    with pytest.warns(RuntimeWarning, match="unreadable"):
        with pytest.raises(NextScaleError, match="refused"):
            ck.find_latest()
    assert not marker.exists()
    os.remove(ck.path(2))
    os.remove(tmp_path / "ck" / "step_00000003.pt")
    from nextscale.checkpoint import save_checkpoint

    save_checkpoint({"step": 4, "format": "something-else"}, ck.path(4))
    with pytest.raises(NextScaleError, match="not a nextscale training checkpoint"):
        ck.find_latest()


def test_checkpointer_world_size_change_reseeds_and_says_so(tmp_path):
    ob, prec, holder, ck, log = _parts(tmp_path / "ck")
    _train_a_step(ob, prec, holder, 0)
    ck.save(1)
    _, state = ck.find_latest()
    state["rng"] = state["rng"] * 2  # written by 2 ranks
    ck.load_rest(state, 1)
    assert any("world size changed (2 -> 1)" in line for line in log.lines)


def _spec_with_grad(value):
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), value)
    return p, {"net": OptimSpec(torch.optim.SGD([p], lr=0.1), [p], Schedule(lr=0.1, total=10), grad_clip=1.0)}


def test_precision_refuses_a_non_finite_grad_norm_without_a_scaler(tmp_path):
    from nextscale.train.guard import FiniteGuard
    from nextscale.train.precision import Precision

    log = _Log()
    p, specs = _spec_with_grad(float("nan"))
    guard = FiniteGuard(log, lambda: "; the last good checkpoint is X")
    with pytest.raises(
        NonFiniteError,
        match=r"step 5: the gradient norm of 'net' is nan; stopped before updating the "
        r"weights; the last good checkpoint is X \(lower lr or set grad_clip\)",
    ):
        Precision("none", torch.device("cpu")).step(specs, ["net"], 4, guard)
    assert torch.equal(p.detach(), torch.ones(3))  # never written
    assert log.lines and log.lines[0].startswith("error: step 5: the gradient norm")
    # with a loss scaler (fp16) the scaler skips the step itself: no error, weights unchanged, scale backs off
    prec = Precision("fp16", torch.device("cpu"))
    p, specs = _spec_with_grad(0.0)
    p.grad = None
    prec.build(specs)
    prec.backward((p * float("inf")).sum(), "net", 1)
    stats = prec.step(specs, ["net"], 0, guard)
    assert torch.equal(p.detach(), torch.ones(3)) and float(stats["net/scale_log2"]) == 10.0
    # a finite step clips and updates; inactive optimizers only drop their grads
    p, specs = _spec_with_grad(4.0)
    stats = Precision("none", torch.device("cpu")).step(specs, ["net"], 0, guard)
    assert float(stats["net/grad_norm"]) == pytest.approx(4.0 * 3**0.5) and not torch.equal(p.detach(), torch.ones(3))
    p, specs = _spec_with_grad(1.0)
    assert Precision("none", torch.device("cpu")).step(specs, [], 0, guard) == {} and p.grad is None


def test_precision_autocast_backward_and_state():
    from nextscale.train.precision import Precision

    with pytest.raises(NextScaleError, match="^amp must be none, bf16 or fp16"):
        Precision("fp8", torch.device("cpu"))
    with Precision("bf16", torch.device("cpu")).autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with Precision("none", torch.device("cpu")).autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    p = nn.Parameter(torch.ones(2))
    Precision("none", torch.device("cpu")).backward((p * 3).sum(), "net", grad_accum=4)  # averaged over micro-batches
    assert torch.equal(p.grad, torch.full((2,), 0.75))
    prec = Precision("fp16", torch.device("cpu"))
    prec.build(["a", "b"])
    st = prec.state_dict()
    assert set(st) == {"a", "b"} and st["a"]["scale"] == 2.0**11
    p.grad = None
    prec.backward((p * 3).sum(), "a", grad_accum=1)
    assert torch.equal(p.grad, torch.full((2,), 3.0 * 2**11))  # loss-scaled


def test_guard_losses_and_weights():
    from nextscale.train.guard import FiniteGuard, first_bad_loss

    assert first_bad_loss({"loss": torch.tensor(1.0), "acc": torch.tensor(float("nan"))}) is None  # only losses count
    assert first_bad_loss({"gan/d_loss": torch.tensor(float("inf"))}) == ("gan/d_loss", float("inf"))
    g = FiniteGuard(_Log(), lambda: "; no checkpoint was written")
    g.check_losses(None, 0)
    with pytest.raises(
        NonFiniteError, match=r"step 3: loss is nan; stopped before updating the weights; no checkpoint was written"
    ):
        g.check_losses(("loss", float("nan")), 2)
    net = nn.Linear(2, 2)
    g.check_weights({"net": net}, "before training")
    with torch.no_grad():
        net.bias[0] = float("nan")
    with pytest.raises(NonFiniteError, match="net.bias holds NaN/inf values before training"):
        g.check_weights({"net": net}, "before training")


def test_ema_holder(tmp_path):
    from nextscale.train.ema import EMAHolder

    ob = _Toy()
    off = EMAHolder(0.0)
    off.build(ob)
    assert off.emas == {} and off.state_dict() == {}
    with pytest.raises(NextScaleError, match="^ema is not supported with fsdp"):
        EMAHolder(0.9, fsdp=True).build(ob)
    h = EMAHolder(0.5)
    held = h.emas  # what an objective keeps from before fit() (its training samples use the EMA)
    h.build(ob)
    assert held is h.emas and list(held) == ["net"]
    before = {k: v.clone() for k, v in ob.net.state_dict().items()}
    with torch.no_grad():
        for p in ob.net.parameters():
            p.add_(2.0)
    h.update(ob.modules())
    for k, v in h.emas["net"].shadow.items():
        assert torch.allclose(v, before[k] + 1.0), k  # halfway with decay 0.5
    h2 = EMAHolder(0.5)
    h2.build(_Toy(seed=3))
    h2.load_state_dict(h.state_dict())
    for k, v in h2.emas["net"].shadow.items():
        assert torch.equal(v, h.emas["net"].shadow[k])


def test_stop_signals():
    from nextscale.train.signals import StopSignals

    old = signal.getsignal(signal.SIGTERM)
    s = StopSignals()
    with s:
        assert s.requested() is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert s.requested() == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C gives up at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is old  # handlers restored


def test_hooks_average_micro_batches_and_steps(tmp_path):
    from nextscale.train.config import LoopConfig
    from nextscale.train.hooks import Hooks
    from nextscale.train.logging import RunLogger

    cfg = LoopConfig(run_dir=str(tmp_path), max_steps=4, batch_size=4, grad_accum=2, log_every=2, progress=False)
    log = RunLogger(str(tmp_path), tensorboard=False, echo=False)
    h = Hooks(cfg, _Toy(), log, micro=2)
    for step in (1, 2):
        h.add_micro({"loss": torch.tensor(1.0 * step), "x": 3}, 2)
        h.add_micro({"loss": torch.tensor(3.0 * step)}, 2)
        h.add_stats({"net/grad_norm": torch.tensor(0.5)})
        h.step_done(0.1)
        assert h.log_due(step, None) == (step == 2)
    vals = h.log_train(2, {"net": (0.01, 0.05)})
    log.close()
    assert (
        vals["loss"] == pytest.approx(3.0)
        and vals["x"] == pytest.approx(1.5)
        and vals["net/grad_norm"] == pytest.approx(0.5)
    )
    assert vals["net/lr"] == 0.01 and vals["img_per_s"] == pytest.approx(40.0)
    assert h.sums == {} and h.n_sum == 0
    assert "step 2/4  loss 3.0000  x 1.5000" in (tmp_path / "log.txt").read_text()


def test_trainer_fit_is_a_short_loop():
    import inspect

    from nextscale.train.loop import Trainer

    assert len(inspect.getsource(Trainer.fit).splitlines()) <= 50


def test_tokenizer_beta_is_set_through_the_config(tmp_path):
    """--beta is a VQVAEConfig field: the trainer builds the model with it (never sets quantize.beta
    from outside), so the exported config.json says which commitment weight it was trained with."""
    from nextscale.train.config import TokenizerTrainConfig
    from nextscale.train.tokenizer import build_vae

    arch = dict(preset="mnist", ch=32, num_res_blocks=1, vocab_size=32, patch_nums=(1, 2, 4))
    vae = build_vae(TokenizerTrainConfig(beta=0.5, **arch))
    assert vae.config.beta == 0.5 and vae.quantize.beta == 0.5
    assert build_vae(TokenizerTrainConfig(**arch)).quantize.beta == 0.25
    out = hub.save_tokenizer(vae, tmp_path / "tok")
    assert hub.load_tokenizer(out).config.beta == 0.5
    ft = build_vae(TokenizerTrainConfig(init=str(out), beta=0.75))
    assert ft.config.beta == 0.75 and ft.quantize.beta == 0.75
