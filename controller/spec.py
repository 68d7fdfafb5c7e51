"""The job file: YAML in, a typed and validated `JobSpec` out.

Names follow Azure ML AutoML for Images (task names, hyperparameters, distributions, sampling,
early termination, `iterations` / `max_concurrent_iterations`). Every problem is reported at once,
each as `file:line: field.path: what is wrong and what is allowed`.

    automl-images validate job.yaml
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass
from typing import Any

import yaml

from automl_images.core import hyperparameters as hps
from automl_images.core import models
from automl_images.core.annotations import same_file
from automl_images.core.hyperparameters import Kind, Task
from automl_images.core.problems import Problem
from automl_images.core.storage import resolve

from . import automode, azure_job, distributions
from .distributions import Distribution, DistributionError
from .launch.extras import SKYPILOT_INSTALL, skypilot_installed

# The version of a saved job spec (`JobSpec.to_json`, jobs/<id>/spec.json). A controller runs only
# the version it writes: a job saved by another version fails with a clear error instead.
SCHEMA_VERSION = 1

SAMPLERS = ("random", "grid", "bayesian")
PREPARED_IMAGES = ("local", "bucket", "off")
POLICIES = ("bandit", "median_stopping", "truncation_selection", "asha")
LAUNCHERS = ("local", "skypilot")

# Surrogate models of Bayesian sampling (scikit-optimize names): a Gaussian process, random forest, extra trees.
ESTIMATORS = ("gp", "rf", "et")

# What `compute:` may name for the skypilot launcher. SkyPilot itself lets unknown names through
# (an unknown accelerator is passed on as a Kubernetes label, an unknown recovery strategy fails
# only on its API server), so they are checked here; tests/controller/test_sky_task.py keeps these lists
# equal to the installed SkyPilot's.
SKY_ACCELERATORS = ("A10", "A10G", "A100", "A100-80GB", "B200", "H100", "H200", "L4", "L40S", "RTX5090",
                    "RTXPRO6000", "T4", "V100", "V100-32GB")  # sky.catalog.get_common_gpus(): CUDA only
SKY_CLOUDS = ("aws", "gcp", "azure", "kubernetes", "lambda", "runpod", "nebius", "oci")
SKY_RECOVERY_STRATEGIES = ("EAGER_NEXT_REGION", "FAILOVER")
SKY_FALLBACKS = ("ordered", "any_of")


class JobSpecError(ValueError):
    """Every problem of one job file (core.problems.Problem, whose `field` is the setting's dotted
    path)."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))  # a job file's problems, every one

    def to_json(self) -> dict[str, Any]:
        return {"error": "invalid job file", "source": self.source,
                # a problem of another file (a data file's line) names it
                "problems": [{"path": p.field, "line": p.line, "message": p.message,
                              **({"file": p.source} if p.source != self.source else {})} for p in self.problems],
                "message": str(self)}


class NewerSpecError(JobSpecError):
    """A saved job spec of a newer schema version: a newer controller runs that job."""


@dataclass(frozen=True)
class EarlyTermination:
    policy: str
    evaluation_interval: int = 1
    delay_evaluation: int = 0
    slack_factor: float | None = None
    slack_amount: float | None = None
    truncation_percentage: int | None = None
    # asha: rungs at min_resource * reduction_factor**k epochs, below max_resource (default: the
    # trial's number_of_epochs)
    min_resource: int | None = None
    reduction_factor: int | None = None
    max_resource: int | None = None


@dataclass(frozen=True)
class Limits:
    max_trials: int = 1
    max_concurrent_trials: int = 1
    timeout_hours: float = 144.0
    max_cost_usd: float | None = None


@dataclass(frozen=True)
class JobRecovery:
    strategy: str = "EAGER_NEXT_REGION"   # after a preemption, try another region first
    max_restarts_on_errors: int = 2       # crashes that are not preemptions, retried by SkyPilot


@dataclass(frozen=True)
class Compute:
    launcher: str = "local"
    # The rest is for the skypilot launcher (sky/trial.yaml's resources).
    accelerators: tuple[str, ...] = ()    # "A10G:1", in order of preference; none: a CPU machine
    fallback: str = "ordered"             # ordered: in the listed order; any_of: the cheapest first
    use_spot: bool = True
    clouds: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()         # "cloud/region"; none: any region of the clouds
    disk_size: int = 100                  # GB
    image: str | None = None              # the trainer image (infra/Dockerfile), without "docker:"
    job_recovery: JobRecovery = JobRecovery()
    secrets: tuple[str, ...] = ()         # names of the controller's environment variables handed
                                          # to trials as SkyPilot secrets (never written by us)


Value = Any  # a constant, or a Distribution


@dataclass(frozen=True)
class SamplingOptions:
    """Bayesian sampling's settings (`sampling_options:`); random and grid take none."""
    estimator: str = "gp"            # the surrogate: gp | rf | et
    n_initial_points: int = 5        # random trials per subspace before the surrogate proposes


