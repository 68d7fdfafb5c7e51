"""`automl-images submit JOB.yaml --root URL`: validate a job, upload the local data it references,
and drop it into the root's inbox.

Local data is uploaded when the root is remote: the JSONL files and every image they reference
by a relative path go to `<root>/uploads/<job_id>/`, keeping their layout, so the relative paths
still resolve. The user's own files are only read.
"""
from __future__ import annotations

import datetime
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import yaml

from automl_images.core import jsonl
from automl_images.core.layout import Root, job_id_from_name
from automl_images.core.problems import Problem, Problems
from automl_images.core.storage import Storage, is_url, join, resolve

from .spec import JobSpec, JobSpecError, parse_job_bytes

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def new_job_id(job_path: str, now: datetime.datetime | None = None) -> str:
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return f"{job_id_from_name(job_path)[:32]}-{stamp}"


def submit(job_path: str, root_url: str, job_id: str | None = None, progress: Progress = _stderr) -> str:
    """Validate, upload, drop into the inbox. Returns the job id."""
    source = job_path if is_url(job_path) else os.path.abspath(job_path)
    folder, _, file_name = source.rpartition("/")
    data = Storage(folder).read_bytes(file_name)
    spec = parse_job_bytes(data, job_path)
    text = data.decode("utf-8")
    root = Root(root_url)
    job_id = job_id or new_job_id(job_path)
    replacements = {}
    for field_name in ("training_data", "validation_data"):
        reference = getattr(spec, field_name)
        if reference is None:
            continue
        url = resolve(reference, source)
        if not is_url(url) and not root.storage.is_local:
            url = _upload_jsonl(url, root, job_id, field_name, job_path, progress)
        if url != reference:
            replacements[field_name] = url
    if replacements:
        data = yaml.safe_load(text)
        data.update(replacements)
        text = f"# submitted from {source} by automl-images submit\n" + yaml.safe_dump(data, sort_keys=False)
    key = root.inbox_key(f"{job_id}.yaml")
    if not root.storage.create_exclusive(key, text.encode("utf-8")):
        raise FileExistsError(f"{root.storage.url(key)} already exists; choose another job id")
    return job_id


def _upload_jsonl(jsonl_path: str, root: Root, job_id: str, field_name: str, job_path: str,
                  progress: Progress) -> str:
    """Upload a local JSONL file and the images it references; returns the JSONL's new URL."""
    if not os.path.exists(jsonl_path):
        raise JobSpecError(job_path, [Problem(job_path, field_name, f"{jsonl_path} does not exist")])
    base = os.path.dirname(jsonl_path)
    problems = Problems(ValueError)
    try:
        lines = jsonl.read_objects(jsonl_path, problems)
    except ValueError as exc:  # not readable as a whole (not UTF-8): the job file's field names it
        raise JobSpecError(job_path, [Problem(job_path, field_name, str(exc))]) from None
    images = []
    for line in lines:
        image_url = line.value.get("image_url")
        if not isinstance(image_url, str) or not image_url.strip():
            problems.add(jsonl_path, "image_url", "each line must be a JSON object with image_url", line.number)
        elif os.path.isabs(image_url):
            problems.add(jsonl_path, "image_url", f"{image_url} is an absolute local path, which a remote trial "
                                                  "cannot read; make it relative to the JSONL file so that submit "
                                                  "uploads it", line.number)
        elif not is_url(image_url):
            images.append(image_url)
    if problems.items:
        raise JobSpecError(jsonl_path, problems.items)
    prefix = join(root.upload_prefix(job_id), field_name)
    files = sorted(set(images))
    done = 0

    def upload(relative: str) -> None:
        local = os.path.normpath(os.path.join(base, relative))
        if not local.startswith(base + os.sep):
            raise ValueError(f"{jsonl_path}: image_url {relative!r} points outside the JSONL's folder")
        if os.path.exists(local):  # a missing image is the trainer's to report, with its line
            root.storage.upload_file(local, join(prefix, os.path.relpath(local, base).replace(os.sep, "/")))

    with ThreadPoolExecutor(max_workers=16) as pool:
        for _ in pool.map(upload, files):
            done += 1
            if done % 200 == 0 or done == len(files):
                progress(f"uploading {field_name} images: {done}/{len(files)}")
    jsonl_key = join(prefix, os.path.basename(jsonl_path))
    root.storage.upload_file(jsonl_path, jsonl_key)
    return root.storage.url(jsonl_key)


def validate_file(job_path: str) -> JobSpec:
    with open(job_path, "rb") as f:
        return parse_job_bytes(f.read(), job_path)
