"""Demo soak: does the demo's memory reach a plateau under many requests? (issue 27, "steady under load")

Sends ``--requests`` requests (default 500) to the demo and samples the server's resident set size (RSS,
``/proc/PID/status``) every 10 requests; prints a table of RSS after 100, 200, ... requests and the verdict
(acceptance: RSS after the last hundred within 10 % of RSS after 100). Modes:

- ``server``: the real Gradio app (``nextscale.app.demo.build_demo`` + ``launch_demo``, as ``nextscale demo``
  serves it) in a child process, driven through ``gradio_client``; every request comes from a **new session**
  (as every page load or script does) - the case that grew without a plateau before the session cap;
- ``backend``: :class:`~nextscale.app.demo.DemoBackend` in this process (no Gradio): the model, the streaming
  thread and the images alone;
- ``t2i`` / ``t2i-server``: the text-to-image tab (:class:`~nextscale.app.demo.T2IDemoBackend`) with a tiny random
  Infinity pair and a hashing stand-in text encoder built here (no download), in-process / through Gradio.

The mix (per 10 requests): 5 generations (a class or "random", a fixed or random seed, batch 1 or 2), 2 edits
(in-paint, out-paint, class edit, variations in turn; an uploaded image and painted layer), 1 example, 2 refused
requests (one refused by Gradio's own check, one by ours). The server's console is read back: refused requests
must be one line each and no traceback. No asserts: the last line says PASS or FAIL.

    python benchmarks/bench_demo_soak.py                       # server, then t2i: 500 requests each
    python benchmarks/bench_demo_soak.py --mode backend --requests 300
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from typing import Callable, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))


def rss_mb(pid: int | None = None) -> float:
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------------------------------------ the models
class HashTextEncoder:
    """A stand-in text encoder: each word (and an end token) -> a fixed random vector seeded by its crc32."""

    def __init__(self, dim: int):
        self.dim = dim

    def __call__(self, prompts: List[str]):
        import torch

        from nextscale.text import features_from_rows

        rows = []
        for p in prompts:
            vecs = [
                torch.randn(self.dim, generator=torch.Generator().manual_seed(zlib.crc32(w.encode())))
                for w in p.split() + ["</s>"]
            ]
            rows.append(torch.stack(vecs))
        return features_from_rows(rows)


def tiny_t2i_pipeline():
    """A random Infinity pair of the smallest useful size (2 blocks, 64 wide) + the hashing encoder."""
    import torch

    from nextscale.models.bsq import BSQVAE, BSQConfig
    from nextscale.models.infinity import Infinity, InfinityConfig
    from nextscale.pipeline_t2i import NextScaleT2IPipeline

    torch.manual_seed(0)
    vcfg = BSQConfig(codebook_dim=6, base_ch=24, ch_mult=(1, 2), num_res_blocks=1, patch_size=2)
    cfg = InfinityConfig(
        depth=2, embed_dim=64, num_heads=2, vae_bits=6, text_channels=128, text_maxlen=64, block_chunks=2
    )
    vae, model = BSQVAE(vcfg).eval().requires_grad_(False), Infinity(cfg).eval().requires_grad_(False)
    return NextScaleT2IPipeline(vae, model, HashTextEncoder(128), default_pn="0.06M")


def load(kind: str):
    if kind == "t2i":
        return tiny_t2i_pipeline()
    from nextscale.pipelines import load_pipeline

    return load_pipeline("default")


# ------------------------------------------------------------------------------------------------ requests
def edit_files(d: str, size: int = 256) -> Tuple[str, str]:
    from PIL import Image, ImageDraw

    bg = Image.new("RGB", (size, size), (200, 60, 50))
    ImageDraw.Draw(bg).ellipse((40, 40, 200, 200), fill=(40, 190, 90))
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    ImageDraw.Draw(layer).rectangle((60, 60, 140, 140), fill=(255, 255, 255, 255))
    paths = os.path.join(d, "bg.png"), os.path.join(d, "layer.png")
    bg.save(paths[0])
    layer.save(paths[1])
    return paths


MODES = ("in-paint", "out-paint", "class edit", "variations")


def class_requests(backend, files) -> List[Callable[[Callable, int], Tuple[str, tuple, bool]]]:
    """One cycle of 10 request builders: i -> (endpoint, args, refused?)."""
    st = backend.sampling_args()
    bad_smooth = backend.sampling_args(more_smooth="maybe") if "more_smooth" in backend.labels else None

    def gen(i):
        cls = "random" if i % 3 == 0 else str(i % backend.pipe.num_classes)
        return "/generate", (cls, i, i % 7 == 0, 1 + i % 2, *st), False

    def edit(i):
        mode, cls = MODES[(i // 5) % 4], str(i % backend.pipe.num_classes)
        return "/edit", (files(i), mode, cls, "right", 8, 2, i, False, 1, *st), False

    def example(i):
        return "/example", (backend.example_names()[i % len(backend.example_names())],), False

    def bad_gradio(i):  # refused by Gradio's own check (a dropdown value that is no choice)
        return "/generate", ("not-a-class", i, False, 1, *st), True

    def bad_ours(i):  # refused by the backend's check
        if bad_smooth is not None:
            return "/generate", ("1", i, False, 1, *bad_smooth), True
        return "/generate", ("1", -5 - i, False, 1, *st), True

    return [gen, gen, edit, gen, bad_gradio, gen, example, edit, gen, bad_ours]


def t2i_requests(backend, files=None):
    st = backend.sampling_args()
    aspects = [v for _, v in backend.aspects]
    words = "a red fox cat dog in snow at golden hour on a hill by the sea".split()

    def gen(i):
        prompt = " ".join(words[j % len(words)] for j in range(i % 5, i % 5 + 3 + i % 4))
        return (
            "/generate_t2i",
            (prompt, "blurry" if i % 4 == 0 else "", aspects[i % 3], "0.06M", i, False, 1, *st),
            False,
        )

    def bad_ours(i):
        return "/generate_t2i", ("", "", "1:1", "0.06M", i, False, 1, *st), True  # empty prompt

    def bad_gradio(i):
        return "/generate_t2i", ("a cat", "", "5:9", "0.06M", i, False, 1, *st), True  # no such aspect

    return [gen, gen, gen, gen, bad_ours, gen, gen, gen, gen, bad_gradio]


# ------------------------------------------------------------------------------------------------ drivers
def run_backend(kind: str, n: int, tmp: str):
    import torch
    from PIL import Image

    from nextscale.app.demo import DemoBackend, T2IDemoBackend
    from nextscale.errors import NextScaleError

    torch.set_num_threads(1)
    pipe = load(kind)
    backend = T2IDemoBackend(pipe) if kind == "t2i" else DemoBackend(pipe)
    bg, layer = (Image.open(p).copy() for p in edit_files(tmp))
    cycle = (t2i_requests if kind == "t2i" else class_requests)(
        backend, lambda i: {"background": bg, "layers": [layer], "composite": None}
    )
    calls = {
        "/generate": backend.generate,
        "/edit": backend.edit,
        "/generate_t2i": backend.generate,
        "/example": backend.example,
    }

    def one(i):
        api, args, refused = cycle[i % len(cycle)](i)
        try:
            out = calls[api](*args)
            if api != "/example":
                for _ in out:
                    pass
        except NextScaleError:
            if not refused:
                raise
            return True
        if refused:
            raise RuntimeError(f"request {i} ({api}) was not refused")
        return False

    return soak(n, one, lambda: rss_mb()), None


def serve_child(kind: str, port: int) -> None:
    """The child process of the server modes: load the model, serve it as ``nextscale demo`` does."""
    import torch

    from nextscale.app import demo as demo_module

    torch.set_num_threads(1)
    demo = demo_module.build_demo(load(kind))
    getattr(demo_module, "log_to_console", lambda: None)()  # (absent before issue 27: to measure that version)
    print("ready", flush=True)
    demo_module.launch_demo(demo, host="127.0.0.1", port=port, block=True)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_server(kind: str, n: int, tmp: str):
    from gradio_client import Client, handle_file

    from nextscale.app.demo import DemoBackend, T2IDemoBackend

    port = free_port()
    log_path = os.path.join(tmp, f"server-{kind}.log")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", kind, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        client = None
        for _ in range(240):
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {open(log_path).read()[-2000:]}")
            try:
                client = Client(url, verbose=False, analytics_enabled=False, download_files=False)
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        if client is None:
            raise RuntimeError("the server did not start in 120 s")
        # the request builders need the backend's lists (sampling values, examples): a local copy of the backend
        pipe = load(kind)
        backend = T2IDemoBackend(pipe) if kind == "t2i" else DemoBackend(pipe)
        bg, layer = edit_files(tmp)
        cycle = (t2i_requests if kind == "t2i" else class_requests)(
            backend, lambda i: {"background": handle_file(bg), "layers": [handle_file(layer)], "composite": None}
        )

        def one(i):
            api, args, refused = cycle[i % len(cycle)](i)
            client.reset_session()  # a new session per request: every page load / script is one
            try:
                client.predict(*args, api_name=api)
            except Exception as e:  # noqa: BLE001 - gradio_client's AppError
                if not refused:
                    raise RuntimeError(f"request {i} ({api}) failed: {e}") from None
                return True
            if refused:
                raise RuntimeError(f"request {i} ({api}) was not refused")
            return False

        rows = soak(n, one, lambda: rss_mb(proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with open(log_path) as f:
        console = f.read().splitlines()
    return rows, console


def soak(n: int, one: Callable[[int], bool], rss: Callable[[], float]):
    """Run requests 0..n-1; sample RSS every 10. Returns rows (requests done, RSS MB, refused so far, seconds)."""
    rows = [(0, rss(), 0, 0.0)]
    t0, refused = time.monotonic(), 0
    for i in range(n):
        refused += one(i)
        if (i + 1) % 10 == 0:
            rows.append((i + 1, rss(), refused, time.monotonic() - t0))
            if (i + 1) % 100 == 0:
                print(f"  {i + 1} requests: RSS {rows[-1][1]:.1f} MB ({rows[-1][3]:.0f} s)", flush=True)
    return rows


def report(name: str, rows, console) -> bool:
    at = {r[0]: r for r in rows}
    step = 100 if rows[-1][0] >= 200 else 10  # a short run (a check of this script): every sample
    hundreds = [k for k in sorted(at) if k and k % step == 0]
    base = at[step][1] if step in at else rows[0][1]
    print(f"\n### {name}\n")
    print(f"| requests | RSS (MB) | vs {step} | refused so far | time (s) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    print(f"| 0 (started) | {rows[0][1]:.0f} | | 0 | 0 |")
    for k in hundreds:
        _, mb, ref, t = at[k]
        print(f"| {k} | {mb:.0f} | {100 * (mb / base - 1):+.1f} % | {ref} | {t:.0f} |")
    last = at[hundreds[-1]][1] if hundreds else rows[-1][1]
    ok = abs(last / base - 1) <= 0.10
    msg = f"RSS after {hundreds[-1] if hundreds else rows[-1][0]}: {last:.0f} MB vs {base:.0f} MB after {step}"
    if console is not None:
        tracebacks = sum("Traceback" in line for line in console)
        refused_lines = sum("refused /" in line for line in console)
        ok = ok and tracebacks == 0 and refused_lines == rows[-1][2]
        msg += f"; console: {refused_lines} 'refused' lines for {rows[-1][2]} refused requests, {tracebacks} tracebacks"
    print(f"\n{'PASS' if ok else 'FAIL'} ({name}): {msg}")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="server,t2i", help="comma list of: server, backend, t2i, t2i-server")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--child", choices=("class", "t2i"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        serve_child(a.child, a.port)
        return 0
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for mode in a.mode.split(","):
            print(f"{mode}: {a.requests} requests", flush=True)
            if mode == "server":
                rows, console = run_server("class", a.requests, tmp)
                name = "Gradio server, bundled default model, a new session per request"
            elif mode == "t2i-server":
                rows, console = run_server("t2i", a.requests, tmp)
                name = "Gradio server, tiny random text-to-image model, a new session per request"
            elif mode == "backend":
                rows, console = run_backend("class", a.requests, tmp)
                name = "DemoBackend in-process, bundled default model"
            elif mode == "t2i":
                rows, console = run_backend("t2i", a.requests, tmp)
                name = "T2IDemoBackend in-process, tiny random text-to-image model"
            else:
                raise SystemExit(f"unknown mode {mode!r}")
            ok = report(name, rows, console) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
