"""Scorers for rejection sampling: ``pipe(..., num_candidates=N, scorer=...)`` keeps, per requested
image, the candidate the scorer likes best (the reference's d30-re protocol, FID 1.73: candidates
filtered by a classifier).

A scorer is any callable ``scorer(images_B3HW, labels_B) -> scores_B``: images float in [0, 1] on
the pipeline's device, labels the requested classes (``num_classes`` = unconditional), scores
higher = better (the built-ins return the probability of the requested class, or the top
probability for unconditional images).

- ``ClassifierScorer(model, ...)``: any torch image classifier, e.g. an ImageNet ResNet with local
  weights::

      import torchvision
      net = torchvision.models.resnet50()
      net.load_state_dict(nextscale.safeload.load_torch("resnet50.pth"))
      pipe(class_labels=[207], num_candidates=4, scorer=ClassifierScorer(net.eval()))

  It resizes to ``size`` (224), normalises with ImageNet's mean/std and maps the model's classes
  through ``class_map`` (identity by default: the released VAR models use ImageNet-1k's order).
- ``MNISTScorer``: the default model's built-in scorer (``scorer="default"``), a small CNN shipped in
  ``assets/mnist_scorer.safetensors``. It is trained with another seed than the classifier that
  evaluates samples (benchmarks/default_model_report.py), so rejection is not graded by its own judge.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from nextscale.errors import InputError

__all__ = ["ClassifierScorer", "MNISTScorer", "resolve_scorer", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _class_probability(
    logits_BN: torch.Tensor, labels_B: torch.Tensor, num_classes: Optional[int], class_map: Optional[Sequence[int]]
) -> torch.Tensor:
    probs = logits_BN.float().softmax(dim=-1)
    uncond = labels_B >= (num_classes if num_classes is not None else probs.shape[-1])
    idx = (
        labels_B.clamp(max=probs.shape[-1] - 1)
        if class_map is None
        else torch.as_tensor(list(class_map), device=labels_B.device)[labels_B.clamp(max=len(class_map) - 1)]
    )
    p = probs.gather(1, idx.view(-1, 1)).squeeze(1)
    return torch.where(uncond, probs.amax(dim=-1), p)


class ClassifierScorer:
    """Probability of the requested class under a torch classifier (see the module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        size: Optional[int] = 224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        class_map: Optional[Sequence[int]] = None,
        num_classes: Optional[int] = None,
    ):
        self.model, self.size, self.class_map, self.num_classes = model.eval(), size, class_map, num_classes
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    @torch.no_grad()
    def __call__(self, images_B3HW: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
        x = images_B3HW.float()
        if self.size is not None and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        dev = next(self.model.parameters()).device
        x = (x.to(dev) - self.mean.to(dev)) / self.std.to(dev)
        return _class_probability(self.model(x), labels_B.to(dev), self.num_classes, self.class_map).to(
            images_B3HW.device
        )


class MNISTScorer:
    """The default model's built-in scorer: a small MNIST CNN (``nextscale.evaluation.mnist_classifier``)."""

    def __init__(self, classifier=None):
        from nextscale.evaluation import mnist_classifier as mc

        if classifier is None or isinstance(classifier, str):
            from importlib import resources

            path = classifier or str(resources.files("nextscale").joinpath("assets/mnist_scorer.safetensors"))
            classifier = mc.load_classifier(path)
        self.classifier = classifier

    @torch.no_grad()
    def __call__(self, images_B3HW: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
        from nextscale.evaluation import mnist_classifier as mc

        x = mc.to_gray(images_B3HW.permute(0, 2, 3, 1).float().cpu().numpy())
        logits = self.classifier(x)
        # the classifier's classes are the folder names "0".."9": the default model's label order
        return _class_probability(logits, labels_B.cpu(), 10, None).to(images_B3HW.device)


def resolve_scorer(scorer, num_classes: int) -> Scorer:
    """A callable, "default" (the MNIST scorer, for 10-class models) or a path to an MNIST scorer file."""
    if callable(scorer):
        return scorer
    if isinstance(scorer, str):
        if num_classes != 10:
            raise InputError(
                f"scorer {scorer!r}: the built-in scorer is for the 10-class MNIST models; this model has "
                f"{num_classes} classes, pass scorer=ClassifierScorer(your_classifier) (nextscale.evaluation.scorers)"
            )
        return MNISTScorer(None if scorer == "default" else scorer)
    raise InputError(
        "scorer must be a callable (images, labels) -> scores, 'default', or a scorer file; got "
        f"{type(scorer).__name__}"
    )
