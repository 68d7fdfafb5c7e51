"""Azure ML's own job files, taken as they are (controller/azure_job.py): jobs written by Azure's
SDK (`azure-ai-ml`, built and dumped here, offline) for every task, sampler and early-termination
policy; CLI v2 YAML as azureml-examples writes it; a pipeline with one automl step; the GA
hyperparameter names; AutoMode. Each validates, `validate --explain` prints the native job, the
fields with no meaning here are each reported, and a tiny one runs through the controller."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from simulated import FakeClock, SimLauncher, run_until_done, write_sim_data

from automl_images.controller import accepted, automode
from automl_images.controller.cli import main
from automl_images.controller.loop import Controller
from automl_images.controller.spec import JobSpecError, native_job, parse_job
from automl_images.controller.submit import validate_file
from automl_images.core.hyperparameters import Task
from automl_images.core.layout import Root


def _sdk_jobs() -> dict[str, object]:
    """One job per task, together every sampler and policy, built with Azure's SDK."""
    from azure.ai.ml import Input, automl
    from azure.ai.ml.automl import SearchSpace
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.sweep import (
        BanditPolicy,
        Choice,
        LogUniform,
        MedianStoppingPolicy,
        TruncationSelectionPolicy,
        Uniform,
    )

    data = Input(type=AssetTypes.MLTABLE, path="./train-mltable")
    validation = Input(type=AssetTypes.MLTABLE, path="./validation-mltable")
    jobs = {}
    job = automl.image_classification(compute="gpu-cluster", experiment_name="fridge", training_data=data,
                                      target_column_name="label", primary_metric="Accuracy", tags={"team": "a"})
    job.set_limits(timeout_minutes=90, max_trials=4, max_concurrent_trials=2)
    job.set_training_parameters(early_stopping=True, evaluation_frequency=1, ams_gradient=True,
                                learning_rate_scheduler="warmup_cosine", gradient_accumulation_step=2,
                                number_of_workers=0, random_seed=7)
    job.extend_search_space([
        SearchSpace(model_name=Choice(["resnet18", "resnet101"]), learning_rate=LogUniform(-6, -3),
                    training_crop_size=Choice([224, 256]))])
    job.set_sweep(sampling_algorithm="random",
                  early_termination=BanditPolicy(evaluation_interval=2, slack_factor=0.2, delay_evaluation=6))
    jobs["classification"] = job

    job = automl.image_classification_multilabel(training_data=data, target_column_name="label",
                                                 primary_metric="IOU", validation_data_size=0.25)
    job.set_limits(max_trials=3)
    job.extend_search_space([SearchSpace(model_name=Choice(["resnest50"]), learning_rate=Uniform(0.001, 0.01))])
    job.set_sweep(sampling_algorithm="bayesian")
    jobs["multilabel"] = job

    job = automl.image_object_detection(training_data=data, validation_data=validation, target_column_name="label",
                                        primary_metric="MeanAveragePrecision")
    job.set_limits(max_trials=6, max_concurrent_trials=3)
    job.set_training_parameters(validation_iou_threshold=0.6, box_detections_per_image=50,
                                tile_predictions_nms_threshold=0.3, validation_metric_type="coco")
    job.extend_search_space([
        SearchSpace(model_name=Choice(["yolov5"]), model_size=Choice(["small", "extra_large"]),
                    image_size=Choice([320, 640]), nms_iou_threshold=Choice([0.5])),
        SearchSpace(model_name=Choice(["fasterrcnn_resnet101_fpn"]), min_size=Choice([600, 800]),
                    box_score_threshold=Choice([0.2, 0.3]), tile_grid_size=Choice(["(3, 2)"]))])
    job.set_sweep(sampling_algorithm="grid", early_termination=TruncationSelectionPolicy(
        truncation_percentage=20, evaluation_interval=1))
    jobs["detection"] = job

    job = automl.image_instance_segmentation(training_data=data, target_column_name="label")
    job.set_limits(max_trials=2)
    job.extend_search_space([SearchSpace(model_name=Choice(["maskrcnn_resnet18_fpn", "maskrcnn_resnet152_fpn"]),
                                         learning_rate=Uniform(0.001, 0.01))])
    job.set_sweep(sampling_algorithm="random", early_termination=MedianStoppingPolicy(delay_evaluation=2))
    jobs["segmentation"] = job

    job = automl.image_instance_segmentation(training_data=data, target_column_name="label")
    job.set_limits(max_trials=2)
    job.set_sweep(sampling_algorithm="random", early_termination=BanditPolicy(slack_amount=0.1))
    jobs["bandit-slack-amount"] = job

    job = automl.image_classification(training_data=data, target_column_name="label")
    job.set_limits(max_trials=5, max_concurrent_trials=2)  # no search space: AutoMode
    jobs["automode"] = job
    return jobs


