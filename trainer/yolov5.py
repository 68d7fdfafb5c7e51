"""YOLOv5 detector: an independent implementation of the YOLOv5 (v6.0+) architecture, written from its
published description, with torchvision's detector interface so the one training loop and evaluator
serve it unchanged. We do not use the ultralytics package: it is AGPL-3.0 and downloads at run time.

What matches YOLOv5 v6.0+:
- architecture: CSP-Darknet backbone (6x6 stride-2 stem, C3 blocks, SPPF), PAN neck, a 3-scale
  anchor head at strides 8/16/32 with the standard COCO anchors, P3/8 (10,13, 16,30, 33,23),
  P4/16 (30,61, 62,45, 59,119), P5/32 (116,90, 156,198, 373,326); depth/width multiples small
  0.33/0.50, medium 0.67/0.75, large 1.0/1.0, xlarge 1.33/1.25; SiLU; BatchNorm eps 1e-3,
  momentum 0.03. Parameters for 80 classes, as the published v6.0 models: small 7,235,389,
  medium 21,190,557, large 46,563,709, xlarge 86,749,405.
- Detect bias init: objectness log(8 / (640 / stride)^2) (about 8 objects per 640 px image),
  classes log(0.6 / (nc - 0.99)).
- box decode: xy = (sigmoid * 2 - 0.5 + cell) * stride, wh = (sigmoid * 2)^2 * anchor.
- target assignment: a target goes to every anchor whose width and height ratios to it are within
  anchor_t = 4.0, in its own cell and in the 2 neighbouring cells nearest its centre (the g = 0.5
  rule: the neighbour on each axis towards which the centre is within half a cell).
- loss: CIoU box loss, BCE objectness with the detached CIoU as its target, BCE class loss (only with
  more than one class, as YOLOv5); objectness balance 4.0/1.0/0.4 over P3/P4/P5; gains box 0.05,
  obj 1.0 * (img_size / 640)^2, cls 0.5 * classes / 80, each times 3 / layers.
- inference: confidence = objectness * class probability, every class above box_score_thresh per
  box, class-aware NMS at box_nms_thresh, at most 300 detections per image (boxes are clipped to the
  image before NMS, as in torchvision's detectors; YOLOv5 clips after).

What differs: the model letterboxes inside (inputs are lists of [0, 1] images of their own sizes, as
for torchvision's detectors), placing each image at the top left of the padded batch; the loss is
NOT multiplied by the batch size (see YOLOv5Loss); there is no EMA or anchor evolution. Mosaic
augmentation (apply_mosaic_for_yolo) is made by the training set (`mosaic.py`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_convert

# model_size -> (depth multiple, width multiple), YOLOv5's n/s/m/l/x scaling without nano
MODEL_SIZES = {"small": (0.33, 0.50), "medium": (0.67, 0.75), "large": (1.0, 1.0), "xlarge": (1.33, 1.25)}
STRIDES = (8, 16, 32)
ANCHORS = (((10, 13), (16, 30), (33, 23)),          # P3/8, in pixels (COCO, k-means in YOLOv3/5)
           ((30, 61), (62, 45), (59, 119)),         # P4/16
           ((116, 90), (156, 198), (373, 326)))     # P5/32
PAD_VALUE = 114 / 255        # YOLOv5's letterbox grey
ANCHOR_T = 4.0               # the most a target's width or height may differ from its anchor's, as a ratio
OBJECT_BALANCE = (4.0, 1.0, 0.4)    # P3's many small cells are mostly background: weigh its objectness up
MAX_DETECTIONS = 300
MAX_NMS_CANDIDATES = 30000   # bounds NMS time on an untrained model that scores every box


# -- architecture -----------------------------------------------------------------------------------

class ConvBnSiLU(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, padding: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2 if padding is None else padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, channels: int, shortcut: bool):
        super().__init__()
        self.reduce = ConvBnSiLU(channels, channels, 1)
        self.conv = ConvBnSiLU(channels, channels, 3)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(self.reduce(x))
        return x + y if self.shortcut else y


class C3(nn.Module):
    """CSP block: half the channels go through the bottlenecks, half around them, then merge."""

    def __init__(self, c_in: int, c_out: int, depth: int, shortcut: bool = True):
        super().__init__()
        hidden = c_out // 2
        self.main = ConvBnSiLU(c_in, hidden, 1)
        self.bypass = ConvBnSiLU(c_in, hidden, 1)
        self.bottlenecks = nn.Sequential(*(Bottleneck(hidden, shortcut) for _ in range(depth)))
        self.merge = ConvBnSiLU(2 * hidden, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.merge(torch.cat((self.bottlenecks(self.main(x)), self.bypass(x)), 1))


class SPPF(nn.Module):
    """Three chained 5x5 max pools: the receptive fields of SPP's 5/9/13 pools, cheaper."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 5):
        super().__init__()
        hidden = c_in // 2
        self.reduce = ConvBnSiLU(c_in, hidden, 1)
        self.pool = nn.MaxPool2d(kernel, 1, kernel // 2)
        self.merge = ConvBnSiLU(4 * hidden, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.reduce(x)
        p1 = self.pool(x)
        p2 = self.pool(p1)
        return self.merge(torch.cat((x, p1, p2, self.pool(p2)), 1))


class YOLOv5Network(nn.Module):
    """Backbone, PAN neck and head: an image batch (B, 3, H, W), H and W multiples of 32, to one raw
    output per scale, (B, anchors, H / stride, W / stride, 5 + classes): x, y, w, h, objectness, classes."""

    def __init__(self, num_classes: int, depth_multiple: float, width_multiple: float):
        super().__init__()
        c1, c2, c3, c4, c5 = (math.ceil(c * width_multiple / 8) * 8 for c in (64, 128, 256, 512, 1024))
        n3, n6, n9 = (max(round(n * depth_multiple), 1) for n in (3, 6, 9))
        self.stem = ConvBnSiLU(3, c1, 6, 2, 2)
        self.stage2 = nn.Sequential(ConvBnSiLU(c1, c2, 3, 2), C3(c2, c2, n3))
        self.stage3 = nn.Sequential(ConvBnSiLU(c2, c3, 3, 2), C3(c3, c3, n6))
        self.stage4 = nn.Sequential(ConvBnSiLU(c3, c4, 3, 2), C3(c4, c4, n9))
        self.stage5 = nn.Sequential(ConvBnSiLU(c4, c5, 3, 2), C3(c5, c5, n3), SPPF(c5, c5))
        # top-down path: P5 -> P4 -> P3, then bottom-up: P3 -> P4 -> P5 (PAN)
        self.lateral5 = ConvBnSiLU(c5, c4, 1)
        self.top_down4 = C3(2 * c4, c4, n3, shortcut=False)
        self.lateral4 = ConvBnSiLU(c4, c3, 1)
        self.out3 = C3(2 * c3, c3, n3, shortcut=False)
        self.down3 = ConvBnSiLU(c3, c3, 3, 2)
        self.out4 = C3(2 * c3, c4, n3, shortcut=False)
        self.down4 = ConvBnSiLU(c4, c4, 3, 2)
        self.out5 = C3(2 * c4, c5, n3, shortcut=False)
        self.num_outputs = 5 + num_classes
        self.heads = nn.ModuleList(nn.Conv2d(c, len(ANCHORS[0]) * self.num_outputs, 1) for c in (c3, c4, c5))
        self._init_head_biases(num_classes)

    @torch.no_grad()
    def _init_head_biases(self, num_classes: int) -> None:
        # start from a prior of ~8 objects per 640 px image and 0.6 summed class probability, so the
        # first steps are not spent driving every cell's objectness down from 0.5
        for head, stride in zip(self.heads, STRIDES):
            bias = head.bias.view(len(ANCHORS[0]), self.num_outputs)
            bias[:, 4] += math.log(8 / (640 / stride) ** 2)
            bias[:, 5:] += math.log(0.6 / (num_classes - 0.99))

    def forward(self, x: Tensor) -> list[Tensor]:
        p3 = self.stage3(self.stage2(self.stem(x)))
        p4 = self.stage4(p3)
        lateral5 = self.lateral5(self.stage5(p4))
        lateral4 = self.lateral4(self.top_down4(torch.cat((_upsample(lateral5), p4), 1)))
        out3 = self.out3(torch.cat((_upsample(lateral4), p3), 1))
        out4 = self.out4(torch.cat((self.down3(out3), lateral4), 1))
        out5 = self.out5(torch.cat((self.down4(out4), lateral5), 1))
        outputs = []
        for head, features in zip(self.heads, (out3, out4, out5)):
            y = head(features)
            b, _, h, w = y.shape
            outputs.append(y.view(b, len(ANCHORS[0]), self.num_outputs, h, w).permute(0, 1, 3, 4, 2).contiguous())
        return outputs


def _upsample(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


# -- target assignment and loss ---------------------------------------------------------------------

@dataclass
class LevelTargets:
    """The predictions one output level is trained on: one row per (target, anchor, cell) assigned."""
    image: Tensor        # (n,) index in the batch
    anchor: Tensor       # (n,) 0..2
    cell_y: Tensor       # (n,)
    cell_x: Tensor       # (n,)
    box: Tensor          # (n, 4) centre relative to the cell's top-left corner and size, in cells
    anchor_wh: Tensor    # (n, 2) the anchor's size, in cells
    label: Tensor        # (n,) class index, 0-based


# cell shifts on x and y: the target's own cell, then left, up, right, down
_NEIGHBOURS = ((0, 0), (-1, 0), (0, -1), (1, 0), (0, 1))


def assign_targets(targets: Tensor, anchors: Tensor, grid_shapes: Sequence[tuple[int, int]],
                   anchor_t: float = ANCHOR_T) -> list[LevelTargets]:
    """`targets` (n, 6): image index, class index, centre x, centre y, width, height in batch pixels;
    `anchors` (levels, 3, 2) in pixels; `grid_shapes`: (height, width) of each level's grid. With the
    decode's xy range of -0.5..1.5 the 2 neighbours nearest the centre can reach it too: 3 cells per
    anchor, 3x the positives."""
    shifts = torch.tensor(_NEIGHBOURS, device=targets.device)
    out = []
    for level, ((grid_h, grid_w), stride) in enumerate(zip(grid_shapes, STRIDES)):
        boxes = targets[:, 2:6] / stride
        anchor_wh = anchors[level] / stride
        ratio = boxes[None, :, 2:4] / anchor_wh[:, None]                        # (anchors, targets, 2)
        anchor, index = (torch.max(ratio, 1 / ratio).amax(2) < anchor_t).nonzero(as_tuple=True)
        centre = boxes[index, :2]
        from_far_side = torch.tensor([grid_w, grid_h], device=targets.device) - centre
        near_low = (centre % 1 < 0.5) & (centre > 1)                          # left, up
        near_high = (from_far_side % 1 < 0.5) & (from_far_side > 1)           # right, down
        use = torch.stack((torch.ones_like(near_low[:, 0]), near_low[:, 0], near_low[:, 1],
                           near_high[:, 0], near_high[:, 1]))                  # (5, matches)
        neighbour, match = use.nonzero(as_tuple=True)
        cell = centre[match].floor().long() + shifts[neighbour]
        cell[:, 0].clamp_(0, grid_w - 1)
        cell[:, 1].clamp_(0, grid_h - 1)
        index, anchor = index[match], anchor[match]
        out.append(LevelTargets(image=targets[index, 0].long(), anchor=anchor, cell_y=cell[:, 1], cell_x=cell[:, 0],
                                box=torch.cat((boxes[index, :2] - cell, boxes[index, 2:4]), 1),
                                anchor_wh=anchor_wh[anchor], label=targets[index, 1].long()))
    return out


def complete_iou(box1: Tensor, box2: Tensor, eps: float = 1e-7) -> Tensor:
    """CIoU of paired (n, 4) centre-x, centre-y, width, height boxes: IoU less the squared centre
    distance over the enclosing box's squared diagonal and an aspect-ratio term (Zheng et al. 2020)."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
    left, right = torch.max(x1 - w1 / 2, x2 - w2 / 2), torch.min(x1 + w1 / 2, x2 + w2 / 2)
    top, bottom = torch.max(y1 - h1 / 2, y2 - h2 / 2), torch.min(y1 + h1 / 2, y2 + h2 / 2)
    inter = (right - left).clamp(0) * (bottom - top).clamp(0)
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    enclose_w = torch.max(x1 + w1 / 2, x2 + w2 / 2) - torch.min(x1 - w1 / 2, x2 - w2 / 2)
    enclose_h = torch.max(y1 + h1 / 2, y2 + h2 / 2) - torch.min(y1 - h1 / 2, y2 - h2 / 2)
    distance = ((x2 - x1) ** 2 + (y2 - y1) ** 2) / (enclose_w ** 2 + enclose_h ** 2 + eps)
    aspect = (4 / math.pi ** 2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
    with torch.no_grad():      # the trade-off weight is not trained through, as in the paper
        alpha = aspect / (1 - iou + aspect + eps)
    return iou - distance - alpha * aspect


class YOLOv5Loss(nn.Module):
    """YOLOv5's loss, at the scale of one image: each term is a mean over targets or cells, and unlike
    YOLOv5 we do not multiply the sum by the batch size, so the learning rates our other detectors
    use (SGD 0.01) work, and the loss does not change scale with the batch size."""

    def __init__(self, num_classes: int, img_size: int):
        super().__init__()
        layers_factor = 3 / len(STRIDES)
        self.num_classes = num_classes
        self.box_gain = 0.05 * layers_factor
        self.obj_gain = 1.0 * (img_size / 640) ** 2 * layers_factor   # more cells at larger sizes
        self.cls_gain = 0.5 * num_classes / 80 * layers_factor

    def forward(self, outputs: Sequence[Tensor], targets: Tensor, anchors: Tensor) -> dict[str, Tensor]:
        zero = outputs[0].new_zeros((), dtype=torch.float32)
        loss_box, loss_obj, loss_cls = zero, zero, zero
        assigned = assign_targets(targets, anchors, [tuple(o.shape[2:4]) for o in outputs])
        for raw, level, balance in zip(outputs, assigned, OBJECT_BALANCE):
            raw = raw.float()          # the loss in float32 also under bfloat16 autocast
            objectness_target = torch.zeros_like(raw[..., 4])
            if level.image.numel():
                matched = raw[level.image, level.anchor, level.cell_y, level.cell_x]
                xy = matched[:, :2].sigmoid() * 2 - 0.5
                wh = (matched[:, 2:4].sigmoid() * 2) ** 2 * level.anchor_wh
                ciou = complete_iou(torch.cat((xy, wh), 1), level.box)
                loss_box = loss_box + (1 - ciou).mean()
                # a cell's objectness target is how well it boxes its object: ranks boxes by quality
                objectness_target[level.image, level.anchor, level.cell_y, level.cell_x] = ciou.detach().clamp(0)
                if self.num_classes > 1:   # with one class, objectness alone decides
                    one_hot = F.one_hot(level.label, self.num_classes).float()
                    loss_cls = loss_cls + F.binary_cross_entropy_with_logits(matched[:, 5:], one_hot)
            loss_obj = loss_obj + balance * F.binary_cross_entropy_with_logits(raw[..., 4], objectness_target)
        return {"loss_box": loss_box * self.box_gain, "loss_obj": loss_obj * self.obj_gain,
                "loss_cls": loss_cls * self.cls_gain}


# -- the detector -----------------------------------------------------------------------------------

def letterbox(images: Sequence[Tensor], size: int, stride: int = STRIDES[-1]) -> tuple[Tensor, Tensor]:
    """Resizes each (3, H, W) image so its long side is `size`, keeping its aspect ratio, and places it
    at the top left of a PAD_VALUE batch whose sides are the largest multiples of `stride` needed.
    Padding only right and bottom keeps the way back to the image's pixels one scale per axis.
    Returns the batch and each image's (x scale, y scale), (n, 2)."""
    resized, scales = [], []
    for image in images:
        height, width = image.shape[-2:]
        ratio = size / max(height, width)
        new_h, new_w = max(1, round(height * ratio)), max(1, round(width * ratio))
        if (new_h, new_w) != (height, width):
            image = F.interpolate(image[None], (new_h, new_w), mode="bilinear", align_corners=False,
                                  antialias=ratio < 1)[0]
        resized.append(image)
        scales.append((new_w / width, new_h / height))
    batch_h = math.ceil(max(r.shape[-2] for r in resized) / stride) * stride
    batch_w = math.ceil(max(r.shape[-1] for r in resized) / stride) * stride
    batch = resized[0].new_full((len(resized), resized[0].shape[0], batch_h, batch_w), PAD_VALUE)
    for i, image in enumerate(resized):
        batch[i, :, :image.shape[-2], :image.shape[-1]] = image
    return batch, torch.tensor(scales, dtype=torch.float32, device=batch.device)


def batch_targets(targets: Sequence[Mapping[str, Tensor]], scales: Tensor) -> Tensor:
    """torchvision targets (XYXY `boxes` in the image's pixels, 1-based `labels`) as the loss takes them:
    (n, 6) image index, class index (0-based), centre x, centre y, width, height in batch pixels."""
    rows = []
    for i, (target, scale) in enumerate(zip(targets, scales)):
        boxes = torch.as_tensor(target["boxes"]).as_subclass(Tensor).float().to(scales.device)
        boxes = box_convert(boxes.reshape(-1, 4) * scale.repeat(2), "xyxy", "cxcywh")
        labels = torch.as_tensor(target["labels"]).to(scales.device).float().reshape(-1, 1) - 1
        rows.append(torch.cat((torch.full_like(labels, i), labels, boxes), 1))
    return torch.cat(rows)


class YOLOv5(nn.Module):
    """Takes and returns what torchvision's detectors do: train mode, `model(images, targets)` -> dict
    of losses; eval mode, `model(images)` -> per image `boxes` (XYXY, the input image's pixels),
    `labels` (1-based: 0 is torchvision's background) and `scores`."""

    def __init__(self, num_classes: int, depth_multiple: float, width_multiple: float, img_size: int,
                 multi_scale: bool, score_thresh: float, iou_thresh: float):
        super().__init__()
        self.num_classes = num_classes
        self.img_size = img_size
        self.multi_scale = multi_scale
        self.score_thresh = score_thresh
        self.iou_thresh = iou_thresh
        self.network = YOLOv5Network(num_classes, depth_multiple, width_multiple)
        self.loss = YOLOv5Loss(num_classes, img_size)
        # pixels; a buffer, so that the state_dict carries the anchors the weights were trained with
        self.register_buffer("anchors", torch.tensor(ANCHORS, dtype=torch.float32))

    def training_size(self) -> int:
        """The long side for this batch: with multi_scale, a multiple of 32 in [0.5, 1.5] * img_size,
        drawn from torch's global generator so that seeding torch repeats it. Without gradients (the
        validation loss, engine.validation_loss) nothing trains: img_size, as evaluation runs."""
        if not self.multi_scale or not torch.is_grad_enabled():
            return self.img_size
        stride = STRIDES[-1]
        low, high = max(stride, int(self.img_size * 0.5)), int(self.img_size * 1.5)
        return int(torch.randint(low, high + stride, ()).item()) // stride * stride

    def forward(self, images: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]] | None = None):
        if self.training:
            if targets is None:
                raise ValueError("YOLOv5 in training mode needs targets")
            batch, scales = letterbox(images, self.training_size())
            return self.loss(self.network(batch), batch_targets(targets, scales), self.anchors)
        batch, scales = letterbox(images, self.img_size)
        return self._detections(self.network(batch), scales, [tuple(image.shape[-2:]) for image in images])

    def _decode(self, outputs: Sequence[Tensor]) -> Tensor:
        """(B, boxes, 5 + classes): centre x, centre y, width, height in batch pixels, objectness and
        class probabilities."""
        decoded = []
        for raw, stride, anchors in zip(outputs, STRIDES, self.anchors):
            y = raw.float().sigmoid()
            batch, num_anchors, grid_h, grid_w, _ = y.shape
            cell_y, cell_x = torch.meshgrid(torch.arange(grid_h, device=y.device),
                                            torch.arange(grid_w, device=y.device), indexing="ij")
            cell = torch.stack((cell_x, cell_y), -1).view(1, 1, grid_h, grid_w, 2)
            xy = (y[..., :2] * 2 - 0.5 + cell) * stride
            wh = (y[..., 2:4] * 2) ** 2 * anchors.view(1, num_anchors, 1, 1, 2)
            decoded.append(torch.cat((xy, wh, y[..., 4:]), -1).view(batch, -1, y.shape[-1]))
        return torch.cat(decoded, 1)

    def _detections(self, outputs: Sequence[Tensor], scales: Tensor,
                    image_sizes: Sequence[tuple[int, int]]) -> list[dict[str, Tensor]]:
        results = []
        for predictions, scale, (height, width) in zip(self._decode(outputs), scales, image_sizes):
            predictions = predictions[predictions[:, 4] > self.score_thresh]     # obj * cls <= obj
            class_scores = predictions[:, 4:5] * predictions[:, 5:]
            # every class above the threshold, not only the best: what YOLOv5 validates with, better mAP
            box_index, label = (class_scores > self.score_thresh).nonzero(as_tuple=True)
            scores = class_scores[box_index, label]
            if scores.numel() > MAX_NMS_CANDIDATES:
                top = scores.topk(MAX_NMS_CANDIDATES).indices
                box_index, label, scores = box_index[top], label[top], scores[top]
            # to the image's pixels and clipped to it before NMS, as torchvision's detectors do: boxes
            # that reach into the padding compare by their visible part, and those wholly in it go
            boxes = box_convert(predictions[box_index, :4], "cxcywh", "xyxy") / scale.repeat(2)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            visible = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, label, scores = boxes[visible], label[visible], scores[visible]
            keep = batched_nms(boxes, scores, label, self.iou_thresh)[:MAX_DETECTIONS]
            results.append({"boxes": boxes[keep], "labels": label[keep] + 1, "scores": scores[keep]})
        return results


def build_yolov5(num_classes: int, hyperparameters: Mapping[str, Any]) -> nn.Module:
    """The detector for `num_classes` object classes (labels 1..num_classes in targets and outputs)."""
    size = hyperparameters.get("model_size", "small")
    if size not in MODEL_SIZES:
        raise ValueError(f"hyperparameters.model_size: {size!r} is not a YOLOv5 size (one of "
                         f"{', '.join(MODEL_SIZES)})")
    depth_multiple, width_multiple = MODEL_SIZES[size]
    return YOLOv5(num_classes, depth_multiple, width_multiple, int(hyperparameters.get("img_size", 640)),
                  multi_scale=bool(int(hyperparameters.get("multi_scale", 0))),
                  score_thresh=float(hyperparameters.get("box_score_thresh", 0.1)),
                  # box_iou_thresh: the name of jobs accepted before it became box_nms_thresh
                  iou_thresh=float(hyperparameters.get("box_nms_thresh", hyperparameters.get("box_iou_thresh", 0.5))))
