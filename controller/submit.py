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
from automl_images.core.layout import Root, job_id_from_name, job_id_problem
from automl_images.core.problems import Problem, Problems
from automl_images.core.storage import Storage, is_url, join, resolve

from .spec import JobSpec, JobSpecError, check_file_size, parse_job_bytes

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
    default = new_job_id(job_path)
    candidates = [job_id] if job_id else [default] + [f"{default}-{n}" for n in range(2, _DEFAULT_ID_TRIES + 1)]
    for candidate in candidates:
        holder = _holder(root, candidate)
        if holder is None:
            text = _inbox_text(spec, data, source, root, candidate, job_path, progress)
            # The create is the reservation: of two submits that both found the id free, one gets it.
            if root.storage.create_exclusive(root.inbox_key(f"{candidate}.yaml"), text.encode("utf-8")):
                return candidate
            holder = root.storage.url(root.inbox_key(f"{candidate}.yaml"))
        if job_id:
            raise JobIdError(f"job id {job_id!r} is taken: {holder} exists; choose another --job-id")
    raise JobIdError(f"job ids {default} to {candidates[-1]} are all taken; give one with --job-id")


def _holder(root: Root, job_id: str) -> str | None:
    """The URL of what already holds `job_id` (its job folder, or an inbox file that will run
    under it); None when the id is free."""
    if root.storage.exists(root.job_key(job_id)):
        return root.storage.url(root.job_key(job_id))
    for name in root.inbox_files():
        if job_id_from_name(name) == job_id:
            return root.storage.url(root.inbox_key(name))
    return None


def _inbox_text(spec: JobSpec, data: bytes, source: str, root: Root, job_id: str, job_path: str,
                progress: Progress) -> str:
    """The job file as the inbox gets it: local data uploaded under `job_id` when the root is
    remote, and its paths made absolute."""
    text = data.decode("utf-8")
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
    if not replacements:
        return text
    loaded = yaml.safe_load(text)
    loaded.update(replacements)
    return f"# submitted from {source} by automl-images submit\n" + yaml.safe_dump(loaded, sort_keys=False)


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
    check_file_size(os.path.getsize(job_path), job_path)  # a huge file is never read
    with open(job_path, "rb") as f:
        return parse_job_bytes(f.read(), job_path)
