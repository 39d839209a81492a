"""The demo (nextscale.app.demo): the backend (validation + pipeline calls) directly, then the Gradio
app through its API (gradio_client) on 127.0.0.1: streaming, 20 concurrent requests (each gets its
own seed's image, memory bounded), a bounded queue, and bad values sent straight to the API.

Backend tests need no Gradio; the server tests are skipped when gradio / gradio_client are absent.
Model: the random-weight tiny preset (64 px, 10 classes, scales 1, 2, 3, 4).
"""

import gc
import re
import socket
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from conftest import need_modules
from nextscale.errors import NextScaleError

K = 4  # scales of the tiny preset
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pandas, inside gradio's queue


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny model gains nothing from more threads, and on a busy 2-core machine 2 threads can be
    ~40x slower (oversubscription). Runs after conftest's ``_threads``; the server threads share it."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def pipe(tiny_pipe_dir):
    from nextscale.pipelines import NextScalePipeline

    return NextScalePipeline.from_pretrained(tiny_pipe_dir)


@pytest.fixture(scope="module")
def backend(pipe):
    from nextscale.app.demo import DemoBackend

    return DemoBackend(pipe)


def _reference(pipe, seed, cls=3, batch=1, guidance=1.5, top_k=50, top_p=0.96, smooth=False):
    """What the demo must return for these values: the pipeline called directly."""
    return pipe(
        class_labels=[cls] * batch,
        guidance_scale=guidance,
        top_k=top_k,
        top_p=top_p,
        more_smooth=smooth,
        generator=torch.Generator().manual_seed(seed),
        output_type="pil",
    ).images


def _g(backend, class_choice, guidance, top_k, top_p, more_smooth, seed, random_seed, batch_size, **more):
    """``/generate`` with the values named: the request's own, then every sampling widget in API order."""
    sampling = backend.sampling_args(guidance_scale=guidance, top_k=top_k, top_p=top_p, more_smooth=more_smooth, **more)
    return backend.generate(class_choice, seed, random_seed, batch_size, *sampling)


def _e(backend, editor_value, mode, class_choice, outpaint_side, outpaint_px, keep_scales, guidance, top_k, top_p,
       more_smooth, seed, random_seed, batch_size):  # fmt: skip
    """``/edit`` with the values named (as :func:`_g`)."""
    sampling = backend.sampling_args(guidance_scale=guidance, top_k=top_k, top_p=top_p, more_smooth=more_smooth)
    return backend.edit(
        editor_value, mode, class_choice, outpaint_side, outpaint_px, keep_scales, seed, random_seed, batch_size,
        *sampling,
    )  # fmt: skip


def _painted(size, box):
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(layer).rectangle(box, fill=(255, 255, 255, 255))
    return layer


# ---------------------------------------------------------------------------------------------
# Backend (no Gradio)
# ---------------------------------------------------------------------------------------------
def test_generate_streams_each_scale_then_the_result(backend, pipe):
    outs = list(_g(backend, "3", 1.5, 50, 0.96, False, 7, False, 1))
    assert len(outs) == K + 1
    for k, (img, strip, status) in enumerate(outs[:K]):
        assert img.size == (64, 64) and strip is None
        assert status.startswith(f"scale {k + 1}/{K} ({k + 1}x{k + 1})")
    img, strip, status = outs[-1]
    assert "seed 7" in status and status.startswith("done")
    assert np.array_equal(np.asarray(img), np.asarray(_reference(pipe, 7)[0]))  # the pipeline's image, exactly
    assert np.array_equal(np.asarray(outs[K - 1][0]), np.asarray(img))  # last scale = the result
    assert strip.size[0] > 4 * 128 and strip.size[1] > 128  # K captioned 128 px cells


def test_generate_batch_random_class_and_seed(backend):
    outs = list(_g(backend, "random", 0, 0, 0, True, 0, True, 2))
    img, strip, status = outs[-1]
    assert img.size[0] > 64 and strip.size[1] > 2 * 128  # a 2-image tile, a 2-row strip
    seed = int(re.search(r"seed (\d+)", status).group(1))
    assert 0 <= seed <= backend.limits.max_seed


