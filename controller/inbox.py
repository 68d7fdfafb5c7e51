"""Acceptance: a job file taken from the inbox, validated once, and saved as a job.

    <root>/inbox/fridge.yaml  ─►  jobs/fridge/job.yaml     the user's bytes, as they were
                                  jobs/fridge/spec.json    the validated spec (accepted.py)
                                  jobs/fridge/data_check.json  check-data's report on its data
                                  jobs/fridge/split.json   the validation split, without validation data
                                  jobs/fridge/state.json   running, or rejected with error.json

Each step is written before the next, and repeating them after a crash finishes the move: the job
file is a conditional create, the spec is written again (the same), the state is a conditional
create, and the inbox file is deleted last.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable

from automl_images.core.layout import Root, job_id_from_name
from automl_images.core.problems import Problem
from automl_images.core.storage import InvalidJSON, Storage, json_bytes, resolve

from . import accepted
from .job_state import JobStates
from .launch.extras import TRAINER_INSTALL, trainer_installed
from .spec import JobSpec, JobSpecError, parse_job_bytes
from .submit import check_data


def accept(root: Root, name: str, states: JobStates, log: Callable[[str], None], now: float) -> str | None:
    """Take inbox file `name`; returns the job's id (None when the file is gone: another
    controller took it)."""
    def settle(job_id: str, data: bytes) -> None:
        try:
            spec = _validated(root, data, root.storage.url(root.inbox_key(name)), _submitted_data(root, job_id, data))
            _check_data(root, job_id, spec, root.storage.url(root.inbox_key(name)))
        except JobSpecError as exc:
            states.reject(job_id, exc)
            log(f"job {job_id}: rejected\n{exc}")
        else:
            accepted.save(root, job_id, spec)
            states.accept(job_id, spec.name or job_id, name)
            log(f"job {job_id}: accepted ({spec.task.value}, {spec.sampling} sampling, "
                f"{spec.limits.max_trials} trials, {spec.limits.max_concurrent_trials} at a time)")

    return _move(root, name, states, lambda data: _job_id_for(root, name, data, now), settle)


def cancel(root: Root, name: str, job_id: str, states: JobStates) -> bool:
    """Cancel inbox file `name` before any controller accepted it (`automl-images cancel`): moved
    as acceptance moves it, with the state `cancelled`. False when a controller took it first
    (the job is then cancelled as a running one)."""
    cancelled: list[bool] = []
    _move(root, name, states, lambda data: job_id,
          lambda job_id, data: cancelled.append(states.cancel_queued(job_id, name)))
    return any(cancelled)


def _move(root: Root, name: str, states: JobStates, job_id_for: Callable[[bytes], str],
          settle: Callable[[str, bytes], None]) -> str | None:
    """The user's bytes to jobs/<id>/job.yaml, then `settle` writes the first state (unless a
    state is there: a repeat after a crash, or another controller), then the inbox file goes.
    Returns the job id; None when the file is gone."""
    storage, key = root.storage, root.inbox_key(name)
    try:
        data = storage.read_bytes(key)
    except FileNotFoundError:
        return None
    job_id = job_id_for(data)
    job_file = root.job_file(job_id)
    if not storage.create_exclusive(job_file, data) and storage.read_bytes(job_file) != data:
        # never lose the user's bytes: the inbox file stays
        raise FileExistsError(f"{storage.url(job_file)} holds another job file; {storage.url(key)} is left as it is")
    if states.read(job_id) is None:
        settle(job_id, data)
    storage.delete(key)
    return job_id


def _job_id_for(root: Root, name: str, data: bytes, now: float) -> str:
    """The file's name as id; when another job already has that name, the name plus a hash of
    the content, so the same file always maps to the same job."""
    base = job_id_from_name(name)
    # `submit` refuses taken ids, so this renames only files dropped by hand (or a race with one);
    # the base is cut so that the renamed id is still a job id (layout.JOB_ID).
    for candidate in (base, f"{base[:54]}-{hashlib.sha256(data).hexdigest()[:8]}"):
        try:
            existing = root.storage.read_bytes(root.job_file(candidate))
        except FileNotFoundError:
            return candidate
        if existing == data:
            return candidate
    return f"{base[:54]}-{hashlib.sha256(data + str(now).encode()).hexdigest()[:8]}"


def _check_data(root: Root, job_id: str, spec: JobSpec, source: str) -> None:
    """The whole data check (core/datacheck.py), its report kept in the job folder; JobSpecError with
    its errors when training would fail. Without validation data, the split every trial will use is
    written once (a repeat after a crash finds it there)."""
    report = check_data(spec, source)
    root.storage.write_json(root.data_check(job_id), report.to_json())
    if not report.ok:
        raise JobSpecError(source, report.problems())
    split = report.split_json()
    if split is not None:
        root.storage.create_exclusive(root.job_split(job_id), json_bytes(split))


def _submitted_data(root: Root, job_id: str, data: bytes) -> dict[str, str]:
    """Where `submit` put the data of the job file `data` (its submission record); empty for a file
    dropped into the inbox by hand, or one that is not the file submitted under this id."""
    try:
        record = root.storage.read_json(root.submission(job_id))
    except InvalidJSON:
        return {}
    if not isinstance(record, dict) or record.get("job_file_sha256") != hashlib.sha256(data).hexdigest():
        return {}
    return {k: v for k, v in (record.get("data") or {}).items() if isinstance(v, str)}


def _validated(root: Root, data: bytes, source: str, submitted: dict[str, str]) -> JobSpec:
    """The job file's spec, its data paths made absolute (where submit put them; otherwise relative
    ones are relative to the job file) and checked, and its warm-start jobs found."""
    spec = parse_job_bytes(data, source)
    spec = dataclasses.replace(
        spec, training_data=submitted.get("training_data") or resolve(spec.training_data, source),
        validation_data=(submitted.get("validation_data") or resolve(spec.validation_data, source))
        if spec.validation_data else None)
    problems = []
    for field_name in ("training_data", "validation_data"):
        url = getattr(spec, field_name)
        if url is None:
            continue
        folder, _, file_name = url.rpartition("/")
        if not Storage(folder or "/").exists(file_name):
            problems.append(Problem(source, field_name, f"{url} does not exist"))
    problems += [Problem(source, f"warm_start[{i}]", f"no job {job!r} in {root.url}")
                 for i, job in enumerate(spec.warm_start) if not root.storage.exists(root.job_state(job))]
    if spec.compute.launcher == "local" and not trainer_installed():
        # The local launcher runs the trials on the machine of the controller accepting the job.
        problems.append(Problem(source, "compute.launcher", f"local runs the trials on this controller's machine, "
                                                            f"which has no trainer: {TRAINER_INSTALL} there, "
                                                            "or use launcher: skypilot"))
    if problems:
        raise JobSpecError(source, problems)
    return spec
