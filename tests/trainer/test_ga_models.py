"""Azure GA's models and the GA settings the trainer honours: ResNet-101/152, ResNeSt-50/101
(timm, untrained: no download), Faster R-CNN and Mask R-CNN on ResNet-18 to 152 build and run;
gradient_accumulation_step, number_of_workers, validation_iou_threshold,
mask_pixel_score_threshold and max_number_of_polygon_points change what the trainer does."""
from __future__ import annotations

import pytest
import torch
from trial_data import write_dataset, write_spec

from automl_images.core import models as registry
from automl_images.core.detection_labels import DetectionObject
from automl_images.core.hyperparameters import Task, resolve
from automl_images.core.storage import Storage
from automl_images.trainer import engine, models, run
from automl_images.trainer.detection_metrics import ImageResult, detection_metrics
from automl_images.trainer.masks import mask_polygons
from automl_images.trainer.tasks import get_adapter
from automl_images.trainer.tasks.detection import build_detector

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blocks(model: torch.nn.Module, prefix: str = "") -> list[int]:
    body = model.get_submodule(prefix) if prefix else model
    return [len(getattr(body, f"layer{i}")) for i in range(1, 5)]


@pytest.mark.parametrize("name, depth", [("resnet101", [3, 4, 23, 3]), ("resnet152", [3, 8, 36, 3]),
                                         ("resnest50", [3, 4, 6, 3]), ("resnest101", [3, 4, 23, 3])])
def test_ga_classifiers_have_their_depth(name, depth):
    assert Task.CLASSIFICATION in registry.get(name).tasks
    with torch.device("meta"):  # the structure, without initialising tens of millions of weights
        model = models.build_classifier(name, 3, pretrained=False)
    assert blocks(model) == depth and model.fc.out_features == 3


def test_resnest_trains_and_freezes_like_a_resnet():
    model = models.build_classifier("resnest50", 2, pretrained=False)
    frozen = models.freeze_layers(model, "resnest50", 2)
    assert frozen == ["conv1", "layer1"]
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith(("conv1.", "bn1.", "layer1.")))
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 1]))
    loss.backward()
    assert model.fc.weight.grad is not None


def test_resnest_weights_come_from_the_weights_cache_only(tmp_path):
    with pytest.raises(ValueError, match="no download source: put resnest50d.pth"):
        models.build_classifier("resnest50", 2, pretrained=True, weights_cache=str(tmp_path))


@pytest.mark.parametrize("name, depth, masks", [
    ("fasterrcnn_resnet101_fpn", [3, 4, 23, 3], False), ("fasterrcnn_resnet152_fpn", [3, 8, 36, 3], False),
    ("maskrcnn_resnet18_fpn", [2, 2, 2, 2], True), ("maskrcnn_resnet34_fpn", [3, 4, 6, 3], True),
    ("maskrcnn_resnet101_fpn", [3, 4, 23, 3], True), ("maskrcnn_resnet152_fpn", [3, 8, 36, 3], True)])
def test_ga_detectors_have_their_backbone(name, depth, masks):
    task = Task.INSTANCE_SEGMENTATION if masks else Task.OBJECT_DETECTION
    assert registry.get(name).tasks == (task,)
    with torch.device("meta"):
        model = build_detector(name, 2, resolve(task, {"model_name": name}))
    assert blocks(model, "backbone.body") == depth
    assert (model.roi_heads.mask_predictor is not None) == masks


def test_a_small_ga_mask_rcnn_trains_one_step():
    hp = resolve(Task.INSTANCE_SEGMENTATION, {"model_name": "maskrcnn_resnet18_fpn", "min_size": 64, "max_size": 64})
    model = build_detector("maskrcnn_resnet18_fpn", 2, hp).train()
    mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
    mask[:, 8:40, 8:40] = 1
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1]), "masks": mask}
    losses = model([torch.rand(3, 64, 64)], [target])
    assert set(losses) >= {"loss_mask", "loss_box_reg"}
    sum(losses.values()).backward()


# -- the GA settings ---------------------------------------------------------------------------------

def _train(batch_size: int, accumulation: int, batches: int = 2) -> tuple[torch.Tensor, int, int]:
    """One epoch of a linear model on fixed data: its weights, optimizer steps and scheduler steps."""
    torch.manual_seed(0)
    x, y = torch.randn(batch_size * batches, 3), torch.randn(batch_size * batches, 1)
    model = torch.nn.Linear(3, 1, bias=False)
    torch.nn.init.ones_(model.weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    steps = []
    optimizer.register_step_post_hook(lambda *args: steps.append(1))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)
    context = engine.EpochContext(model, lambda m, inputs, targets: torch.nn.functional.mse_loss(m(inputs), targets),
                                  optimizer, scheduler, torch.device("cpu"), accumulation_steps=accumulation)
    engine.train_one_epoch(context, loader)
    return model.weight.detach().clone(), len(steps), scheduler.last_epoch


