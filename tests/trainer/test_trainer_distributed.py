"""Several processes, one trial: `torchrun --nproc_per_node 2 automl-images trial run SPEC` with
DistributedDataParallel over gloo on the CPU.

What is compared, and how exactly:
- The metrics that the two-process run reports for its last epoch are recomputed here, in one
  process, from the weights it saved (checkpoints/last.pt), over the whole validation set: they
  must agree (accuracy and counts exactly; losses to 1e-6 relative: the two runs batch the
  validation images differently, which moves float32 sums in the last bits).
- Against one process with twice the batch size (two processes of batch 4 take the same images at
  each step as one of batch 8: see engine.EpochSampler), what must be equal is: the epochs, the
  steps and the images trained per epoch. The weights are not (batch norm normalises over 4 images
  in each process instead of 8, and the gradients are summed in another order), so accuracy is
  compared loosely: both runs learn, well above chance.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from trial_data import CLI, write_dataset, write_detection_dataset, write_spec

from automl_images.core.layout import FILES
from automl_images.core.storage import Storage
from automl_images.core.trial_spec import TrialSpec
from automl_images.trainer import checkpoint, data, distributed, engine, run
from automl_images.trainer.tasks import get_adapter

# Each torchrun starts two trainer processes: 20 to 40 s a test.
slow = pytest.mark.slow
EPOCHS = 4
KEEP = {"keep_checkpoints": True}  # the tests read the trial's last checkpoint after it ends


def torchrun(spec_url: str, tmp_path, log, wait: bool = True, processes: int = 2):
    env = dict(os.environ, AUTOML_IMAGES_THREADS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               AUTOML_IMAGES_IMAGE_CACHE=str(tmp_path / "cache"))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               CLI, "trial", "run", spec_url]
    if wait:
        return subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=300)
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def evaluate_saved_weights(trial: Storage, spec_url: str, weights: dict) -> dict:
    """The validation metrics of `weights`, computed in this one process over the whole set."""
    spec = TrialSpec.from_json(Storage(spec_url.rsplit("/", 1)[0]).read_text(FILES.spec))
    hp = {**spec.hyperparameters, "pretrained": 0}
    adapter = get_adapter(spec.task, hp)
    labels = checkpoint.load(trial)["labels"]
    records = data.read_jsonl(spec.validation_data, adapter.parse_label)
    samples, skipped = data.fetch_images(records)
    assert not skipped
    class_index = {name: i for i, name in enumerate(labels)}
    dataset = adapter.dataset(samples, [adapter.encode(s.record.label, class_index) for s in samples], train=False)
    model = adapter.build_model(len(labels))
    model.load_state_dict(weights)
    loss = adapter.loss([1] * len(labels), len(samples))
    loader = engine.make_loader(dataset, spec.hyperparameters["validation_batch_size"], train=False,
                                device=torch.device("cpu"), collate_fn=adapter.collate)
    return engine.evaluate(model, loader, adapter.evaluator(labels, loss), torch.device("cpu"),
                           prepare=adapter.batch_transform(torch.device("cpu")))


@slow
def test_two_processes_report_the_metrics_of_the_weights_they_save(tmp_path, monkeypatch):
    root = Storage(str(tmp_path / "root"))
    # 15 validation images: the two processes evaluate 8 and 7 of them, in batches of 4.
    train, val = write_dataset(root, per_class=16, validation_per_class=5, size=32)
    hp = {"model_name": "resnet18", "number_of_epochs": EPOCHS, "validation_batch_size": 4, "learning_rate": 0.01,
          "resize_size": 32, "crop_size": 28}
    spec_url = write_spec(root, "ddp", train, val, training_batch_size=4, spec_fields=KEEP, **hp)
    with open(tmp_path / "torchrun.log", "wb") as log:
        result = torchrun(spec_url, tmp_path, log)
    output = (tmp_path / "torchrun.log").read_text()
    assert result.returncode == 0, output[-4000:]

    trial = Storage(root.url("ddp"))
    status = trial.read_json(FILES.status)
    assert status["status"] == "completed" and status["processes"] == 2, status.get("error")
    assert status["epochs"] == EPOCHS and [h["epoch"] for h in status["history"]] == list(range(1, EPOCHS + 1))
    assert trial.list(FILES.metrics_dir) == [f"{e:06d}.json" for e in range(1, EPOCHS + 1)]
    # Both processes trained and logged; only rank 0 wrote the trial's log.
    assert "[rank 1]" in output and "[rank 0]" in output
    trial_log = trial.read_text("logs/trainer.log")
    assert "[rank 1]" not in trial_log and trial_log.count(f"epoch {EPOCHS}/{EPOCHS}:") == 1

    reported = trial.read_json(FILES.metrics(EPOCHS))
    assert reported["samples"] == 15                     # every validation image once: no padding
    assert reported["train_images"] == 48                # 24 per process: the whole training set
    saved = checkpoint.load(trial)
    assert saved["epoch"] == EPOCHS and len(saved["rng_by_rank"]) == 2
    here = evaluate_saved_weights(trial, spec_url, saved["model"])
    assert here["samples"] == reported["samples"]
    assert here["accuracy"] == reported["accuracy"]
    assert here["per_class"] == reported["per_class"]
    for name in ("loss", "log_loss", "precision_score_weighted", "recall_score_weighted", "f1_score_weighted"):
        assert here[name] == pytest.approx(reported[name], rel=1e-6, abs=1e-9), name

    # One process with twice the batch: the same epochs, steps and images.
    monkeypatch.setenv("AUTOML_IMAGES_THREADS", "1")
    monkeypatch.setenv("AUTOML_IMAGES_IMAGE_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    try:
        single = run.run_trial(write_spec(root, "single", train, val, training_batch_size=8, **hp))
    finally:
        torch.set_num_threads(threads)
    assert single["status"] == "completed" and single["epochs"] == status["epochs"]
    single_metrics = Storage(root.url("single")).read_json(FILES.metrics(EPOCHS))
    assert single_metrics["train_images"] == reported["train_images"]
    assert single_metrics["train_steps"] == reported["train_steps"] == 6
    # Not the same weights (see the module's docstring): both learn, well above chance (1/3). On 48
    # images and 24 steps the best accuracy of either run moves between 0.67 and 1.0 with any change
    # to the numerics (seen while writing this test), so the bar is set under that range.
    assert single["metrics"]["accuracy"] >= 0.6 and status["metrics"]["accuracy"] >= 0.6, (single, status)


@slow
def test_two_processes_train_a_detector_and_report_the_metrics_of_its_weights(tmp_path):
    """Detection through the same DDP code: lists of images and of target dicts split across ranks,
    detections gathered back into the validation set's order."""
    root = Storage(str(tmp_path / "root"))
    train, val = write_detection_dataset(root, train=8, validation=5)   # evaluated as 3 + 2
    spec_url = write_spec(root, "ddp-detection", train, val, task="image-object-detection", spec_fields=KEEP,
                          number_of_epochs=1,
                          validation_metric_type="coco_voc", box_score_thresh=0.0)
    with open(tmp_path / "torchrun.log", "wb") as log:
        result = torchrun(spec_url, tmp_path, log)
    assert result.returncode == 0, (tmp_path / "torchrun.log").read_text()[-4000:]
    trial = Storage(root.url("ddp-detection"))
    status = trial.read_json(FILES.status)
    assert status["status"] == "completed" and status["processes"] == 2, status.get("error")
    reported = trial.read_json(FILES.metrics(1))
    assert reported["train_images"] == 8
    here = evaluate_saved_weights(trial, spec_url, checkpoint.load(trial)["model"])
    for name in ("mean_average_precision", "voc_map", "coco_map", "coco_map_50"):
        assert here[name] == pytest.approx(reported[name], abs=1e-9), name
    assert here["per_class"] == reported["per_class"]


