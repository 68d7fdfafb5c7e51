"""Every hyperparameter of Azure ML AutoML for Images, with its type, range and per-task default.

One registry, in the torch-free core: the controller validates job files against it and resolves
each job's defaults from it when it accepts the job, the trainer builds what the settings name,
and the table in docs/hyperparameters.md is generated from the same data.
A setting the trainer does not act on is not in the registry: a job that sets it is refused,
never silently ignored. Azure GA's names are aliases of the preview's (`Hyperparameter.aliases`).
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping


class Task(str, enum.Enum):
    CLASSIFICATION = "image-classification"
    MULTI_LABEL = "image-multi-labeling"
    OBJECT_DETECTION = "image-object-detection"
    INSTANCE_SEGMENTATION = "image-instance-segmentation"

    @property
    def is_classification(self) -> bool:
        return self in (Task.CLASSIFICATION, Task.MULTI_LABEL)


CLASSIFICATION_TASKS = (Task.CLASSIFICATION, Task.MULTI_LABEL)
DETECTION_TASKS = (Task.OBJECT_DETECTION, Task.INSTANCE_SEGMENTATION)
ALL_TASKS = tuple(Task)

# The default primary metric per task, and the metrics each task can optimise.
PRIMARY_METRICS: dict[Task, tuple[str, ...]] = {
    Task.CLASSIFICATION: ("accuracy", "precision_score_weighted", "recall_score_weighted",
                          "f1_score_weighted", "log_loss"),
    Task.MULTI_LABEL: ("iou",),
    Task.OBJECT_DETECTION: ("mean_average_precision",),
    Task.INSTANCE_SEGMENTATION: ("mean_average_precision",),
}
MINIMIZED_METRICS = frozenset({"log_loss", "loss"})


def metric_direction(metric: str) -> str:
    return "minimize" if metric in MINIMIZED_METRICS else "maximize"


def oriented(metric: str, value: float) -> float:
    """`value` of `metric` as a score where higher is better: the one place where minimised
    metrics are negated (samplers, stopping policies, the leaderboard and early stopping all rank
    by it)."""
    return -value if metric in MINIMIZED_METRICS else value


class Kind(str, enum.Enum):
    INT = "int"
    FLOAT = "float"
    FLAG = "flag"      # 0 or 1 (Azure writes booleans this way); true/false accepted
    CHOICE = "choice"  # one of `choices`
    TEXT = "text"      # free text (a model name is checked against the model registry)
    GRID = "grid"      # "COLUMNSxROWS", e.g. "3x2"


Default = Any | Callable[[Task, str], Any]  # a value, or a function of (task, model_name)


@dataclass(frozen=True)
class Hyperparameter:
    name: str
    kind: Kind
    description: str
    default: Default = None
    low: float | None = None          # inclusive bounds for INT and FLOAT
    high: float | None = None
    low_exclusive: bool = False       # "positive integer" and (0, 1] style bounds
    high_exclusive: bool = False      # [0, 1) style bounds
    choices: tuple[str, ...] = ()
    tasks: tuple[Task, ...] = ALL_TASKS
    models: tuple[str, ...] = ()      # empty: every model of the task
    aliases: tuple[str, ...] = ()     # other names of the setting (Azure GA's beside the preview's)
    choice_aliases: tuple[tuple[str, str], ...] = ()  # (other spelling, choice) of a CHOICE's values

    def default_for(self, task: Task, model_name: str) -> Any:
        return self.default(task, model_name) if callable(self.default) else self.default

    def applies_to(self, task: Task, model_name: str | None) -> bool:
        if task not in self.tasks:
            return False
        return not self.models or model_name is None or model_name in self.models

    def range_text(self) -> str:
        if self.kind is Kind.FLAG:
            return "0 or 1"
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is Kind.GRID:
            return "COLUMNSxROWS, e.g. 3x2, or (3, 2)"
        if self.low is None and self.high is None:
            return "any"
        left = "(" if self.low_exclusive else "["
        high = "∞" if self.high is None else _fmt(self.high)
        right = ")" if self.high is None or self.high_exclusive else "]"
        return f"{'integer ' if self.kind is Kind.INT else ''}{left}{_fmt(self.low)}, {high}{right}"

    def check(self, value: Any) -> tuple[Any, str | None]:
        """Coerce `value` to this parameter's type. Returns (value, error message or None)."""
        if self.kind is Kind.FLAG:
            if isinstance(value, bool):
                return int(value), None
            if isinstance(value, (int, float)) and value in (0, 1):
                return int(value), None
            if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false"):
                return int(value.strip().lower() in ("1", "true")), None
            return value, f"must be 0 or 1, got {value!r}"
        if self.kind is Kind.CHOICE:
            value = dict(self.choice_aliases).get(value, value)
            if value not in self.choices:
                return value, f"must be one of {', '.join(self.choices)}; got {value!r}"
            return value, None
        if self.kind is Kind.TEXT:
            if not isinstance(value, str) or not value:
                return value, f"must be a non-empty string, got {value!r}"
            return value, None
        if self.kind is Kind.GRID:
            ga = _GA_GRID.match(value) if isinstance(value, str) else None
            try:
                columns, rows = grid_size(f"{ga[1]}x{ga[2]}" if ga else value)
            except ValueError:
                return value, f"must be COLUMNSxROWS or (COLUMNS, ROWS) with positive whole numbers (e.g. 3x2), " \
                              f"got {value!r}"
            return f"{columns}x{rows}", None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    value = float(value) if self.kind is Kind.FLOAT else int(value)
                except ValueError:
                    return value, f"must be {'a number' if self.kind is Kind.FLOAT else 'an integer'}, got {value!r}"
            else:
                return value, f"must be {'a number' if self.kind is Kind.FLOAT else 'an integer'}, got {value!r}"
        if self.kind is Kind.INT:
            if isinstance(value, float):
                if not value.is_integer():
                    return value, f"must be an integer, got {value!r}"
                value = int(value)
        else:
            value = float(value)
        if self.low is not None and (value < self.low or (self.low_exclusive and value == self.low)):
            return value, f"must be in {self.range_text()}, got {value!r}"
        if self.high is not None and (value > self.high or (self.high_exclusive and value == self.high)):
            return value, f"must be in {self.range_text()}, got {value!r}"
        return value, None


