"""`automl-images demo`: a real sweep on this machine, end to end, in a few minutes.

scikit-learn ships 1,797 real 8×8 scans of handwritten digits. The demo writes them as PNG files
with train and validation JSONL into the root, submits a random sweep over resnet18 and
mobilenetv2 and the learning rate (trained from scratch: nothing is downloaded), runs the
controller with the local launcher until the job ends, and prints the leaderboard.

    automl-images demo                     # root ./demo-root
    automl-images demo --root s3://bucket/automl
"""
from __future__ import annotations

import io
import json
import time

import numpy as np

from automl_images.core.layout import Root
from automl_images.core.storage import Storage, join

from . import leaderboard
from .loop import Controller
from .submit import new_job_id

DATA = "demo-data/digits"

# Small images (8×8 scans upscaled to 32 px) and a few epochs keep 4 trials under 5 minutes on
# 2 CPU cores; the learning-rate range is where both models reach ≥ 0.9 accuracy from scratch.
JOB_TEMPLATE = """\
# The demo's job: a random sweep over two models and the learning rate.
name: digits-demo
task: image-classification
training_data: train.jsonl
validation_data: val.jsonl
primary_metric: accuracy
sampling: random
limits:
  max_trials: {trials}
  max_concurrent_trials: {concurrent}
  timeout_hours: 1
search_space:
  - model_name: choice(resnet18, mobilenetv2)
    learning_rate: loguniform(-5.3, -2.3)   # exp(-5.3) = 0.005 to exp(-2.3) = 0.1
arguments:
  pretrained: 0
  number_of_epochs: 5
  training_batch_size: 64
  validation_batch_size: 128
  resize_size: 36
  crop_size: 32
  early_stopping: 0
"""


def write_digits(storage: Storage, prefix: str = DATA, seed: int = 0) -> tuple[int, int]:
    """PNG files and train.jsonl / val.jsonl (80/20, stratified) below `prefix`."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    validation = np.zeros(len(digits.target), dtype=bool)
    for label in np.unique(digits.target):
        members = np.flatnonzero(digits.target == label)
        validation[rng.choice(members, size=len(members) // 5, replace=False)] = True
    lines = {"train": [], "val": []}
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        image = Image.fromarray((pixels * (255 / 16)).astype(np.uint8), mode="L")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        name = f"images/{i:04d}.png"
        storage.write_bytes(join(prefix, name), buffer.getvalue())
        record = {"image_url": name, "image_details": {"format": "png", "width": "8px", "height": "8px"},
                  "label": str(int(label))}
        lines["val" if validation[i] else "train"].append(json.dumps(record))
    for split, records in lines.items():
        storage.write_text(join(prefix, f"{split}.jsonl"), "\n".join(records) + "\n")
    return len(lines["train"]), len(lines["val"])


def run_demo(root_url: str, trials: int = 4, concurrent: int = 2) -> int:
    started = time.time()
    root = Root(root_url)
    storage = root.storage
    print(f"demo: writing scikit-learn's handwritten digits to {storage.url(DATA)}", flush=True)
    n_train, n_val = write_digits(storage)
    print(f"demo: {n_train} training and {n_val} validation images", flush=True)
    job_key = join(DATA, "job.yaml")
    storage.write_text(job_key, JOB_TEMPLATE.format(trials=trials, concurrent=concurrent))
    from .submit import submit

    job_id = submit(storage.url(job_key), root.url, job_id=new_job_id("digits-demo"))
    print(f"demo: submitted job {job_id}; running the controller (local launcher)", flush=True)
    Controller(root, log=lambda m: print(f"{time.time() - started:6.1f}s {m}", flush=True)).run(
        interval_s=1.0, until_done=True)
    state = storage.read_json(root.job_state(job_id))
    board = storage.read_json(root.leaderboard(job_id))
    if board:
        print()
        print(leaderboard.to_table(board))
    print(f"demo: job {job_id} {state['status']} in {time.time() - started:.0f} s")
    if state["status"] != "completed":
        print(f"demo: {state.get('reason', '')}")
        return 1
    best = leaderboard.best_trial(board)
    print(f"demo: best trial {best['trial_id']} ({best['params'].get('model_name')}), "
          f"accuracy {best['metrics']['accuracy']:.4f}; model in {storage.url(root.best(job_id))}")
    return 0
