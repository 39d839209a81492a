"""NextScaleT2IPipeline: tiny random Infinity pairs + the tiny T5 of test_text.py (nothing downloaded).

Round trips and equivalences (save -> load identical output, batch == one at a time, seeds), sizes of the
dynamic-resolution tables (non-square, patchified), callbacks, in-/out-painting with kept bits, one-line
validation errors, and the released files through a real on-disk Hugging Face cache (tiny weights under the
released names, HF_HUB_OFFLINE=1)."""

import json
import os

import pytest
import torch

from nextscale.errors import FieldError, InputError, NextScaleError
from nextscale.models.bsq import BSQVAE, BSQConfig
from nextscale.models.infinity import Infinity, InfinityConfig, TextFeatures
from nextscale.pipeline_t2i import NextScaleT2IPipeline, T2IScaleStep, T2ISettings, keep_masks_t2i, resolve_size
from nextscale.schedules import TEMPLATES, scale_schedule

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
from test_text import _tokenizer  # noqa: E402  (the tiny tokenizer trained at test time)

T5_DIM = 128  # the transformer's text pool needs a multiple of 128


def _tiny_t5(d):
    tok = _tokenizer()
    cfg = transformers.T5Config(
        vocab_size=len(tok),
        d_model=T5_DIM,
        d_kv=16,
        d_ff=64,
        num_layers=1,
        num_heads=2,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    transformers.T5EncoderModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _tiny_pair(seed: int, patchify: bool, text_maxlen: int = 64):
    torch.manual_seed(seed)
    vcfg = BSQConfig(codebook_dim=4 if patchify else 6, base_ch=24, ch_mult=(1, 2), num_res_blocks=1, patch_size=2)
    vae = BSQVAE(vcfg).eval()
    cfg = InfinityConfig(
        depth=2,
        embed_dim=64,
        num_heads=2,
        vae_bits=vcfg.codebook_dim,
        apply_spatial_patchify=patchify,
        text_channels=T5_DIM,
        text_maxlen=text_maxlen,
        block_chunks=2,
        cond_drop_rate=0.0,
        drop_path_rate=0.0,
    )
    model = Infinity(cfg).eval()
    with torch.no_grad():  # a spread of bit logits, so that guidance, top-p and seeds change samples
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.head.weight.mul_(3)
    return vae.requires_grad_(False), model.requires_grad_(False)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return _tiny_t5(tmp_path_factory.mktemp("t5") / "tiny-t5")


@pytest.fixture(scope="module")
def encoder(t5_dir):
    from nextscale.text import T5TextEncoder

    return T5TextEncoder.from_pretrained(t5_dir, device="cpu")


@pytest.fixture(scope="module")
def pipe(encoder):
    vae, model = _tiny_pair(0, patchify=False)
    return NextScaleT2IPipeline(vae, model, encoder, default_pn="0.06M")


@pytest.fixture(scope="module")
def pipe8(encoder):
    vae, model = _tiny_pair(1, patchify=True)
    return NextScaleT2IPipeline(vae, model, encoder, default_pn="0.06M")


FAST = dict(num_scales=4, output_type="pt", return_bits=True)


def _same(a, b):
    assert torch.equal(a.images, b.images)
    assert all(torch.equal(x, y) for x, y in zip(a.bits, b.bits))


# ------------------------------------------------------------------------------------------------ round trips
def test_save_load_identical_output(pipe, tmp_path):
    out_dir = tmp_path / "tiny-t2i"
    pipe.save_pretrained(out_dir)
    names = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
    for f in (
        "model_index.json",
        "bsq/config.json",
        "bsq/model.safetensors",
        "infinity/config.json",
        "infinity/model.safetensors",
        "text_encoder/config.json",
    ):
        assert f in names, f
    assert not any(n.startswith(".") for n in os.listdir(tmp_path))  # no temp dir left beside it
    index = json.loads((out_dir / "model_index.json").read_text())
    assert index["_class_name"] == "NextScaleT2IPipeline" and index["default_pn"] == "0.06M"
    assert index["text_encoder"] == {"files": "text_encoder", "max_length": 512}  # small: stored as files
    assert index["sampling_defaults"] == T2ISettings().to_dict()
    again = NextScaleT2IPipeline.from_pretrained(out_dir)
    for k, v in pipe.transformer.state_dict().items():
        assert torch.equal(again.transformer.state_dict()[k], v), k
    kw = dict(prompt=["a red fox in the snow", "a cat"], seed=3, **FAST)
    _same(pipe(**kw), again(**kw))


def test_seed_determinism(pipe):
    a, b = pipe("a red fox", seed=5, **FAST), pipe("a red fox", seed=5, **FAST)
    _same(a, b)
    c = pipe("a red fox", generator=torch.Generator().manual_seed(5), **FAST)
    _same(a, c)
    d = pipe("a red fox", seed=6, **FAST)
    assert any(not torch.equal(x, y) for x, y in zip(a.bits, d.bits))


def test_batch_of_prompts_with_different_lengths_equals_one_at_a_time(pipe):
    """Greedy bits (top_k=1: no random numbers) with guidance: every row of a batch of prompts with different
    token counts equals that prompt sampled alone (images within float noise)."""
    prompts = ["a red fox in the snow at golden hour", "a cat", "the sea under a purple sky"]
    assert len({len(pipe.text_encoder.tokenize([p])[1].nonzero()) for p in prompts}) == 3
    kw = dict(top_k=1, guidance_scale=3.0, **FAST)
    batch = pipe(prompts, **kw)
    for b, p in enumerate(prompts):
        one = pipe(p, **kw)
        for k, (x, y) in enumerate(zip(one.bits, batch.bits)):
            assert torch.equal(x[0], y[b]), (b, k)
        torch.testing.assert_close(one.images[0], batch.images[b], atol=1e-4, rtol=0)


def test_num_images_per_prompt_and_negative_prompt(pipe):
    out = pipe(["a red fox", "a cat"], num_images_per_prompt=2, seed=0, **FAST)
    assert out.images.shape[0] == 4 and out.prompts == ["a red fox", "a red fox", "a cat", "a cat"]
    greedy = dict(top_k=1, **FAST)
    plain = pipe("a red fox", **greedy)
    neg = pipe("a red fox", negative_prompt="blurry dark", **greedy)
    assert any(not torch.equal(x, y) for x, y in zip(plain.bits, neg.bits))
    _same(plain, pipe("a red fox", negative_prompt="", **greedy))  # "" = the learned unconditional rows


def test_sizes_non_square_and_patchified(pipe, pipe8):
    for p, stride in ((pipe, 2), (pipe8, 4)):
        assert p.stride == stride
        for aspect, tpl in (("16:9", 0.571), (0.5, 0.5), ((3, 1), 3.0), ("3:4", 1.333)):
            out = p("a cat", aspect_ratio=aspect, seed=0, num_scales=5, output_type="np", return_bits=True)
            size = out.size
            assert size.h_div_w == tpl and list(size.schedule) == scale_schedule(tpl, "0.06M")[:5]
            h, w = size.schedule[-1]
            assert out.images.shape == (1, h * stride, w * stride, 3) == (1, size.height, size.width, 3)
            assert out.bits[-1].shape[1:3] == ((2 * h, 2 * w) if p is pipe8 else (h, w))
    # an exact size of the tables (h/w 0.5 at 0.06M: 11 x 22 tokens), and its pn found from the size
    size = pipe.size(height=22, width=44)
    assert (size.h_div_w, size.pn, size.height, size.width) == (0.5, "0.06M", 22, 44)
    assert pipe.size(aspect_ratio="1:1", pn="0.25M").schedule[-1] == (32, 32)


def test_callback_per_scale(pipe):
    steps = []
    out = pipe("a red fox", seed=1, callback_on_scale=steps.append, **FAST)
    assert [s.scale_index for s in steps] == [0, 1, 2, 3] and all(isinstance(s, T2IScaleStep) for s in steps)
    assert [s.grid_hw for s in steps] == list(out.size.schedule) and all(s.num_scales == 4 for s in steps)
    assert all(torch.equal(s.bits, b) for s, b in zip(steps, out.bits))
    assert steps[0].images.shape == out.images.shape  # partial images: the running sum decoded
    torch.testing.assert_close(steps[-1].images, out.images, atol=0, rtol=0)
    assert not torch.equal(steps[0].images, steps[-1].images)


# ------------------------------------------------------------------------------------------------ editing
def _image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(1, h // 8), max(1, w // 8), generator=g)
    return torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0]


@pytest.mark.parametrize("which", ["pipe", "pipe8"])
def test_inpaint_keep_all_returns_the_input_bits(which, request):
    p = request.getfixturevalue(which)
    size = p.size(aspect_ratio=0.5, pn="0.06M")
    img = _image(size.height, size.width)
    black = torch.zeros(size.height, size.width)
    with pytest.warns(UserWarning, match="every token is kept"):
        out = p.inpaint(img, black, "a red fox", aspect_ratio=0.5, seed=0, output_type="pt", return_bits=True)
    want = p.encode_image(img[None] * 2 - 1, list(size.schedule))
    assert all(torch.equal(a, b) for a, b in zip(out.bits, want))
    # the left half regenerated (white), the right half kept: the kept tokens keep the input's bits
    mask = torch.zeros(size.height, size.width)
    mask[:, : size.width // 2] = 1
    out = p.inpaint(img, mask, "a red fox", aspect_ratio=0.5, seed=0, output_type="pt", return_bits=True)
    last_w = out.bits[-1].shape[2]
    assert torch.equal(out.bits[-1][:, :, last_w // 2 :], want[-1][:, :, last_w // 2 :])
    assert not torch.equal(out.bits[-1], want[-1])


def test_inpaint_outpaint_and_keep_masks(pipe):
    size = pipe.size(aspect_ratio=1.0, pn="0.06M")
    img = _image(24, 24)
    out = pipe.inpaint(img, None, "a cat", outpaint=(8, 0, 0, 0), seed=0, aspect_ratio=1.0, output_type="np")
    assert out.images.shape == (1, size.height, size.width, 3)
    keep = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    keep[..., :, 16:] = True
    masks = keep_masks_t2i(keep, [(1, 1), (2, 2), (16, 16)], [(1, 1), (2, 2), (16, 16)])
    assert masks[0].all() and masks[1][0].tolist() == [[False, True], [False, True]]
    assert masks[2][0, :, 8:].all() and not masks[2][0, :, :8].any()
    with pytest.raises(InputError, match="^nothing to edit"):
        pipe.inpaint(img, None, "a cat")


# ------------------------------------------------------------------------------------------------ validation
def _one_line(fn, match, err=InputError):
    with pytest.raises(err, match=match) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_every_validation_is_one_clear_line(pipe, encoder, t5_dir, tmp_path):
    _one_line(lambda: pipe(""), r"^prompt is empty; describe the image, or pass allow_empty_prompt to sample")
    with pytest.raises(FieldError) as e:  # arguments are FieldNames: a CLI renders them as its flags
        pipe("a cat", aspect_ratio="10:1")
    assert e.value.fields == ("aspect_ratio",)
    assert e.value.render(lambda n: "--aspect" if n == "aspect_ratio" else n).startswith("--aspect '10:1' (h/w 0.1)")
    with pytest.raises(FieldError) as e:
        pipe(["a cat", ""])
    assert e.value.render(lambda n: {"prompt": "--prompt", "allow_empty_prompt": "--allow-empty"}[n]) == (
        "--prompt[1] is empty; describe the image, or pass --allow-empty to sample from the empty prompt"
    )
    _one_line(lambda: pipe(["a cat", "  "]), r"^prompt\[1\] is empty")
    assert pipe("", allow_empty_prompt=True, **FAST).images.shape[0] == 1
    _one_line(lambda: pipe(None), "^prompt is required")
    _one_line(lambda: pipe(["a", 3]), "^prompt must be a string or a non-empty list")
    _one_line(
        lambda: pipe("a cat", aspect_ratio="10:1"), r"^aspect_ratio '10:1' \(h/w 0.1\) is outside the model's tables"
    )
    _one_line(lambda: pipe("a cat", aspect_ratio="wide"), "^aspect_ratio must look like '16:9'")
    _one_line(lambda: pipe("a cat", height=33, width=32), r"^height must be a positive multiple of 2 .* got 33")
    _one_line(lambda: pipe("a cat", height=34, width=32), r"^height=34, width=32 is not a size of the model's tables")
    _one_line(lambda: pipe("a cat", height=32), "^give both height and width")
    _one_line(lambda: pipe("a cat", height=32, width=32, aspect_ratio="1:1"), "^give either height and width")
    _one_line(lambda: pipe("a cat", height=32, width=32, pn="1M"), "is not a size of pn 1M")
    _one_line(lambda: pipe("a cat", pn="2M"), "^pn must be one of")
    _one_line(lambda: pipe("a cat", num_scales=9), r"^num_scales must be in \[1, 7\]")
    _one_line(lambda: pipe("a cat", guidance_scale=[1, 2]), r"^guidance_scale has 2 values but the model samples 7")
    _one_line(lambda: pipe("a cat", temperature=0), "^temperature must be > 0")
    _one_line(lambda: pipe("a cat", top_p=1.5), r"^top_p must be in \[0, 1\]")
    _one_line(lambda: pipe("a cat", top_k=-1), "^top_k must be >= 0")
    _one_line(lambda: pipe("a cat", cfg_insertion_layer=2), "^cfg_insertion_layer must be 0")
    _one_line(lambda: pipe("a cat", cfg_insertion_layer=-5), "cfg_insertion_layer entries must be 0")
    _one_line(lambda: pipe("a cat", output_type="jpg"), "^output_type must be")
    _one_line(lambda: pipe("a cat", seed=1, generator=torch.Generator()), "^give either seed or generator")
    _one_line(lambda: pipe("a cat", seed=-1), "seed")
    _one_line(lambda: pipe("a cat", num_images_per_prompt=0), "num_images_per_prompt must be >= 1")
    _one_line(lambda: pipe("a cat", negative_prompt=["a", "b"]), "^negative_prompt must be one string or 1")
    _one_line(lambda: pipe("a cat", settings={"top_k": 1}), "^settings must be a nextscale.T2ISettings")
    _one_line(lambda: T2ISettings(guidance_scale=-1), "^guidance_scale must be >= 0")
    _one_line(lambda: pipe.settings.replace(cfg=2), "^T2ISettings: unknown key 'cfg'")
    # text longer than the encoder reads: refused with its token count (the reference would cut it silently)
    long = " ".join(["fox"] * 40)
    msg = _one_line(lambda: pipe(long), r"^prompt is \d+ tokens long; the text encoder reads at most 64")
    assert "silently" in msg
    _one_line(lambda: pipe("a cat", negative_prompt=long), r"^negative_prompt is \d+ tokens long")
    # dtypes
    _one_line(lambda: pipe.to(torch.float16), "^dtype must be torch.float32 or torch.bfloat16")
    _one_line(lambda: NextScaleT2IPipeline.from_pretrained(tmp_path, torch_dtype=torch.int8), "^torch_dtype must be")
    # another text encoder width; no text encoder at all
    vae, model = _tiny_pair(0, patchify=False)
    other = NextScaleT2IPipeline(vae, model, lambda ps: TextFeatures.from_lens(torch.zeros(len(ps), 64), [1] * len(ps)))
    _one_line(lambda: other("a cat"), "^prompt: the text features are 64 wide but the transformer reads 128")
    _one_line(lambda: NextScaleT2IPipeline(vae, model)("a cat"), "^this pipeline has no text encoder")
    # nothing is written by a refused save
    _one_line(lambda: pipe.save_pretrained(tmp_path / "x", text_encoder="both"), "^text_encoder must be")
    assert not (tmp_path / "x").exists()


def test_bfloat16_weights_keep_float32_parts(pipe):
    vae, model = _tiny_pair(0, patchify=False)
    p = NextScaleT2IPipeline(vae, model, pipe.text_encoder, default_pn="0.06M").to(dtype=torch.bfloat16)
    assert p.transformer.blocks[0].sa.mat_qkv.weight.dtype == torch.bfloat16
    assert p.transformer.head.weight.dtype == torch.float32 and p.transformer.cfg_uncond.dtype == torch.float32
    assert p.vae.encoder.conv_in.conv.weight.dtype == torch.float32
    assert p.vae.decoder.conv_in.conv.weight.dtype == torch.bfloat16
    out = p("a red fox", seed=0, **FAST)
    assert out.images.dtype == torch.float32 and bool(torch.isfinite(out.images).all())
    fp32 = NextScaleT2IPipeline(*_tiny_pair(0, patchify=False), pipe.text_encoder).weights_memory()
    mem = p.weights_memory()
    assert mem["text_encoder"] == fp32["text_encoder"] > 0 and mem["vae"] < fp32["vae"]
    assert fp32["transformer"] / 2 < mem["transformer"] < fp32["transformer"]
    assert mem["total"] == mem["transformer"] + mem["vae"] + mem["text_encoder"]


def test_resolve_size_table():
    """Every template and pn: the size it gives is found again from its pixels."""
    for tpl in TEMPLATES:
        for pn in ("0.06M", "1M"):
            s = resolve_size(16, aspect_ratio=tpl, pn=pn)
            again = resolve_size(16, height=s.height, width=s.width)
            assert (again.h_div_w, again.pn, again.schedule) == (s.h_div_w, s.pn, s.schedule)
    s = resolve_size(16, aspect_ratio="16:9", pn="1M")  # h/w 0.5625 -> the 4:7 template, 48 x 84 tokens
    assert (s.h_div_w, s.height, s.width, len(s.schedule)) == (0.571, 768, 1344, 13)


# ------------------------------------------------------------------------------------------------ the hub
COMMIT = "1f2e3d4c" * 5
REPO = "FoundationVision/Infinity"


def _snapshot(root, repo):
    base = root / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(COMMIT)
    return snap


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, t5_dir):
    """A Hugging Face cache holding FoundationVision/Infinity (tiny weights under the released names) and
    google/flan-t5-xl (the tiny T5)."""
    pytest.importorskip("huggingface_hub")
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("hub")
    snap = _snapshot(root, REPO)
    vae2, inf2 = _tiny_pair(2, patchify=False)
    torch.save(inf2.state_dict(), snap / "infinity_2b_reg.pth")
    torch.save({"vae": vae2.state_dict()}, snap / "infinity_vae_d32reg.pth")
    vae8, inf8 = _tiny_pair(3, patchify=True)
    torch.save({"vae": vae8.state_dict()}, snap / "infinity_vae_d56_f8_14_patchify.pth")
    shards = snap / "infinity_8b_weights"
    shards.mkdir()
    sd = inf8.state_dict()
    keys = list(sd)
    parts = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    for name, ks in parts.items():
        save_file({k: sd[k].contiguous() for k in ks}, shards / name)
    (shards / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: n for n, ks in parts.items() for k in ks}})
    )
    (snap / "infinity_vae_d16.pth").write_bytes(b"not a checkpoint: no variant may read this file")
    t5 = _snapshot(root, "google/flan-t5-xl")
    for f in t5_dir.iterdir():
        (t5 / f.name).write_bytes(f.read_bytes())
    return root, inf2, inf8


