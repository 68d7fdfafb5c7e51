"""Multi-class image classification: one label per image, a softmax over the classes."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from PIL import Image

from automl_images.core import models as registry
from automl_images.core.hyperparameters import Task
from automl_images.core.labels import class_name
from automl_images.core.trial_spec import SpecError

from .. import batch_augment, models, presets
from ..data import ImageDataset, Sample
from ..metrics import multiclass as multiclass_metrics
from ..presets import DEFAULT_TRAIN_PRESET, Preprocessing

# Models that train faster with channels-last weights. mobilenetv2's depthwise convolutions: an SGD
# step 39% faster at 32 px and 23% at 224 px on one CPU thread, 18% faster on an H100 in bfloat16
# (after a one-time kernel search of about 9 s). resnet18 moved by under 7% either way on the CPU,
# so it stays as it is.
CHANNELS_LAST = frozenset({"mobilenetv2"})


class ClassificationLoss(torch.nn.Module):
    """Cross-entropy, optionally weighted per class. Called with the model so that every task's
    loss has the same signature (a torchvision detector computes its loss from the targets)."""

    def __init__(self, weight: torch.Tensor | None = None):
        super().__init__()
        self.cross_entropy = torch.nn.CrossEntropyLoss(weight=weight)

    def forward(self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.cross_entropy(model(images), targets)


def class_weights(counts: Sequence[int], weighted_loss: int) -> torch.Tensor | None:
    """weighted_loss 0: none; 2: inverse class frequency, scaled so that balanced data gets 1.0 for
    every class (sklearn's "balanced"); 1: the square root of those, a milder correction."""
    if weighted_loss == 0:
        return None
    total, n_classes = sum(counts), len(counts)
    # A class without training images has no term in the loss; 0 keeps the weights finite.
    inverse = [total / (n_classes * n) if n else 0.0 for n in counts]
    if weighted_loss == 1:
        inverse = [math.sqrt(w) for w in inverse]
    elif weighted_loss != 2:
        raise SpecError(f"trial spec hyperparameters.weighted_loss: must be 0, 1 or 2, got {weighted_loss!r}")
    return torch.tensor(inverse, dtype=torch.float32)


class ClassificationEvaluator:
    """Collects a validation pass's logits, then computes the loss and `metrics.multiclass`."""

    def __init__(self, labels: Sequence[str], weight: torch.Tensor | None = None):
        self.labels = list(labels)
        self.weight = None if weight is None else weight.detach().cpu()  # compute() runs on the CPU
        self.logits: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.logits.append(outputs.detach().float().cpu())
        self.targets.append(targets.detach().cpu())

    def compute(self) -> dict[str, Any]:
        logits = torch.cat(self.logits).double()
        targets = torch.cat(self.targets)
        weight = None if self.weight is None else self.weight.double()
        # The training objective (weighted like training); log_loss is the unweighted figure.
        loss = torch.nn.functional.cross_entropy(logits, targets, weight=weight).item()
        probabilities = torch.softmax(logits, dim=1).numpy()
        return {**multiclass_metrics(targets.numpy(), probabilities, self.labels), "loss": float(loss)}


def preprocessing(hyperparameters: Mapping[str, Any]) -> Preprocessing:
    """The resize and crop of `hyperparameters`, checked against each other and the model's input
    size (SpecError naming the field)."""
    resize, crop = hyperparameters["resize_size"], hyperparameters["crop_size"]
    if crop > resize:
        raise SpecError(f"trial spec hyperparameters.crop_size: {crop} is larger than "
                        f"resize_size {resize}; the crop is taken from the resized image")
    try:
        registry.check_input_size(hyperparameters["model_name"], crop)
    except KeyError:
        pass  # an unknown model is reported by build_model, with its field
    except ValueError as exc:
        raise SpecError(f"trial spec hyperparameters.crop_size: {exc}") from None
    return Preprocessing(resize_size=resize, crop_size=crop, train_preset=DEFAULT_TRAIN_PRESET)


class ClassificationAdapter:
    """image-classification, for one trial's hyperparameters (see tasks.TaskAdapter)."""

    task = Task.CLASSIFICATION
    # Stacked tensors; batch augmentation's training batches padded (batch_augment.collate).
    collate = staticmethod(batch_augment.collate)

    def __init__(self, hyperparameters: Mapping[str, Any]):
        self.hyperparameters = hyperparameters
        self.preprocessing = preprocessing(hyperparameters)
        self.model_info: dict[str, Any] = {
            "preprocessing": self.preprocessing.to_dict(),
            "decode_size": presets.decode_size(self.preprocessing, train=False)}

    # -- labels ------------------------------------------------------------------------------------
    def parse_label(self, value: Any) -> str:
        """A class name. Integers are accepted and read as names ("3"): class ids are common."""
        return class_name(value)

    def classes_of(self, label: str) -> tuple[str, ...]:
        return (label,)

    def encode(self, label: str, class_index: dict[str, int]) -> int:
        return class_index[label]

    def label_changes(self, label: Any) -> tuple[str, ...]:
        return ()  # class names are taken as written

    # -- data --------------------------------------------------------------------------------------
    def dataset(self, samples: Sequence[Sample], targets: Sequence[Any], *, train: bool,
                seed: int = 0) -> ImageDataset:
        """8-bit image tensors of crop_size (normalised on the device: `batch_transform`). Training
        with batch augmentation (batch_augment.enabled): each decoded image and its augmentation
        parameters, augmented on the device."""
        p = self.preprocessing
        if not train:
            transform = presets.eval_transform(p, normalize=False)
        elif batch_augment.enabled():
            transform = batch_augment.sample_transform(p)
        else:
            transform = presets.train_transform(p, normalize=False)
        return ImageDataset(samples, targets, transform, seed=seed, min_size=presets.decode_size(p, train))

    def batch_transform(self, device: torch.device) -> batch_augment.BatchAugment:
        """Normalises every batch; augments the training batches of batch augmentation (`dataset`)."""
        return batch_augment.BatchAugment(self.preprocessing, device)

    # -- model -------------------------------------------------------------------------------------
    def build_model(self, num_classes: int, weights_cache: str | None = None) -> torch.nn.Module:
        hyperparameters = self.hyperparameters
        try:
            info = registry.get(hyperparameters["model_name"])
        except KeyError as exc:
            raise SpecError(f"trial spec hyperparameters.model_name: {exc.args[0]}") from None
        if self.task not in info.tasks:
            raise SpecError(f"trial spec hyperparameters.model_name: {info.name!r} is not a model for "
                            f"{self.task.value}")
        try:
            model = models.build_classifier(info.name, num_classes, bool(hyperparameters["pretrained"]),
                                            weights_cache)
        except ValueError as exc:  # weights that have no source: only the user can provide them
            raise SpecError(f"trial spec hyperparameters.pretrained: {exc}") from None
        except OSError as exc:
            raise models.weights_download_error(info.name, weights_cache, exc) from exc
        layers_to_freeze = hyperparameters.get("layers_to_freeze")
        if layers_to_freeze:
            try:
                models.freeze_layers(model, info.name, layers_to_freeze)
            except ValueError as exc:
                raise SpecError(f"trial spec hyperparameters.layers_to_freeze: {exc}") from None
        if info.name in CHANNELS_LAST:
            model = model.to(memory_format=torch.channels_last)
        return model

    def inference_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def loss(self, class_counts: Sequence[int], num_samples: int | None = None) -> ClassificationLoss:
        return ClassificationLoss(class_weights(class_counts, self.hyperparameters["weighted_loss"]))

    def evaluator(self, labels: Sequence[str], loss: ClassificationLoss) -> ClassificationEvaluator:
        return ClassificationEvaluator(labels, loss.cross_entropy.weight)

    # -- inference ---------------------------------------------------------------------------------
    def inputs(self, images: Sequence[Image.Image], info: Mapping[str, Any]) -> torch.Tensor:
        transform = presets.eval_transform(Preprocessing.from_dict(info["preprocessing"]))
        return torch.stack([transform(image) for image in images])

    def predictions(self, outputs: torch.Tensor, labels: Sequence[str], info: Mapping[str, Any],
                    sizes: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        """Per image, a training JSONL record's `label` (the most probable class) and `scores`, every
        class's probability: what `evaluate` reads, and a label file as it stands."""
        out = []
        for row in torch.softmax(outputs.float(), dim=1).tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append({"label": labels[best], "scores": dict(zip(labels, row))})
        return out
