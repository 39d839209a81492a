"""Released models the way users reach them: hub variants from a real Hugging Face cache layout
(tiny weights under the released file names), loaded through huggingface_hub with HF_HUB_OFFLINE=1."""

import os

import pytest
import torch

from conftest import need_modules
from nextscale.configs import VARConfig, VQVAEConfig, scale_schedule_256
from nextscale.errors import NextScaleError
from nextscale.models import VAR, VQVAE
from nextscale.pipelines import NextScalePipeline

need_modules("huggingface_hub")

COMMIT = "c0ffee" * 6 + "abcd"
REPO = "FoundationVision/var"


def _tiny_release(seed: int, depth: int):
    """A tokenizer and a transformer with the released layout (256 px, 10 scales, 1000 classes), tiny widths."""
    torch.manual_seed(seed)
    vae = VQVAE.from_config(
        VQVAEConfig(
            vocab_size=64,
            z_channels=8,
            ch=32,
            ch_mult=(1, 1, 1, 1, 1),
            num_res_blocks=1,
            using_sa=False,
            using_mid_sa=False,
            v_patch_nums=scale_schedule_256,
        )
    )
    var = VAR.from_config(
        VARConfig(depth=depth, embed_dim=64, num_heads=1, num_classes=1000, patch_nums=scale_schedule_256), vae
    )
    var.init_weights(init_std=-1)
    return vae, var


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """<cache>/models--FoundationVision--var/{refs/main, snapshots/<commit>/...}, as huggingface_hub writes it."""
    root = tmp_path_factory.mktemp("hub")
    repo = root / "models--FoundationVision--var"
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    vae, var16 = _tiny_release(0, depth=1)
    _, var20 = _tiny_release(1, depth=2)
    torch.save(vae.state_dict(), snap / "vae_ch160v4096z32.pth")
    torch.save(var16.state_dict(), snap / "var_d16.pth")
    torch.save(var20.state_dict(), snap / "var_d20.pth")
    (snap / "var_d30.pth").write_bytes(b"not a checkpoint: loading d16 or d20 must never read this file")
    return root, snap, vae, var16


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_variant_from_the_hub_cache_reads_two_files_and_converts_once(hub_cache, offline, monkeypatch):
    import huggingface_hub

    root, snap, vae, var16 = hub_cache
    asked = []
    real = huggingface_hub.hf_hub_download
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **kw: asked.append(kw["filename"]) or real(**kw))
    pipe = NextScalePipeline.from_pretrained(REPO, variant="d16", cache_dir=str(root))
    assert sorted(asked) == ["vae_ch160v4096z32.pth", "var_d16.pth"]
    assert pipe.var.depth == 1 and pipe.num_classes == 1000
    for k, v in var16.state_dict().items():
        assert torch.equal(pipe.var.state_dict()[k], v), k
    conv = root / "nextscale-converted" / "FoundationVision--var" / COMMIT / "d16"
    assert (conv / "model_index.json").exists() and (conv / "var" / "model.safetensors").exists()
    assert pipe.labels[207] == "golden retriever"  # ImageNet names attached to the released models
    out = pipe(class_labels=["golden retriever"], seed=0, output_type="np")
    assert out.labels == [207]
    # the next load is the converted directory: the .pth files are not read again
    os.utime(conv / "model_index.json")
    before = {p: p.stat().st_mtime_ns for p in conv.rglob("*")}
    again = NextScalePipeline.from_pretrained(REPO, variant="d16", cache_dir=str(root))
    assert {p: p.stat().st_mtime_ns for p in conv.rglob("*")} == before
    assert torch.equal(
        again(class_labels=[207], seed=0, output_type="pt").images,
        pipe(class_labels=[207], seed=0, output_type="pt").images,
    )


def test_variant_errors_are_one_clear_line(hub_cache, offline):
    root = str(hub_cache[0])
    with pytest.raises(
        NextScaleError, match=r"variant 'd-16' is not a transformer depth; the reference released d16, d20"
    ):
        NextScalePipeline.from_pretrained(REPO, variant="d-16", cache_dir=root)
    with pytest.raises(
        NextScaleError,
        match=r"var_d24.pth is not available \(HF_HUB_OFFLINE is set and it is not in the local hub cache\)",
    ):
        NextScalePipeline.from_pretrained(REPO, variant="d24", cache_dir=root)
    with pytest.raises(NextScaleError, match="someone/empty: var_d16.pth is not available"):  # offline, not cached
        NextScalePipeline.from_pretrained("someone/empty", variant="d16", cache_dir=root)
    with pytest.raises(NextScaleError) as e:
        NextScalePipeline.from_pretrained(REPO, variant="d24", cache_dir=root)
    assert "\n" not in str(e.value) and "hf download FoundationVision/var var_d24.pth" in str(e.value)


def test_folder_of_released_files_needs_a_variant(hub_cache):
    _, snap, _, _ = hub_cache
    with pytest.raises(NextScaleError, match=r"holds 3 transformers \(d16, d20, d30\): choose one with variant="):
        NextScalePipeline.from_pretrained(snap)
    assert NextScalePipeline.from_pretrained(snap, variant="d20").var.depth == 2
    with pytest.raises(NextScaleError, match="has no var_d36.pth; it holds d16, d20, d30"):
        NextScalePipeline.from_pretrained(snap, variant="d36")
    with pytest.raises(NextScaleError, match="the default model has one"):
        NextScalePipeline.from_pretrained("default", variant="d16")


def test_cli_sample_a_hub_variant_by_class_name(hub_cache, offline, monkeypatch, tmp_path, capsys):
    """The acceptance command, against the on-disk hub cache (tiny weights)."""
    import huggingface_hub

    from nextscale.app.cli import main

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache[0]))
    out = tmp_path / "g.png"
    assert (
        main(
            [
                "sample",
                "--model",
                REPO,
                "--variant",
                "d16",
                "--class",
                "golden retriever",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "g_000_class207_golden-retriever.png"]
    assert main(["classes", REPO, "--variant", "d16", "--grep", "retriever"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert " 207  golden retriever" in lines and all("retriever" in ln for ln in lines if ln.strip()[:1].isdigit())
    assert (
        main(["sample", "--model", REPO, "--variant", "d99", "--out", str(tmp_path / "h.png"), "--device", "cpu"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "var_d99.pth is not available" in err[0] and not (tmp_path / "h.png").exists()
    assert (
        main(
            [
                "sample",
                "--model",
                REPO,
                "--variant",
                "d16",
                "--class",
                "golden retreiver",
                "--out",
                str(tmp_path / "h.png"),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "did you mean 'golden retriever' (207)" in capsys.readouterr().err
