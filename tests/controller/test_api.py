"""The Python API (controller/automl.py, controller/submitted.py): a job built with Azure's names is
the job file the parser reads, and a submitted job is waited for and read back, here with simulated
trials (tests/simulated.py) driven by the notebook's own controller."""
from __future__ import annotations

import sys

import pytest
from simulated import SimLauncher, write_sim_data

from automl_images.controller import automl
from automl_images.controller.automl import BanditPolicy, Choice, LogUniform, QUniform, Uniform
from automl_images.controller.loop import Controller
from automl_images.controller.spec import JobSpecError, parse_job
from automl_images.controller.submitted import SubmittedJob
from automl_images.core.layout import Root


@pytest.fixture
def data(local_root) -> str:
    return write_sim_data(Root(local_root))


def v2_job(data: str) -> automl.ImageJob:
    job = automl.image_classification(training_data=data, primary_metric="accuracy", name="fridge", seed=3)
    job.set_limits(max_trials=4, max_concurrent_trials=2, timeout_minutes=90)
    job.set_sweep(sampling_algorithm="Random",
                  early_termination=BanditPolicy(slack_factor=0.2, evaluation_interval=2, delay_evaluation=4))
    job.extend_search_space([{"model_name": Choice(["resnet18", "mobilenetv2"]), "learning_rate": LogUniform(-7, -2)},
                             {"model_name": "resnet50", "learning_rate": Uniform(0.001, 0.02),
                              "number_of_epochs": QUniform(10, 30, 5)}])
    job.set_training_parameters(pretrained=0, early_stopping=0)
    return job


def test_a_job_built_with_azures_v2_names_is_the_job_file_the_parser_reads(data):
    job = v2_job(data)
    assert job.to_dict() == {
        "task": "image-classification", "training_data": data, "name": "fridge", "primary_metric": "accuracy",
        "seed": 3, "limits": {"max_trials": 4, "max_concurrent_trials": 2, "timeout_hours": 1.5},
        "sampling": "random",
        "early_termination": {"policy": "bandit", "slack_factor": 0.2, "evaluation_interval": 2, "delay_evaluation": 4},
        "search_space": [{"model_name": "choice('resnet18', 'mobilenetv2')", "learning_rate": "loguniform(-7, -2)"},
                         {"model_name": "resnet50", "learning_rate": "uniform(0.001, 0.02)",
                          "number_of_epochs": "quniform(10, 30, 5)"}],
        "arguments": {"pretrained": 0, "early_stopping": 0}}
    spec = job.validate()
    assert spec == parse_job(job.to_yaml(), spec_source(job))
    assert (spec.limits.timeout_hours, spec.early_termination.slack_factor, spec.seed) == (1.5, 0.2, 3)
    assert str(spec.search_space[0]["learning_rate"]) == "loguniform(-7, -2)"


def spec_source(job: automl.ImageJob) -> str:
    return f"{job.document['name']}.yaml"


def test_azures_v1_config_builds_the_same_job(data):
    v1 = automl.AutoMLImageConfig(
        task="image-classification", training_data=data, primary_metric="accuracy", name="fridge", seed=3,
        hyperparameter_sampling=automl.RandomParameterSampling([
            {"model_name": "choice(resnet18, mobilenetv2)", "learning_rate": "loguniform(-7, -2)"},
            {"model_name": "resnet50", "learning_rate": "uniform(0.001, 0.02)",
             "number_of_epochs": "quniform(10, 30, 5)"}]),
        early_termination_policy=BanditPolicy(slack_factor=0.2, evaluation_interval=2, delay_evaluation=4),
        iterations=4, max_concurrent_iterations=2, experiment_timeout_hours=1.5,
        arguments=["--pretrained", 0, "--early_stopping", 0])
    assert v1.validate() == v2_job(data).validate()


