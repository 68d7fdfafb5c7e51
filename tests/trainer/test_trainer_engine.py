"""The training loop's parts: optimizers, learning-rate schedules, early stopping, class weights,
classification metrics."""
from __future__ import annotations

import math

import pytest
import torch

from automl_images.core import hyperparameters
from automl_images.core.hyperparameters import Task
from automl_images.core.trial_spec import SpecError
from automl_images.trainer import engine
from automl_images.trainer.tasks import get_adapter
from automl_images.trainer.tasks.classification import ClassificationEvaluator, class_weights


def hp(**values):
    return hyperparameters.resolve(Task.CLASSIFICATION, {"model_name": "resnet18", **values})


def lrs(scheduler_hp, steps_per_epoch: int, epochs: int, lr: float = 0.1) -> list[float]:
    """The learning rate of every optimizer step."""
    optimizer = engine.build_optimizer([torch.nn.Parameter(torch.zeros(1))], hp(learning_rate=lr))
    scheduler = engine.build_lr_scheduler(optimizer, scheduler_hp, steps_per_epoch, epochs)
    seen = []
    for _ in range(steps_per_epoch * epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_warmup_cosine_follows_azure_formula():
    values = lrs(hp(lr_scheduler="warmup_cosine", warmup_cosine_lr_warmup_epochs=2,
                    warmup_cosine_lr_cycles=0.45), steps_per_epoch=10, epochs=5)
    assert values[0] == 0.0                           # linear warmup starts at zero
    assert values[5] == pytest.approx(0.1 * 5 / 20)
    assert values[20] == pytest.approx(0.1)           # warmup over: the base rate
    for step in (25, 35, 49):
        progress = (step - 20) / 30
        assert values[step] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.45 * 2 * progress)))
    assert all(a >= b for a, b in zip(values[20:], values[21:]))  # then decays monotonically


def test_warmup_cosine_without_warmup_starts_at_base_rate():
    values = lrs(hp(warmup_cosine_lr_warmup_epochs=0), steps_per_epoch=4, epochs=2)
    assert values[0] == pytest.approx(0.1)


def test_step_scheduler_decays_every_step_size_epochs():
    values = lrs(hp(lr_scheduler="step", step_lr_step_size=2, step_lr_gamma=0.5), steps_per_epoch=3, epochs=5)
    assert values[:6] == pytest.approx([0.1] * 6)
    assert values[6:12] == pytest.approx([0.05] * 6)
    assert values[12:] == pytest.approx([0.025] * 3)


def test_scheduler_state_round_trips():
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = engine.build_optimizer(params, hp())
    scheduler = engine.build_lr_scheduler(optimizer, hp(), 10, 3)
    for _ in range(13):
        optimizer.step()
        scheduler.step()
    fresh_optimizer = engine.build_optimizer(params, hp())
    fresh = engine.build_lr_scheduler(fresh_optimizer, hp(), 10, 3)
    fresh.load_state_dict(scheduler.state_dict())
    fresh_optimizer.load_state_dict(optimizer.state_dict())
    assert fresh.get_last_lr() == scheduler.get_last_lr()


def test_optimizers_follow_hyperparameters():
    params = [torch.nn.Parameter(torch.zeros(1))]
    sgd = engine.build_optimizer(params, hp(momentum=0.0, nesterov=1, weight_decay=0.01))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["nesterov"] is False  # nesterov needs momentum; not an error
    assert engine.build_optimizer(params, hp(momentum=0.8)).defaults["nesterov"] is True
    adam = engine.build_optimizer(params, hp(optimizer="adamw", beta1=0.8, beta2=0.95, amsgrad=1))
    assert isinstance(adam, torch.optim.AdamW)
    assert adam.defaults["betas"] == (0.8, 0.95) and adam.defaults["amsgrad"] is True
    assert isinstance(engine.build_optimizer(params, hp(optimizer="adam")), torch.optim.Adam)


def test_frozen_parameters_are_not_optimized():
    frozen, free = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    frozen.requires_grad_(False)
    optimizer = engine.build_optimizer([frozen, free], hp())
    assert optimizer.param_groups[0]["params"] == [free]


def test_weighted_loss_weights():
    counts = [10, 40, 0]
    assert class_weights(counts, 0) is None
    inverse = class_weights(counts, 2)
    assert inverse.tolist() == pytest.approx([50 / 30, 50 / 120, 0.0])
    assert class_weights(counts, 1).tolist() == pytest.approx([math.sqrt(50 / 30), math.sqrt(50 / 120), 0.0])
    assert class_weights([5, 5], 2).tolist() == pytest.approx([1.0, 1.0])  # balanced: unweighted


