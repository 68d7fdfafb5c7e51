"""Tiling for small-object detection, as Azure AutoML for Images offers it (`tile_grid_size`,
`tile_overlap_ratio`, `tile_predictions_nms_thresh`).

The detectors resize every input to `min_size`, so an object a few pixels wide in a large image
shrinks to almost nothing. Cutting the image into a grid of overlapping tiles and running the model
on each tile (also resized to `min_size`) shows it small objects magnified.

- `TileGrid`: the grid ("3x2" = 3 columns, 2 rows) and its tiles' pixel regions for an image size.
- `crop_to_tile`: a tile's image and target (training uses the whole image and each of its tiles).
- `TiledInference`: the detector run on the whole image and on every tile, the tiles' detections
  moved back to whole-image coordinates and merged with class-aware NMS.

Not for yolov5 (Azure does not tile it either); the caller enforces that.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.ops import batched_nms, box_area

from automl_images.core.hyperparameters import grid_size
from automl_images.core.trial_spec import SpecError

Region = tuple[int, int, int, int]     # x0, y0, x1, y1 in pixels, x1 and y1 exclusive

@dataclass(frozen=True)
class TileGrid:
    columns: int
    rows: int
    overlap_ratio: float = 0.25    # of a tile's width (height) shared with its neighbour, Azure's default

    def __post_init__(self):
        if self.columns < 1 or self.rows < 1:
            raise SpecError(f"trial spec hyperparameters.tile_grid_size: {self.columns}x{self.rows} needs at "
                            f"least one column and one row")
        # 1 would make every tile as large as the image (and the tile size below infinite)
        if not 0.0 <= self.overlap_ratio < 1.0:
            raise SpecError(f"trial spec hyperparameters.tile_overlap_ratio: {self.overlap_ratio} is not in [0, 1)")

    @classmethod
    def parse(cls, text: str, overlap_ratio: float = 0.25) -> TileGrid:
        """'3x2' -> 3 columns, 2 rows."""
        try:
            columns, rows = grid_size(text)
        except ValueError as exc:
            raise SpecError(f"trial spec hyperparameters.tile_grid_size: {exc}") from None
        return cls(columns, rows, float(overlap_ratio))

    def regions(self, width: int, height: int) -> list[Region]:
        """The tiles of a width x height image, row by row: the first starts at 0, the last ends at the
        image's edge, neighbours share `overlap_ratio` of a tile (to within the pixel rounding)."""
        xs = _spans(width, self.columns, self.overlap_ratio)
        ys = _spans(height, self.rows, self.overlap_ratio)
        return [(x0, y0, x1, y1) for y0, y1 in ys for x0, x1 in xs]


def _spans(length: int, count: int, overlap: float) -> list[tuple[int, int]]:
    # `count` tiles of `size` that advance by size * (1 - overlap) end exactly at `length`.
    size = length / (count - (count - 1) * overlap)
    stride = size * (1 - overlap)
    spans = []
    for i in range(count):
        # Rounding both ends keeps neighbours touching or overlapping; the clamps keep every tile at
        # least a pixel wide when the image has fewer pixels than the grid has tiles.
        start = min(round(i * stride), length - 1)
        spans.append((start, min(max(round(i * stride + size), start + 1), length)))
    return spans


