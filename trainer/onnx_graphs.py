"""The networks that `onnx_export.py` writes: each task's model as one function of a padded batch, with a
batch, height and width that the graph leaves free.

torchvision's detectors (and our YOLOv5) take a list of images and loop over it in Python, so a traced
graph repeats their post-processing once per image of the example batch, which fixes its batch size
(pytorch/vision issues 2311 and 8937). Here the same modules (backbone, heads, box coder, anchors) are
called on the whole batch and every per-image step is written batched:

- NMS is ONNX's NonMaxSuppression, which takes a batch ([B, N, 4] boxes, [B, C, N] scores); a box
  that a per-image step would have dropped gets the score -1, below every threshold;
- per-image proposals and detections are padded to a fixed count per image (`_best_selected`),
  padding marked by score -1 (proposals) or `num_detections` (outputs);
- the real proposals of every image are pooled together (`_Pooler`), each RoI carrying its image.

Inputs: `images` [B, 3, H, W] float32, preprocessed as the model's own transform does (resized,
normalised, padded bottom-right), and `image_sizes` [B, 2] int64, each image's (height, width) inside
the padding. Outputs: `boxes` [B, D, 4] XYXY normalised by the image's size, `scores` [B, D], `labels`
[B, D] int64 (torchvision's: class index + 1, 0 the background), `num_detections` [B] int64, and for
Mask R-CNN `masks` [B, D, 28, 28], each detection's mask probabilities inside its box. Rows past
`num_detections` are padding (zeros).

The same modules run in PyTorch, the NMS as a scripted loop over the batch: what the TorchScript
export traces. `DetectorInput` is the preprocessing outside the graph.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_convert, nms, roi_align
from torchvision.ops.poolers import MultiScaleRoIAlign, _setup_scales

from automl_images.core.hyperparameters import Task

DROPPED = -1.0   # the score of a candidate a per-image step would have removed: below any threshold


def _nms_loop(boxes: Tensor, scores: Tensor, max_per_class: int, iou: float, score_threshold: float) -> Tensor:
    # scripted, so that a traced TorchScript graph keeps the loop over a batch of any size
    rows = [torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)]
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            candidates = (scores[b, c] > score_threshold).nonzero()[:, 0]
            keep = candidates[nms(boxes[b, candidates], scores[b, c, candidates], iou)][:max_per_class]
            rows.append(torch.stack((torch.full_like(keep, b), torch.full_like(keep, c), keep), 1))
    return torch.cat(rows)


with warnings.catch_warnings():
    # torch.jit.script is deprecated (FutureWarning); TorchScript export is still asked for, and
    # needs the loop scripted
    warnings.simplefilter("ignore", FutureWarning)
    _nms_loop = torch.jit.script(_nms_loop)


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX NonMaxSuppression: `boxes` [B, N, 4] XYXY, `scores` [B, C, N] -> selected [K, 3] rows of
    (batch index, class index, box index), per (image, class) best first. A box is a candidate when its
    score is above `score_threshold` and suppressed when its IoU with a better one is above `iou`."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: int, iou: float,
                score_threshold: float) -> Tensor:
        return _nms_loop(boxes, scores, max_per_class, iou, score_threshold)   # what the exporter traces

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou: float, score_threshold: float):
        return g.op("NonMaxSuppression", boxes, scores,
                    g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
                    g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
                    g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32)))


def batched_nms(boxes: Tensor, scores: Tensor, max_per_class: int, iou: float, score_threshold: float) -> Tensor:
    """_NonMaxSuppression: the ONNX operator in an ONNX export; elsewhere (PyTorch, a TorchScript
    trace, which cannot hold a Python function) the scripted loop."""
    if torch.onnx.is_in_onnx_export():
        return _NonMaxSuppression.apply(boxes, scores, max_per_class, iou, score_threshold)
    return _nms_loop(boxes, scores, max_per_class, iou, score_threshold)


def _best_selected(selected: Tensor, scores: Tensor, count: int) -> tuple[Tensor, Tensor, Tensor]:
    """The `count` best-scoring of the NMS's `selected` (K, 3) per image, best first: their scores
    (DROPPED where an image has fewer), class indices and box indices, each [B, min(count, C * N)].
    Sorting here, rather than trusting the order NonMaxSuppression returns, keeps runtimes that order
    differently correct."""
    batch, classes, boxes = scores.shape
    flat = scores.reshape(batch, -1)
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[selected[:, 0], selected[:, 1] * boxes + selected[:, 2]] = True
    flat = torch.where(chosen, flat, torch.full_like(flat, DROPPED))
    best, index = flat.topk(det_utils._topk_min(flat, count, 1), dim=1)
    return best, torch.div(index, boxes, rounding_mode="floor"), index % boxes


def _gather(values: Tensor, index: Tensor) -> Tensor:
    """values [B, N, ...] at index [B, K] -> [B, K, ...]."""
    return values[torch.arange(values.shape[0], device=values.device)[:, None], index]


def _clip(boxes: Tensor, sizes: Tensor) -> Tensor:
    """[B, N, 4] boxes clipped to each image's (height, width), as box_ops.clip_boxes_to_image."""
    height, width = sizes[:, 0, None].to(boxes.dtype), sizes[:, 1, None].to(boxes.dtype)
    x = torch.min(boxes[..., 0::2].clamp(min=0), width[..., None])
    y = torch.min(boxes[..., 1::2].clamp(min=0), height[..., None])
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), -1)


