"""Multi-label image classification: each image has a set of labels (possibly empty), one sigmoid
per class, and a label is predicted when its probability is at least the threshold (0.5).

JSONL labels are lists of class names, as Azure writes them (see `labels.py` for the forms read):

    {"image_url": "images/fridge_1.jpg", "label": ["can", "milk_bottle"]}
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from automl_images.core.hyperparameters import Task
from automl_images.core.labels import class_list
from automl_images.core.trial_spec import SpecError

from ..metrics import MULTILABEL_THRESHOLD
from ..metrics import multilabel as multilabel_metrics
from .classification import ClassificationAdapter


class MultiLabelLoss(torch.nn.Module):
    """Binary cross-entropy on the logits, optionally weighting each class's positive term."""

    def __init__(self, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.bce = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def forward(self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Under autocast the logits may be bfloat16; the loss is taken in float32.
        return self.bce(model(images).float(), targets)


def positive_weights(counts: Sequence[int], num_samples: int, weighted_loss: int) -> torch.Tensor | None:
    """BCE `pos_weight` per class from label frequencies. weighted_loss 0: none; 2: negatives /
    positives (a class in 10% of the images gets 9, so its positives weigh as much as its
    negatives); 1: the square root of those, a milder correction. A class present in every image
    (or none) keeps 1: the ratio would be 0 (or infinite)."""
    if weighted_loss == 0:
        return None
    if weighted_loss not in (1, 2):
        raise SpecError(f"trial spec hyperparameters.weighted_loss: must be 0, 1 or 2, got {weighted_loss!r}")
    weights = [(num_samples - n) / n if 0 < n < num_samples else 1.0 for n in counts]
    if weighted_loss == 1:
        weights = [math.sqrt(w) for w in weights]
    return torch.tensor(weights, dtype=torch.float32)


class MultiLabelEvaluator:
    """Collects a validation pass's logits, then computes the loss and `metrics.multilabel`."""

    def __init__(self, labels: Sequence[str], pos_weight: torch.Tensor | None = None,
                 threshold: float = MULTILABEL_THRESHOLD):
        self.labels = list(labels)
        self.pos_weight = None if pos_weight is None else pos_weight.detach().cpu()
        self.threshold = threshold
        self.logits: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.logits.append(outputs.detach().float().cpu())
        self.targets.append(targets.detach().float().cpu())

    def compute(self) -> dict[str, Any]:
        logits = torch.cat(self.logits).double()
        targets = torch.cat(self.targets).double()
        weight = None if self.pos_weight is None else self.pos_weight.double()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight).item()
        probabilities = torch.sigmoid(logits).numpy()
        return {**multilabel_metrics(targets.numpy(), probabilities, self.labels, self.threshold),
                "loss": float(loss)}


class MultiLabelAdapter(ClassificationAdapter):
    """Shares the models and preprocessing of multi-class classification; differs in labels, loss,
    metrics and predictions."""

    task = Task.MULTI_LABEL
    threshold = MULTILABEL_THRESHOLD

    def __init__(self, hyperparameters: Mapping[str, Any]):
        super().__init__(hyperparameters)
        self.model_info = {**self.model_info, "threshold": self.threshold}

    # -- labels ------------------------------------------------------------------------------------
    def parse_label(self, value: Any) -> tuple[str, ...]:
        """A sorted tuple of distinct class names; [] (no label applies) is valid."""
        return class_list(value)

    def classes_of(self, label: tuple[str, ...]) -> tuple[str, ...]:
        return label

    def encode(self, label: tuple[str, ...], class_index: dict[str, int]) -> torch.Tensor:
        target = torch.zeros(len(class_index), dtype=torch.float32)
        for name in label:
            target[class_index[name]] = 1.0
        return target

    # -- training ----------------------------------------------------------------------------------
    def loss(self, class_counts: Sequence[int], num_samples: int | None = None) -> MultiLabelLoss:
        weighted = self.hyperparameters["weighted_loss"]
        if weighted and num_samples is None:
            raise ValueError("a weighted multi-label loss needs the number of training images")
        return MultiLabelLoss(positive_weights(class_counts, num_samples or 0, weighted))

    def evaluator(self, labels: Sequence[str], loss: MultiLabelLoss) -> MultiLabelEvaluator:
        return MultiLabelEvaluator(labels, loss.bce.pos_weight, self.threshold)

    # -- inference ---------------------------------------------------------------------------------
    def predictions(self, outputs: torch.Tensor, labels: Sequence[str], info: Mapping[str, Any],
                    sizes: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        """Per image, a training JSONL record's `label`: the classes at or above the threshold
        (model.json's), most probable first; and `scores`, every class's probability (what
        `evaluate` reads)."""
        threshold = float(info.get("threshold", self.threshold))
        out = []
        for row in torch.sigmoid(outputs.float()).tolist():
            chosen = sorted((i for i, p in enumerate(row) if p >= threshold), key=lambda i: -row[i])
            out.append({"label": [labels[i] for i in chosen], "scores": dict(zip(labels, row))})
        return out