@dataclass(frozen=True)
class JobSpec:
    task: Task
    training_data: str
    validation_data: str | None
    primary_metric: str
    sampling: str
    search_space: tuple[dict[str, Value], ...]  # one dict per subspace; model_name always present
    arguments: dict[str, Any]
    limits: Limits
    compute: Compute
    early_termination: EarlyTermination | None = None
    seed: int = 0
    weights_cache: str | None = None
    datastores: dict[str, str] = dataclasses.field(default_factory=dict)  # Azure datastore name → root URL
    compile: bool = False                     # torch.compile the model in every trial
    lenient_labels: bool = False              # detection: clip and report out-of-bounds boxes, not refuse
    allow_private_image_urls: bool = False    # web image URLs may point into private networks (core/addresses.py)
    keep_checkpoints: bool = False            # finished trials keep checkpoints/last.pt (resume state)
    # Each image decoded once: on each machine ("local"), with a copy in the bucket for trials on
    # other machines ("bucket"), or decoded in every epoch ("off") (trainer/prepared.py).
    prepared_images: str = "local"
    # Where the controller logs the job and its trials (controller/mlflow_sync.py); None: the
    # controller's MLFLOW_TRACKING_URI, if set.
    mlflow_tracking_uri: str | None = None
    name: str | None = None
    sampling_options: SamplingOptions = SamplingOptions()
    warm_start: tuple[str, ...] = ()          # earlier job ids whose finished trials seed the sampler
    # The registry's value of every hyperparameter for each model the space can sample, as it was
    # when the job was accepted: the job's trials keep them when the registry changes afterwards.
    defaults: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # Azure fields that have no meaning here, accepted: one line each saying so (validate prints them)
    notices: tuple[str, ...] = ()
    # AutoMode: no search space and max_trials above one, so the task's curated space (controller/automode.py)
    automode: bool = False

    def trial_hyperparameters(self, subspace: int, params: dict[str, Any]) -> dict[str, Any]:
        """The values a trial runs with: the subspace's constants, the fixed arguments that apply
        to its model, and the sampled `params`, checked and coerced; the job's saved `defaults`
        for the rest."""
        space = self.search_space[subspace]
        values = {k: v for k, v in space.items() if not isinstance(v, Distribution)}
        values.update(params)
        defaults = self.defaults[values["model_name"]]  # the hyperparameters of the task and model
        values.update((name, value) for name, value in self.arguments.items() if name in defaults)
        checked = {}
        for name, value in values.items():
            # Coerced as the registry types it (a quniform draw of an integer setting is a float);
            # a name a later registry dropped keeps the value the job was accepted with.
            definition = hps.HYPERPARAMETERS.get(name)
            coerced, error = definition.check(value) if definition is not None else (value, None)
            if error:
                raise ValueError(f"{name}: {error}")
            checked[name] = coerced
        return {name: checked.get(name, default) for name, default in defaults.items()}

    def to_json(self) -> dict[str, Any]:
        """Plain JSON, with SCHEMA_VERSION; distributions as their text (`uniform(0.001, 0.1)`)."""
        def encode(value: Any) -> Any:
            if isinstance(value, Distribution):
                return str(value)
            if isinstance(value, Task):
                return value.value
            if dataclasses.is_dataclass(value):
                return {k: encode(v) for k, v in dataclasses.asdict(value).items()}
            if isinstance(value, dict):
                return {k: encode(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [encode(v) for v in value]
            return value

        fields = {f.name: encode(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"schema_version": SCHEMA_VERSION, **fields}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "spec.json") -> "JobSpec":
        """The spec that `to_json` wrote. It was validated when it was written: only its version and
        shape are checked (NewerSpecError for a newer version, JobSpecError for anything else). A
        field added since, with a default, may be missing."""
        version = data.get("schema_version") if isinstance(data, dict) else None
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise NewerSpecError(source, [Problem(source, "schema_version", (
                f"this controller reads saved job specs of version {SCHEMA_VERSION}, not {version}: the job was "
                "accepted by a newer automl-images; a controller of that version runs it"))])
        if version != SCHEMA_VERSION:
            raise JobSpecError(source, [Problem(source, "schema_version", (
                f"this controller reads saved job specs of version {SCHEMA_VERSION}, not {version!r}: the job "
                "was accepted by another version of automl-images; run it with that version, or submit its "
                "job.yaml again"))])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"schema_version"})
        try:
            if unknown:
                raise ValueError(f"unknown field(s) {', '.join(unknown)}")
            fields = {name: data[name] for name in known if name in data}
            compute = {k: tuple(v) if isinstance(v, list) else v for k, v in data.get("compute", {}).items()}
            if "job_recovery" in compute:
                compute["job_recovery"] = JobRecovery(**compute["job_recovery"])
            early = data.get("early_termination")
            fields.update(
                task=Task(data["task"]),
                search_space=tuple({name: _saved_value(value) for name, value in space.items()}
                                   for space in data["search_space"]),
                limits=Limits(**data.get("limits", {})),
                compute=Compute(**compute),
                early_termination=None if early is None else EarlyTermination(**early),
                sampling_options=SamplingOptions(**data.get("sampling_options", {})),
                warm_start=tuple(data.get("warm_start", ())), notices=tuple(data.get("notices", ())))
            return cls(**fields)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise JobSpecError(source, [Problem(source, "", f"not a saved job spec of version {SCHEMA_VERSION}: "
                                                            f"{type(exc).__name__}: {exc}")]) from None


def _saved_value(value: Any) -> Value:
    """A search-space value as `to_json` wrote it: a distribution's text parsed back. A constant
    is never such a text: the job file's parser would have read it as a distribution."""
    return (distributions.parse(value) or value) if isinstance(value, str) else value


# ------------------------------------------------------------------------------------------------
# YAML with line numbers


# Limits on what a job file may make the loader do, checked before any Python object is built, so
# that any file costs bounded time and memory (a 1 KB file of nested aliases would otherwise expand
# to gigabytes). A real job file holds hundreds of values, a few levels deep, with small numbers.
MAX_FILE_BYTES = 1 << 20  # 1 MiB
MAX_VALUES = 10_000  # values the document expands to, every use of an alias or merge counted
MAX_DEPTH = 32  # nesting of mappings and lists, aliases followed
MAX_NUMBER = 1e15  # magnitude of any number: larger ones are mistakes that only cost memory or time
_MAX_NUMBER_CHARS = 32  # a longer number is refused before it is converted (a 5,000-digit int)
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class _NoDuplicatesSafeLoader(yaml.SafeLoader):
    """SafeLoader: builds plain data only; tags that would build Python objects are errors.
    Nesting deeper than MAX_DEPTH stops the composer (which recurses) before Python's own limit,
    and more than MAX_VALUES values stop it before it reads the rest."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.path: list[Any] = []  # of the node being composed, for the message
        self.composed = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        # `index` is the key node of a mapping's value, the position of a list's item
        part = index.value if isinstance(index, yaml.ScalarNode) else index
        path = self.path + [part] if parent is not None and part is not None else self.path
        if len(path) > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise _LimitError(f"nested more than {MAX_DEPTH} levels deep (the limit)", mark.line + 1,
                              tuple(path[:1]))
        if not self.check_event(yaml.AliasEvent):
            # counted as composed, so that a large file stops here instead of being read to its end
            self.composed += 1
            if self.composed > MAX_VALUES:
                raise _LimitError(f"holds more than {MAX_VALUES} values (the limit)",
                                  self.peek_event().start_mark.line + 1, tuple(path[:1]))
        outer, self.path = self.path, path
        try:
            return super().compose_node(parent, index)
        finally:
            self.path = outer


class _LimitError(Exception):
    def __init__(self, message: str, line: int | None, path: tuple = ()):
        super().__init__(message)
        self.line = line
        self.path = path


def _load_yaml(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    loader = _NoDuplicatesSafeLoader(text)
    try:
        node = loader.get_single_node()
        _check_expansion(node)
        lines: dict[tuple, int] = {}
        duplicates: list[Problem] = []
        _index_lines(node, (), lines, duplicates, source)  # before construction, which flattens merges in place
        data = loader.construct_document(node) if node is not None else None
    except _LimitError as exc:
        raise JobSpecError(source, [Problem(source, _render_path(exc.path), str(exc), exc.line)]) from None
    except yaml.constructor.ConstructorError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        tag = getattr(exc, "problem", "") or ""
        raise JobSpecError(source, [Problem(source, "", f"YAML tag not allowed ({tag.strip()}): a job file is plain "
                                            "data, tags that build Python objects are refused", line)]) from None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise JobSpecError(source, [Problem(source, "", f"YAML syntax error: {exc.problem or exc}", line)]) from None
    except yaml.YAMLError as exc:
        raise JobSpecError(source, [Problem(source, "", f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()
    if duplicates:
        raise JobSpecError(source, duplicates)
    numbers = _number_problems(data, (), lines, source)
    if numbers:
        raise JobSpecError(source, numbers)
    return data, lines


def _children(node: Any) -> list[tuple[Any, Any]]:
    """(path part, child node) of a mapping or list node; a mapping's key nodes count as values."""
    if isinstance(node, yaml.MappingNode):
        return [pair for key, value in node.value for pair in ((key.value, key), (key.value, value))]
    if isinstance(node, yaml.SequenceNode):
        return list(enumerate(node.value))
    return []


