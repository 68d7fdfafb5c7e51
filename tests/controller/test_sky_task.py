"""The SkyPilot tasks we generate, checked by SkyPilot itself (offline, in one subprocess: see
tests/sky_probe.py) and by our own checks for what SkyPilot lets through; prices and the
optimizer's choice of machine from a hand-written catalog (tests/fixtures/sky_catalog)."""
from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TESTS

from automl_images.controller import spec as spec_module
from automl_images.controller.launch import template
from automl_images.controller.launch.extras import skypilot_installed
from automl_images.controller.spec import parse_job

if not skypilot_installed():  # not importorskip: sky/ in this checkout would import
    pytest.skip("SkyPilot is not installed: pip install 'automl-images[skypilot]'", allow_module_level=True)

IMAGE = "ghcr.io/you/automl-images-trainer:0.1.0"
SPEC_URL = "s3://my-bucket/automl/jobs/sweep/trials/t0000/spec.json"


def compute(text: str):
    job = f"task: image-classification\ntraining_data: t.jsonl\ncompute:\n  launcher: skypilot\n  image: {IMAGE}\n"
    return parse_job(job + text, "job.yaml").compute


def trial(text: str, **kwargs) -> dict:
    return template.trial_task(compute(text), "sweep-t0000", SPEC_URL, **kwargs)