def test_class_choices_have_names_when_the_model_has_them(pipe):
    from nextscale.app.demo import DemoBackend
    from nextscale.pipelines import NextScalePipeline

    named = NextScalePipeline(**{**pipe.components, "labels": [f"thing{i}" for i in range(10)]})
    choices = DemoBackend(named).class_choices()
    assert ("random class", "random") in choices and ("unconditional", "-1") in choices
    assert ("3: thing3", "3") in choices
    assert ("class 3", "3") in DemoBackend(pipe).class_choices()


BAD_GENERATE = [
    (dict(class_choice="x"), "class"),
    (dict(class_choice=10), "class"),
    (dict(class_choice=-2), "class"),
    (dict(class_choice=None), "class"),
    (dict(class_choice=1.5), "class"),
    (dict(guidance=-0.1), "guidance"),
    (dict(guidance=float("nan")), "guidance"),
    (dict(guidance=float("inf")), "guidance"),
    (dict(guidance=1e9), "guidance"),
    (dict(guidance="a"), "guidance"),
    (dict(guidance=None), "guidance"),
    (dict(top_k=-1), "top-k"),
    (dict(top_k=65), "top-k"),
    (dict(top_k=2.5), "top-k"),
    (dict(top_k=True), "top-k"),
    (dict(top_p=-0.01), "top-p"),
    (dict(top_p=1.01), "top-p"),
    (dict(top_p=[0.5]), "top-p"),
    (dict(more_smooth="yes"), "smoothing"),
    (dict(more_smooth=None), "smoothing"),
    (dict(seed=-1), "seed"),
    (dict(seed=2**31), "seed"),
    (dict(seed=0.5), "seed"),
    (dict(seed={}), "seed"),
    (dict(random_seed="no"), "random seed"),
    (dict(batch_size=0), "batch size"),
    (dict(batch_size=5), "batch size"),
    (dict(batch_size=10**12), "batch size"),
]


@pytest.mark.parametrize(
    "bad,what", BAD_GENERATE, ids=[f"{next(iter(b))}={next(iter(b.values()))!r}" for b, _ in BAD_GENERATE]
)
def test_generate_rejects_bad_values(backend, bad, what):
    args = dict(
        class_choice="3", guidance=1.5, top_k=50, top_p=0.96, more_smooth=False, seed=0, random_seed=False, batch_size=1
    )
    args.update(bad)
    with pytest.raises(NextScaleError, match=what):
        next(_g(backend, **args))


def test_edit_modes(backend):
    ex = backend.example("shapes")
    value = {"background": ex, "layers": [_painted(ex.size, (64, 64, 191, 191))], "composite": ex}
    common = ("left", 16, 2, 1.5, 50, 0.96, False, 3, False, 1)
    for mode, cls in (("in-paint", "random"), ("class edit", "2"), ("out-paint", "-1"), ("variations", "5")):
        outs = list(_e(backend, value, mode, cls, *common))
        assert len(outs) == K + 1, mode
        img, strip, status = outs[-1]
        assert img.size == (64, 64) and status.startswith(f"done: {mode}"), status
        assert strip.size[0] > (K + 2) * 128  # input, regen, K scales
    # in-paint of the painted square: 4x4 finest tokens of 16 px on the 64 px canvas; the square covers 2x2 of them
    assert "25% of the finest tokens regenerated" in list(_e(backend, value, "in-paint", "-1", *common))[-1][2]
    # a plain PIL image works for the modes that need no painting
    assert list(_e(backend, ex, "variations", "-1", *common))[-1][2].startswith("done")


