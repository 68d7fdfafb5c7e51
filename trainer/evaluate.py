"""Score saved predictions against labels, without a model: `automl-images evaluate`.

    automl-images evaluate --task image-classification --labels val.jsonl --predictions preds.jsonl

LABELS is JSONL as for training. PREDICTIONS is the same schema with `scores`, every class's
probability; its `label` is optional and not used, the metrics come from the scores. This is what
`automl-images predict` writes (and `LoadedModel.predict` returns, less the image_url), so its
output is read here unchanged and is a label file as it stands:

    {"image_url": "images/can_1.jpg", "label": "can", "scores": {"can": 0.9, "milk_bottle": 0.1}}
    {"image_url": "images/fridge_1.jpg", "label": ["can"], "scores": {"can": 0.8, "milk_bottle": 0.3}}

- image-classification: the predicted class is the highest score; each line's scores must sum to 1
  (within 0.01, for rounded figures; they are used as given, as scikit-learn does: rescaling would
  move ties between classes).
- image-multi-labeling: a label is predicted when its score is at least 0.5.

For image-object-detection and image-instance-segmentation, PREDICTIONS is the training schema
with a `score` per object, and `--metric-type voc|coco|coco_voc` (default voc, as the reference)
picks the metrics (`detection_metrics.py`):

    {"image_url": "images/1.jpg", "label": [{"label": "can", "topX": 0.1, "topY": 0.2,
                                             "bottomX": 0.5, "bottomY": 0.9, "score": 0.87}]}

COCO's areas are in pixels: the image size comes from the labels' `image_details` (width, height),
else from the image's header (`image_url` resolved against the labels file). VOC boxes need no size.

Records are matched by `image_url` exactly as written (not resolved against the file's folder):
every labelled image needs one prediction and every prediction one labelled image. Problems are
reported as `file:line: field 'name': what is wrong`; the metrics (`metrics.py`) are printed as JSON.
"""
from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from automl_images.core import jsonl
from automl_images.core.hyperparameters import Task
from automl_images.core.labels import PARSERS as LABEL_PARSERS
from automl_images.core.problems import Problems
from automl_images.core.storage import filesystem, resolve

from . import metrics

SUM_TOLERANCE = 0.01      # multi-class scores must sum to 1 within this
EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
EVALUATED_TASKS = (Task.CLASSIFICATION, Task.MULTI_LABEL, Task.OBJECT_DETECTION, Task.INSTANCE_SEGMENTATION)
DETECTION_METRIC_TYPES = ("voc", "coco", "coco_voc")
_SIZE = re.compile(r"^\s*(\d+)\s*(?:px)?\s*$", re.IGNORECASE)


class EvaluationError(ValueError):
    """Input that cannot be evaluated; each line of the message names the file, line and field."""


@dataclass(frozen=True)
class _Line:
    source: str
    line: int
    image_url: str
    value: Any         # labels: the parsed label; predictions: the scores {class: float}

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def _read_lines(url: str, problems: Problems) -> list[jsonl.JsonLine]:
    """Every line of a JSONL file that is an object with an image_url; the other lines become
    problems."""
    out = jsonl.image_url_lines(url, problems)
    if not out and not problems.items:
        raise EvaluationError(f"{url}: no records (the file is empty)")
    return out


def _unique(lines: list[_Line], problems: Problems) -> dict[str, _Line]:
    by_url: dict[str, _Line] = {}
    for line in lines:
        if line.image_url in by_url:
            problems.add(line.where, "image_url", f"{line.image_url!r} is also on line {by_url[line.image_url].line}")
        else:
            by_url[line.image_url] = line
    return by_url


def _scores(value: Any) -> tuple[dict[str, float] | None, str | None]:
    """The scores of one prediction line, or why they are invalid."""
    if value is None:
        return None, "missing: an object mapping every class name to its probability"
    if not isinstance(value, dict) or not value:
        return None, f"must be a non-empty object mapping class names to probabilities, got {value!r}"
    out = {}
    for name, score in value.items():
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score) \
                or not 0.0 <= score <= 1.0:
            return None, f"class {name!r}: must be a probability in [0, 1], got {score!r}"
        out[str(name).strip()] = float(score)
    return out, None


