"""benchmarks/bench_t2i.py --reference without the reference: its flash-attn shim and its argument checks (fast).

The side-by-side run itself needs a FoundationVision/Infinity checkout and minutes of CPU; it is not run here."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_varlen_shim_is_per_sequence_attention_rounded_once():
    ir = _load("infinity_reference")
    g = torch.Generator().manual_seed(0)
    H, c, lq, lk = 2, 8, [3, 5], [4, 2]
    q = torch.randn(sum(lq), H, c, generator=g).bfloat16()
    kv = torch.randn(sum(lk), 2, H, c, generator=g).bfloat16()
    cu_q = torch.tensor([0, 3, 8], dtype=torch.int32)
    cu_k = torch.tensor([0, 4, 6], dtype=torch.int32)
    out = ir.varlen_kvpacked_attention(q, kv, cu_q, cu_k, 5, 4, dropout_p=0, softmax_scale=0.3)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    for b in range(2):
        qb = q[cu_q[b] : cu_q[b + 1]].float().transpose(0, 1)
        kb, vb = (t.transpose(0, 1) for t in kv[cu_k[b] : cu_k[b + 1]].float().unbind(1))
        want = F.scaled_dot_product_attention(qb, kb, vb, scale=0.3).transpose(0, 1).bfloat16()
        assert (out[cu_q[b] : cu_q[b + 1]].float() - want.float()).abs().max() <= 2**-7  # one bf16 rounding apart


def test_reference_mode_arguments(capsys):
    bench = _load("bench_t2i")
    with pytest.raises(SystemExit) as e:
        bench.main(["--help"])
    assert e.value.code == 0 and "--reference" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # the shim is CPU float32 only: refused before anything is built
        bench.main(["--reference", "/nonexistent", "--dtype", "bf16"])
    assert e.value.code == 2 and "float32" in capsys.readouterr().err


def test_child_processes_get_only_set_options():
    """The parent passes its options on to each child: unset ones and the per-child ones stay out."""
    bench = _load("bench_t2i")
    argv = bench.child_argv(bench.parser().parse_args(["--presets", "small", "--threads", "1"]))
    assert "--threads=1" in argv and "--pn=0.06M" in argv
    assert not [a for a in argv if a.endswith("=None") or a.startswith(("--make-weights", "--side", "--presets"))]
    bench.parser().parse_args(["--one", "small", *argv])  # a child parses them