def crop_to_tile(image: torch.Tensor, target: dict[str, Any], region: Region,
                 min_visible: float = 0.25) -> tuple[torch.Tensor, dict[str, Any]]:
    """The tile's image and target: `boxes` (XYXY) clipped to the tile, in its coordinates, with its
    canvas_size; `labels`, `iscrowd` and `masks` (cropped) of the objects kept.

    An object is kept when at least `min_visible` of its box's area lies inside the tile. The model
    learns to detect what the tiles show it, so whatever fragments it is taught come back at
    inference from the tiles that cut the object. A fragment holding a fraction f of the box has IoU
    f with the whole box, so NMS at the default tile_predictions_nms_thresh (0.25) merges it into the
    whole object's detection only when f > 0.25: smaller fragments would stay as duplicates. Dropped,
    a sliver becomes background in that tile, a milder error; the whole image (also a training
    sample) still shows the object entire. Boxes left with no area are always dropped (torchvision's
    detectors refuse them in training).

    Only those four keys are made: the others (`size`, `objects`: the whole image's, for the
    evaluator) do not describe the tile, and the caller decides what the tile sample carries.
    """
    x0, y0, x1, y1 = region
    boxes = torch.as_tensor(target["boxes"]).as_subclass(torch.Tensor).reshape(-1, 4)
    low = boxes.new_tensor([x0, y0, x0, y0])
    clipped = torch.minimum(torch.maximum(boxes, low), boxes.new_tensor([x1, y1, x1, y1]))
    visible = box_area(clipped)
    keep = (visible > 0) & (visible >= min_visible * box_area(boxes))
    tile = {
        "boxes": tv_tensors.BoundingBoxes(clipped[keep] - low, format="XYXY", canvas_size=(y1 - y0, x1 - x0)),
        "labels": target["labels"][keep],
        "iscrowd": target["iscrowd"][keep],
    }
    if "masks" in target:
        # crop before selecting, so the copy the selection makes is tile-sized
        tile["masks"] = tv_tensors.Mask(target["masks"].as_subclass(torch.Tensor)[:, y0:y1, x0:x1][keep])
    # a copy: a view would keep the whole image's storage alive (and ship it to the DataLoader's
    # main process with every tile)
    return image[..., y0:y1, x0:x1].clone(), tile


class TiledInference(torch.nn.Module):
    """A torchvision-style detector that, in eval mode, also looks at the tiles of `grid`.

    Per image, one call of the detector on the image and its tiles; each tile's boxes are shifted by
    its offset and its masks (N x 1 x h x w probabilities, Mask R-CNN's) pasted into a zero canvas of
    the image's size; the union is merged by class-aware NMS at `nms_thresh` and the
    `detections_per_img` best scores are kept. In train mode `forward(images, targets)` is the
    detector's own: the training samples are already tiles (`crop_to_tile`).

    As in Azure, NMS is the only merge: an object cut by a tile's edge can also come back as the
    fragment that tile shows, when the fragment overlaps the whole object by less than `nms_thresh`.

    The state_dict keys gain a `detector.` prefix: save and load `self.detector`.
    """

    def __init__(self, detector: torch.nn.Module, grid: TileGrid, nms_thresh: float, detections_per_img: int = 100):
        super().__init__()
        if not 0.0 <= nms_thresh <= 1.0:
            raise SpecError(f"trial spec hyperparameters.tile_predictions_nms_thresh: {nms_thresh} is not in [0, 1]")
        self.detector = detector
        self.grid = grid
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        # A new module is in train mode: wrapping a detector in eval mode (prediction) must not turn
        # its forward into the detector's own, which would look at the whole images only.
        self.train(detector.training)

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, Any]] | None = None):
        if self.training:
            return self.detector(images, targets)
        return [self._detect(image) for image in images]

    def _detect(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = image.shape[-2:]
        # a 1x1 grid's tile is the whole image: once is enough
        regions = list(dict.fromkeys([(0, 0, width, height), *self.grid.regions(width, height)]))
        outputs = self.detector([image[..., y0:y1, x0:x1] for x0, y0, x1, y1 in regions])
        boxes = torch.cat([o["boxes"] + o["boxes"].new_tensor([x0, y0, x0, y0])
                           for o, (x0, y0, _, _) in zip(outputs, regions)])
        scores = torch.cat([o["scores"] for o in outputs])
        labels = torch.cat([o["labels"] for o in outputs])
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        result = {"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]}
        if "masks" in outputs[0]:
            # pasted after NMS: only the kept detections get an image-sized canvas
            origin = [(i, j) for i, o in enumerate(outputs) for j in range(len(o["scores"]))]
            masks = outputs[0]["masks"].new_zeros((len(keep), 1, height, width))
            for k, index in enumerate(keep.tolist()):
                i, j = origin[index]
                x0, y0, x1, y1 = regions[i]
                masks[k, :, y0:y1, x0:x1] = outputs[i]["masks"][j]
            result["masks"] = masks
        return result
