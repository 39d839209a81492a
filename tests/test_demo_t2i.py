"""The demo's text-to-image tab (nextscale.app.demo): the backend without a browser (streaming scale by
scale, the same images as the pipeline called directly, widgets generated from T2ISettings, bad values one
line naming the widget), then the Gradio app through its API when gradio / gradio_client are installed."""

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
from conftest import need_modules  # noqa: E402
from nextscale.errors import NextScaleError  # noqa: E402
from nextscale.pipeline_t2i import NextScaleT2IPipeline  # noqa: E402
from test_pipeline_t2i import (  # noqa: E402,F401  (fixtures)
    _tiny_pair,
    encoder,
    t5_dir,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def tpipe(encoder):  # noqa: F811
    vae, model = _tiny_pair(0, patchify=False)
    return NextScaleT2IPipeline(vae, model, encoder, default_pn="0.06M")


@pytest.fixture(scope="module")
def backend(tpipe):
    from nextscale.app.demo import T2IDemoBackend

    return T2IDemoBackend(tpipe)


def _args(backend, prompt="a red cat", aspect="2:1", seed=5, **st):
    return [prompt, "", aspect, "0.06M", seed, False, 1] + backend.sampling_args(**st)


def test_widgets_are_the_honoured_settings(backend):
    from nextscale.app.demo import aspect_choices

    names = [f.name for _, f in backend.fields]
    assert names == ["guidance_scale", "top_k", "top_p", "temperature", "guidance_cutoff", "cfg_insertion_layer"]
    values = [v for _, v in aspect_choices()]
    assert values[0] == "1:1" and {"7:4", "4:7", "3:1", "1:3"} <= set(values) and len(values) == 15
    for v in values:  # every choice lands on its own template
        assert backend.pipe.size(aspect_ratio=v, pn="0.06M").h_div_w in {
            backend.pipe.size(aspect_ratio=w, pn="0.06M").h_div_w for w in values
        }
    assert len({backend.pipe.size(aspect_ratio=v, pn="0.06M").h_div_w for v in values}) == 15


def test_streams_scale_by_scale_and_matches_the_pipeline(backend, tpipe):
    outs = list(backend.generate(*_args(backend, guidance_scale=4.0)))
    K = len(tpipe.size(aspect_ratio="2:1", pn="0.06M").schedule)
    assert len(outs) == K + 1  # one per scale, then the final image with its strip
    assert all(o[1] is None for o in outs[:-1]) and outs[-1][1] is not None
    assert outs[0][2].startswith(f"scale 1/{K} (1x1)")
    want = tpipe(
        "a red cat",
        aspect_ratio="2:1",
        pn="0.06M",
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(5),
        output_type="pil",
    ).images[0]
    img = outs[-1][0]
    assert img.size[0] > img.size[1] and np.array_equal(np.asarray(img), np.asarray(want))
    assert np.array_equal(np.asarray(outs[-2][0]), np.asarray(want))  # the last streamed scale is the image


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(prompt="   "), "^prompt is empty"),
        (dict(prompt=3), "^prompt must be text"),
        (dict(aspect="9:1"), "^aspect ratio must be one of"),
        (dict(guidance_scale=-1), "^guidance .cfg. must be >= 0"),
        (dict(guidance_scale=500), r"^guidance \(cfg\) must be <= 20"),
        (dict(temperature=0), "^temperature must be > 0"),
        (dict(guidance_cutoff=99), "^guidance cut-off must be <= 13"),
        (dict(prompt="a cat " * 200), "^prompt is .* tokens long"),
    ],
)
def test_bad_values_are_one_line(backend, change, match):
    kw = dict(prompt=change.pop("prompt", "a cat"), aspect=change.pop("aspect", "1:1"))
    with pytest.raises(NextScaleError, match=match) as e:
        list(backend.generate(*_args(backend, **kw, **change)))
    assert "\n" not in str(e.value)


def test_gradio_app(tpipe):
    need_modules("gradio", "gradio", "gradio_client")
    from gradio_client import Client

    from nextscale.app.demo import build_demo
    from test_demo import _launch, _png

    demo = build_demo(tpipe)
    try:
        client = Client(_launch(demo), verbose=False, analytics_enabled=False, download_files=False)
        b = demo.nextscale_backend
        img, strip, status = client.predict(*_args(b, seed=2), api_name="/generate_t2i")
        want = tpipe("a red cat", aspect_ratio="2:1", pn="0.06M", seed=2, output_type="pil").images[0]
        assert np.array_equal(_png(img), np.asarray(want.convert("RGB"))) and status.startswith("done")
        assert isinstance(_png(strip), np.ndarray)
    finally:
        demo.close()
