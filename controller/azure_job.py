"""Azure ML's own AutoML image job files, turned into this project's native job mapping.

Takes what Azure's tools write, as they write it: CLI v2 / SDK v2 job YAML (`type: automl`,
`task: image_object_detection`, `training_data: {path, type: mltable}`, `limits`, `sweep`,
`search_space` entries such as `{type: uniform, min_value, max_value}`, `training_parameters`),
a pipeline YAML whose one automl step is taken, and the SDK v1 `AutoMLImageConfig` names at the top
level (`iterations`, `max_concurrent_iterations`, `experiment_timeout_hours`, `compute_target`).
A native job file passes through unchanged. The native mapping is then validated by
`controller/spec.py` like any job file:

    automl-images validate --explain job.yml     # prints the native job the file becomes

Fields with no meaning here (the Azure compute, experiment, tags, outputs...) are accepted and each
reported as a notice; fields that would change what runs but cannot be honoured are refused with
the reason. `origins` maps each moved setting's native path to where it was written, so that
messages name the field and line of the file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Azure's task names (CLI v2, SDK v2) → ours (SDK v1's, which the native format uses)
TASKS = {"image_classification": "image-classification",
         "image_classification_multilabel": "image-multi-labeling",
         "image_object_detection": "image-object-detection",
         "image_instance_segmentation": "image-instance-segmentation"}

# Fields of an Azure job that say nothing about what trains: accepted, each reported by a notice.
IGNORED = {
    "compute": "trials run where compute.launcher says (local or skypilot), not on an Azure compute",
    "compute_target": "trials run where compute.launcher says (local or skypilot), not on an Azure compute",
    "experiment_name": "jobs are grouped by their root, not by an Azure experiment",
    "tags": "Azure run tags are not kept",
    "properties": "Azure run properties are not kept",
    "description": "not kept (use name for a display name)",
    "outputs": "every trial's model and metrics are written under the root (jobs/<id>/)",
    "log_verbosity": "the trainer's log is always complete (trials/<id>/logs/)",
    "environment_variables": "trials get the controller's secrets (compute.secrets), not Azure's variables",
    "identity": "trials use the credentials of the machine they run on",
    "resources": "trials run on compute.accelerators (skypilot) or this machine (local)",
    "queue_settings": "there is no Azure queue: trials start as max_concurrent_trials allows",
    "services": "Azure job services (studio, tensorboard) do not exist here: see automl-images status and report",
    "settings": "pipeline settings (default compute, continue on failure) have no meaning for one automl step",
    "inputs": "pipeline inputs are read only where the automl step refers to them",
    "status": "an Azure run status written by `az ml job show`: the job starts anew here",
    "creation_context": "written by Azure when the job ran there",
    "id": "an Azure job's resource id",
}
# Training parameters that Azure has and this trainer does not need.
IGNORED_TRAINING = {
    "distributed": "a trial always trains on every GPU of its machine",
    "enable_onnx_normalization": "automl-images export writes the ONNX model with its normalisation built in",
}
# Training parameters that would change what trains and cannot be honoured here.
REFUSED_TRAINING = {
    "advanced_settings": "Azure's undocumented settings text has no meaning here; set the hyperparameters themselves",
    "checkpoint_run_id": "an Azure run's checkpoint cannot be read here; warm_start seeds a sweep from earlier jobs",
    "checkpoint_model": "an Azure registered model cannot be read here; put pretrained weights in weights_cache",
    "checkpoint_dataset_id": "an Azure dataset's checkpoint cannot be read here",
    "checkpoint_filename": "an Azure dataset's checkpoint cannot be read here",
}
# Data types of `training_data` / `validation_data`: a JSONL file, or an MLTable folder.
DATA_TYPES = ("uri_file", "mltable")

# SDK v1 AutoMLImageConfig names written at the top level, moved into `limits:`.
_V1_LIMITS = {"iterations": "max_trials", "max_concurrent_iterations": "max_concurrent_trials",
              "experiment_timeout_hours": "timeout_hours"}
# Azure's search-space distributions: their parameters in the order of ours (controller/distributions.py).
_DISTRIBUTION_ARGS = {
    "choice": ("values",), "randint": ("upper",),
    "uniform": ("min_value", "max_value"), "loguniform": ("min_value", "max_value"),
    "quniform": ("min_value", "max_value", "q"), "qloguniform": ("min_value", "max_value", "q"),
    "normal": ("mu", "sigma"), "lognormal": ("mu", "sigma"),
    "qnormal": ("mu", "sigma", "q"), "qlognormal": ("mu", "sigma", "q"),
}
# How Azure's SDK writes some enum values (log_training_metrics: LogTrainingMetrics.ENABLE)
_ENUM_TEXT = re.compile(r"^[A-Z][A-Za-z]+\.([A-Z][A-Z_]*)$")
_PARENT_INPUT = re.compile(r"^\$\{\{\s*parent\.inputs\.([A-Za-z_][\w]*)\s*\}\}$")
_EXPRESSION = re.compile(r"\$\{\{.*\}\}")


@dataclass
class Translation:
    """The native job mapping, where its moved settings were written, and what was said about it."""
    data: Any
    origins: dict[tuple, tuple] = field(default_factory=dict)  # native path → path in the file
    # (path in the file, message): fields accepted and ignored, fields refused
    notices: list[tuple[tuple, str]] = field(default_factory=list)
    problems: list[tuple[tuple, str]] = field(default_factory=list)

    def origin(self, path: tuple) -> tuple:
        """Where the setting at native `path` was written (the longest moved prefix, rewritten)."""
        for cut in range(len(path), 0, -1):
            if path[:cut] in self.origins:
                return self.origins[path[:cut]] + path[cut:]
        return path


def is_azure(data: Any) -> bool:
    """A job written for Azure ML (CLI v2 / SDK v2, or a pipeline) rather than in the native format."""
    return isinstance(data, dict) and ("type" in data or "$schema" in data or data.get("task") in TASKS)


def translate(data: Any) -> Translation:
    """The native mapping of a loaded job file."""
    out = Translation(data)
    if not isinstance(data, dict):
        return out  # spec.py says what a job file must be
    builder = _Builder(out)
    if is_azure(data):
        builder.azure(data)
    else:
        builder.native(data)
    return out


class _Builder:
    def __init__(self, out: Translation):
        self.out = out
        self.native_data: dict[str, Any] = {}
        self.job: dict[str, Any] = {}  # the job's fields: the file's, or its pipeline step's
        self.base: tuple = ()          # where they are: () or a pipeline step's ("jobs", name)

    # -- reporting -----------------------------------------------------------------------------
    def notice(self, path: tuple, reason: str) -> None:
        self.out.notices.append((self.base + path, f"ignored: {reason}"))

    def refuse(self, path: tuple, message: str) -> None:
        self.out.problems.append((self.base + path, message))

    def put(self, native_path: tuple, value: Any, written: tuple) -> None:
        """Set `value` at `native_path` of the native mapping (`written`: its path in the file). Two
        settings of one mapping merge (`iterations` beside `limits:`); one setting twice is refused."""
        target = self.native_data
        for i, part in enumerate(native_path[:-1]):
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                self.refuse(written, f"goes into {'.'.join(map(str, native_path[:i + 1]))}, which the file gives "
                                     "as something other than a mapping")
                return
        key = native_path[-1]
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            for name, item in value.items():
                self.put(native_path + (name,), item, written + (name,))
            return
        if key in target:
            self.refuse(written, f"sets {'.'.join(map(str, native_path))} a second time")
            return
        target[key] = value
        if native_path != self.base + written:
            self.out.origins[native_path] = self.base + written

    # -- native files: the SDK v1 names at the top level ----------------------------------------
    def native(self, data: dict[str, Any]) -> None:
        for key, value in data.items():
            if key in _V1_LIMITS:
                self.put(("limits", _V1_LIMITS[key]), value, (key,))
            elif key == "compute_target":
                self.notice((key,), IGNORED[key])
            elif key == "validation_size":
                self.put(("arguments", "split_ratio"), value, (key,))
            elif key in ("early_termination", "early_termination_policy") and isinstance(value, dict):
                self.put((key,), _policy(value), (key,))
            else:
                self.put((key,), value, (key,))
        self.out.data = self.native_data

    # -- Azure ML CLI v2 / SDK v2 ----------------------------------------------------------------
    def azure(self, data: dict[str, Any]) -> None:
        kind = data.get("type", "automl")
        if kind == "pipeline":
            step = self._pipeline_step(data)
            if step is None:
                self.out.data = {}
                return
            name, data = step
            self.base = ("jobs", name)
            kind = data.get("type")
        if kind != "automl":
            self.refuse(("type",), f"{kind!r} is not an AutoML job: automl-images runs Azure's `type: automl` "
                                   "image jobs (or a pipeline with one automl step)")
            self.out.data = {}
            return
        self.job = data
        for key, value in data.items():
            self._azure_field(key, value)
        self.out.data = self.native_data

    def _azure_field(self, key: str, value: Any) -> None:
        path = (key,)
        if key in ("$schema", "type"):
            return  # say what the file is: read above
        if key == "task":
            self.put(path, TASKS.get(value, value), path)
        elif key in ("training_data", "validation_data"):
            self._data(key, value)
        elif key == "validation_data_size":
            self.put(("arguments", "split_ratio"), value, path)
        elif key == "target_column_name":
            if value != "label":
                self.refuse(path, f"the JSONL's label column is read as 'label' (Azure's data labeling and "
                                  f"JSONL converters write it so), got {value!r}: rename the column")
        elif key == "primary_metric":
            self.put(path, _snake(value) if isinstance(value, str) else value, path)
        elif key == "limits":
            self._limits(value, path)
        elif key == "sweep":
            self._sweep(value)
        elif key == "search_space":
            self._search_space(value)
        elif key in ("training_parameters", "image_model"):
            self._training_parameters(value, path)
        elif key == "display_name":
            self.put(("name",), value, path)
        elif key == "name":
            if "display_name" in self.job:
                self.notice(path, "an Azure job name; display_name names the job here")
            else:
                self.put(("name",), value, path)
        elif key == "compute" and isinstance(value, dict):
            self.put(path, value, path)  # the native compute: launcher, accelerators...
        elif key in IGNORED:
            self.notice(path, IGNORED[key])
        else:
            self.put(path, value, path)  # a native field, or a mistake spec.py names

    def _pipeline_step(self, pipeline: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        jobs = pipeline.get("jobs")
        if not isinstance(jobs, dict):
            self.refuse(("jobs",), "a pipeline needs its steps under jobs: (one of them type: automl)")
            return None
        automl = [name for name, step in jobs.items() if isinstance(step, dict) and step.get("type") == "automl"]
        if len(automl) != 1:
            found = f"{len(automl)} ({', '.join(map(str, automl))})" if automl else "none"
            self.refuse(("jobs",), f"a pipeline is taken when exactly one of its steps is type: automl, found "
                                   f"{found}: copy the automl step you want to run into a job file of its own")
            return None
        name = automl[0]
        for key in pipeline:
            if key not in ("$schema", "type", "jobs", "inputs"):
                self.notice((key,), IGNORED.get(key, "a pipeline setting; only the automl step runs here"))
        for other in jobs:
            if other != name:
                self.notice(("jobs", other), f"a pipeline step of type {jobs[other].get('type', '?')}; only the "
                                             f"automl step {name!r} runs here")
        inputs = pipeline.get("inputs") if isinstance(pipeline.get("inputs"), dict) else {}
        step = dict(jobs[name])
        for key, value in step.items():
            if not isinstance(value, str) or not _EXPRESSION.search(value):
                continue
            match = _PARENT_INPUT.match(value)
            if match and match[1] in inputs:
                step[key] = inputs[match[1]]
                continue
            self.base = ("jobs", name)
            self.refuse((key,), f"{value} is not a pipeline input this file gives: automl-images runs the automl "
                                f"step {name!r} alone; copy it into a job file of its own with its data paths")
            self.base = ()
            return None
        return name, step

    def _data(self, key: str, value: Any) -> None:
        path = (key,)
        if isinstance(value, dict):
            kind = value.get("type", "uri_file")
            unknown = [k for k in value if k not in ("path", "type", "mode")]
            for k in unknown:
                self.refuse(path + (k,), f"unknown key {k!r}; a data input takes path and type")
            if "mode" in value:
                self.notice(path + ("mode",), "data is read through fsspec, not mounted or downloaded")
            if kind not in DATA_TYPES:
                self.refuse(path + ("type",), f"{kind!r}: the data is a JSONL file (uri_file) or an MLTable folder "
                                              f"(mltable), got {kind!r}")
                return
            location = self._location(value.get("path"), path + ("path",))
            if location is None:
                return
            if kind == "mltable":
                self.put(path, {"path": location, "type": "mltable"}, path)
            else:
                self.put(path, location, path + ("path",))
            return
        location = self._location(value, path)
        if location is not None:
            self.put(path, location, path)

    def _location(self, value: Any, path: tuple) -> str | None:
        """A data path as Azure writes it, as a path or URL of ours."""
        if not isinstance(value, str) or not value.strip():
            self.refuse(path, f"must be a path or URL, got {value!r}")
            return None
        text = value.strip()
        if text.startswith("azureml:") and not text.startswith("azureml://"):
            # Azure's SDK writes every local path so (azureml:./train, azureml:train); a registered
            # data asset is azureml:name:version or azureml:name@label
            text = text[len("azureml:"):]
            if re.fullmatch(r"[\w.-]+(:[\w.-]+|@[\w.-]+)", text) and not text.startswith("file:"):
                self.refuse(path, f"{value.strip()!r} is a registered Azure data asset, which cannot be read "
                                  "here: give its path (a folder, or a URL such as s3://, gs://, az://)")
                return None
        if text.startswith("file:"):
            text = text[len("file:"):]
        if text.startswith("azureml://"):
            self.refuse(path, f"{text!r} is an Azure datastore URI, which cannot be read here: give the storage URL "
                              "behind the datastore (az://container/path, abfs://...)")
            return None
        return text

    def _limits(self, value: Any, path: tuple) -> None:
        if not isinstance(value, dict):
            self.put(("limits",), value, path)
            return
        for key, item in value.items():
            here = path + (key,)
            if key == "timeout_minutes":
                self.put(("limits", "timeout_hours"), item / 60 if _is_number(item) else item, here)
            elif key == "trial_timeout_minutes":
                self.notice(here, "trials are bounded by the job's timeout and their number_of_epochs, not "
                                  "one by one")
            elif key == "max_nodes":
                self.notice(here, "a trial runs on one machine, with every GPU it has")
            elif key in ("enable_early_termination", "exit_score"):
                self.notice(here, "early termination is set by sweep.early_termination")
            else:
                self.put(("limits", key), item, here)

    def _sweep(self, value: Any) -> None:
        if not isinstance(value, dict):
            self.refuse(("sweep",), "must be a mapping: sampling_algorithm, early_termination")
            return
        for key, item in value.items():
            here = ("sweep", key)
            if key == "sampling_algorithm":
                self.put(("sampling",), item.lower() if isinstance(item, str) else item, here)
            elif key == "early_termination":
                if item is not None:
                    self.put(("early_termination",), _policy(item) if isinstance(item, dict) else item, here)
            elif key == "limits":  # the preview schema kept max_trials here
                self._limits(item, here)
            else:
                self.refuse(here, f"unknown key {key!r}; sweep takes sampling_algorithm and early_termination")

    def _search_space(self, value: Any) -> None:
        path = ("search_space",)
        if not isinstance(value, list):
            self.put(path, value, path)
            return
        spaces = []
        for i, subspace in enumerate(value):
            if not isinstance(subspace, dict):
                spaces.append(subspace)
                continue
            spaces.append({name: self._distribution(item, path + (i, name)) for name, item in subspace.items()})
        self.put(path, spaces, path)

    def _distribution(self, value: Any, path: tuple) -> Any:
        """`{type: uniform, min_value, max_value}` as ours (`{distribution, args}`); others unchanged."""
        if not isinstance(value, dict) or "type" not in value:
            return value
        name = value["type"]
        if name not in _DISTRIBUTION_ARGS:
            self.refuse(path + ("type",), f"unknown distribution {name!r}; allowed: {', '.join(_DISTRIBUTION_ARGS)}")
            return value
        wanted = _DISTRIBUTION_ARGS[name]
        missing = [k for k in wanted if k not in value]
        extra = [k for k in value if k not in wanted and k != "type"]
        if missing or extra:
            self.refuse(path, f"{name} takes {', '.join(wanted)}"
                        + (f"; missing {', '.join(missing)}" if missing else "")
                        + (f"; unknown {', '.join(extra)}" if extra else ""))
            return value
        if name == "choice":
            values = value["values"] if isinstance(value["values"], list) else [value["values"]]
            return {"distribution": "choice", "args": [_enum_value(v) for v in values]}
        return {"distribution": name, "args": [value[k] for k in wanted]}

    def _training_parameters(self, value: Any, path: tuple) -> None:
        if not isinstance(value, dict):
            self.refuse(path, "must be a mapping of hyperparameter: value")
            return
        for key, item in value.items():
            here = path + (key,)
            if key == "random_seed":
                self.put(("seed",), item, here)
            elif key == "model_name":
                # a fixed model is a search space of one subspace
                self.put(("search_space",), [{"model_name": item}], here)
            elif key in IGNORED_TRAINING:
                self.notice(here, IGNORED_TRAINING[key])
            elif key in REFUSED_TRAINING:
                self.refuse(here, REFUSED_TRAINING[key])
            elif item is not None:
                self.put(("arguments", key), _enum_value(item), here)


def _policy(policy: dict[str, Any]) -> dict[str, Any]:
    """An early termination policy as Azure's SDK writes it, without its placeholders: a bandit
    policy has both slack_factor and slack_amount, the unused one 0.0; and its evaluation_interval
    defaults to 0, which we read as Azure's service does any interval below 1: every evaluation."""
    policy = dict(policy)
    if policy.get("slack_factor") and policy.get("slack_amount") == 0:
        del policy["slack_amount"]
    if policy.get("slack_amount") and policy.get("slack_factor") == 0:
        del policy["slack_factor"]
    if policy.get("evaluation_interval") == 0:
        policy["evaluation_interval"] = 1
    return policy


def _enum_value(value: Any) -> Any:
    """`LogTrainingMetrics.ENABLE` → `enable`; any other value unchanged."""
    match = _ENUM_TEXT.match(value) if isinstance(value, str) else None
    return match[1].lower() if match else value


def _snake(name: str) -> str:
    """`MeanAveragePrecision` → `mean_average_precision` (Azure's enum spelling of a metric)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