def _check_expansion(root: Any) -> None:
    """Raise _LimitError when the composed node graph, with every alias expanded, would hold more
    than MAX_VALUES values or nest deeper than MAX_DEPTH, or holds an over-long number. Aliases
    share nodes, so each node is measured once (iteratively: the graph may be deep or cyclic)."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) once expanded
    open_nodes: set[int] = set()  # nodes whose children are being measured: seeing one again is a cycle
    stack: list[tuple[Any, tuple, bool]] = [(root, (), False)] if root is not None else []
    while stack:
        node, path, children_done = stack.pop()
        line = node.start_mark.line + 1
        if children_done:
            sizes = [measured[id(child)] for _, child in _children(node)]
            values, depth = 1 + sum(s[0] for s in sizes), 1 + max((s[1] for s in sizes), default=0)
            open_nodes.discard(id(node))
            measured[id(node)] = (values, depth)
            if values > MAX_VALUES:
                raise _LimitError(f"expands to more than {MAX_VALUES} values, each use of a YAML alias or "
                                  "merge counted (the limit)", line, path[:1])
            if depth > MAX_DEPTH:
                raise _LimitError(f"nested more than {MAX_DEPTH} levels deep through YAML aliases (the limit)",
                                  line, path[:1])
            continue
        if id(node) in measured:
            continue
        if id(node) in open_nodes:
            raise _LimitError("a YAML alias refers to a value that holds it: it would expand for ever", line, path)
        if isinstance(node, yaml.ScalarNode) and node.tag in _NUMBER_TAGS and len(node.value) > _MAX_NUMBER_CHARS:
            raise _LimitError(f"a number of {len(node.value)} characters; numbers may be at most {MAX_NUMBER:g} "
                              f"in size (the limit)", line, path)
        open_nodes.add(id(node))
        stack.append((node, path, True))
        # reversed: popped in document order, so a value is named by where it first appears
        stack.extend(reversed([(child, path + (part,), False) for part, child in _children(node)]))


def _number_problems(value: Any, path: tuple, lines: dict[tuple, int], source: str) -> list[Problem]:
    """Every number of the loaded document that is not finite or beyond MAX_NUMBER."""
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _number_problems(item, path + (key,), lines, source)]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _number_problems(item, path + (i,), lines, source)]
    problem = _number_problem(value)
    return [Problem(source, _render_path(path), problem, _line(lines, path))] if problem else []


def _number_problem(value: Any) -> str | None:
    """Why `value` is not a number a job file may hold (NaN, infinite, or beyond MAX_NUMBER);
    None for any other value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if abs(value) > MAX_NUMBER:
        return f"numbers may be at most {MAX_NUMBER:g} in size (the limit), got {value:.6g}"
    return None


def _line(lines: dict[tuple, int], path: tuple) -> int | None:
    """The line of `path`, or of the nearest enclosing setting that has one."""
    for cut in range(len(path), -1, -1):
        if lines.get(path[:cut]):
            return lines[path[:cut]]
    return None


def _index_lines(node: Any, path: tuple, lines: dict[tuple, int], duplicates: list[Problem], source: str) -> None:
    if node is None:
        return
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                duplicates.append(Problem(source, _render_path(path + (key,)), "key appears twice",
                                          key_node.start_mark.line + 1))
            seen.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _index_lines(value_node, path + (key,), lines, duplicates, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, path + (i,), lines, duplicates, source)


