"""Mosaic augmentation for yolov5 (`apply_mosaic_for_yolo`), as ultralytics' YOLOv5 makes it
(`load_mosaic`): a training sample becomes four images, its own and three drawn at random, each
resized so that its long side is the image size, placed around a random centre (the first to its
top left, then top right, bottom left, bottom right), on a grey square of the image size. Their
boxes move with them, are clipped to the square, and those mostly cut away are dropped (YOLOv5's
`box_candidates`). YOLOv5 draws the centre on a canvas twice the size and crops its middle after
a random affine; without the affine that is this square, with the centre anywhere in it.

The draws come from torch's global generator, which the dataset seeds per (epoch, index)
(data.ImageDataset): a resumed epoch makes the same mosaics. Written from that description (no
ultralytics code: it is AGPL-3.0).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

PIECES = 4
FILL = 114               # YOLOv5's grey, on uint8 images
MIN_SIDE = 2.0           # pixels: a box narrower or lower than this after clipping is dropped
MIN_KEPT_AREA = 0.1      # ... and one that keeps less than this share of its area
MAX_ASPECT = 100.0       # ... and one this elongated (a sliver along the square's edge)


def draw(dataset_size: int, size: int) -> tuple[list[int], tuple[int, int]]:
    """The three other images' indices and the centre (x, y) of a mosaic of `size` pixels."""
    others = torch.randint(dataset_size, (PIECES - 1,)).tolist()
    centre_x, centre_y = torch.randint(size + 1, (2,)).tolist()
    return others, (centre_x, centre_y)


def combine(pieces: Sequence[tuple[torch.Tensor, dict[str, Any]]], size: int,
            centre: tuple[int, int]) -> tuple[tv_tensors.Image, dict[str, Any]]:
    """One `size` x `size` uint8 image of the four `pieces` (a (3, H, W) uint8 image and its target:
    XYXY pixel `boxes`, `labels`, `iscrowd`) around `centre`, and its target."""
    centre_x, centre_y = centre
    canvas = torch.full((3, size, size), FILL, dtype=torch.uint8)
    boxes, kept_labels, kept_crowd = [], [], []
    for quadrant, (image, target) in enumerate(pieces):
        height, width = image.shape[-2:]
        ratio = size / max(height, width)
        new_h, new_w = max(1, round(height * ratio)), max(1, round(width * ratio))
        image = F.resize(torch.as_tensor(image), [new_h, new_w], antialias=True)
        box = torch.as_tensor(target["boxes"]).as_subclass(torch.Tensor).float().reshape(-1, 4)
        box = box * torch.tensor([new_w / width, new_h / height] * 2)
        # the image's corner at the centre: its bottom right for the top-left piece, and so on
        left = centre_x - new_w if quadrant % 2 == 0 else centre_x
        top = centre_y - new_h if quadrant < 2 else centre_y
        x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + new_w, size), min(top + new_h, size)
        if x1 > x0 and y1 > y0:
            canvas[:, y0:y1, x0:x1] = image[:, y0 - top:y1 - top, x0 - left:x1 - left]
        moved = box + torch.tensor([left, top, left, top], dtype=torch.float32)
        clipped = moved.clone()
        clipped[:, 0::2] = clipped[:, 0::2].clamp(0, size)
        clipped[:, 1::2] = clipped[:, 1::2].clamp(0, size)
        keep = _kept(moved, clipped)
        boxes.append(clipped[keep])
        kept_labels.append(torch.as_tensor(target["labels"])[keep])
        kept_crowd.append(torch.as_tensor(target["iscrowd"])[keep])
    return tv_tensors.Image(canvas), {
        "boxes": tv_tensors.BoundingBoxes(torch.cat(boxes), format="XYXY", canvas_size=(size, size)),
        "labels": torch.cat(kept_labels), "iscrowd": torch.cat(kept_crowd)}


def _kept(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """The boxes that keep enough of themselves after clipping to be trained on."""
    width, height = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    area_before = (before[:, 2] - before[:, 0]) * (before[:, 3] - before[:, 1])
    aspect = torch.maximum(width / (height + 1e-16), height / (width + 1e-16))
    return (width > MIN_SIDE) & (height > MIN_SIDE) & (width * height > MIN_KEPT_AREA * area_before) & \
        (aspect < MAX_ASPECT)
