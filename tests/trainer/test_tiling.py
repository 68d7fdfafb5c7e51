"""Tiling for small-object detection (`trainer/tiling.py`): the grid, tile targets for training,
and inference on the whole image and its tiles, with a stand-in detector that finds rectangles."""
from __future__ import annotations

import itertools
import time

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from automl_images.core.detection_labels import DetectionLabel, DetectionObject
from automl_images.trainer.tasks.detection import DetectionTransform, build_detector
from automl_images.trainer.tiling import TiledInference, TileGrid, crop_to_tile

# -- the grid --------------------------------------------------------------------------------------

def test_parse():
    assert TileGrid.parse("3x2") == TileGrid(columns=3, rows=2, overlap_ratio=0.25)
    assert TileGrid.parse(" 2X1 ", overlap_ratio=0.1) == TileGrid(2, 1, 0.1)
    assert TileGrid.parse("1x1", 0.0) == TileGrid(1, 1, 0.0)


@pytest.mark.parametrize("text, overlap, field", [
    ("3", 0.25, "tile_grid_size"), ("0x2", 0.25, "tile_grid_size"), ("axb", 0.25, "tile_grid_size"),
    ("3x2x1", 0.25, "tile_grid_size"), ("-1x2", 0.25, "tile_grid_size"), ("(3, 2)", 0.25, "tile_grid_size"),
    ("3x2", 1.0, "tile_overlap_ratio"), ("3x2", -0.1, "tile_overlap_ratio"),
])
def test_parse_refuses_naming_the_field(text, overlap, field):
    with pytest.raises(ValueError, match=field):
        TileGrid.parse(text, overlap)


@pytest.mark.parametrize("grid, width, height", [
    (TileGrid(3, 2), 640, 480), (TileGrid(3, 2, 0.1), 1001, 333), (TileGrid(2, 2, 0.0), 101, 99),
    (TileGrid(5, 3, 0.5), 97, 61), (TileGrid(2, 3, 0.25), 7, 1000), (TileGrid(4, 4), 3, 3),
])
def test_regions_cover_the_image_with_the_overlap_asked(grid, width, height):
    regions = grid.regions(width, height)
    assert len(regions) == grid.columns * grid.rows
    assert all(isinstance(v, int) for region in regions for v in region)
    covered = torch.zeros(height, width, dtype=torch.int64)
    for x0, y0, x1, y1 in regions:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    # row-major: the first row's columns, then the next row's
    xs = [(x0, x1) for x0, _, x1, _ in regions[:grid.columns]]
    ys = [(y0, y1) for _, y0, _, y1 in regions[::grid.columns]]
    assert all(region[1] == ys[0][0] for region in regions[:grid.columns])
    for spans, length, count in ((xs, width, grid.columns), (ys, height, grid.rows)):
        assert spans[0][0] == 0 and spans[-1][1] == length
        size = length / (count - (count - 1) * grid.overlap_ratio)
        if size < 2:
            continue        # fewer pixels than tiles: only coverage and non-empty tiles hold
        assert all(abs((end - start) - size) <= 1 for start, end in spans)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert abs((end - start) - grid.overlap_ratio * size) <= 1


def test_one_by_one_is_the_whole_image():
    assert TileGrid(1, 1).regions(640, 480) == [(0, 0, 640, 480)]


def test_regions_of_a_three_by_two_grid():
    # tile 100 / (3 - 2 * 0.25) = 40 wide, 60 / (2 - 0.25) = 34.3 high; neighbours share 10 and 8.6
    assert TileGrid.parse("3x2").regions(100, 60) == [
        (0, 0, 40, 34), (30, 0, 70, 34), (60, 0, 100, 34),
        (0, 26, 40, 60), (30, 26, 70, 60), (60, 26, 100, 60)]


# -- training targets ------------------------------------------------------------------------------

def _rectangle(x0, y0, x1, y1, width, height, is_crowd=False):
    box = (x0 / width, y0 / height, x1 / width, y1 / height)
    polygon = (box[0], box[1], box[2], box[1], box[2], box[3], box[0], box[3])
    return DetectionObject("a", box, is_crowd=is_crowd, polygons=(polygon,))


def _sample(objects, width=60, height=40):
    """An image of distinct pixel values and its target, as DetectionTransform makes them."""
    pixels = torch.arange(width * height * 3, dtype=torch.int64).remainder(251).to(torch.uint8)
    image = Image.fromarray(pixels.reshape(height, width, 3).numpy())
    return DetectionTransform(train=False, segmentation=True)(image, (DetectionLabel(tuple(objects)), {"a": 0}))


