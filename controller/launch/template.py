"""sky/trial.yaml, the one description of what a trial runs, read by both launchers.

The SkyPilot launcher sends the whole task, its `resources` rebuilt from the job's `compute:`
section; the local launcher runs only its `run` script, with SPEC_URL set, so the command the
cloud runs is the command the tests run here. Plain data in and out: nothing here imports SkyPilot.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from ..spec import (
    DOCKER_REFERENCE,
    SKY_ACCELERATORS,
    SKY_FALLBACKS,
    SKY_RECOVERY_STRATEGIES,
    Compute,
)

# sky/ sits next to controller/ in the repository and is installed next to it as automl_images/sky.
TRIAL_TEMPLATE = Path(__file__).resolve().parents[2] / "sky" / "trial.yaml"
CONTROLLER_TEMPLATE = TRIAL_TEMPLATE.with_name("controller.yaml")
SPEC_URL_ENV = "SPEC_URL"


def load(path: Path = TRIAL_TEMPLATE) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def run_script(template: dict[str, Any] | None = None) -> str:
    """The trial's `run` script: bash, reading $SPEC_URL."""
    return (template or load())["run"]


def resources(compute: Compute) -> dict[str, Any]:
    """The job's `compute:` as SkyPilot `resources`: one entry per accelerator and place, in the
    order given, under `ordered` (tried in that order) or `any_of` (the cheapest first)."""
    out: dict[str, Any] = {
        "image_id": f"docker:{compute.image}",
        "use_spot": compute.use_spot,
        "disk_size": compute.disk_size,
        "job_recovery": {"strategy": compute.job_recovery.strategy,
                         "max_restarts_on_errors": compute.job_recovery.max_restarts_on_errors},
    }
    # A cloud with regions of its own is those regions; one without is any of its regions.
    places = list(compute.regions) + [c for c in compute.clouds
                                      if not any(r.startswith(c + "/") for r in compute.regions)]
    choices = []
    for accelerator in compute.accelerators or (None,):
        for place in places or (None,):
            choice = {}
            if accelerator:
                choice["accelerators"] = accelerator
            if place:
                choice["infra"] = place
            choices.append(choice)
    if len(choices) == 1:
        out.update(choices[0])
    else:
        out[compute.fallback] = choices
    return out


def trial_task(compute: Compute, name: str, spec_url: str, secrets: dict[str, str] | None = None,
               template: dict[str, Any] | None = None) -> dict[str, Any]:
    """The SkyPilot task (a YAML mapping) that runs one trial."""
    task = copy.deepcopy(template or load())
    task["name"] = name
    task["resources"] = resources(compute)
    task["envs"] = {**(task.get("envs") or {}), SPEC_URL_ENV: spec_url}
    if secrets:
        task["secrets"] = dict(secrets)
    return task


def secrets_from_environment(compute: Compute, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The values of `compute.secrets`, from the controller's environment, for SkyPilot to hand to
    the trial. The error names what is missing, never a value."""
    environ = os.environ if environ is None else environ
    missing = [name for name in compute.secrets if not environ.get(name)]
    if missing:
        raise ValueError(f"compute.secrets names {', '.join(missing)}, which the controller's environment "
                         "does not set")
    return {name: environ[name] for name in compute.secrets}


def check(task: dict[str, Any], required_envs: tuple[str, ...] = (SPEC_URL_ENV,)) -> list[str]:
    """What SkyPilot's own validation lets through and we refuse: unknown recovery strategies and
    accelerators, images that are not `docker:` references, required envs left unset. Empty when
    the task is fine."""
    problems = []
    res = task.get("resources") or {}
    entries = [res] + [dict(res, **e) for key in SKY_FALLBACKS for e in (res.get(key) or [])]
    for entry in entries:
        image = entry.get("image_id")
        if image is not None:
            if not isinstance(image, str) or not image.startswith("docker:"):
                problems.append(f"resources.image_id: {image!r} is not a docker: image")
            elif not DOCKER_REFERENCE.fullmatch(image[len("docker:"):]):
                problems.append(f"resources.image_id: {image!r} is not a valid docker image reference")
        accelerators = entry.get("accelerators")
        for accelerator in ([accelerators] if isinstance(accelerators, str) else accelerators or []):
            name, _, count = str(accelerator).partition(":")
            if name not in SKY_ACCELERATORS or (count and not count.isdigit()):
                problems.append(f"resources.accelerators: {accelerator!r} is not one of {', '.join(SKY_ACCELERATORS)}"
                                " with a whole count")
        recovery = entry.get("job_recovery")
        strategy = recovery.get("strategy") if isinstance(recovery, dict) else recovery
        if recovery is not None and strategy not in SKY_RECOVERY_STRATEGIES:
            problems.append(f"resources.job_recovery.strategy: {strategy!r} is not one of "
                            f"{', '.join(SKY_RECOVERY_STRATEGIES)}")
    for name in required_envs:
        if not (task.get("envs") or {}).get(name):
            problems.append(f"envs.{name} is not set")
    return sorted(set(problems))
