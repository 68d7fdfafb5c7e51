"""The job file's trainer options (`compile`, `datastores`) from the YAML to the trial spec to the
engine, and the engine's machine settings (mixed precision, channels-last, loader workers).

torch.compile with its default backend (inductor) builds C++ kernels: on this project's 2-core CI
machine the first resnet18 step took about 150 s, so the trial here compiles with the "eager"
backend (AUTOML_IMAGES_COMPILE_BACKEND), which traces the model through TorchDynamo as inductor
would, and runs the captured graphs without generating code. Inductor itself is checked on a GPU
(bench/gpu_check.py)."""
from __future__ import annotations

import json

import torch
from simulated import SimLauncher, sim_job, submit
from trial_data import write_dataset, write_spec

from automl_images.controller.loop import Controller
from automl_images.core.layout import FILES, Root
from automl_images.core.storage import Storage
from automl_images.core.trial_spec import TrialSpec
from automl_images.trainer import engine, export, run


def test_compile_and_datastores_travel_from_the_job_file_to_the_trial_spec(local_root):
    root = Root(local_root)
    text = sim_job(max_trials=1, concurrent=1, extra="compile: true\ndatastores:\n"
                                                      "  workspaceblobstore: s3://bucket/azure-data\n")
    job = submit(root, "options", text)
    Controller(root, launchers={"local": SimLauncher()}).reconcile_once()
    spec = TrialSpec.from_json(root.storage.read_text(f"jobs/{job}/trials/t0000/{FILES.spec}"))
    assert spec.compile is True and spec.datastores == {"workspaceblobstore": "s3://bucket/azure-data"}
    # Left out, they are off and empty.
    plain = TrialSpec.from_dict({**json.loads(spec.to_json()), "compile": False, "datastores": {}})
    assert plain.compile is False and plain.datastores == {}


def test_compile_true_trains_through_torch_compile(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOML_IMAGES_THREADS", "1")
    monkeypatch.setenv("AUTOML_IMAGES_IMAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(engine.COMPILE_BACKEND_ENV, "eager")
    root = Storage(str(tmp_path / "root"))
    train, val = write_dataset(root, per_class=4, validation_per_class=2)
    spec_url = write_spec(root, "trial", train, val, number_of_epochs=1, training_batch_size=6)
    spec = root.read_json("trial/spec.json")
    root.write_json("trial/spec.json", {**spec, "compile": True})
    torch._dynamo.reset()
    compiled_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    threads = torch.get_num_threads()
    try:
        status = run.run_trial(spec_url)
    finally:
        torch.set_num_threads(threads)
        torch._dynamo.reset()
    assert status["status"] == "completed", status.get("error")
    assert status["compiled"] == "eager" and "torch.compile (eager)" in root.read_text("trial/logs/trainer.log")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > compiled_before  # dynamo captured graphs
    # Checkpoint and model hold the bare module's keys, not the compiled wrapper's.
    assert not any(k.startswith("_orig_mod.") for k in export.load_model(root.url("trial")).model.state_dict())


def test_machine_settings():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert engine.amp_dtype(cpu) is None
    assert engine.loader_workers(cpu, 10_000, 32) == 0          # the CPU's cores train the model
    assert engine.loader_workers(gpu, 64, 32) == 0              # too little data to pay for workers
    assert 1 <= engine.loader_workers(gpu, 10_000, 32) <= engine.MAX_LOADER_WORKERS
    assert engine.loader_workers(gpu, 10_000, 32, processes_per_node=64) == 1
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    assert not engine.is_channels_last(model)
    assert engine.is_channels_last(model.to(memory_format=torch.channels_last))
    batch = engine.to_device((torch.zeros(2, 3, 8, 8), torch.zeros(2)), cpu, channels_last=True)
    assert batch[0].is_contiguous(memory_format=torch.channels_last) and batch[1].shape == (2,)


def test_a_diverging_run_fails_with_its_step(tmp_path):
    """The loss is checked on the device and read back only every few steps on a GPU: the error
    still names where it went wrong."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    batches = [(torch.ones(2, 2), torch.zeros(2, dtype=torch.long))] * 3 + \
              [(torch.full((2, 2), float("nan")), torch.zeros(2, dtype=torch.long))] * 2

    def loss_fn(m, x, y):
        return torch.nn.functional.cross_entropy(m(x), y)

    try:
        engine.train_one_epoch(engine.EpochContext(model, loss_fn, optimizer, scheduler, torch.device("cpu")), batches)
    except FloatingPointError as exc:
        assert "became nan at step 3" in str(exc)
    else:
        raise AssertionError("no FloatingPointError")