BAD_EDIT = [
    (dict(editor_value=None), "no image"),
    (dict(editor_value="/etc/passwd"), "editor value"),
    (dict(editor_value={"background": None, "layers": []}), "no image"),
    (dict(editor_value={"background": "x", "layers": []}), "no image"),
    (dict(layers="oops"), "layers"),
    (dict(layers=[Image.new("RGBA", (10, 10))]), "layer 0 is 10x10"),
    (dict(layers=[]), "paint the region"),  # in-paint needs a painted region
    (dict(mode="class edit", class_choice="-1"), "class edit: pick"),
    (dict(mode="class edit", class_choice="random"), "class edit: pick"),
    (dict(mode="smudge"), "mode"),
    (dict(mode=None), "mode"),
    (dict(mode="out-paint", outpaint_side="middle"), "out-paint side"),
    (dict(mode="out-paint", outpaint_px=0), "out-paint width"),
    (dict(mode="out-paint", outpaint_px=64), "out-paint width"),
    (dict(mode="variations", keep_scales=5), "keep scales"),
    (dict(mode="variations", keep_scales=-1), "keep scales"),
    (dict(class_choice="11", mode="variations"), "class"),
    (dict(top_p=2), "top-p"),
    (dict(batch_size=0), "batch size"),
]


@pytest.mark.parametrize("bad,what", BAD_EDIT, ids=[f"{next(iter(b))}-{i}" for i, (b, _) in enumerate(BAD_EDIT)])
def test_edit_rejects_bad_values(backend, bad, what):
    ex = backend.example("stripes")
    bad = dict(bad)
    layers = bad.pop("layers", [_painted(ex.size, (0, 0, 100, 100))])
    args = dict(
        editor_value={"background": ex, "layers": layers, "composite": ex},
        mode="in-paint",
        class_choice="-1",
        outpaint_side="left",
        outpaint_px=16,
        keep_scales=2,
        guidance=1.5,
        top_k=50,
        top_p=0.96,
        more_smooth=False,
        seed=0,
        random_seed=False,
        batch_size=1,
    )
    args.update(bad)
    with pytest.raises(NextScaleError, match=what):
        next(_e(backend, **args))


def test_edit_refuses_huge_uploads(pipe):
    from nextscale.app.demo import DemoBackend, DemoLimits

    b = DemoBackend(pipe, limits=DemoLimits(max_image_pixels=100 * 100))
    big = Image.new("RGB", (101, 100))
    with pytest.raises(NextScaleError, match="pixels"):
        next(
            _e(
                b,
                {"background": big, "layers": []},
                "variations",
                "-1",
                "left",
                16,
                2,
                1.5,
                50,
                0.96,
                False,
                0,
                False,
                1,
            )
        )


def test_examples_and_bad_example(backend):
    names = backend.example_names()
    assert "shapes" in names and any(n.startswith("generated") for n in names)
    assert backend.example(names[-1]).size == (256, 256)
    with pytest.raises(NextScaleError, match="example"):
        backend.example("../../etc/passwd")


