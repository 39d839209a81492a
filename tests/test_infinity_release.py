"""Released Infinity checkpoint formats (nextscale.infinity_release): tiny files in every naming / layout,
loaded strictly; bad files give one line."""

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from nextscale import compat_infinity as ci
from nextscale.errors import CheckpointError, InputError
from nextscale.infinity_release import (
    DROPPED_TRANSFORMER_KEYS,
    infer_bsq_config,
    infer_infinity_config,
    load_bsq_tokenizer,
    load_infinity_transformer,
    load_tokenizer_weights,
    load_transformer_weights,
    read_sharded,
    read_state_dict,
    read_tokenizer_state,
)
from nextscale.models.bsq import BSQ_PRESETS, BSQVAE, BSQConfig
from nextscale.models.infinity import Infinity, InfinityConfig, initial_cfg_uncond

TINY_BSQ = BSQConfig(codebook_dim=6, base_ch=24, ch_mult=(1, 2), num_res_blocks=1, patch_size=2)


def _one_line(e):
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


def _strip_wrappers(sd):
    """The other naming of README 1: ``X.weight`` instead of ``X.conv.weight`` / ``X.norm.weight``."""
    return {re.sub(r"\.(conv|norm)\.(weight|bias)$", r".\2", k): v for k, v in sd.items()}


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    m = BSQVAE(TINY_BSQ)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))  # GroupNorm's ones/zeros become distinguishable
    return m


def _assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ------------------------------------------------------------------------------------------------ tokenizer
@pytest.mark.parametrize("naming", ["module", "stripped", "mixed", "no_mask", "one_mask"])
def test_tokenizer_namings(tiny_vae, tmp_path, naming):
    sd = {k: v.clone() for k, v in tiny_vae.state_dict().items()}
    if naming == "stripped":
        sd = _strip_wrappers(sd)
        assert "encoder.conv_in.weight" in sd and "encoder.down.0.downsample.conv.weight" in sd
    elif naming == "mixed":
        enc = _strip_wrappers({k: v for k, v in sd.items() if k.startswith("encoder.")})
        sd = {**enc, **{k: v for k, v in sd.items() if not k.startswith("encoder.")}}
    elif naming == "no_mask":
        sd = {k: v for k, v in sd.items() if not k.endswith("lfq.mask")}
    elif naming == "one_mask":
        del sd["quantize.lfq.mask"]
    f = tmp_path / "vae.pth"
    torch.save({"vae": sd}, f)
    loaded = load_bsq_tokenizer(f)  # configuration read from the shapes
    assert loaded.config == TINY_BSQ and not loaded.training
    _assert_same(loaded, tiny_vae)
    again = load_tokenizer_weights(BSQVAE(TINY_BSQ), f)
    _assert_same(again, tiny_vae)
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.decode(loaded.encode_raw(x)), tiny_vae.decode(tiny_vae.encode_raw(x)), atol=0, rtol=0
        )


def test_tokenizer_plain_state_dict_and_preset_name(tiny_vae, tmp_path):
    f = tmp_path / "plain.pth"
    torch.save(tiny_vae.state_dict(), f)
    _assert_same(load_bsq_tokenizer(f, TINY_BSQ), tiny_vae)
    with pytest.raises(CheckpointError) as e:  # a preset of another size: the differences are named
        load_bsq_tokenizer(f, "infinity_vae_d16")
    assert "codebook_dim=6 (not 16), base_ch=24 (not 128)" in _one_line(e)
    with pytest.raises(CheckpointError) as e:  # an existing module of another size: the first odd key is named
        load_tokenizer_weights(BSQVAE(BSQ_PRESETS["infinity_vae_d16"]), f)
    assert "missing key" in _one_line(e)
    with pytest.raises(InputError, match="not a tokenizer preset"):
        load_bsq_tokenizer(f, "d17")


def _bad(tiny_vae, tmp_path, edit):
    sd = {k: v.clone() for k, v in tiny_vae.state_dict().items()}
    edit(sd)
    f = tmp_path / "bad.pth"
    torch.save({"vae": sd}, f)
    with pytest.raises(CheckpointError) as e:
        load_bsq_tokenizer(f, TINY_BSQ)
    msg = _one_line(e)
    assert msg.startswith(str(f))
    return msg