@pytest.fixture
def asked(monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    names = []
    real = huggingface_hub.hf_hub_download
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **kw: names.append(kw["filename"]) or real(**kw))
    return names


def test_hub_2b_reads_its_two_files_and_converts_once(hub_cache, asked):
    root, inf2, _ = hub_cache
    pipe = NextScaleT2IPipeline.from_pretrained(REPO, variant="2b", cache_dir=str(root))
    assert sorted(asked) == ["infinity_2b_reg.pth", "infinity_vae_d32reg.pth"]
    conv = root / "nextscale-converted" / "FoundationVision--Infinity" / COMMIT / "2b"
    assert (conv / "model_index.json").exists() and (conv / "infinity" / "model.safetensors").exists()
    index = json.loads((conv / "model_index.json").read_text())
    assert index["text_encoder"] == {"name": "google/flan-t5-xl", "max_length": 512} and index["default_pn"] == "1M"
    assert pipe.settings == T2ISettings(guidance_scale=3.0, temperature=0.5, top_k=900, top_p=0.97)
    for k, v in inf2.state_dict().items():
        if k != "cfg_uncond":  # cfg_uncond is extended to 512 rows, as the official loader does
            assert torch.equal(pipe.transformer.state_dict()[k], v), k
    assert torch.equal(pipe.transformer.cfg_uncond[:64], inf2.cfg_uncond)
    out = pipe("a red fox", pn="0.06M", seed=0, **FAST)
    before = {p: p.stat().st_mtime_ns for p in conv.rglob("*")}
    again = NextScaleT2IPipeline.from_pretrained(REPO, variant="2b", cache_dir=str(root))
    assert {p: p.stat().st_mtime_ns for p in conv.rglob("*")} == before  # the converted directory is reused
    _same(out, again("a red fox", pn="0.06M", seed=0, **FAST))
    # a local folder of the released files (as huggingface-cli download writes it): loaded directly, nothing written
    snap = root / "models--FoundationVision--Infinity" / "snapshots" / COMMIT
    local = NextScaleT2IPipeline.from_pretrained(snap, variant="2b", text_encoder=pipe.text_encoder)
    _same(out, local("a red fox", pn="0.06M", seed=0, **FAST))
    assert not list(snap.glob("*.json")) and not (snap / "model_index.json").exists()


