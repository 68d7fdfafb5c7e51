"""Task adapters: what differs between tasks (labels, model, loss, metrics), behind one interface.

The training loop (`engine.py`) is the same for every task; an adapter gives it the model, the loss
and the evaluator, and gives `data.py` the label parser. Adding a task is adding a module here and
a line to `ADAPTERS`.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

import torch

from ..config import SpecError
from ..hyperparameters import Task
from ..presets import Preprocessing
from .classification import ClassificationAdapter
from .multilabel import MultiLabelAdapter


class Evaluator(Protocol):
    def update(self, outputs: Any, targets: Any) -> None: ...
    def compute(self) -> dict[str, Any]: ...


class TaskAdapter(Protocol):
    task: Task
    metrics: tuple[str, ...]              # the metrics a job may use as its primary metric

    def parse_label(self, value: Any) -> Any:
        """A JSONL line's `label`, checked; ValueError (saying what is wrong) when it is not valid."""
    def classes_of(self, label: Any) -> tuple[str, ...]:
        """The class names a label mentions."""
    def encode(self, label: Any, class_index: dict[str, int]) -> Any:
        """The training target of a label."""
    def preprocessing(self, hyperparameters: dict[str, Any]) -> Preprocessing: ...
    def build_model(self, model_name: str, num_classes: int, pretrained: bool,
                    weights_cache: str | None = None, layers_to_freeze: int | None = None) -> torch.nn.Module: ...
    def loss(self, hyperparameters: dict[str, Any], class_counts: Sequence[int],
             num_samples: int | None = None) -> torch.nn.Module:
        """Called as `loss(model, images, targets)` by the training loop. `class_counts`: training
        images per class; `num_samples`: training images."""
    def evaluator(self, labels: Sequence[str], loss: torch.nn.Module) -> Evaluator: ...
    def export_info(self) -> dict[str, Any]:
        """Task-specific fields of the exported model.json (multi-label: the threshold)."""
    def predictions(self, outputs: Any, labels: Sequence[str],
                    info: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Per image, what the model predicts; `info` is the exported model.json."""


ADAPTERS: dict[Task, type] = {
    Task.CLASSIFICATION: ClassificationAdapter,
    Task.MULTI_LABEL: MultiLabelAdapter,
}


def get_adapter(task: Task) -> TaskAdapter:
    try:
        return ADAPTERS[task]()
    except KeyError:
        implemented = ", ".join(t.value for t in ADAPTERS)
        raise SpecError(f"trial spec field 'task': {task.value!r} is not implemented by this trainer "
                        f"version yet (implemented: {implemented})") from None