def test_gradient_accumulation_acts_as_one_larger_batch():
    accumulated, steps, scheduled = _train(batch_size=2, accumulation=2)
    whole, _, _ = _train(batch_size=4, accumulation=1, batches=1)
    assert torch.allclose(accumulated, whole, atol=1e-6)
    assert (steps, scheduled) == (1, 2)  # one optimizer step; the schedule counts batches
    _, steps, scheduled = _train(batch_size=2, accumulation=2, batches=3)
    assert (steps, scheduled) == (2, 3)  # the last, shorter group steps too
    plain, steps, _ = _train(batch_size=2, accumulation=1)
    assert steps == 2 and not torch.allclose(plain, whole)


def test_number_of_workers_is_the_loaders():
    cpu = torch.device("cpu")
    assert engine.loader_workers(cpu, 1000, 8) == 0  # automatic on a CPU
    assert engine.loader_workers(cpu, 1000, 8, requested=3) == 3
    dataset = torch.utils.data.TensorDataset(torch.zeros(8, 1))
    assert engine.make_loader(dataset, 2, train=False, device=cpu, workers=2).num_workers == 2


def test_validation_iou_threshold_decides_a_match():
    truth = [DetectionObject("a", (0.0, 0.0, 0.5, 0.5))]
    predicted = [DetectionObject("a", (0.0, 0.0, 0.5, 0.4), score=0.9)]  # IoU 0.8
    images = [ImageResult(100, 100, truth, predicted)]
    assert detection_metrics(images, iou_threshold=0.5)["mean_average_precision"] == pytest.approx(1.0)
    assert detection_metrics(images, iou_threshold=0.9)["mean_average_precision"] == 0.0
    hp = resolve(Task.OBJECT_DETECTION, {"validation_iou_threshold": 0.9})
    evaluator = get_adapter(Task.OBJECT_DETECTION, hp).evaluator(["a"], torch.nn.Identity())
    assert evaluator.iou_threshold == 0.9


def test_mask_settings_shape_the_predicted_polygons():
    hp = resolve(Task.INSTANCE_SEGMENTATION, {"mask_pixel_score_threshold": 0.7, "max_number_of_polygon_points": 4})
    adapter = get_adapter(Task.INSTANCE_SEGMENTATION, hp)
    masks = torch.zeros(1, 1, 40, 40)
    masks[0, 0, 10:30, 10:30] = 0.6          # a square at 0.6 ...
    masks[0, 0, 10:20, 10:20] = 0.8          # ... a quarter of it at 0.8
    masks[0, 0, 20:22, 10:12] = 0.8          # and a small bump: the 0.7 outline has 6 corners
    output = {"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]), "labels": torch.tensor([1]),
              "scores": torch.tensor([0.9]), "masks": masks}
    polygon = adapter.predictions([output], ["a"], {}, [(40, 40)])[0]["label"][0]["polygon"][0]
    assert len(polygon) == 8  # 4 points, simplified from 6, of the 0.8 region only
    xs, ys = polygon[0::2], polygon[1::2]
    assert max(xs) <= 0.5 and max(ys) <= 0.55
    assert len(mask_polygons((masks[0, 0] >= 0.7).numpy(), 40, 40)[0]) == 12  # 6 points unsimplified


@pytest.mark.slow  # 3 to 10 s on two busy cores: one real epoch of a tiny classifier
def test_a_trial_honours_training_metrics_and_accumulation(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOML_IMAGES_THREADS", "1")
    monkeypatch.setenv("AUTOML_IMAGES_IMAGE_CACHE", str(tmp_path / "cache"))
    root = Storage(str(tmp_path / "root"))
    train, val = write_dataset(root, per_class=4, validation_per_class=2)
    spec_url = write_spec(root, "trial", train, val, number_of_epochs=1, training_batch_size=2,
                          gradient_accumulation_step=2, number_of_workers=0, log_training_metrics="enable")
    threads = torch.get_num_threads()
    try:
        status = run.run_trial(spec_url)
    finally:
        torch.set_num_threads(threads)
    assert status["status"] == "completed", status.get("error")
    metrics = root.read_json("trial/metrics/000001.json")
    assert 0.0 <= metrics["training_accuracy"] <= 1.0 and "training_loss" in metrics
    assert metrics["train_steps"] == metrics["train_images"] / 2  # batches of 2 (optimizer steps: every 2)
