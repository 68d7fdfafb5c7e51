"""The Python API, for notebooks: build a job as Azure ML's SDK builds one, with its names, and submit it.

    from automl_images.controller import automl
    from automl_images.controller.automl import BanditPolicy, Choice, LogUniform

    job = automl.image_classification(training_data="data/train.jsonl", validation_data="data/val.jsonl",
                                      primary_metric="accuracy")
    job.set_limits(max_trials=8, max_concurrent_trials=2, timeout_minutes=60)
    job.set_sweep(sampling_algorithm="random", early_termination=BanditPolicy(slack_factor=0.2))
    job.extend_search_space([{"model_name": Choice(["resnet18", "mobilenetv2"]),
                              "learning_rate": LogUniform(-7, -2)}])
    job.set_training_parameters(number_of_epochs=5)
    run = job.submit(root="./bucket")      # a SubmittedJob (controller/submitted.py)
    run.wait()
    run.leaderboard()

SDK v2's `automl.image_classification(...)`, `image_classification_multilabel`, `image_object_detection`
and `image_instance_segmentation` with `set_limits`, `set_sweep`, `extend_search_space` and
`set_training_parameters`; its distributions (`Choice`, `Uniform`, `LogUniform`, ...) and policies
(`BanditPolicy`, ...); and SDK v1's `AutoMLImageConfig` with `RandomParameterSampling` and the other
samplers. A job is only ever a job file's mapping: `to_yaml()` is the file, and `validate()` runs the
same parser (controller/spec.py) and data check as `automl-images validate`; nothing here checks a
value itself. A value may also be a distribution's text, as in a job file (`"choice(a, b)"`).
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from automl_images.core.hyperparameters import Task
from automl_images.core.layout import job_id_from_name
from automl_images.core.storage import is_url

from . import submit as submitting
from .distributions import Distribution
from .spec import JobSpec, JobSpecError, parse_job
from .submitted import SubmittedJob

__all__ = [
    "image_classification", "image_classification_multilabel", "image_object_detection",
    "image_instance_segmentation", "ImageJob", "SubmittedJob", "AutoMLImageConfig",
    "Choice", "Randint", "Uniform", "QUniform", "LogUniform", "QLogUniform", "Normal", "QNormal", "LogNormal",
    "QLogNormal", "BanditPolicy", "MedianStoppingPolicy", "TruncationSelectionPolicy", "AshaPolicy",
    "RandomParameterSampling", "GridParameterSampling", "BayesianParameterSampling",
]


class ImageJob:
    """A job being built: the job file's mapping, set by Azure's methods. Nothing is checked until
    `validate()` or `submit()`, which hand the job file to the parser."""

    def __init__(self, task: str | Task, training_data: str | os.PathLike,
                 validation_data: str | os.PathLike | None = None, *, primary_metric: str | None = None,
                 name: str | None = None, compute: str | Mapping | None = None,
                 validation_data_size: float | None = None, **settings: Any):
        self.document: dict[str, Any] = {"task": Task(task).value if isinstance(task, Task) else task,
                                         "training_data": _data(training_data)}
        optional = {"name": name, "validation_data": _data(validation_data), "primary_metric": primary_metric,
                    "compute": {"launcher": compute} if isinstance(compute, str) else compute}
        self.document.update({key: value for key, value in optional.items() if value is not None})
        self.document.update(settings)  # any other job-file setting (seed, weights_cache, mlflow_tracking_uri, ...)
        if validation_data_size is not None:  # Azure's name for the split of the training data
            self.set_training_parameters(split_ratio=validation_data_size)

    # -- Azure ML SDK v2's setters ----------------------------------------------------------------
    def set_limits(self, *, max_trials: int | None = None, max_concurrent_trials: int | None = None,
                   timeout_minutes: float | None = None, max_cost_usd: float | None = None) -> "ImageJob":
        limits = {"max_trials": max_trials, "max_concurrent_trials": max_concurrent_trials,
                  "timeout_hours": None if timeout_minutes is None else timeout_minutes / 60,
                  "max_cost_usd": max_cost_usd}
        self.document.setdefault("limits", {}).update({k: v for k, v in limits.items() if v is not None})
        return self

    def set_sweep(self, *, sampling_algorithm: str = "random", early_termination: Mapping | None = None,
                  sampling_options: Mapping | None = None) -> "ImageJob":
        """`sampling_algorithm`: random, grid or bayesian (Azure's "Random", "Grid", "Bayesian" too);
        `early_termination`: one of the policies below; `sampling_options`: bayesian's estimator
        and n_initial_points."""
        self.document["sampling"] = sampling_algorithm.lower() if isinstance(sampling_algorithm, str) \
            else sampling_algorithm
        for key, value in (("early_termination", early_termination), ("sampling_options", sampling_options)):
            if value is None:
                self.document.pop(key, None)
            else:
                self.document[key] = dict(value)
        return self

    def extend_search_space(self, value: Mapping | Sequence[Mapping]) -> "ImageJob":
        """Add one subspace (a mapping of hyperparameter to value or distribution), or a list of them."""
        spaces = [value] if isinstance(value, Mapping) else list(value)
        self.document.setdefault("search_space", []).extend(dict(space) for space in spaces)
        return self

    def set_training_parameters(self, **arguments: Any) -> "ImageJob":
        """Fixed settings for every trial (the job file's `arguments:`)."""
        self.document.setdefault("arguments", {}).update(arguments)
        return self

    # -- the job file -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The job file's mapping: distributions as their text (`loguniform(-7, -2)`)."""
        return _plain(self.document)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | os.PathLike) -> str:
        """Write the job file (for `automl-images validate` or `submit`); returns its path."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_yaml())
        return os.fspath(path)

    def validate(self) -> JobSpec:
        """The validated spec, as `automl-images validate` checks a job file: the parser's every
        problem, and the data files (they exist and parse), raised as one JobSpecError. Problems
        name the lines of `to_yaml()`, as `<name>.yaml`."""
        source = self._file_name()
        spec = parse_job(self.to_yaml(), source)
        report = submitting.check_data(spec, os.path.abspath(source), images=False)
        if not report.ok:
            raise JobSpecError(source, report.problems())
        return spec

    def submit(self, root: str | None = None, job_id: str | None = None) -> SubmittedJob:
        """`automl-images submit`: validate, check the data (every image's header), upload local
        data to a remote root, drop the job into the root's inbox. `root` defaults to
        $AUTOML_IMAGES_ROOT. Returns the job, to wait for and read."""
        root = SubmittedJob.root_url(root)
        self.validate()  # its problems name the job's own lines, not the temporary file's below
        with tempfile.TemporaryDirectory() as folder:
            path = self.save(os.path.join(folder, self._file_name()))
            job_id = submitting.submit(path, root, job_id=job_id, progress=print)
        return SubmittedJob(job_id, root)

    def _file_name(self) -> str:
        """The job id is made of the file's name, as for a job file: the job's name, or its task."""
        name = str(self.document.get("name") or self.document.get("task") or "job").replace("/", "-")
        return f"{job_id_from_name(name)}.yaml"

    def __repr__(self) -> str:
        return f"ImageJob(\n{self.to_yaml()})"


def _data(path: str | os.PathLike | None) -> str | None:
    """A data file as the job file names it: a URL as it is, a local path made absolute (relative
    to the notebook's folder, where the job file is not)."""
    if path is None:
        return None
    text = os.fspath(path)
    return text if is_url(text) else os.path.abspath(text)


def _plain(value: Any) -> Any:
    """YAML-ready: distributions as text, tuples as lists, mappings copied."""
    if isinstance(value, Distribution):
        return str(value)
    if isinstance(value, np.generic):  # a NumPy number from a notebook's arithmetic: YAML writes Python's
        return value.item()
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


# -- Azure ML SDK v2's task functions (`azure.ai.ml.automl`) ---------------------------------------------

def image_classification(training_data: str | os.PathLike, validation_data: str | os.PathLike | None = None,
                         **settings: Any) -> ImageJob:
    return ImageJob(Task.CLASSIFICATION, training_data, validation_data, **settings)


def image_classification_multilabel(training_data: str | os.PathLike,
                                    validation_data: str | os.PathLike | None = None, **settings: Any) -> ImageJob:
    return ImageJob(Task.MULTI_LABEL, training_data, validation_data, **settings)


def image_object_detection(training_data: str | os.PathLike, validation_data: str | os.PathLike | None = None,
                           **settings: Any) -> ImageJob:
    return ImageJob(Task.OBJECT_DETECTION, training_data, validation_data, **settings)


def image_instance_segmentation(training_data: str | os.PathLike, validation_data: str | os.PathLike | None = None,
                                **settings: Any) -> ImageJob:
    return ImageJob(Task.INSTANCE_SEGMENTATION, training_data, validation_data, **settings)


# -- distributions (`azure.ai.ml.sweep`), with AzureML's semantics: controller/distributions.py ----------
# Built as given and checked by the parser, like the same text in a job file.

def Choice(values: Sequence[Any]) -> Distribution:  # noqa: N802 - Azure's names
    return Distribution("choice", tuple(values))


def Randint(upper: int) -> Distribution:  # noqa: N802
    return Distribution("randint", (upper,))


def Uniform(min_value: float, max_value: float) -> Distribution:  # noqa: N802
    return Distribution("uniform", (min_value, max_value))


def QUniform(min_value: float, max_value: float, q: float) -> Distribution:  # noqa: N802
    return Distribution("quniform", (min_value, max_value, q))


def LogUniform(min_value: float, max_value: float) -> Distribution:  # noqa: N802
    """exp(uniform(min_value, max_value)): the bounds are natural logs, as in AzureML."""
    return Distribution("loguniform", (min_value, max_value))


def QLogUniform(min_value: float, max_value: float, q: float) -> Distribution:  # noqa: N802
    return Distribution("qloguniform", (min_value, max_value, q))


def Normal(mu: float, sigma: float) -> Distribution:  # noqa: N802
    return Distribution("normal", (mu, sigma))


def QNormal(mu: float, sigma: float, q: float) -> Distribution:  # noqa: N802
    return Distribution("qnormal", (mu, sigma, q))


def LogNormal(mu: float, sigma: float) -> Distribution:  # noqa: N802
    return Distribution("lognormal", (mu, sigma))


def QLogNormal(mu: float, sigma: float, q: float) -> Distribution:  # noqa: N802
    return Distribution("qlognormal", (mu, sigma, q))


# -- early termination policies: the job file's `early_termination:` mapping -----------------------------

def BanditPolicy(*, slack_factor: float | None = None, slack_amount: float | None = None,  # noqa: N802
                 evaluation_interval: int | None = None, delay_evaluation: int | None = None) -> dict[str, Any]:
    return _policy("bandit", slack_factor=slack_factor, slack_amount=slack_amount,
                   evaluation_interval=evaluation_interval, delay_evaluation=delay_evaluation)


def MedianStoppingPolicy(*, evaluation_interval: int | None = None,  # noqa: N802
                         delay_evaluation: int | None = None) -> dict[str, Any]:
    return _policy("median_stopping", evaluation_interval=evaluation_interval, delay_evaluation=delay_evaluation)


def TruncationSelectionPolicy(*, truncation_percentage: int | None = None,  # noqa: N802
                              evaluation_interval: int | None = None,
                              delay_evaluation: int | None = None) -> dict[str, Any]:
    return _policy("truncation_selection", truncation_percentage=truncation_percentage,
                   evaluation_interval=evaluation_interval, delay_evaluation=delay_evaluation)


def AshaPolicy(*, min_resource: int | None = None, reduction_factor: int | None = None,  # noqa: N802
               max_resource: int | None = None) -> dict[str, Any]:
    """Asynchronous successive halving (not in AzureML; docs/sampling.md, "Early termination")."""
    return _policy("asha", min_resource=min_resource, reduction_factor=reduction_factor, max_resource=max_resource)


def _policy(name: str, **values: Any) -> dict[str, Any]:
    return {"policy": name, **{key: value for key, value in values.items() if value is not None}}


# -- Azure ML SDK v1: AutoMLImageConfig and HyperDrive's samplers ---------------------------------------

@dataclass(frozen=True)
class ParameterSampling:
    """A sampling algorithm and its space: one subspace (a mapping), or a list of them."""
    algorithm: str
    parameter_space: Mapping | Sequence[Mapping]


def RandomParameterSampling(parameter_space: Mapping | Sequence[Mapping]) -> ParameterSampling:  # noqa: N802
    return ParameterSampling("random", parameter_space)


def GridParameterSampling(parameter_space: Mapping | Sequence[Mapping]) -> ParameterSampling:  # noqa: N802
    return ParameterSampling("grid", parameter_space)


def BayesianParameterSampling(parameter_space: Mapping | Sequence[Mapping]) -> ParameterSampling:  # noqa: N802
    return ParameterSampling("bayesian", parameter_space)


def AutoMLImageConfig(task: str | Task, training_data: str | os.PathLike,  # noqa: N802 - Azure's name
                      validation_data: str | os.PathLike | None = None, *,
                      hyperparameter_sampling: ParameterSampling | None = None,
                      early_termination_policy: Mapping | None = None, iterations: int | None = None,
                      max_concurrent_iterations: int | None = None, experiment_timeout_hours: float | None = None,
                      arguments: Sequence[Any] | Mapping | None = None, compute_target: str | None = None,
                      **settings: Any) -> ImageJob:
    """SDK v1's configuration, as the same ImageJob. `arguments` is Azure's list
    (`["--pretrained", 1, ...]`) or a mapping."""
    job = ImageJob(task, training_data, validation_data, compute=compute_target, **settings)
    job.set_limits(max_trials=iterations, max_concurrent_trials=max_concurrent_iterations,
                   timeout_minutes=None if experiment_timeout_hours is None else experiment_timeout_hours * 60)
    if hyperparameter_sampling is not None:
        job.set_sweep(sampling_algorithm=hyperparameter_sampling.algorithm,
                      early_termination=early_termination_policy)
        job.extend_search_space(hyperparameter_sampling.parameter_space)
    elif early_termination_policy is not None:
        job.set_sweep(early_termination=early_termination_policy)
    if isinstance(arguments, Mapping):
        job.set_training_parameters(**arguments)
    elif arguments is not None:
        job.document["arguments"] = list(arguments)  # the parser reads Azure's list form
    return job