def test_tokenizer_errors(tiny_vae, tmp_path):
    msg = _bad(tiny_vae, tmp_path, lambda sd: sd.update({"encoder.extra.weight": torch.zeros(1)}))
    assert "unexpected key 'encoder.extra.weight'" in msg
    msg = _bad(tiny_vae, tmp_path, lambda sd: sd.update({"discriminator.w": torch.zeros(1)}))
    assert "unexpected key 'discriminator.w'" in msg
    msg = _bad(tiny_vae, tmp_path, lambda sd: sd.pop("decoder.conv_out.conv.bias"))
    assert "missing key 'decoder.conv_out.conv.bias'" in msg
    msg = _bad(tiny_vae, tmp_path, lambda sd: sd.update({"decoder.conv_out.conv.bias": torch.zeros(4)}))
    assert "decoder.conv_out.conv.bias has shape (4,)" in msg
    msg = _bad(tiny_vae, tmp_path, lambda sd: sd["quantizer.lfq.mask"].fill_(1))
    assert "quantizer.lfq.mask is a constant" in msg

    def dup(sd):
        sd["encoder.conv_in.weight"] = sd["encoder.conv_in.conv.weight"]

    assert "both give encoder.conv_in.conv.weight" in _bad(tiny_vae, tmp_path, dup)


def test_tokenizer_bad_files(tmp_path):
    cases = {"empty.pth": b"", "text.pth": b"hello world\n", "trunc.pth": None}
    for name, content in cases.items():
        f = tmp_path / name
        if content is None:
            torch.save({"vae": {"a": torch.zeros(3)}}, f)
            f.write_bytes(f.read_bytes()[:40])
        else:
            f.write_bytes(content)
        with pytest.raises(CheckpointError) as e:
            read_tokenizer_state(f)
        assert _one_line(e).startswith(str(f))
    f = tmp_path / "other.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "step": 3}, f)
    with pytest.raises(CheckpointError, match="no 'vae' entry"):
        read_tokenizer_state(f)
    with pytest.raises(CheckpointError, match="no such file"):
        read_tokenizer_state(tmp_path / "absent.pth")


def test_infer_config_from_release_manifests(infinity_manifests):
    """The configuration read from each released tokenizer's layout (shapes only, on meta) is its preset, in both
    namings."""
    for name, cfg in BSQ_PRESETS.items():
        man = json.loads((infinity_manifests / f"{name}.json").read_text())
        sd = {k: torch.empty(v["shape"], device="meta") for k, v in man["keys"].items()}
        assert infer_bsq_config(sd) == cfg, name
        assert infer_bsq_config(_strip_wrappers(sd)) == cfg, name
        with torch.device("meta"):
            model = BSQVAE(cfg)
        assert list(model.state_dict()) == list(sd)  # and the layout is the module's (strict loading is possible)


