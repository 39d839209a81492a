"""Image folders, transforms, the resumable sampler, the token cache, the MNIST export."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from nextscale.data import (
    CachedTokens,
    ImageFolder,
    ResumableBatchSampler,
    TokenCache,
    build_token_cache,
    export_mnist,
    find_split,
    scan_image_folder,
    smallest_uint_dtype,
    tokenizer_fingerprint,
)
from nextscale.errors import NextScaleError

pytestmark = pytest.mark.usefixtures("one_thread")


def _img(path, size=(40, 30), color=(200, 10, 10)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[..., :] = color
    a[:, : size[0] // 2, 1] = 255  # left half differs, so a flip is visible
    Image.fromarray(a).save(path)


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mnist")
    export_mnist(str(d), n_per_class=2, split="both", resolution=64, holdout_per_class=1)
    return str(d)


def test_export_mnist_layout(mnist_dir):
    tr, cls = scan_image_folder(os.path.join(mnist_dir, "train"))
    va, vcls = scan_image_folder(os.path.join(mnist_dir, "val"))
    assert cls == vcls == [str(c) for c in range(10)]
    assert len(tr) == 20 and len(va) == 10
    assert [y for _, y in tr] == sorted(y for _, y in tr)
    with Image.open(tr[0][0]) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    assert set(os.path.basename(p) for p, _ in tr).isdisjoint(os.path.basename(p) for p, _ in va)  # held out


def test_layouts(tmp_path):
    _img(str(tmp_path / "inet/train/cat/a.png"))
    _img(str(tmp_path / "inet/val/cat/b.png"))
    assert find_split(str(tmp_path / "inet"), "train").endswith("train")
    assert find_split(str(tmp_path / "inet"), "val").endswith("val")
    _img(str(tmp_path / "single/dog/a.jpg"))
    _img(str(tmp_path / "single/cat/sub/b.png"))
    assert find_split(str(tmp_path / "single"), "val") is None
    s, c = scan_image_folder(str(tmp_path / "single"))
    assert c == ["cat", "dog"] and [y for _, y in s] == [0, 1]
    _img(str(tmp_path / "uncond/a.png"))
    _img(str(tmp_path / "uncond/b.png"))
    s, c = scan_image_folder(str(tmp_path / "uncond"))
    assert c == [""] and len(s) == 2


def test_bad_folders(tmp_path):
    with pytest.raises(NextScaleError, match="does not exist"):
        find_split(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NextScaleError, match="no images"):
        scan_image_folder(str(tmp_path / "empty"))
    (tmp_path / "txt/a").mkdir(parents=True)
    (tmp_path / "txt/a/notes.txt").write_text("hello")
    with pytest.raises(NextScaleError, match="no images"):
        ImageFolder(str(tmp_path / "txt"), 32)
    (tmp_path / "fake/a").mkdir(parents=True)
    for i in range(3):
        (tmp_path / f"fake/a/{i}.png").write_text("not a png")
    with pytest.raises(NextScaleError, match="readable image"):
        ImageFolder(str(tmp_path / "fake"), 32)


def test_transforms_deterministic_and_flip(tmp_path):
    _img(str(tmp_path / "a/x.png"), size=(48, 36))
    ds = ImageFolder(str(tmp_path), 32, train=True, hflip=True)
    a, b = ds[(0, 12345)], ds[(0, 12345)]
    assert a["image"].shape == (3, 32, 32) and torch.equal(a["image"], b["image"]) and a["u_drop"] == b["u_drop"]
    assert a["image"].min() >= -1 and a["image"].max() <= 1
    flips = {bool(ds[(0, s)]["image"][1, 16, 0] > 0) for s in range(20)}
    assert flips == {True, False}  # both orientations occur across seeds
    ev = ImageFolder(str(tmp_path), 32, train=False)
    assert torch.equal(ev[(0, -1)]["image"], ev[(0, -1)]["image"]) and ev[(0, -1)]["u_drop"] == 1.0


def test_unreadable_images_are_skipped_and_counted(tmp_path, monkeypatch):
    import nextscale.data

    monkeypatch.setattr(nextscale.data, "_WARNED_BAD", False)
    _img(str(tmp_path / "a/0.png"))
    _img(str(tmp_path / "a/1.png"))
    raw = (tmp_path / "a/0.png").read_bytes()
    (tmp_path / "a/0b_truncated.png").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "a/0c_text.png").write_text("not an image")
    ds = ImageFolder(str(tmp_path), 16)
    names = [os.path.basename(p) for p, _ in ds.samples]
    i = names.index("0b_truncated.png")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        item = ds[(i, 7)]
    assert item["n_bad"] == 2 and item["image"].shape == (3, 16, 16)  # fell through to 1.png


def test_sampler_sharding_accumulation_and_resume():
    n, B = 13, 3
    one = ResumableBatchSampler(n, 2 * B, seed=5)
    two = [ResumableBatchSampler(n, B, rank=r, world_size=2, seed=5) for r in range(2)]
    acc = ResumableBatchSampler(n, B, seed=5, grad_accum=2)
    for c in range(10):  # same global samples (and per-sample seeds) whatever the split
        assert one.keys(c) == two[0].keys(c) + two[1].keys(c) == acc.keys(2 * c) + acc.keys(2 * c + 1)
    # an epoch covers every index (padded with the epoch's first ones)
    ep = [k[0] for c in range(one.iters_per_epoch) for k in one.keys(c)]
    assert sorted(set(ep)) == list(range(n)) and len(ep) == one.iters_per_epoch * 2 * B
    # epochs differ, seeds differ across positions
    assert one.keys(0) != one.keys(one.iters_per_epoch)
    assert len({s for c in range(6) for _, s in one.keys(c)}) == 36
    # resuming at counter c continues exactly
    it = iter(ResumableBatchSampler(n, 2 * B, seed=5, start=7))
    assert next(it) == one.keys(7) and next(it) == one.keys(8)
    with pytest.raises(NextScaleError):
        ResumableBatchSampler(n, 0)
    with pytest.raises(NextScaleError):
        ResumableBatchSampler(0, 2)


def test_smallest_dtype():
    assert smallest_uint_dtype(64) == np.uint8 and smallest_uint_dtype(256) == np.uint8
    assert (
        smallest_uint_dtype(257) == np.uint16
        and smallest_uint_dtype(4096) == np.uint16
        and smallest_uint_dtype(70000) == np.uint32
    )


@pytest.fixture(scope="module")
def tiny_vae():
    from nextscale.configs import get_preset
    from nextscale.models import build_from_config

    return build_from_config(get_preset("tiny"), seed=0, init_var=False)[0]


def test_token_cache_matches_encoder(mnist_dir, tiny_vae, tmp_path):
    vae = tiny_vae
    out = str(tmp_path / "cache")
    c = build_token_cache(mnist_dir, vae, vae.v_patch_nums, 64, out, batch_size=8, progress=False)
    assert (
        c.meta["splits"] == {"train": 20, "val": 10}
        and c.meta["dtype"] == "uint8"
        and c.classes == [str(i) for i in range(10)]
    )
    assert not any(".partial" in f for f in os.listdir(tmp_path))
    ds = c.dataset("train", train=False)
    assert (
        isinstance(ds, CachedTokens) and np.load(os.path.join(out, "train/tokens.npy"), mmap_mode="r").dtype == np.uint8
    )
    ev = ImageFolder(os.path.join(mnist_dir, "train"), 64, train=False)
    x = torch.stack([ev[(i, -1)]["image"] for i in (0, 5)])
    with torch.no_grad():
        ref = torch.cat(vae.img_to_idxBl(x), 1)
        ref_flip = torch.cat(vae.img_to_idxBl(x.flip(3)), 1)
    assert torch.equal(ds[(0, -1)]["tokens"], ref[0]) and torch.equal(ds[(5, -1)]["tokens"], ref[1])
    assert torch.equal(torch.from_numpy(ds.tokens[5, 1].astype(np.int64)), ref_flip[1])
    assert ds[(5, -1)]["label"] == ev[(5, -1)]["label"]
    fp = tokenizer_fingerprint(vae, vae.v_patch_nums)
    c.check(fp, vae.v_patch_nums)
    with pytest.raises(NextScaleError, match="scales"):
        c.check(fp, (1, 2, 4))
    other = type(vae).from_config(vae.config)
    with pytest.raises(NextScaleError, match="another tokenizer"):
        c.check(tokenizer_fingerprint(other, other.v_patch_nums), vae.v_patch_nums)
    # re-running with the same tokenizer is a no-op; another tokenizer needs --overwrite
    assert build_token_cache(mnist_dir, vae, vae.v_patch_nums, 64, out, progress=False).fingerprint == fp
    with pytest.raises(NextScaleError, match="overwrite"):
        build_token_cache(mnist_dir, other, vae.v_patch_nums, 64, out, progress=False)
    with pytest.raises(NextScaleError, match="not a token cache"):
        TokenCache.open(str(tmp_path))