def test_crop_to_tile_clips_shifts_and_drops():
    inside, straddling, mostly_right = (2, 2, 12, 12), (20, 10, 40, 20), (30, 25, 50, 35)
    objects = [_rectangle(*inside, 60, 40), _rectangle(*straddling, 60, 40),
               _rectangle(*mostly_right, 60, 40, is_crowd=True)]
    image, target = _sample(objects)
    target["labels"] = torch.tensor([1, 2, 3])
    left, right = (0, 0, 34, 40), (26, 0, 60, 40)

    tile_image, tile = crop_to_tile(image, target, left)
    assert set(tile) == {"boxes", "labels", "iscrowd", "masks"}      # not `size` nor `objects`
    assert torch.equal(tile_image, image[:, :, 0:34])
    assert tile_image.untyped_storage().nbytes() == tile_image.numel() * tile_image.element_size()
    assert isinstance(tile["boxes"], tv_tensors.BoundingBoxes) and tile["boxes"].canvas_size == (40, 34)
    assert tile["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    # the box inside is unchanged, the straddling one (70% inside) is clipped at the tile's edge,
    # the one with 20% inside is dropped
    assert tile["boxes"].tolist() == [[2, 2, 12, 12], [20, 10, 34, 20]]
    assert tile["labels"].tolist() == [1, 2] and tile["iscrowd"].tolist() == [False, False]
    assert isinstance(tile["masks"], tv_tensors.Mask) and tile["masks"].shape == (2, 40, 34)
    assert torch.equal(tile["masks"], target["masks"][:2, :, 0:34])

    tile_image, tile = crop_to_tile(image, target, right)
    assert torch.equal(tile_image, image[:, :, 26:60]) and tile["boxes"].canvas_size == (40, 34)
    # in tile coordinates (x - 26): the straddling box's other 70%, and the crowd box whole
    assert tile["boxes"].tolist() == [[0, 10, 14, 20], [4, 25, 24, 35]]
    assert tile["labels"].tolist() == [2, 3] and tile["iscrowd"].tolist() == [False, True]
    assert torch.equal(tile["masks"], target["masks"][1:, :, 26:60])

    _, tile = crop_to_tile(image, target, left, min_visible=0.1)
    assert tile["labels"].tolist() == [1, 2, 3] and tile["boxes"][2].tolist() == [30, 25, 34, 35]


def test_crop_to_tile_drops_boxes_left_with_no_area():
    image, target = _sample([_rectangle(34, 0, 40, 5, 60, 40)])
    _, tile = crop_to_tile(image, target, (0, 0, 34, 40), min_visible=0.0)
    assert tile["boxes"].shape == (0, 4) and tile["masks"].shape == (0, 40, 34)
    _, empty = crop_to_tile(image, {**target, "boxes": target["boxes"][:0], "labels": target["labels"][:0],
                                    "iscrowd": target["iscrowd"][:0], "masks": target["masks"][:0]}, (26, 0, 60, 40))
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)


# -- inference -------------------------------------------------------------------------------------

class Rectangles(torch.nn.Module):
    """A stand-in detector that finds rectangles in whatever it is given. Channel 0 holds class 1
    objects and channel 1 class 2 ones; each object has a brightness of its own, which is also its
    score. Objects narrower or lower than `min_fraction` of its input go unseen, as small objects do
    to a detector that resizes its input. It records its calls."""

    def __init__(self, min_fraction: float = 0.0, masks: bool = False):
        super().__init__()
        self.min_fraction, self.masks, self.calls = min_fraction, masks, []

    def forward(self, images, targets=None):
        self.calls.append((images, targets))
        if self.training:
            return {"loss": torch.tensor(0.0)}
        return [self._find(image) for image in images]

    def _find(self, image):
        height, width = image.shape[-2:]
        found = {"boxes": [], "labels": [], "scores": [], "masks": []}
        for channel in range(2):
            plane = image[channel]
            for value in plane.unique().tolist():
                if value <= 0:
                    continue
                ys, xs = torch.nonzero(plane == value, as_tuple=True)
                box = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
                if box[2] - box[0] < self.min_fraction * width or box[3] - box[1] < self.min_fraction * height:
                    continue
                found["boxes"].append(box)
                found["labels"].append(channel + 1)
                found["scores"].append(value)
                found["masks"].append((plane == value).float()[None])
        out = {"boxes": torch.tensor(found["boxes"], dtype=torch.float32).reshape(-1, 4),
               "labels": torch.tensor(found["labels"], dtype=torch.int64),
               "scores": torch.tensor(found["scores"], dtype=torch.float32)}
        if self.masks:
            out["masks"] = torch.stack(found["masks"]) if found["masks"] else torch.zeros(0, 1, height, width)
        return out


def _image(*rectangles, size=120):
    """(channel, brightness, x0, y0, x1, y1) rectangles on black."""
    image = torch.zeros(3, size, size)
    for channel, value, x0, y0, x1, y1 in rectangles:
        image[channel, y0:y1, x0:x1] = value
    return image


def _tiled(detector, grid="2x2", nms_thresh=0.25, **kw):
    return TiledInference(detector, TileGrid.parse(grid), nms_thresh, **kw).eval()


