"""Object detection and instance segmentation: torchvision's Faster R-CNN, RetinaNet and Mask R-CNN,
the pieces the one training loop needs (labels, model, loss, evaluator, collate, transforms).

Labels are parsed by `core/detection_labels.py` (normalised boxes, polygons, isCrowd). A target is a dict
made per image once it is decoded (`DetectionTransform`): `boxes` (tv_tensors.BoundingBoxes, XYXY
pixels), `labels` (class index + 1: 0 is the background), `iscrowd`, `masks` (segmentation:
tv_tensors.Mask rasterised from the polygons), `size` (height, width) and the label's `objects`
(for the evaluator). torchvision.transforms.v2 moves boxes and masks with the image (the horizontal
flip of training). The models resize and normalise inputs themselves (min_size, max_size), so the
images stay float [0, 1] tensors of their own sizes: batches are lists (`collate`).

Training batches are drawn from images of like aspect ratio (engine.EpochBatchSampler's groups).
With `tile_grid_size`, training also takes every tile of every image as a sample of its own, and
evaluation and prediction run the model on the image and its tiles and merge (`tiling.py`).
yolov5 (`yolov5.py`) takes the same inputs and targets and returns the same outputs.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2 as T

from automl_images.core.detection_labels import DetectionLabel, DetectionObject, parser
from automl_images.core.hyperparameters import PRIMARY_METRICS, Task
from automl_images.core.trial_spec import SpecError

from .. import engine, models, mosaic, tiling
from ..data import ImageDataset, Sample, image_size, open_image
from ..detection_metrics import ImageResult, detection_metrics
from ..masks import mask_polygons, polygon_mask

# model name -> (torchvision builder, backbone depth for resnet_fpn_backbone or None, has masks)
DETECTORS = {
    "fasterrcnn_resnet50_fpn": ("fasterrcnn_resnet50_fpn", None, False),
    "fasterrcnn_resnet34_fpn": ("FasterRCNN", "resnet34", False),
    "fasterrcnn_resnet18_fpn": ("FasterRCNN", "resnet18", False),
    "fasterrcnn_resnet101_fpn": ("FasterRCNN", "resnet101", False),
    "fasterrcnn_resnet152_fpn": ("FasterRCNN", "resnet152", False),
    "retinanet_resnet50_fpn": ("retinanet_resnet50_fpn", None, False),
    "maskrcnn_resnet50_fpn": ("maskrcnn_resnet50_fpn", None, True),
    "maskrcnn_resnet18_fpn": ("MaskRCNN", "resnet18", True),
    "maskrcnn_resnet34_fpn": ("MaskRCNN", "resnet34", True),
    "maskrcnn_resnet101_fpn": ("MaskRCNN", "resnet101", True),
    "maskrcnn_resnet152_fpn": ("MaskRCNN", "resnet152", True),
}
# A predicted mask's probability that makes a pixel part of it: Azure's mask_pixel_score_threshold
# default, for jobs accepted before it was a setting
MASK_THRESHOLD = 0.5
# Backbone layers frozen when starting from pretrained weights and no layers_to_freeze is set:
# conv1 and layer1, as torchvision's builders do (3 trainable layers).
PRETRAINED_FROZEN_LAYERS = 2


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


def build_detector(name: str, num_classes: int, hp: Mapping[str, Any], pretrained: bool = False,
                   weights_cache: str | None = None) -> torch.nn.Module:
    """The model for `num_classes` object classes (+1 for the background). `pretrained`: the COCO
    detector's weights for the ResNet-50 models (Azure starts from those too; the class-specific
    layers of the heads are left new), ImageNet backbone weights for ResNet-18/34; either from the
    weights cache first, then torchvision's download. Pretrained backbones get frozen batch norm
    (batches of 2 images give useless batch statistics), as torchvision's builders do."""
    import torchvision
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    if name not in DETECTORS:
        raise SpecError(f"trial spec hyperparameters.model_name: {name!r} is not a detection model this "
                        f"trainer builds (one of {', '.join(DETECTORS)})")
    builder, depth, _ = DETECTORS[name]
    options = _head_options(name, hp)
    if depth is not None:
        backbone = resnet_fpn_backbone(backbone_name=depth, weights=None, norm_layer=torch.nn.BatchNorm2d,
                                       trainable_layers=5)
        model = getattr(torchvision.models.detection, builder)(backbone, num_classes=num_classes + 1, **options)
    else:
        build = getattr(torchvision.models.detection, builder)
        model = build(weights=None, weights_backbone=None, num_classes=num_classes + 1, **options)
    if pretrained:
        _freeze_batch_norm(model.backbone.body)
        weights = torchvision.models.get_model_weights(depth or builder).DEFAULT
        state = models.load_weights(None, weights_cache, name, weights)
        if depth is not None:  # an ImageNet classifier's weights: its layers are the backbone's body
            state = {f"backbone.body.{key}": value for key, value in state.items()}
        _load_matching(model, state, name)
    return model