def test_model_errors_reach_the_caller_and_release_the_lock(backend, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(
        backend,
        "pipe",
        type(
            "P",
            (),
            {
                "__call__": boom,
                "num_classes": 10,
                "class_name": lambda self, c: str(c),
                "device": torch.device("cpu"),
                "settings": backend.pipe.settings,
            },
        )(),
    )
    with pytest.raises(RuntimeError, match="kaboom"):
        list(_g(backend, "3", 1.5, 50, 0.96, False, 0, False, 1))
    assert not backend.lock.locked()


def test_is_loopback():
    from nextscale.app.demo import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.org", ""))


def test_cli_demo_help_and_bad_values(capsys):
    from nextscale.app.cli import main

    with pytest.raises(SystemExit) as e:
        main(["demo", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--host" in out and "127.0.0.1" in out and "--port" in out
    assert main(["demo", "--scale-delay", "-1"]) == 2
    assert "--scale-delay" in capsys.readouterr().err


def test_cli_demo_without_gradio_says_how_to_install(monkeypatch, capsys, tiny_pipe_dir):
    import sys

    from nextscale.app.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert main(["demo", "--model", str(tiny_pipe_dir)]) == 2
    assert "nextscale[demo]" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The Gradio app through its API
# ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _launch(demo):
    from nextscale.app.demo import launch_demo

    last = None
    for _ in range(3):  # the port picked may be taken in between: try another
        try:
            _, url, _ = launch_demo(demo, host="127.0.0.1", port=_free_port(), block=False)
            return url
        except OSError as e:  # pragma: no cover - rare
            last = e
    raise last


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@pytest.fixture(scope="module")
def server(pipe):
    need_modules("gradio", "gradio", "gradio_client")
    from nextscale.app.demo import build_demo

    demo = build_demo(pipe, concurrency_limit=2, max_queue=32)  # 2 at once: the model lock must keep them apart
    url = _launch(demo)
    yield demo, url
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    _, url = server
    return Client(url, verbose=False, analytics_enabled=False, download_files=False)  # fetch only what is checked


def _gen_args(seed_, **kw):
    """``/generate``'s positional values: class, seed, random seed, batch size, then one per sampling
    widget (``nextscale.app.demo.sampling_fields`` order; the tiny model recommends the defaults)."""
    from nextscale.app.demo import sampling_fields
    from nextscale.sampling import SamplingSettings

    a = dict(class_choice="3", seed=seed_, random_seed=False, batch_size=1)
    st = dict(guidance_scale=1.5, top_k=50, top_p=0.96, more_smooth=False)
    for k, v in kw.items():
        (a if k in a else st)[k] = v
    rec = SamplingSettings().flat()
    return list(a.values()) + [st.get(f.name, getattr(rec, f.name)) for _, f in sampling_fields()]


def _png(x) -> np.ndarray:
    """An image output of the API: a downloaded path, or the file's dict (client with download_files=False)."""
    if isinstance(x, dict):
        import io
        import urllib.request

        assert x["url"].startswith("http://127.0.0.1:")
        with urllib.request.urlopen(x["url"], timeout=30) as r:
            x = io.BytesIO(r.read())
    with Image.open(x) as im:
        return np.asarray(im.convert("RGB"))


def test_server_is_loopback_queued_and_bounded(server):
    demo, url = server
    assert url.startswith("http://127.0.0.1:")
    assert demo._queue.max_size == 32 and demo._queue.default_concurrency_limit == 2


def test_api_generate_streams_scales(client, pipe):
    job = client.submit(*_gen_args(11), api_name="/generate")
    img, strip, status = job.result(timeout=120)
    outs = job.outputs()
    statuses = [o[2] for o in outs]
    assert [s.split(" ")[1] for s in statuses[:K]] == [f"{k}/{K}" for k in range(1, K + 1)], statuses
    assert status.startswith("done") and "seed 11" in status
    assert np.array_equal(_png(img), np.asarray(_reference(pipe, 11)[0]))
    assert _png(strip).shape[1] > K * 128


def test_api_twenty_concurrent_requests(server, client, pipe):
    """20 requests at once: all succeed, each returns its own seed's image, memory stays bounded."""
    demo = server[0]
    seeds = list(range(100, 120))
    with demo.nextscale_backend.lock:  # references from the same model, not racing the server
        refs = {s: np.asarray(_reference(pipe, s)[0]) for s in seeds}
    for s in seeds[:1]:  # warm-up (first-request allocations), then measure
        client.predict(*_gen_args(s), api_name="/generate")
    gc.collect()
    rss0 = _rss_mb()
    t0 = time.monotonic()
    jobs = {s: client.submit(*_gen_args(s), api_name="/generate") for s in seeds}
    results = {s: j.result(timeout=300) for s, j in jobs.items()}
    dt = time.monotonic() - t0
    gc.collect()
    rss1 = _rss_mb()
    for s, (img, _, status) in results.items():
        assert f"seed {s} " in status
        assert np.array_equal(_png(img), refs[s]), f"seed {s}: not its own image"
    assert len({_png(r[0]).tobytes() for r in results.values()}) == len(seeds)
    assert rss1 - rss0 < 250, f"RSS grew {rss1 - rss0:.0f} MB over 20 requests"
    print(f"20 concurrent requests: {dt:.1f} s, RSS {rss0:.0f} -> {rss1:.0f} MB")


@pytest.mark.parametrize(
    "field,value,msg",
    [  # Gradio's own component checks answer first where they apply (\b: the bound itself, not a prefix of it)
        ("guidance_scale", -1.0, r"Value -1\.0 is less than minimum value 0\b"),
        ("guidance_scale", 1e6, r"Value 1000000\.0 is greater than maximum value 10\b"),
        ("top_k", -5, r"Value -5 is less than minimum value 0\b"),
        ("top_k", 10**9, r"Value 1000000000 is greater than maximum value 64\b"),
        ("top_p", 7.0, r"Value 7\.0 is greater than maximum value 1\b"),
        ("seed", -3, r"Value -3 is less than minimum value 0\b"),
        ("batch_size", 64, r"Value 64 is greater than maximum value 4\b"),
        ("class_choice", "not-a-class", r"Value: not-a-class is not in the list of choices"),
        ("class_choice", "999", r"Value: 999 is not in the list of choices"),
        ("more_smooth", "maybe", "Gumbel smoothing must be true or false, got 'maybe'"),
        ("batch_size", "many", r"batch size: expected a number, got 'many'"),
    ],
)
def test_api_rejects_out_of_range_values(client, field, value, msg):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=msg):
        client.predict(*_gen_args(0, **{field: value}), api_name="/generate")


def test_api_survives_bad_values_and_edit_round_trip(client, pipe, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    bg = Image.new("RGB", (96, 96), (200, 60, 50))
    ImageDraw.Draw(bg).ellipse((20, 20, 76, 76), fill=(40, 190, 90))
    bg.save(tmp_path / "bg.png")
    _painted(bg.size, (0, 0, 47, 95)).save(tmp_path / "layer.png")
    value = {
        "background": handle_file(str(tmp_path / "bg.png")),
        "layers": [handle_file(str(tmp_path / "layer.png"))],
        "composite": None,
        "id": None,
    }
    sampling = _gen_args(5)[1:]  # seed, random seed, batch size, the sampling widgets
    job = client.submit(value, "in-paint", "-1", "right", 16, 2, *sampling, api_name="/edit")
    img, strip, status = job.result(timeout=120)
    assert len(job.outputs()) >= K + 1
    assert status.startswith("done: in-paint") and "50% of the finest tokens regenerated" in status, status
    assert _png(img).shape == (64, 64, 3)
    with pytest.raises(AppError, match="paint the region"):  # nothing painted: a message, not a crash
        client.predict({**value, "layers": []}, "in-paint", "-1", "right", 16, 2, *sampling, api_name="/edit")
    with pytest.raises(AppError):
        client.predict(value, "explode", "-1", "right", 16, 2, *sampling, api_name="/edit")
    ex = client.predict("shapes", api_name="/example")
    assert _png(ex["background"]).shape[:2] == (256, 256)
    # still serving after all that
    assert client.predict(*_gen_args(1), api_name="/generate")[2].startswith("done")


def test_refused_requests_are_one_log_line_without_traceback(client, capfd):
    """Refused by Gradio's own check (a slider's range) and by ours (a switch's value): each one log line naming
    the widget, and nothing on the console (Gradio printed a full traceback for each)."""
    import logging

    from gradio_client.exceptions import AppError

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("nextscale.app.demo")
    logger.addHandler(handler)
    capfd.readouterr()
    try:
        with pytest.raises(AppError, match="top-k: Value 1000000000 is greater than maximum value 64"):
            client.predict(*_gen_args(0, top_k=10**9), api_name="/generate")
        with pytest.raises(AppError, match="must be true or false"):
            client.predict(*_gen_args(0, more_smooth="maybe"), api_name="/generate")
    finally:
        logger.removeHandler(handler)
    lines = [r.getMessage() for r in records]
    assert len(lines) == 2 and all(x.startswith("refused /generate: ") and "\n" not in x for x in lines), lines
    assert all(r.exc_info is None for r in records)
    assert "Traceback" not in capfd.readouterr().err


def test_sessions_are_bounded(server):
    """Gradio copies the page's configuration into every new session and kept 10,000 of them: memory grew with
    every new browser tab / API client without a plateau. The demo caps them (it keeps no per-session state)."""
    from nextscale.app.demo import session_capacity

    demo, _ = server
    cap = session_capacity(demo)
    assert demo.state_session_capacity == cap <= 100 and demo.run_history is False
    for i in range(3 * cap):  # as many new sessions as requests would open
        demo.state_holder[f"soak-{i}"]
    assert len(demo.state_holder.session_data) <= cap


def test_backend_keeps_nothing_per_request(backend):
    """N requests leave no images, threads or growing lists behind (the soak benchmark's leak class, in
    seconds): the live PIL images after 12 more requests are those after the first 3."""
    import gc
    import threading

    def live_images() -> int:
        gc.collect()
        return sum(issubclass(type(o), Image.Image) for o in gc.get_objects())  # type(): no lazy-module warnings

    def run(n):
        for i in range(n):
            for _ in _g(backend, "random", 1.5, 50, 0.96, False, i, False, 1 + i % 2):
                pass
            with pytest.raises(NextScaleError):
                next(_g(backend, "not-a-class", 1.5, 50, 0.96, False, i, False, 1))

    run(3)
    before = live_images()
    run(12)
    assert live_images() <= before
    assert not [t for t in threading.enumerate() if t.name == "nextscale-demo-model"]


def test_api_16bit_upload_is_scaled_not_clipped(client, tmp_path):
    """A 16-bit grey PNG through /edit: the model sees dark grey (20000 / 65535 = 78 / 255), not white."""
    from gradio_client import handle_file

    Image.fromarray(np.full((64, 64), 20000, np.uint16)).save(tmp_path / "grey16.png")
    value = {"background": handle_file(str(tmp_path / "grey16.png")), "layers": [], "composite": None, "id": None}
    sampling = _gen_args(5)[1:]
    img, strip, status = client.predict(value, "variations", "-1", "right", 16, 2, *sampling, api_name="/edit")
    cell = _png(strip)[4:120, 4:120]  # the strip's first column: the model's input canvas
    assert status.startswith("done: variations") and abs(cell.mean() - 78) < 3, cell.mean()


def test_full_queue_is_refused_with_a_message(pipe, tmp_path):
    need_modules("gradio", "gradio", "gradio_client")
    from gradio_client import Client

    from nextscale.app.demo import build_demo

    demo = build_demo(pipe, concurrency_limit=1, max_queue=1, scale_delay=0.3)  # slow requests, room for one waiting
    try:
        c = Client(_launch(demo), verbose=False, analytics_enabled=False, download_files=False)
        jobs = [c.submit(*_gen_args(s), api_name="/generate") for s in range(5)]
        ok, refused = 0, []
        for j in jobs:
            try:
                j.result(timeout=120)
                ok += 1
            except Exception as e:  # noqa: BLE001
                refused.append(str(e))
        assert ok >= 1 and refused, (ok, refused)
        assert all("queue" in m.lower() for m in refused), refused
    finally:
        demo.close()


def test_startup_messages_warn_off_loopback():
    from nextscale.app.demo import startup_messages

    local = startup_messages("127.0.0.1", 7860)
    assert len(local) == 1 and "http://127.0.0.1:7860/" in local[0]
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        msgs = startup_messages(host, 7860)
        assert "WARNING" in msgs[0] and host in msgs[0] and "--host 127.0.0.1" in msgs[0]


def test_serve_loads_the_model_and_serves_the_page(tiny_pipe_dir):
    need_modules("gradio", "gradio")
    import urllib.request

    from nextscale.app.demo import serve

    msgs = []
    port = _free_port()
    demo = serve(str(tiny_pipe_dir), host="127.0.0.1", port=port, print_fn=msgs.append, block=False)
    try:
        assert len(msgs) == 1 and f"http://127.0.0.1:{port}/" in msgs[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            assert r.status == 200 and b"<html" in r.read(4096).lower()
    finally:
        demo.close()
    with pytest.raises(NextScaleError, match="port must be <= 65,535"):  # the field; the CLI says --port
        serve(str(tiny_pipe_dir), port=70000, print_fn=msgs.append, block=False)


def test_generate_speed_ups_are_checked_and_passed(backend):
    outs = list(_g(backend, "3", 1.5, 50, 0.96, False, 7, False, 1, guidance_cutoff=2, prune_ratio=0.5))
    assert outs[-1][2].startswith("done")
    with pytest.raises(NextScaleError, match="guidance cut-off"):
        next(_g(backend, "3", 1.5, 50, 0.96, False, 7, False, 1, guidance_cutoff=99))
    with pytest.raises(NextScaleError, match="token pruning"):
        next(_g(backend, "3", 1.5, 50, 0.96, False, 7, False, 1, prune_ratio=1.5))