@pytest.fixture(scope="module")
def sdk_files(tmp_path_factory) -> dict[str, Path]:
    """The SDK's jobs dumped to YAML (the SDK needs no network for either)."""
    pytest.importorskip("azure.ai.ml", reason="azure-ai-ml (the dev extra) writes these jobs")
    folder = tmp_path_factory.mktemp("sdk")
    files = {}
    for name, job in _sdk_jobs().items():
        job.dump(folder / f"{name}.yml")
        files[name] = folder / f"{name}.yml"
    return files


def test_mltable_data_as_the_sdk_writes_it_is_taken(sdk_files):
    """Azure's SDK writes image jobs with MLTable data only: the folder is the job's data, read
    through its MLTable file (core/mltable.py) by validate, check-data and the trials alike."""
    spec = parse_job(sdk_files["detection"].read_text(), "job.yml")
    assert spec.training_data.rstrip("/").endswith("train-mltable")
    assert spec.validation_data.rstrip("/").endswith("validation-mltable")


def test_every_sdk_job_parses_as_the_sdk_wrote_it(sdk_files):
    specs = {name: parse_job(_with_jsonl_data(path, "train.jsonl").read_text(), str(path))
             for name, path in sdk_files.items()}
    assert {name: (s.task, s.sampling, s.early_termination and s.early_termination.policy)
            for name, s in specs.items()} == {
        "classification": (Task.CLASSIFICATION, "random", "bandit"),
        "multilabel": (Task.MULTI_LABEL, "bayesian", None),
        "detection": (Task.OBJECT_DETECTION, "grid", "truncation_selection"),
        "segmentation": (Task.INSTANCE_SEGMENTATION, "random", "median_stopping"),
        "bandit-slack-amount": (Task.INSTANCE_SEGMENTATION, "random", "bandit"),
        "automode": (Task.CLASSIFICATION, "random", None)}
    assert {spec.training_data for spec in specs.values()} == {"train.jsonl"}
    assert specs["detection"].validation_data == "val.jsonl"
    mc = specs["classification"]
    assert (mc.primary_metric, mc.seed, mc.limits.max_trials, mc.limits.max_concurrent_trials,
            mc.limits.timeout_hours) == ("accuracy", 7, 4, 2, 1.5)
    # the bandit policy as the SDK writes it: slack_factor 0.2 beside slack_amount 0.0
    assert (mc.early_termination.slack_factor, mc.early_termination.slack_amount) == (0.2, None)
    assert mc.arguments == {"early_stopping": 1, "evaluation_frequency": 1, "amsgrad": 1,
                            "lr_scheduler": "warmup_cosine", "gradient_accumulation_step": 2, "number_of_workers": 0}
    assert str(mc.search_space[0]["crop_size"]) == "choice(224, 256)"  # training_crop_size, its canonical name
    amount = specs["bandit-slack-amount"].early_termination
    assert (amount.slack_factor, amount.slack_amount) == (None, 0.1)
    assert specs["multilabel"].arguments == {"split_ratio": 0.25}
    assert specs["multilabel"].primary_metric == "iou"
    od = specs["detection"]
    assert od.arguments == {"validation_iou_threshold": 0.6, "box_detections_per_img": 50,
                            "tile_predictions_nms_thresh": 0.3, "validation_metric_type": "coco"}
    assert [{k: str(v) for k, v in space.items()} for space in od.search_space] == [
        {"model_name": "choice('yolov5')", "model_size": "choice('small', 'extra_large')",
         "img_size": "choice(320, 640)", "box_nms_thresh": "choice(0.5)"},
        {"model_name": "choice('fasterrcnn_resnet101_fpn')", "min_size": "choice(600, 800)",
         "box_score_thresh": "choice(0.2, 0.3)", "tile_grid_size": "choice('(3, 2)')"}]
    saved = json.loads(json.dumps(od.to_json()))  # spec.json: the canonical names only
    assert "box_nms_thresh" in saved["defaults"]["yolov5"] and "nms_iou_threshold" not in saved["defaults"]["yolov5"]
    yolo = od.trial_hyperparameters(0, {"model_name": "yolov5", "model_size": "extra_large", "img_size": 320})
    assert (yolo["model_size"], yolo["box_nms_thresh"]) == ("xlarge", 0.5)
    rcnn = od.trial_hyperparameters(1, {"model_name": "fasterrcnn_resnet101_fpn", "min_size": 600,
                                        "box_score_thresh": 0.2, "tile_grid_size": "(3, 2)"})
    assert (rcnn["tile_grid_size"], rcnn["validation_iou_threshold"], rcnn["box_detections_per_img"]) == (
        "3x2", 0.6, 50)
    assert specs["automode"].automode and str(specs["automode"].search_space[1]["model_name"]) == (
        "choice('resnet50', 'resnet101')")


