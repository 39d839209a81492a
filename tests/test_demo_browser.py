"""The demo in a real browser: headless Debian chromium driven by Playwright's Python package.

Runs only where /usr/bin/chromium (or $NEXTSCALE_CHROMIUM), playwright and gradio are present
(``.ci/run`` installs them when it can); Playwright's own browser downloads are never used.
The page is served on 127.0.0.1; every request the page makes is recorded and anything that is
not the local server (fonts, CDNs, analytics) is blocked and fails the test.

Set NEXTSCALE_DEMO_SCREENSHOT=docs/images/demo.png to refresh the README picture.
"""

import os
import re
import socket
import time
from pathlib import Path

import pytest
import torch

from conftest import need_modules

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

CHROMIUM = os.environ.get("NEXTSCALE_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
need_modules("gradio", "gradio")

K = 4  # scales of the tiny preset
ARGS = [
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--no-default-browser-check",
]
if hasattr(os, "geteuid") and os.geteuid() == 0:
    ARGS.insert(0, "--no-sandbox")  # chromium refuses to run as root with its sandbox


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def server(tiny_pipe_dir):
    from nextscale.app.demo import build_demo, launch_demo
    from nextscale.pipelines import NextScalePipeline

    pipe = NextScalePipeline.from_pretrained(tiny_pipe_dir)
    demo = build_demo(pipe, scale_delay=0.25)  # the tiny model is fast: pause so that every scale is seen
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    _, url, _ = launch_demo(demo, host="127.0.0.1", port=port, block=False)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    """A fresh chromium profile; returns (context, blocked) where blocked lists non-local requests."""
    from playwright.sync_api import sync_playwright

    blocked = []
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            viewport={"width": 1280, "height": 900},
            timeout=60_000,
        )

        def route(r):
            u = r.request.url
            if u.startswith(server) or u.startswith(("data:", "blob:")):
                r.continue_()
            else:
                blocked.append(u)
                r.abort()

        ctx.route("**/*", route)
        ctx.set_default_timeout(60_000)
        yield ctx, blocked
        ctx.close()
    assert not blocked, f"the page tried to reach outside 127.0.0.1: {blocked[:5]}"


@pytest.fixture(scope="module")
def page(server, browser):
    ctx, _ = browser
    pg = ctx.new_page()
    pg.goto(server, wait_until="domcontentloaded")
    pg.wait_for_selector("#gen-button")
    return pg


WATCH = """([status, image]) => {
  window.__st = []; window.__src = [];
  const st = document.querySelector(status), im = document.querySelector(image);
  new MutationObserver(() => window.__st.push(st.innerText.trim()))
    .observe(st, {subtree: true, childList: true, characterData: true});
  new MutationObserver(() => {
    const i = im.querySelector('img');
    if (i && i.src && window.__src[window.__src.length - 1] !== i.src) window.__src.push(i.src);
  }).observe(im, {subtree: true, childList: true, attributes: true});
}"""


def _scales_seen(statuses):
    return [int(m.group(1)) for s in statuses for m in [re.match(r"scale (\d+)/", s)] if m]


def _wait_done(page, status_sel):
    page.wait_for_function(f"() => document.querySelector('{status_sel}').innerText.includes('done')")
    return page.locator(status_sel).inner_text()


def test_generate_in_the_browser_streams_every_scale(page, browser, tmp_path):
    page.evaluate(WATCH, ["#gen-status", "#ns-image"])
    page.click("#gen-button")
    status = _wait_done(page, "#gen-status")
    statuses, srcs = page.evaluate("window.__st"), page.evaluate("window.__src")
    assert sorted(set(_scales_seen(statuses))) == list(range(1, K + 1)), statuses  # 1x1, 2x2, ... arrived one by one
    assert _scales_seen(statuses) == sorted(_scales_seen(statuses))
    assert len(srcs) >= K, srcs  # K different pictures shown
    assert all(s.startswith(page.url.split("?")[0].rstrip("/")) for s in srcs)
    assert "seed 0" in status
    page.wait_for_selector("#gen-strip img")
    shot = tmp_path / "demo_generate.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("NEXTSCALE_DEMO_SCREENSHOT"):
        strip = page.locator("#gen-strip").bounding_box()
        page.screenshot(
            path=os.environ["NEXTSCALE_DEMO_SCREENSHOT"],
            full_page=True,
            clip={"x": 0, "y": 0, "width": 1280, "height": strip["y"] + strip["height"] + 16},
        )
    assert not browser[1]


def test_edit_round_trip_in_the_browser(page, browser, tmp_path):
    page.get_by_role("tab", name="Edit").click()
    page.wait_for_selector("#edit-load", state="visible")
    with page.expect_response(lambda r: "/file=" in r.url and r.request.method == "GET"):  # the example arrives
        page.click("#edit-load")
    page.wait_for_function("() => !document.querySelector('#edit-editor').innerText.includes('processing')")
    time.sleep(1.0)  # let the canvas draw the background before painting on it
    brush = page.locator("#edit-editor button[aria-label='Brush']")
    if brush.count() and "highlight" not in (brush.first.get_attribute("class") or ""):
        brush.first.click()
    canvas = page.locator("#edit-editor canvas").first.bounding_box()
    cx, cy = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2
    page.mouse.move(cx - 60, cy - 60)
    page.mouse.down()
    for i in range(1, 4):  # a short diagonal stroke (every move re-renders the canvas: keep them few)
        page.mouse.move(cx - 60 + 40 * i, cy - 60 + 40 * i)
    page.mouse.up()
    page.evaluate(WATCH, ["#edit-status", "#ns-edit-out"])
    page.click("#edit-button")  # mode: in-paint (the default)
    status = _wait_done(page, "#edit-status")
    statuses = page.evaluate("window.__st")
    assert sorted(set(_scales_seen(statuses))) == list(range(1, K + 1)), statuses
    pct = int(re.search(r"(\d+)% of the finest tokens regenerated", status).group(1))
    assert 0 < pct < 100, status  # the painted stroke, not all
    page.wait_for_selector("#edit-strip img")
    page.screenshot(path=str(tmp_path / "demo_edit.png"), full_page=True)
    # a value the widgets cannot produce (via the page's own API client path) gives a message, not a crash
    page.locator("#edit-mode label", has_text="class edit").click()
    page.click("#edit-button")  # class edit with 'unconditional' selected: refused with a message
    page.wait_for_selector(".toast-body", timeout=30_000)
    assert "class edit: pick" in " ".join(page.locator(".toast-body").all_inner_texts())
    assert not browser[1]
