"""Detection and segmentation models trained and evaluated by the engine's own loop
(`engine.train_one_epoch`, `engine.evaluate`) on synthetic coloured rectangles, at 64 px."""
from __future__ import annotations

import random
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader
from torchvision.transforms import v2 as T

from automl_images.core.detection_labels import DetectionLabel, DetectionObject
from automl_images.trainer import engine
from automl_images.trainer.masks import polygon_mask
from automl_images.trainer.tasks.detection import (
    DETECTORS,
    DetectionAdapter,
    DetectionTransform,
    SegmentationAdapter,
    build_detector,
)

HP = {"min_size": 64, "max_size": 96, "box_score_thresh": 0.0, "box_nms_thresh": 0.5,
      "box_detections_per_img": 20, "validation_metric_type": "coco_voc", "pretrained": 0}
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def rectangles(n, seed=0, size=64):
    """Images of one or two coloured rectangles on grey, with their labels."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        image = Image.new("RGB", (size, size), (128, 128, 128))
        draw = ImageDraw.Draw(image)
        objects = []
        for _ in range(rng.randint(1, 2)):
            name = rng.choice(sorted(COLOURS))
            x0, y0 = rng.randint(0, size // 2), rng.randint(0, size // 2)
            x1, y1 = x0 + rng.randint(12, size // 2), y0 + rng.randint(12, size // 2)
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=COLOURS[name])
            box = (x0 / size, y0 / size, x1 / size, y1 / size)
            polygon = (box[0], box[1], box[2], box[1], box[2], box[3], box[0], box[3])
            objects.append(DetectionObject(name, box, polygons=(polygon,)))
        out.append((image, DetectionLabel(tuple(objects))))
    return out


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, items, transform, class_index):
        self.items, self.transform, self.class_index = items, transform, class_index

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        image, label = self.items[i]
        return self.transform(image, (label, self.class_index))


def test_flip_moves_boxes_and_masks_with_the_image():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    ImageDraw.Draw(image).rectangle([0, 0, 9, 19], fill=(255, 255, 255))    # the left quarter
    obj = DetectionObject("a", (0.0, 0.0, 0.25, 1.0), polygons=((0.0, 0.0, 0.25, 0.0, 0.25, 1.0, 0.0, 1.0),))
    crowd = DetectionObject("a", (0.5, 0.5, 0.75, 1.0), is_crowd=True,
                            polygons=((0.5, 0.5, 0.75, 0.5, 0.75, 1.0, 0.5, 1.0),))
    transform = DetectionTransform(train=True, segmentation=True)
    transform.augment = T.RandomHorizontalFlip(1.0)     # always flip, for the test
    tensor, target = transform(image, (DetectionLabel((obj, crowd)), {"a": 0}))
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == (3, 20, 40)
    assert tensor[:, :, 30:].min() == 1.0 and tensor[:, :, :30].max() == 0.0     # now the right quarter
    assert target["boxes"].tolist() == [[30.0, 0.0, 40.0, 20.0], [10.0, 10.0, 20.0, 20.0]]
    assert target["labels"].tolist() == [1, 1] and target["iscrowd"].tolist() == [False, True]
    mask = target["masks"][0]
    assert mask[:, 30:].all() and not mask[:, :29].any()
    assert target["size"].tolist() == [20, 40]
    _, same = DetectionTransform(train=False, segmentation=False)(image, (DetectionLabel((obj,)), {"a": 0}))
    assert same["boxes"].tolist() == [[0.0, 0.0, 10.0, 20.0]] and "masks" not in same


def test_polygon_mask():
    mask = polygon_mask([(0.25, 0.25, 0.75, 0.25, 0.75, 0.75, 0.25, 0.75)], 8, 8)
    assert mask.dtype == np.uint8 and mask.sum() == 25 and mask[2:7, 2:7].all()


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_builds_with_the_head_settings(name):
    model = build_detector(name, 3, {**HP, "box_score_thresh": 0.25, "box_nms_thresh": 0.4,
                                     "box_detections_per_img": 7})
    assert model.transform.min_size == (64,) and model.transform.max_size == 96
    if name.startswith("retinanet"):
        assert (model.score_thresh, model.nms_thresh, model.detections_per_img) == (0.25, 0.4, 7)
    else:
        heads = model.roi_heads
        assert (heads.score_thresh, heads.nms_thresh, heads.detections_per_img) == (0.25, 0.4, 7)
        assert heads.box_predictor.cls_score.out_features == 4       # 3 classes and the background


def test_adapters_refuse_a_model_of_the_other_task():
    from automl_images.core.trial_spec import SpecError
    with pytest.raises(SpecError, match="maskrcnn_resnet50_fpn"):
        DetectionAdapter({**HP, "model_name": "maskrcnn_resnet50_fpn"}).build_model(2)
    with pytest.raises(SpecError, match="fasterrcnn_resnet18_fpn"):
        SegmentationAdapter({**HP, "model_name": "fasterrcnn_resnet18_fpn"}).build_model(2)


@pytest.mark.parametrize("adapter_class, name", [
    (DetectionAdapter, "fasterrcnn_resnet18_fpn"),                                   # ~9 s
    pytest.param(SegmentationAdapter, "maskrcnn_resnet50_fpn", marks=pytest.mark.slow),  # ~17 s, more when busy
])
def test_trains_and_evaluates_through_the_engine(adapter_class, name):
    torch.manual_seed(0)
    adapter = adapter_class({**HP, "model_name": name})
    items = rectangles(6)
    labels = sorted({c for _, label in items for c in adapter.classes_of(label)})
    class_index = {c: i for i, c in enumerate(labels)}
    segmentation = adapter.segmentation
    train = DataLoader(_Pairs(items[:4], DetectionTransform(True, segmentation), class_index), batch_size=2,
                       collate_fn=adapter.collate)
    val = DataLoader(_Pairs(items[4:], DetectionTransform(False, segmentation), class_index), batch_size=2,
                     collate_fn=adapter.collate)
    model = adapter.build_model(len(labels))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    started = time.perf_counter()
    context = engine.EpochContext(model, adapter.loss([]), optimizer, scheduler, torch.device("cpu"))
    stats = engine.train_one_epoch(context, train)
    assert stats["train_steps"] == 2 and stats["train_images"] == 4 and np.isfinite(stats["train_loss"])
    metrics = engine.evaluate(model, val, adapter.evaluator(labels, None), torch.device("cpu"))
    assert 0.0 <= metrics["mean_average_precision"] <= 1.0
    assert "coco_map" in metrics and "voc_map" in metrics and set(metrics["per_class"]) <= set(labels)
    print(f"{name}: {time.perf_counter() - started:.1f}s for 2 steps and evaluation")


def test_detection_dataset_decodes_and_seeds_like_image_dataset(tmp_path):
    from automl_images.trainer import data
    from automl_images.trainer.tasks.detection import DetectionDataset
    items = rectangles(3, seed=5)
    samples, targets = [], []
    for k, (image, label) in enumerate(items):
        path = tmp_path / f"{k}.png"
        image.save(path)
        samples.append(data.Sample(data.Record("t.jsonl", k + 1, str(path), label), str(path)))
        targets.append((label, {"blue": 0, "red": 1}))
    dataset = DetectionDataset(samples, targets, DetectionTransform(train=True, segmentation=True), seed=3)
    first, again = dataset[(1, 2)], dataset[(1, 2)]          # (epoch, index): the same flip
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes"], again[1]["boxes"])
    # seeded per (epoch, index): some epochs flip image 0, some do not, the same on every run
    flips = {bool(torch.equal(dataset[(epoch, 0)][1]["boxes"], dataset[(0, 0)][1]["boxes"])) for epoch in range(12)}
    assert flips == {True, False}
    loader = DataLoader(dataset, batch_size=2, collate_fn=DetectionAdapter.collate)
    images, batch_targets = next(iter(loader))
    assert len(images) == 2 and images[0].shape == (3, 64, 64) and batch_targets[0]["masks"].shape[1:] == (64, 64)


def test_predictions_are_what_evaluate_reads():
    from automl_images.core.detection_labels import parse_detection_label
    output = {"boxes": torch.tensor([[10.0, 5.0, 30.0, 20.0], [0.0, 0.0, 50.0, 40.0]]),
              "labels": torch.tensor([2, 1]), "scores": torch.tensor([0.9, 0.4])}
    adapter = DetectionAdapter({**HP, "model_name": "fasterrcnn_resnet18_fpn"})
    [line] = adapter.predictions([output], ["blue", "red"], {}, [(20, 40)])
    label = parse_detection_label(line["label"], scored=True)
    assert [(o.label, o.box, o.score) for o in label.objects] == [
        ("red", (0.25, 0.25, 0.75, 1.0), pytest.approx(0.9)), ("blue", (0.0, 0.0, 1.0, 1.0), pytest.approx(0.4))]


def test_pretrained_detectors_load_from_the_weights_cache(tmp_path, monkeypatch):
    """COCO detector weights (R-50) and ImageNet backbones (R-18) from the weights cache, never a
    download: class layers new, batch norm frozen, conv1 and layer1 frozen as torchvision does."""
    import torchvision
    from torchvision.ops.misc import FrozenBatchNorm2d

    from automl_images.core.trial_spec import SpecError
    from automl_images.trainer import weights
    monkeypatch.delenv("AUTOML_IMAGES_WEIGHTS_CACHE", raising=False)
    # Random weights under torchvision's file names: not the files whose sha256 the names publish, so
    # no hash to check here (test_weights_hostile.py checks that a real cache refuses them).
    monkeypatch.setattr(weights, "published_hash", lambda file_name: None)
    torch.manual_seed(0)
    coco = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    torch.save(coco.state_dict(), tmp_path / "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth")
    imagenet = torchvision.models.resnet18()
    torch.save(imagenet.state_dict(), tmp_path / "resnet18-f37072fd.pth")

    def pretrained(name):
        return DetectionAdapter({**HP, "model_name": name, "pretrained": 1})

    model = pretrained("fasterrcnn_resnet50_fpn").build_model(3, str(tmp_path))
    assert torch.equal(model.backbone.fpn.inner_blocks[0][0].weight, coco.backbone.fpn.inner_blocks[0][0].weight)
    assert torch.equal(model.rpn.head.conv[0][0].weight, coco.rpn.head.conv[0][0].weight)
    assert model.roi_heads.box_predictor.cls_score.out_features == 4          # new: 3 classes + background
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    assert torch.equal(model.backbone.body.bn1.running_mean, coco.backbone.body.bn1.running_mean)

    model = pretrained("fasterrcnn_resnet18_fpn").build_model(3, str(tmp_path))
    assert torch.equal(model.backbone.body.layer3[0].conv1.weight, imagenet.layer3[0].conv1.weight)
    frozen = {name.split(".")[2] for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}          # bn1 is frozen batch norm: no parameters at all

    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "resnet18-f37072fd.pth")
    with pytest.raises(SpecError, match="hyperparameters.pretrained: .* do not fit"):
        pretrained("fasterrcnn_resnet18_fpn").build_model(3, str(tmp_path))
