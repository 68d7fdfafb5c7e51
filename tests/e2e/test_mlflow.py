"""MLflow (controller/mlflow_sync.py) against a SQLite tracking URI: the job's run, its trials nested
under it with their parameters and per-epoch metrics, the report as an artifact, and the best model
registered as a pyfunc model that loads and predicts; logged once, however often the sync runs."""
from __future__ import annotations

import sys

import pandas
import pytest
from PIL import Image
from simulated import SimLauncher, run_until_done, sim_job, submit

from automl_images.controller import mlflow_sync
from automl_images.controller.accepted import load
from automl_images.controller.loop import Controller
from automl_images.core import trials
from automl_images.core.hyperparameters import Task, resolve
from automl_images.core.layout import FILES, Root

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (the mlflow extra)")
LABELS = ["blue", "red"]


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    """One SQLite store for the module: creating its tables takes seconds. Each test's job has its own
    experiment (the job's name)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def runs(client, experiment: str) -> dict[str, object]:
    """The experiment's live runs, by run name."""
    return {run.info.run_name: run for run in client.search_runs([experiment])}


class ExportingLauncher(SimLauncher):
    """Simulated trials that export a real (untrained) model, so that the registered model loads
    and predicts without a training run."""

    def _write(self, storage, status, state, now, history=None, final=False, **fields):
        super()._write(storage, status, state, now, history=history, final=final, **fields)
        if final and storage.exists(FILES.model_info):
            from automl_images.trainer import export
            from automl_images.trainer.tasks import get_adapter

            hyperparameters = resolve(Task.CLASSIFICATION, {"model_name": "resnet18", "pretrained": 0,
                                                            "resize_size": 16, "crop_size": 16})
            adapter = get_adapter(Task.CLASSIFICATION, hyperparameters)
            export.export_model(storage, adapter.build_model(len(LABELS)).state_dict(), {
                "task": Task.CLASSIFICATION.value, "model_name": "resnet18", "labels": LABELS,
                "hyperparameters": hyperparameters, **adapter.model_info, "primary_metric": "accuracy",
                "best_metric": 0.5, "epoch": 1})


@pytest.mark.slow
def test_a_job_its_trials_and_its_best_model_are_logged_once(tmp_path, tracking_uri, one_torch_thread, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a SQLite store keeps its artifacts in ./mlruns
    root = Root(str(tmp_path / "root"))
    submit(root, "squares", sim_job(max_trials=2, concurrent=2, epochs=2,
                                    extra=f"name: squares\nmlflow_tracking_uri: {tracking_uri}\n"))
    log: list[str] = []
    run_until_done(Controller(root, log=log.append, launchers={"local": ExportingLauncher(epoch_s=0.01)}))
    assert root.storage.read_json(root.job_state("squares"))["status"] == "completed"
    assert not [line for line in log if "MLflow" in line], log

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("squares").experiment_id
    logged = runs(client, experiment)
    assert set(logged) == {"squares", "t0000", "t0001"}
    job_run = logged["squares"]
    assert job_run.info.status == "FINISHED" and job_run.data.params["primary_metric"] == "accuracy"
    for trial in ("t0000", "t0001"):
        run = logged[trial]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == job_run.info.run_id
        spec = root.read_trial("squares", trial, FILES.spec)["hyperparameters"]
        assert run.data.params["learning_rate"] == str(spec["learning_rate"])
        assert run.data.params["number_of_epochs"] == "2"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "accuracy")] == [1, 2]
    best = root.storage.read_json(root.best_trial("squares"))["metrics"]["accuracy"]
    assert job_run.data.metrics["best_accuracy"] == pytest.approx(best)
    artifacts = {a.path for a in client.list_artifacts(job_run.info.run_id)}
    assert {"report.html", "leaderboard.csv", "model"} <= artifacts

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    model = mlflow.pyfunc.load_model("models:/squares/1")
    images = [str(tmp_path / "red.png"), str(tmp_path / "blue.png")]
    for path, colour in zip(images, [(220, 30, 30), (30, 40, 220)]):
        Image.new("RGB", (20, 20), colour).save(path)
    predictions = model.predict(images)
    assert len(predictions) == 2 and all(p["label"] in LABELS and set(p["scores"]) == set(LABELS)
                                         for p in predictions)
    assert model.predict(pandas.DataFrame({"image": images})) == predictions

    # Again, as a restarted controller whose mlflow.json was lost: the runs are found by their tags.
    root.storage.delete(root.job_key("squares", mlflow_sync.STATE))
    mlflow_sync.sync(root, "squares", load(root, "squares"), trials.read_all(root, "squares", 0.0), True,
                     log.append)
    assert set(runs(client, experiment)) == {"squares", "t0000", "t0001"}
    assert [str(v.version) for v in client.search_model_versions("name = 'squares'")] == ["1"]


def test_the_environment_names_the_server_and_a_half_logged_trial_is_logged_again(tmp_path, tracking_uri, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    root = Root(str(tmp_path / "root"))
    submit(root, "sim", sim_job(max_trials=2, concurrent=2, epochs=3))
    log: list[str] = []
    run_until_done(Controller(root, log=log.append, launchers={"local": SimLauncher(epoch_s=0.01)}))
    assert not [line for line in log if "MLflow" in line], log
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("sim").experiment_id
    logged = runs(client, experiment)
    assert set(logged) == {"sim", "t0000", "t0001"}
    assert [m.step for m in client.get_metric_history(logged["t0001"].info.run_id, "accuracy")] == [1, 2, 3]

    # A controller died while it filled t0001's run: that run is deleted and the trial logged whole.
    saved = root.storage.read_json(root.job_key("sim", mlflow_sync.STATE))
    client.update_run(logged["t0001"].info.run_id, status="RUNNING")
    root.storage.write_json(root.job_key("sim", mlflow_sync.STATE),
                            {**saved, "finished": False, "trials": {"t0000": saved["trials"]["t0000"]}})
    mlflow_sync.sync(root, "sim", load(root, "sim"), trials.read_all(root, "sim", 0.0), True, log.append)
    again = runs(client, experiment)
    assert set(again) == {"sim", "t0000", "t0001"} and again["t0001"].info.run_id != logged["t0001"].info.run_id
    assert again["t0001"].info.status == "FINISHED"
    assert len(client.get_metric_history(again["t0001"].info.run_id, "accuracy")) == 3
    assert [str(v.version) for v in client.search_model_versions("name = 'sim'")] == ["1"]


def test_without_mlflow_installed_the_job_runs_and_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setitem(sys.modules, "mlflow", None)
    root = Root(str(tmp_path / "root"))
    submit(root, "sim", sim_job(max_trials=2, concurrent=2, epochs=1))
    log: list[str] = []
    run_until_done(Controller(root, log=log.append, launchers={"local": SimLauncher(epoch_s=0.01)}))
    assert root.storage.read_json(root.job_state("sim"))["status"] == "completed"
    told = [line for line in log if "mlflow" in line.lower()]
    assert told == [f"job sim: MLflow tracking is asked for (sqlite:///{tmp_path / 'mlflow.db'}) but mlflow is not "
                    f"installed: {mlflow_sync.INSTALL}"]
