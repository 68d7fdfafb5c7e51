"""The job file: every rejection names the field, its line and what is allowed; valid files give a
typed JobSpec whose trials resolve every default."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO

from automl_images.controller import spec as spec_module
from automl_images.controller.distributions import Distribution
from automl_images.controller.spec import JobSpecError, parse_job
from automl_images.core import hyperparameters as hps
from automl_images.core import models
from automl_images.core.hyperparameters import Task, metric_direction, oriented
from automl_images.core.problems import Problem

SOURCE = "job.yaml"
# Two lines every job needs; what a test adds starts on line 3.
BASE = "task: image-classification\ntraining_data: train.jsonl\n"


def job(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def rejection(text: str) -> JobSpecError:
    with pytest.raises(JobSpecError) as info:
        parse_job(text, SOURCE)
    return info.value


def problem(text: str, path: str, line: int | None, *fragments: str) -> Problem:
    """The one problem reported at `path`: its line, its rendered form, and what its message says."""
    error = rejection(text)
    found = [p for p in error.problems if p.field == path]
    assert found, f"no problem at {path!r}; got:\n{error}"
    p = found[0]
    assert p.line == line, f"{path}: line {p.line}, expected {line}"
    where = f"{SOURCE}:{line}" if line else SOURCE
    prefix = f"{where}: field '{path}': " if path else f"{where}: "
    assert prefix + p.message in str(error).splitlines()
    for fragment in fragments:
        assert fragment in p.message, f"{fragment!r} not in {p.message!r}"
    return p


# ------------------------------------------------------------------------------------------------
# Unknown keys, with the close match


def test_unknown_top_level_key_suggests_the_close_match():
    p = problem(BASE + "primary_metrc: accuracy\n", "primary_metrc", 3,
                "unknown key 'primary_metrc'", "did you mean 'primary_metric'?", "allowed: ")
    for key in ("task", "training_data", "search_space", "arguments", "limits"):
        assert key in p.message.split("allowed: ")[1]


def test_unknown_key_far_from_any_has_no_suggestion():
    p = problem(BASE + "zzzzzz: 1\n", "zzzzzz", 3, "unknown key 'zzzzzz'", "allowed: ")
    assert "did you mean" not in p.message


def test_unknown_key_in_limits():
    problem(BASE + "limits:\n  max_trails: 3\n", "limits.max_trails", 4,
            "unknown key 'max_trails'", "did you mean 'max_trials'?", "max_concurrent_trials", "iterations")


def test_unknown_key_in_early_termination_lists_the_policy_keys():
    text = BASE + job("""
        early_termination:
          policy: bandit
          slack_factor: 0.1
          slak_amount: 1
        """)
    p = problem(text, "early_termination.slak_amount", 6, "unknown key 'slak_amount'",
                "did you mean 'slack_amount'?", "evaluation_interval", "delay_evaluation")
    assert "truncation_percentage" not in p.message  # not a bandit key


def test_key_of_another_policy_is_unknown():
    text = BASE + "early_termination:\n  policy: median_stopping\n  slack_factor: 0.1\n"
    problem(text, "early_termination.slack_factor", 5, "unknown key 'slack_factor'")


def test_unknown_key_in_compute():
    problem(BASE + "compute:\n  launchr: local\n", "compute.launchr", 4,
            "unknown key 'launchr'", "did you mean 'launcher'?", "allowed: launcher")


def test_unknown_policy_suggests_the_close_match():
    problem(BASE + "early_termination:\n  policy: bandt\n  slack_factor: 0.1\n", "early_termination.policy", 4,
            "unknown policy 'bandt'", "did you mean 'bandit'?", "median_stopping", "truncation_selection")


def test_unknown_task():
    problem("task: image-clasification\ntraining_data: t.jsonl\n", "task", 1,
            "unknown task 'image-clasification'", "did you mean 'image-classification'?")


def test_missing_task_and_training_data():
    error = rejection("primary_metric: accuracy\n")
    paths = {p.field: p.message for p in error.problems}
    assert "is required" in paths["task"] and "image-multi-labeling" in paths["task"]
    assert "is required" in paths["training_data"]


# ------------------------------------------------------------------------------------------------
# Types and ranges


def test_training_data_must_be_text():
    problem("task: image-classification\ntraining_data: 3\n", "training_data", 2,
            "must be non-empty text, got 3")


def test_max_trials_must_be_an_integer():
    problem(BASE + "limits:\n  max_trials: ten\n", "limits.max_trials", 4, "must be an integer, got 'ten'")


def test_max_trials_must_not_be_a_fraction():
    problem(BASE + "limits:\n  max_trials: 2.5\n", "limits.max_trials", 4, "must be an integer, got 2.5")


@pytest.mark.parametrize("value", [0, 1001])
def test_max_trials_between_1_and_1000(value):
    problem(BASE + f"limits:\n  max_trials: {value}\n", "limits.max_trials", 4,
            f"must be between 1 and 1000, got {value}")


@pytest.mark.parametrize("value", [1, 1000])
def test_max_trials_bounds_are_inclusive(value):
    assert parse_job(BASE + f"limits:\n  max_trials: {value}\n").limits.max_trials == value


def test_max_concurrent_trials_at_most_100():
    problem(BASE + "limits:\n  max_concurrent_trials: 101\n", "limits.max_concurrent_trials", 4,
            "must be between 1 and 100, got 101")


def test_timeout_must_be_positive():
    problem(BASE + "limits:\n  timeout_hours: 0\n", "limits.timeout_hours", 4, "must be in (0, ", "got 0")


def test_limits_must_be_a_mapping():
    problem(BASE + "limits: 5\n", "limits", 3, "must be a mapping, got an integer")


def test_seed_must_be_a_non_negative_integer():
    problem(BASE + "seed: -1\n", "seed", 3, "must be at least 0, got -1")


def test_learning_rate_uniform_out_of_unit_interval():
    problem(BASE + "search_space:\n  - learning_rate: uniform(0.0001, 2)\n", "search_space[0].learning_rate", 4,
            "uniform(0.0001, 2) can produce 2", "learning_rate must be in (0, 1]")


def test_loguniform_bounds_are_logs():
    # loguniform(0.0001, 0.1) draws from [exp(0.0001), exp(0.1)] = [1.0001, 1.105]: plain bounds written as logs
    problem(BASE + "search_space:\n  - learning_rate: loguniform(0.0001, 0.1)\n", "search_space[0].learning_rate",
            4, "can produce 1.0001", "(0, 1]")
    spec = parse_job(BASE + "search_space:\n  - learning_rate: loguniform(-7, -2)\n")
    assert spec.search_space[0]["learning_rate"] == Distribution("loguniform", (-7, -2))


def test_crop_size_choice_with_zero():
    problem(BASE + "search_space:\n  - crop_size: choice(0, 32)\n", "search_space[0].crop_size", 4,
            "choice(0, 32)", "value 0", "(0, ∞)")


def test_constant_out_of_range():
    problem(BASE + "search_space:\n  - momentum: 1.5\n", "search_space[0].momentum", 4, "must be in [0, 1], got 1.5")


def test_choice_hyperparameter_value_not_among_choices():
    problem(BASE + "search_space:\n  - optimizer: choice(sgd, rmsprop)\n", "search_space[0].optimizer", 4,
            "'rmsprop'", "sgd, adam, adamw")


def test_flag_takes_only_choice():
    problem(BASE + "search_space:\n  - early_stopping: uniform(0, 1)\n", "search_space[0].early_stopping", 4,
            "takes choice(...) of 0 or 1")


def test_normal_centred_outside_the_range():
    problem(BASE + "search_space:\n  - learning_rate: lognormal(3, 1)\n", "search_space[0].learning_rate", 4,
            "only 0.13%", "(0, 1]")


def test_every_problem_is_reported_at_once():
    text = job("""
        task: image-classification
        training_data: 3
        limits:
          max_trials: 0
        primary_metric: iou
        """)
    error = rejection(text)
    assert {(p.field, p.line) for p in error.problems} == {
        ("training_data", 2), ("limits.max_trials", 4), ("primary_metric", 5)}
    assert len(str(error).splitlines()) == 3


# ------------------------------------------------------------------------------------------------
# Models


def test_unknown_model_suggests_the_close_match():
    problem(BASE + "search_space:\n  - model_name: resnet51\n", "search_space[0].model_name", 4,
            "unknown model for image-classification 'resnet51'", "did you mean 'resnet50'?",
            "resnet18", "mobilenetv2")


def test_unknown_model_inside_a_choice():
    problem(BASE + "search_space:\n  - model_name: choice(resnet18, resnet51)\n", "search_space[0].model_name", 4,
            "'resnet51'", "did you mean 'resnet50'?")


def test_model_of_another_task():
    p = problem(BASE + "search_space:\n  - model_name: yolov5\n", "search_space[0].model_name", 4,
                "model 'yolov5' does not apply to image-classification", "models for it: ", "resnet50")
    assert "yolov5" not in p.message.split("models for it: ")[1]


def test_every_classification_model_is_available():
    names = [m.name for m in models.models_for(Task.CLASSIFICATION)]
    assert {"seresnext", "vits16r224", "vitb16r224", "vitl16r224"} <= set(names)
    spec = parse_job(BASE + f"search_space:\n  - model_name: choice({', '.join(names)})\n")
    assert spec.search_space[0]["model_name"].values == names


def test_model_alias_is_canonical():
    spec = parse_job(BASE + "search_space:\n  - model_name: choice(resnet18, mobilenet_v2)\n")
    assert spec.search_space[0]["model_name"] == Distribution("choice", ("resnet18", "mobilenetv2"))


def test_model_name_defaults_per_task():
    assert parse_job(BASE).search_space == ({"model_name": "resnet50"},)


def test_model_name_with_a_continuous_distribution():
    problem(BASE + "search_space:\n  - model_name: uniform(0, 1)\n", "search_space[0].model_name", 4,
            "takes a name or choice(...)")


# ------------------------------------------------------------------------------------------------
# Hyperparameters that do not apply


def test_unknown_hyperparameter_suggests_the_close_match():
    problem(BASE + "search_space:\n  - learning_rat: 0.01\n", "search_space[0].learning_rat", 4,
            "unknown hyperparameter 'learning_rat'", "did you mean 'learning_rate'?")


def test_hyperparameter_of_another_task_in_search_space():
    problem(BASE + "search_space:\n  - min_size: 600\n", "search_space[0].min_size", 4,
            "min_size does not apply to image-classification",
            "it is for image-object-detection, image-instance-segmentation")


def test_hyperparameter_of_another_task_in_arguments():
    problem(BASE + "arguments:\n  min_size: 600\n", "arguments.min_size", 4,
            "min_size does not apply to image-classification")


def test_model_specific_hyperparameter_on_another_model_message():
    # img_size belongs to yolov5 only, min_size to the Faster R-CNN family
    text = job("""
        task: image-object-detection
        training_data: train.jsonl
        search_space:
          - model_name: fasterrcnn_resnet50_fpn
            img_size: 640
          - model_name: yolov5
            min_size: 600
        """)
    message = problem(text, "search_space[0].img_size", 5).message
    assert message == "img_size applies only to yolov5, not to fasterrcnn_resnet50_fpn"
    assert problem(text, "search_space[1].min_size", 7).message.startswith(
        "min_size applies only to fasterrcnn_resnet50_fpn")


def test_model_specific_hyperparameter_in_search_space_is_reported():
    text = job("""
        task: image-object-detection
        training_data: train.jsonl
        search_space:
          - model_name: fasterrcnn_resnet50_fpn
            img_size: 640
        """)
    messages = [p.message for p in rejection(text).problems if p.field == "search_space[0].img_size"]
    assert messages and "applies only to yolov5" in messages[0]


def test_detection_settings_and_tiles_are_taken_and_resolved():
    spec = parse_job(job("""
        task: image-object-detection
        training_data: train.jsonl
        lenient_labels: true
        arguments:
          validation_metric_type: coco
          tile_grid_size: " 3X2 "
        search_space:
          - model_name: fasterrcnn_resnet18_fpn
            tile_overlap_ratio: uniform(0.1, 0.3)
        """), SOURCE)
    assert spec.lenient_labels is True
    assert spec.arguments["tile_grid_size"] == "3x2"      # written as the trainer reads it


@pytest.mark.parametrize("lines, path, fragment", [
    ("arguments:\n  tile_grid_size: 3\n", "arguments.tile_grid_size", "COLUMNSxROWS"),
    ("arguments:\n  tile_grid_size: 0x2\n", "arguments.tile_grid_size", "positive whole numbers"),
    ("arguments:\n  tile_overlap_ratio: 1.0\n", "arguments.tile_overlap_ratio", "[0, 1)"),
    ("search_space:\n  - model_name: yolov5\n    tile_grid_size: 2x2\n", "search_space[0].tile_grid_size",
     "applies only to"),
    ("lenient_labels: yes please\n", "lenient_labels", "must be true or false"),
])
def test_detection_settings_refused(lines, path, fragment):
    text = "task: image-object-detection\ntraining_data: train.jsonl\n" + lines
    messages = [p.message for p in rejection(text).problems if p.field == path]
    assert messages and fragment in messages[0], rejection(text)


def test_lenient_labels_is_for_detection_tasks():
    problem(BASE + "lenient_labels: true\n", "lenient_labels", 3, "not to image-classification")


# ------------------------------------------------------------------------------------------------
# Distributions


def test_unknown_distribution_suggests_the_close_match():
    problem(BASE + "search_space:\n  - learning_rate: unifrom(0.001, 0.01)\n", "search_space[0].learning_rate", 4,
            "unknown distribution 'unifrom'", "did you mean uniform?", "loguniform", "qnormal")


def test_unknown_distribution_in_mapping_form():
    text = BASE + job("""
        search_space:
          - learning_rate:
              distribution: unifrom
              args: [0.001, 0.01]
        """)
    problem(text, "search_space[0].learning_rate", 4, "unknown distribution 'unifrom'", "uniform")


def test_distribution_in_mapping_form():
    text = BASE + "search_space:\n  - learning_rate: {distribution: uniform, args: [0.001, 0.01]}\n"
    assert parse_job(text).search_space[0]["learning_rate"] == Distribution("uniform", (0.001, 0.01))


def test_wrong_arity():
    problem(BASE + "search_space:\n  - learning_rate: uniform(0.001)\n", "search_space[0].learning_rate", 4,
            "uniform takes 2 argument(s), got 1")


def test_integer_hyperparameter_with_continuous_uniform():
    problem(BASE + "search_space:\n  - number_of_epochs: uniform(5, 20)\n", "search_space[0].number_of_epochs", 4,
            "number_of_epochs is an integer", "randint, choice or a q-distribution with an integer q",
            "got uniform(5, 20)")


def test_integer_hyperparameter_with_integer_q_is_accepted():
    spec = parse_job(BASE + "search_space:\n  - number_of_epochs: quniform(5, 20, 1)\n")
    assert spec.search_space[0]["number_of_epochs"] == Distribution("quniform", (5, 20, 1))


def test_search_space_value_that_is_a_list():
    problem(BASE + "search_space:\n  - learning_rate: [0.1, 0.2]\n", "search_space[0].learning_rate", 4,
            "must be a value or a distribution", "got a list")


def test_single_subspace_as_a_mapping():
    spec = parse_job(BASE + "search_space:\n  learning_rate: uniform(0.001, 0.01)\n")
    assert len(spec.search_space) == 1 and "learning_rate" in spec.search_space[0]


# ------------------------------------------------------------------------------------------------
# Primary metric, sampling, policies, launcher


def test_primary_metric_of_another_task():
    problem(BASE + "primary_metric: iou\n", "primary_metric", 3,
            "'iou' is not a metric of image-classification", "'iou' is a metric of image-multi-labeling",
            "allowed: accuracy, precision_score_weighted")


def test_primary_metric_defaults_per_task():
    assert parse_job(BASE).primary_metric == "accuracy"
    assert parse_job("task: image-multi-labeling\ntraining_data: t.jsonl\n").primary_metric == "iou"


def test_log_loss_is_minimized():
    spec = parse_job(BASE + "primary_metric: log_loss\n")
    assert metric_direction(spec.primary_metric) == "minimize" and oriented(spec.primary_metric, 0.25) == -0.25
    assert metric_direction(parse_job(BASE).primary_metric) == "maximize"


def test_grid_sampling_over_a_continuous_distribution():
    text = BASE + "sampling: grid\nsearch_space:\n  - learning_rate: uniform(0.001, 0.01)\n"
    problem(text, "search_space[0].learning_rate", 5, "grid sampling needs discrete values (choice or randint)",
            "got uniform(0.001, 0.01)")


def test_grid_sampling_over_discrete_values_is_accepted():
    spec = parse_job(BASE + "sampling: grid\nsearch_space:\n  - learning_rate: choice(0.001, 0.01)\n")
    assert spec.sampling == "grid"


def test_bayesian_sampling_is_available():
    # its options, warm start and ASHA are tested in test_spec_sweeps.py
    assert parse_job(BASE + "sampling: bayesian\n").sampling == "bayesian"


def test_unknown_sampling_suggests():
    problem(BASE + "sampling: randm\n", "sampling", 3, "unknown sampling 'randm'", "did you mean 'random'?")


def test_sampling_alias():
    assert parse_job(BASE + "sampling_algorithm: grid\n").sampling == "grid"
    assert parse_job(BASE + "hyperparameter_sampling: random\n").sampling == "random"


def test_bandit_needs_slack():
    p = problem(BASE + "early_termination:\n  policy: bandit\n", "early_termination", 3,
                "bandit needs exactly one of slack_factor or slack_amount")
    assert "both" not in p.message


def test_bandit_with_both_slacks():
    text = BASE + "early_termination:\n  policy: bandit\n  slack_factor: 0.1\n  slack_amount: 0.2\n"
    problem(text, "early_termination", 3, "bandit needs exactly one of slack_factor or slack_amount, got both")


def test_bandit_slack_must_be_positive():
    problem(BASE + "early_termination:\n  policy: bandit\n  slack_factor: 0\n", "early_termination.slack_factor",
            5, "must be in (0, ")


def test_truncation_selection_needs_a_percentage():
    problem(BASE + "early_termination:\n  policy: truncation_selection\n", "early_termination", 3,
            "truncation_selection needs truncation_percentage (1 to 99)")


def test_truncation_percentage_range():
    text = BASE + "early_termination:\n  policy: truncation_selection\n  truncation_percentage: 100\n"
    problem(text, "early_termination.truncation_percentage", 5, "must be between 1 and 99, got 100")


def test_policy_settings_are_read():
    text = BASE + job("""
        early_termination:
          type: median_stopping
          evaluation_interval: 2
          delay_evaluation: 4
        """)
    assert parse_job(text).early_termination == spec_module.EarlyTermination(
        "median_stopping", evaluation_interval=2, delay_evaluation=4)


def test_unknown_launcher():
    problem(BASE + "compute:\n  launcher: kubernetes\n", "compute.launcher", 4, "unknown launcher 'kubernetes'",
            "local, skypilot")


# ------------------------------------------------------------------------------------------------
# YAML itself


def test_yaml_syntax_error_has_its_line():
    p = problem(BASE + "limits: max_trials: 3\n", "", 3, "YAML syntax error", "mapping values are not allowed")
    assert p.field == ""


def test_python_tags_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    text = BASE + f"name: !!python/object/apply:os.system ['touch {marker}']\n"
    problem(text, "", 3, "YAML tag not allowed", "python/object/apply:os.system", "refused")
    assert not marker.exists()


def test_duplicate_top_level_keys_are_refused():
    problem(BASE + "seed: 1\nseed: 2\n", "seed", 4, "key appears twice")


def test_duplicate_nested_keys_are_refused():
    problem(BASE + "limits:\n  max_trials: 3\n  max_trials: 4\n", "limits.max_trials", 5, "key appears twice")


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_empty_file(text):
    error = rejection(text)
    assert error.problems == [Problem(SOURCE, "", "the job file is empty")]
    assert str(error) == "job.yaml: the job file is empty"


def test_top_level_list():
    problem("- a\n- b\n", "", 1, "must be a mapping, got a list")


def test_error_as_json():
    data = rejection(BASE + "limits:\n  max_trials: 0\n").to_json()
    assert data["source"] == SOURCE
    assert data["problems"] == [{"path": "limits.max_trials", "line": 4,
                                 "message": "must be between 1 and 1000, got 0"}]


# ------------------------------------------------------------------------------------------------
# Arguments


def test_arguments_as_azure_list():
    spec = parse_job(BASE + 'arguments: ["--number_of_epochs", 3, "--learning_rate", "0.02"]\n')
    assert spec.arguments == {"number_of_epochs": 3, "learning_rate": 0.02}


def test_arguments_list_with_odd_length():
    problem(BASE + 'arguments: ["--number_of_epochs", 3, "--early_stopping"]\n', "arguments", 3,
            'must alternate "--name" and value')


def test_arguments_list_name_without_dashes():
    problem(BASE + 'arguments: ["number_of_epochs", 3]\n', "arguments[0]", 3,
            "expected a name starting with --, got 'number_of_epochs'")


def test_arguments_list_bad_value_points_at_the_value():
    problem(BASE + 'arguments:\n  - "--number_of_epochs"\n  - ten\n', "arguments[1]", 5,
            "must be an integer, got 'ten'")


def test_arguments_of_another_type():
    problem(BASE + "arguments: 3\n", "arguments", 3, "must be a mapping or Azure's")


def test_argument_also_in_search_space():
    text = BASE + "arguments:\n  learning_rate: 0.01\nsearch_space:\n  - learning_rate: uniform(0.001, 0.1)\n"
    problem(text, "arguments.learning_rate", 4, "learning_rate is set both in arguments and in search_space[0]")


def test_model_name_in_arguments():
    problem(BASE + "arguments:\n  model_name: resnet18\n", "arguments.model_name", 4,
            "set model_name in search_space")


def test_flag_arguments_are_coerced():
    spec = parse_job(BASE + "arguments:\n  early_stopping: false\n  pretrained: '1'\n")
    assert spec.arguments == {"early_stopping": 0, "pretrained": 1}


# ------------------------------------------------------------------------------------------------
# Aliases and valid files


def test_azure_limit_aliases():
    text = BASE + "limits:\n  iterations: 5\n  max_concurrent_iterations: 2\n  experiment_timeout_hours: 3\n"
    limits = parse_job(text).limits
    assert (limits.max_trials, limits.max_concurrent_trials, limits.timeout_hours) == (5, 2, 3.0)


def test_alias_problems_name_the_alias():
    problem(BASE + "limits:\n  iterations: 0\n", "limits.iterations", 4, "must be between 1 and 1000")


def test_key_and_its_alias_together():
    problem(BASE + "limits:\n  max_trials: 5\n  iterations: 6\n", "limits.iterations", 5, "given twice")


def test_defaults():
    spec = parse_job(BASE)
    assert spec.limits == spec_module.Limits(max_trials=1, max_concurrent_trials=1, timeout_hours=144.0)
    assert spec.sampling == "random" and spec.early_termination is None and spec.compute.launcher == "local"
    assert spec.seed == 0 and spec.arguments == {} and spec.validation_data is None


README_EXAMPLE = job("""
    name: fridge-sweep
    task: image-classification
    training_data: data/train.jsonl
    validation_data: data/val.jsonl
    primary_metric: accuracy
    sampling: random
    early_termination:
      policy: bandit
      slack_factor: 0.2
      evaluation_interval: 2
      delay_evaluation: 6
    limits:
      max_trials: 20
      max_concurrent_trials: 4
      timeout_hours: 12
    search_space:
      - model_name: choice(resnet18, mobilenetv2)
        learning_rate: loguniform(-7, -2)
        optimizer: choice(sgd, adamw)
      - model_name: resnet50
        learning_rate: uniform(0.001, 0.02)
        number_of_epochs: quniform(10, 30, 5)
    arguments:
      pretrained: 1
      early_stopping: 0
    compute:
      launcher: local
    seed: 0
    weights_cache: s3://my-bucket/weights/
    """)

# The same job without the one setting given both as an argument and in a subspace.
FULL_EXAMPLE = README_EXAMPLE.replace("  number_of_epochs: 15\n", "  early_stopping: 0\n")


def test_readme_example_is_accepted():
    parse_job(README_EXAMPLE, SOURCE)


def test_full_classification_example():
    spec = parse_job(FULL_EXAMPLE, SOURCE)
    assert spec.name == "fridge-sweep" and spec.task is Task.CLASSIFICATION
    assert (spec.training_data, spec.validation_data) == ("data/train.jsonl", "data/val.jsonl")
    assert spec.sampling == "random" and spec.primary_metric == "accuracy"
    assert spec.early_termination == spec_module.EarlyTermination(
        "bandit", evaluation_interval=2, delay_evaluation=6, slack_factor=0.2)
    assert spec.limits == spec_module.Limits(20, 4, 12.0)
    assert spec.weights_cache == "s3://my-bucket/weights/"
    assert spec.search_space == (
        {"model_name": Distribution("choice", ("resnet18", "mobilenetv2")),
         "learning_rate": Distribution("loguniform", (-7, -2)),
         "optimizer": Distribution("choice", ("sgd", "adamw"))},
        {"model_name": "resnet50",
         "learning_rate": Distribution("uniform", (0.001, 0.02)),
         "number_of_epochs": Distribution("quniform", (10, 30, 5))},
    )
    assert spec.arguments == {"pretrained": 1, "early_stopping": 0}
    assert spec.to_json()["search_space"][0]["model_name"] == "choice('resnet18', 'mobilenetv2')"


def test_trial_hyperparameters_resolve_every_default():
    spec = parse_job(FULL_EXAMPLE, SOURCE)
    values = spec.trial_hyperparameters(0, {"model_name": "resnet18", "learning_rate": 0.005, "optimizer": "adamw"})
    assert set(values) == {hp.name for hp in hps.for_task(Task.CLASSIFICATION, "resnet18")}
    assert "min_size" not in values and "img_size" not in values
    # sampled, fixed, then the Azure defaults of multi-class classification
    assert values["model_name"] == "resnet18" and values["learning_rate"] == 0.005 and values["optimizer"] == "adamw"
    assert values["pretrained"] == 1 and values["early_stopping"] == 0
    assert values["number_of_epochs"] == 15
    assert values["training_batch_size"] == 78 and values["validation_batch_size"] == 78
    assert values["lr_scheduler"] == "warmup_cosine" and values["momentum"] == 0.9
    assert values["weight_decay"] == 1e-4 and values["beta2"] == 0.999 and values["amsgrad"] == 0
    assert values["resize_size"] == 256 and values["crop_size"] == 224 and values["weighted_loss"] == 0
    assert values["split_ratio"] == 0.2 and values["early_stopping_patience"] == 5
    assert values["checkpoint_frequency"] is None and values["layers_to_freeze"] is None

    second = spec.trial_hyperparameters(1, {"learning_rate": 0.01, "number_of_epochs": 20})
    assert second["model_name"] == "resnet50" and second["number_of_epochs"] == 20
    assert second["optimizer"] == "sgd"


def test_trial_hyperparameters_default_learning_rate_per_task():
    classification = parse_job(BASE, SOURCE).trial_hyperparameters(0, {})
    assert classification["learning_rate"] == 0.01 and classification["model_name"] == "resnet50"
    multi_label = parse_job("task: image-multi-labeling\ntraining_data: t.jsonl\n", SOURCE).trial_hyperparameters(0, {})
    assert multi_label["learning_rate"] == 0.035
    assert multi_label["training_batch_size"] == 78 and multi_label["number_of_epochs"] == 15


def test_trial_hyperparameters_coerce_and_check():
    spec = parse_job(BASE + "search_space:\n  - early_stopping: choice(true, false)\n", SOURCE)
    assert spec.trial_hyperparameters(0, {"early_stopping": "false"})["early_stopping"] == 0
    with pytest.raises(ValueError, match="learning_rate"):
        spec.trial_hyperparameters(0, {"learning_rate": 3.0})


# ------------------------------------------------------------------------------------------------
# The command line


def _cli(*args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("automl-images")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "automl_images.controller.cli"]
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=60)


def test_cli_validate(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(FULL_EXAMPLE)
    # validate reads the data files (not the images): they must exist and parse
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"image_url": "a.png", "label": "a"}\n'
                                                   '{"image_url": "b.png", "label": "b"}\n')
    (tmp_path / "data" / "val.jsonl").write_text('{"image_url": "c.png", "label": "a"}\n')
    result = _cli("validate", str(good))
    assert result.returncode == 0, result.stderr
    assert "valid (image-classification, primary metric accuracy, random sampling, 2 subspaces, 20 trials)" \
        in result.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE + "limits:\n  max_trials: 0\nprimary_metric: iou\n")
    result = _cli("validate", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert f"{bad}:4: field 'limits.max_trials': must be between 1 and 1000, got 0" in lines
    assert any(line.startswith(f"{bad}:5: field 'primary_metric': 'iou' is not a metric") for line in lines)

    result = _cli("validate", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "no such file" in result.stderr


def test_the_readme_table_is_the_registry():
    readme = (REPO / "docs" / "hyperparameters.md").read_text()
    assert hps.markdown_table() in readme, "regenerate it: python -c 'from automl_images.core." \
                                           "hyperparameters import markdown_table; print(markdown_table())'"


@pytest.mark.parametrize("line, expected", [(None, "local"), ("prepared_images: bucket\n", "bucket"),
                                            ("prepared_images: off\n", "off"), ('prepared_images: "off"\n', "off")])
def test_prepared_images_is_local_by_default_and_taken(line, expected):
    assert parse_job(BASE + (line or ""), SOURCE).prepared_images == expected


def test_prepared_images_refuses_what_it_does_not_know():
    found = problem(BASE + "prepared_images: cloud\n", "prepared_images", 3, "unknown prepared_images 'cloud'")
    assert "allowed: local, bucket, off" in found.message