def _freeze_batch_norm(module: torch.nn.Module) -> None:
    """Every BatchNorm2d inside `module` replaced by torchvision's FrozenBatchNorm2d."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for child_name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            setattr(module, child_name, FrozenBatchNorm2d(child.num_features, eps=child.eps))
        else:
            _freeze_batch_norm(child)


def _load_matching(model: torch.nn.Module, state: Mapping[str, torch.Tensor], name: str) -> None:
    """The weights of `state` whose names and shapes are the model's: the class-specific layers of
    a head trained on other classes (COCO's 91) stay as built."""
    own = model.state_dict()
    kept = {key: value for key, value in state.items() if key in own and own[key].shape == value.shape}
    # A backbone's weights are about half of a detector's tensors; fewer matched is another model.
    if len(kept) < len(own) // 3:
        raise SpecError(f"trial spec hyperparameters.pretrained: the pretrained weights found for {name} do not "
                        f"fit it ({len(kept)} of its {len(own)} tensors matched)")
    model.load_state_dict(kept, strict=False)


# -- targets and transforms ------------------------------------------------------------------------

class DetectionTransform:
    """(PIL image, (label, class_index)) -> (float image tensor, target dict); a `region` (pixels)
    crops image and target to that tile first; `train` adds torchvision's photometric distortion
    (brightness, contrast, saturation, hue) and the horizontal flip, applied to the image, its boxes
    and masks together. Tile targets carry no `size` and `objects`: those are the
    whole image's, for the evaluator, and tiles are for training only. `decode` and `finish` are
    its two halves, for what is made between them (a mosaic)."""

    def __init__(self, train: bool, segmentation: bool):
        self.segmentation = segmentation
        self.augment = T.Compose([T.RandomPhotometricDistort(p=0.5), T.RandomHorizontalFlip(0.5)]) if train \
            else None
        self.to_float = T.ToDtype(torch.float32, scale=True)

    def __call__(self, image: Image.Image, encoded: tuple[DetectionLabel, Mapping[str, int]],
                 region: tiling.Region | None = None):
        tensor, target = self.finish(*self.decode(image, encoded, region))
        if region is None:
            target["size"] = torch.tensor([image.height, image.width])
            target["objects"] = encoded[0].objects
        return tensor, target

    def decode(self, image: Image.Image, encoded: tuple[DetectionLabel, Mapping[str, int]],
               region: tiling.Region | None = None) -> tuple[tv_tensors.Image, dict[str, Any]]:
        """The uint8 image and its target (pixel boxes, labels, isCrowd, masks), cropped to `region`."""
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
        if region is not None:
            tensor, target = tiling.crop_to_tile(tensor, target, region)
            tensor = tv_tensors.Image(tensor)
        return tensor, target

    def finish(self, tensor: tv_tensors.Image, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """Training's augmentation, then the float image."""
        if self.augment is not None:
            tensor, target = self.augment(tensor, target)
        return self.to_float(tensor).as_subclass(torch.Tensor), target


class DetectionDataset(ImageDataset):
    """data.ImageDataset (the same decoding, the same per-(epoch, index) seeding of augmentation)
    whose transform takes the image and its target together. With `tiles`, every image is a sample
    and so is each of its tiles. `grouped` (training): `group_ids` holds the aspect-ratio group of
    each sample. Either reads every image's header once; an evaluation set reads none."""

    def __init__(self, samples: Sequence[Sample], targets: Sequence[Any], transform: DetectionTransform,
                 seed: int = 0, min_size: int | None = None, tiles: tiling.TileGrid | None = None,
                 grouped: bool = False):
        super().__init__(samples, targets, transform, seed, min_size)
        if tiles is None and not grouped:
            self.items: list[tuple[int, tiling.Region | None]] = [(i, None) for i in range(len(self.samples))]
            return
        # What the decoder returns (a JPEG decoded at a reduced scale is smaller than the file).
        sizes = [image_size(s.path, min_size) for s in self.samples]
        self.items = []
        item_sizes = []
        for index, (width, height) in enumerate(sizes):
            regions = [None] + (tiles.regions(width, height) if tiles is not None else [])
            for region in regions:
                self.items.append((index, region))
                item_sizes.append((width, height) if region is None else
                                  (region[2] - region[0], region[3] - region[1]))
        self.group_ids = engine.aspect_ratio_groups(item_sizes)

    def __len__(self) -> int:
        return len(self.items)

    def _item(self, index: int):
        sample_index, region = self.items[index]
        image = open_image(self.samples[sample_index].path, self.min_size)
        return self.transform(image, self.targets[sample_index], region)


class MosaicDataset(DetectionDataset):
    """yolov5's training set with apply_mosaic_for_yolo: every sample is the mosaic (`mosaic.py`)
    of its image and three drawn at random, `size` pixels square, then augmented as any training
    sample. The draws are seeded per (epoch, index) like every augmentation (data.ImageDataset).
    Every sample has one shape, so there are no aspect-ratio groups."""

    def __init__(self, samples: Sequence[Sample], targets: Sequence[Any], transform: DetectionTransform,
                 size: int, seed: int = 0, min_size: int | None = None):
        super().__init__(samples, targets, transform, seed, min_size)
        self.size = size

    def _item(self, index: int):
        others, centre = mosaic.draw(len(self.samples), self.size)
        pieces = [self.transform.decode(open_image(self.samples[i].path, self.min_size), self.targets[i])
                  for i in (index, *others)]
        return self.transform.finish(*mosaic.combine(pieces, self.size, centre))


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Images of different sizes and their targets, as lists."""
    return [image for image, _ in batch], [target for _, target in batch]


# -- loss and evaluation ---------------------------------------------------------------------------

_MODEL_TARGET_KEYS = ("boxes", "labels", "masks")


class DetectionLoss(torch.nn.Module):
    """The sum of the model's own losses, with isCrowd objects left out of them."""

    def forward(self, model: torch.nn.Module, images: list[torch.Tensor],
                targets: list[dict[str, Any]]) -> torch.Tensor:
        return sum(self.parts(model, images, targets).values())

    def parts(self, model: torch.nn.Module, images: list[torch.Tensor],
              targets: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """The model's losses by name (e.g. loss_classifier, loss_box_reg), in float32; the model in
        training mode (engine.validation_loss for the validation images)."""
        kept = []
        for target in targets:
            keep = ~target["iscrowd"]
            kept.append({k: torch.as_tensor(target[k])[keep] for k in _MODEL_TARGET_KEYS if k in target})
        return {name: loss.float() for name, loss in model(images, kept).items()}


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
                 score_threshold: float = 0.3, iou_threshold: float = 0.5, mask_threshold: float = MASK_THRESHOLD):
        self.labels = list(labels)
        self.metric_type = metric_type
        self.segmentation = segmentation
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold      # validation_iou_threshold: the VOC metrics' match
        self.mask_threshold = mask_threshold    # mask_pixel_score_threshold
        self.images: list[ImageResult] = []

    def update(self, outputs: Sequence[Mapping[str, torch.Tensor]], targets: Sequence[Mapping[str, Any]]) -> None:
        for output, target in zip(outputs, targets):
            height, width = (int(v) for v in target["size"])
            output = {k: v.detach().cpu() for k, v in output.items()}
            predicted = _prediction_objects(output, self.labels, height, width)
            masks = None
            if self.segmentation:
                kept = [i for i, label in enumerate(output["labels"].tolist()) if 1 <= label <= len(self.labels)]
                masks = [(output["masks"][i, 0] >= self.mask_threshold).numpy().astype(np.uint8) for i in kept]
            self.images.append(ImageResult(width, height, tuple(target["objects"]), predicted, masks))

    def compute(self) -> dict[str, Any]:
        if self.metric_type == "none":  # Azure's setting for training without validation figures
            return {PRIMARY_METRICS[Task.OBJECT_DETECTION][0]: None}
        return detection_metrics(self.images, self.metric_type, segmentation=self.segmentation,
                                 score_threshold=self.score_threshold, iou_threshold=self.iou_threshold)


class DetectionAdapter:
    """image-object-detection, for one trial's hyperparameters (see tasks.TaskAdapter)."""

    task = Task.OBJECT_DETECTION
    segmentation = False
    collate = staticmethod(collate)

    def __init__(self, hyperparameters: Mapping[str, Any], lenient: bool = False):
        self.hyperparameters = hyperparameters
        self._parse = parser(self.task, lenient=lenient)
        grid = hyperparameters.get("tile_grid_size")
        self.tiles = tiling.TileGrid.parse(grid, hyperparameters["tile_overlap_ratio"]) if grid else None
        # The shortest side the model needs from the decoder (see data.open_image): it resizes to
        # min_size (yolov5: its longer side to img_size); tiles need the image's full resolution.
        self.decode_size: int | None = None if self.tiles is not None else \
            hyperparameters["img_size" if hyperparameters["model_name"] == "yolov5" else "min_size"]
        self.model_info: dict[str, Any] = {"decode_size": self.decode_size}

    # -- labels ------------------------------------------------------------------------------------
    def parse_label(self, value: Any) -> DetectionLabel:
        return self._parse(value)

    def classes_of(self, label: DetectionLabel) -> tuple[str, ...]:
        return label.classes()

    def label_changes(self, label: DetectionLabel) -> tuple[str, ...]:
        return label.notes

    def encode(self, label: DetectionLabel, class_index: dict[str, int]) -> tuple[DetectionLabel, dict[str, int]]:
        """The target is made with the image (pixel boxes, masks): see DetectionTransform."""
        return label, class_index

    # -- data --------------------------------------------------------------------------------------
    def dataset(self, samples: Sequence[Sample], targets: Sequence[Any], *, train: bool,
                seed: int = 0) -> DetectionDataset:
        """Float images of their own sizes (the models resize and normalise them); training adds the
        tiles, evaluation runs on the whole images (`inference_model` tiles them). yolov5 trains on
        mosaics unless apply_mosaic_for_yolo is 0 (.get: jobs accepted before it was a setting ran
        without)."""
        hp = self.hyperparameters
        if train and hp["model_name"] == "yolov5" and int(hp.get("apply_mosaic_for_yolo", 0)):
            return MosaicDataset(samples, targets, DetectionTransform(train, self.segmentation), int(hp["img_size"]),
                                 seed=seed, min_size=self.decode_size)
        return DetectionDataset(samples, targets, DetectionTransform(train, self.segmentation), seed=seed,
                                min_size=self.decode_size, tiles=self.tiles if train else None, grouped=train)

    def batch_transform(self, device: torch.device) -> None:
        return None  # the models normalise their inputs themselves

    # -- model -------------------------------------------------------------------------------------
    def build_model(self, num_classes: int, weights_cache: str | None = None) -> torch.nn.Module:
        hyperparameters = self.hyperparameters
        name = hyperparameters["model_name"]
        if name == "yolov5" and not self.segmentation:
            return self._build_yolov5(num_classes, weights_cache)
        if name not in DETECTORS or DETECTORS[name][2] != self.segmentation:
            raise SpecError(f"trial spec hyperparameters.model_name: {name!r} is not a model for {self.task.value}")
        pretrained = bool(hyperparameters["pretrained"])
        try:
            model = build_detector(name, num_classes, hyperparameters, pretrained, weights_cache)
        except OSError as exc:
            raise models.weights_download_error(name, weights_cache, exc) from exc
        layers_to_freeze = hyperparameters.get("layers_to_freeze")
        if layers_to_freeze is None and pretrained:
            layers_to_freeze = PRETRAINED_FROZEN_LAYERS
        if layers_to_freeze:
            try:
                models.freeze_layers(model, name, layers_to_freeze)
            except ValueError as exc:
                raise SpecError(f"trial spec hyperparameters.layers_to_freeze: {exc}") from None
        return model

    def _build_yolov5(self, num_classes: int, weights_cache: str | None) -> torch.nn.Module:
        from ..yolov5 import build_yolov5

        hyperparameters = self.hyperparameters
        if hyperparameters.get("layers_to_freeze"):
            raise SpecError("trial spec hyperparameters.layers_to_freeze: yolov5 has no freezable layers here")
        model = build_yolov5(num_classes, hyperparameters)
        if hyperparameters["pretrained"]:
            file_name = f"yolov5_{hyperparameters['model_size']}.pth"
            try:
                state = models.load_weights(file_name, weights_cache, "yolov5")
            except ValueError as exc:
                raise SpecError(f"trial spec hyperparameters.pretrained: {exc}") from None
            _load_matching(model, state, "yolov5")
        return model

    def inference_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """With tiles, the model run on each image and its tiles, the detections merged."""
        if self.tiles is None:
            return model
        return tiling.TiledInference(model, self.tiles, self.hyperparameters["tile_predictions_nms_thresh"],
                                     self.hyperparameters["box_detections_per_img"])

    def loss(self, class_counts: Sequence[int], num_samples: int | None = None) -> DetectionLoss:
        return DetectionLoss()

    def evaluator(self, labels: Sequence[str], loss: torch.nn.Module) -> DetectionEvaluator:
        hp = self.hyperparameters
        # .get: jobs accepted before these were settings ran with the defaults
        return DetectionEvaluator(labels, hp["validation_metric_type"], self.segmentation,
                                  float(hp["box_score_thresh"]), float(hp.get("validation_iou_threshold", 0.5)),
                                  float(hp.get("mask_pixel_score_threshold", MASK_THRESHOLD)))

    # -- inference ---------------------------------------------------------------------------------
    def inputs(self, images: Sequence[Image.Image], info: Mapping[str, Any]) -> list[torch.Tensor]:
        to_float = T.Compose([T.PILToTensor(), T.ToDtype(torch.float32, scale=True)])
        return [to_float(image) for image in images]

    def predictions(self, outputs: Sequence[Mapping[str, torch.Tensor]], labels: Sequence[str],
                    info: Mapping[str, Any], sizes: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        """Per image, the training JSONL's `label` with a score per object (what `evaluate` reads,
        and a label file as it stands); `sizes`: (height, width) of each input. Segmentation objects
        add `polygon`; one whose mask has no pixel at or above MASK_THRESHOLD is left out, since
        neither a label file nor `evaluate` takes an object without a polygon."""
        out = []
        for output, (height, width) in zip(outputs, sizes):
            output = {k: v.detach().cpu() for k, v in output.items()}
            objects = _prediction_objects(output, labels, height, width)
            lines = [{"label": o.label, "topX": o.box[0], "topY": o.box[1], "bottomX": o.box[2],
                      "bottomY": o.box[3], "score": o.score} for o in objects]
            if self.segmentation:
                kept = [i for i, label in enumerate(output["labels"].tolist()) if 1 <= label <= len(labels)]
                threshold = self.hyperparameters.get("mask_pixel_score_threshold", MASK_THRESHOLD)
                for line, i in zip(lines, kept):
                    line["polygon"] = mask_polygons(output["masks"][i, 0] >= threshold, width, height,
                                                    self.hyperparameters.get("max_number_of_polygon_points"))
                lines = [line for line in lines if line["polygon"]]
            out.append({"label": lines})
        return out


class SegmentationAdapter(DetectionAdapter):
    """image-instance-segmentation: DetectionAdapter with masks rasterised from the polygons."""

    task = Task.INSTANCE_SEGMENTATION
    segmentation = True
