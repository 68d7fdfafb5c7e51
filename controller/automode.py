"""AutoMode: what a job with no search space and `max_trials` above one searches.

Azure AutoML for Images sweeps "a curated search space" then instead of training the default model
`max_trials` times; the space itself is not published, so this one is curated from Azure's own
example sweeps (azureml-examples' image jobs and notebooks): the models they try for each task and
the learning-rate ranges they give them, with the few settings they vary beside. Their seresnext and
vits16r224 are left out: their pretrained weights come from the weights cache only (see
trainer/models.py), so without it every trial of theirs would fail; resnet101 stands in. The
controller saves the space with the job (`jobs/<id>/automode.json`, core/layout.py), so a job keeps
the space it was accepted with when this one changes.

Random and Bayesian sampling search it; grid sampling, which needs every value listed, trains the
default model as before (the space's learning rates are ranges).
"""
from __future__ import annotations

from typing import Any, Mapping

from automl_images.core import models
from automl_images.core.hyperparameters import Task

_CLASSIFIERS = [
    {"model_name": "vitb16r224", "learning_rate": "uniform(0.001, 0.01)", "number_of_epochs": "choice(15, 30)"},
    {"model_name": "choice(resnet50, resnet101)", "learning_rate": "uniform(0.001, 0.01)",
     "layers_to_freeze": "choice(0, 2)"},
]

SPACES: dict[Task, list[dict[str, Any]]] = {
    Task.CLASSIFICATION: _CLASSIFIERS,
    Task.MULTI_LABEL: _CLASSIFIERS,
    Task.OBJECT_DETECTION: [
        {"model_name": "yolov5", "learning_rate": "uniform(0.0001, 0.01)", "model_size": "choice(small, medium)"},
        {"model_name": "fasterrcnn_resnet50_fpn", "learning_rate": "uniform(0.0001, 0.001)",
         "optimizer": "choice(sgd, adam, adamw)", "min_size": "choice(600, 800)"},
    ],
    Task.INSTANCE_SEGMENTATION: [
        {"model_name": "choice(maskrcnn_resnet50_fpn, maskrcnn_resnet101_fpn)",
         "learning_rate": "uniform(0.0001, 0.001)", "optimizer": "choice(sgd, adam, adamw)",
         "min_size": "choice(600, 800)"},
    ],
}


def applies(search_space: Any, max_trials: int, sampling: str | None) -> bool:
    """A job without a search space that asks for more than one trial, sampled randomly or by Bayes."""
    return search_space is None and max_trials > 1 and sampling in ("random", "bayesian")


def space(task: Task, fixed: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The task's curated space, as a job file's `search_space` (distributions as text), without
    the settings the job fixes (`fixed`: its arguments), which keep the job's value; a fixed
    crop_size leaves out the models that take one input size only (the ViT), if another."""
    fixed = fixed or {}
    out = []
    for subspace in SPACES[task]:
        size = models.MODELS[subspace["model_name"]].fixed_input_size if subspace["model_name"] in models.MODELS \
            else None
        if size is not None and fixed.get("crop_size", size) != size:
            continue
        out.append({name: value for name, value in subspace.items() if name not in fixed})
    return out