@slow
def test_stop_request_and_sigterm_to_rank_0_stop_every_process(tmp_path):
    root = Storage(str(tmp_path / "root"))
    train, val = write_dataset(root, per_class=12, validation_per_class=2)
    spec_url = write_spec(root, "ddp", train, val, model_name="mobilenetv2", number_of_epochs=40, spec_fields=KEEP)
    trial = Storage(root.url("ddp"))

    # A stop request, read by rank 0 at the first evaluation: both processes end.
    trial.write_json(FILES.stop, {"reason": "early_termination"})
    with open(tmp_path / "first.log", "wb") as log:
        first = torchrun(spec_url, tmp_path, log)
    assert first.returncode == 0, (tmp_path / "first.log").read_text()[-4000:]
    status = trial.read_json(FILES.status)
    assert status["status"] == "stopped" and status["reason"] == "early_termination" and status["epochs"] == 1

    # Relaunched (as the controller does), it resumes in two processes; SIGTERM to rank 0 alone
    # (its pid is in status.json) stops both at their next step.
    trial.delete(FILES.stop)
    trial.write_json(FILES.status, {**status, "status": "pending"})
    with open(tmp_path / "second.log", "wb") as log:
        process = torchrun(spec_url, tmp_path, log, wait=False)
        try:
            deadline = time.time() + 180
            while time.time() < deadline and process.poll() is None:
                status = trial.read_json(FILES.status) or {}
                if status.get("attempt") == 2 and status.get("epoch", 0) >= 2:
                    break
                time.sleep(0.05)
            assert process.poll() is None, (tmp_path / "second.log").read_text()[-4000:]
            os.kill(status["pid"], signal.SIGTERM)
            assert process.wait(timeout=120) == 0, (tmp_path / "second.log").read_text()[-4000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    output = (tmp_path / "second.log").read_text()
    status = trial.read_json(FILES.status)
    assert status["status"] == "stopped" and status["reason"] == "terminated", status
    assert 2 <= status["epochs"] < 40 and checkpoint.load(trial)["epoch"] == status["epochs"]
    assert "resumed from the checkpoint of epoch 1" in output
    assert output.count("received SIGTERM") == 1           # only rank 0 got the signal
    assert output.count("trial stopped after") == 2         # and both ranks stopped


def test_shards_and_gathered_outputs_restore_the_validation_order():
    """The pieces the gathering relies on, without processes."""
    shards = [list(distributed.ShardSampler(7, rank, 3)) for rank in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert distributed.interleave(shards) == list(range(7))
    logits = torch.arange(12.0).reshape(4, 3)
    assert torch.equal(distributed.rebatch(distributed.unbatch(logits), distributed.batch_kind(logits)), logits)
    batch = {"boxes": torch.zeros(2, 4), "labels": [1, 2]}
    items = distributed.unbatch(batch)
    assert items[1]["labels"] == 2
    back = distributed.rebatch(items, distributed.batch_kind(batch))
    assert torch.equal(back["boxes"], batch["boxes"]) and back["labels"] == [1, 2]
    # The training order splits one permutation across ranks, padded to equal lengths.
    single = list(engine.EpochSampler(10, seed=1))
    halves = [list(engine.EpochSampler(10, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert sorted(i for _, i in halves[0] + halves[1]) == sorted(i for _, i in single)
    assert [i for _, i in single][0::2] == [i for _, i in halves[0]]
    odd = [list(engine.EpochSampler(5, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert len(odd[0]) == len(odd[1]) == 3
    sampler = engine.EpochSampler(10, seed=1)
    sampler.set_epoch(2)
    assert list(sampler) != single and all(epoch == 2 for epoch, _ in sampler)
