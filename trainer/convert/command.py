"""`automl-images convert`: one format into our JSONL (or our JSONL into COCO JSON), the files
written, warnings and a summary printed; exit 2 with every problem on stderr."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Callable

from automl_images.core.hyperparameters import Task
from automl_images.core.problems import MAX_LISTED

from .coco import from_coco
from .conversion import Conversion, ConversionError
from .csv_labels import from_csv
from .cvat import from_cvat
from .folders import from_folders
from .label_studio import from_label_studio
from .output import jsonl_text, split_records, validation_path, write_files
from .to_coco import to_coco
from .voc import from_voc
from .yolo import from_yolo

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


@dataclass(frozen=True)
class Options:
    """What `automl-images convert` was given."""
    source_format: str
    source: str
    output: str
    images: str | None = None
    task: str | None = None
    names: str | None = None              # yolo
    label_delimiter: str = " "            # csv
    split: float | None = None            # the validation share
    seed: int = 0
    validation_output: str | None = None
    overwrite: bool = False


def _check(options: Options) -> None:
    fmt = options.source_format
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if (options.names is not None) != (fmt == "yolo"):
        raise ConversionError("YOLO labels need --names (the YAML or text file of class names)" if fmt == "yolo"
                              else f"{fmt} files name their classes: --names is for yolo only")
    if options.label_delimiter != " " and fmt != "csv":
        raise ConversionError("--label-delimiter is for csv only")
    if fmt == "folders":
        if options.images is not None:
            raise ConversionError("folders: the SOURCE folder holds the images; --images is for the other formats")
    elif options.images is None and fmt != TO_COCO:
        raise ConversionError(f"{fmt}: --images is needed (the folder the labels' image paths are relative to)")
    elif options.images is not None and not os.path.isdir(options.images):
        raise ConversionError(f"--images {options.images}: not a folder")
    if fmt == TO_COCO and (options.split is not None or options.validation_output is not None):
        raise ConversionError("--split writes JSONL files: it does not apply to jsonl (to COCO JSON)")
    if options.validation_output is not None and options.split is None:
        raise ConversionError("--validation-output names the file --split writes: give --split too")


@dataclass(frozen=True)
class _Format:
    """A format into our JSONL: the task it converts to when --task is not given, and its reader."""
    default_task: Task
    read: Callable[[Options, Task], Conversion]


IMPORTERS: dict[str, _Format] = {
    "coco": _Format(Task.OBJECT_DETECTION, lambda o, task: from_coco(o.source, o.images, o.output, task)),
    "voc": _Format(Task.OBJECT_DETECTION, lambda o, task: from_voc(o.source, o.images, o.output, task)),
    "yolo": _Format(Task.OBJECT_DETECTION, lambda o, task: from_yolo(o.source, o.images, o.output, o.names, task)),
    "folders": _Format(Task.CLASSIFICATION, lambda o, task: from_folders(o.source, o.output, task)),
    "csv": _Format(Task.MULTI_LABEL, lambda o, task: from_csv(o.source, o.images, o.output, task,
                                                              o.label_delimiter)),
    "labelstudio": _Format(Task.OBJECT_DETECTION, lambda o, task: from_label_studio(o.source, o.images, o.output,
                                                                                    task)),
    "cvat": _Format(Task.OBJECT_DETECTION, lambda o, task: from_cvat(o.source, o.images, o.output, task)),
}
TO_COCO = "jsonl"          # the one format out: our JSONL into COCO JSON
FORMATS = (*IMPORTERS, TO_COCO)


def _task(options: Options) -> Task:
    return Task(options.task) if options.task else IMPORTERS[options.source_format].default_task


def convert(options: Options) -> Conversion:
    """The records of `options.source` in `options.source_format` (any but jsonl)."""
    return IMPORTERS[options.source_format].read(options, _task(options))


def _write(options: Options) -> tuple[list[str], str]:
    """Write the output files; (warnings, the summary)."""
    if options.source_format == TO_COCO:
        task = options.task or Task.OBJECT_DETECTION
        coco = to_coco(options.source, task, options.images)
        write_files({options.output: json.dumps(coco)}, options.overwrite)
        return [], (f"{options.output}: {len(coco['images'])} images, {len(coco['annotations'])} annotations, "
                    f"{len(coco['categories'])} categories (COCO JSON)")
    conversion = convert(options)
    task = _task(options)
    what = {Task.CLASSIFICATION: "labelled", Task.MULTI_LABEL: "class names"}.get(task, "objects")
    summary = f"{len(conversion.records)} images, {conversion.count_objects()} {what} ({task.value})"
    if options.split is None:
        write_files({options.output: jsonl_text(conversion.records)}, options.overwrite)
        return conversion.warnings, f"{options.output}: {summary}"
    validation_output = options.validation_output or validation_path(options.output)
    train, validation = split_records(conversion.records, task, options.split, options.seed, options.output)
    write_files({options.output: jsonl_text(train), validation_output: jsonl_text(validation)}, options.overwrite)
    return conversion.warnings, (f"{summary}; {options.output}: {len(train)} for training, {validation_output}: "
                                 f"{len(validation)} for validation (split {options.split:g}, seed {options.seed})")


def run_cli(options: Options) -> int:
    """`automl-images convert`: writes the output, prints the warnings and a summary; exit 2 with the
    problems on stderr."""
    try:
        _check(options)
        warnings, summary = _write(options)
    except ConversionError as exc:
        print(f"automl-images convert: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:  # permissions, a full disk: not the input's fault
        print(f"automl-images convert: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for warning in warnings[:MAX_LISTED]:
        print(f"warning: {warning}", file=sys.stderr)
    if len(warnings) > MAX_LISTED:
        print(f"warning: and {len(warnings) - MAX_LISTED} more", file=sys.stderr)
    print(f"{summary}; {len(warnings)} warning(s)")
    return EXIT_OK