def sky_environment(home: Path) -> dict[str, str]:
    """SkyPilot offline: a fresh HOME, no usage reports, no local API server, an endpoint nobody
    listens on, and no AWS credentials (the catalog is then used as written, without AWS's zone
    mapping, which would need an account)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "SKYPILOT_"))}
    env.update(HOME=str(home), SKYPILOT_DISABLE_USAGE_COLLECTION="1", SKYPILOT_DISABLE_LOCAL_API_SERVER="1",
               SKYPILOT_API_SERVER_ENDPOINT=f"http://127.0.0.1:{port}")
    return env


GENERATED = {
    "ordered": trial("  clouds: [aws]\n  accelerators: [A10G:1, L4:1]\n"),
    "any_of": trial("  clouds: [aws]\n  accelerators: [A10G:1, L4:1]\n  fallback: any_of\n"),
    "region_fallback": trial("  clouds: [aws]\n  accelerators: [V100:1, A10G:1]\n  regions: [us-west-2]\n"),
    "on_demand": trial("  clouds: [aws]\n  accelerators: [A10G:1]\n  use_spot: false\n"),
    "two_clouds": trial("  clouds: [aws, gcp]\n  accelerators: [A10G:1, L4:1]\n"
                        "  regions: [aws/us-east-1, gcp/us-central1]\n"),
    "eight_gpus": trial("  clouds: [gcp]\n  accelerators: [A100:8]\n"
                        "  job_recovery: {strategy: FAILOVER, max_restarts_on_errors: 0}\n"),
    "cpu_only": trial("  clouds: [aws]\n  disk_size: 50\n"),
    "secrets": trial("  clouds: [aws]\n  accelerators: [L4]\n  secrets: [R2_SECRET_ACCESS_KEY]\n",
                     secrets={"R2_SECRET_ACCESS_KEY": "value-for-skypilot-only"}),
}
PRICED = ("ordered", "any_of", "region_fallback", "on_demand")


def _variant(**resources) -> dict:
    task = copy.deepcopy(GENERATED["ordered"])
    task["resources"].update(resources)
    return task


# Tasks that SkyPilot's client-side validation accepts, each with one thing we refuse.
LET_THROUGH = {
    "strategy_typo": _variant(job_recovery={"strategy": "NEXT_REGION", "max_restarts_on_errors": 2}),
    "accelerator_typo": _variant(ordered=[{"accelerators": "A10g-typo:1", "infra": "aws"}]),
    "accelerator_not_in_the_image": _variant(ordered=[{"accelerators": "K80:1", "infra": "aws"}]),
    "image_not_a_reference": _variant(image_id="docker:Not A Reference!"),
    "image_not_docker": _variant(image_id="ubuntu:22.04"),
}


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("sky-probe")
    cases = {f"generated/{name}": {"task": task, "price": name in PRICED} for name, task in GENERATED.items()}
    cases.update({f"through/{name}": {"task": task} for name, task in LET_THROUGH.items()})
    cases["template/trial"] = {"task": template.load()}
    cases["template/trial_rendered"] = {"task": template.trial_task(compute("  clouds: [aws]\n"), "x-t0000", SPEC_URL)}
    controller = template.load(template.CONTROLLER_TEMPLATE)
    cases["template/controller"] = {"task": dict(controller, envs={"AUTOML_IMAGES_ROOT": "s3://b/automl"}),
                                    "required_envs": ["AUTOML_IMAGES_ROOT"], "price": True}
    (folder / "cases.json").write_text(json.dumps(cases))
    result = subprocess.run([sys.executable, str(TESTS / "sky_probe.py"), str(folder / "cases.json"),
                             str(folder / "results.json")], env=sky_environment(folder / "home"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads((folder / "results.json").read_text())
    crashed = {name: r["crash"] for name, r in results.items() if "crash" in r}
    assert not crashed, crashed
    return results


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_every_generated_task_is_valid_for_skypilot_and_for_us(probe, name):
    result = probe[f"generated/{name}"]
    assert result["valid"], result.get("error")
    assert result["problems"] == []


def test_trial_template(probe):
    # As written, SkyPilot refuses it until SPEC_URL is given, and our check also refuses the image
    # placeholder, which SkyPilot would have let through.
    raw = probe["template/trial"]
    assert not raw["valid"] and "SPEC_URL" in raw["error"]
    assert raw["problems"] == [
        "envs.SPEC_URL is not set",
        "resources.image_id: 'docker:<your-registry>/automl-images-trainer:0.1.0' is not a valid docker image reference"]
    rendered = probe["template/trial_rendered"]
    assert rendered["valid"] and rendered["problems"] == []
    task = template.load()
    assert task["api_server_access"] is False  # trials get no API server credentials
    assert "exec automl-images trial run \"$SPEC_URL\"" in task["run"]
    assert "torchrun" in task["run"] and "SKYPILOT_NUM_GPUS_PER_NODE" in task["run"]


def test_controller_template_runs_on_a_small_cpu_spot_machine(probe):
    result = probe["template/controller"]
    assert result["valid"], result.get("error")
    assert result["problems"] == ["resources.image_id: 'docker:<your-registry>/automl-images-controller:0.1.0' "
                                  "is not a valid docker image reference"]
    assert result["optimizer"]["instance_type"] == "m6i.large" and result["optimizer"]["use_spot"] is True
    assert result["optimizer"]["accelerators"] is None
    assert "automl-images controller --root \"$AUTOML_IMAGES_ROOT\"" in template.load(template.CONTROLLER_TEMPLATE)["run"]


@pytest.mark.parametrize("name", sorted(LET_THROUGH))
def test_what_skypilot_lets_through_our_checks_refuse(probe, name):
    result = probe[f"through/{name}"]
    assert result["valid"], f"SkyPilot now refuses {name} itself: {result.get('error')}"
    assert len(result["problems"]) == 1, result["problems"]


def test_our_name_lists_are_skypilots(probe):
    meta = probe["meta"]
    assert list(spec_module.SKY_ACCELERATORS) == meta["common_gpus"]
    assert sorted(s.lower() for s in spec_module.SKY_RECOVERY_STRATEGIES) == meta["recovery_strategies"]
    assert set(spec_module.SKY_CLOUDS) <= set(meta["clouds"])
    # The fixture catalog sits where this SkyPilot looks for it.
    assert meta["catalog_version"] == "v8"


def test_every_managed_job_status_has_a_run_state(probe):
    from automl_images.controller.launch import skypilot

    assert set(probe["meta"]["job_statuses"]) == set(skypilot.STATES)
    assert set(probe["meta"]["terminal_statuses"]) == skypilot.TERMINAL
    assert all(skypilot.STATES[s].is_terminal() for s in skypilot.TERMINAL)
    assert not any(skypilot.STATES[s].is_terminal() for s in set(skypilot.STATES) - skypilot.TERMINAL)


# (instance type, region, spot, $/hour) the fixture catalog makes the one right answer.
EXPECTED = {
    "ordered": ("g5.xlarge", "us-west-2", True, 0.38),          # A10G first, in its cheapest region
    "any_of": ("g6.xlarge", "us-west-2", True, 0.28),           # the cheapest of A10G and L4: L4
    "region_fallback": ("g5.xlarge", "us-west-2", True, 0.38),  # no V100 in us-west-2: the next choice
    "on_demand": ("g5.xlarge", "us-east-1", False, 1.006),
}


@pytest.mark.parametrize("name", PRICED)
def test_price_is_that_of_the_machine_the_optimizer_picks(probe, name):
    result = probe[f"generated/{name}"]
    instance, region, spot, hourly = EXPECTED[name]
    optimizer = result["optimizer"]
    assert (optimizer["instance_type"], optimizer["region"], optimizer["use_spot"]) == (instance, region, spot)
    assert optimizer["hourly_usd"] == pytest.approx(hourly)
    assert result["plan"] == {"hourly_usd": pytest.approx(hourly), "cloud": "aws", "instance_type": instance,
                              "region": region, "use_spot": spot}
    # The queue names the machine as SkyPilot formats it; our parser reads it back, and the
    # catalog prices it the same.
    assert result["parsed"] == {"nodes": 1, "use_spot": spot, "instance_type": instance}
    assert result["instance_hourly_usd"] == pytest.approx(hourly)