def test_every_problem_comes_from_the_parser_with_its_field(data):
    job = automl.image_object_detection(training_data=data, primary_metric="accuracy")
    job.extend_search_space({"model_name": "resnet18", "learning_rate": Uniform(0.1, 0.01)})
    job.set_limits(max_trials=0)
    with pytest.raises(JobSpecError) as raised:
        job.validate()
    fields = {problem.field for problem in raised.value.problems}
    assert {"primary_metric", "limits.max_trials", "search_space[0].model_name",
            "search_space[0].learning_rate"} <= fields, raised.value


def test_validate_checks_the_data_files_as_automl_images_validate_does(tmp_path):
    job = automl.image_classification(training_data=tmp_path / "missing.jsonl", name="nodata")
    with pytest.raises(JobSpecError, match="missing.jsonl"):
        job.validate()


def test_a_root_is_required(monkeypatch, data):
    monkeypatch.delenv("AUTOML_IMAGES_ROOT", raising=False)
    with pytest.raises(ValueError, match="AUTOML_IMAGES_ROOT"):
        automl.image_classification(training_data=data).submit()


def test_submit_wait_and_read_the_results(root_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # no tqdm: the plain progress lines
    data = write_sim_data(Root(str(tmp_path / "local")))  # local data: uploaded to a bucket root
    job = automl.image_classification(training_data=data, name="sim")
    job.set_limits(max_trials=3, max_concurrent_trials=2)
    job.extend_search_space({"learning_rate": LogUniform(-7, -2), "momentum": Uniform(0.5, 0.99)})
    job.set_training_parameters(number_of_epochs=2, pretrained=0)
    run = job.submit(root=root_url)
    assert run.status == "queued"
    controller = Controller(root_url, launchers={"local": SimLauncher(epoch_s=0.01)})
    assert run.wait(controller=controller, interval_s=0.05, timeout_s=60) == "completed"
    printed = capsys.readouterr().out.splitlines()
    assert any(line.startswith("running, ") for line in printed)  # a line per change of progress
    assert printed[-2].startswith("completed, 3/3 trials: 3 completed | best accuracy=")
    assert printed[-1] == f"{run.job_id}: completed: all trials finished"

    frame = run.leaderboard()
    assert list(frame.columns) == ["rank", "trial_id", "status", "accuracy", "model_name", "learning_rate",
                                   "momentum", "epochs", "duration_s", "cost_usd", "skipped_images", "reason"]
    assert list(frame["rank"]) == [1, 2, 3] and list(frame["status"]) == ["completed"] * 3
    assert frame["accuracy"].is_monotonic_decreasing
    rows = run.leaderboard(as_frame=False)
    assert [row["trial_id"] for row in rows] == list(frame["trial_id"])

    opened = []
    path = run.open_report(open_browser=opened.append)
    root = Root(root_url)
    if root.storage.is_local:
        assert path == root.storage.url(f"jobs/{run.job_id}/report.html")
    else:  # a bucket's report opens through a local copy
        assert path.startswith("/") and path.endswith(f"/{run.job_id}-report.html")
    assert opened == [f"file://{path}"] and "<html" in open(path).read(200).lower()
    assert run.best_model_url() == root.storage.url(f"jobs/{run.job_id}/best")

    again = SubmittedJob(run.job_id, root_url)  # a restarted notebook picks the job up
    assert again.wait(controller=False, show_progress=False) == "completed"


def test_a_rejected_job_ends_the_wait_with_why(local_root, data, capsys):
    # dropped into the inbox without submit's check: the controller rejects it when it accepts it
    Root(local_root).storage.write_text("inbox/bad.yaml", f"task: image-classification\ntraining_data: {data}\n"
                                                          "seed: -1\n")
    run = SubmittedJob("bad", local_root)
    assert run.wait(controller=Controller(local_root), interval_s=0.05, timeout_s=30) == "rejected"
    out = capsys.readouterr().out
    assert "bad: rejected" in out and "seed" in out
