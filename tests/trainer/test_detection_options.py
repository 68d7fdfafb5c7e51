"""Azure's detection settings log_validation_loss (the detectors' loss on the validation images,
computed in a pass of its own) and apply_mosaic_for_yolo (yolov5's mosaic augmentation): what each
makes, and trials with them on and off. Untrained models on 64 px images."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from trial_data import write_detection_dataset, write_spec

from automl_images.core.detection_labels import DetectionLabel, DetectionObject
from automl_images.core.layout import FILES
from automl_images.core.records import TrialStatus
from automl_images.core.storage import Storage
from automl_images.trainer import data, engine, mosaic, run
from automl_images.trainer.tasks.detection import DetectionAdapter, MosaicDataset

# one colour per piece, far apart, on a grey unlike YOLOv5's fill
COLOURS = [(230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 20)]
SIZE = 64


def piece(colour, width, height, box):
    """A (3, H, W) uint8 image of one `colour` rectangle `box` (pixels) on grey, and its target."""
    pixels = torch.full((3, height, width), 60, dtype=torch.uint8)
    x0, y0, x1, y1 = box
    pixels[:, y0:y1, x0:x1] = torch.tensor(colour, dtype=torch.uint8)[:, None, None]
    target = {"boxes": torch.tensor([box], dtype=torch.float32), "labels": torch.tensor([1]),
              "iscrowd": torch.tensor([False])}
    return pixels, target


PIECES = [piece(COLOURS[0], 64, 48, (20, 10, 50, 40)), piece(COLOURS[1], 48, 64, (4, 30, 40, 60)),
          piece(COLOURS[2], 128, 96, (8, 8, 120, 60)), piece(COLOURS[3], 32, 32, (0, 0, 32, 32))]


def colour_box(image: torch.Tensor, colour) -> list[int] | None:
    """The pixel bounds (x0, y0, x1, y1) of where `image` is `colour` (within the blur of resizing)."""
    near = (image.int() - torch.tensor(colour)[:, None, None]).abs().amax(0) <= 12
    ys, xs = near.nonzero(as_tuple=True)
    if not len(xs):
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


@pytest.mark.parametrize("centre", [(32, 32), (17, 45), (50, 9)])
def test_mosaic_boxes_stay_in_the_image_and_land_on_their_squares(centre):
    image, target = mosaic.combine(PIECES, SIZE, centre)
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.uint8
    boxes = target["boxes"]
    assert tuple(boxes.canvas_size) == (SIZE, SIZE) and len(target["labels"]) == len(target["iscrowd"]) == len(boxes)
    assert bool((boxes >= 0).all() and (boxes <= SIZE).all())
    assert len(boxes) >= 2          # these centres keep at least two squares mostly in sight
    for box in boxes.tolist():
        # each box is where one colour's square is drawn, to a pixel (resizing blurs the edges)
        found = [colour_box(image, c) for c in COLOURS]
        assert any(f is not None and max(abs(a - b) for a, b in zip(f, box)) <= 1.5 for f in found), (box, found)
    # and no square in sight lacks its box (the 4th is small: it may be clipped below the threshold)
    for colour in COLOURS[:3]:
        seen = colour_box(image, colour)
        if seen is not None and (seen[2] - seen[0]) * (seen[3] - seen[1]) > 200:
            assert any(max(abs(a - b) for a, b in zip(seen, box)) <= 1.5 for box in boxes.tolist())


def test_mosaic_centre_in_a_corner_leaves_one_image_and_drops_the_boxes_cut_away():
    image, target = mosaic.combine(PIECES, SIZE, (0, 0))       # only the bottom-right piece in sight
    assert target["boxes"].tolist() == [[0.0, 0.0, 64.0, 64.0]]  # the 32 px square, resized to 64
    assert colour_box(image, COLOURS[3]) == [0, 0, 64, 64]
    image, target = mosaic.combine(PIECES, SIZE, (63, 63))     # the top-left piece, its box cut to 1 px wide
    assert all(box[2] - box[0] > mosaic.MIN_SIDE for box in target["boxes"].tolist())


def write_images(folder, count=5):
    """`count` 64x48 PNG files of one red square each; their samples and targets."""
    samples, targets = [], []
    for k in range(count):
        pixels = np.full((48, 64, 3), 60, dtype=np.uint8)
        x0, y0 = 4 + 6 * k, 4 + 4 * k
        pixels[y0:y0 + 16, x0:x0 + 20] = COLOURS[0]
        path = folder / f"{k}.png"
        Image.fromarray(pixels).save(path)
        box = (x0 / 64, y0 / 48, (x0 + 20) / 64, (y0 + 16) / 48)
        samples.append(data.Sample(data.Record("t.jsonl", k + 1, str(path), None), str(path)))
        targets.append((DetectionLabel((DetectionObject("red", box),)), {"red": 0}))
    return samples, targets


def test_mosaic_samples_are_seeded_per_epoch_and_index(tmp_path):
    samples, targets = write_images(tmp_path)
    adapter = DetectionAdapter({"model_name": "yolov5", "img_size": SIZE, "apply_mosaic_for_yolo": 1})
    dataset = adapter.dataset(samples, targets, train=True, seed=3)
    assert isinstance(dataset, MosaicDataset) and dataset.group_ids is None
    first, again = dataset[(2, 1)], dataset[(2, 1)]
    assert first[0].shape == (3, SIZE, SIZE) and first[0].dtype == torch.float32
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes"], again[1]["boxes"])
    assert not torch.equal(first[0], dataset[(3, 1)][0])       # another epoch, another mosaic
    assert not torch.equal(first[0], dataset[(2, 2)][0])
    off = DetectionAdapter({"model_name": "yolov5", "img_size": SIZE, "apply_mosaic_for_yolo": 0})
    assert not isinstance(off.dataset(samples, targets, train=True), MosaicDataset)
    assert not isinstance(adapter.dataset(samples, targets, train=False), MosaicDataset)


@pytest.mark.usefixtures("one_torch_thread")
def test_validation_loss_leaves_batch_norm_and_the_rng_as_they_were(tmp_path):
    """fasterrcnn_resnet18_fpn untrained has trainable batch norm: the pass must not update its
    running statistics, nor move torch's generator (proposal sampling draws from it)."""
    torch.manual_seed(0)
    samples, targets = write_images(tmp_path, 4)
    adapter = DetectionAdapter({"model_name": "fasterrcnn_resnet18_fpn", "pretrained": 0, "min_size": 64,
                                "max_size": 96, "box_score_thresh": 0.05, "box_nms_thresh": 0.5,
                                "box_detections_per_img": 20, "tile_overlap_ratio": 0.25})
    loader = DataLoader(adapter.dataset(samples, targets, train=False), batch_size=2, collate_fn=adapter.collate)
    model = adapter.build_model(1).eval()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    losses = engine.validation_loss(model, loader, adapter.loss([]).parts, torch.device("cpu"))
    assert set(losses) == {"validation_loss", "validation_loss_classifier", "validation_loss_box_reg",
                           "validation_loss_objectness", "validation_loss_rpn_box_reg"}
    assert all(math.isfinite(v) and v >= 0 for v in losses.values())
    assert losses["validation_loss"] == pytest.approx(sum(v for k, v in losses.items() if k != "validation_loss"))
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng) and not model.training
    assert engine.validation_loss(model, loader, adapter.loss([]).parts, torch.device("cpu")) == losses


