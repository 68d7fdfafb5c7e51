"""The job file's `compute:` section for the skypilot launcher: what it maps to, and what is refused
with the field, its line and what is allowed (our checks for what SkyPilot itself lets through)."""
from __future__ import annotations

import importlib.metadata

import pytest
from conftest import REPO

from automl_images.controller.launch import template
from automl_images.controller.spec import Compute, JobRecovery, JobSpecError, parse_job

BASE = "task: image-classification\ntraining_data: train.jsonl\ncompute:\n  launcher: skypilot\n"
IMAGE = "  image: ghcr.io/you/automl-images-trainer:0.1.0\n"
CLOUDS = "  clouds: [aws]\n"


def compute(text: str) -> Compute:
    return parse_job(BASE + text, "job.yaml").compute


def problems(text: str) -> dict[str, str]:
    with pytest.raises(JobSpecError) as info:
        parse_job(BASE + text, "job.yaml")
    return {p.field: f"{p.line}: {p.message}" for p in info.value.problems}


def test_the_issue_example_maps_onto_the_fields():
    got = compute("""\
  accelerators: [A10G:1, L4:1]
  use_spot: true
  clouds: [aws, gcp]
  regions: [aws/us-east-1, aws/us-west-2]
  disk_size: 100
  image: ghcr.io/you/automl-images-trainer:0.1.0
  job_recovery: {strategy: EAGER_NEXT_REGION, max_restarts_on_errors: 2}
""")
    assert got == Compute(launcher="skypilot", accelerators=("A10G:1", "L4:1"), use_spot=True,
                          clouds=("aws", "gcp"), regions=("aws/us-east-1", "aws/us-west-2"), disk_size=100,
                          image="ghcr.io/you/automl-images-trainer:0.1.0",
                          job_recovery=JobRecovery("EAGER_NEXT_REGION", 2))
    # Regions of aws, any region of gcp, each accelerator in the order given.
    res = template.resources(got)
    assert res["ordered"] == [
        {"accelerators": "A10G:1", "infra": "aws/us-east-1"}, {"accelerators": "A10G:1", "infra": "aws/us-west-2"},
        {"accelerators": "A10G:1", "infra": "gcp"},
        {"accelerators": "L4:1", "infra": "aws/us-east-1"}, {"accelerators": "L4:1", "infra": "aws/us-west-2"},
        {"accelerators": "L4:1", "infra": "gcp"}]
    assert res["image_id"] == "docker:ghcr.io/you/automl-images-trainer:0.1.0"
    assert res["use_spot"] is True and res["disk_size"] == 100
    assert res["job_recovery"] == {"strategy": "EAGER_NEXT_REGION", "max_restarts_on_errors": 2}


def test_defaults_and_spellings():
    digest = "sha256:" + "a" * 64
    got = compute(CLOUDS + "  accelerators: [a10g, 'l4:2']\n  regions: [us-east-1]\n"
                  f"  image: docker:ghcr.io/you/trainer@{digest}\n  job_recovery: {{strategy: failover}}\n")
    assert got.accelerators == ("A10G:1", "L4:2")     # SkyPilot's spelling, a count of 1 when left out
    assert got.regions == ("aws/us-east-1",)          # a bare region belongs to the one cloud
    assert got.image == f"ghcr.io/you/trainer@{digest}"
    assert got.job_recovery == JobRecovery("FAILOVER", 2)
    assert got.use_spot is True and got.fallback == "ordered" and got.disk_size == 100
    one = template.resources(compute(IMAGE + CLOUDS + "  accelerators: [T4]\n  fallback: any_of\n"))
    assert one["accelerators"] == "T4:1" and one["infra"] == "aws" and "any_of" not in one  # one choice: no list