def _not_small(boxes: Tensor, min_size: float) -> Tensor:
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)


def _class_offsets(boxes: Tensor, classes: Tensor) -> Tensor:
    """Boxes moved apart by class (torchvision's batched_nms coordinate trick), so that one NMS over
    all of them never lets a box of one class suppress another's."""
    return boxes + (classes.to(boxes.dtype) * (boxes.max() + 1))[..., None]


def _outputs(boxes: Tensor, scores: Tensor, labels: Tensor, sizes: Tensor) -> dict[str, Tensor]:
    """The graph's outputs from [B, D] detections (DROPPED scores are padding): boxes normalised by
    each image's size, padding zeroed."""
    valid = scores > DROPPED
    scale = sizes.flip(1).repeat(1, 2).to(boxes.dtype)[:, None]    # (width, height, width, height)
    return {"boxes": torch.where(valid[..., None], boxes / scale, torch.zeros_like(boxes)),
            "scores": torch.where(valid, scores, torch.zeros_like(scores)),
            "labels": torch.where(valid, labels, torch.zeros_like(labels)),
            "num_detections": valid.sum(1)}


class _Pooler:
    """MultiScaleRoIAlign over RoIs of several images at once: `rois` [K, 5] (batch index, XYXY)."""

    def __init__(self, pooler: MultiScaleRoIAlign):
        self.names = pooler.featmap_names
        self.output_size = pooler.output_size
        self.sampling_ratio = pooler.sampling_ratio
        self.canonical = (pooler.canonical_scale, pooler.canonical_level)

    def __call__(self, features: dict[str, Tensor], rois: Tensor, padded_size: tuple[int, int]) -> Tensor:
        maps = [features[name] for name in self.names]
        # The scales: feature size / image size rounded to a power of 2, from the padded size (the
        # FPN's strides, constants in the graph). torchvision takes the tallest image's height
        # instead, which gives the same unless every image of the batch is under ~70% of the padded
        # height (small images only: padding adds at most 31 px), where it rounds to another scale.
        scales, mapper = _setup_scales(maps, [padded_size], *self.canonical)
        levels = mapper([rois[:, 1:]])
        # each level's RoIs pooled from its map, then put back in order (a gather: cheaper in ONNX
        # Runtime than scattering into a zeroed result)
        indices = [torch.where(levels == level)[0] for level in range(len(maps))]
        pooled = torch.cat([roi_align(feature, rois[index], self.output_size, spatial_scale=scale,
                                      sampling_ratio=self.sampling_ratio)
                            for feature, scale, index in zip(maps, scales, indices)])
        return pooled[torch.argsort(torch.cat(indices))]