def test_hub_8b_reads_the_index_its_shards_and_the_tokenizer(hub_cache, asked):
    root, _, inf8 = hub_cache
    pipe = NextScaleT2IPipeline.from_pretrained(REPO, variant="8b", cache_dir=str(root))
    assert sorted(asked) == [
        "infinity_8b_weights/model-00001-of-00002.safetensors",
        "infinity_8b_weights/model-00002-of-00002.safetensors",
        "infinity_8b_weights/model.safetensors.index.json",
        "infinity_vae_d56_f8_14_patchify.pth",
    ]
    assert pipe.transformer.config.apply_spatial_patchify and pipe.stride == 4
    assert torch.equal(pipe.transformer.head.weight, inf8.head.weight)
    assert pipe("a cat", aspect_ratio="4:3", pn="0.06M", seed=0, num_scales=3, output_type="pt").images.shape[1] == 3


def test_hub_errors_are_one_clear_line(hub_cache, asked, tmp_path):
    root = str(hub_cache[0])
    _one_line(
        lambda: NextScaleT2IPipeline.from_pretrained(REPO, variant="20b", cache_dir=root),
        r"^variant '20b' is not a released Infinity model; choose one of 2b, 8b, 8b-512$",
        NextScaleError,
    )
    # offline, not in the cache: names the file and the download command
    msg = _one_line(
        lambda: NextScaleT2IPipeline.from_pretrained(REPO, variant="8b-512", cache_dir=root, text_encoder=False),
        "infinity_8b_512x512_weights/model.safetensors.index.json is not available",
        NextScaleError,
    )
    assert "hf download FoundationVision/Infinity" in msg
    _one_line(
        lambda: NextScaleT2IPipeline.from_pretrained("someone/empty", variant="2b", cache_dir=root, text_encoder=False),
        "^someone/empty: infinity_2b_reg.pth is not available",
        NextScaleError,
    )
    # no T5 in the cache: one line naming the fix, before anything is downloaded or converted
    empty = tmp_path / "empty-hub"
    empty.mkdir()
    n = len(asked)
    msg = _one_line(
        lambda: NextScaleT2IPipeline.from_pretrained(REPO, variant="2b", cache_dir=str(empty)),
        r"^text encoder name 'google/flan-t5-xl': no usable T5 encoder found",
    )
    assert "hf download google/flan-t5-xl" in msg and len(asked) == n
    _one_line(
        lambda: NextScaleT2IPipeline.from_pretrained(tmp_path),
        r"not a pipeline directory; for a folder of released files pass variant= \(2b, 8b, 8b-512\)$",
        NextScaleError,
    )