# ------------------------------------------------------------------------------------------------ generic readers
def test_read_sharded_dirs(tmp_path):
    sd = {f"w{i}": torch.randn(3, i + 1) for i in range(5)}
    for kind, index_name, ext in [
        ("st", "model.safetensors.index.json", "safetensors"),
        ("bin", "pytorch_model.bin.index.json", "bin"),
    ]:
        d = tmp_path / kind
        d.mkdir()
        shards = {"w0": 1, "w1": 1, "w2": 2, "w3": 2, "w4": 2}
        for s in (1, 2):
            part = {k: v for k, v in sd.items() if shards[k] == s}
            f = d / f"model-0000{s}-of-00002.{ext}"
            save_file(part, f) if ext == "safetensors" else torch.save(part, f)
        wm = {k: f"model-0000{s}-of-00002.{ext}" for k, s in shards.items()}
        (d / index_name).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": wm}))
        got = read_sharded(d)
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
        assert set(read_state_dict(d)) == set(sd)

        # an index entry whose shard does not hold it / a missing shard file: one line each
        wm2 = dict(wm, w0=f"model-00002-of-00002.{ext}")
        (d / index_name).write_text(json.dumps({"weight_map": wm2}))
        with pytest.raises(CheckpointError) as e:
            read_sharded(d)
        assert "w0" in _one_line(e)
        (d / index_name).write_text(json.dumps({"weight_map": dict(wm, w9=f"model-00003-of-00002.{ext}")}))
        with pytest.raises(CheckpointError, match="missing"):
            read_sharded(d)
        (d / index_name).write_text("{not json")
        with pytest.raises(CheckpointError, match="not a shard index"):
            read_sharded(d)
        (d / index_name).write_text(json.dumps({"weight_map": {"w0": "../x.bin"}}))
        with pytest.raises(CheckpointError, match="leaves the checkpoint directory"):
            read_sharded(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no model.safetensors.index.json"):
        read_sharded(empty)
    single = tmp_path / "single"
    single.mkdir()
    save_file(sd, single / "model.safetensors")
    assert set(read_state_dict(single)) == set(sd)


def test_read_state_dict_training_checkpoint(tmp_path):
    sd = {"a": torch.zeros(2)}
    f = tmp_path / "ar-ckpt.pth"
    torch.save({"trainer": {"gpt_fsdp": sd, "step": 1}, "args": {"x": 1}}, f)
    assert set(read_state_dict(f)) == {"a"}
    g = tmp_path / "weird.pth"
    torch.save({"a": torch.zeros(1), "b": 3}, g)
    with pytest.raises(CheckpointError, match="entry 'b' is not a named tensor"):
        read_state_dict(g)


def test_golden_tokenizers_load_in_both_namings(infinity_golden, tmp_path):
    """The golden file's official tokenizers, saved as the release does ({'vae': state_dict}), load strictly with
    the configuration read from the file; the other naming loads to the same weights."""
    for variant, rec in infinity_golden["vae"].items():
        want = BSQConfig.from_reference_args(rec["args"])
        for naming, sd in (("module", rec["state_dict"]), ("stripped", _strip_wrappers(rec["state_dict"]))):
            f = tmp_path / f"{variant}_{naming}.pth"
            torch.save({"vae": sd}, f)
            model = load_bsq_tokenizer(f)
            assert model.config == want, (variant, naming)
            got = model.state_dict()
            assert all(torch.equal(got[k], v) for k, v in rec["state_dict"].items()), (variant, naming)


# ------------------------------------------------------------------------------------------------ transformer

TINY_INF = InfinityConfig(
    depth=4,
    embed_dim=64,
    num_heads=2,
    vae_bits=4,
    apply_spatial_patchify=True,
    text_channels=128,
    text_maxlen=8,
    block_chunks=2,
    cond_drop_rate=0.0,
    drop_path_rate=0.0,
)


@pytest.fixture(scope="module")
def tiny_inf():
    torch.manual_seed(1)
    m = Infinity(TINY_INF)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m


def _same_state(model, sd, skip=()):
    got = model.state_dict()
    for k, v in sd.items():
        if k not in skip:
            assert torch.equal(got[k], v.to(got[k].dtype)), k


def _cfg_fields(c):
    return (
        c.depth,
        c.embed_dim,
        c.num_heads,
        c.vae_bits,
        c.apply_spatial_patchify,
        c.text_channels,
        c.text_maxlen,
        c.block_chunks,
        c.ffn_hidden,
        c.num_levels,
    )


def test_transformer_plain_file_with_extras(tiny_inf, tmp_path):
    sd = {k: v.clone() for k, v in tiny_inf.state_dict().items()}
    sd_extra = dict(
        sd,
        lvl_1L=torch.zeros(1, 5),
        attn_bias_for_masking=torch.zeros(1, 1, 5, 5),
        Infinity_visible_kvlen=torch.zeros(1),
        Infinity_invisible_qlen=torch.zeros(1),
    )
    assert set(DROPPED_TRANSFORMER_KEYS) <= set(sd_extra)
    f = tmp_path / "infinity_tiny.pth"
    torch.save(sd_extra, f)
    m = load_infinity_transformer(f, TINY_INF)
    assert not m.training and not any(p.requires_grad for p in m.parameters())
    _same_state(m, sd)
    m2 = load_transformer_weights(Infinity(TINY_INF), f)  # into an existing module (copy)
    _same_state(m2, sd)
    # configuration read from the shapes: vae_bits tells the patchified token (d' = 4 d)
    m3 = load_infinity_transformer(f, vae_bits=4)
    assert _cfg_fields(m3.config)[:-4] == _cfg_fields(TINY_INF)[:-4] and m3.config.text_maxlen == 512
    assert infer_infinity_config(sd).apply_spatial_patchify is False  # without vae_bits: d = d'
    assert infer_infinity_config(sd, 4).apply_spatial_patchify is True
    with pytest.raises(CheckpointError, match="fits neither"):
        infer_infinity_config(sd, 5)
    # a training checkpoint is unwrapped
    g = tmp_path / "ar-ckpt.pth"
    torch.save({"trainer": {"gpt_fsdp": sd}}, g)
    _same_state(load_infinity_transformer(g, TINY_INF), sd)


def test_transformer_cfg_uncond_resize_and_constants(tiny_inf, tmp_path):
    sd = {k: v.clone() for k, v in tiny_inf.state_dict().items()}
    # the official loader builds text_maxlen 512 and extends a shorter cfg_uncond with the model's initial rows
    f = tmp_path / "short_uncond.pth"
    torch.save(sd, f)
    m = load_infinity_transformer(f, vae_bits=4)
    assert m.cfg_uncond.shape == (512, 128)
    assert torch.equal(m.cfg_uncond[:8], sd["cfg_uncond"])
    assert torch.equal(m.cfg_uncond[8:], initial_cfg_uncond(512, 128)[8:])
    # a longer one is cut
    long_sd = dict(sd, cfg_uncond=torch.randn(20, 128))
    torch.save(long_sd, f)
    assert torch.equal(load_infinity_transformer(f, TINY_INF).cfg_uncond, long_sd["cfg_uncond"][:8])
    # zero_k_bias buffers may be absent (they are zeros), but must be zeros when present
    no_buf = {k: v for k, v in sd.items() if not k.endswith("zero_k_bias")}
    assert len(no_buf) < len(sd)
    torch.save(no_buf, f)
    _same_state(load_infinity_transformer(f, TINY_INF), no_buf)
    bad = dict(sd)
    bad["block_chunks.1.module.0.sa.zero_k_bias"] = torch.ones(64)
    torch.save(bad, f)
    with pytest.raises(CheckpointError) as e:
        load_infinity_transformer(f, TINY_INF)
    assert "block_chunks.1.module.0.sa.zero_k_bias is a constant" in _one_line(e)


def test_transformer_dtype(tiny_inf, tmp_path):
    sd = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tiny_inf.state_dict().items()}
    f = tmp_path / "bf16.pth"
    torch.save(sd, f)
    assert load_infinity_transformer(f, TINY_INF).pos_start.dtype == torch.float32  # like the official copy_
    kept = load_infinity_transformer(f, TINY_INF, dtype=None)
    assert {p.dtype for p in kept.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_transformer_sharded(tiny_inf, tmp_path, fmt):
    sd = {k: v.clone() for k, v in tiny_inf.state_dict().items()}
    keys = list(sd)
    d = tmp_path / f"infinity_tiny_weights_{fmt}"
    d.mkdir()
    ext = "safetensors" if fmt == "safetensors" else "bin"
    name = "model-{:05d}-of-00003." + ext
    weight_map = {}
    for s in range(3):
        part = {k: sd[k] for k in keys[s::3]}
        f = d / name.format(s + 1)
        save_file(part, f) if fmt == "safetensors" else torch.save(part, f)
        weight_map.update({k: f.name for k in part})
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (d / index).write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    _same_state(load_infinity_transformer(d, TINY_INF), sd)
    # a shard of another model: the first odd key is named in one line
    other = Infinity(InfinityConfig(**{**TINY_INF.__dict__, "embed_dim": 128, "num_heads": 4}))
    with pytest.raises(CheckpointError) as e:
        load_transformer_weights(other, d)
    assert _one_line(e).startswith(str(d)) and "has shape" in str(e.value)


def test_transformer_errors(tiny_inf, tmp_path):
    sd = {k: v.clone() for k, v in tiny_inf.state_dict().items()}
    f = tmp_path / "bad.pth"
    for edit, want in [
        (lambda s: s.update({"blocks.0.attn.w": torch.zeros(1)}), "unexpected key 'blocks.0.attn.w'"),
        (lambda s: s.pop("head.weight"), "missing key 'head.weight'"),
        (lambda s: s.update({"head.bias": torch.zeros(3)}), "head.bias has shape (3,)"),
    ]:
        bad = dict(sd)
        edit(bad)
        torch.save(bad, f)
        with pytest.raises(CheckpointError) as e:
            load_infinity_transformer(f, TINY_INF)
        assert want in _one_line(e)
    f.write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError) as e:
        load_infinity_transformer(f, TINY_INF)
    assert _one_line(e).startswith(str(f))
    torch.save(sd, f)
    with pytest.raises(InputError, match="^config 'infinity_3b' is not a transformer preset"):
        load_infinity_transformer(f, "infinity_3b")