_GRID = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")
_GA_GRID = re.compile(r"^\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*$")  # "(3, 2)", as Azure GA writes it


def grid_size(value: Any) -> tuple[int, int]:
    """(columns, rows) of "COLUMNSxROWS" (e.g. "3x2"); ValueError saying what is wrong otherwise."""
    match = _GRID.match(value) if isinstance(value, str) else None
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise ValueError(f"must be COLUMNSxROWS with positive whole numbers (e.g. 3x2), got {value!r}")
    return int(match[1]), int(match[2])


def _fmt(x: float | None) -> str:
    if x is None:
        return "-∞"
    return str(int(x)) if float(x).is_integer() else str(x)


def _per_task(classification: Any, multi_label: Any, detection: Any, yolo: Any = None) -> Callable[[Task, str], Any]:
    def pick(task: Task, model_name: str) -> Any:
        if task is Task.CLASSIFICATION:
            return classification
        if task is Task.MULTI_LABEL:
            return multi_label
        if model_name == "yolov5" and yolo is not None:
            return yolo
        return detection
    return pick


def _positive_int(name: str, description: str, default: Default, **kw: Any) -> Hyperparameter:
    return Hyperparameter(name, Kind.INT, description, default, low=0, low_exclusive=True, **kw)


def _unit_float(name: str, description: str, default: Default, **kw: Any) -> Hyperparameter:
    return Hyperparameter(name, Kind.FLOAT, description, default, low=0.0, high=1.0, **kw)


DEFAULT_MODELS = {
    Task.CLASSIFICATION: "resnet50",
    Task.MULTI_LABEL: "resnet50",
    Task.OBJECT_DETECTION: "fasterrcnn_resnet50_fpn",
    Task.INSTANCE_SEGMENTATION: "maskrcnn_resnet50_fpn",
}

_DETECTION_NOT_YOLO = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet34_fpn", "fasterrcnn_resnet18_fpn",
                       "retinanet_resnet50_fpn", "maskrcnn_resnet50_fpn",
                       "fasterrcnn_resnet101_fpn", "fasterrcnn_resnet152_fpn", "maskrcnn_resnet18_fpn",
                       "maskrcnn_resnet34_fpn", "maskrcnn_resnet101_fpn", "maskrcnn_resnet152_fpn")

# Azure GA's defaults for the ViTs, which differ from the other classifiers': batch sizes that fit
# a 12 GiB GPU, and learning rates (multi-class, multi-label) that suit their optimisation.
_VIT_BATCH_SIZES = {"vits16r224": 128, "vitb16r224": 48, "vitl16r224": 10}
_VIT_LEARNING_RATES = {"vits16r224": (0.0125, 0.025), "vitb16r224": (0.0125, 0.025), "vitl16r224": (0.001, 0.002)}


