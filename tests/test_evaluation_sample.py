"""`nextscale sample-fid`: deterministic per-image seeds, sharding, resume, ADM npz."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nextscale.errors import NextScaleError
from nextscale.evaluation.sample import PROTOCOLS, chunk_plan, get_protocol

pipelines = pytest.importorskip("nextscale.pipelines")

PER_CLASS, BATCH = 1, 4  # tiny preset: 10 classes -> 10 images in 3 chunks (4, 4, 2)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_model")
    pipe = pipelines.NextScalePipeline.from_preset("tiny", seed=0)
    pipe.save_pretrained(str(d))
    return str(d), pipe.num_classes, pipe.resolution


def _run(model, out, *extra):
    """In-process `sample-fid` on one thread: torchrun gives each worker OMP_NUM_THREADS=1, and CPU
    float sums depend on the thread count (a uint8 pixel can flip by 1), so runs compared across
    launch modes use one thread for exact equality."""
    import torch

    from nextscale.app.cli import main

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(
            [
                "sample-fid",
                "--model",
                model,
                "--out",
                str(out),
                "--per-class",
                str(PER_CLASS),
                "--batch",
                str(BATCH),
                "--no-progress",
                "--seed",
                "7",
                *extra,
            ]
        )
    finally:
        torch.set_num_threads(n)


def _pngs(d):
    return sorted(n for n in os.listdir(d) if n.endswith(".png"))


def _pixels(d):
    from PIL import Image

    return {n: np.asarray(Image.open(os.path.join(d, n))) for n in _pngs(d)}


@pytest.fixture(scope="module")
def reference_run(tiny_model, tmp_path_factory):
    """One uninterrupted single-process run: the images every other run must reproduce."""
    model, _, _ = tiny_model
    out = tmp_path_factory.mktemp("ref") / "samples"
    assert _run(model, out) == 0
    return out


def test_chunk_plan_no_duplicates_or_gaps():
    for total, batch in [(10, 4), (50, 25), (7, 1), (1000, 32)]:
        for world in (1, 2, 3, 8):
            seen = [i for r in range(world) for c in chunk_plan(total, batch, r, world) for i in c]
            assert sorted(seen) == list(range(total))
            assert len(seen) == total


def test_protocols_named_and_overrides_renamed():
    r, p = PROTOCOLS["var-readme"], PROTOCOLS["var-paper"]  # protocols are named SamplingSettings
    assert (r.guidance_scale, r.top_p, r.top_k, r.more_smooth) == (1.5, 0.96, 900, False)
    assert (p.guidance_scale, p.top_k, p.top_p) == (2.0, 600, 0.0)
    assert get_protocol("readme")[:2] == ("var-readme", r) and get_protocol("paper")[1] is p
    assert get_protocol("var-readme", cfg=1.5)[:2] == ("var-readme", r)  # same values: still the named protocol
    name, c, description = get_protocol("var-readme", cfg=3.0)
    assert name == "var-readme+custom" and c.guidance_scale == 3.0 and "guidance_scale=3.0" in description
    with pytest.raises(NextScaleError, match="var-readme"):
        get_protocol("fast")


def test_sample_fid_single_process(tiny_model, reference_run):
    _, n_cls, res = tiny_model
    out = reference_run
    assert _pngs(out) == [f"{i:06d}.png" for i in range(PER_CLASS * n_cls)]
    with np.load(str(out) + ".npz", allow_pickle=False) as z:
        arr, labels = z["arr_0"], z["labels"]
    assert arr.dtype == np.uint8 and arr.shape == (PER_CLASS * n_cls, res, res, 3)
    np.testing.assert_array_equal(labels, np.arange(PER_CLASS * n_cls) // PER_CLASS)
    assert labels.dtype == np.int64
    px = _pixels(out)
    np.testing.assert_array_equal(arr, np.stack([px[n] for n in _pngs(out)]))  # npz = PNGs, in index order
    meta = json.loads((out / "sample_fid.json").read_text())
    st = meta["settings"]  # every sampling setting is recorded
    assert meta["protocol"] == "var-readme" and st["guidance_scale"] == 1.5 and st["top_k"] == 900 and meta["seed"] == 7
    assert st["speedups"]["prune_ratio"] == 0.0 and "speedups" not in meta  # the speed-ups, listed when on
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    assert not any(n.lower().endswith((".jpg", ".jpeg")) for n in os.listdir(out))


def test_sample_fid_resume_skips_finished_images(tiny_model, reference_run, tmp_path):
    model, n_cls, _ = tiny_model
    out = tmp_path / "samples"
    # "killed" after one chunk: 4 images, no npz
    assert _run(model, out, "--max-chunks", "1") == 0
    first = _pngs(out)
    assert first == [f"{i:06d}.png" for i in range(BATCH)]
    assert not os.path.exists(str(out) + ".npz")
    stats = {n: (os.stat(out / n).st_ino, os.stat(out / n).st_mtime_ns) for n in first}
    # a half-written image of chunk 1 (truncated PNG) must be redone
    (out / "000005.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert _run(model, out) == 0
    assert _pngs(out) == [f"{i:06d}.png" for i in range(PER_CLASS * n_cls)]
    for n, st in stats.items():  # finished images were not rewritten
        assert (os.stat(out / n).st_ino, os.stat(out / n).st_mtime_ns) == st
    ref, got = _pixels(reference_run), _pixels(out)
    for n in ref:  # identical to the uninterrupted run
        np.testing.assert_array_equal(got[n], ref[n])
    # a deleted image is re-created (its chunk is sampled again), nothing else is written
    os.remove(out / "000009.png")
    before = {n: (os.stat(out / n).st_ino, os.stat(out / n).st_mtime_ns) for n in _pngs(out)}
    assert _run(model, out, "--no-npz") == 0
    after = {n: (os.stat(out / n).st_ino, os.stat(out / n).st_mtime_ns) for n in _pngs(out)}
    assert [n for n in after if before.get(n) != after[n]] == ["000009.png"]
    np.testing.assert_array_equal(_pixels(out)["000009.png"], ref["000009.png"])


def test_sample_fid_killed_process_resumes(tiny_model, tmp_path):
    """SIGKILL a real run part-way, re-run: finished PNGs untouched, the set completes."""
    import signal
    import time

    model, n_cls, _ = tiny_model
    out = tmp_path / "samples"
    per_class = 5  # 50 images, 13 chunks
    cmd = [
        sys.executable,
        "-m",
        "nextscale",
        "sample-fid",
        "--model",
        model,
        "--out",
        str(out),
        "--per-class",
        str(per_class),
        "--batch",
        str(BATCH),
        "--seed",
        "7",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None:
            if out.is_dir() and len(_pngs(out)) >= 2 * BATCH:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = _pngs(out)
    assert proc.returncode == -signal.SIGKILL, proc.returncode  # died by the kill ...
    assert len(done) < per_class * n_cls, "the run finished before it was killed"  # ... mid-run
    assert len(done) >= 2 * BATCH and not os.path.exists(str(out) + ".npz")
    stats = {n: (os.stat(out / n).st_ino, os.stat(out / n).st_mtime_ns) for n in done}
    assert _run(model, out, "--per-class", str(per_class)) == 0
    assert _pngs(out) == [f"{i:06d}.png" for i in range(per_class * n_cls)]
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    for n, st in stats.items():
        assert (os.stat(out / n).st_ino, os.stat(out / n).st_mtime_ns) == st, n
    with np.load(str(out) + ".npz") as z:
        assert z["arr_0"].shape[0] == per_class * n_cls
        np.testing.assert_array_equal(z["labels"], np.arange(per_class * n_cls) // per_class)


def test_sample_fid_refuses_mixed_settings(tiny_model, reference_run, capsys):
    model, _, _ = tiny_model
    from nextscale.app.cli import main

    rc = main(
        [
            "sample-fid",
            "--model",
            model,
            "--out",
            str(reference_run),
            "--per-class",
            str(PER_CLASS),
            "--batch",
            str(BATCH),
            "--seed",
            "7",
            "--protocol",
            "var-paper",
            "--no-progress",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "protocol" in err and "new --out" in err and err.count("\n") == 1


@pytest.mark.dist
def test_sample_fid_two_process_gloo(tiny_model, reference_run, tmp_path):
    model, n_cls, _ = tiny_model
    out = tmp_path / "samples"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "nextscale",
        "sample-fid",
        "--model",
        model,
        "--out",
        str(out),
        "--per-class",
        str(PER_CLASS),
        "--batch",
        str(BATCH),
        "--seed",
        "7",
        "--no-progress",
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    total = PER_CLASS * n_cls
    assert _pngs(out) == [f"{i:06d}.png" for i in range(total)]  # exactly the set: no gaps, no extras
    with np.load(str(out) + ".npz") as z:
        assert z["arr_0"].shape[0] == total
        np.testing.assert_array_equal(z["labels"], np.arange(total) // PER_CLASS)
        with np.load(str(reference_run) + ".npz") as zr:  # same pixels as one process
            np.testing.assert_array_equal(z["arr_0"], zr["arr_0"])
    assert "over 2 process(es)" in r.stderr
