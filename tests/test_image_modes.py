"""Images of any bit depth and mode (nextscale.imageio.to_rgb / load_image): 16-bit and 32-bit grey scaled, not
clipped; float grey; alpha composited onto white (dropped for masks); palettes, CMYK, 1-bit; EXIF orientation;
anything else refused with one line. Every image is built here with PIL / numpy."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from nextscale.errors import NextScaleError
from nextscale.imageio import load_image, to_rgb

GRAD16 = np.linspace(0, 65535, 32 * 48).reshape(32, 48).round().astype(np.uint16)


def _want8(a16):
    return np.rint(a16.astype(np.float64) * 255 / 65535).astype(np.int64)


def _rgb(im) -> np.ndarray:
    assert im.mode == "RGB"
    return np.asarray(im).astype(np.int64)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    p = tmp_path / "grad16.png"
    Image.fromarray(GRAD16).save(p)
    with Image.open(p) as im:
        assert im.mode.startswith("I;16")  # what PIL reads a 16-bit grey PNG as
    got = _rgb(load_image(p))
    assert got.shape == (32, 48, 3)
    assert np.abs(got - _want8(GRAD16)[..., None]).max() <= 1
    assert got.mean() < 140  # clipping made ~99 % of it white (255)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_and_32bit_integer_grey(mode):
    arr = {"I;16": GRAD16, "I;16B": GRAD16.astype(">u2"), "I": GRAD16.astype(np.int32)}[mode]
    im = Image.fromarray(arr)  # (PIL's own convert to I;16B clips at 255)
    assert im.mode == mode
    assert np.abs(_rgb(to_rgb(im)) - _want8(GRAD16)[..., None]).max() <= 1


def test_float_grey_in_unit_or_byte_range():
    x = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    assert np.abs(_rgb(to_rgb(Image.fromarray(x)))[..., 0] - np.rint(x * 255)).max() <= 1
    assert np.abs(_rgb(to_rgb(Image.fromarray(x * 200)))[..., 0] - np.rint(x * 200)).max() <= 1


@pytest.mark.parametrize(
    "im,msg",
    [
        (Image.fromarray(np.full((4, 4), np.nan, np.float32)), "NaN or infinite"),
        (Image.fromarray(np.full((4, 4), -3.0, np.float32)), r"values -3\.\.-3"),
        (Image.fromarray(np.full((4, 4), 70000, np.int32)), r"values 70000\.\.70000; nextscale reads 0\.\.65535"),
    ],
)
def test_values_that_cannot_be_read_faithfully_are_refused_in_one_line(im, msg, tmp_path):
    with pytest.raises(NextScaleError, match=msg) as e:
        to_rgb(im, "input.tif")
    assert "\n" not in str(e.value) and str(e.value).startswith("input.tif: ")
    if im.mode == "I":  # through a file too: the file's name, one line
        p = tmp_path / "big.tif"
        im.save(p)
        with pytest.raises(NextScaleError, match=rf"{p}: a 32-bit integer image"):
            load_image(p)


def test_alpha_is_composited_on_white_for_images_and_dropped_for_masks(tmp_path):
    a = np.zeros((8, 8, 4), np.uint8)
    a[..., 0] = 200  # red under the alpha everywhere
    a[:4, :, 3] = 255  # top half opaque, bottom half transparent
    a[4:6, :, 3] = 128
    im = Image.fromarray(a, "RGBA")
    got = _rgb(to_rgb(im))
    assert (got[:4] == [200, 0, 0]).all() and (got[6:] == 255).all()  # transparent -> white
    assert np.abs(got[4, 0] - [228, 127, 127]).max() <= 1  # half: halfway to white
    assert (_rgb(to_rgb(im, background=None)) == [200, 0, 0]).all()  # a mask: the colour decides
    p = tmp_path / "rgba.png"
    im.save(p)
    assert (_rgb(load_image(p))[6:] == 255).all() and (_rgb(load_image(p, mask=True)) == [200, 0, 0]).all()
    la = Image.fromarray(a[..., [0, 3]], "LA")
    assert (_rgb(to_rgb(la))[:4] == 200).all() and (_rgb(to_rgb(la))[6:] == 255).all()
    assert (_rgb(to_rgb(im.convert("RGBa")))[:4] == [200, 0, 0]).all()  # premultiplied


def test_palette_cmyk_1bit_grey_and_transparency():
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    im = Image.fromarray(rgb)
    p = im.quantize(16)
    assert (_rgb(to_rgb(p)) == _rgb(p.convert("RGB"))).all()
    t = p.copy()
    t.info["transparency"] = 0  # palette entry 0 transparent -> white
    got = _rgb(to_rgb(t))
    assert (got[np.asarray(p) == 0] == 255).all()
    cmyk = im.convert("CMYK")
    assert np.abs(_rgb(to_rgb(cmyk)) - rgb).max() <= 1
    one = Image.fromarray(np.eye(8, dtype=bool))
    assert one.mode == "1" and (_rgb(to_rgb(one))[..., 0] == np.eye(8) * 255).all()
    grey = Image.fromarray(rgb[..., 0])
    assert (_rgb(to_rgb(grey))[..., 1] == rgb[..., 0]).all()
    assert (_rgb(to_rgb(im.convert("YCbCr"))) - rgb).__abs__().max() <= 3


def test_unknown_mode_and_non_images_are_one_line():
    with pytest.raises(NextScaleError, match=r"image: image mode 'BGR;16' is not supported"):
        to_rgb(Image.new("BGR;16", (2, 2)) if "BGR;16" in Image.MODES else _fake_mode("BGR;16"))
    with pytest.raises(NextScaleError, match="image must be a PIL image, got ndarray"):
        to_rgb(np.zeros((2, 2, 3)))


def _fake_mode(mode):
    im = Image.new("RGB", (2, 2))
    im._mode = mode  # a mode PIL may read from an exotic file
    return im


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((10, 20, 3), np.uint8)
    a[:, :10] = 255  # left half white, 20 wide x 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    p = tmp_path / "phone.jpg"
    Image.fromarray(a).save(p, exif=exif, quality=95)
    im = load_image(p)
    assert im.size == (10, 20)  # upright: 10 wide x 20 high
    assert np.asarray(im)[:8].mean() > 200 and np.asarray(im)[12:].mean() < 50  # the white half is on top


def test_editing_inputs_of_any_depth():
    from nextscale.editing import images_to_list, masks_to_list

    img = images_to_list(Image.fromarray(GRAD16))[0]
    assert img.shape == (3, 32, 48) and abs(img.mean().item() - 0.5) < 0.01
    arr = images_to_list(np.stack([GRAD16] * 3, -1))[0]  # a uint16 numpy image: 65535 = white
    assert torch.allclose(arr, img, atol=1 / 255 + 1e-6)
    m = np.zeros((8, 8), np.uint16)
    m[:, 4:] = 65535
    for mask in (Image.fromarray(m), m):
        got = masks_to_list(mask)[0]
        assert got[:, :4].max() == 0 and got[:, 4:].min() == 1


def test_demo_editor_value_of_a_16bit_upload():
    from nextscale.app.demo import DemoBackend

    bg = Image.fromarray(np.full((40, 40), 20000, np.uint16))  # dark grey: 78 of 255 (clipped: white)
    layer = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    rgb, mask = DemoBackend._editor_value(_Limits(), {"background": bg, "layers": [layer], "composite": None})
    assert rgb.mode == "RGB" and np.abs(np.asarray(rgb).astype(int) - 78).max() <= 1 and mask is None
    with pytest.raises(NextScaleError, match="image: a 32-bit integer image"):
        DemoBackend._editor_value(_Limits(), Image.fromarray(np.full((4, 4), -1, np.int32)))


class _Limits:  # the one attribute _editor_value reads (no model needed)
    from nextscale.app.demo import DemoLimits

    limits = DemoLimits()


def test_load_image_names_the_true_reason_for_odd_paths(tmp_path):
    """A folder, a FIFO or a device given as an image: its true reason, and a FIFO is never opened (no hang)."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for path, why in ((tmp_path, "is a folder"), (fifo, "FIFO"), ("/dev/zero", "not a regular file"),
                      (tmp_path / "nope.png", "does not exist")):  # fmt: skip
        with pytest.raises(NextScaleError, match=why):
            load_image(path)