def _batch_size(detection: int) -> Callable[[Task, str], Any]:
    """78 for the classifiers (the ViTs: their own), `detection` for OD / IS, 16 for yolov5."""
    per_task = _per_task(78, 78, detection, 16)
    return lambda task, model: _VIT_BATCH_SIZES.get(model) or per_task(task, model)


def _learning_rate(task: Task, model: str) -> float:
    if model in _VIT_LEARNING_RATES:
        return _VIT_LEARNING_RATES[model][task is Task.MULTI_LABEL]
    # GA: 0.005 for the R-CNNs and RetinaNet (the preview's 0.05 diverged on small data sets)
    return _per_task(0.01, 0.035, 0.005, 0.01)(task, model)


_REGISTRY: tuple[Hyperparameter, ...] = (
    # --- model selection -----------------------------------------------------------------------
    Hyperparameter("model_name", Kind.TEXT, "Model architecture (see the model list).",
                   default=lambda task, _model: DEFAULT_MODELS[task]),
    Hyperparameter("pretrained", Kind.FLAG, "Start from pretrained weights (weights cache first, then "
                   "the library's download); 0 trains from scratch. yolov5: 0 (no weights are "
                   "published under a licence we can ship; 1 loads them from the weights cache).",
                   default=lambda _task, model: 0 if model == "yolov5" else 1),
    # --- model-agnostic ------------------------------------------------------------------------
    _positive_int("number_of_epochs", "Number of training epochs.", _per_task(15, 15, 15, 30)),
    _positive_int("training_batch_size", "Training batch size.", _batch_size(detection=2)),
    _positive_int("validation_batch_size", "Validation batch size.", _batch_size(detection=1)),
    _positive_int("gradient_accumulation_step", "Batches whose gradients are summed before each optimizer step "
                  "(an effective batch of training_batch_size times this).", 1),
    Hyperparameter("number_of_workers", Kind.INT, "Data loader processes per training process; by default "
                   "one per CPU core but one on a GPU machine, none on a CPU one.", None, low=0, high=64),
    Hyperparameter("early_stopping", Kind.FLAG, "Stop a trial when the primary metric stops improving.", 1),
    _positive_int("early_stopping_patience", "Evaluations without improvement before stopping.", 5),
    _positive_int("early_stopping_delay", "Evaluations to wait before tracking improvement.", 5),
    _unit_float("learning_rate", "Initial learning rate.", _learning_rate, low_exclusive=True),
    Hyperparameter("lr_scheduler", Kind.CHOICE, "Learning rate scheduler.", "warmup_cosine",
                   choices=("warmup_cosine", "step"), aliases=("learning_rate_scheduler",)),
    _unit_float("step_lr_gamma", "Gamma of the step scheduler.", 0.5),
    _positive_int("step_lr_step_size", "Step size (epochs) of the step scheduler.", 5),
    _unit_float("warmup_cosine_lr_cycles", "Cosine cycles of the warmup_cosine scheduler.", 0.45),
    Hyperparameter("warmup_cosine_lr_warmup_epochs", Kind.INT, "Warmup epochs of the warmup_cosine "
                   "scheduler.", 2, low=0),
    Hyperparameter("optimizer", Kind.CHOICE, "Optimizer.", "sgd", choices=("sgd", "adam", "adamw")),
    _unit_float("momentum", "Momentum (sgd).", 0.9),
    _unit_float("weight_decay", "Weight decay (sgd, adam, adamw).", 1e-4),
    Hyperparameter("nesterov", Kind.FLAG, "Nesterov momentum (sgd).", 1),
    _unit_float("beta1", "beta1 (adam, adamw).", 0.9),
    _unit_float("beta2", "beta2 (adam, adamw).", 0.999),
    Hyperparameter("amsgrad", Kind.FLAG, "AMSGrad (adam, adamw).", 0, aliases=("ams_gradient",)),
    _positive_int("evaluation_frequency", "Evaluate the validation set every N epochs.", 1),
    Hyperparameter("log_training_metrics", Kind.CHOICE, "enable: each evaluation also scores the training "
                   "images (without augmentation), saved as training_<metric>.", "disable",
                   choices=("enable", "disable")),
    Hyperparameter("split_ratio", Kind.FLOAT, "Validation share of the training data when no "
                   "validation data is given.", 0.2, low=0.0, high=1.0, low_exclusive=True),
    _positive_int("checkpoint_frequency", "Also keep a checkpoint every N epochs (the best epoch's "
                  "model is always kept).", None),
    Hyperparameter("layers_to_freeze", Kind.INT, "How many of the model's freezable layers to freeze, "
                   "from the input side.", None, low=0),
    # --- classification ------------------------------------------------------------------------
    Hyperparameter("weighted_loss", Kind.INT, "0: none; 1: sqrt(class weights); 2: class weights.", 0,
                   low=0, high=2, tasks=CLASSIFICATION_TASKS),
    _positive_int("resize_size", "Image size before cropping (validation).", 256, tasks=CLASSIFICATION_TASKS,
                  aliases=("validation_resize_size",)),
    # One crop size for training and validation, as the preview had: GA's two names are both
    # taken, and a job that gives them different values is refused (not silently unified).
    _positive_int("crop_size", "Crop size fed to the network.", 224, tasks=CLASSIFICATION_TASKS,
                  aliases=("training_crop_size", "validation_crop_size")),
    # --- detection and segmentation (all models) -------------------------------------------------
    Hyperparameter("validation_metric_type", Kind.CHOICE, "Metric computation for validation.", "voc",
                   choices=("none", "coco", "voc", "coco_voc"), tasks=DETECTION_TASKS),
    _unit_float("validation_iou_threshold", "IoU at which a prediction matches an object in the VOC metrics.",
                0.5, tasks=DETECTION_TASKS, low_exclusive=True),
    # Azure's default (enable) costs a second pass over the validation images per evaluation:
    # torchvision's detectors compute losses only in training mode (see fit.Fit._validation_loss).
    Hyperparameter("log_validation_loss", Kind.CHOICE, "Also compute the detector's loss on the validation "
                   "images at each evaluation (validation_loss and its parts): a second pass over them.",
                   "enable", choices=("enable", "disable"), tasks=DETECTION_TASKS),
    _positive_int("min_size", "Minimum image size fed to the backbone.", 600, tasks=DETECTION_TASKS,
                  models=_DETECTION_NOT_YOLO),
    _positive_int("max_size", "Maximum image size fed to the backbone.", 1333, tasks=DETECTION_TASKS,
                  models=_DETECTION_NOT_YOLO),
    _unit_float("box_score_thresh", "Score threshold for returned boxes.",
                _per_task(None, None, 0.3, 0.1), tasks=DETECTION_TASKS, aliases=("box_score_threshold",)),
    # The preview had box_nms_thresh (R-CNNs, RetinaNet) and box_iou_thresh (yolov5); GA names both nms_iou_threshold.
    _unit_float("box_nms_thresh", "IoU threshold of the NMS of the prediction head.", 0.5, tasks=DETECTION_TASKS,
                aliases=("nms_iou_threshold", "box_iou_thresh")),
    _positive_int("box_detections_per_img", "Maximum detections per image.", 100, tasks=DETECTION_TASKS,
                  models=_DETECTION_NOT_YOLO, aliases=("box_detections_per_image",)),
    Hyperparameter("tile_grid_size", Kind.GRID, "Tiles per image, COLUMNSxROWS (e.g. 3x2), for small "
                   "objects: trains on the images and their tiles, predicts on both and merges.", None,
                   tasks=DETECTION_TASKS, models=_DETECTION_NOT_YOLO),
    Hyperparameter("tile_overlap_ratio", Kind.FLOAT, "Overlap of adjacent tiles, a share of the tile size.",
                   0.25, low=0.0, high=1.0, high_exclusive=True, tasks=DETECTION_TASKS, models=_DETECTION_NOT_YOLO),
    _unit_float("tile_predictions_nms_thresh", "IoU threshold of the NMS merging the predictions of the "
                "tiles and the whole image.", 0.25, tasks=DETECTION_TASKS, models=_DETECTION_NOT_YOLO,
                aliases=("tile_predictions_nms_threshold",)),
    # --- instance segmentation ------------------------------------------------------------------
    _unit_float("mask_pixel_score_threshold", "Mask pixels scoring at least this are the object's, when a "
                "predicted mask is traced into polygons.", 0.5, tasks=(Task.INSTANCE_SEGMENTATION,)),
    Hyperparameter("max_number_of_polygon_points", Kind.INT, "Most points of a polygon traced from a "
                   "predicted mask (simplified until it fits).", 100, low=3, tasks=(Task.INSTANCE_SEGMENTATION,)),
    # --- yolov5 --------------------------------------------------------------------------------
    _positive_int("img_size", "Image size for train and validation (yolov5).", 640,
                  tasks=(Task.OBJECT_DETECTION,), models=("yolov5",), aliases=("image_size",)),
    Hyperparameter("model_size", Kind.CHOICE, "Model size (yolov5).", "medium",
                   choices=("small", "medium", "large", "xlarge"), tasks=(Task.OBJECT_DETECTION,),
                   models=("yolov5",), choice_aliases=(("extra_large", "xlarge"),)),
    Hyperparameter("multi_scale", Kind.FLAG, "Vary image size by +/-50% (yolov5).", 0,
                   tasks=(Task.OBJECT_DETECTION,), models=("yolov5",)),
    Hyperparameter("apply_mosaic_for_yolo", Kind.FLAG, "Mosaic augmentation (yolov5): each training sample is "
                   "four images around a random centre (trainer/mosaic.py).", 1,
                   tasks=(Task.OBJECT_DETECTION,), models=("yolov5",)),
)