def _rois(image: Tensor, boxes: Tensor) -> Tensor:
    """[K] image indices and [K, 4] boxes -> [K, 5] RoIs, as roi_align takes them."""
    return torch.cat((image.to(boxes.dtype)[:, None], boxes), 1)


def _anchors(generator: nn.Module, images: Tensor, features: list[Tensor]) -> Tensor:
    """The anchors every image shares (the generator repeats them per image)."""
    return generator(ImageList(images, [tuple(images.shape[-2:])]), features)[0]


class RCNNGraph(nn.Module):
    """Faster R-CNN and Mask R-CNN (torchvision's GeneralizedRCNN), from after its transform."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone, self.rpn, self.roi_heads = model.backbone, model.rpn, model.roi_heads
        self.box_pool = _Pooler(model.roi_heads.box_roi_pool)
        self.has_mask = model.roi_heads.has_mask()
        if self.has_mask:
            self.mask_pool = _Pooler(model.roi_heads.mask_roi_pool)

    def forward(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        features = self.backbone(images)
        padded = (int(images.shape[-2]), int(images.shape[-1]))
        proposals, proposal_scores = self._proposals(images, image_sizes, list(features.values()))
        heads = self.roi_heads
        # The heads run on the real proposals only, not the padding (a third of the rows at 320 px).
        image, row = (proposal_scores > DROPPED).nonzero().unbind(1)
        kept = proposals[image, row]
        pooled = self.box_pool(features, _rois(image, kept), padded)
        logits, regression = heads.box_predictor(heads.box_head(pooled))
        classes = logits.shape[-1]
        boxes = _clip(heads.box_coder.decode_single(regression, kept).reshape(-1, classes, 4), image_sizes[image])
        # back to [B, P, classes - 1]: the background column out, as postprocess_detections
        shape = proposals[:, :, None, :1].expand(-1, -1, classes - 1, -1)
        dense_scores = torch.full_like(shape[..., 0], DROPPED)
        dense_scores[image, row] = torch.softmax(logits, -1)[:, 1:]
        dense_boxes = torch.zeros_like(shape.expand(-1, -1, -1, 4))
        dense_boxes[image, row] = boxes[:, 1:]
        # one candidate per (proposal, class)
        batch = proposals.shape[0]
        boxes, scores = dense_boxes.reshape(batch, -1, 4), dense_scores.reshape(batch, -1)
        labels = torch.arange(1, classes, device=boxes.device).repeat(proposals.shape[1])[None].expand(batch, -1)
        scores = torch.where(_not_small(boxes, 1e-2), scores, torch.full_like(scores, DROPPED))
        selected = batched_nms(_class_offsets(boxes, labels), scores[:, None], heads.detections_per_img,
                               heads.nms_thresh, heads.score_thresh)
        scores, _, index = _best_selected(selected, scores[:, None], heads.detections_per_img)
        boxes, labels = _gather(boxes, index), _gather(labels, index)
        out = _outputs(boxes, scores, labels, image_sizes)
        if self.has_mask:
            image, row = (scores > DROPPED).nonzero().unbind(1)
            pooled = self.mask_pool(features, _rois(image, boxes[image, row]), padded)
            logits = heads.mask_predictor(heads.mask_head(pooled))
            chosen = logits[torch.arange(logits.shape[0], device=logits.device), labels[image, row]].sigmoid()
            masks = torch.zeros_like(boxes[:, :, :1, None].expand(-1, -1, *chosen.shape[-2:]))
            masks[image, row] = chosen
            out["masks"] = masks
        return out

    def _proposals(self, images: Tensor, image_sizes: Tensor, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """RegionProposalNetwork.forward and filter_proposals in eval mode, batched: [B, P, 4] boxes and
        their objectness (DROPPED: padding)."""
        rpn = self.rpn
        objectness, deltas = rpn.head(features)
        anchors = _anchors(rpn.anchor_generator, images, features)
        per_level = [o.shape[1] * o.shape[2] * o.shape[3] for o in objectness]
        batch = images.shape[0]
        objectness = torch.cat([o.permute(0, 2, 3, 1).reshape(batch, -1) for o in objectness], 1)
        deltas = torch.cat([d.reshape(batch, -1, 4, *d.shape[-2:]).permute(0, 3, 4, 1, 2).reshape(batch, -1, 4)
                            for d in deltas], 1)
        proposals = rpn.box_coder.decode_single(deltas.reshape(-1, 4), anchors.repeat(batch, 1))
        proposals = proposals.reshape(batch, -1, 4)
        levels = torch.cat([torch.full((n,), i, dtype=torch.int64, device=images.device)
                            for i, n in enumerate(per_level)])
        top = rpn._get_top_n_idx(objectness, per_level)
        scores = torch.sigmoid(_gather(objectness, top))
        proposals, levels = _clip(_gather(proposals, top), image_sizes), levels[top]
        keep = _not_small(proposals, rpn.min_size) & (scores >= rpn.score_thresh)
        scores = torch.where(keep, scores, torch.full_like(scores, DROPPED))
        # sigmoid scores are >= 0: a threshold below them keeps every box that was not dropped
        selected = batched_nms(_class_offsets(proposals, levels), scores[:, None], rpn.post_nms_top_n(),
                               rpn.nms_thresh, DROPPED / 2)
        scores, _, index = _best_selected(selected, scores[:, None], rpn.post_nms_top_n())
        return _gather(proposals, index), scores


class RetinaNetGraph(nn.Module):
    """torchvision's RetinaNet, from after its transform."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        model = self.model
        features = list(model.backbone(images).values())
        head = model.head(features)
        anchors = _anchors(model.anchor_generator, images, features)
        batch, classes = images.shape[0], head["cls_logits"].shape[-1]
        cells = [f.shape[-2] * f.shape[-1] for f in features]
        per_cell = head["cls_logits"].shape[1] // sum(cells)
        per_level = [n * per_cell for n in cells]
        boxes, scores, labels = [], [], []
        for logits, regression, level_anchors in zip(head["cls_logits"].split(per_level, 1),
                                                     head["bbox_regression"].split(per_level, 1),
                                                     anchors.split(per_level)):
            level_scores = torch.sigmoid(logits).reshape(batch, -1)
            level_scores = torch.where(level_scores > model.score_thresh, level_scores,
                                       torch.full_like(level_scores, DROPPED))
            level_scores, index = level_scores.topk(det_utils._topk_min(level_scores, model.topk_candidates, 1), dim=1)
            anchor_index = torch.div(index, classes, rounding_mode="floor")
            decoded = model.box_coder.decode_single(_gather(regression, anchor_index).reshape(-1, 4),
                                                    level_anchors[anchor_index.reshape(-1)])
            boxes.append(_clip(decoded.reshape(batch, -1, 4), image_sizes))
            scores.append(level_scores)
            labels.append(index % classes)
        boxes, scores, labels = torch.cat(boxes, 1), torch.cat(scores, 1), torch.cat(labels, 1)
        selected = batched_nms(_class_offsets(boxes, labels), scores[:, None], model.detections_per_img,
                               model.nms_thresh, model.score_thresh)
        scores, _, index = _best_selected(selected, scores[:, None], model.detections_per_img)
        return _outputs(_gather(boxes, index), scores, _gather(labels, index), image_sizes)


