"""`automl-images submit JOB.yaml --root URL`: validate a job, check its data (core/datacheck.py:
every line and every image's header), upload the local data it references, and drop it into the
root's inbox. `validate` runs the cheap part of the data check (the files exist and parse).

Local data is uploaded when the root is remote: the JSONL files and every image they reference
by a relative path go to `<root>/uploads/<job_id>/`, keeping their layout, so the relative paths
still resolve (an MLTable folder's MLTable file goes with its JSONL file, core/mltable.py). The
user's own files are only read, and the job file goes into the inbox byte for byte; where its
data is (`uploads/<job_id>/submission.json`) is written beside the uploads, first, which reserves the id.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

from automl_images.core import jsonl, mltable
from automl_images.core.hyperparameters import HYPERPARAMETERS
from automl_images.core.layout import Root, job_id_from_name, job_id_problem
from automl_images.core.problems import Problem, Problems
from automl_images.core.storage import Storage, is_url, join, json_bytes, resolve

from .spec import JobSpec, JobSpecError, check_file_size, parse_job_bytes

if TYPE_CHECKING:  # imported when data is checked: a job file refused on its own costs no more
    from automl_images.core import datacheck

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# Same-second submits of one file (a script's loop) get -2, -3, ... after the default id.
_DEFAULT_ID_TRIES = 100


class JobIdError(ValueError):
    """A job id that cannot be used: not a job id, or taken."""


def new_job_id(job_path: str, now: datetime.datetime | None = None) -> str:
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return f"{job_id_from_name(job_path)[:32]}-{stamp}"


def submit(job_path: str, root_url: str, job_id: str | None = None, progress: Progress = _stderr) -> str:
    """Validate, upload, drop into the inbox. Returns the job id, the one the job runs under.

    A given `job_id` that is not an id or is taken (by a job or an inbox file) is refused with
    JobIdError before anything is written; without one, the first free default id is taken."""
    if job_id is not None and (problem := job_id_problem(job_id)):
        raise JobIdError(problem)
    source = job_path if is_url(job_path) else os.path.abspath(job_path)
    folder, _, file_name = source.rpartition("/")
    if not is_url(source):
        check_file_size(os.path.getsize(source), job_path)  # a huge file is never read
    data = Storage(folder).read_bytes(file_name)
    spec = parse_job_bytes(data, job_path)
    root = Root(root_url)
    if not root.storage.is_local:  # what a remote trial could not read is named before anything is read
        for field_name in ("training_data", "validation_data"):
            url = resolve(getattr(spec, field_name), source) if getattr(spec, field_name) else None
            if url and not is_url(url):
                jsonl_path = _local_jsonl(url, field_name, job_path)
                if not is_url(jsonl_path):
                    _local_images(jsonl_path, field_name, job_path)
    report = check_data(spec, source, images=True)
    if not report.ok:
        raise JobSpecError(job_path, report.problems())
    default = new_job_id(job_path)
    candidates = [job_id] if job_id else [default] + [f"{default}-{n}" for n in range(2, _DEFAULT_ID_TRIES + 1)]
    for candidate in candidates:
        holder = _holder(root, candidate)
        # The submission record's create is the reservation: of two submits that both found the id
        # free, one gets it, before either uploads a byte.
        if holder is None and root.storage.create_exclusive(
                root.submission(candidate), json_bytes({"source": source, "status": "uploading"})):
            root.storage.write_json(root.submission(candidate), _submission(spec, data, source, root, candidate,
                                                                            job_path, progress))
            # The user's bytes: the inbox file, and later the job's job.yaml, are what they wrote.
            if root.storage.create_exclusive(root.inbox_key(f"{candidate}.yaml"), data):
                if report.warnings:
                    progress(report.render())
                return candidate
            holder = root.storage.url(root.inbox_key(f"{candidate}.yaml"))  # a file dropped by hand, meanwhile
        holder = holder or root.storage.url(root.submission(candidate))
        if job_id:
            raise JobIdError(f"job id {job_id!r} is taken: {holder} exists; choose another --job-id")
    raise JobIdError(f"job ids {default} to {candidates[-1]} are all taken; give one with --job-id")


def _holder(root: Root, job_id: str) -> str | None:
    """The URL of what already holds `job_id` (its job folder, an inbox file that will run under it,
    or another submit's record, uploading still or interrupted); None when the id is free."""
    if root.storage.exists(root.job_key(job_id)):
        return root.storage.url(root.job_key(job_id))
    for name in root.inbox_files():
        if job_id_from_name(name) == job_id:
            return root.storage.url(root.inbox_key(name))
    if root.storage.exists(root.submission(job_id)):
        return root.storage.url(root.submission(job_id))
    return None


def _submission(spec: JobSpec, data: bytes, source: str, root: Root, job_id: str, job_path: str,
                progress: Progress) -> dict[str, Any]:
    """Where the job's data is, as the controller reads it (`uploaded`: a local JSONL file and its
    images copied under uploads/<job_id>/ for a remote root; a path made absolute for a local one),
    with the job file it holds for: its source and the sha256 of its bytes."""
    data_urls: dict[str, str] = {}
    for field_name in ("training_data", "validation_data"):
        reference = getattr(spec, field_name)
        if reference is None:
            continue
        url = resolve(reference, source)
        if not is_url(url) and not root.storage.is_local:
            url = _upload_data(url, root, job_id, field_name, job_path, progress)
        data_urls[field_name] = url
    return {"source": source, "status": "submitted", "job_file_sha256": hashlib.sha256(data).hexdigest(),
            "data": data_urls, "submitted_at": time.time()}


def _local_jsonl(path: str, field_name: str, job_path: str) -> str:
    """The JSONL file of local data `path`: `path` itself, or the file an MLTable folder lists (a
    JobSpecError names what makes its MLTable unreadable)."""
    problems = Problems(ValueError)
    jsonl_path = mltable.data_file(path, problems)
    if jsonl_path is None:
        raise JobSpecError(job_path, problems.items)
    return jsonl_path


def _local_images(jsonl_path: str, field_name: str, job_path: str) -> list[str]:
    """The images a local JSONL file names by a relative path, which submit uploads beside it; a
    JobSpecError names every line that a remote trial could not read its image from."""
    if not os.path.exists(jsonl_path):
        raise JobSpecError(job_path, [Problem(job_path, field_name, f"{jsonl_path} does not exist")])
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
    return images


def _upload_data(path: str, root: Root, job_id: str, field_name: str, job_path: str, progress: Progress) -> str:
    """Upload local data: a JSONL file and its images, or an MLTable folder (its MLTable file, and its
    JSONL file and images when they are local); returns the URL the trials read it from."""
    jsonl_path = _local_jsonl(path, field_name, job_path)
    if jsonl_path == path:
        return _upload_jsonl(jsonl_path, root, job_id, field_name, job_path, progress)
    prefix = join(root.upload_prefix(job_id), field_name)
    folder = path[:-len(mltable.MLTABLE)].rstrip("/") if os.path.basename(path) == mltable.MLTABLE else path
    if not is_url(jsonl_path):
        # the MLTable's relative path to its JSONL file holds: the file keeps its place in the folder
        relative = os.path.relpath(os.path.dirname(jsonl_path), folder).replace(os.sep, "/")
        _upload_jsonl(jsonl_path, root, job_id, join(field_name, relative) if relative != "." else field_name,
                      job_path, progress)
    root.storage.upload_file(os.path.join(folder, mltable.MLTABLE), join(prefix, mltable.MLTABLE))
    return root.storage.url(prefix)


def _upload_jsonl(jsonl_path: str, root: Root, job_id: str, field_name: str, job_path: str,
                  progress: Progress) -> str:
    """Upload a local JSONL file and the images it references, under `uploads/<job_id>/<field_name>/`;
    returns the JSONL's new URL."""
    base = os.path.dirname(jsonl_path)
    images = _local_images(jsonl_path, field_name, job_path)
    prefix = join(root.upload_prefix(job_id), field_name)
    files = sorted(set(images))
    done = 0

    def upload(relative: str) -> None:
        local = os.path.normpath(os.path.join(base, relative))
        # Real paths: a symbolic link in the data folder must not upload a file from outside it.
        if os.path.commonpath([os.path.realpath(local), os.path.realpath(base)]) != os.path.realpath(base):
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
    """The job file's spec, once its data files exist and parse (the cheap part of the data check)."""
    check_file_size(os.path.getsize(job_path), job_path)  # a huge file is never read
    with open(job_path, "rb") as f:
        spec = parse_job_bytes(f.read(), job_path)
    report = check_data(spec, os.path.abspath(job_path), images=False)
    if not report.ok:
        raise JobSpecError(job_path, report.problems())
    return spec


def check_data(spec: JobSpec, source: str, images: bool = True) -> datacheck.Report:
    """core/datacheck.py's check of a job's data, its paths relative to the job file `source`."""
    from automl_images.core import datacheck

    return datacheck.check(data_files(spec, source), images=images)


def data_files(spec: JobSpec, source: str) -> datacheck.DataFiles:
    """The data a job's trials will read: its files resolved against the job file `source`, its
    datastores and label settings, and the split that the trials share without validation data."""
    from automl_images.core import datacheck

    return datacheck.DataFiles(
        task=spec.task, training_data=resolve(spec.training_data, source),
        validation_data=resolve(spec.validation_data, source) if spec.validation_data else None,
        datastores=spec.datastores, lenient_labels=spec.lenient_labels,
        allow_private_image_urls=spec.allow_private_image_urls, split_ratio=split_ratio(spec), seed=spec.seed)


def split_ratio(spec: JobSpec) -> float:
    """The job's split_ratio (it cannot be sampled): its fixed argument, a subspace's constant, or
    the registry's default."""
    constants = [spec.arguments] + list(spec.search_space) + list(spec.defaults.values())
    return float(next((c["split_ratio"] for c in constants if "split_ratio" in c),
                      HYPERPARAMETERS["split_ratio"].default))