def test_transformer_release_manifests(infinity_manifests):
    """The released layouts (shapes on meta) give the presets, and the presets' modules have exactly those keys."""
    for name, preset, vae_bits in [
        ("infinity_2b_reg", InfinityConfig.infinity_2b(), 32),
        ("infinity_8b", InfinityConfig.infinity_8b(), 14),
        ("infinity_8b_512", InfinityConfig.infinity_8b(), 14),
    ]:
        man = json.loads((infinity_manifests / f"{name}.json").read_text())
        sd = {k: torch.empty(v["shape"], device="meta") for k, v in man["keys"].items()}
        assert _cfg_fields(infer_infinity_config(sd, vae_bits)) == _cfg_fields(preset), name
        with torch.device("meta"):
            model = Infinity(preset)
        own = model.state_dict()
        assert list(own) == list(sd), name
        assert all(tuple(own[k].shape) == tuple(v.shape) for k, v in sd.items()), name


def test_golden_transformers_load(infinity_golden, tmp_path):
    """The golden file's official transformers, saved as the 2B release (plain .pth) and as a sharded directory,
    load strictly into the configuration of their constructor kwargs."""
    for variant, rec in infinity_golden["inf"].items():
        d = infinity_golden["vae"][variant]["args"]["codebook_dim"]
        cfg = InfinityConfig.from_reference_kwargs(rec["kwargs"], vae_bits=d)
        f = tmp_path / f"{variant}.pth"
        torch.save(rec["state_dict"], f)
        m = load_infinity_transformer(f, cfg)
        _same_state(m, rec["state_dict"])
        inferred = infer_infinity_config(rec["state_dict"], d, text_maxlen=cfg.text_maxlen)
        assert _cfg_fields(inferred) == _cfg_fields(cfg), variant


