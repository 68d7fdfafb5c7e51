"""Requests and time of one controller pass over a job with a long history, on an S3 API server.

    .venv/bin/python bench/reconcile_requests.py                 # 100 and 1,000 finished trials
    .venv/bin/python bench/reconcile_requests.py --trials 1000   # one size

Starts moto's S3 server on 127.0.0.1, writes a job with N finished trials (and 2 running ones) as
the controller and trainer leave them, and counts every HTTP request of one pass with a botocore
`before-send` hook (s3fs's client and boto3's, which makes the conditional creates):

- cold: a controller that has never seen the job (a restart, or `controller --once` from cron);
- warm: the next pass of that controller, nothing new (the steady state);
- a new epoch: a pass in which a running trial has reported a new epoch (read, logged);
- a trial completes: a pass in which a running trial has finished (its cost, the summary, the
  leaderboard and the job state are written);
- next pass (rewritten): the pass after "cold, no summary": the summary was written again.
- cold, no summary: as cold, with jobs/<id>/trials.json removed: what a pass costs when every
  finished trial is read from its folder (how the controller worked before the summary).

Goals: requests grow with new events, not with the history; a pass under 2 s.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import boto3

from automl_images.controller.launch.base import RunState
from automl_images.controller.loop import Controller
from automl_images.core.layout import FILES, Root

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _moto import moto_server  # noqa: E402

JOB = "history"
SPACE = "  - learning_rate: loguniform(-7, -2)\n    momentum: uniform(0.5, 0.99)\n"


class Running:
    """A launcher whose trials all run (the two running trials of the job)."""
    name = "local"

    def launch(self, request):
        return {"run": request.trial_id}

    def poll(self, handle):
        return RunState.RUNNING

    def cancel(self, handle):
        pass

    def logs(self, handle):
        return None

    def cost(self, handle, elapsed_s):
        return 0.0


class Counter:
    def __init__(self):
        self.requests: collections.Counter = collections.Counter()

    def __call__(self, request, **kwargs):
        self.requests[request.method] += 1

    def total(self) -> int:
        return sum(self.requests.values())

    def reset(self) -> None:
        self.requests.clear()


def populate(root: Root, client, bucket: str, prefix: str, trials: int) -> None:
    """A running job of `trials` trials (max_trials), all created: 2 running, the others finished,
    as the bucket holds them."""
    root.storage.write_text("data/train.jsonl", "")
    job_text = (f"task: image-classification\ntraining_data: {root.storage.url('data/train.jsonl')}\n"
                f"limits:\n  max_trials: {trials}\n  max_concurrent_trials: 2\n"
                f"search_space:\n{SPACE}arguments:\n  number_of_epochs: 10\n  pretrained: 0\n")
    root.storage.write_text(f"inbox/{JOB}.yaml", job_text)
    controller = Controller(root, launchers={"local": Running()})
    controller.accept(f"{JOB}.yaml")
    now = time.time()

    def trial_files(i: int) -> list[tuple[str, bytes]]:
        trial = f"t{i:04d}"
        running = i >= trials - 2
        params = {"learning_rate": 0.001 * (1 + i % 50), "momentum": 0.5 + (i % 40) / 100}
        history = [{"epoch": e, "accuracy": 0.5 + 0.04 * e, "loss": 1 - 0.04 * e, "train_loss": 1 - 0.05 * e}
                   for e in range(1, (3 if running else 10) + 1)]
        spec = {"job_id": JOB, "trial_id": trial, "task": "image-classification", "primary_metric": "accuracy",
                "hyperparameters": {"number_of_epochs": 10, **params}, "sweep": {"subspace": 0, "params": params},
                "output": root.trial_url(JOB, trial)}
        status = {"status": "running" if running else "completed", "epoch": len(history), "epochs_total": 10,
                  "history": history, "updated_at": now, "started_at": now - 600}
        if not running:
            status.update(metrics={"accuracy": history[-1]["accuracy"]}, epochs=10, duration_s=600.0,
                          best={"epoch": 10, "metrics": {"accuracy": history[-1]["accuracy"]}})
        launch = {"launcher": "local", "attempt": 1, "handle": {"run": trial}, "launched_at": now - 600,
                  "hourly_price_usd": 0.0, "spent_usd": 0.0}
        files = [(FILES.spec, spec), (FILES.status, status), (FILES.launch, launch)]
        files += [(FILES.metrics(h["epoch"]), h) for h in history]
        return [(f"{prefix}/jobs/{JOB}/trials/{trial}/{name}", json.dumps(body).encode()) for name, body in files]

    with ThreadPoolExecutor(16) as pool:
        for batch in pool.map(trial_files, range(trials)):
            for key, body in batch:
                pool.submit(client.put_object, Bucket=bucket, Key=key, Body=body)


def measure(label: str, controller: Controller, counter: Counter) -> dict:
    counter.reset()
    started = time.perf_counter()
    controller.reconcile_once()
    seconds = time.perf_counter() - started
    row = {"pass": label, "requests": counter.total(), "by_method": dict(counter.requests), "seconds": seconds}
    print(f"  {label:<22} {row['requests']:>6} requests  {seconds:>6.2f} s   "
          + ", ".join(f"{k} {v}" for k, v in sorted(row["by_method"].items())), flush=True)
    return row


def _log(message: str) -> None:
    if "Traceback" in message or "not answering" in message:
        print(message)


def new_controller(root_url: str, counter: Counter) -> Controller:
    controller = Controller(Root(root_url), launchers={"local": Running()}, log=_log)
    fs = controller.root.storage.fs
    fs.connect()
    fs.s3.meta.events.register("before-send", counter)
    return controller


def run(trials: int, endpoint: str, counter: Counter) -> list[dict]:
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    root_url = f"s3://{bucket}/automl"
    started = time.perf_counter()
    populate(Root(root_url), client, bucket, "automl", trials)
    print(f"{trials} trials: {trials - 2} finished, 2 running (written in {time.perf_counter() - started:.0f} s)")
    settle = new_controller(root_url, counter)
    settle.reconcile_once()  # publishes the leaderboard and writes trials.json once
    settle.leases.release_all()
    rows = []
    controller = new_controller(root_url, counter)
    rows.append(measure("cold", controller, counter))
    rows.append(measure("warm", controller, counter))
    status_key = f"automl/jobs/{JOB}/trials/t{trials - 2:04d}/{FILES.status}"
    status = json.loads(client.get_object(Bucket=bucket, Key=status_key)["Body"].read())
    status["history"].append({"epoch": 4, "accuracy": 0.66, "loss": 0.34, "train_loss": 0.3})
    status["epoch"] = 4
    client.put_object(Bucket=bucket, Key=status_key, Body=json.dumps(status).encode())
    rows.append(measure("a new epoch", controller, counter))
    status.update(status="completed", metrics={"accuracy": 0.66}, epochs=4, duration_s=700.0)
    client.put_object(Bucket=bucket, Key=status_key, Body=json.dumps(status).encode())
    rows.append(measure("a trial completes", controller, counter))
    controller.leases.release_all()
    client.delete_object(Bucket=bucket, Key=f"automl/jobs/{JOB}/trials.json")
    rebuilt = new_controller(root_url, counter)
    rows.append(measure("cold, no summary", rebuilt, counter))
    rows.append(measure("next pass (rewritten)", rebuilt, counter))
    rebuilt.leases.release_all()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="*", default=[100, 1000])
    args = parser.parse_args()
    home = tempfile.mkdtemp()
    config = os.path.join(home, "aws-config")
    with open(config, "w") as f:
        f.write("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    os.environ.update(AWS_CONFIG_FILE=config, AWS_SHARED_CREDENTIALS_FILE=os.path.join(home, "none"),
                      AWS_EC2_METADATA_DISABLED="true", AUTOML_IMAGES_LOCAL_DIR=os.path.join(home, "local"))
    with moto_server() as endpoint:
        counter = Counter()
        boto3.setup_default_session()
        boto3.DEFAULT_SESSION.events.register("before-send", counter)  # the conditional creates
        results = {n: run(n, endpoint, counter) for n in args.trials}
    print("\n" + f"{'pass':<22}" + "".join(f"{f'{n} trials':>22}" for n in results))
    for i, row in enumerate(next(iter(results.values()))):
        cells = "".join(f"{r[i]['requests']:>8} req {r[i]['seconds']:>6.2f} s " for r in results.values())
        print(f"{row['pass']:<22}{cells}")


if __name__ == "__main__":
    main()
