"""The job file's sweep settings: Bayesian sampling options, warm start, ASHA and the cost limit."""
from __future__ import annotations

import pytest

from automl_images.controller import spec as spec_module
from automl_images.controller import stopping
from automl_images.controller.spec import EarlyTermination, JobSpecError, SamplingOptions, parse_job

BASE = "task: image-classification\ntraining_data: train.jsonl\n"


def problems(text: str) -> dict[str, tuple[int | None, str]]:
    with pytest.raises(JobSpecError) as info:
        parse_job(text)
    return {p.field: (p.line, p.message) for p in info.value.problems}


def test_bayesian_defaults():
    spec = parse_job(BASE + "sampling: bayesian\n")
    assert spec.sampling_options == SamplingOptions(estimator="gp", n_initial_points=5)
    assert spec.warm_start == ()


def test_sampling_options_are_read():
    spec = parse_job(BASE + "sampling: bayesian\nsampling_options:\n  estimator: ET\n  n_initial_points: 2\n")
    assert spec.sampling_options == SamplingOptions("et", 2)


@pytest.mark.parametrize("options, path, line, fragment", [
    ("  estimator: gpr\n", "sampling_options.estimator", 5,
     "unknown estimator 'gpr' (did you mean 'gp'?); allowed: gp, rf, et"),
    ("  estimator: gbrt\n", "sampling_options.estimator", 5, "allowed: gp, rf, et"),
    ("  n_initial_points: 0\n", "sampling_options.n_initial_points", 5, "must be between 1 and 1000, got 0"),
    ("  acquisition: EI\n", "sampling_options.acquisition", 5, "unknown key 'acquisition'"),
])
def test_bad_sampling_options(options, path, line, fragment):
    found = problems(BASE + "sampling: bayesian\nsampling_options:\n" + options)
    assert path in found, found
    assert found[path][0] == line and fragment in found[path][1]


def test_sampling_options_need_bayesian():
    found = problems(BASE + "sampling: random\nsampling_options:\n  estimator: et\n")
    assert found["sampling_options"] == (4, "apply only to bayesian sampling; random sampling takes none")


def test_warm_start_jobs():
    assert parse_job(BASE + "sampling: bayesian\nwarm_start: [sweep-1, sweep-2, sweep-1]\n").warm_start == \
        ("sweep-1", "sweep-2")
    assert parse_job(BASE + "sampling: bayesian\nwarm_start: sweep-1\n").warm_start == ("sweep-1",)
    # HyperDrive's name
    assert parse_job(BASE + "sampling: bayesian\nresume_from:\n  - sweep-1\n").warm_start == ("sweep-1",)


def test_warm_start_problems():
    found = problems(BASE + "sampling: bayesian\nwarm_start: [Not A Job]\n")
    assert "is not a job id" in found["warm_start[0]"][1]
    found = problems(BASE + "sampling: grid\nresume_from: [sweep-1]\n")
    assert found["resume_from"] == (4, "seeds bayesian sampling only; grid sampling would ignore it")
    found = problems(BASE + "sampling: bayesian\nwarm_start: {job: x}\n")
    assert "must be a list of texts" in found["warm_start"][1]


def test_asha_is_available_with_defaults():
    assert "asha" in spec_module.POLICIES and "asha" in stopping.POLICIES
    spec = parse_job(BASE + "early_termination:\n  policy: asha\n")
    assert spec.early_termination == EarlyTermination("asha", min_resource=1, reduction_factor=3, max_resource=None)
    assert spec.early_termination.evaluation_interval == 1 and spec.early_termination.delay_evaluation == 0


def test_asha_settings_and_ray_names():
    text = BASE + "early_termination:\n  policy: asha\n  grace_period: 2\n  reduction_factor: 4\n  max_t: 32\n"
    assert parse_job(text).early_termination == EarlyTermination("asha", min_resource=2, reduction_factor=4,
                                                                 max_resource=32)


@pytest.mark.parametrize("settings, path, fragment", [
    ("  reduction_factor: 1\n", "early_termination.reduction_factor", "must be between 2 and 100, got 1"),
    ("  min_resource: 0\n", "early_termination.min_resource", "must be at least 1, got 0"),
    ("  min_resource: 4\n  max_resource: 4\n", "early_termination.max_resource", "must be above min_resource (4)"),
    ("  slack_factor: 0.1\n", "early_termination.slack_factor", "unknown key 'slack_factor'"),
    ("  evaluation_interval: 2\n", "early_termination.evaluation_interval", "unknown key 'evaluation_interval'"),
])
def test_asha_problems(settings, path, fragment):
    found = problems(BASE + "early_termination:\n  policy: asha\n" + settings)
    assert path in found, found
    assert fragment in found[path][1]


def test_ray_names_belong_to_asha_only():
    found = problems(BASE + "early_termination:\n  policy: bandit\n  slack_factor: 0.1\n  grace_period: 2\n")
    assert "unknown key 'grace_period'" in found["early_termination.grace_period"][1]


def test_unknown_policy_lists_asha():
    found = problems(BASE + "early_termination:\n  policy: hyperband\n")
    assert "allowed: bandit, median_stopping, truncation_selection, asha" in found["early_termination.policy"][1]


def test_max_cost():
    assert parse_job(BASE + "limits:\n  max_cost_usd: 12.5\n").limits.max_cost_usd == 12.5
    found = problems(BASE + "limits:\n  max_cost_usd: 0\n")
    assert "must be in (0, ∞)" in found["limits.max_cost_usd"][1]
