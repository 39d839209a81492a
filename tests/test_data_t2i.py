"""Captioned text-to-image data (nextscale.data_t2i): buckets, bad samples in both modes, text dropout, the
bucket batch sampler, and the text-feature / bit caches (round trips, reuse, refusal, resume after a kill)."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from nextscale.data_t2i import (
    BAD_KINDS,
    BitsCache,
    BucketBatchSampler,
    BucketTable,
    CachedT2I,
    CaptionedImages,
    TextFeatureCache,
    bucket_for,
    build_bits_cache,
    build_text_cache,
    collate_t2i,
    encoder_fingerprint,
    scan_captioned,
    text_dropped,
)
from nextscale.errors import CheckpointError, InputError
from nextscale.models.bsq import BSQVAE, BSQConfig
from nextscale.schedules import TEMPLATES, image_size, scale_schedule

TABLE = dict(pn="0.06M", n_scales=4, patch_size=2)  # 1:1 -> 12 x 12 pixels, 4:3 -> 16 x 12, ...


def _img(path, w, h, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _good_folder(root, n=10):
    """n captioned images in 3 aspect ratios (1:1, landscape 4:3, portrait 1:2), one in a sub-folder."""
    root.mkdir(parents=True, exist_ok=True)
    sizes = [(40, 40), (64, 48), (30, 60)]
    for i in range(n):
        d = root / "sub" if i == n - 1 else root
        d.mkdir(exist_ok=True)
        w, h = sizes[i % 3]
        _img(d / f"im{i:02d}.png", w, h, seed=i)
        (d / f"im{i:02d}.txt").write_text(f"a red circle number {i % 4}\n", encoding="utf-8")
    return root


# ------------------------------------------------------------------------------------------------ buckets
def test_buckets():
    b = bucket_for(0.75, **TABLE)
    assert b.key == "0.750" and b.schedule == tuple(scale_schedule(0.75, "0.06M", 4))
    assert b.image_hw == image_size(b.tokenizer_schedule, 2) == (12, 16)
    assert bucket_for(1.0, "0.06M", 4, 2, patchify=True).image_hw == (24, 24)  # tokenizer grid doubled
    t = BucketTable(**TABLE)
    assert list(t.buckets) == [f"{x:.3f}" for x in TEMPLATES]
    assert t.nearest(48, 64).key == "0.750" and t.nearest(64, 48).key == "1.333" and t.nearest(50, 50).key == "1.000"
    assert t.nearest(1080, 1920).key == "0.571"  # 16:9 -> 4:7, as the schedules' parser
    assert t.nearest(10, 200) is None and t.nearest(400, 10) is None  # far outside 1:3 .. 3:1
    assert t.nearest(100, 300).key == "0.333" and t.nearest(100, 370).key == "0.333"  # within the tolerance
    sub = BucketTable(**TABLE, templates=["1:1", "16:9"])
    assert list(sub.buckets) == ["1.000", "0.571"]
    assert sub.nearest(36, 64).key == "0.571" and sub.nearest(48, 64) is None and sub.nearest(100, 300) is None
    with pytest.raises(InputError, match="ratio_tolerance"):
        BucketTable(ratio_tolerance=0.5)


# ------------------------------------------------------------------------------------------------ scanning
def test_scan_folder(tmp_path):
    root = _good_folder(tmp_path / "d")
    (root / "notes.json").write_text("{}")  # other files are ignored
    before = sorted(p.name for p in root.rglob("*"))
    data = scan_captioned(root, BucketTable(**TABLE), on_bad="error")
    assert len(data) == 10 and not data.bad
    assert [s.name for s in data.samples] == [f"im{i:02d}.png" for i in range(9)] + ["sub/im09.png"]
    assert data.captions[:2] == ["a red circle number 0", "a red circle number 1"]
    assert data.buckets[:3] == ["1.000", "0.750", "2.000"] and data.samples[1].hw == (48, 64)
    assert sorted(p.name for p in root.rglob("*")) == before  # a scan writes nothing


def _write_bad(root, kind):
    """One bad sample of ``kind``; returns the file name the report must name."""
    if kind == "empty caption":
        _img(root / "e.png", 20, 20)
        (root / "e.txt").write_text("  \n\t ")
        return "e.txt"
    if kind == "caption not UTF-8":
        _img(root / "u.png", 20, 20)
        (root / "u.txt").write_bytes(b"a caf\xe9 latin-1 caption")
        return "u.txt"
    if kind == "missing image":
        (root / "m.txt").write_text("a caption without its image")
        return "m.txt"
    if kind == "missing caption":
        _img(root / "c.png", 20, 20)
        return "c.png"
    if kind == "not an image":
        (root / "n.png").write_text("I am text, not a PNG")
        (root / "n.txt").write_text("a fake image")
        return "n.png"
    if kind == "ratio outside the tables":
        _img(root / "r.png", 200, 10)
        (root / "r.txt").write_text("a very wide strip")
        return "r.png"
    if kind == "two images for one caption":
        _img(root / "t.png", 20, 20)
        _img(root / "t.jpg", 20, 20)
        (root / "t.txt").write_text("which one?")
        return "t.txt"
    raise AssertionError(kind)


FOLDER_KINDS = [k for k in BAD_KINDS if k != "malformed line"]


@pytest.mark.parametrize("kind", FOLDER_KINDS)
def test_bad_sample_folder(tmp_path, kind):
    root = _good_folder(tmp_path / "d", n=3)
    name = _write_bad(root, kind)
    before = sorted(p.name for p in root.rglob("*"))
    with pytest.warns(RuntimeWarning, match=f"skipped 1 bad sample.*{name}: {kind}"):
        data = scan_captioned(root, BucketTable(**TABLE), on_bad="skip")
    assert len(data) == 3 and [(b.name, b.kind) for b in data.bad] == [(name, kind)]
    assert data.bad_counts() == {kind: 1}
    with pytest.raises(InputError) as e:
        scan_captioned(root, BucketTable(**TABLE), on_bad="error")
    msg = str(e.value)
    assert f"{name}: {kind}" in msg and "on_bad='skip'" in msg and "\n" not in msg and msg.startswith("1 bad sample")
    assert sorted(p.name for p in root.rglob("*")) == before


def test_all_bad_kinds_at_once(tmp_path):
    root = _good_folder(tmp_path / "d", n=2)
    names = {_write_bad(root, k): k for k in FOLDER_KINDS}
    with pytest.warns(RuntimeWarning, match=f"skipped {len(names)} bad"):
        data = scan_captioned(root, BucketTable(**TABLE))
    assert {b.name: b.kind for b in data.bad} == names and len(data) == 2
    with pytest.raises(InputError, match=f"^{len(names)} bad sample.*and 2 more; fix them"):
        scan_captioned(root, BucketTable(**TABLE), on_bad="error")
    with pytest.raises(InputError, match="on_bad"):
        scan_captioned(root, on_bad="ignore")


def test_scan_jsonl(tmp_path):
    root = _good_folder(tmp_path / "d", n=4)
    _img(tmp_path / "d" / "wide.png", 200, 10)
    (tmp_path / "d" / "fake.png").write_text("not an image")
    lines = [
        json.dumps({"image": "im00.png", "caption": "first"}).encode(),
        json.dumps({"image": str(root / "im01.png"), "caption": "absolute path", "extra": 1}).encode(),
        b"",
        b'{"image": "im02.png", "caption": "caf\xe9"}',  # latin-1 byte
        b"{not json",
        json.dumps({"caption": "no image key"}).encode(),
        json.dumps({"image": "absent.png", "caption": "gone"}).encode(),
        json.dumps({"image": "im02.png", "caption": "   "}).encode(),
        json.dumps({"image": "fake.png", "caption": "fake"}).encode(),
        json.dumps({"image": "wide.png", "caption": "strip"}).encode(),
        json.dumps({"image": "im02.png", "caption": 3}).encode(),
        json.dumps({"image": "im02.png", "caption": "ok ü 東京"}, ensure_ascii=False).encode(),
    ]
    src = root / "data.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.warns(RuntimeWarning, match="skipped 8 bad"):
        data = scan_captioned(src, BucketTable(**TABLE))
    assert data.captions == ["first", "absolute path", "ok ü 東京"]
    got = {(b.name, b.kind) for b in data.bad}
    assert got == {
        ("data.jsonl:4", "caption not UTF-8"),
        ("data.jsonl:5", "malformed line"),
        ("data.jsonl:6", "malformed line"),
        ("absent.png (data.jsonl:7)", "missing image"),
        ("im02.png (data.jsonl:8)", "empty caption"),
        ("fake.png (data.jsonl:9)", "not an image"),
        ("wide.png (data.jsonl:10)", "ratio outside the tables"),
        ("im02.png (data.jsonl:11)", "malformed line"),
    }
    with pytest.raises(InputError, match="^8 bad sample.*data.jsonl:4: caption not UTF-8"):
        scan_captioned(src, BucketTable(**TABLE), on_bad="error")
    for bad_src, word in ((tmp_path / "absent", "does not exist"), (root / "im00.png", "must be a folder")):
        with pytest.raises(InputError, match=word):
            scan_captioned(bad_src)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no usable"):
        scan_captioned(tmp_path / "empty")


# ------------------------------------------------------------------------------------------------ images, dropout
def test_images_dropout_and_crops(tmp_path):
    data = scan_captioned(_good_folder(tmp_path / "d"), BucketTable(**TABLE))
    ds = CaptionedImages(data, text_dropout=0.5)
    for i in range(3):
        it = ds[(i, -1)]  # evaluation: centre crop, never dropped
        assert it["image"].shape == (3, *data.table[it["bucket"]].image_hw) and not it["dropped"]
        assert it["caption"] == data.samples[i].caption and -1 <= it["image"].min() and it["image"].max() <= 1
    drops = [ds[(0, s)]["dropped"] for s in range(200)]
    assert 60 < sum(drops) < 140 and drops == [text_dropped(s, 0.5) for s in range(200)]
    assert all(ds[(0, s)]["caption"] == "" for s in range(200) if drops[s])
    assert not any(CaptionedImages(data, 0.0)[(0, s)]["dropped"] for s in range(20))
    assert all(CaptionedImages(data, 1.0)[(0, s)]["dropped"] for s in range(20))
    # random crops: seeded by the key; an image of h/w 0.64 in the 2:3 bucket (64 x 96) leaves 4 columns spare
    _img(tmp_path / "c.png", 150, 96)
    (tmp_path / "c.txt").write_text("a crop")
    (tmp_path / "c.jsonl").write_text(json.dumps({"image": "c.png", "caption": "a crop"}))
    crop = CaptionedImages(scan_captioned(tmp_path / "c.jsonl", BucketTable("0.06M", 4, 16)), random_crop=True)
    a, b = crop[(0, 5)]["image"], crop[(0, 5)]["image"]
    assert a.shape == (3, 64, 96) and torch.equal(a, b)
    assert any(not torch.equal(a, crop[(0, s)]["image"]) for s in range(6, 20))
    assert torch.equal(crop[(0, -1)]["image"], crop[(0, -1)]["image"])
    with pytest.raises(InputError, match="text_dropout"):
        CaptionedImages(data, text_dropout=1.5)


# ------------------------------------------------------------------------------------------------ sampler
def test_bucket_batch_sampler():
    rng = np.random.default_rng(0)
    buckets = [("1.000", "0.750", "2.000")[int(k)] for k in rng.choice(3, size=53, p=[0.6, 0.3, 0.1])]
    s = BucketBatchSampler(buckets, batch_size=4, seed=3)
    per_epoch = s.batches_per_epoch
    seen = [set() for _ in range(3)]
    for c in range(3 * per_epoch):
        keys = s.keys(c)
        assert len(keys) == 4 and len({buckets[i] for i, _ in keys}) == 1  # never mixes buckets
        seen[c // per_epoch].update(i for i, _ in keys)
    assert all(x == set(range(53)) for x in seen)  # every sample every epoch
    again = BucketBatchSampler(buckets, batch_size=4, seed=3)
    assert [again.keys(c) for c in range(per_epoch)] == [s.keys(c) for c in range(per_epoch)]
    resumed = BucketBatchSampler(buckets, batch_size=4, seed=3, start=7)
    it = iter(resumed)
    assert [next(it) for _ in range(5)] == [s.keys(c) for c in range(7, 12)]
    assert [s.keys(c) for c in range(per_epoch)] != [s.keys(c) for c in range(per_epoch, 2 * per_epoch)]
    other = BucketBatchSampler(buckets, batch_size=4, seed=4)
    assert [other.keys(c) for c in range(per_epoch)] != [s.keys(c) for c in range(per_epoch)]
    # two ranks split the epoch's batches; together they hold the one-process epoch (its padding aside)
    r0, r1 = (BucketBatchSampler(buckets, 4, seed=3, rank=r, world_size=2) for r in (0, 1))
    both = [k for c in range(r0.batches_per_epoch) for k in r0.keys(c) + r1.keys(c)]
    assert {i for i, _ in both} == set(range(53))
    assert all(len({buckets[i] for i, _ in r.keys(c)}) == 1 for r in (r0, r1) for c in range(10))
    seeds = [sd for c in range(per_epoch) for _, sd in s.keys(c)]
    assert len(set(seeds)) == len(seeds)  # one draw stream per position
    with pytest.raises(InputError, match="batch_size"):
        BucketBatchSampler(buckets, 0)
    with pytest.raises(InputError, match="rank"):
        BucketBatchSampler(buckets, 2, rank=2, world_size=2)


# ------------------------------------------------------------------------------------------------ text cache
def _t5_dir(tmp, seed):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=60, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(["a red circle above a blue seven", "two green squares", "number 0 1 2 3"] * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    cfg = transformers.T5Config(
        vocab_size=len(fast),
        d_model=16,
        d_kv=4,
        d_ff=32,
        num_layers=1,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    d = tmp / f"t5-{seed}"
    transformers.T5EncoderModel(cfg).save_pretrained(d)
    fast.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    from nextscale.text import T5TextEncoder

    class Counting(T5TextEncoder):
        """A T5 encoder that counts its calls and keeps what it returned."""

        calls, outputs = 0, []

        def __call__(self, prompts):
            type(self).calls += 1
            out = super().__call__(prompts)
            type(self).outputs.append((list(prompts), out))
            return out

    tmp = tmp_path_factory.mktemp("t5")
    return Counting, [Counting.from_pretrained(_t5_dir(tmp, s), device="cpu", max_length=32) for s in (0, 1)]


CAPTIONS = [
    "a red circle",
    "two green squares",
    "a red circle",
    "",
    "a blue seven above a 4",
    "two green squares",
    "number 3",
    "number 1",
    "a red circle",
]


def test_text_cache_round_trip_and_reuse(tmp_path, encoders):
    Counting, (enc, other) = encoders
    Counting.calls, Counting.outputs = 0, []
    cache = build_text_cache(CAPTIONS, enc, tmp_path / "text", shard_size=2, batch_size=2)
    unique = list(dict.fromkeys(CAPTIONS))
    assert Counting.calls == 3 + 1  # each distinct caption once (3 shards of <= 2) + the empty caption
    encoded = {
        p: out.kv_compact[out.cu_seqlens[j] : out.cu_seqlens[j + 1]]
        for ps, out in Counting.outputs
        for j, p in enumerate(ps)
    }
    assert set(encoded) == set(unique) | {""}
    for reader in (cache, TextFeatureCache.open(tmp_path / "text")):  # saved -> loaded: bit for bit
        assert len(reader) == len(CAPTIONS)
        for i, c in enumerate(CAPTIONS):
            assert torch.equal(reader.row(i), encoded[c])
        feats = reader.features([0, 1, 4], dropped=[False, True, False])
        assert feats.lens == [encoded["a red circle"].shape[0], encoded[""].shape[0], encoded[CAPTIONS[4]].shape[0]]
        assert torch.equal(feats.kv_compact, torch.cat([encoded["a red circle"], encoded[""], encoded[CAPTIONS[4]]]))
        assert feats.cu_seqlens.dtype == torch.int32 and feats.max_seqlen == max(feats.lens)
    files = sorted(os.listdir(tmp_path / "text"))
    assert files == [".nextscale-cache", "index.safetensors", "meta.json"] + [
        f"shard_{k:05d}.safetensors" for k in range(3)
    ]
    stamp = {f: os.stat(tmp_path / "text" / f).st_mtime_ns for f in files}
    Counting.calls = 0
    again = build_text_cache(CAPTIONS, enc, tmp_path / "text", shard_size=2, batch_size=2)
    assert Counting.calls == 0 and again.fingerprint == cache.fingerprint  # reused, not recomputed
    assert {f: os.stat(tmp_path / "text" / f).st_mtime_ns for f in files} == stamp
    with pytest.raises(InputError, match="other inputs: other captions; pass overwrite=True"):
        build_text_cache(CAPTIONS[:5], enc, tmp_path / "text", shard_size=2)
    # another encoder: refused (one line naming out), then rebuilt on request
    assert encoder_fingerprint(other) != encoder_fingerprint(enc)
    with pytest.raises(InputError, match="^out .* other inputs: another text encoder .*overwrite=True"):
        build_text_cache(CAPTIONS, other, tmp_path / "text", shard_size=2)
    Counting.calls = 0
    rebuilt = build_text_cache(CAPTIONS, other, tmp_path / "text", shard_size=2, overwrite=True)
    assert Counting.calls == 4 and rebuilt.fingerprint != cache.fingerprint
    assert not torch.equal(rebuilt.row(0), encoded["a red circle"])


def test_text_cache_resumes_after_kill(tmp_path, encoders):
    Counting, (enc, _) = encoders

    class Dies(Exception):
        pass

    real = Counting.__call__

    def dying(self, prompts):
        if Counting.calls == 2:
            raise Dies
        return real(self, prompts)

    Counting.calls = 0
    Counting.__call__ = dying
    try:
        with pytest.raises(Dies):
            build_text_cache(CAPTIONS, enc, tmp_path / "text", shard_size=2, batch_size=2)
    finally:
        Counting.__call__ = real
    # two shards were written whole; no meta.json: the folder is not a cache yet
    assert sorted(os.listdir(tmp_path / "text")) == [
        ".nextscale-cache",
        "shard_00000.safetensors",
        "shard_00001.safetensors",
    ]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    with pytest.raises(InputError, match="not a complete text-feature cache"):
        TextFeatureCache.open(tmp_path / "text")
    Counting.calls = 0
    cache = build_text_cache(CAPTIONS, enc, tmp_path / "text", shard_size=2, batch_size=2)
    assert Counting.calls == 2  # the missing shard + the empty caption
    fresh = build_text_cache(CAPTIONS, enc, tmp_path / "fresh", shard_size=2, batch_size=2)
    for i in range(len(CAPTIONS)):
        assert torch.equal(cache.row(i), fresh.row(i))
    # damaged shard: read through safeload, one line naming the file
    (tmp_path / "fresh" / "shard_00001.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="shard_00001.safetensors: not a text-feature cache shard"):
        TextFeatureCache.open(tmp_path / "fresh").row(4)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="is not a text-feature cache"):
        build_text_cache(CAPTIONS, enc, tmp_path / "other")


# ------------------------------------------------------------------------------------------------ bits cache
@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return BSQVAE(BSQConfig(codebook_dim=6, base_ch=24, ch_mult=(1, 2), num_res_blocks=1, patch_size=2)).eval()


def test_bits_cache_round_trip_and_reuse(tmp_path, vae, monkeypatch):
    data = scan_captioned(_good_folder(tmp_path / "d"), BucketTable(**TABLE))
    calls = []
    real_encode = BSQVAE.encode

    def counting(self, x, schedule):
        calls.append(tuple(x.shape))
        return real_encode(self, x, schedule)

    monkeypatch.setattr(BSQVAE, "encode", counting)
    cache = build_bits_cache(data, vae, tmp_path / "bits", shard_size=2, batch_size=3)
    assert calls and sum(s[0] for s in calls) == len(data)
    ims = CaptionedImages(data)
    for reader in (cache, BitsCache.open(tmp_path / "bits")):
        for key in set(data.buckets):
            idx = [i for i, b in enumerate(data.buckets) if b == key]
            sched = data.table[key].tokenizer_schedule
            x = torch.stack([ims[i]["image"] for i in idx])
            with torch.no_grad():
                _, want = real_encode(vae, x, list(sched))
            got = reader.batch(idx)
            assert [tuple(t.shape) for t in got] == [(len(idx), h, w, 6) for h, w in sched]
            assert all(torch.equal(g, w) for g, w in zip(got, want))  # bit for bit
            assert reader.schedule(idx[0]) == list(sched) and reader.bucket(idx[0]) == key
            assert all(torch.equal(g[0], b) for g, b in zip(got, reader.bits(idx[0])))
        with pytest.raises(InputError, match="one bucket"):
            reader.batch([0, 1])
    calls.clear()
    build_bits_cache(data, vae, tmp_path / "bits", shard_size=2, batch_size=3)
    assert calls == []  # reused
    cache.check(vae)
    torch.manual_seed(1)
    other = BSQVAE(vae.config).eval()
    with pytest.raises(InputError, match="another tokenizer"):
        cache.check(other)
    with pytest.raises(InputError, match="other inputs"):
        build_bits_cache(data, other, tmp_path / "bits")
    # the cached data set and the image data set draw the same dropout; batches collate per bucket
    text = build_text_cache(data.captions, lambda ps: _bag(ps), tmp_path / "text")
    cds = CachedT2I(data, cache, text_dropout=0.5)
    ids = CaptionedImages(data, text_dropout=0.5)
    sampler = BucketBatchSampler(data.buckets, batch_size=2, seed=0)
    for c in range(6):
        keys = sampler.keys(c)
        a = [cds[k] for k in keys]
        b = [ids[k] for k in keys]
        assert [x["dropped"] for x in a] == [x["dropped"] for x in b]
        batch = collate_t2i(a, text)
        assert [t.shape[0] for t in batch["bits"]] == [2] * len(batch["bits"])
        assert batch["text"].lens == [
            1 if d else len(data.captions[i]) + 1 for i, d in zip(batch["indices"], batch["dropped"])
        ]
        assert collate_t2i(b)["images"].shape[0] == 2
    with pytest.raises(InputError, match="one bucket"):
        collate_t2i([cds[(0, -1)], cds[(1, -1)]])


def _bag(prompts):
    """A text encoder without weights: one row per character + an end row (identified by probing)."""
    from nextscale.text import features_from_rows

    return features_from_rows([torch.tensor([[float(ord(c) % 5), 1.0] for c in p] + [[0.0, 0.0]]) for p in prompts])


def test_scene_folder_end_to_end(tmp_path, vae):
    """A scene data set written by nextscale.scenes -> scan -> bucket batches -> both caches -> one batch."""
    from nextscale.scenes import SceneConfig, write_scene_dataset

    cfg = SceneConfig(digits=(), aspect_ratios=(1.0, 0.5, 2.0))
    out = write_scene_dataset(tmp_path / "s", 14, np.random.default_rng(0), cfg, pn="0.06M", n_scales=5, patch_size=2)
    data = scan_captioned(out, BucketTable("0.06M", 5, 2, templates=cfg.aspect_ratios), on_bad="error")
    assert len(data) == 14 and set(data.buckets) <= {"1.000", "0.500", "2.000"}
    bits = build_bits_cache(data, vae, tmp_path / "bits")
    text = build_text_cache(data.captions, _bag, tmp_path / "text")
    ds = CachedT2I(data, bits, text_dropout=0.1)
    for keys in (BucketBatchSampler(data.buckets, 3, seed=1).keys(c) for c in range(5)):
        batch = collate_t2i([ds[k] for k in keys], text)
        sched = data.table[batch["bucket"]].tokenizer_schedule
        assert [tuple(t.shape[1:3]) for t in batch["bits"]] == list(sched)
        assert len(batch["text"].lens) == 3
