"""Offline is fast (issue 27): with the hub unreachable a hub id fails in seconds with one line naming the installed
download command (huggingface_hub retried a refused connection 5 times over ~30 s, a warning each time); what needs
no weights (the released models' class names, ``info`` about a released variant) needs no download."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import need_modules
from nextscale.errors import NextScaleError

need_modules("huggingface_hub")

DEAD = "http://127.0.0.1:9"  # the discard port: connection refused at once


@pytest.fixture
def unreachable(monkeypatch, tmp_path):
    """This process's huggingface_hub pointed at a dead endpoint and an empty cache (not offline: it must find out)."""
    from huggingface_hub import constants

    from nextscale import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", DEAD)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "_probe_cache", {})
    return tmp_path / "hub"


def _fails_fast(fn, *must):
    t0 = time.monotonic()
    with pytest.raises(NextScaleError) as e:
        fn()
    dt, msg = time.monotonic() - t0, str(e.value)
    assert dt < 5, f"{dt:.1f} s: {msg}"
    assert "\n" not in msg and "cannot be reached" in msg and all(m in msg for m in must), msg
    return msg


def test_unreachable_hub_is_one_line_in_seconds(unreachable, capfd):
    from nextscale.hub import hub_fetch_hint, resolve_model_path
    from nextscale.hub_t2i import resolve_t2i_path

    fetch = hub_fetch_hint("FoundationVision/var", "var_d16.pth")
    _fails_fast(lambda: resolve_model_path("FoundationVision/var", variant="d16"), "var_d16.pth", fetch)
    _fails_fast(lambda: resolve_t2i_path("FoundationVision/Infinity", variant="2b"), "infinity_2b_reg.pth")
    _fails_fast(lambda: resolve_model_path("someone/a-pipeline"), hub_fetch_hint("someone/a-pipeline"))
    assert "Retrying" not in capfd.readouterr().err


def test_cli_says_one_line_without_retry_warnings(unreachable, capsys, tmp_path):
    from nextscale.app.cli import main

    t0 = time.monotonic()
    rc = main(["sample", "--model", "FoundationVision/var", "--variant", "d20", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and time.monotonic() - t0 < 5 and len(err) == 1, err
    assert "cannot be reached" in err[0] and "download FoundationVision/var var_d20.pth" in err[0]
    assert not list(tmp_path.iterdir())  # nothing written


def test_fetch_hint_is_the_installed_command():
    from importlib.metadata import entry_points

    from nextscale.hub import hub_cli, hub_fetch_hint

    installed = {ep.name for ep in entry_points(group="console_scripts") if ep.value.startswith("huggingface_hub")}
    assert hub_cli() in installed or not installed
    if "hf" in installed:  # huggingface_hub >= 0.34: `huggingface-cli` is deprecated or gone
        assert hub_fetch_hint("org/name", "f.pth") == "hf download org/name f.pth"


def test_class_names_of_a_released_model_need_no_download(unreachable, monkeypatch, capsys):
    import huggingface_hub

    from nextscale.app.cli import main

    def no_network(**kw):
        raise AssertionError(f"tried to download {kw.get('filename')}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    assert main(["classes", "FoundationVision/var", "--variant", "d16", "--grep", "golden retriever"]) == 0
    assert capsys.readouterr().out.split() == ["207", "golden", "retriever"]
    assert main(["classes", "FoundationVision/var", "--variant", "d99"]) != 0  # a bad variant: still refused
    assert "d99" in capsys.readouterr().err


def test_info_of_a_released_variant_needs_no_download(unreachable, monkeypatch, capsys):
    import huggingface_hub

    from nextscale.app.cli import main

    real = huggingface_hub.hf_hub_download

    def cache_only(**kw):
        assert kw.get("local_files_only") is True, f"tried to download {kw.get('filename')}"
        return real(**kw)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", cache_only)
    t0 = time.monotonic()
    assert main(["info", "FoundationVision/var", "--variant", "d16"]) == 0
    out = capsys.readouterr().out
    assert "VAR d16: width 1024, 16 heads, per-block AdaLN, 310.3M parameters" in out, out
    assert "256x256; scales (1, 2, 3, 4, 5, 6, 8, 10, 13, 16) (680 tokens)" in out and "golden retriever" not in out
    assert "classes: 1000 e.g. tench" in out and "not in the local cache" in out
    assert main(["info", "FoundationVision/var", "--variant", "d36", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["var"]["shared_aln"] and d["resolution"] == 512 and d["tokens"] == 2240 and d["downloaded"] is False
    assert time.monotonic() - t0 < 30  # meta-device models: no weights allocated


def test_real_environment_unreachable_endpoint_and_empty_home(tmp_path):
    """As a user sees it: HF_ENDPOINT unreachable, an empty HF_HOME, a fresh process (the time counts from the
    call, not the interpreter start)."""
    script = textwrap.dedent(
        """
        import json, sys, time
        from nextscale.errors import NextScaleError
        from nextscale.pipelines import NextScalePipeline
        t0 = time.monotonic()
        try:
            NextScalePipeline.from_pretrained("FoundationVision/var", variant="d24")
            out = {"error": None}
        except NextScaleError as e:
            out = {"error": str(e)}
        out["s"] = time.monotonic() - t0
        print(json.dumps(out))
        """
    )
    env = dict(os.environ, HF_ENDPOINT=DEAD, HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1")
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_HUB_CACHE", None)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["error"] and res["s"] < 5, res
    assert "\n" not in res["error"] and "cannot be reached" in res["error"] and "var_d24.pth" in res["error"]
    assert "Retrying" not in r.stderr, r.stderr[-2000:]


def test_info_of_a_released_text_to_image_variant_needs_no_download(unreachable, monkeypatch, capsys):
    import huggingface_hub

    from nextscale.app.cli import main

    real = huggingface_hub.hf_hub_download

    def cache_only(**kw):
        assert kw.get("local_files_only") is True, f"tried to download {kw.get('filename')}"
        return real(**kw)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", cache_only)
    assert main(["info", "FoundationVision/Infinity", "--variant", "2b"]) == 0
    out = capsys.readouterr().out
    assert "Infinity: depth 32, width 2048, 16 heads, 2204.6M parameters" in out, out
    assert "weights: 8.62 GiB as loaded" in out and "fetches only this variant's infinity_2b_reg.pth" in out