# ------------------------------------------------------------------------------------------------ compat drop-in
_SIZE_KEYS = ("depth", "embed_dim", "num_heads", "mlp_ratio", "block_chunks", "drop_path_rate")


@pytest.fixture(scope="module")
def compat_models(infinity_golden, tmp_path_factory):
    """Per variant: the golden tokenizer and transformer written as release files and loaded through the drop-in
    (text_maxlen 512 as the reference loader: the golden cfg_uncond of 16 rows is extended)."""
    d = tmp_path_factory.mktemp("compat")
    out = {}
    for V, rec in infinity_golden["inf"].items():
        vf, tf = d / f"vae_{V}.pth", d / f"inf_{V}.pth"
        torch.save({"vae": infinity_golden["vae"][V]["state_dict"]}, vf)
        torch.save(rec["state_dict"], tf)
        vae = load_bsq_tokenizer(vf)
        kw = rec["kwargs"]
        model = ci.load_infinity(
            model_path=str(tf),
            vae=vae,
            device="cpu",
            text_channels=kw["text_channels"],
            model_kwargs={k: kw[k] for k in _SIZE_KEYS},
            apply_spatial_patchify=kw["apply_spatial_patchify"],
        )
        assert isinstance(model, ci.InfinityCompat) and model.config.text_maxlen == 512
        out[V] = vae, model
    return out