def test_a_small_object_found_in_a_tile_comes_back_in_image_coordinates():
    # 8 px: under 10% of the image (12 px), over 10% of a 2x2 tile (120 / 1.75 = 69 px, 6.9 px)
    detector = Rectangles(min_fraction=0.1)
    image = _image((0, 0.8, 70, 20, 78, 28))
    assert detector.eval()([image])[0]["boxes"].shape == (0, 4)      # the whole image alone misses it
    [out] = _tiled(detector)([image])
    assert out["boxes"].tolist() == [[70, 20, 78, 28]]
    assert out["labels"].tolist() == [1] and out["scores"].tolist() == [pytest.approx(0.8)]
    # one call per image: the image and its four tiles
    crops = detector.calls[-1][0]
    assert [tuple(c.shape[-2:]) for c in crops] == [(120, 120), (69, 69), (69, 69), (69, 69), (69, 69)]


def test_duplicates_are_merged_and_classes_are_not():
    # in the middle: inside every tile (they share 51..69) and the whole image, once per class
    image = _image((0, 0.9, 55, 55, 65, 65), (1, 0.7, 55, 55, 65, 65))
    detector = Rectangles()
    [out] = _tiled(detector)([image])
    assert sum(len(detector._find(crop)["boxes"]) for crop in detector.calls[-1][0]) == 10    # 5 per class
    assert out["boxes"].tolist() == [[55, 55, 65, 65], [55, 55, 65, 65]]
    assert out["labels"].tolist() == [1, 2] and out["scores"].tolist() == pytest.approx([0.9, 0.7])


def test_detections_per_img_keeps_the_best_scores():
    rectangles = [(0, 0.3 + 0.1 * k, 5 + 18 * k, 5, 15 + 18 * k, 15) for k in range(6)]
    [out] = _tiled(Rectangles(), detections_per_img=3)([_image(*rectangles)])
    assert out["scores"].tolist() == pytest.approx([0.8, 0.7, 0.6])
    assert out["boxes"][:, 0].tolist() == [95, 77, 59]


def test_masks_are_pasted_where_their_tile_lies():
    # small: seen in the top-right tile only; large: in the whole image and the bottom-left tile;
    # other: in the whole image and the bottom-right tile (tiles span 0..69 and 51..120)
    small, large, other = (0, 0.8, 70, 20, 78, 28), (0, 0.6, 10, 75, 50, 115), (1, 0.5, 100, 100, 120, 120)
    [out] = _tiled(Rectangles(min_fraction=0.1, masks=True))([_image(small, large, other)])
    assert out["masks"].shape == (3, 1, 120, 120) and out["masks"].dtype == torch.float32
    assert out["labels"].tolist() == [1, 1, 2]
    for mask, box, (_, _, x0, y0, x1, y1) in zip(out["masks"], out["boxes"].tolist(), (small, large, other)):
        assert box == [x0, y0, x1, y1]
        assert mask[0, y0:y1, x0:x1].eq(1).all() and mask.sum() == (x1 - x0) * (y1 - y0)


def test_nothing_found_and_one_by_one():
    detector = Rectangles(masks=True)
    [out] = _tiled(detector, "1x1")([_image(size=50)])
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,) and out["masks"].shape == (0, 1, 50, 50)
    assert len(detector.calls[-1][0]) == 1          # a 1x1 grid's tile is the image: run once


def test_train_mode_passes_through():
    detector = Rectangles()
    tiled = TiledInference(detector, TileGrid(3, 2), 0.25).train()
    images, targets = [_image()], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    assert tiled(images, targets) == {"loss": torch.tensor(0.0)}
    assert detector.calls == [(images, targets)]


def test_nms_thresh_is_checked():
    with pytest.raises(ValueError, match="tile_predictions_nms_thresh"):
        TiledInference(Rectangles(), TileGrid(2, 2), 1.5)


def test_with_a_torchvision_detector():
    """Tile targets train fasterrcnn_resnet18_fpn, and the tiled model predicts in image coordinates."""
    started = time.perf_counter()
    torch.manual_seed(0)
    hp = {"min_size": 64, "max_size": 96, "box_score_thresh": 0.0, "box_nms_thresh": 0.5,
          "box_detections_per_img": 10}
    image, target = _sample([_rectangle(10, 10, 30, 30, 64, 64), _rectangle(28, 40, 60, 60, 64, 64)], 64, 64)
    grid = TileGrid(2, 2)
    model = build_detector("fasterrcnn_resnet18_fpn", 1, hp)
    tiled = TiledInference(model, grid, 0.25, detections_per_img=15)
    samples = [(image, target)] + [crop_to_tile(image, target, region) for region in grid.regions(64, 64)]
    images = [s[0] for s in samples]
    targets = [{k: s[1][k] for k in ("boxes", "labels")} for s in samples]
    losses = tiled.train()(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        [out] = tiled.eval()([image])
    assert 0 < len(out["boxes"]) <= 15 and set(out) == {"boxes", "labels", "scores"}
    assert out["boxes"].min() >= 0 and out["boxes"].max() <= 64
    assert out["scores"].tolist() == sorted(out["scores"].tolist(), reverse=True)
    print(f"fasterrcnn_resnet18_fpn, tiled: {time.perf_counter() - started:.1f}s")