# ------------------------------------------------------------------------------------------------ the golden file
def _golden_pair(g, V):
    from nextscale.models.bsq import BSQConfig

    vae = BSQVAE(BSQConfig.from_reference_args(g["vae"][V]["args"]))
    vae.load_state_dict(g["vae"][V]["state_dict"], strict=True)
    kw = g["inf"][V]["kwargs"]
    model = Infinity(InfinityConfig.from_reference_kwargs(kw, g["vae"][V]["args"]["codebook_dim"]))
    model.load_state_dict(g["inf"][V]["state_dict"], strict=True)
    return vae.eval(), model.eval()


def _golden_text(g, name):
    t = g["inputs"]["texts"][name]
    return TextFeatures(t["kv_compact"], list(t["lens"]), t["cu_seqlens_k"], t["max_seqlen_k"])


def test_pipeline_replays_the_official_sampler(infinity_golden):
    """Every sampling case of the golden file through the pipeline's public arguments (aspect_ratio = the case's
    h/w, pn '0.06M', num_scales, per-scale guidance_scale / temperature, top_k, top_p, cfg_insertion_layer,
    negative_prompt_embeds, seed = g_seed): the schedule is the case's; the bits are the recorded ones and the image
    the official decoded image within README 7's 2e-4, except in documented near ties (tests/test_infinity_sampling.py),
    where the bits must be those of ``generate_t2i`` called directly."""
    from nextscale.sampling_t2i import generate_t2i

    g = infinity_golden
    for V, cases in g["infer"].items():
        exact = 0
        vae, model = _golden_pair(g, V)
        pipe = NextScaleT2IPipeline(vae, model, None, default_pn="0.06M")
        for name, rec in cases.items():
            a = rec["args"]
            neg = _golden_text(g, a["negative"]) if a.get("negative") else None
            kw = dict(
                prompt_embeds=_golden_text(g, a["text"]),
                negative_prompt_embeds=neg,
                aspect_ratio=a["h_div_w"],
                pn="0.06M",
                num_scales=a["n_scales"],
                guidance_scale=rec["cfg_list"],
                temperature=rec["tau_list"],
                top_k=a["top_k"],
                top_p=a["top_p"],
                cfg_insertion_layer=a["cfg_insertion_layer"],
                output_type="pt",
                return_bits=True,
            )
            if a.get("g_seed") is not None:
                out = pipe(seed=a["g_seed"], **kw)
                gen = torch.Generator().manual_seed(a["g_seed"])
            else:  # the global generator, as the reference's g_seed=None
                torch.manual_seed(a["torch_seed"])
                out = pipe(**kw)
                gen = torch.Generator().manual_seed(a["torch_seed"])
            assert [(1, h, w) for h, w in out.size.schedule] == [tuple(s) for s in rec["scale_schedule"]], name
            if all(torch.equal(x, y.squeeze(1)) for x, y in zip(out.bits, rec["bits_per_scale"])):
                torch.testing.assert_close(out.images, (rec["decoded"] + 1) / 2, atol=2e-4, rtol=0)
                exact += 1
                continue
            direct = generate_t2i(  # a recorded near tie: the pipeline must still be the loop itself
                model,
                vae,
                kw["prompt_embeds"],
                rec["scale_schedule"],
                cfg_list=rec["cfg_list"],
                tau_list=rec["tau_list"],
                top_k=a["top_k"],
                top_p=a["top_p"],
                generator=gen,
                negative_text=neg,
                cfg_insertion_layer=a["cfg_insertion_layer"],
            )
            assert all(torch.equal(x, y) for x, y in zip(out.bits, direct.bits_per_scale)), f"{V}.{name}"
        assert exact > 0, V  # public fixture: every case but p8 r05_full_cfg4 (one near-tie bit)