def _texts(g, name):
    t = g["inputs"]["texts"][name]
    return (t["kv_compact"], t["lens"], t["cu_seqlens_k"], t["max_seqlen_k"])


def _compat_cases(g, V):
    """A few cases of each kind (plain, negative prompt, in-network guidance, global generator; the smallest
    images), whatever the fixture's case names."""
    cases = sorted(g["infer"][V].items(), key=lambda kv: kv[1]["img"].numel())
    picked = {}
    for name, rec in cases:
        a = rec["args"]
        kind = (
            "negative"
            if a.get("negative")
            else "layer"
            if list(a["cfg_insertion_layer"]) != [0]
            else "global"
            if a["g_seed"] is None
            else "plain"
        )
        picked.setdefault(kind, name)
    return list(picked.values())


def test_compat_autoregressive_infer_cfg_matches_reference(infinity_golden, compat_models):
    """The reference call with the reference's keywords gives the reference image (uint8 BGR, +-1: README 7)."""
    g = infinity_golden
    for V in g["infer"]:
        for case in _compat_cases(g, V):
            _check_compat_case(g, compat_models, V, case)


def _check_compat_case(g, compat_models, V, case):
    rec = g["infer"][V][case]
    a = rec["args"]
    vae, model = compat_models[V]
    sched = [tuple(s) for s in rec["scale_schedule"]]
    neg = _texts(g, a["negative"]) if a.get("negative") else None
    if a["g_seed"] is None:
        torch.manual_seed(a["torch_seed"])
    ret, idx, img = model.autoregressive_infer_cfg(
        vae=vae,
        scale_schedule=sched,
        label_B_or_BLT=_texts(g, a["text"]),
        B=rec["B"],
        negative_label_B_or_BLT=neg,
        force_gt_Bhw=None,
        g_seed=a["g_seed"],
        cfg_list=rec["cfg_list"],
        tau_list=rec["tau_list"],
        cfg_sc=3,
        top_k=a["top_k"],
        top_p=a["top_p"],
        returns_vemb=1,
        ratio_Bl1=None,
        gumbel=0,
        norm_cfg=False,
        cfg_exp_k=0.0,
        cfg_insertion_layer=a["cfg_insertion_layer"],
        vae_type=vae.codebook_dim,
        softmax_merge_topk=-1,
        ret_img=True,
        trunk_scale=1000,
        gt_leak=0,
        gt_ls_Bl=None,
        inference_mode=True,
        sampling_per_bits=1,
    )
    assert ret == [] and idx == []
    assert img.dtype == torch.uint8 and img.shape == rec["img"].shape, (V, case)
    assert (img.int() - rec["img"].int()).abs().max().item() <= 1, (V, case)
    if not a.get("negative"):
        return
    # gt_leak: the reference's own bits fed back for every scale give the same image, whatever the seed
    gt = [b.clone() for b in rec["bits_per_scale"]]
    _, _, img2 = ci.autoregressive_infer_cfg(
        model,
        vae,
        sched,
        _texts(g, a["text"]),
        rec["B"],
        neg,
        g_seed=123,
        cfg_list=rec["cfg_list"],
        tau_list=rec["tau_list"],
        top_k=a["top_k"],
        top_p=a["top_p"],
        cfg_insertion_layer=a["cfg_insertion_layer"],
        vae_type=vae.codebook_dim,
        ret_img=True,
        gt_leak=len(sched),
        gt_ls_Bl=gt,
    )
    assert (img2.int() - rec["img"].int()).abs().max().item() <= 1, (V, case)


