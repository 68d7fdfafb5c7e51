"""Warm start: the finished trials of earlier jobs seed a job's Bayesian sampler.

    sampling: bayesian
    warm_start: [fridge-sweep-1, fridge-sweep-2]     # AzureML HyperDrive's `resume_from` is accepted

When the job is first reconciled, the controller reads the named jobs from the same root (the
spec each was accepted with, and their finished trials), keeps every trial that produced the
primary metric and fits this job's space, and saves the seeds once in
`jobs/<job_id>/warm_start.json` (a conditional create): the sampler then reads them as part of the
history on every ask, so proposals stay a function of what is saved in the bucket. A trial fits a
subspace when

- the earlier job has the same task and primary metric (else its values mean something else),
- each hyperparameter the subspace samples has a value the subspace's distribution can produce
  (the Bayesian optimizer's view of it: a choice's values, a range, a q-step), and
- with those values this job would run exactly the trial's hyperparameters: the subspace's
  constants, the fixed arguments and the defaults agree (a trial of 30 epochs does not seed a
  search over 5-epoch trials).

The first subspace it fits takes it; trials that fit none are counted in the file and left out.
Seeds count towards `n_initial_points` and the subspace choice like the job's own trials.
"""
from __future__ import annotations

from typing import Any, Callable

from automl_images.core import trials
from automl_images.core.layout import Root
from automl_images.core.storage import InvalidJSON, json_bytes

from . import accepted
from .distributions import Distribution
from .search.axes import axis
from .search.base import Observation
from .spec import JobSpec, JobSpecError


def fits(spec: JobSpec, subspace: int, values: dict[str, Any]) -> dict[str, Any] | None:
    """The params that subspace `subspace` of `spec` would propose to run exactly `values` (a
    trial's resolved hyperparameters), or None when it cannot."""
    space = spec.search_space[subspace]
    params = {}
    for name, dist in sorted(space.items()):
        if not isinstance(dist, Distribution):
            continue
        if name not in values:
            return None
        searched = axis(name, dist)
        inside = searched.encode(values[name]) is not None if searched.dimension is not None else \
            searched.fixed == values[name]
        if not inside:
            return None
        params[name] = values[name]
    try:
        resolved = spec.trial_hyperparameters(subspace, params)
    except ValueError:
        return None
    return params if resolved == values else None


def collect(root: Root, spec: JobSpec) -> dict[str, Any]:
    """The seeds of `spec.warm_start`, as warm_start.json holds them."""
    seeds, notes = [], []
    for source in spec.warm_start:
        try:
            earlier = accepted.load(root, source)
        except (FileNotFoundError, JobSpecError) as exc:
            notes.append(f"{source}: not usable ({type(exc).__name__}: {str(exc)[:200]})")
            continue
        if earlier.task is not spec.task or earlier.primary_metric != spec.primary_metric:
            notes.append(f"{source}: {earlier.task.value} / {earlier.primary_metric}, not "
                         f"{spec.task.value} / {spec.primary_metric}: no trial used")
            continue
        used = unfit = 0
        for trial in trials.read_finished(root, source):
            value = trial.primary(spec.primary_metric)
            if value is None or value != value:  # no metric, or NaN
                continue
            try:
                values = earlier.trial_hyperparameters(trial.sweep.get("subspace", 0), trial.params)
            except (ValueError, IndexError, KeyError):
                unfit += 1
                continue
            for subspace in range(len(spec.search_space)):
                params = fits(spec, subspace, values)
                if params is not None:
                    seeds.append({"job_id": source, "trial_id": trial.trial_id, "subspace": subspace,
                                  "params": params, "value": value})
                    used += 1
                    break
            else:
                unfit += 1
        notes.append(f"{source}: {used} trial(s) used, {unfit} outside this job's space")
    return {"seeds": seeds, "notes": notes}


def seeds(root: Root, job_id: str, spec: JobSpec, log: Callable[[str], None]) -> list[Observation]:
    """The job's seeds: gathered from the earlier jobs on first use and saved, then read back, so
    that every controller of the job (and every restart) seeds its sampler with the same trials."""
    key = root.warm_start(job_id)
    try:
        saved = root.storage.read_json(key)
    except InvalidJSON as exc:
        # Torn: gathered again from the earlier jobs, which are finished, so the same seeds come back.
        log(f"job {job_id}: {exc}; gathering the warm-start seeds again")
        root.storage.write_json(key, collect(root, spec))
        saved = root.storage.read_json(key)
    if saved is None:
        collected = collect(root, spec)
        root.storage.create_exclusive(key, json_bytes(collected))
        saved = root.storage.read_json(key)
        log(f"job {job_id}: warm start from {len(saved['seeds'])} earlier trial(s): " + "; ".join(saved["notes"]))
    return observations(saved)


def observations(saved: dict[str, Any] | None) -> list[Observation]:
    return [Observation(s["subspace"], s["params"], s["value"], f"{s['job_id']}/{s['trial_id']}")
            for s in (saved or {}).get("seeds", [])]