def _render_path(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# ------------------------------------------------------------------------------------------------
# Validation


class _Checker:
    def __init__(self, source: str, lines: dict[tuple, int], origin=lambda path: path):
        self.source = source
        self.lines = lines
        self.origin = origin  # a setting's path in the native mapping → where the file wrote it
        self.problems: list[Problem] = []

    def add(self, path: tuple, message: str) -> None:
        self.add_written(self.origin(path), message)

    def add_written(self, path: tuple, message: str) -> None:
        """A problem of the setting at `path` as the file wrote it."""
        self.problems.append(self.problem(path, message))

    def problem(self, path: tuple, message: str) -> Problem:
        return Problem(self.source, _render_path(path), message, _line(self.lines, path))

    def mapping(self, value: Any, path: tuple, allowed: dict[str, str], aliases: dict[str, str] | None = None
                ) -> dict[str, Any]:
        """Check `value` is a mapping whose keys are in `allowed` (key → description); returns it
        with aliases renamed."""
        if not isinstance(value, dict):
            self.add(path, f"must be a mapping, got {_type(value)}")
            return {}
        aliases = aliases or {}
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.add(path, f"keys must be text, got {key!r}")
                continue
            name = aliases.get(key, key)
            if name not in allowed:
                self.add(path + (key,), _unknown(key, list(allowed) + list(aliases), "key"))
                continue
            if name in out:
                self.add(path + (key,), f"given twice (as {name!r} and its alias)")
            out[name] = item
        return out

    def integer(self, value: Any, path: tuple, low: int | None = None, high: int | None = None) -> int | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (isinstance(value, float) and not value.is_integer()):
            self.add(path, f"must be an integer, got {value!r}")
            return None
        value = int(value)
        if (low is not None and value < low) or (high is not None and value > high):
            self.add(path, f"must be between {low} and {high}, got {value}" if high is not None
                     else f"must be at least {low}, got {value}")
            return None
        return value

    def number(self, value: Any, path: tuple, low: float | None = None, high: float | None = None,
               low_exclusive: bool = False) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.add(path, f"must be a number, got {value!r}")
            return None
        if (low is not None and (value < low or (low_exclusive and value == low))) or \
                (high is not None and value > high):
            bound = f"{'(' if low_exclusive else '['}{low}, {'∞' if high is None else high}{')' if high is None else ']'}"
            self.add(path, f"must be in {bound}, got {value}")
            return None
        return float(value)

    def text(self, value: Any, path: tuple) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.add(path, f"must be non-empty text, got {value!r}")
            return None
        return value.strip()

    def texts(self, value: Any, path: tuple) -> list[str]:
        """A list of non-empty texts (one text is taken as a list of one)."""
        if value is None:
            return []
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            self.add(path, f"must be a list of texts, got {_type(value)}")
            return []
        return [t for i, item in enumerate(items) if (t := self.text(item, path + (i,))) is not None]

    def one_of(self, value: Any, path: tuple, allowed: tuple[str, ...], what: str) -> str | None:
        if value not in allowed:
            self.add(path, _unknown(str(value), allowed, what))
            return None
        return value


def _type(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false", int: "an integer",
            float: "a number", type(None): "nothing"}.get(type(value), type(value).__name__)


def _unknown(word: str, allowed, what: str) -> str:
    close = difflib.get_close_matches(word, list(allowed), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {word!r}{hint}; allowed: {', '.join(allowed)}"


_TOP = {
    "name": "display name of the job",
    "task": "image-classification | image-multi-labeling | image-object-detection | image-instance-segmentation",
    "training_data": "JSONL, relative to the job file or any fsspec URL",
    "validation_data": "JSONL (optional)",
    "primary_metric": "metric to optimise",
    "sampling": "random | grid | bayesian",
    "early_termination": "early termination policy",
    "limits": "max_trials, max_concurrent_trials, timeout_hours, max_cost_usd",
    "search_space": "list of subspaces",
    "arguments": "fixed hyperparameters",
    "compute": "where trials run",
    "seed": "seed of the sampler and the trials",
    "weights_cache": "folder or bucket prefix with pretrained weight files",
    "datastores": "Azure datastore names mapped to root URLs, for image_url AmlDatastore://<name>/<path>",
    "compile": "true: torch.compile the model in every trial",
    "lenient_labels": "detection and segmentation: clip boxes and polygons slightly out of [0, 1] and report them",
    "allow_private_image_urls": "true: image URLs may point to loopback, private and link-local addresses",
    "keep_checkpoints": "true: finished trials keep checkpoints/last.pt (by default only the model and metrics stay)",
    "prepared_images": "local | bucket | off: each image decoded once per machine, also copied to the bucket, or "
                       "decoded every epoch",
    "mlflow_tracking_uri": "MLflow tracking URI the controller logs the job, its trials and best model to",
    "sampling_options": "bayesian: estimator (gp | rf | et), n_initial_points",
    "warm_start": "earlier job ids whose finished trials seed bayesian sampling",
}
_TOP_ALIASES = {"sampling_algorithm": "sampling", "hyperparameter_sampling": "sampling", "resume_from": "warm_start",
                "early_termination_policy": "early_termination"}
_LIMITS = {"max_trials": "", "max_concurrent_trials": "", "timeout_hours": "", "max_cost_usd": ""}
_LIMIT_ALIASES = {"iterations": "max_trials", "max_concurrent_iterations": "max_concurrent_trials",
                  "experiment_timeout_hours": "timeout_hours", "trial_count": "max_trials"}
_POLICY_KEYS = {
    "bandit": ("slack_factor", "slack_amount", "evaluation_interval", "delay_evaluation"),
    "median_stopping": ("evaluation_interval", "delay_evaluation"),
    "truncation_selection": ("truncation_percentage", "evaluation_interval", "delay_evaluation"),
    "asha": ("min_resource", "reduction_factor", "max_resource"),
}
_POLICY_ALIASES = {"type": "policy", "grace_period": "min_resource", "max_t": "max_resource"}
_SAMPLING_OPTIONS = {"estimator": " | ".join(ESTIMATORS), "n_initial_points": "1 or more"}
_COMPUTE = {"launcher": "local | skypilot", "accelerators": "list of NAME:COUNT, in order of preference",
            "fallback": "ordered | any_of", "use_spot": "true | false", "clouds": "list of clouds",
            "regions": "list of cloud/region", "disk_size": "GB", "image": "the trainer's docker image",
            "job_recovery": "strategy, max_restarts_on_errors", "secrets": "names of environment variables"}
_JOB_RECOVERY = {"strategy": " | ".join(SKY_RECOVERY_STRATEGIES), "max_restarts_on_errors": "0 or more"}


def parse_job(text: str, source: str = "job.yaml") -> JobSpec:
    """Validate a job file's text. Raises JobSpecError listing every problem."""
    check_file_size(len(text.encode("utf-8")), source)
    data, lines = _load_yaml(text, source)
    translation = azure_job.translate(data)  # Azure ML's own job files; a native one unchanged
    data = translation.data
    check = _Checker(source, lines, translation.origin)
    for path, message in translation.problems:
        check.add_written(path, message)
    if data is None:
        raise JobSpecError(source, [Problem(source, "", "the job file is empty")])
    top = check.mapping(data, (), _TOP, _TOP_ALIASES)
    if check.problems and not top:
        raise JobSpecError(source, check.problems)

    task = None
    if "task" not in top:
        check.add(("task",), f"is required; one of {', '.join(t.value for t in Task)}")
    else:
        try:
            task = Task(top["task"])
        except ValueError:
            check.add(("task",), _unknown(str(top["task"]), [t.value for t in Task], "task"))

    training_data = _data(check, top["training_data"], "training_data") if "training_data" in top else \
        check.add(("training_data",), "is required: the training JSONL")
    validation_data = _data(check, top["validation_data"], "validation_data") \
        if top.get("validation_data") is not None else None

    primary_metric = None
    if task is not None:
        allowed = hps.PRIMARY_METRICS[task]
        primary_metric = top.get("primary_metric", allowed[0])
        if primary_metric not in allowed:
            owners = [t.value for t, ms in hps.PRIMARY_METRICS.items() if primary_metric in ms]
            belongs = f"; {primary_metric!r} is a metric of {', '.join(owners)}" if owners else ""
            check.add(("primary_metric",), f"{primary_metric!r} is not a metric of {task.value}{belongs}; "
                                           f"allowed: {', '.join(allowed)}")

    sampling = check.one_of(top.get("sampling", "random"), ("sampling",), SAMPLERS, "sampling")
    limits = _limits(check, top.get("limits", {}))
    compute = _compute(check, top.get("compute", {}))
    early = _early_termination(check, top["early_termination"]) if top.get("early_termination") is not None else None
    seed = check.integer(top.get("seed", 0), ("seed",), low=0) or 0
    weights_cache = check.text(top["weights_cache"], ("weights_cache",)) if top.get("weights_cache") else None
    datastores = _datastores(check, top["datastores"]) if top.get("datastores") is not None else {}
    compile_model = top.get("compile", False)
    if not isinstance(compile_model, bool):
        check.add(("compile",), f"must be true or false, got {compile_model!r}")
    keep_checkpoints = top.get("keep_checkpoints", False)
    if not isinstance(keep_checkpoints, bool):
        check.add(("keep_checkpoints",), f"must be true or false, got {keep_checkpoints!r}")
    prepared = top.get("prepared_images", "local")
    # YAML 1.1 reads an unquoted `off` as false
    prepared_images = check.one_of("off" if prepared is False else prepared, ("prepared_images",), PREPARED_IMAGES,
                                   "prepared_images")
    lenient_labels = top.get("lenient_labels", False)
    if not isinstance(lenient_labels, bool):
        check.add(("lenient_labels",), f"must be true or false, got {lenient_labels!r}")
    elif lenient_labels and task is not None and task.is_classification:
        check.add(("lenient_labels",), f"applies to object detection and instance segmentation, not to {task.value}")
    allow_private = top.get("allow_private_image_urls", False)
    if not isinstance(allow_private, bool):
        check.add(("allow_private_image_urls",), f"must be true or false, got {allow_private!r}")
    if training_data and validation_data and same_file(resolve(training_data, source),
                                                       resolve(validation_data, source)):
        check.add(("validation_data",), "is the training data: validation scores on it measure memory, not "
                                        "learning; leave validation_data out to split off split_ratio of the "
                                        "training data")
    sampling_options = _sampling_options(check, sampling, top.get("sampling_options"))
    warm_start = _warm_start(check, sampling, top.get("warm_start"),
                             ("resume_from",) if "resume_from" in data else ("warm_start",))
    name = check.text(top["name"], ("name",)) if top.get("name") is not None else None
    mlflow_tracking_uri = check.text(top["mlflow_tracking_uri"], ("mlflow_tracking_uri",)) \
        if top.get("mlflow_tracking_uri") is not None else None

    search_space: list[dict[str, Value]] = []
    arguments: dict[str, Any] = {}
    if task is not None:
        use_automode = automode.applies(top.get("search_space"), limits.max_trials, sampling)
        search_space = _search_space(check, task, automode.space(task, _argument_values(top.get("arguments")))
                                     if use_automode else top.get("search_space"))
        arguments = _arguments(check, task, top.get("arguments"), search_space)
        for i, space in enumerate(search_space):
            if isinstance(space.get("split_ratio"), Distribution):
                check.add(("search_space", i, "split_ratio"), "cannot be sampled: every trial of a job is scored "
                                                              "on one validation split; give one value")
        if sampling == "grid":
            for i, space in enumerate(search_space):
                for hp_name, value in space.items():
                    if isinstance(value, Distribution) and not value.is_discrete:
                        check.add(("search_space", i, hp_name),
                                  f"grid sampling needs discrete values (choice or randint), got {value}; "
                                  "use random or bayesian sampling, or list the values with choice(...)")
    if check.problems:
        raise JobSpecError(source, check.problems)
    assert task is not None and training_data is not None and primary_metric and sampling
    return JobSpec(task=task, training_data=training_data, validation_data=validation_data,
                   primary_metric=primary_metric, sampling=sampling, search_space=tuple(search_space),
                   arguments=arguments, limits=limits, compute=compute, early_termination=early, seed=seed,
                   weights_cache=weights_cache, name=name, datastores=datastores, compile=compile_model is True,
                   lenient_labels=lenient_labels is True, allow_private_image_urls=allow_private is True,
                   keep_checkpoints=keep_checkpoints is True,
                   prepared_images=prepared_images or "local", mlflow_tracking_uri=mlflow_tracking_uri,
                   sampling_options=sampling_options, warm_start=warm_start,
                   defaults=_registry_defaults(task, search_space), automode=use_automode,
                   notices=tuple(str(check.problem(path, message)) for path, message in translation.notices))


def native_job(text: str, source: str = "job.yaml") -> dict[str, Any]:
    """The native job a valid job file becomes (what `validate --explain` prints): an Azure job
    translated, distributions as text, AutoMode's space filled in. Raises JobSpecError as
    `parse_job` does."""
    spec = parse_job(text, source)
    data = azure_job.translate(_load_yaml(text, source)[0]).data
    if spec.automode:
        data["search_space"] = automode.space(spec.task, _argument_values(data.get("arguments")))
    spaces = data.get("search_space")
    for space in spaces if isinstance(spaces, list) else [spaces] if isinstance(spaces, dict) else []:
        for name, value in space.items():
            if isinstance(value, dict) and "distribution" in value:
                space[name] = str(distributions.make(value["distribution"], tuple(value.get("args", ()))))
    return data


def parse_job_bytes(data: bytes, source: str = "job.yaml") -> JobSpec:
    """`parse_job` of a job file as stored: UTF-8 text."""
    check_file_size(len(data), source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobSpecError(source, [Problem(source, "", f"not UTF-8 text (byte {exc.start})")]) from None
    return parse_job(text, source)


def check_file_size(size: int, source: str) -> None:
    """Refuse a job file of more than MAX_FILE_BYTES (callers that can see the size check it before reading)."""
    if size > MAX_FILE_BYTES:
        raise JobSpecError(source, [Problem(source, "", f"the job file has {size} bytes; a job file may have at most "
                                                        f"{MAX_FILE_BYTES} (1 MiB, the limit)")])


def _data(check: _Checker, raw: Any, key: str) -> str | None:
    """A data field's path: a JSONL file's, or `{path, type: mltable}` (an MLTable folder, as Azure
    writes it)."""
    if not isinstance(raw, dict):
        return check.text(raw, (key,))
    values = check.mapping(raw, (key,), {"path": "the MLTable folder", "type": "mltable"})
    if values.get("type") != "mltable":
        check.add((key, "type"), f"a data mapping is an MLTable folder (type: mltable), got {values.get('type')!r}; "
                                 "give a JSONL file as text")
    return check.text(values.get("path"), (key, "path"))


def _datastores(check: _Checker, raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        check.add(("datastores",), f"must be a mapping of datastore names to root URLs, got {_type(raw)}")
        return {}
    out = {}
    for name, root in raw.items():
        if not isinstance(name, str) or not name.strip() or "/" in name:
            check.add(("datastores",), f"datastore names must be text without '/', got {name!r}")
            continue
        url = check.text(root, ("datastores", name))
        if url:
            out[name.strip()] = url
    return out


def _limits(check: _Checker, raw: Any) -> Limits:
    values = check.mapping(raw, ("limits",), _LIMITS, _LIMIT_ALIASES)
    given = raw if isinstance(raw, dict) else {}
    path = lambda key: ("limits", next((a for a, k in _LIMIT_ALIASES.items() if k == key and a in given), key))
    max_trials = check.integer(values.get("max_trials", 1), path("max_trials"), 1, 1000) or 1
    concurrent = check.integer(values.get("max_concurrent_trials", 1), path("max_concurrent_trials"), 1, 100) or 1
    timeout = check.number(values.get("timeout_hours", 144), path("timeout_hours"), 0, None, low_exclusive=True)
    cost = check.number(values["max_cost_usd"], path("max_cost_usd"), 0, None, low_exclusive=True) \
        if values.get("max_cost_usd") is not None else None
    return Limits(max_trials, concurrent, timeout or 144.0, cost)


def _compute(check: _Checker, raw: Any) -> Compute:
    values = check.mapping(raw, ("compute",), _COMPUTE)
    launcher = check.one_of(values.get("launcher", "local"), ("compute", "launcher"), LAUNCHERS, "launcher")
    if launcher != "skypilot":
        for key in values:
            if key != "launcher" and launcher is not None:
                check.add(("compute", key), f"applies only to launcher: skypilot (this job runs on {launcher})")
        return Compute(launcher or "local")
    if not skypilot_installed():
        check.add(("compute", "launcher"),
                  f"the skypilot launcher needs SkyPilot, which is not installed: {SKYPILOT_INSTALL}")
    path = lambda *keys: ("compute",) + keys
    fields: dict[str, Any] = {"launcher": "skypilot"}
    accelerators = check.texts(values.get("accelerators", []), path("accelerators"))
    fields["accelerators"] = tuple(a for i, item in enumerate(accelerators)
                                   if (a := _accelerator(check, path("accelerators", i), item)))
    fields["fallback"] = check.one_of(values.get("fallback", "ordered"), path("fallback"), SKY_FALLBACKS,
                                      "fallback") or "ordered"
    if not isinstance(values.get("use_spot", True), bool):
        check.add(path("use_spot"), f"must be true or false, got {values['use_spot']!r}")
    fields["use_spot"] = values.get("use_spot", True) is not False
    clouds = [c.lower() for c in check.texts(values.get("clouds"), path("clouds"))]
    if "clouds" not in values:
        check.add(path("clouds"), f"is required for skypilot: the clouds trials may run on, set up with "
                                  f"`sky check` (any of {', '.join(SKY_CLOUDS)})")
    for i, cloud in enumerate(clouds):
        if cloud not in SKY_CLOUDS:
            check.add(path("clouds", i), _unknown(cloud, SKY_CLOUDS, "cloud"))
    fields["clouds"] = tuple(dict.fromkeys(c for c in clouds if c in SKY_CLOUDS))
    fields["regions"] = tuple(r for i, item in enumerate(check.texts(values.get("regions", []), path("regions")))
                              if (r := _region(check, path("regions", i), item, fields["clouds"])))
    fields["disk_size"] = check.integer(values.get("disk_size", 100), path("disk_size"), 20, 65536) or 100
    image = values.get("image")
    if image is None:
        check.add(path("image"), "is required for skypilot: the trainer image built from infra/Dockerfile and "
                                 "pushed to a registry the clouds can pull from, e.g. ghcr.io/you/automl-images-trainer:0.1.0")
    elif (text := check.text(image, path("image"))) is not None:
        reference = text[len("docker:"):] if text.startswith("docker:") else text
        if not DOCKER_REFERENCE.fullmatch(reference):
            check.add(path("image"), f"{text!r} is not a docker image reference such as "
                                     "ghcr.io/you/automl-images-trainer:0.1.0 (lower-case repository, optional tag)")
        else:
            fields["image"] = reference
    fields["job_recovery"] = _job_recovery(check, values.get("job_recovery", {}))
    secrets = check.texts(values.get("secrets", []), path("secrets"))
    for i, name in enumerate(secrets):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            check.add(path("secrets", i), f"{name!r} is not an environment variable name")
    fields["secrets"] = tuple(secrets)
    return Compute(**fields)


# docker/distribution's reference grammar: [domain[:port]/]path[:tag][@digest]
_DOCKER_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
# A first part is a registry only with a dot or a port, or when it is localhost (docker's rule).
_DOCKER_DOMAIN = r"(?:(?:localhost|[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)+)(?::[0-9]+)?/|[a-zA-Z0-9-]+:[0-9]+/)"
DOCKER_REFERENCE = re.compile(rf"{_DOCKER_DOMAIN}?{_DOCKER_COMPONENT}(?:/{_DOCKER_COMPONENT})*"
                              r"(?::[\w][\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?")


def _accelerator(check: _Checker, path: tuple, text: str) -> str | None:
    """`NAME:COUNT` (count 1 when left out), the name as SkyPilot spells it."""
    name, _, count = text.partition(":")
    canonical = {a.lower(): a for a in SKY_ACCELERATORS}.get(name.strip().lower())
    if canonical is None:
        check.add(path, _unknown(name.strip(), SKY_ACCELERATORS, "accelerator") + " (NVIDIA GPUs the trainer image can use)")
        return None
    count = count.strip() or "1"
    if not count.isdigit() or not 1 <= int(count) <= 16:
        check.add(path, f"the count of {canonical} must be a whole number from 1 to 16, got {count!r}")
        return None
    return f"{canonical}:{int(count)}"


def _region(check: _Checker, path: tuple, text: str, clouds: tuple[str, ...]) -> str | None:
    """`cloud/region`; a bare region when the job names exactly one cloud."""
    cloud, _, region = text.rpartition("/")
    cloud = cloud.lower()
    if not cloud:
        if len(clouds) != 1:
            check.add(path, f"write the region as cloud/region (e.g. aws/{region}) when the job names "
                            f"{'several clouds' if clouds else 'no cloud'}")
            return None
        cloud = clouds[0]
    elif cloud not in clouds:
        check.add(path, f"{cloud!r} is not among compute.clouds ({', '.join(clouds) or 'none'})")
        return None
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*[a-z0-9]", region):
        check.add(path, f"{region!r} is not a region name such as us-east-1 or us-central1")
        return None
    return f"{cloud}/{region}"


def _job_recovery(check: _Checker, raw: Any) -> JobRecovery:
    path = ("compute", "job_recovery")
    values = check.mapping(raw, path, _JOB_RECOVERY)
    strategy = values.get("strategy", JobRecovery.strategy)
    if isinstance(strategy, str) and strategy.upper() in SKY_RECOVERY_STRATEGIES:
        strategy = strategy.upper()
    else:
        check.add(path + ("strategy",), _unknown(str(strategy), SKY_RECOVERY_STRATEGIES, "recovery strategy"))
        strategy = JobRecovery.strategy
    restarts = check.integer(values.get("max_restarts_on_errors", JobRecovery.max_restarts_on_errors),
                             path + ("max_restarts_on_errors",), 0, 100)
    return JobRecovery(strategy, JobRecovery.max_restarts_on_errors if restarts is None else restarts)


def _early_termination(check: _Checker, raw: Any) -> EarlyTermination | None:
    if not isinstance(raw, dict):
        check.add(("early_termination",), f"must be a mapping with a policy, got {_type(raw)}")
        return None
    if raw.get("policy", raw.get("type")) is None:
        check.add(("early_termination",), f"needs a policy: one of {', '.join(POLICIES)}")
        return None
    key = "policy" if "policy" in raw else "type"  # Azure writes type
    policy = check.one_of(raw[key], ("early_termination", key), POLICIES, "policy")
    if policy is None:
        return None
    allowed = {"policy": "", **{k: "" for k in _POLICY_KEYS[policy]}}
    values = check.mapping(raw, ("early_termination",), allowed,
                           {a: k for a, k in _POLICY_ALIASES.items() if k == "policy" or k in allowed})
    path = lambda key: ("early_termination", key)
    if policy == "asha":
        return _asha(check, values)
    fields: dict[str, Any] = {
        "evaluation_interval": check.integer(values.get("evaluation_interval", 1), path("evaluation_interval"), 1),
        "delay_evaluation": check.integer(values.get("delay_evaluation", 0), path("delay_evaluation"), 0),
    }
    if policy == "bandit":
        given = [k for k in ("slack_factor", "slack_amount") if values.get(k) is not None]
        if len(given) != 1:
            check.add(("early_termination",), "bandit needs exactly one of slack_factor or slack_amount"
                      + (", got both" if len(given) == 2 else ""))
        for key in given:
            fields[key] = check.number(values[key], path(key), 0, None, low_exclusive=True)
    if policy == "truncation_selection":
        if values.get("truncation_percentage") is None:
            check.add(("early_termination",), "truncation_selection needs truncation_percentage (1 to 99)")
        else:
            fields["truncation_percentage"] = check.integer(values["truncation_percentage"],
                                                            path("truncation_percentage"), 1, 99)
    if any(v is None for k, v in fields.items() if k in ("evaluation_interval", "delay_evaluation")):
        return None
    return EarlyTermination(policy=policy, **fields)


def _asha(check: _Checker, values: dict[str, Any]) -> EarlyTermination | None:
    """ASHA counts epochs; it has its own schedule (the rungs), so no evaluation_interval."""
    path = lambda key: ("early_termination", key)
    low = check.integer(values.get("min_resource", 1), path("min_resource"), 1)
    factor = check.integer(values.get("reduction_factor", 3), path("reduction_factor"), 2, 100)
    high = check.integer(values["max_resource"], path("max_resource"), 1) \
        if values.get("max_resource") is not None else None
    if low is None or factor is None or (values.get("max_resource") is not None and high is None):
        return None
    if high is not None and high <= low:
        check.add(path("max_resource"), f"must be above min_resource ({low}), got {high}: "
                                        "with no rung below it, asha would never stop a trial")
        return None
    return EarlyTermination("asha", min_resource=low, reduction_factor=factor, max_resource=high)


def _sampling_options(check: _Checker, sampling: str | None, raw: Any) -> SamplingOptions:
    if raw is None:
        return SamplingOptions()
    path = ("sampling_options",)
    values = check.mapping(raw, path, _SAMPLING_OPTIONS)
    if sampling not in ("bayesian", None):
        check.add(path, f"apply only to bayesian sampling; {sampling} sampling takes none")
        return SamplingOptions()
    estimator = values.get("estimator", SamplingOptions.estimator)
    if isinstance(estimator, str):
        estimator = estimator.lower()
    if estimator not in ESTIMATORS:
        check.add(path + ("estimator",), _unknown(str(estimator), ESTIMATORS, "estimator"))
        estimator = SamplingOptions.estimator
    initial = check.integer(values.get("n_initial_points", SamplingOptions.n_initial_points),
                            path + ("n_initial_points",), 1, 1000)
    return SamplingOptions(estimator, SamplingOptions.n_initial_points if initial is None else initial)


def _warm_start(check: _Checker, sampling: str | None, raw: Any, path: tuple) -> tuple[str, ...]:
    """Earlier job ids (checked against the root when the controller accepts the job); `path` is
    the key as written (Azure HyperDrive's `resume_from` is accepted)."""
    from automl_images.core.layout import JOB_ID

    jobs = check.texts(raw, path)
    for i, job in enumerate(jobs):
        if not JOB_ID.fullmatch(job):
            check.add(path + (i,), f"{job!r} is not a job id (lower-case letters, digits and dashes)")
    if jobs and sampling not in ("bayesian", None):
        check.add(path, f"seeds bayesian sampling only; {sampling} sampling would ignore it")
    return tuple(dict.fromkeys(jobs))


def _hyperparameter_problem(task: Task, name: str, model_names: list[str]) -> str | None:
    """Why `name` cannot be set for `task` and these models; None when it can."""
    definition = hps.HYPERPARAMETERS.get(name)
    if definition is None:
        return _unknown(name, [h.name for h in hps.for_task(task)], "hyperparameter")
    if task not in definition.tasks:
        return f"{name} does not apply to {task.value} (it is for {', '.join(t.value for t in definition.tasks)})"
    if definition.models:
        wrong = [m for m in model_names if m not in definition.models]
        if wrong:
            own = [m for m in definition.models if m in models.MODELS and task in models.MODELS[m].tasks]
            return f"{name} applies only to {', '.join(own)}, not to {', '.join(wrong)}"
    return None


def _search_space(check: _Checker, task: Task, raw: Any) -> list[dict[str, Value]]:
    if raw is None:
        raw = [{}]
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        check.add(("search_space",), f"must be a list of subspaces (mappings), got {_type(raw)}")
        return []
    if not raw:
        check.add(("search_space",), "must hold at least one subspace; leave it out to train the task's "
                                     "default model once")
        return []
    spaces = []
    for i, subspace in enumerate(raw):
        path = ("search_space", i)
        if not isinstance(subspace, dict):
            check.add(path, f"must be a mapping of hyperparameter: value or distribution, got {_type(subspace)}")
            continue
        space: dict[str, Value] = {}
        written: dict[str, Any] = {}  # each setting's key as the file wrote it (an alias, maybe)
        for key, value in subspace.items():
            name = hps.canonical_name(str(key))
            if name in written:
                check.add(path + (key,), f"sets {name} a second time (as {written[name]!r} too)")
                continue
            written[name] = key
            parsed = _value(check, path + (key,), value)
            if parsed is not _INVALID:
                space[name] = parsed
        model_value = space.get("model_name", hps.DEFAULT_MODELS[task])
        model_names = _model_names(check, task, path + ("model_name",), model_value)
        if model_names:
            if isinstance(model_value, Distribution):
                space["model_name"] = distributions.make("choice", tuple(model_names))
            else:
                space["model_name"] = model_names[0]
        # With an invalid model the spec is rejected anyway; the other fields are still checked
        # against the known models of the subspace, so that every problem is reported at once.
        for name, value in list(space.items()):
            if name == "model_name":
                continue
            here = path + (written[name],)
            problem = _hyperparameter_problem(task, name, model_names)
            if problem:
                check.add(here, problem)
                del space[name]
                continue
            _check_value(check, here, hps.HYPERPARAMETERS[name], value)
            problem = _input_size_problem(name, value, model_names)
            if problem:
                check.add(here, problem)
        spaces.append(space)
    return spaces


_INVALID = object()


def _value(check: _Checker, path: tuple, value: Any) -> Value:
    try:
        if isinstance(value, str):
            dist = distributions.parse(value)
        elif isinstance(value, dict) and "distribution" in value:  # {distribution: uniform, args: [...]}
            dist = distributions.make(value["distribution"], tuple(value.get("args", ())))
        elif isinstance(value, (dict, list)):
            check.add(path, f"must be a value or a distribution such as choice(...) or uniform(low, high), "
                            f"got {_type(value)}")
            return _INVALID
        else:
            return value
    except (DistributionError, KeyError) as exc:
        check.add(path, str(exc))
        return _INVALID
    if dist is None:
        return value
    problems = [problem for arg in dist.args if (problem := _number_problem(arg))]
    if dist.is_log and not problems:
        # exp() of the log-scale bound: beyond MAX_NUMBER it overflows when drawn (lognormal: ten
        # sigmas above mu, a draw that never happens, bounds it)
        uniform = dist.name.endswith("loguniform")
        top = dist.args[1] if uniform else dist.args[0] + 10 * dist.args[1]
        if top > math.log(MAX_NUMBER):
            bound = "the log-scale bound" if uniform else "the log-scale mu + 10 sigma"
            problems.append(f"draws up to exp({top:g}), but numbers may be at most {MAX_NUMBER:g} in size (the "
                            f"limit): keep {bound} below {math.log(MAX_NUMBER):.1f}")
    if problems:
        check.add(path, f"{dist}: {problems[0]}")
        return _INVALID
    return dist


def _model_names(check: _Checker, task: Task, path: tuple, value: Value) -> list[str]:
    """The subspace's known model names for this task (problems reported for the others)."""
    names = value.values if isinstance(value, Distribution) and value.name == "choice" else [value]
    if isinstance(value, Distribution) and value.name != "choice":
        check.add(path, f"model_name takes a name or choice(...), got {value}")
        return []
    out = []
    for raw_name in names:
        name = models.canonical_name(str(raw_name))
        task_models = [m.name for m in models.models_for(task)]
        if name not in models.MODELS:
            check.add(path, _unknown(name, task_models, f"model for {task.value}"))
        elif task not in models.MODELS[name].tasks:
            check.add(path, f"model {name!r} does not apply to {task.value}; models for it: {', '.join(task_models)}")
        else:
            out.append(name)
    return out


def _check_value(check: _Checker, path: tuple, definition: hps.Hyperparameter, value: Value) -> None:
    if not isinstance(value, Distribution):
        coerced, error = definition.check(value)
        error = error or _number_problem(coerced)  # text such as "nan" or "1e999" is read as a number
        if error:
            check.add(path, error)
        return
    if definition.kind in (Kind.CHOICE, Kind.TEXT, Kind.FLAG) and value.name not in ("choice", "randint"):
        check.add(path, f"{definition.name} takes choice(...) of {definition.range_text()}, got {value}")
        return
    # randint(n) is every integer below n: a numeric parameter checks its ends (below), instead of
    # enumerating what may be millions of values; the others are checked value by value.
    numeric_range = value.name == "randint" and definition.kind in (Kind.INT, Kind.FLOAT)
    if value.is_discrete and not numeric_range:
        for item in value.values:
            _, error = definition.check(item)
            if error:
                check.add(path, f"{value}: value {item!r} {error.split(', got')[0]}")
        return
    if definition.kind is Kind.INT and not value.produces_integers():
        check.add(path, f"{definition.name} is an integer: use randint, choice or a q-distribution with an "
                        f"integer q (e.g. quniform(low, high, 1)), got {value}")
        return
    support = value.support()
    if support is not None:
        for end in support:
            _, error = definition.check(end)
            if error:
                check.add(path, f"{value} can produce {end:g}, but {definition.name} {error.split(', got')[0]}")
                return
    else:
        # Unbounded: draws outside the parameter's range are drawn again (see search/), which only
        # works when enough of them fall inside.
        share = value.probability_within(definition.low, definition.high)
        if share < 0.01:
            check.add(path, f"only {share:.2%} of {value}'s draws fall in {definition.range_text()}, the range "
                            f"of {definition.name}; narrow it or move it inside")


def _arguments(check: _Checker, task: Task, raw: Any, spaces: list[dict[str, Value]]) -> dict[str, Any]:
    if raw is None:
        return {}
    path = ("arguments",)
    if isinstance(raw, list):  # Azure's ["--name", value, ...]
        if len(raw) % 2:
            check.add(path, "a list of arguments must alternate \"--name\" and value")
            return {}
        pairs = []
        for i in range(0, len(raw), 2):
            name = raw[i]
            if not isinstance(name, str) or not name.startswith("--"):
                check.add(path + (i,), f"expected a name starting with --, got {name!r}")
                continue
            pairs.append((name[2:], raw[i + 1], path + (i + 1,)))
    elif isinstance(raw, dict):
        pairs = [(str(k), v, path + (k,)) for k, v in raw.items()]
    else:
        check.add(path, f"must be a mapping or Azure's [\"--name\", value, ...] list, got {_type(raw)}")
        return {}
    all_models = sorted({m for s in spaces for m in _space_models(s)})
    out = {}
    for written, value, item_path in pairs:
        name = hps.canonical_name(written)
        if name in out:
            check.add(item_path, f"sets {name} a second time")
            continue
        definition = hps.HYPERPARAMETERS.get(name)
        applicable = [m for m in all_models if definition and definition.applies_to(task, m)]
        problem = _hyperparameter_problem(task, name, applicable or all_models)
        if problem:
            check.add(item_path, problem)
            continue
        if name == "model_name":
            check.add(item_path, "set model_name in search_space, not in arguments")
            continue
        for i, space in enumerate(spaces):
            if name in space:
                check.add(item_path, f"{name} is set both in arguments and in search_space[{i}]")
        coerced, error = definition.check(value)
        error = error or _number_problem(coerced)
        if error:
            check.add(item_path, error)
            continue
        problem = _input_size_problem(name, coerced, all_models, in_arguments=True)
        if problem:
            check.add(item_path, problem)
            continue
        out[name] = coerced
    return out


def _argument_values(raw: Any) -> dict[str, Any]:
    """The settings `arguments` fixes (a mapping, or Azure's list form), by their registry names, as
    written (they are checked by `_arguments`)."""
    pairs = raw.items() if isinstance(raw, dict) else zip(raw[0::2], raw[1::2]) if isinstance(raw, list) else ()
    return {hps.canonical_name(str(name).removeprefix("--")): value for name, value in pairs}


def _input_size_problem(name: str, value: Value, model_names: list[str], in_arguments: bool = False) -> str | None:
    """Why `crop_size` cannot take `value` with these models (the ViTs and seresnext take one input
    size only); None when it can. Values that are invalid anyway are left to their own check."""
    if name != "crop_size":
        return None
    fixed = {m: models.MODELS[m].fixed_input_size for m in model_names
             if m in models.MODELS and models.MODELS[m].fixed_input_size is not None}
    if not fixed:
        return None
    others = [m for m in model_names if m not in fixed]
    if in_arguments and others:
        hint = f"; set crop_size in the subspaces of {', '.join(others)} instead of in arguments"
    elif others:
        hint = f"; give {', '.join(fixed)} a subspace of its own"
    else:
        hint = ""
    model_name, size = next(iter(fixed.items()))
    if isinstance(value, Distribution) and value.name != "choice":
        return f"{model_name} takes only {size}x{size} inputs (crop_size {size}), but {value} draws other sizes{hint}"
    values = value.values if isinstance(value, Distribution) else [value]
    for model_name, size in fixed.items():
        coerced = [hps.HYPERPARAMETERS[name].check(v) for v in values]
        wrong = [v for v, error in coerced if error is None and v != size]
        if wrong:
            return (f"{model_name} takes only {size}x{size} inputs: crop_size must be {size}, got "
                    f"{', '.join(map(str, wrong))}{hint}")
    return None


def _registry_defaults(task: Task, spaces: list[dict[str, Value]]) -> dict[str, dict[str, Any]]:
    """Every hyperparameter of the task with its registry default, for each model of the space."""
    return {model: hps.resolve(task, {"model_name": model})
            for model in sorted({m for space in spaces for m in _space_models(space)})}


def _space_models(space: dict[str, Value]) -> list[str]:
    value = space.get("model_name")
    return list(value.values) if isinstance(value, Distribution) else [value] if value else []


