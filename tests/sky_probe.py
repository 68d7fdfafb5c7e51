"""Runs SkyPilot itself, offline, on tasks the tests hand it; one process for the whole batch.

    python tests/sky_probe.py cases.json results.json     (HOME must be a fresh temporary folder)

SkyPilot computes its catalog folder from HOME when it is imported, so this runs in a process of
its own with HOME pointing at a temporary folder: the hand-written catalog of
tests/fixtures/sky_catalog is copied there, and AWS is recorded as enabled, as `sky check` would
after checking credentials. For each case it reports what SkyPilot's `Task.from_yaml_config` says,
what our checks say, our CatalogPricer's plan, and SkyPilot's optimizer's choice (run in this
process, as the API server runs it). No network: the catalog is local, usage collection is off.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import traceback
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "sky_catalog"


def install_catalog() -> None:
    from sky.skylet import constants

    target = Path(os.environ["HOME"]) / ".sky" / "catalogs" / constants.CATALOG_SCHEMA_VERSION
    for csv in FIXTURE.rglob("*.csv"):
        destination = target / csv.relative_to(FIXTURE)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(csv, destination)


def enable_aws() -> None:
    """What a passing `sky check aws` leaves in SkyPilot's state database."""
    from sky.clouds import cloud

    from sky import check, global_user_state, skypilot_config

    workspace = skypilot_config.get_active_workspace()
    global_user_state.set_allowed_clouds(check._get_workspace_allowed_clouds(workspace), workspace)
    global_user_state.set_enabled_clouds(["AWS"], cloud.CloudCapability.COMPUTE, workspace)


def optimizer_choice(task_config: dict) -> dict:
    from sky.utils import resources_utils

    import sky

    task = sky.Task.from_yaml_config(copy.deepcopy(task_config))  # it consumes its argument
    with sky.Dag() as dag:
        dag.add(task)
    sky.Optimizer.optimize(dag, minimize=sky.OptimizeTarget.COST, quiet=True)
    best = dag.tasks[0].best_resources
    return {"cloud": str(best.cloud).lower(), "instance_type": best.instance_type, "region": best.region,
            "use_spot": best.use_spot, "accelerators": best.accelerators,
            "hourly_usd": best.get_cost(3600) * task.num_nodes,
            # How the jobs queue shows the machine (sky/jobs/utils.py writes cluster_resources_full so).
            "cluster_resources_full": f"{task.num_nodes}x" + resources_utils.format_resource(best)[1]}


def probe(case: dict) -> dict:
    from automl_images.controller.launch import skypilot, template

    import sky

    out: dict = {"problems": template.check(case["task"], tuple(case.get("required_envs", ["SPEC_URL"])))}
    try:
        sky.Task.from_yaml_config(copy.deepcopy(case["task"]))
        out["valid"] = True
    except Exception as exc:  # noqa: BLE001 - reported to the test
        out["valid"], out["error"] = False, f"{type(exc).__name__}: {exc}"
        return out
    if case.get("price"):
        plan = skypilot.CatalogPricer().plan(case["task"])
        out["plan"] = None if plan is None else plan.__dict__
        try:
            out["optimizer"] = optimizer_choice(case["task"])
        except Exception as exc:  # noqa: BLE001
            out["optimizer_error"] = f"{type(exc).__name__}: {exc}"
        if "optimizer" in out:
            nodes, spot, instance = skypilot.parse_resources(out["optimizer"]["cluster_resources_full"])
            out["parsed"] = {"nodes": nodes, "use_spot": spot, "instance_type": instance}
            record = skypilot.Record(job_id=1, name="x", status="RUNNING", instance_type=instance, use_spot=spot,
                                     nodes=nodes, cloud=out["optimizer"]["cloud"], region=out["optimizer"]["region"])
            out["instance_hourly_usd"] = skypilot.CatalogPricer().instance(record)
    return out


def meta() -> dict:
    """The names SkyPilot knows, to compare with the lists in controller/spec.py."""
    from sky.utils import registry

    import sky

    return {"common_gpus": sky.catalog.get_common_gpus(),
            "recovery_strategies": sorted(registry.JOBS_RECOVERY_STRATEGY_REGISTRY),
            "clouds": sorted(registry.CLOUD_REGISTRY), "catalog_version": _catalog_version(),
            "job_statuses": [s.value for s in sky.ManagedJobStatus],
            "terminal_statuses": [s.value for s in sky.ManagedJobStatus.terminal_statuses()]}


def _catalog_version() -> str:
    from sky.skylet import constants

    return constants.CATALOG_SCHEMA_VERSION


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    install_catalog()
    enable_aws()
    results = {"meta": meta()}
    for name, case in cases.items():
        try:
            results[name] = probe(case)
        except Exception:  # noqa: BLE001
            results[name] = {"crash": traceback.format_exc()}
    Path(sys.argv[2]).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