def _labelled_lines(url: str, parse_label, problems: Problems) -> list[tuple[int, dict[str, Any], Any]]:
    """(line number, object, parsed label) of each line whose label parses; the others' problems
    are added to `problems`."""
    out = []
    for line in _read_lines(url, problems):
        if line.value.get("label") is None:
            problems.add(line.where, "label", "missing")
            continue
        try:
            out.append((line.number, line.value, parse_label(line.value["label"])))
        except ValueError as exc:
            problems.add(line.where, "label", str(exc))
    return out


def _check_same_images(labels: dict[str, _Line], predictions: dict[str, _Line], labels_url: str,
                       predictions_url: str, problems: Problems) -> None:
    """Every labelled image has a prediction and every prediction a label."""
    for url, line in labels.items():
        if url not in predictions:
            problems.add(line.where, "image_url", f"{url!r} has no prediction in {predictions_url}")
    for url, line in predictions.items():
        if url not in labels:
            problems.add(line.where, "image_url", f"{url!r} is not in the labels file {labels_url}")


def read_labels(url: str, task: Task, problems: Problems) -> list[_Line]:
    return [_Line(url, number, obj["image_url"], label)
            for number, obj, label in _labelled_lines(url, LABEL_PARSERS[task], problems)]


def read_predictions(url: str, problems: Problems) -> list[_Line]:
    lines = []
    for line in _read_lines(url, problems):
        scores, error = _scores(line.value.get("scores"))
        if error:
            problems.add(line.where, "scores", error)
            continue
        lines.append(_Line(url, line.number, line.value["image_url"], scores))
    return lines


def evaluate_files(task: Task | str, labels_url: str, predictions_url: str,
                   metric_type: str | None = None) -> dict[str, Any]:
    """The metrics of the predictions in `predictions_url` against the labels in `labels_url`.
    Raises EvaluationError naming every problem's file, line and field."""
    try:
        task = Task(task)
    except ValueError:
        raise EvaluationError(f"unknown task {task!r}; one of {', '.join(t.value for t in Task)}") from None
    if task not in EVALUATED_TASKS:
        raise EvaluationError(f"evaluate does not support {task.value} yet "
                              f"(supported: {', '.join(t.value for t in EVALUATED_TASKS)})")
    if task in (Task.OBJECT_DETECTION, Task.INSTANCE_SEGMENTATION):
        return _evaluate_detection(task, labels_url, predictions_url, metric_type or "voc")
    if metric_type is not None:
        raise EvaluationError("--metric-type applies to image-object-detection and image-instance-segmentation "
                              f"only, not to {task.value}")

    problems = Problems(EvaluationError)
    labels = _unique(read_labels(labels_url, task, problems), problems)
    predictions = _unique(read_predictions(predictions_url, problems), problems)
    problems.raise_if_any()

    _check_same_images(labels, predictions, labels_url, predictions_url, problems)
    # Every prediction must score the same classes; the first one sets them.
    first = next(iter(predictions.values()))
    classes = sorted(first.value)
    for line in predictions.values():
        if sorted(line.value) != classes:
            missing = sorted(set(classes) - set(line.value))
            extra = sorted(set(line.value) - set(classes))
            problems.add(line.where, "scores", f"scores other classes than line {first.line}: "
                         + "; ".join(part for part in (missing and f"missing {', '.join(missing)}",
                                                        extra and f"extra {', '.join(extra)}") if part))
    for line in labels.values():
        unscored = [name for name in _classes_of(task, line.value) if name not in first.value]
        if unscored:
            problems.add(line.where, "label", f"class(es) {', '.join(map(repr, unscored))} have no score in "
                                              f"{predictions_url} (scored: {', '.join(classes)})")
    if task is Task.CLASSIFICATION:
        for line in predictions.values():
            total = sum(line.value.values())
            if abs(total - 1.0) > SUM_TOLERANCE:
                problems.add(line.where, "scores", f"image-classification scores are probabilities of one "
                                                   f"class and must sum to 1, got {total:g}")
    problems.raise_if_any()

    index = {name: i for i, name in enumerate(classes)}
    ordered = list(labels.values())
    probabilities = np.array([[predictions[line.image_url].value[name] for name in classes] for line in ordered],
                             dtype=np.float64)
    if task is Task.CLASSIFICATION:
        targets = np.array([index[line.value] for line in ordered], dtype=np.int64)
        result = metrics.multiclass(targets, probabilities, classes)
    else:
        targets = np.zeros((len(ordered), len(classes)), dtype=np.int64)
        for row, line in enumerate(ordered):
            for name in line.value:
                targets[row, index[name]] = 1
        result = metrics.multilabel(targets, probabilities, classes)
    return {"task": task.value, **result}