def test_every_problem_is_reported_with_its_line():
    found = problems("""\
  accelerators: [A10:x, K80:1, H100:32]
  fallback: cheapest
  use_spot: yes-please
  clouds: [aws, gcpp]
  regions: [azure/eastus, 'aws/US_EAST']
  disk_size: 5
  image: docker:<your-registry>/automl-images-trainer:0.1.0
  job_recovery: {strategy: NEXT_REGION, max_restarts_on_errors: -1, recover_on: 3}
  secrets: [BAD-NAME]
  gpus: 1
""")
    assert found["compute.accelerators[0]"] == "5: the count of A10 must be a whole number from 1 to 16, got 'x'"
    assert found["compute.accelerators[1]"].startswith("5: unknown accelerator 'K80'; allowed: A10, A10G,")
    assert "from 1 to 16, got '32'" in found["compute.accelerators[2]"]
    assert found["compute.fallback"] == "6: unknown fallback 'cheapest'; allowed: ordered, any_of"
    assert found["compute.use_spot"] == "7: must be true or false, got 'yes-please'"
    assert found["compute.clouds[1]"].startswith("8: unknown cloud 'gcpp' (did you mean 'gcp'?)")
    assert found["compute.regions[0]"] == "9: 'azure' is not among compute.clouds (aws)"
    assert "is not a region name" in found["compute.regions[1]"]
    assert found["compute.disk_size"] == "10: must be between 20 and 65536, got 5"
    assert "is not a docker image reference" in found["compute.image"]
    assert found["compute.job_recovery.strategy"].startswith(
        "12: unknown recovery strategy 'NEXT_REGION' (did you mean 'EAGER_NEXT_REGION'?)")
    assert found["compute.job_recovery.max_restarts_on_errors"] == "12: must be between 0 and 100, got -1"
    assert "unknown key 'recover_on'" in found["compute.job_recovery.recover_on"]
    assert found["compute.secrets[0]"] == "13: 'BAD-NAME' is not an environment variable name"
    assert "unknown key 'gpus'" in found["compute.gpus"]


def test_clouds_and_image_are_required_and_bare_regions_need_one_cloud():
    found = problems("  regions: [us-east-1]\n")
    assert "is required for skypilot" in found["compute.clouds"]
    assert "infra/Dockerfile" in found["compute.image"]
    assert "write the region as cloud/region" in found["compute.regions[0]"]
    assert "write the region as cloud/region" in problems(
        IMAGE + "  clouds: [aws, gcp]\n  regions: [us-east-1]\n")["compute.regions[0]"]


def test_skypilot_settings_on_the_local_launcher_are_refused():
    with pytest.raises(JobSpecError) as info:
        parse_job("task: image-classification\ntraining_data: t.jsonl\ncompute:\n  launcher: local\n"
                  "  accelerators: [A10G:1]\n", "job.yaml")
    assert str(info.value) == ("job.yaml:5: field 'compute.accelerators': applies only to launcher: skypilot "
                               "(this job runs on local)")


def test_without_skypilot_installed_the_error_says_how_to_install_it(monkeypatch):
    real = importlib.metadata.version

    def version(name: str) -> str:
        if name == "skypilot":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    found = problems(IMAGE + CLOUDS)
    assert found == {"compute.launcher": "4: the skypilot launcher needs SkyPilot, which is not installed: "
                                         "pip install 'automl-images[skypilot]'"}


def test_the_documented_example_is_accepted():
    page = (REPO / "docs" / "skypilot.md").read_text()
    section = page[page.index("## The compute section"):]
    example = section[section.index("```yaml\n") + 8:section.index("```\n", section.index("```yaml\n"))]
    got = parse_job("task: image-classification\ntraining_data: t.jsonl\n" + example, "docs/skypilot.md").compute
    assert got.launcher == "skypilot" and got.accelerators == ("A10G:1", "L4:1")
    assert got.secrets == ("R2_SECRET_ACCESS_KEY",) and got.regions == ("aws/us-east-1", "aws/us-west-2")


@pytest.mark.parametrize("image, ok", [
    ("ghcr.io/you/automl-images-trainer:0.1.0", True), ("123456789012.dkr.ecr.us-east-1.amazonaws.com/t:1", True),
    ("localhost:5000/trainer", True), ("us-docker.pkg.dev/p/r/trainer@sha256:" + "0" * 64, True),
    ("docker:ubuntu:22.04", True), ("Upper/trainer", False), ("<your-registry>/trainer:0.1.0", False),
    ("trainer:", False), ("a..b", False), ("trainer:0.1 extra", False)])
def test_image_references(image, ok):
    text = f"  image: '{image}'\n" + CLOUDS
    if ok:
        assert compute(text).image == image.removeprefix("docker:")
    else:
        assert "is not a docker image reference" in problems(text)["compute.image"]