def test_the_fields_with_no_meaning_here_are_each_reported(sdk_files):
    notices = parse_job(_with_jsonl_data(sdk_files["classification"], "train.jsonl").read_text(), "job.yml").notices
    fields = [n.split("field '")[1].split("'")[0] for n in notices]
    assert fields == ["compute", "experiment_name", "log_verbosity", "outputs", "properties", "tags"]
    assert notices[0].startswith("job.yml:1: field 'compute': ignored: trials run where compute.launcher says")


def _with_jsonl_data(path: Path, train: str, val: str = "val.jsonl") -> Path:
    """The SDK's job with its MLTable folders swapped for JSONL files (`type: uri_file`, which the
    SDK refuses to write for image jobs and the CLI takes): reading MLTable is issue 14 item 2."""
    text = path.read_text().replace("path: azureml:./train-mltable", f"path: {train}")
    text = text.replace("path: azureml:./validation-mltable", f"path: {val}")
    out = path.with_name(f"jsonl-{path.name}")
    out.write_text(text.replace("type: mltable", "type: uri_file"))
    return out


def test_validate_prints_the_notices_and_explain_the_native_job(sdk_files, tmp_path, capsys):
    root = Root(str(tmp_path))
    job = _with_jsonl_data(sdk_files["classification"], write_sim_data(root))
    assert main(["validate", "--explain", str(job)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(": field ")[1].split(":")[0] for line in out[:6]] == [
        "'compute'", "'experiment_name'", "'log_verbosity'", "'outputs'", "'properties'", "'tags'"]
    assert out[6] == (f"{job}: valid (image-classification, primary metric accuracy, random sampling, 1 subspace, "
                      "4 trials)")
    assert yaml.safe_load("\n".join(out[7:])) == {
        "limits": {"max_concurrent_trials": 2, "max_trials": 4, "timeout_hours": 1.5},
        "primary_metric": "accuracy",
        "search_space": [{"learning_rate": "loguniform(-6, -3)", "model_name": "choice('resnet18', 'resnet101')",
                          "training_crop_size": "choice(224, 256)"}],
        "sampling": "random",
        "early_termination": {"delay_evaluation": 6, "evaluation_interval": 2, "slack_factor": 0.2, "type": "bandit"},
        "task": "image-classification",
        "training_data": write_sim_data(root),
        "arguments": {"ams_gradient": True, "early_stopping": True, "evaluation_frequency": 1,
                      "gradient_accumulation_step": 2, "learning_rate_scheduler": "warmup_cosine",
                      "number_of_workers": 0},
        "seed": 7}
    assert validate_file(str(job)).limits.max_trials == 4
    # the native job validates as the same spec
    native = tmp_path / "native.yml"
    native.write_text(yaml.safe_dump(native_job(job.read_text(), str(job))))
    assert parse_job(native.read_text(), str(job)).search_space == parse_job(job.read_text(), str(job)).search_space


def test_automode_searches_the_curated_space_and_saves_it(sdk_files, tmp_path, capsys):
    root = Root(str(tmp_path))
    job = _with_jsonl_data(sdk_files["automode"], write_sim_data(root))
    assert main(["validate", "--explain", str(job)]) == 0
    out = capsys.readouterr().out
    assert "2 subspaces (AutoMode's curated space), 5 trials" in out
    assert yaml.safe_load(out.split("trials)\n", 1)[1])["search_space"] == automode.space(Task.CLASSIFICATION)
    spec = parse_job(job.read_text(), str(job))
    accepted.save(root, "auto", spec)
    saved = root.storage.read_json(root.automode_space("auto"))
    assert saved == {"task": "image-classification", "max_trials": 5, "search_space": spec.to_json()["search_space"]}
    # one trial, or grid sampling (which needs listed values), trains the default model as before
    for extra in ("limits:\n  max_trials: 1\n", "sweep:\n  sampling_algorithm: grid\n"):
        text = job.read_text().replace("limits:\n  max_concurrent_trials: 2\n  max_trials: 5\n", extra)
        assert parse_job(text).search_space == ({"model_name": "resnet50"},) and not parse_job(text).automode


def test_an_sdk_job_runs_through_the_controller(sdk_files, local_root):
    root = Root(local_root)
    job = _with_jsonl_data(sdk_files["classification"], write_sim_data(root))
    root.storage.write_text("inbox/azure.yaml", job.read_text())
    clock = FakeClock()
    launcher = SimLauncher(clock=clock)
    controller = Controller(root, log=lambda line: None, clock=clock, launchers={"local": launcher})
    run_until_done(controller, clock, step_s=10.0)
    assert root.storage.read_json(root.job_state("azure"))["status"] == "completed"
    assert len(launcher.launches) == 4
    spec = root.storage.read_json(root.job_spec("azure"))
    assert spec["notices"][0].endswith("field 'compute': ignored: trials run where compute.launcher says "
                                       "(local or skypilot), not on an Azure compute")
    trial = root.read_trial("azure", "t0000", "spec.json")
    assert trial["hyperparameters"]["gradient_accumulation_step"] == 2
    assert trial["hyperparameters"]["amsgrad"] == 1 and trial["seed"] != 0


# -- CLI v2 YAML as azureml-examples writes it ------------------------------------------------------

EXAMPLE = """\
$schema: https://azuremlsdk2.blob.core.windows.net/preview/0.0.1/autoMLJob.schema.json
type: automl

experiment_name: dpv2-cli-automl-image-object-detection-experiment
description: An Image Object Detection job using fridge items dataset

compute: azureml:gpu-cluster

task: image_object_detection
log_verbosity: debug
primary_metric: mean_average_precision

target_column_name: label
training_data:
  path: {train}
  type: uri_file
validation_data:
  path: {val}
  type: uri_file

limits:
  timeout_minutes: 60
  max_trials: 10
  max_concurrent_trials: 2

training_parameters:
  early_stopping: True
  evaluation_frequency: 1

sweep:
  sampling_algorithm: random
  early_termination:
    type: bandit
    evaluation_interval: 2
    slack_factor: 0.2
    delay_evaluation: 6

search_space:
  - model_name:
      type: choice
      values: [yolov5]
    learning_rate:
      type: uniform
      min_value: 0.0001
      max_value: 0.01
    model_size:
      type: choice
      values: [small, medium]

  - model_name:
      type: choice
      values: [fasterrcnn_resnet50_fpn]
    learning_rate:
      type: uniform
      min_value: 0.0001
      max_value: 0.001
    optimizer:
      type: choice
      values: [sgd, adam, adamw]
    min_size:
      type: choice
      values: [600, 800]
"""


def test_the_cli_example_as_azureml_examples_writes_it(tmp_path, capsys):
    job = tmp_path / "job.yml"
    job.write_text(EXAMPLE.format(train="train.jsonl", val="val.jsonl"))
    spec = parse_job(job.read_text(), "job.yml")
    assert (spec.task, spec.limits.timeout_hours, spec.limits.max_trials, len(spec.search_space)) == (
        Task.OBJECT_DETECTION, 1.0, 10, 2)
    assert [n.split(": ignored")[0] for n in spec.notices] == [
        "job.yml:4: field 'experiment_name'", "job.yml:5: field 'description'", "job.yml:7: field 'compute'",
        "job.yml:10: field 'log_verbosity'"]


def test_problems_name_the_field_and_line_as_written():
    text = EXAMPLE.format(train="train.jsonl", val="val.jsonl")
    text = text.replace("      values: [small, medium]", "      values: [small, huge]")
    text = text.replace("  max_trials: 10", "  max_trials: 0")
    text = text.replace("  early_stopping: True", "  early_stoping: True")
    text = text.replace("    type: bandit", "    type: bandt")
    with pytest.raises(JobSpecError) as info:
        parse_job(text, "job.yml")
    assert [str(p) for p in info.value.problems] == [
        "job.yml:23: field 'limits.max_trials': must be between 1 and 1000, got 0",
        "job.yml:33: field 'sweep.early_termination.type': unknown policy 'bandt' (did you mean 'bandit'?); "
        "allowed: bandit, median_stopping, truncation_selection, asha",
        "job.yml:46: field 'search_space[0].model_size': choice('small', 'huge'): value 'huge' must be one of "
        "small, medium, large, xlarge; got 'huge'",
        "job.yml:27: field 'training_parameters.early_stoping': unknown hyperparameter 'early_stoping' (did you "
        "mean 'early_stopping'?); allowed: " + info.value.problems[3].message.split("allowed: ")[1]]


REFUSALS = [
    ("target_column_name: label", "target_column_name: class", "job.yml:13: field 'target_column_name': the JSONL's "
     "label column is read as 'label'"),
    ("  path: train.jsonl", "  path: azureml:fridge-train:3", "job.yml:15: field 'training_data.path': "
     "'azureml:fridge-train:3' is a registered Azure data asset"),
    ("  path: train.jsonl", "  path: azureml://datastores/workspaceblobstore/paths/train", "job.yml:15: field "
     "'training_data.path': 'azureml://datastores/workspaceblobstore/paths/train' is an Azure datastore URI"),
    ("type: automl", "type: command", "job.yml:2: field 'type': 'command' is not an AutoML job"),
    ("      type: uniform\n      min_value: 0.0001\n      max_value: 0.01",
     "      type: uniform\n      min_value: 0.0001", "job.yml:42: field 'search_space[0].learning_rate': uniform "
     "takes min_value, max_value; missing max_value"),
    ("  evaluation_frequency: 1", "  evaluation_frequency: 1\n  checkpoint_run_id: run-1",
     "job.yml:29: field 'training_parameters.checkpoint_run_id': an Azure run's checkpoint cannot be read here"),
    ("  type: uri_file\nvalidation_data", "  type: uri_folder\nvalidation_data",
     "job.yml:16: field 'training_data.type': 'uri_folder': the data is a JSONL file (uri_file) or an MLTable"),
]


@pytest.mark.parametrize("old, new, message", REFUSALS, ids=[r[2].split("'")[1] for r in REFUSALS])
def test_what_cannot_be_honoured_is_refused_with_the_reason(old, new, message):
    text = EXAMPLE.format(train="train.jsonl", val="val.jsonl")
    assert text.count(old) == 1
    with pytest.raises(JobSpecError) as info:
        parse_job(text.replace(old, new), "job.yml")
    assert str(info.value.problems[0]).startswith(message), str(info.value)


PIPELINE = """\
$schema: https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json
type: pipeline
description: Pipeline using AutoML Image Multiclass Classification task
display_name: pipeline-with-image-classification
experiment_name: pipeline-with-automl
settings:
  default_compute: azureml:gpu-cluster
inputs:
  train:
    type: uri_file
    path: data/train.jsonl
jobs:
  image_node:
    type: automl
    task: image_classification
    primary_metric: accuracy
    limits:
      timeout_minutes: 180
      max_trials: 10
    target_column_name: label
    training_data: ${{parent.inputs.train}}
    search_space:
      - model_name:
          type: choice
          values: [vitb16r224, vits16r224]
    training_parameters:
      early_stopping: True
    outputs:
      best_model:
        type: mlflow_model
  register_model_node:
    type: command
    component: file:./components/component_register_model.yaml
    inputs:
      model_input_path: ${{parent.jobs.image_node.outputs.best_model}}
"""


def test_a_pipeline_with_one_automl_step_runs_that_step():
    spec = parse_job(PIPELINE, "pipeline.yml")
    assert (spec.task, spec.training_data, spec.limits.max_trials) == (Task.CLASSIFICATION, "data/train.jsonl", 10)
    assert [n.split(": ignored: ")[0] for n in spec.notices] == [
        "pipeline.yml:3: field 'description'", "pipeline.yml:4: field 'display_name'",
        "pipeline.yml:5: field 'experiment_name'", "pipeline.yml:6: field 'settings'",
        "pipeline.yml:31: field 'jobs.register_model_node'", "pipeline.yml:28: field 'jobs.image_node.outputs'"]


def test_a_pipeline_the_automl_step_of_which_cannot_be_taken_alone_is_refused():
    two = PIPELINE.replace("    type: command\n", "    type: automl\n")
    with pytest.raises(JobSpecError, match="found 2 \\(image_node, register_model_node\\): copy the automl step"):
        parse_job(two, "pipeline.yml")
    chained = PIPELINE.replace("${{parent.inputs.train}}", "${{parent.jobs.prep.outputs.train}}")
    with pytest.raises(JobSpecError) as info:
        parse_job(chained, "pipeline.yml")
    assert str(info.value).startswith("pipeline.yml:21: field 'jobs.image_node.training_data': "
                                      "${{parent.jobs.prep.outputs.train}} is not a pipeline input this file gives: "
                                      "automl-images runs the automl step 'image_node' alone")


# -- the SDK v1 names and the GA names in our own format --------------------------------------------

def test_sdk_v1_names_at_the_top_level():
    spec = parse_job(textwrap.dedent("""\
        task: image-classification
        training_data: train.jsonl
        compute_target: gpu-cluster
        iterations: 6
        max_concurrent_iterations: 3
        experiment_timeout_hours: 2
        hyperparameter_sampling: bayesian
        validation_size: 0.3
        early_termination_policy:
          policy: bandit
          slack_factor: 0.1
          slack_amount: 0.0
        """))
    assert (spec.limits.max_trials, spec.limits.max_concurrent_trials, spec.limits.timeout_hours) == (6, 3, 2)
    assert (spec.sampling, spec.arguments, spec.early_termination.slack_factor) == ("bayesian", {"split_ratio": 0.3},
                                                                                    0.1)
    assert spec.notices == ("job.yaml:3: field 'compute_target': ignored: trials run where compute.launcher says "
                            "(local or skypilot), not on an Azure compute",)


def test_ga_and_preview_names_are_one_setting():
    base = "task: image-classification\ntraining_data: train.jsonl\n"
    ga = parse_job(base + "arguments:\n  learning_rate_scheduler: step\n  validation_resize_size: 288\n")
    preview = parse_job(base + "arguments:\n  lr_scheduler: step\n  resize_size: 288\n")
    assert ga.arguments == preview.arguments == {"lr_scheduler": "step", "resize_size": 288}
    with pytest.raises(JobSpecError, match="arguments.validation_crop_size': sets crop_size a second time"):
        parse_job(base + "arguments:\n  training_crop_size: 224\n  validation_crop_size: 256\n")
    with pytest.raises(JobSpecError, match=r"search_space\[0\].box_nms_thresh': sets box_nms_thresh a second time"):
        parse_job("task: image-object-detection\ntraining_data: train.jsonl\nsearch_space:\n"
                  "  - nms_iou_threshold: 0.4\n    box_nms_thresh: 0.5\n")


def test_ga_validation_loss_and_mosaic_are_taken_at_either_value():
    base = "task: image-object-detection\ntraining_data: train.jsonl\n"
    for value in ("enable", "disable"):
        spec = parse_job(base + f"arguments:\n  log_validation_loss: {value}\n  log_training_metrics: enable\n")
        assert spec.arguments == {"log_validation_loss": value, "log_training_metrics": "enable"}
    spec = parse_job(base + "search_space:\n  - model_name: yolov5\n    apply_mosaic_for_yolo: choice(0, 1)\n")
    assert spec.search_space[0]["apply_mosaic_for_yolo"].args == (0, 1)



def test_automode_leaves_the_settings_a_job_fixes_to_it():
    text = ("task: image-classification\ntraining_data: train.jsonl\nlimits:\n  max_trials: 3\n"
            "arguments:\n  number_of_epochs: 2\n  learning_rate: 0.02\n")
    spec = parse_job(text)
    assert spec.automode and spec.arguments == {"number_of_epochs": 2, "learning_rate": 0.02}
    assert all("learning_rate" not in space and "number_of_epochs" not in space for space in spec.search_space)
    # a crop size the ViT cannot take leaves the ViT out
    spec = parse_job(text.replace("  learning_rate: 0.02\n", "  training_crop_size: 288\n"))
    assert [str(space["model_name"]) for space in spec.search_space] == ["choice('resnet50', 'resnet101')"]
