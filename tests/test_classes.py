"""ImageNet-1k class names shipped with the package, and class names wherever a class id goes."""

import pytest

from nextscale.classes import grep_classes, imagenet_class_names, resolve_class_name
from nextscale.configs import get_preset
from nextscale.errors import NextScaleError
from nextscale.pipelines import NextScalePipeline


def test_imagenet_names_in_the_released_models_index_order():
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert (names[0], names[1], names[207], names[360], names[980], names[999]) == (
        "tench",
        "goldfish",
        "golden retriever",
        "otter",
        "volcano",
        "toilet tissue",
    )


def test_names_aliases_and_close_matches():
    names = imagenet_class_names()
    assert resolve_class_name("Golden  Retriever", names) == 207
    assert resolve_class_name("Tinca tinca", names) == 0  # a WordNet lemma
    assert resolve_class_name("toilet paper", names) == 999
    with pytest.raises(
        NextScaleError, match=r"no class named 'golden retreiver'; did you mean 'golden retriever' \(207\)"
    ):
        resolve_class_name("golden retreiver", names)
    with pytest.raises(NextScaleError, match="has no class names; give an integer"):
        resolve_class_name("cat", None)
    hits = grep_classes(names, "retriever")
    assert (207, "golden retriever") in hits and all("retriever" in n for _, n in hits) and len(hits) >= 4
    assert len(grep_classes(names)) == 1000


@pytest.fixture(scope="module")
def imagenet_pipe():
    cfg = get_preset("tiny")
    cfg = cfg.replace(var=cfg.var.replace(num_classes=1000))
    return NextScalePipeline.from_preset(cfg, labels=imagenet_class_names())


def test_pipeline_takes_class_names_and_ids_mixed(imagenet_pipe):
    out = imagenet_pipe(class_labels=["golden retriever", 360, "Tinca tinca"], seed=0, output_type="np")
    assert out.labels == [207, 360, 0]
    assert imagenet_pipe.class_name(207) == "golden retriever"
    with pytest.raises(NextScaleError, match="did you mean 'otter' \\(360\\)"):
        imagenet_pipe(class_labels=["oter"], seed=0)


def test_a_model_without_names_refuses_a_name():
    pipe = NextScalePipeline.from_preset("tiny")
    with pytest.raises(NextScaleError, match="no class names; give an integer"):
        pipe(class_labels=["cat"], seed=0)


def test_default_model_digit_names():
    pipe = NextScalePipeline.from_pretrained("default")
    assert pipe(class_labels=["7", 3], seed=0, output_type="np").labels == [7, 3]