@pytest.fixture
def root(tmp_path):
    return Storage(str(tmp_path / "bucket"))


@pytest.mark.usefixtures("trial_process")
@pytest.mark.parametrize("log_validation_loss", ["enable", "disable"])
def test_a_yolov5_trial_with_mosaic_logs_the_validation_loss_when_asked(root, log_validation_loss):
    """The defaults (Azure's): mosaic on, validation loss on."""
    train, val = write_detection_dataset(root)
    status = run.run_trial(write_spec(root, "yolo", train, val, task="image-object-detection", model_name="yolov5",
                                      model_size="small", img_size=64, number_of_epochs=1, learning_rate=0.01,
                                      log_validation_loss=log_validation_loss))
    assert status["status"] == TrialStatus.COMPLETED.value, status.get("error")
    spec = Storage(root.url("yolo")).read_json(FILES.spec)
    assert spec["hyperparameters"]["apply_mosaic_for_yolo"] == 1
    metrics = Storage(root.url("yolo")).read_json(f"{FILES.metrics_dir}/{1:06d}.json")
    losses = {k: v for k, v in metrics.items() if k.startswith("validation_loss")}
    if log_validation_loss == "disable":
        assert losses == {}
        return
    assert set(losses) == {"validation_loss", "validation_loss_box", "validation_loss_obj", "validation_loss_cls"}
    assert all(math.isfinite(v) for v in losses.values()) and losses["validation_loss"] > 0