def test_weighted_loss_is_applied():
    adapter = get_adapter(Task.CLASSIFICATION, hp(weighted_loss=2))
    loss = adapter.loss([10, 40])
    model = torch.nn.Identity()
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 1]), weight=torch.tensor([2.5, 0.625]))
    assert loss(model, logits, torch.tensor([1, 1])).item() == pytest.approx(expected.item())


def test_early_stopping_counts_evaluations_after_the_delay():
    stopping = engine.EarlyStopping(True, patience=2, delay=2, metric="accuracy")
    outcomes = []
    for value in (0.5, 0.4, 0.3, 0.6, 0.6, 0.5):
        outcomes.append((stopping.improved(value), stopping.should_stop()))
    assert outcomes == [(True, False), (False, False), (False, False),   # 0.3: first counted miss
                        (True, False), (False, False), (False, True)]


def test_early_stopping_minimizes_losses_and_can_be_disabled():
    stopping = engine.EarlyStopping(False, patience=1, delay=0, metric="log_loss")
    assert stopping.improved(1.0) and stopping.improved(0.5) and not stopping.improved(0.7)
    assert not stopping.should_stop()
    restored = engine.EarlyStopping(True, patience=1, delay=0, metric="log_loss")
    restored.load_state_dict(stopping.state_dict())
    assert restored.should_stop() and not restored.improved(0.6)


def test_classification_metrics():
    evaluator = ClassificationEvaluator(["a", "b", "c"])
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0], [0, 0, 5.0]])
    evaluator.update(logits[:2], torch.tensor([0, 1]))
    evaluator.update(logits[2:], torch.tensor([1, 2]))
    metrics = evaluator.compute()
    assert metrics["accuracy"] == 0.75
    assert metrics["recall_score_weighted"] == 0.75
    assert metrics["precision_score_weighted"] == pytest.approx((1 * 0.5 + 2 * 1.0 + 1 * 1.0) / 4)
    assert metrics["log_loss"] == pytest.approx(metrics["loss"]) and metrics["log_loss"] > 0
    assert metrics["per_class"]["b"]["support"] == 2 and metrics["per_class"]["b"]["recall"] == 0.5
    assert metrics["confusion_matrix"] == {"labels": ["a", "b", "c"], "matrix": [[1, 0, 0], [1, 1, 0], [0, 0, 1]]}


def test_threads_from_environment(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv(engine.THREADS_ENV, "1")
    try:
        assert engine.configure_threads() == 1
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv(engine.THREADS_ENV, "many")
    with pytest.raises(ValueError, match=engine.THREADS_ENV):
        engine.configure_threads()


def test_unknown_settings_name_the_hyperparameter():
    with pytest.raises(SpecError, match="hyperparameters.lr_scheduler"):
        engine.build_lr_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1),
                                  {**hp(), "lr_scheduler": "linear"}, 1, 1)
    with pytest.raises(SpecError, match="hyperparameters.crop_size"):
        get_adapter(Task.CLASSIFICATION, hp(resize_size=32, crop_size=64))
    with pytest.raises(SpecError, match="lenient_labels"):
        get_adapter(Task.CLASSIFICATION, hp(), lenient_labels=True)


@pytest.mark.parametrize("size, batch", [(10, 3), (9, 2), (7, 4), (1, 2), (5, 1)])
def test_batches_are_grouped_by_aspect_ratio_and_depend_on_seed_and_epoch_only(size, batch):
    groups = [i % 3 for i in range(size)]
    sampler = engine.EpochBatchSampler(engine.EpochSampler(size, seed=4), batch, groups)
    sampler.set_epoch(2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == math.ceil(size / batch) - (batch > 1 and size % batch == 1)
    items = [item for b in batches for item in b]
    assert len(set(items)) == len(items) and {e for e, _ in items} <= {2}
    again = engine.EpochBatchSampler(engine.EpochSampler(size, seed=4), batch, groups)
    again.set_epoch(2)
    assert list(again) == batches
    again.set_epoch(3)
    assert size < 3 or list(again) != batches


def test_grouped_batches_hold_one_group_until_the_leftovers():
    groups = [0, 1] * 8
    sampler = engine.EpochBatchSampler(engine.EpochSampler(16, seed=0), 4, groups)
    sampler.set_epoch(1)
    assert [len({groups[i] for _, i in b}) for b in sampler] == [1, 1, 1, 1]


def test_aspect_ratio_groups_bin_like_torchvision():
    sizes = [(100, 300), (100, 190), (100, 100), (101, 100), (200, 100), (500, 100)]
    # bisect_right over the bin edges 2 ** linspace(-1, 1, 7), as torchvision's _quantize: 1:1 is bin 4.
    assert engine.aspect_ratio_groups(sizes) == [0, 1, 4, 4, 7, 7]
