"""A folder per class into our JSONL (image-classification).

    photos/can/1.jpg, photos/can/2019/7.png, photos/carton/3.jpg, ...

Each folder directly below the root is a class, named as the folder; every image below it (at any
depth) is of that class. Files that are not images (by extension) are left out with a warning,
hidden ones (a leading dot: .DS_Store) silently; an image beside the class folders, in the root
itself, is an error: it has no class. The sizes come from the images' headers.
"""
from __future__ import annotations

import os

from automl_images.core.hyperparameters import Task
from automl_images.core.problems import Problems

from .conversion import (
    IMAGE_EXTENSIONS,
    Conversion,
    ConversionError,
    ImageEntry,
    Shape,
    check_task,
    find_image,
    name,
    records_of,
)

TASKS = (Task.CLASSIFICATION,)


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _files(folder: str) -> list[str]:
    """The files below `folder`, in path order, hidden files and folders left out."""
    found = []
    for parent, folders, files in os.walk(folder):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        found += [os.path.join(parent, f) for f in sorted(files) if not f.startswith(".")]
    return found


def from_folders(root: str, output: str, task: Task | str = Task.CLASSIFICATION) -> Conversion:
    """The images of a folder per class as JSONL records, class by class (see the module docstring)."""
    task = check_task(task, TASKS, "a folder per class")
    if not os.path.isdir(root):
        raise ConversionError(f"{root}: not a folder (of one folder per class)")
    problems = Problems(ConversionError)
    entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    classes = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    if not classes:
        raise ConversionError(f"{root}: no class folder in it (one folder per class, holding its images)")
    for entry in entries:
        path = os.path.join(root, entry)
        if entry not in classes and _is_image(path):
            problems.add(path, None, "an image beside the class folders has no class: move it into its class's folder")
    images: list[ImageEntry] = []
    for folder in classes:
        class_name = name(folder, os.path.join(root, folder), "class folder", problems)
        files = _files(os.path.join(root, folder))
        for path in files:
            if not _is_image(path):
                problems.warnings.append(f"{path}: not an image ({', '.join(IMAGE_EXTENSIONS)}); left out")
                continue
            image = find_image(path, path, problems)
            if image is not None and class_name is not None:
                image.shapes.append(Shape(path, class_name, None))
                images.append(image)
        if not any(_is_image(path) for path in files):
            problems.warnings.append(f"{os.path.join(root, folder)}: no image in it; class {folder!r} left out")
    return records_of(images, task, output, problems)
