"""Infinity's dynamic-resolution table and aspect-ratio parsing (nextscale.schedules)."""

import math

import pytest

from nextscale.errors import InputError
from nextscale.schedules import (
    PN_CLASSES,
    TEMPLATES,
    AspectRatio,
    dynamic_resolution_table,
    image_size,
    nearest_template,
    num_tokens,
    parse_aspect_ratio,
    rope_grid_schedule,
    scale_schedule,
    template_key,
    tokenizer_schedule,
    var_schedule,
)


def _plain(x):
    """Tuples -> lists, recursively (the fixture stores lists)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def test_table_equals_official(infinity_golden):
    ref = _plain(infinity_golden["tables"]["dynamic_resolution_h_w"])
    ours = dynamic_resolution_table()
    assert list(ours) == list(ref)  # same templates, same order
    for key in ref:
        assert list(ours[key]) == list(ref[key])  # pn order
    assert ours == ref


def test_table_invariants():
    table = dynamic_resolution_table()
    assert [template_key(t) for t in TEMPLATES] == list(table)
    assert TEMPLATES == (1.0, 1.25, 0.8, 1.333, 0.75, 1.5, 0.666, 1.75, 0.571, 2.0, 0.5, 2.5, 0.4, 3.0, 0.333)
    for key, per_pn in table.items():
        for pn, entry in per_pn.items():
            scales = entry["scales"]
            assert len(scales) == PN_CLASSES[pn]
            t, h, w = scales[-1]
            assert entry["pixel"] == [16 * h, 16 * w]
            assert abs(h / w - float(key)) < 0.01  # the last grid has the template's shape
            # scales grow (never shrink) in both directions, and the pn classes are prefixes of the 1M schedule
            assert all(a[1] <= b[1] and a[2] <= b[2] for a, b in zip(scales, scales[1:]))
            assert scales == per_pn["1M"]["scales"][: len(scales)]
    # transposed templates carry transposed grids
    assert scale_schedule(0.75, "1M") == [(w, h) for h, w in scale_schedule(1.333, "1M")]
    # the fresh table is a copy: editing it does not change the next one
    table["1.000"]["1M"]["scales"].clear()
    assert len(dynamic_resolution_table()["1.000"]["1M"]["scales"]) == 13


def test_rope_grids_readme_4_5():
    assert rope_grid_schedule(1.0)[-1] == (64, 64)
    assert rope_grid_schedule(0.75)[-1] == (54, 72)
    assert rope_grid_schedule("3:4")[-1] == (72, 54)  # width 3 : height 4 -> h/w 1.333
    assert rope_grid_schedule(0.5)[-1] == (45, 90)
    assert rope_grid_schedule(0.5) == scale_schedule(0.5, "1M")


@pytest.mark.parametrize(
    "aspect, key",
    [
        ("16:9", "0.571"),
        ("9:16", "1.750"),
        (1.777, "1.750"),
        ((9, 16), "0.571"),
        ((1080, 1920), "0.571"),
        ("1:1", "1.000"),
        ("4:3", "0.750"),
        ("3:4", "1.333"),
        (0.75, "0.750"),
        (1, "1.000"),
        ("1024x576", "0.571"),
        ("2/3", "0.666"),
        ("0.666", "0.666"),
        (100.0, "3.000"),
        (0.01, "0.333"),
        (1.125, "1.000"),
        (0.88, "0.800"),
        ("21:9", "0.400"),
    ],
)
def test_parse_nearest(aspect, key):
    a = parse_aspect_ratio(aspect)
    assert a.key == key
    assert a.h_div_w in TEMPLATES
    assert key in a.describe()


def test_parse_reports_choice():
    a = parse_aspect_ratio("16:9")
    assert isinstance(a, AspectRatio)
    assert math.isclose(a.requested, 9 / 16)
    assert a.h_div_w == 0.571 and not a.exact
    assert "0.5625" in a.describe() and "4:7" in a.describe()
    assert parse_aspect_ratio(0.5).exact
    assert parse_aspect_ratio(a).h_div_w == 0.571  # idempotent


def test_nearest_is_linear_and_first_wins_ties():
    # official: templates[argmin(|templates - h_div_w|)], first minimum in table order
    for r in [0.1 * i for i in range(1, 40)]:
        best = min(abs(t - r) for t in TEMPLATES)
        assert abs(nearest_template(r) - r) == best
    tie = (1.0 + 1.25) / 2  # equidistant from 1.0 and 1.25: 1.0 comes first in the table
    assert nearest_template(tie) == 1.0


@pytest.mark.parametrize(
    "bad",
    [
        "wide",
        "16:0",
        "0:9",
        "-1",
        -0.5,
        0,
        float("nan"),
        float("inf"),
        True,
        None,
        (1, 2, 3),
        (0, 5),
        ("a", "b"),
        [],
        "16:9:1",
        "nan",
    ],
)
def test_parse_refuses_nonsense(bad):
    with pytest.raises(InputError) as e:
        parse_aspect_ratio(bad, name="aspect_ratio")
    msg = str(e.value)
    assert msg.startswith("aspect_ratio ") and "\n" not in msg


def test_scale_schedule_args():
    assert scale_schedule(1.0, "0.06M") == [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16)]
    assert scale_schedule(1.0, "0.06M", n_scales=3) == [(1, 1), (2, 2), (4, 4)]
    assert scale_schedule("4:3", "0.6M") == scale_schedule(0.75, "0.60M")  # pn alias
    assert len(scale_schedule(2.0)) == 13  # default pn 1M
    assert scale_schedule(0.74, "0.25M")[-1] == (27, 36)  # nearest template 0.75
    for bad_pn in ("2M", "", None, 0.25):
        with pytest.raises(InputError, match="^pn "):
            scale_schedule(1.0, bad_pn)
    for bad_n in (0, 8, -1, 2.5, True, "3"):
        with pytest.raises(InputError, match="^n_scales "):
            scale_schedule(1.0, "0.06M", n_scales=bad_n)
    with pytest.raises(InputError, match="^h_div_w "):
        scale_schedule("tall", "1M")


def test_tokenizer_schedule_and_image_size():
    s = scale_schedule(0.75, "0.06M", 3)
    assert tokenizer_schedule(s, patchify=False) == [(1, 1), (2, 2), (3, 4)]
    assert tokenizer_schedule(s, patchify=True) == [(2, 2), (4, 4), (6, 8)]
    assert image_size(tokenizer_schedule(s, False), 16) == (48, 64)
    assert image_size(tokenizer_schedule(s, True), 8) == (48, 64)  # 8B-style tokenizer: same image
    full = scale_schedule(1.0, "1M")
    assert image_size(full, 16) == (1024, 1024) and num_tokens(full) == sum(h * w for h, w in full)
    for pn, entry in dynamic_resolution_table()["0.500"].items():  # `pixel` is the image size of the schedule
        assert list(image_size(scale_schedule(0.5, pn), 16)) == entry["pixel"]
        assert list(image_size(tokenizer_schedule(scale_schedule(0.5, pn), True), 8)) == entry["pixel"]
    with pytest.raises(InputError, match="^patch_size "):
        image_size(s, 0)
    with pytest.raises(InputError, match="^schedule "):
        tokenizer_schedule([(1, 1), (0, 2)], False)
    with pytest.raises(InputError, match="^schedule "):
        tokenizer_schedule([(1, 1.5)], False)
    with pytest.raises(InputError, match="^schedule "):
        image_size([], 16)


def test_var_schedule():
    assert var_schedule((1, 2, 3)) == [(1, 1), (2, 2), (3, 3)]
    with pytest.raises(InputError, match="^patch_nums "):
        var_schedule((1, 0))


def test_fixture_schedules(infinity_golden):
    """Every case of the golden file uses the table's 0.06M prefix; its tokenizer schedule and image size follow."""
    for variant, cases in infinity_golden["infer"].items():
        patchify = bool(infinity_golden["inf"][variant]["kwargs"]["apply_spatial_patchify"])
        patch = infinity_golden["vae"][variant]["args"]["patch_size"]
        for name, rec in cases.items():
            ours = scale_schedule(rec["args"]["h_div_w"], "0.06M", rec["args"]["n_scales"])
            assert [[1, h, w] for h, w in ours] == _plain(rec["scale_schedule"]), name
            tok = tokenizer_schedule(ours, patchify)
            assert [[1, h, w] for h, w in tok] == _plain(rec["vae_scale_schedule"]), name
            assert image_size(tok, patch) == tuple(rec["decoded"].shape[-2:]), name