# ------------------------------------------------------------------------------------------------ settings
def test_settings_are_the_one_sampling_object():
    """T2ISettings is a SamplingSettings with Infinity's released values, the reference's names as aliases, and
    one line for what text-to-image cannot honour."""
    from nextscale.sampling import SamplingSettings

    st = T2ISettings()
    assert isinstance(st, SamplingSettings)
    assert (st.guidance_scale, st.temperature, st.top_k, st.top_p, st.guidance_schedule) == (
        3.0,
        0.5,
        900,
        0.97,
        "constant",
    )
    assert st.replace(cfg_list=[1, 2], tau_list=1).guidance_scale == (1.0, 2.0)
    _one_line(lambda: st.replace(prune_ratio=0.5), "^prune_ratio is not supported by text-to-image", FieldError)
    _one_line(lambda: st.replace(more_smooth=True), "^more_smooth is not supported", FieldError)
    _one_line(lambda: st.replace(kv_budget=(1, 2)), "^kv_budget is not supported", FieldError)
    _one_line(lambda: st.replace(guidance_schedule="linear"), "^guidance_schedule must be one of constant")
    _one_line(lambda: st.replace(cfg_insertion_layer=(0, 1)), "^cfg_insertion_layer must be 0")
    assert T2ISettings.from_dict(st.replace(guidance_cutoff=2).to_dict()) == st.replace(guidance_cutoff=2)