HYPERPARAMETERS: Mapping[str, Hyperparameter] = {hp.name: hp for hp in _REGISTRY}
ALIASES: Mapping[str, str] = {alias: hp.name for hp in _REGISTRY for alias in hp.aliases}


def canonical_name(name: str) -> str:
    """The registry's name of a setting (`learning_rate_scheduler` → `lr_scheduler`); others unchanged."""
    return ALIASES.get(name, name)


def for_task(task: Task, model_name: str | None = None) -> list[Hyperparameter]:
    return [hp for hp in _REGISTRY if hp.applies_to(task, model_name)]


def resolve(task: Task, values: Mapping[str, Any]) -> dict[str, Any]:
    """Every hyperparameter of the task and model with its value: `values` first, else the default.
    `values` must already be validated (see the controller's spec module)."""
    model_name = values.get("model_name") or HYPERPARAMETERS["model_name"].default_for(task, "")
    out = {}
    for hp in for_task(task, model_name):
        out[hp.name] = values[hp.name] if hp.name in values else hp.default_for(task, model_name)
    out["model_name"] = model_name
    return out


# -- the table of docs/hyperparameters.md ---------------------------------------------------------------

_TASK_SHORT = {Task.CLASSIFICATION: "multi-class", Task.MULTI_LABEL: "multi-label",
               Task.OBJECT_DETECTION: "OD", Task.INSTANCE_SEGMENTATION: "IS"}