def _image_size(obj: dict[str, Any], labels_url: str, where: str, problems: Problems,
                need: bool) -> tuple[int, int] | None:
    """(width, height) in pixels from `image_details`, else the image's header; (1, 1) when not
    `need`ed and not given (VOC boxes: IoU does not change with the scale)."""
    details = obj.get("image_details")
    if isinstance(details, dict):
        sizes = [details.get(k) for k in ("width", "height")]
        matches = [_SIZE.match(str(v)) if v is not None and not isinstance(v, bool) else None for v in sizes]
        if all(matches) and all(int(m.group(1)) > 0 for m in matches):
            return int(matches[0].group(1)), int(matches[1].group(1))
    if not need:
        return 1, 1
    url = resolve(obj["image_url"].strip(), labels_url)
    try:
        from PIL import Image
        fs, path = filesystem(url)
        with fs.open(path, "rb") as f, Image.open(f) as image:
            return image.size
    except Exception as exc:  # any unreadable image: a problem of the input, listed with the others
        problems.add(where, "image_details", f"no width and height, and the image {url} could not be read "
                                             f"for its size ({type(exc).__name__}: {exc})")
        return None


def _evaluate_detection(task: Task, labels_url: str, predictions_url: str, metric_type: str) -> dict[str, Any]:
    from automl_images.core.detection_labels import parser

    from . import detection_metrics

    if metric_type not in DETECTION_METRIC_TYPES:
        raise EvaluationError(f"--metric-type must be one of {', '.join(DETECTION_METRIC_TYPES)} to evaluate "
                              f"{task.value}, got {metric_type!r}")
    segmentation = task is Task.INSTANCE_SEGMENTATION
    need_size = segmentation or metric_type != "voc"
    problems = Problems(EvaluationError)

    def read(url: str, scored: bool) -> list[_Line]:
        return [_Line(url, number, obj["image_url"],
                      (label, None if scored else _image_size(obj, labels_url, f"{url}:{number}", problems, need_size)))
                for number, obj, label in _labelled_lines(url, parser(task, scored=scored), problems)]

    labels = _unique(read(labels_url, False), problems)
    predictions = _unique(read(predictions_url, True), problems)
    problems.raise_if_any()
    _check_same_images(labels, predictions, labels_url, predictions_url, problems)
    problems.raise_if_any()
    images = []
    for url, line in labels.items():
        label, (width, height) = line.value
        images.append(detection_metrics.ImageResult(width, height, label.objects,
                                                    predictions[url].value[0].objects))
    result = detection_metrics.detection_metrics(images, metric_type, segmentation=segmentation)
    return {"task": task.value, "metric_type": metric_type, **result}


def _classes_of(task: Task, label: Any) -> tuple[str, ...]:
    return (label,) if task is Task.CLASSIFICATION else tuple(label)


def run_cli(task: str, labels_url: str, predictions_url: str, metric_type: str | None = None) -> int:
    """`automl-images evaluate`: the metrics as JSON on stdout; exit 2 with the problems on stderr."""
    try:
        result = evaluate_files(task, labels_url, predictions_url, metric_type)
    except EvaluationError as exc:
        print(f"automl-images evaluate: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:  # storage unreachable, permissions: not the input's fault
        print(f"automl-images evaluate: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK
