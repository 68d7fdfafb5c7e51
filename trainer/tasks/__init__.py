"""Task adapters: what differs between tasks (labels, model, loss, metrics), behind one interface.

The training loop (`engine.py`) is the same for every task; an adapter gives it the model, the loss
and the evaluator, and gives `data.py` the label parser. Adding a task is adding a module here and
a line to `ADAPTERS`.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence

import torch
from PIL import Image

from automl_images.core.hyperparameters import Task
from automl_images.core.trial_spec import SpecError

from ..data import ImageDataset, Sample
from .classification import ClassificationAdapter
from .detection import DetectionAdapter, SegmentationAdapter
from .multilabel import MultiLabelAdapter


class Evaluator(Protocol):
    def update(self, outputs: Any, targets: Any) -> None: ...
    def compute(self) -> dict[str, Any]: ...


class TaskAdapter(Protocol):
    """One task, for one trial's hyperparameters: built once (get_adapter), which checks the
    settings (SpecError naming the field) before any data is fetched; its methods take only what
    changes from call to call."""

    collate: Callable | None              # batches of the task's (None: stacked tensors)
    model_info: dict[str, Any]            # the task's fields of model.json (preprocessing, decode_size, ...)

    # labels
    def parse_label(self, value: Any) -> Any:
        """A JSONL line's `label`, checked; ValueError (saying what is wrong) when it is not valid."""
    def classes_of(self, label: Any) -> tuple[str, ...]:
        """The class names a label mentions."""
    def encode(self, label: Any, class_index: dict[str, int]) -> Any:
        """The training target of a label."""
    def label_changes(self, label: Any) -> tuple[str, ...]:
        """What lenient parsing changed in the label, for the trial's status and log."""

    # data
    def dataset(self, samples: Sequence[Sample], targets: Sequence[Any], *, train: bool,
                seed: int = 0) -> ImageDataset: ...
    def batch_transform(self, device: torch.device) -> Callable[[Any], Any] | None:
        """What turns a batch on the device into the model's inputs (classification: normalising)."""

    # model and training
    def build_model(self, num_classes: int, weights_cache: str | None = None) -> torch.nn.Module: ...
    def inference_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """What evaluates and predicts (detection with tiles: the model run on every tile)."""
    def loss(self, class_counts: Sequence[int], num_samples: int | None = None) -> torch.nn.Module:
        """Called as `loss(model, images, targets)` by the training loop. `class_counts`: training
        images per class; `num_samples`: training images."""
    def evaluator(self, labels: Sequence[str], loss: torch.nn.Module) -> Evaluator: ...

    # inference: `info` is the exported model.json, the record an exported model is fed by
    def inputs(self, images: Sequence[Image.Image], info: Mapping[str, Any]) -> Any:
        """The model's input batch for decoded images."""
    def predictions(self, outputs: Any, labels: Sequence[str], info: Mapping[str, Any],
                    sizes: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        """Per image, what the model predicts; `sizes`: each input image's (height, width)."""


ADAPTERS: dict[Task, type] = {
    Task.CLASSIFICATION: ClassificationAdapter,
    Task.MULTI_LABEL: MultiLabelAdapter,
    Task.OBJECT_DETECTION: DetectionAdapter,
    Task.INSTANCE_SEGMENTATION: SegmentationAdapter,
}


def get_adapter(task: Task, hyperparameters: Mapping[str, Any], lenient_labels: bool = False) -> TaskAdapter:
    """The adapter of `task` for a trial's (resolved) `hyperparameters`, or those of an exported
    model.json. `lenient_labels` (detection tasks): boxes and polygons slightly out of bounds are
    clipped and reported instead of refused."""
    if lenient_labels:
        if task.is_classification:
            raise SpecError(f"trial spec field 'lenient_labels': applies to object detection and instance "
                            f"segmentation, not to {task.value}")
        return ADAPTERS[task](hyperparameters, lenient=True)
    return ADAPTERS[task](hyperparameters)
