"""Object detection and instance segmentation: torchvision's Faster R-CNN, RetinaNet and Mask R-CNN,
the pieces the one training loop needs (labels, model, loss, evaluator, collate, transforms).

Labels are parsed by `detection_labels.py` (normalised boxes, polygons, isCrowd). A target is a dict
made per image once it is decoded (`DetectionTransform`): `boxes` (tv_tensors.BoundingBoxes, XYXY
pixels), `labels` (class index + 1: 0 is the background), `iscrowd`, `masks` (segmentation:
tv_tensors.Mask rasterised from the polygons), `size` (height, width) and the label's `objects`
(for the evaluator). torchvision.transforms.v2 moves boxes and masks with the image (the horizontal
flip of training). The models resize and normalise inputs themselves (min_size, max_size), so the
images stay float [0, 1] tensors of their own sizes: batches are lists (`collate`).

Not wired into `run.py` yet, which builds classification datasets (an image-only transform,
stacked batches, BatchNormalize) and passes no hyperparameters to `build_model` / `evaluator`. What
wiring needs: `DetectionDataset` with `adapter.transform(train)`, `engine.make_loader(...,
collate_fn=adapter.collate)`, no `prepare` (the models normalise), `adapter.build_model(name,
num_classes, pretrained, hp)`, `adapter.evaluator(labels, hp)`, and a log line that does not expect a
validation `loss` (torchvision's detectors compute losses in training mode only).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

from ..config import SpecError
from ..data import ImageDataset, open_image
from ..detection_labels import DetectionLabel, DetectionObject, parser
from ..detection_metrics import ImageResult, detection_metrics
from ..hyperparameters import PRIMARY_METRICS, Task

# model name -> (torchvision builder, backbone depth for resnet_fpn_backbone or None, has masks)
DETECTORS = {
    "fasterrcnn_resnet50_fpn": ("fasterrcnn_resnet50_fpn", None, False),
    "fasterrcnn_resnet34_fpn": ("FasterRCNN", "resnet34", False),
    "fasterrcnn_resnet18_fpn": ("FasterRCNN", "resnet18", False),
    "retinanet_resnet50_fpn": ("retinanet_resnet50_fpn", None, False),
    "maskrcnn_resnet50_fpn": ("maskrcnn_resnet50_fpn", None, True),
}
MASK_THRESHOLD = 0.5      # a predicted mask's probability that makes a pixel part of it


def _head_options(name: str, hp: Mapping[str, Any]) -> dict[str, Any]:
    """min_size, max_size, box_score_thresh, box_nms_thresh and box_detections_per_img, under the
    names each torchvision model takes."""
    options = {"min_size": int(hp["min_size"]), "max_size": int(hp["max_size"])}
    if name.startswith("retinanet"):
        options.update(score_thresh=float(hp["box_score_thresh"]), nms_thresh=float(hp["box_nms_thresh"]),
                       detections_per_img=int(hp["box_detections_per_img"]))
    else:
        options.update(box_score_thresh=float(hp["box_score_thresh"]), box_nms_thresh=float(hp["box_nms_thresh"]),
                       box_detections_per_img=int(hp["box_detections_per_img"]))
    return options


def build_detector(name: str, num_classes: int, hp: Mapping[str, Any], pretrained: bool = False) -> torch.nn.Module:
    """The model for `num_classes` object classes (+1 for the background). `pretrained`: ImageNet
    backbone weights (torchvision's download)."""
    import torchvision
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    if name not in DETECTORS:
        raise SpecError(f"trial spec hyperparameters.model_name: {name!r} is not a detection model this "
                        f"trainer builds (one of {', '.join(DETECTORS)})")
    builder, depth, _ = DETECTORS[name]
    options = _head_options(name, hp)
    if depth is not None:
        weights = torchvision.models.get_model_weights(depth).DEFAULT if pretrained else None
        backbone = resnet_fpn_backbone(backbone_name=depth, weights=weights,
                                       trainable_layers=5 if not pretrained else 3)
        return torchvision.models.detection.FasterRCNN(backbone, num_classes=num_classes + 1, **options)
    weights_backbone = torchvision.models.ResNet50_Weights.IMAGENET1K_V1 if pretrained else None
    build = getattr(torchvision.models.detection, builder)
    return build(weights=None, weights_backbone=weights_backbone, num_classes=num_classes + 1, **options)


# -- targets and transforms ------------------------------------------------------------------------

def polygon_mask(polygons: Sequence[Sequence[float]], width: int, height: int) -> np.ndarray:
    """A uint8 HxW mask of normalised polygons (their union)."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        points = [(x * width, y * height) for x, y in zip(polygon[0::2], polygon[1::2])]
        draw.polygon(points, fill=1, outline=1)
    return np.asarray(canvas, dtype=np.uint8)


class DetectionTransform:
    """(PIL image, (label, class_index)) -> (float image tensor, target dict); `train` adds the
    horizontal flip, applied to the image, its boxes and masks together."""

    def __init__(self, train: bool, segmentation: bool):
        self.segmentation = segmentation
        self.augment = T.RandomHorizontalFlip(0.5) if train else None
        self.to_float = T.ToDtype(torch.float32, scale=True)

    def __call__(self, image: Image.Image, encoded: tuple[DetectionLabel, Mapping[str, int]]):
        label, class_index = encoded
        width, height = image.size
        objects = label.objects
        boxes = torch.tensor([[o.box[0] * width, o.box[1] * height, o.box[2] * width, o.box[3] * height]
                              for o in objects], dtype=torch.float32).reshape(-1, 4)
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([class_index[o.label] + 1 for o in objects], dtype=torch.int64),
            "iscrowd": torch.tensor([o.is_crowd for o in objects], dtype=torch.bool),
        }
        if self.segmentation:
            masks = np.stack([polygon_mask(o.polygons, width, height) for o in objects]) if objects \
                else np.zeros((0, height, width), dtype=np.uint8)
            target["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
        tensor = tv_tensors.Image(T.functional.pil_to_tensor(image))
        if self.augment is not None:
            tensor, target = self.augment(tensor, target)
        target["size"] = torch.tensor([height, width])
        target["objects"] = objects
        return self.to_float(tensor).as_subclass(torch.Tensor), target


class DetectionDataset(ImageDataset):
    """data.ImageDataset (the same decoding, the same per-(epoch, index) seeding of augmentation)
    whose transform takes the image and its target together."""

    def _item(self, index: int):
        return self.transform(open_image(self.samples[index].path, self.min_size), self.targets[index])


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Images of different sizes and their targets, as lists."""
    return [image for image, _ in batch], [target for _, target in batch]


# -- loss and evaluation ---------------------------------------------------------------------------

_MODEL_TARGET_KEYS = ("boxes", "labels", "masks")


class DetectionLoss(torch.nn.Module):
    """The sum of the model's own losses, with isCrowd objects left out of them."""

    def forward(self, model: torch.nn.Module, images: list[torch.Tensor], targets: list[dict[str, Any]]) -> torch.Tensor:
        kept = []
        for target in targets:
            keep = ~target["iscrowd"]
            kept.append({k: torch.as_tensor(target[k])[keep] for k in _MODEL_TARGET_KEYS if k in target})
        losses = model(images, kept)
        return sum(loss.float() for loss in losses.values())


def _prediction_objects(output: Mapping[str, torch.Tensor], labels: Sequence[str], height: int,
                        width: int) -> list[DetectionObject]:
    out = []
    for box, label, score in zip(output["boxes"].tolist(), output["labels"].tolist(), output["scores"].tolist()):
        if not 1 <= label <= len(labels):
            continue
        x0, y0, x1, y1 = (min(1.0, max(0.0, v)) for v in (box[0] / width, box[1] / height,
                                                           box[2] / width, box[3] / height))
        out.append(DetectionObject(labels[label - 1], (x0, y0, x1, y1), score=float(score)))
    return out


class DetectionEvaluator:
    """Collects a validation pass's detections, then computes `detection_metrics`."""

    def __init__(self, labels: Sequence[str], metric_type: str = "voc", segmentation: bool = False,
                 score_threshold: float = 0.3):
        self.labels = list(labels)
        self.metric_type = metric_type
        self.segmentation = segmentation
        self.score_threshold = score_threshold
        self.images: list[ImageResult] = []

    def update(self, outputs: Sequence[Mapping[str, torch.Tensor]], targets: Sequence[Mapping[str, Any]]) -> None:
        for output, target in zip(outputs, targets):
            height, width = (int(v) for v in target["size"])
            output = {k: v.detach().cpu() for k, v in output.items()}
            predicted = _prediction_objects(output, self.labels, height, width)
            masks = None
            if self.segmentation:
                kept = [i for i, label in enumerate(output["labels"].tolist()) if 1 <= label <= len(self.labels)]
                masks = [(output["masks"][i, 0] >= MASK_THRESHOLD).numpy().astype(np.uint8) for i in kept]
            self.images.append(ImageResult(width, height, tuple(target["objects"]), predicted, masks))

    def compute(self) -> dict[str, Any]:
        if self.metric_type == "none":
            return {}
        return detection_metrics(self.images, self.metric_type, segmentation=self.segmentation,
                                 score_threshold=self.score_threshold)


class DetectionAdapter:
    """image-object-detection."""

    task = Task.OBJECT_DETECTION
    metrics = PRIMARY_METRICS[Task.OBJECT_DETECTION]
    segmentation = False

    def __init__(self, lenient: bool = False):
        self._parse = parser(self.task, lenient=lenient)

    def parse_label(self, value: Any) -> DetectionLabel:
        return self._parse(value)

    def classes_of(self, label: DetectionLabel) -> tuple[str, ...]:
        return label.classes()

    def encode(self, label: DetectionLabel, class_index: dict[str, int]) -> tuple[DetectionLabel, dict[str, int]]:
        """The target is made with the image (pixel boxes, masks): see DetectionTransform."""
        return label, class_index

    def transform(self, train: bool) -> DetectionTransform:
        return DetectionTransform(train, self.segmentation)

    collate = staticmethod(collate)

    def build_model(self, model_name: str, num_classes: int, pretrained: bool,
                    hyperparameters: Mapping[str, Any]) -> torch.nn.Module:
        if model_name not in DETECTORS or DETECTORS[model_name][2] != self.segmentation:
            raise SpecError(f"trial spec hyperparameters.model_name: {model_name!r} is not available for "
                            f"{self.task.value} in this trainer version")
        return build_detector(model_name, num_classes, hyperparameters, pretrained)

    def loss(self, hyperparameters: dict[str, Any], class_counts: Sequence[int],
             num_samples: int | None = None) -> DetectionLoss:
        return DetectionLoss()

    def evaluator(self, labels: Sequence[str], hyperparameters: Mapping[str, Any]) -> DetectionEvaluator:
        return DetectionEvaluator(labels, hyperparameters["validation_metric_type"], self.segmentation,
                                  float(hyperparameters["box_score_thresh"]))

    def predictions(self, outputs: Sequence[Mapping[str, torch.Tensor]], labels: Sequence[str],
                    sizes: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        """Per image, the training JSONL's `label` with a score per object (what `evaluate` reads)."""
        out = []
        for output, (height, width) in zip(outputs, sizes):
            objects = _prediction_objects({k: v.detach().cpu() for k, v in output.items()}, labels, height, width)
            out.append({"label": [{"label": o.label, "topX": o.box[0], "topY": o.box[1], "bottomX": o.box[2],
                                   "bottomY": o.box[3], "score": o.score} for o in objects]})
        return out


class SegmentationAdapter(DetectionAdapter):
    """image-instance-segmentation: DetectionAdapter with masks rasterised from the polygons."""

    task = Task.INSTANCE_SEGMENTATION
    metrics = PRIMARY_METRICS[Task.INSTANCE_SEGMENTATION]
    segmentation = True