class YOLOv5Graph(nn.Module):
    """Our YOLOv5 (yolov5.YOLOv5), from after its letterbox: `image_sizes` are the resized images'
    sizes inside the batch, so the boxes it normalises are the input images' too."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        from .yolov5 import MAX_DETECTIONS, MAX_NMS_CANDIDATES

        model = self.model
        predictions = model._decode(model.network(images))
        boxes = _clip(box_convert(predictions[..., :4], "cxcywh", "xyxy"), image_sizes)
        visible = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        class_scores = predictions[..., 4:5] * predictions[..., 5:]
        keep = (predictions[..., 4:5] > model.score_thresh) & (class_scores > model.score_thresh) & visible[..., None]
        # [B, C, N]: NonMaxSuppression's per-class scores for boxes that every class shares
        scores = torch.where(keep, class_scores, torch.full_like(class_scores, DROPPED)).transpose(1, 2)
        # the MAX_NMS_CANDIDATES best (box, class) pairs, as yolov5's own bound on NMS time
        flat = scores.reshape(scores.shape[0], -1)
        best = flat.topk(det_utils._topk_min(flat, MAX_NMS_CANDIDATES, 1), dim=1).values[:, -1:]
        scores = torch.where(flat >= best, flat, torch.full_like(flat, DROPPED)).reshape(scores.shape)
        selected = batched_nms(boxes, scores, MAX_DETECTIONS, model.iou_thresh, model.score_thresh)
        scores, label, index = _best_selected(selected, scores, MAX_DETECTIONS)
        return _outputs(_gather(boxes, index), scores, label + 1, image_sizes)


class ClassifierGraph(nn.Module):
    """A classifier: `images` [B, 3, crop, crop] normalised -> `logits` and `probabilities` (softmax;
    multi-label: a sigmoid per class)."""

    def __init__(self, model: nn.Module, multi_label: bool):
        super().__init__()
        self.model = model
        self.multi_label = multi_label

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        logits = self.model(images)
        return {"logits": logits,
                "probabilities": torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, 1)}


@dataclass(frozen=True)
class DetectorInput:
    """What turns a detector's [0, 1] images of any sizes into the graph's `images` and `image_sizes`:
    the model's own preprocessing, which torchvision's detectors and our YOLOv5 do inside their
    forward, done outside the graph because it resizes each image by its own factor.

    `rcnn`: torchvision's GeneralizedRCNNTransform (scale = min(min_size / shorter side, max_size /
    longer side), bilinear, normalised by mean and std, padded with 0 bottom-right to multiples of 32).
    `letterbox`: yolov5.letterbox (longer side to max_size, padded with 114/255 bottom-right to multiples
    of 32; no normalising)."""

    kind: str                       # "rcnn" or "letterbox"
    min_size: int
    max_size: int
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    @classmethod
    def of(cls, model: nn.Module) -> DetectorInput:
        if hasattr(model, "transform"):
            transform = model.transform
            return cls("rcnn", int(transform.min_size[-1]), int(transform.max_size), tuple(transform.image_mean),
                       tuple(transform.image_std))
        return cls("letterbox", model.img_size, model.img_size)

    def __call__(self, images: list[Tensor]) -> tuple[Tensor, Tensor]:
        if self.kind == "rcnn":
            from torchvision.models.detection.transform import GeneralizedRCNNTransform

            transform = GeneralizedRCNNTransform(self.min_size, self.max_size, list(self.mean), list(self.std))
            batch, _ = transform.eval()(images)
            return batch.tensors, torch.tensor(batch.image_sizes, dtype=torch.int64).reshape(-1, 2)
        from .yolov5 import letterbox

        batch, scales = letterbox(images, self.max_size)
        sizes = [(round(image.shape[-2] * float(y)), round(image.shape[-1] * float(x)))
                 for image, (x, y) in zip(images, scales)]
        return batch, torch.tensor(sizes, dtype=torch.int64).reshape(-1, 2)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "rcnn":
            how = ("RGB in [0, 1]; scale = min(min_size / shorter side, max_size / longer side), bilinear "
                   "(align_corners false); (x - mean) / std; padded with 0 at the bottom and right to "
                   "multiples of 32 (torchvision's GeneralizedRCNNTransform)")
        else:
            how = ("RGB in [0, 1]; the longer side resized to max_size, bilinear (antialiased when "
                   "shrinking); padded with 114/255 at the bottom and right to multiples of 32; no normalising")
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std), "how": how}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectorInput:
        return cls(data["kind"], int(data["min_size"]), int(data["max_size"]), tuple(data["mean"]),
                   tuple(data["std"]))


def graph_of(model: nn.Module, task: Task) -> nn.Module:
    """The exportable network of a model built by the task's adapter."""
    if task.is_classification:
        return ClassifierGraph(model, multi_label=task is Task.MULTI_LABEL)
    if hasattr(model, "roi_heads"):
        return RCNNGraph(model)
    if hasattr(model, "anchor_generator"):
        return RetinaNetGraph(model)
    return YOLOv5Graph(model)