def _tasks_text(hp: Hyperparameter) -> str:
    if hp.tasks == ALL_TASKS:
        tasks = "all"
    elif hp.tasks == CLASSIFICATION_TASKS:
        tasks = "classification"
    else:
        tasks = ", ".join(_TASK_SHORT[t] for t in hp.tasks)
    if hp.models == ("yolov5",):
        return f"{tasks} (yolov5)"
    return f"{tasks} (not yolov5)" if hp.models else tasks


def _default_text(hp: Hyperparameter) -> str:
    """One value, or the value per task (and for yolov5) where they differ; tasks that share a
    value are listed together."""
    per_task = {_TASK_SHORT[t]: hp.default_for(t, DEFAULT_MODELS[t]) for t in hp.tasks}
    # model_name's default does not depend on the model; every other default may differ for yolov5.
    if Task.OBJECT_DETECTION in hp.tasks and "yolov5" in (hp.models or ("yolov5",)) and hp.name != "model_name":
        per_task["yolov5"] = hp.default_for(Task.OBJECT_DETECTION, "yolov5")
    groups: dict[str, list[str]] = {}
    for task, value in per_task.items():
        groups.setdefault("—" if value is None else str(value), []).append(task)
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"{' / '.join(tasks)}: {value}" for value, tasks in groups.items())


def markdown_table() -> str:
    """Every hyperparameter with its tasks, range and defaults, as docs/hyperparameters.md shows them."""
    rows = ["| name | tasks | range | default |", "|---|---|---|---|"]
    for hp in _REGISTRY:
        value_range = "see the model list" if hp.name == "model_name" else hp.range_text()
        name = f"`{hp.name}`" + "".join(f", `{alias}`" for alias in hp.aliases)
        rows.append(f"| {name} | {_tasks_text(hp)} | {value_range} | {_default_text(hp)} |")
    return "\n".join(rows) + "\n"