@pytest.mark.slow   # torchrun: two trainer processes, ~30 s
def test_two_processes_report_the_validation_loss_of_the_whole_set(tmp_path):
    """Each rank passes over its share of the validation images; the sums over the ranks give what
    one process computes over the whole set from the weights they saved. yolov5, one image a batch:
    its loss samples nothing and each image's loss is its own, so the figures agree to float error."""
    from test_trainer_distributed import torchrun

    from automl_images.core.trial_spec import TrialSpec
    from automl_images.trainer import checkpoint
    from automl_images.trainer.tasks import get_adapter

    root = Storage(str(tmp_path / "root"))
    train, val = write_detection_dataset(root, train=8, validation=5)   # passed over as 3 + 2
    spec_url = write_spec(root, "ddp", train, val, task="image-object-detection", model_name="yolov5",
                          model_size="small", img_size=64, number_of_epochs=1, validation_batch_size=1,
                          spec_fields={"keep_checkpoints": True})
    with open(tmp_path / "torchrun.log", "wb") as log:
        result = torchrun(spec_url, tmp_path, log)
    assert result.returncode == 0, (tmp_path / "torchrun.log").read_text()[-4000:]
    trial = Storage(root.url("ddp"))
    assert trial.read_json(FILES.status)["processes"] == 2
    reported = trial.read_json(FILES.metrics(1))

    spec = TrialSpec.from_json(trial.read_text(FILES.spec))
    adapter = get_adapter(spec.task, {**spec.hyperparameters, "pretrained": 0})
    saved = checkpoint.load(trial)
    class_index = {name: i for i, name in enumerate(saved["labels"])}
    samples, _ = data.fetch_images(data.read_jsonl(spec.validation_data, adapter.parse_label))
    dataset = adapter.dataset(samples, [adapter.encode(s.record.label, class_index) for s in samples], train=False)
    model = adapter.build_model(len(class_index))
    model.load_state_dict(saved["model"])
    here = engine.validation_loss(model, DataLoader(dataset, batch_size=1, collate_fn=adapter.collate),
                                  adapter.loss([]).parts, torch.device("cpu"))
    assert set(here) <= set(reported)
    for name, value in here.items():
        assert reported[name] == pytest.approx(value, rel=1e-5), name


@pytest.mark.usefixtures("trial_process")
def test_a_yolov5_trial_with_mosaic_resumed_for_its_second_epoch_trains_the_same_weights(root):
    """Mosaics are drawn per (epoch, index), and the validation loss pass leaves torch's generator
    as it found it: one epoch, then a restart for the second, ends with the weights of two epochs in
    one go. (A step schedule: warmup_cosine's length depends on number_of_epochs.)"""
    from automl_images.trainer import checkpoint

    train, val = write_detection_dataset(root)
    options = {"task": "image-object-detection", "model_name": "yolov5", "model_size": "small", "img_size": 64,
               "learning_rate": 0.01, "lr_scheduler": "step", "spec_fields": {"keep_checkpoints": True}}
    assert run.run_trial(write_spec(root, "whole", train, val, number_of_epochs=2, **options))["status"] == "completed"
    spec_url = write_spec(root, "resumed", train, val, number_of_epochs=1, **options)
    assert run.run_trial(spec_url)["status"] == "completed"
    trial = Storage(root.url("resumed"))
    spec = trial.read_json(FILES.spec)
    spec["hyperparameters"]["number_of_epochs"] = 2
    trial.write_json(FILES.spec, spec)
    trial.write_json(FILES.status, {**trial.read_json(FILES.status), "status": TrialStatus.RUNNING.value})
    assert run.run_trial(spec_url)["attempt"] == 2
    whole, resumed = checkpoint.load(Storage(root.url("whole"))), checkpoint.load(trial)
    assert whole["epoch"] == resumed["epoch"] == 2
    assert all(torch.equal(value, resumed["model"][key]) for key, value in whole["model"].items())
