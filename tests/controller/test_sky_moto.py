"""A trial's SkyPilot task through SkyPilot's real API server, with AWS played by moto's server on
127.0.0.1: `sky check` enables AWS (STS and EC2 answered by moto), and `sky.launch(task,
dryrun=True)` runs the optimizer on the hand-written catalog and picks a spot GPU machine.

What is not real: moto instead of AWS; the catalog (tests/fixtures/sky_catalog, with the AMI ids
moto knows); and two programs SkyPilot only looks for here, `aws` (it runs `aws --version`) and
`rsync` (it checks that it is installed before provisioning), as stand-ins on the server's PATH.
Nothing is provisioned: it is a dry run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
from conftest import TESTS

from automl_images.controller.launch import template
from automl_images.controller.launch.extras import skypilot_installed
from automl_images.controller.spec import parse_job

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not skypilot_installed(), reason="SkyPilot is not installed")]
CATALOG = TESTS / "fixtures" / "sky_catalog"
CATALOG_VERSION = "v8"  # sky.skylet.constants.CATALOG_SCHEMA_VERSION (test_sky_task.py checks it)
CLIENT = """
import io, json, sys
import sky
from sky.client import sdk
task = sky.Task.from_yaml_config(json.loads(sys.argv[1]))
out = io.StringIO()
enabled = sky.stream_and_get(sdk.check(("aws",), verbose=True), output_stream=out)
print("CHECK", json.dumps(enabled))
result = sky.stream_and_get(sky.launch(task, cluster_name="automl-dryrun", dryrun=True), output_stream=out)
print("RESULT", json.dumps(result))
# Our boundary with SkyPilot, against the real API server: with no jobs controller yet, SkyPilot's
# queue (the request SkyJobs sends) refuses, and SkyJobs reads that as no managed job of that name
# alive (so the first launch of a trial is not blocked by the empty queue).
from automl_images.controller.launch.skypilot import SkyJobs
try:
    sky.get(sky.jobs.queue_v2(refresh=False, skip_finished=False, job_ids=None, name_match="sweep-t0000",
                              fields=SkyJobs.FIELDS))
except Exception as exc:
    print("RAW QUEUE", type(exc).__name__, getattr(exc, "cluster_status", None))
print("QUEUE", SkyJobs().queue(name="sweep-t0000"))
print(out.getvalue())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_home(home: Path, endpoint: str) -> None:
    catalog = home / ".sky" / "catalogs" / CATALOG_VERSION
    shutil.copytree(CATALOG, catalog, ignore=shutil.ignore_patterns("*.md"))
    # SkyPilot's default machine images, as AMIs that moto's EC2 knows in both regions.
    rows = ["Tag,Region,OS,OSVersion,ImageId,CreationDate"]
    for region in ("us-east-1", "us-west-2"):
        ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=region)
        ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        for tag in ("skypilot:custom-gpu-ubuntu-cuda13", "skypilot:custom-gpu-ubuntu", "skypilot:custom-cpu-ubuntu"):
            rows.append(f"{tag},{region},ubuntu,22.04,{ami},20260101")
    (catalog / "aws" / "images.csv").write_text("\n".join(rows) + "\n")
    (catalog / "aws" / "instance_quota_mapping.csv").write_text("InstanceType,OnDemandInstanceCode,SpotInstanceCode\n")
    (home / ".aws").mkdir()
    (home / ".aws" / "credentials").write_text("[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    (home / ".aws" / "config").write_text("[default]\nregion = us-east-1\n")
    stand_ins = home / "bin"
    stand_ins.mkdir()
    (stand_ins / "aws").write_text('#!/bin/sh\n[ "$1" = --version ] && echo "aws-cli/1.40.0 (stand-in)" && exit 0\nexit 1\n')
    (stand_ins / "rsync").write_text("#!/bin/sh\nexit 0\n")
    for tool in stand_ins.iterdir():
        tool.chmod(0o755)


def test_dry_run_through_the_api_server_picks_a_spot_gpu(tmp_path, s3_endpoint):
    home = tmp_path / "home"
    prepare_home(home, s3_endpoint)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SKYPILOT_", "GOOGLE_"))}
    env.update(HOME=str(home), PATH=f"{home / 'bin'}{os.pathsep}{env['PATH']}", AWS_ENDPOINT_URL=s3_endpoint,
               AWS_EC2_METADATA_DISABLED="true", SKYPILOT_DISABLE_USAGE_COLLECTION="1")
    log = open(tmp_path / "api-server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "sky.server.server", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1).read()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "api-server.log").read_text()
                time.sleep(0.3)
        compute = parse_job("task: image-classification\ntraining_data: t.jsonl\ncompute:\n  launcher: skypilot\n"
                            "  accelerators: [A10G:1, L4:1]\n  clouds: [aws]\n"
                            "  image: ghcr.io/you/automl-images-trainer:0.1.0\n", "job.yaml").compute
        task = template.trial_task(compute, "sweep-t0000", "s3://my-bucket/automl/jobs/sweep/trials/t0000/spec.json")
        client_env = dict(env, SKYPILOT_API_SERVER_ENDPOINT=f"http://127.0.0.1:{port}",
                          SKYPILOT_DISABLE_LOCAL_API_SERVER="1")
        result = subprocess.run([sys.executable, "-c", CLIENT, json.dumps(task)], env=client_env,
                                capture_output=True, text=True, timeout=300)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output + (tmp_path / "api-server.log").read_text()[-5000:]
    assert 'CHECK {"default": {"AWS": ["compute", "storage"]}}' in output
    assert "RESULT [null, null]" in output and "Dryrun finished." in output
    assert "RAW QUEUE ClusterNotUpError None" in output and "QUEUE []" in output
    chosen = [line for line in output.splitlines() if "✔" in line]
    assert len(chosen) == 1, output
    # The plan table's chosen row: AWS, a spot A10G machine (listed first: `ordered`), in the
    # cheapest region of the catalog, at its spot price.
    row = re.sub(r"\x1b\[[0-9;]*m", "", chosen[0]).split()
    assert row[:5] == ["AWS", "(us-west-2b)", "g5.xlarge[Spot]", "4", "16"], row
    assert row[5:7] == ["A10G:1", "0.38"], row