def test_compat_tables_and_refusals(infinity_golden, compat_models):
    tab = infinity_golden["tables"]["dynamic_resolution_h_w"]
    assert [float(k) for k in tab] == list(ci.dynamic_resolution_h_w) == list(ci.h_div_w_templates)
    for k, per_pn in tab.items():
        for pn, e in per_pn.items():
            ours = ci.dynamic_resolution_h_w[float(k)][pn]
            assert list(ours["pixel"]) == list(e["pixel"]) and [list(s) for s in ours["scales"]] == e["scales"]
    vae, model = compat_models["p16"]
    text = _texts(infinity_golden, "t2")
    sched = [(1, 1, 1), (1, 2, 2)]
    base = dict(
        vae=vae,
        scale_schedule=sched,
        label_B_or_BLT=text,
        B=2,
        g_seed=0,
        cfg_list=[3, 3],
        tau_list=[1, 1],
        vae_type=16,
        ret_img=True,
        cfg_insertion_layer=[0],
    )
    for change, msg in [
        ({"vae_type": 0}, "^vae_type=0"),
        ({"B": 1}, "^B=1 but"),
        ({"trunk_scale": 1}, "^trunk_scale"),
        ({"cfg_list": [3]}, "^cfg_list needs at least"),
        ({"bogus": 1}, "unexpected keyword 'bogus'"),
        ({"gt_leak": 2}, "^gt_leak=2 needs gt_ls_Bl"),
    ]:
        with pytest.raises(InputError, match=msg):
            model.autoregressive_infer_cfg(**{**base, **change})
    assert model.autoregressive_infer_cfg(**{**base, "ret_img": False}) == ([], [], [])
    with pytest.raises(InputError, match="^vae_type=7"):
        ci.load_visual_tokenizer({"vae_type": 7, "vae_path": "x.pth"})
    with pytest.raises(InputError, match="^model_type 'infinity_3b'"):
        ci.load_transformer(vae, {"model_type": "infinity_3b"})
    with pytest.raises(InputError, match="^rope2d_normalized_by_hw=1"):
        ci.load_transformer(vae, {"model_type": "infinity_2b", "rope2d_normalized_by_hw": 1})


def test_compat_gen_one_img_with_t5(compat_models, tmp_path):
    """gen_one_img end to end with a tiny random T5 (d_model = the golden model's text width) and a word tokenizer."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["<pad>", "</s>", "<unk>", "a", "red", "fox", "in", "snow", "blurry"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    vae, model = compat_models["p16"]
    cfg = transformers.T5Config(
        vocab_size=len(words),
        d_model=model.config.text_channels,
        d_kv=16,
        d_ff=64,
        num_layers=1,
        num_heads=2,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    t5 = transformers.T5EncoderModel(cfg).eval()
    d = tmp_path / "t5"
    t5.save_pretrained(d)
    hf_tok.save_pretrained(d)
    text_tokenizer, text_encoder = ci.load_tokenizer(str(d), device="cpu")
    kv, lens, cu, mx = ci.encode_prompt(text_tokenizer, text_encoder, "a red fox in snow")
    assert lens == [6] and kv.shape == (6, model.config.text_channels) and cu.tolist() == [0, 6] and mx == 6  # + EOS
    sched = [(1, h, w) for _, h, w in ci.dynamic_resolution_h_w[1.0]["0.06M"]["scales"][:3]]
    img = ci.gen_one_img(
        model,
        vae,
        text_tokenizer,
        text_encoder,
        "a red fox in snow",
        cfg_list=3,
        tau_list=0.5,
        negative_prompt="blurry",
        scale_schedule=sched,
        cfg_insertion_layer=[0],
        vae_type=16,
        g_seed=0,
    )
    assert img.shape == (64, 64, 3) and img.dtype == torch.uint8
    again = ci.gen_one_img(
        model,
        vae,
        text_tokenizer,
        text_encoder,
        "a red fox in snow",
        cfg_list=3,
        tau_list=0.5,
        negative_prompt="blurry",
        scale_schedule=sched,
        cfg_insertion_layer=[0],
        vae_type=16,
        g_seed=0,
    )
    assert torch.equal(img, again)  # g_seed re-seeds the model's generator
    with pytest.raises(InputError, match="^enable_positive_prompt"):
        ci.encode_prompt(text_tokenizer, text_encoder, "a man", enable_positive_prompt=1)