def test_reference_names_in_errors(pipe):
    """generate_t2i takes the reference's keywords; an error names them as given."""
    from nextscale.sampling_t2i import generate_t2i

    text = pipe._encode(["a cat"], "prompt")
    sched = list(pipe.size(num_scales=3).schedule)
    _one_line(lambda: generate_t2i(pipe.transformer, pipe.vae, text, sched, cfg_list=[1, 2]), "^cfg_list has 2 values")
    _one_line(lambda: generate_t2i(pipe.transformer, pipe.vae, text, sched, tau_list=0), "^tau_list must be > 0")


def test_guidance_cutoff(pipe):
    """Cut-off 0 is the exact path; cut-off N changes only the last N scales, which are then those of cfg 1 on
    the last N scales (same random stream), computed on the conditional rows only."""
    kw = dict(prompt=["a red cat", "a dog on a long sofa"], seed=3, num_scales=5, output_type="pt", return_bits=True)
    base = pipe(**kw)
    _same(pipe(guidance_cutoff=0, **kw), base)
    for n in (1, 2):
        cut = pipe(guidance_cutoff=n, **kw)
        assert all(torch.equal(a, b) for a, b in zip(cut.bits[: 5 - n], base.bits[: 5 - n]))
        assert not all(torch.equal(a, b) for a, b in zip(cut.bits[5 - n :], base.bits[5 - n :]))
        ones = pipe(guidance_scale=[3.0] * (5 - n) + [1.0] * n, **kw)
        _same(cut, ones)
    full = pipe(guidance_cutoff=5, **kw)
    _same(full, pipe(guidance_scale=1.0, **kw))
    _one_line(lambda: pipe(guidance_cutoff=6, **kw), "^guidance_cutoff must be <= the number of scales")
