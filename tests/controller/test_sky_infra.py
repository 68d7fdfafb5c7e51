"""infra/: the IAM policies stay inside the root's prefix (and moto's IAM accepts them), the bucket
script sends lifecycle rules that an S3 API accepts (moto's server), the GCS scripts limit themselves
to the prefix, and the image holds no credentials and runs as a non-root user. The cloud CLIs are
small fakes that record their arguments: no cloud account here."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import boto3
import pytest
from conftest import REPO, make_bucket

INFRA = REPO / "infra"
FAKE_CLI = """#!/usr/bin/env bash
# Records its arguments; copies any file given as file://PATH or --lifecycle-file=PATH.
echo "$(basename "$0") $*" >> "$FAKE_LOG"
for arg in "$@"; do
  case $arg in
    file://*) cp "${arg#file://}" "$FAKE_OUT/$(basename "$0")-lifecycle.json" ;;
    --lifecycle-file=*) cp "${arg#--lifecycle-file=}" "$FAKE_OUT/$(basename "$0")-lifecycle.json" ;;
  esac
done
case "$*" in
  *head-bucket*|*"buckets describe"*|*"roles describe"*|*"service-accounts describe"*) exit 1 ;;
esac
"""


def policy(name: str, bucket: str = "my-bucket", prefix: str = "automl") -> dict:
    text = (INFRA / name).read_text().replace("YOUR_BUCKET", bucket).replace("YOUR_PREFIX", prefix)
    return json.loads(text)


@pytest.mark.parametrize("name", ["aws-iam-policy.json", "aws-iam-policy-trial.json"])
def test_aws_policies_reach_only_the_roots_prefix(name, s3_endpoint):
    document = policy(name)
    for statement in document["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all(a.startswith("s3:") and "*" not in a for a in actions), statement
        resource = statement["Resource"]
        assert resource == "arn:aws:s3:::my-bucket" or resource.startswith("arn:aws:s3:::my-bucket/automl/"), statement
        if "s3:ListBucket" in actions:
            assert statement["Condition"] == {"StringLike": {"s3:prefix": ["automl", "automl/*"]}}
        if resource == "arn:aws:s3:::my-bucket":
            assert set(actions) <= {"s3:ListBucket", "s3:GetBucketLocation"}, statement
    if name == "aws-iam-policy-trial.json":
        writes = [s for s in document["Statement"] if "s3:PutObject" in s["Action"]]
        assert [s["Resource"] for s in writes] == ["arn:aws:s3:::my-bucket/automl/jobs/*/trials/*"]
    # AWS's own checks of the document, as moto's IAM makes them.
    iam = boto3.client("iam", endpoint_url=s3_endpoint, region_name="us-east-1")
    created = iam.create_policy(PolicyName=name.replace(".json", "").replace("-", ""),
                                PolicyDocument=json.dumps(document))
    assert created["Policy"]["Arn"]


def run_script(script: str, args: list[str], tmp_path: Path, **env: str) -> tuple[list[str], Path]:
    bin_dir, out = tmp_path / "bin", tmp_path / "out"
    bin_dir.mkdir()
    out.mkdir()
    for cli in ("aws", "gcloud"):
        (bin_dir / cli).write_text(FAKE_CLI)
        (bin_dir / cli).chmod(0o755)
    log = tmp_path / "calls.log"
    result = subprocess.run(["bash", str(INFRA / script), *args], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                                 "FAKE_LOG": str(log), "FAKE_OUT": str(out), **env})
    assert result.returncode == 0, result.stdout + result.stderr
    return log.read_text().splitlines(), out


def test_create_bucket_on_s3_sends_lifecycle_rules_an_s3_api_accepts(tmp_path, s3_endpoint):
    calls, out = run_script("create-bucket.sh", ["s3://my-bucket/automl", "us-west-2"], tmp_path)
    assert calls[0] == "aws s3api head-bucket --bucket my-bucket"
    assert calls[1] == ("aws s3api create-bucket --bucket my-bucket --region us-west-2 "
                        "--create-bucket-configuration LocationConstraint=us-west-2")
    assert calls[2].startswith("aws s3api put-public-access-block --bucket my-bucket")
    assert "BlockPublicPolicy=true" in calls[2]
    assert calls[3].startswith("aws s3api put-bucket-lifecycle-configuration --bucket my-bucket")
    rules = json.loads((out / "aws-lifecycle.json").read_text())
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = make_bucket(s3_endpoint)
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=rules)
    applied = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert applied["automl-images-abort-cut-uploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 2}
    assert applied["automl-images-abort-cut-uploads"]["Filter"] == {"Prefix": "automl/"}
    assert applied["automl-images-old-versions"]["Filter"] == {"Prefix": "automl/jobs/"}


def test_create_bucket_on_gcs_deletes_stale_checkpoints_under_the_root(tmp_path):
    calls, out = run_script("create-bucket.sh", ["gs://my-bucket/automl/", "us-central1"], tmp_path,
                            CHECKPOINT_DAYS="10")
    assert calls[1] == ("gcloud storage buckets create gs://my-bucket --location=us-central1 "
                        "--uniform-bucket-level-access --public-access-prevention")
    assert calls[2].startswith("gcloud storage buckets update gs://my-bucket --lifecycle-file=")
    rules = json.loads((out / "gcloud-lifecycle.json").read_text())["rule"]
    assert rules[0] == {"action": {"type": "Delete"}, "condition": {
        "age": 10, "matchesPrefix": ["automl/jobs/"], "matchesSuffix": ["/checkpoints/last.pt"]}}
    assert {r["action"]["type"] for r in rules} == {"Delete", "AbortIncompleteMultipartUpload"}


def test_gcs_grant_is_conditioned_on_the_prefix(tmp_path):
    calls, _ = run_script("gcs-iam.sh", ["my-project", "gs://my-bucket/automl"], tmp_path)
    binding = next(c for c in calls if "add-iam-policy-binding" in c)
    assert "--member serviceAccount:automl-images@my-project.iam.gserviceaccount.com" in binding
    assert "--role projects/my-project/roles/automlImagesRoot" in binding
    assert 'resource.name.startsWith("projects/_/buckets/my-bucket/objects/automl/")' in binding
    assert 'api.getAttribute("storage.googleapis.com/objectListPrefix", "").startsWith("automl/")' in binding
    role = next(c for c in calls if "roles create" in c)
    assert re.search(r"--permissions storage\.objects\.get,storage\.objects\.create,storage\.objects\.delete,"
                     r"storage\.objects\.list( |$)", role)
    assert not any("keys create" in c for c in calls)  # no key file, nothing to leak
    refused = subprocess.run(["bash", str(INFRA / "gcs-iam.sh"), "p", "gs://my-bucket"], capture_output=True, text=True)
    assert refused.returncode == 2 and "limited to it" in refused.stderr


@pytest.mark.parametrize("dockerfile, base", [
    ("Dockerfile", "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"),  # the trainer
    ("Dockerfile.controller", "python:3.11-slim"),                     # the controller: no torch
])
def test_the_images_run_as_a_non_root_user_and_hold_no_credentials(dockerfile, base):
    text = (INFRA / dockerfile).read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line and not line.startswith(("#", " "))]
    assert instructions[0] == ["FROM", base]
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1] != "root"
    copied = [rest.split()[0] for word, rest in instructions if word == "COPY"]
    assert copied == ["pyproject.toml", "core", "controller", "trainer", "sky"]
    assert not re.search(r"(?i)(secret|token|password|credential|access_key)", "\n".join(
        rest for word, rest in instructions if word in ("ENV", "ARG")))
    ignore = (INFRA / f"{dockerfile}.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1:][:6] == ["!pyproject.toml", "!README.md", "!core/", "!controller/", "!trainer/",
                                                  "!sky/"]


def test_the_controller_image_installs_no_torch():
    # the base install and SkyPilot only (tests/test_architecture.py: the base install has no torch)
    assert re.findall(r"pip install (\S+)", (INFRA / "Dockerfile.controller").read_text()) == ['".[skypilot]"']
