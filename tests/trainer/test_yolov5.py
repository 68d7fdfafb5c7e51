"""Our YOLOv5 (trainer/yolov5.py): its size against the published YOLOv5 v6 models, letterboxing,
target assignment, CIoU, a short overfit of two synthetic squares, and the detector interface the
training loop and evaluator rely on. Small model, 64-128 px images."""
from __future__ import annotations

import io
import itertools
import math

import pytest
import torch
from torch import nn
from torchvision.ops import box_convert, box_iou, complete_box_iou_loss

from automl_images.trainer.yolov5 import (ANCHORS, PAD_VALUE, assign_targets, batch_targets, build_yolov5,
                                          complete_iou, letterbox)

HP = {"model_size": "small", "img_size": 64, "multi_scale": 0, "box_score_thresh": 0.1, "box_iou_thresh": 0.5}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def square_image(height, width, box, background=0.0):
    """A (3, height, width) image of `background` with a white rectangle at XYXY `box`."""
    image = torch.full((3, height, width), background)
    x0, y0, x1, y1 = box
    image[:, y0:y1, x0:x1] = 1.0
    return image


def target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def test_sizes_match_the_published_yolov5_v6_models():
    torch.manual_seed(0)
    small = build_yolov5(80, {"model_size": "small"})
    medium = build_yolov5(80, {"model_size": "medium"})
    # yolov5s.yaml / yolov5m.yaml v6.0 with 80 classes
    assert sum(p.numel() for p in small.parameters()) == 7_235_389
    assert sum(p.numel() for p in medium.parameters()) == 21_190_557
    with torch.no_grad():
        outputs = small.network(torch.zeros(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outputs] == [(1, 3, 64 // s, 96 // s, 85) for s in (8, 16, 32)]
    assert small.anchors.shape == (3, 3, 2) and small.anchors[0, 0].tolist() == [10, 13]
    # the head's bias starts at the objectness prior of ~8 objects per 640 px image
    head3 = small.network.heads[0].bias.view(3, 85)
    assert head3[:, 4].mean().item() == pytest.approx(math.log(8 / 80 ** 2), abs=0.1)


def test_unknown_model_size_is_refused_by_name():
    with pytest.raises(ValueError, match="model_size.*'tiny'"):
        build_yolov5(3, {**HP, "model_size": "tiny"})


def test_letterbox_moves_boxes_with_the_image():
    wide = square_image(40, 100, (20, 10, 50, 30))          # white box on black
    tall = square_image(90, 30, (5, 60, 25, 80))
    batch, scales = letterbox([wide, tall], 64)
    # long sides to 64; the batch is padded to multiples of 32 of the largest height and width
    assert tuple(batch.shape) == (2, 3, 64, 64)
    assert scales.flatten().tolist() == pytest.approx([64 / 100, 26 / 40, 21 / 30, 64 / 90])
    rows = batch_targets([target([[20, 10, 50, 30]], [3]), target([[5, 60, 25, 80]], [1])], scales)
    assert rows[:, :2].tolist() == [[0, 2], [1, 0]]          # image index, 0-based class
    for image, box in zip(batch, box_convert(rows[:, 2:], "cxcywh", "xyxy")):
        x0, y0, x1, y1 = box.tolist()
        inside = image[:, math.ceil(y0) + 1:math.floor(y1) - 1, math.ceil(x0) + 1:math.floor(x1) - 1]
        assert inside.min() > 0.99
        outside = image.clone()
        outside[:, math.floor(y0) - 1:math.ceil(y1) + 1, math.floor(x0) - 1:math.ceil(x1) + 1] = PAD_VALUE
        assert ((outside < 0.01) | ((outside - PAD_VALUE).abs() < 1e-6)).all()
    assert (batch[0, :, 26:, :] == PAD_VALUE).all() and (batch[1, :, :, 21:] == PAD_VALUE).all()


def test_target_goes_to_its_cell_and_the_two_nearest_neighbours_for_anchors_within_ratio_4():
    # a 20 x 24 px box centred at (18, 30) on a 64 px batch; a small one near the top-left corner
    targets = torch.tensor([[0, 1, 18, 30, 20, 24], [1, 0, 3, 3, 12, 12]], dtype=torch.float32)
    levels = assign_targets(targets, torch.tensor(ANCHORS, dtype=torch.float32), [(8, 8), (4, 4), (2, 2)])

    def assigned(level, image):
        keep = level.image == image
        return sorted(zip(level.anchor[keep].tolist(), level.cell_y[keep].tolist(), level.cell_x[keep].tolist()))

    # P3 (stride 8): centre (2.25, 3.75) cells, so the left neighbour (x 1) and the lower one (y 4);
    # all three P3 anchors are within ratio 4 of 20 x 24
    assert assigned(levels[0], 0) == sorted((a, y, x) for a in range(3) for y, x in ((3, 2), (3, 1), (4, 2)))
    # P4 (stride 16): centre (1.125, 1.875); anchor 59 x 119 is 119 / 24 > 4 times too tall
    assert assigned(levels[1], 0) == sorted((a, y, x) for a in range(2) for y, x in ((1, 1), (1, 0), (2, 1)))
    # P5 (stride 32): 116 x 90 and larger are all over 4 times the box
    assert assigned(levels[2], 0) == []
    # centre (0.375, 0.375) cells: nearest the left and upper neighbours, but the grid ends there
    assert assigned(levels[0], 1) == [(0, 0, 0), (1, 0, 0), (2, 0, 0)]

    p3 = levels[0]
    rows = {(a, y, x): i for i, (a, y, x) in enumerate(zip(p3.anchor.tolist(), p3.cell_y.tolist(), p3.cell_x.tolist()))
            if p3.image[i] == 0}
    # box: the centre relative to each cell's corner (in -0.5..1.5, the decode's range) and the size, in cells
    assert p3.box[rows[(1, 3, 2)]].tolist() == [0.25, 0.75, 2.5, 3.0]
    assert p3.box[rows[(1, 3, 1)]].tolist() == [1.25, 0.75, 2.5, 3.0]
    assert p3.box[rows[(1, 4, 2)]].tolist() == [0.25, -0.25, 2.5, 3.0]
    assert p3.anchor_wh[rows[(1, 3, 2)]].tolist() == [16 / 8, 30 / 8]
    assert set(p3.label[p3.image == 0].tolist()) == {1}


def test_complete_iou_matches_torchvision():
    box = torch.tensor([[10.0, 10.0, 4.0, 6.0]])
    shifts = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]
    ciou = [complete_iou(box + torch.tensor([[s, 0, 0, 0]]), box).item() for s in shifts]
    assert ciou[0] == pytest.approx(1.0, abs=1e-6)
    assert all(a > b for a, b in itertools.pairwise(ciou))
    assert ciou[-1] < 0             # apart: below the plain IoU of 0, by the centre distance

    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(500, 2, generator=generator) * 50
    sizes = torch.rand(500, 2, generator=generator) * 30 + 0.5
    xyxy = torch.cat((corners, corners + sizes), 1)
    predicted, truth = xyxy[:250], xyxy[250:]
    ours = complete_iou(box_convert(predicted, "xyxy", "cxcywh"), box_convert(truth, "xyxy", "cxcywh"))
    theirs = 1 - complete_box_iou_loss(predicted, truth, reduction="none")
    assert (ours > 0).any() and (ours < 0).any()
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_overfits_two_squares_and_detects_them_in_eval_mode():
    torch.manual_seed(0)
    boxes = [(10, 14, 40, 44), (30, 26, 58, 52)]
    # a noisy background: on flat black the batch statistics are degenerate and BatchNorm's eval
    # statistics cannot match them after a few steps
    images = [square_image(64, 64, box) + torch.rand(3, 64, 64) * 0.4 for box in boxes]
    images = [image.clamp(0, 1) for image in images]
    targets = [target([box], [2]) for box in boxes]            # class index 1: label 2
    # 128 px: at 64 px the stride-32 maps are 2x2, too few values for BatchNorm's batch statistics
    model = build_yolov5(2, {**HP, "img_size": 128})
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1   # YOLOv5's 0.03 needs far more than 60 steps to forget the init
    optimizer = torch.optim.Adam(model.parameters(), lr=0.002)
    model.train()
    totals = []
    for _ in range(60):
        losses = model(images, targets)
        assert set(losses) == {"loss_box", "loss_obj", "loss_cls"}
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    assert sum(totals[-5:]) / 5 < 0.35 * totals[0]

    model.eval()
    with torch.no_grad():
        outputs = model(images)
    for output, box in zip(outputs, boxes):
        best = output["scores"].argmax()
        assert output["labels"][best] == 2 and output["scores"][best] > 0.5
        assert box_iou(output["boxes"][best:best + 1], torch.tensor([box], dtype=torch.float32)).item() > 0.5


class FixedOutputs(nn.Module):
    """Stands in for the network: records the batch it is given and returns set raw outputs."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs
        self.batch_shapes = []

    def forward(self, batch):
        self.batch_shapes.append(tuple(batch.shape))
        return [o.clone() for o in self.outputs]


def test_detections_are_in_the_input_image_pixels_thresholded_and_nms_per_class():
    # a 40 x 100 image letterboxes to 26 x 64 in a 32 x 64 batch: grids 4 x 8, 2 x 4, 1 x 2
    outputs = [torch.full((1, 3, 32 // s, 64 // s, 7), -10.0) for s in (8, 16, 32)]
    p3 = outputs[0]

    def place(anchor, y, x, objectness, classes, wh_logit=10.0):
        p3[0, anchor, y, x] = torch.tensor([0.0, 0.0, wh_logit, wh_logit, objectness, *classes])

    place(0, 1, 3, 5.0, (-5.0, 5.0))     # a: class 2, score 0.987
    place(0, 1, 4, 3.0, (-5.0, 5.0))     # b: class 2, score 0.946, IoU 0.67 with a
    place(1, 1, 4, 4.0, (5.0, -5.0))     # c: class 1, score 0.975, in the same cell as b
    place(0, 3, 7, -3.0, (-5.0, 5.0))    # d: class 2, score 0.047: below the threshold
    model = build_yolov5(2, {**HP, "box_score_thresh": 0.1, "box_iou_thresh": 0.5}).eval()
    model.network = FixedOutputs(outputs)
    image = torch.zeros(3, 40, 100)

    [output] = model([image])
    assert model.network.batch_shapes == [(1, 3, 32, 64)]
    assert output["labels"].dtype == torch.int64 and output["boxes"].dtype == torch.float32
    assert output["labels"].tolist() == [2, 1]                  # b suppressed by a, c kept: another class
    sigmoid = lambda v: 1 / (1 + math.exp(-v))
    assert output["scores"].tolist() == pytest.approx([sigmoid(5) * sigmoid(5), sigmoid(4) * sigmoid(5)])
    # a: centre ((3 + 0.5) * 8, (1 + 0.5) * 8), size (2 * sigmoid(10))^2 * the 10 x 13 anchor, in the
    # letterboxed batch; then to the image by its scales 64 / 100 and 26 / 40, and clipped to it
    w, h = ((2 * torch.sigmoid(torch.tensor(10.0))) ** 2 * torch.tensor([10.0, 13.0])).tolist()
    a = [(28 - w / 2) / 0.64, max(0.0, (12 - h / 2) / 0.65), (28 + w / 2) / 0.64, min(40.0, (12 + h / 2) / 0.65)]
    assert output["boxes"][0].tolist() == pytest.approx(a, abs=1e-3)
    assert a[1] == 0 and a[3] == 40                                 # clipped on both sides
    assert output["boxes"][:, 0::2].max() <= 100 and output["boxes"][:, 1::2].max() <= 40
    assert output["boxes"].min() >= 0

    model.iou_thresh = 0.7
    [output] = model([image])
    assert output["labels"].tolist() == [2, 1, 2]                # a, c (0.975), b (0.946)


def test_untrained_detections_keep_to_the_limits():
    torch.manual_seed(0)
    model = build_yolov5(3, {**HP, "box_score_thresh": 0.0}).eval()
    images = [torch.rand(3, 50, 90), torch.rand(3, 120, 40)]
    with torch.no_grad():
        outputs = model(images)
    for output, image in zip(outputs, images):
        height, width = image.shape[-2:]
        assert 0 < len(output["boxes"]) <= 300 and output["boxes"].shape[1] == 4
        assert len(output["labels"]) == len(output["scores"]) == len(output["boxes"])
        assert output["boxes"][:, 0::2].max() <= width and output["boxes"][:, 1::2].max() <= height
        assert output["boxes"].min() >= 0
        assert set(output["labels"].tolist()) <= {1, 2, 3}
        for label in output["labels"].unique():
            same = output["boxes"][output["labels"] == label]
            overlaps = box_iou(same, same).fill_diagonal_(0)
            assert overlaps.max() <= 0.5 + 1e-6


def test_empty_targets_train():
    torch.manual_seed(0)
    model = build_yolov5(2, HP).train()
    images = [torch.rand(3, 48, 64), torch.rand(3, 64, 40)]
    losses = model(images, [target([], []), target([], [])])
    assert losses["loss_box"].item() == 0 and losses["loss_cls"].item() == 0 and losses["loss_obj"].item() > 0
    sum(losses.values()).backward()
    losses = model(images, [target([], []), target([[4, 4, 30, 40]], [1])])
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_box"].item() > 0


def test_multi_scale_draws_multiples_of_32_reproducibly():
    model = build_yolov5(2, {**HP, "multi_scale": 1}).train()
    outputs = [torch.zeros(2, 3, 1, 1, 7)] * 3     # any raw outputs: only the batch sizes are looked at
    model.network = FixedOutputs(outputs)
    images = [torch.rand(3, 64, 64), torch.rand(3, 32, 64)]
    targets = [target([[4, 4, 30, 40]], [1]), target([], [])]

    def sides():
        torch.manual_seed(3)
        model.network.batch_shapes.clear()
        for _ in range(12):
            model(images, targets)
        return [shape[-1] for shape in model.network.batch_shapes]

    first = sides()
    assert set(first) <= {32, 64, 96} and len(set(first)) > 1      # [0.5, 1.5] * 64 in steps of 32
    assert sides() == first
    model.eval()
    model.network.batch_shapes.clear()
    model(images)
    assert model.network.batch_shapes == [(2, 3, 64, 64)]        # evaluation: img_size always


def test_deterministic_under_bfloat16_autocast_and_state_dict_round_trips():
    images = [torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(1)), torch.rand(3, 64, 56)]
    targets = [target([[4, 4, 30, 40]], [1]), target([[10, 10, 50, 30], [0, 0, 20, 20]], [2, 1])]

    def train_two_steps():
        torch.manual_seed(0)
        model = build_yolov5(2, {**HP, "box_score_thresh": 0.0}).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                losses = model(images, targets)
            assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
        return model.eval()

    model, again = train_two_steps(), train_two_steps()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs, outputs_again = model(images), again(images)
    assert outputs[0]["boxes"].dtype == torch.float32 and len(outputs[0]["boxes"]) > 0
    for output, other in zip(outputs, outputs_again):
        for key in ("boxes", "labels", "scores"):
            assert torch.equal(output[key], other[key])

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)
    loaded = build_yolov5(2, {**HP, "box_score_thresh": 0.0})
    loaded.load_state_dict(torch.load(buffer))
    loaded.eval()
    with torch.no_grad():
        expected, got = model(images), loaded(images)
    for output, other in zip(expected, got):
        for key in ("boxes", "labels", "scores"):
            assert torch.equal(output[key], other[key])
