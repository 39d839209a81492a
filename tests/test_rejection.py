"""Rejection sampling (the reference's d30-re protocol): best of N candidates by a scorer."""

import numpy as np
import pytest
import torch

from nextscale.errors import NextScaleError
from nextscale.evaluation.scorers import ClassifierScorer, MNISTScorer
from nextscale.pipelines import NextScalePipeline


@pytest.fixture(scope="module")
def pipe():
    return NextScalePipeline.from_preset("tiny", seed=0)


def brightness(images_B3HW, labels_B):  # a scorer with a known answer: the brightest candidate wins
    return images_B3HW.mean(dim=(1, 2, 3))


KW = dict(class_labels=[1, 2, 3], guidance_scale=1.0, top_k=20, output_type="pt", return_indices=True)


def test_one_candidate_is_plain_sampling(pipe):
    plain = pipe(**KW, seed=5)
    one = pipe(**KW, seed=5, num_candidates=1, scorer=brightness)
    assert torch.equal(plain.images, one.images) and one.scores is None
    assert all(torch.equal(a, b) for a, b in zip(plain.indices, one.indices))


def test_best_of_n_is_the_scorers_argmax_and_deterministic(pipe):
    N = 4
    g = torch.Generator().manual_seed(11)
    cands = [pipe(**KW, generator=g) for _ in range(N)]  # the same random stream, call by call
    scores = torch.stack([brightness(c.images, None) for c in cands])  # (N, B)
    best = scores.argmax(dim=0)
    got = pipe(**KW, seed=11, num_candidates=N, scorer=brightness)
    for b in range(3):
        assert torch.equal(got.images[b], cands[int(best[b])].images[b])
        for si, t in enumerate(got.indices):
            assert torch.equal(t[b], cands[int(best[b])].indices[si][b])
    np.testing.assert_allclose(got.scores, scores.max(dim=0).values.numpy(), rtol=1e-6)
    again = pipe(**KW, seed=11, num_candidates=N, scorer=brightness)
    assert torch.equal(got.images, again.images) and got.labels == again.labels == [1, 2, 3]


def test_random_classes_stay_fixed_across_candidates(pipe):
    got = pipe(num_images=3, seed=2, num_candidates=3, scorer=brightness, output_type="pt")
    plain = pipe(num_images=3, seed=2, output_type="pt")
    assert got.labels == plain.labels  # drawn once, before the first candidate


def test_classifier_scorer_adapter():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    sc = ClassifierScorer(net, size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), num_classes=5)
    x = torch.rand(2, 3, 16, 16)
    probs = net(
        (torch.nn.functional.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False, antialias=True) - 0.5)
        / 0.5
    ).softmax(-1)
    s = sc(x, torch.tensor([3, 5]))  # 5 = unconditional: the top probability
    torch.testing.assert_close(s, torch.stack([probs[0, 3], probs[1].max()]))


def test_default_scorer_on_the_default_model():
    pipe = NextScalePipeline.from_pretrained("default")
    out = pipe(class_labels=[3, 8], seed=0, num_candidates=2, scorer=MNISTScorer(), output_type="np")
    assert len(out.scores) == 2 and all(0 <= s <= 1 for s in out.scores)
    sc = MNISTScorer()
    assert sc.classifier.train_info.get("held_out_accuracy", 0) > 0.95


def test_bad_candidate_arguments(pipe):
    with pytest.raises(NextScaleError, match="needs a scorer"):
        pipe(class_labels=[1], seed=0, num_candidates=2)
    with pytest.raises(NextScaleError, match="needs a scorer"):
        pipe(class_labels=[1], seed=0, num_candidates=2, scorer="default")  # names are for the CLI: resolve_scorer
    with pytest.raises(NextScaleError, match="num_candidates must be >= 1"):
        pipe(class_labels=[1], seed=0, num_candidates=0, scorer=brightness)
    from nextscale.evaluation.scorers import resolve_scorer

    with pytest.raises(NextScaleError, match="built-in scorer is for the 10-class MNIST models"):
        resolve_scorer("default", 1000)
    assert isinstance(resolve_scorer("default", 10), MNISTScorer) and resolve_scorer(brightness, 1000) is brightness
