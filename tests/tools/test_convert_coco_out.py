"""Our JSONL out into COCO JSON (`trainer/convert/to_coco.py`), round trips both ways (boxes kept to
1e-6 of the image size, polygons point for point) on synthetic data and on the real sets of
../shared/datasets, and `--split` (`trainer/convert/output.py`) through the command."""
from __future__ import annotations

import json

import pytest
from conftest import shared_dataset
from test_convert import make_image

from automl_images.controller import cli
from automl_images.core.hyperparameters import Task
from automl_images.trainer.convert import ConversionError, from_coco, from_yolo, to_coco, write_jsonl


def by_file(coco):
    """Each image's (width, height) and its annotations as (class, bbox, iscrowd, polygons), by file name."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    out = {i["file_name"]: ((i["width"], i["height"]), []) for i in coco["images"]}
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    for a in coco["annotations"]:
        out[files[a["image_id"]]][1].append((names[a["category_id"]], a["bbox"], a.get("iscrowd", 0),
                                             a["segmentation"] if isinstance(a["segmentation"], list) else []))
    return out


def assert_same_coco(got, want, polygons=True):
    """The same images and objects; coordinates within 1e-6 of the image's size, polygons point for point."""
    got, want = by_file(got), by_file(want)
    assert got.keys() == want.keys()
    for name, (size, objects) in want.items():
        assert got[name][0] == size
        assert len(got[name][1]) == len(objects)
        for (label, box, crowd, polys), (label_, box_, crowd_, polys_) in zip(got[name][1], objects):
            assert (label, crowd) == (label_, crowd_)
            scale = [size[0], size[1]] * 2
            assert [v / s for v, s in zip(box, scale)] == pytest.approx([v / s for v, s in zip(box_, scale)], abs=1e-6)
            if polygons:
                assert [len(p) for p in polys] == [len(p) for p in polys_]
                for p, p_ in zip(polys, polys_):
                    assert [v / size[i % 2] for i, v in enumerate(p)] == pytest.approx(
                        [v / size[i % 2] for i, v in enumerate(p_)], abs=1e-6)


@pytest.fixture
def coco_file(tmp_path):
    """Two images: boxes with fractional pixels, two polygons of one object, a crowd; one image empty."""
    make_image(tmp_path / "images" / "a.png", 640, 480)
    make_image(tmp_path / "images" / "b" / "c.jpg", 33, 17)
    coco = {"images": [{"id": 5, "file_name": "a.png", "width": 640, "height": 480},
                       {"id": 9, "file_name": "b/c.jpg", "width": 33, "height": 17}],
            "categories": [{"id": 3, "name": "can"}, {"id": 1, "name": "milk bottle"}],
            "annotations": [
                {"id": 1, "image_id": 5, "category_id": 3, "bbox": [10.25, 20.5, 100.125, 50.75], "iscrowd": 0,
                 "segmentation": [[10.25, 20.5, 110.375, 20.5, 60.3, 71.25], [200, 200, 210, 200, 205, 230.7]]},
                {"id": 2, "image_id": 5, "category_id": 1, "bbox": [300, 100, 40, 40], "iscrowd": 1,
                 "segmentation": [[300, 100, 340, 100, 340, 140, 300, 140]]},
            ]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    return path, tmp_path / "images", coco


@pytest.mark.parametrize("task", [Task.INSTANCE_SEGMENTATION, Task.OBJECT_DETECTION])
def test_coco_to_jsonl_to_coco(coco_file, tmp_path, task):
    path, images, coco = coco_file
    jsonl = tmp_path / "train.jsonl"
    write_jsonl(from_coco(str(path), str(images), str(jsonl), task).records, str(jsonl))
    back = to_coco(str(jsonl), task, str(images))
    if task is Task.OBJECT_DETECTION:
        for a in coco["annotations"]:
            a["segmentation"] = []
    assert_same_coco(back, coco)
    assert back["categories"] == [{"id": 1, "name": "can", "supercategory": ""},
                                  {"id": 2, "name": "milk bottle", "supercategory": ""}]
    assert [i["id"] for i in back["images"]] == [1, 2] and [a["id"] for a in back["annotations"]] == [1, 2]
    # COCO's area: the polygons' pixels, as its rasteriser counts them; a box's area without them.
    first, square = back["annotations"]
    box_area = first["bbox"][2] * first["bbox"][3]
    assert square["area"] == pytest.approx(1600.0, abs=0.05)       # 40 x 40 px
    assert first["area"] == pytest.approx(box_area) if task is Task.OBJECT_DETECTION else first["area"] < box_area


def test_jsonl_to_coco_to_jsonl_gives_the_same_lines(coco_file, tmp_path):
    path, images, _ = coco_file
    jsonl, again = tmp_path / "train.jsonl", tmp_path / "again.jsonl"
    write_jsonl(from_coco(str(path), str(images), str(jsonl), Task.INSTANCE_SEGMENTATION).records, str(jsonl))
    (tmp_path / "out.json").write_text(json.dumps(to_coco(str(jsonl), Task.INSTANCE_SEGMENTATION, str(images))))
    write_jsonl(from_coco(str(tmp_path / "out.json"), str(images), str(again), Task.INSTANCE_SEGMENTATION).records,
                str(again))
    assert again.read_text() == jsonl.read_text()


def test_to_coco_file_names_and_problems(coco_file, tmp_path):
    path, images, _ = coco_file
    jsonl = tmp_path / "train.jsonl"
    write_jsonl(from_coco(str(path), str(images), str(jsonl)).records, str(jsonl))
    assert [i["file_name"] for i in to_coco(str(jsonl))["images"]] == ["images/a.png", "images/b/c.jpg"]
    lines = jsonl.read_text().splitlines()
    lines.append(json.dumps({"image_url": "s3://bucket/d.png", "image_details": {"width": "20px", "height": 10},
                             "label": []}))
    jsonl.write_text("\n".join(lines) + "\n")
    assert to_coco(str(jsonl))["images"][2] == {"id": 3, "file_name": "s3://bucket/d.png", "width": 20, "height": 10}
    lines[2] = json.dumps({"image_url": "s3://bucket/d.png", "label": []})
    lines.append(json.dumps({"image_url": "images/a.png", "label": [{"label": "can", "topX": 0.5, "topY": 0,
                                                                     "bottomX": 0.2, "bottomY": 1}]}))
    lines.append(json.dumps({"image_url": "gone.png", "label": []}))
    jsonl.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConversionError) as caught:
        to_coco(str(jsonl))
    assert str(caught.value).splitlines() == [
        f"{jsonl}:4: field 'label': object 0: inverted box (topX > bottomX): (topX, topY) is the top-left corner",
        f"{jsonl}:3: field 'image_details': the width and height of an image that is not a local file must be "
        f"given, in pixels",
        f"{jsonl}:5: image file not found: {tmp_path / 'gone.png'}"]
    with pytest.raises(ConversionError, match="converts to image-object-detection, image-instance-segmentation, "
                                              "not image-classification"):
        to_coco(str(jsonl), Task.CLASSIFICATION)


# -- the real sets ---------------------------------------------------------------------------------

def test_fridge_coco_round_trips(tmp_path):
    root = shared_dataset("fridge-detection")
    annotations, images = root / "annotations" / "odFridgeObjects_coco.json", root / "images"
    coco = json.loads(annotations.read_text())
    jsonl = tmp_path / "train.jsonl"
    write_jsonl(from_coco(str(annotations), str(images), str(jsonl)).records, str(jsonl))
    back = to_coco(str(jsonl), Task.OBJECT_DETECTION, str(images))
    assert_same_coco(back, coco, polygons=False)
    assert len(back["annotations"]) == 336
    (tmp_path / "back.json").write_text(json.dumps(back))
    again = from_coco(str(tmp_path / "back.json"), str(images), str(jsonl)).records
    assert [json.dumps(r) for r in again] == jsonl.read_text().splitlines()


def test_coco128_polygons_round_trip(tmp_path):
    root = shared_dataset("coco128-segmentation")
    labels = root / "instance_segmentation"
    jsonl = tmp_path / "train.jsonl"
    records = from_yolo(str(labels / "labels"), str(root / "images"), str(jsonl), str(labels / "config.yaml"),
                        Task.INSTANCE_SEGMENTATION).records
    write_jsonl(records, str(jsonl))
    coco = to_coco(str(jsonl), Task.INSTANCE_SEGMENTATION, str(root / "images"))
    assert (len(coco["images"]), len(coco["annotations"])) == (200, 746 + 712)
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    again = from_coco(str(tmp_path / "instances.json"), str(root / "images"), str(jsonl),
                      Task.INSTANCE_SEGMENTATION).records
    assert again == records                          # every polygon point for point, every box to the digit
    assert_same_coco(to_coco(str(jsonl), Task.INSTANCE_SEGMENTATION, str(root / "images")), coco)


# -- the command: out to COCO, --split, --overwrite ------------------------------------------------

def test_cli_jsonl_to_coco_and_back(coco_file, tmp_path, capsys):
    path, images, _ = coco_file
    jsonl, out = tmp_path / "train.jsonl", tmp_path / "out.json"
    seg = ["--task", "image-instance-segmentation"]
    assert cli.main(["convert", "coco", str(path), "--images", str(images), "--output", str(jsonl), *seg]) == 0
    args = ["convert", "jsonl", str(jsonl), "--images", str(images), "--output", str(out), *seg]
    assert cli.main(args) == 0
    assert f"{out}: 2 images, 2 annotations, 2 categories (COCO JSON)" in capsys.readouterr().out
    assert_same_coco(json.loads(out.read_text()), json.loads(path.read_text()))
    assert cli.main(args) == 2
    assert "out.json: already exists (pass --overwrite" in capsys.readouterr().err
    assert cli.main(args + ["--split", "0.5"]) == 2
    assert "--split writes JSONL files" in capsys.readouterr().err


@pytest.fixture
def three_classes(tmp_path):
    """10 images of each of 3 classes, a folder per class."""
    for label in ("a", "b", "c"):
        for i in range(10):
            make_image(tmp_path / "photos" / label / f"{i}.png", 4, 4)
    return tmp_path / "photos"


def test_cli_split_is_stratified_seeded_and_never_overwrites(three_classes, tmp_path, capsys):
    train, validation = tmp_path / "train.jsonl", tmp_path / "train_validation.jsonl"
    args = ["convert", "folders", str(three_classes), "--output", str(train), "--split", "0.2", "--seed", "7"]
    assert cli.main(args) == 0
    assert (f"30 images, 30 labelled (image-classification); {train}: 24 for training, {validation}: 6 for "
            f"validation (split 0.2, seed 7)") in capsys.readouterr().out
    chosen = [json.loads(line) for line in validation.read_text().splitlines()]
    rest = [json.loads(line) for line in train.read_text().splitlines()]
    assert sorted(r["label"] for r in chosen) == ["a", "a", "b", "b", "c", "c"]
    assert sorted(r["image_url"] for r in chosen + rest) == sorted(f"photos/{c}/{i}.png" for c in "abc"
                                                                  for i in range(10))
    before = validation.read_text()
    assert cli.main(args) == 2                                    # both exist
    assert cli.main(args + ["--overwrite"]) == 0 and validation.read_text() == before    # seeded
    assert cli.main(args[:-1] + ["8", "--overwrite"]) == 0 and validation.read_text() != before
    train.unlink()
    assert cli.main(args) == 2                                    # one exists: neither is written
    assert f"{validation}: already exists" in capsys.readouterr().err and not train.exists()
    other = tmp_path / "val.jsonl"
    assert cli.main(args + ["--validation-output", str(other)]) == 0 and len(other.read_text().splitlines()) == 6


def test_cli_option_problems(three_classes, tmp_path, capsys):
    output = ["--output", str(tmp_path / "o.jsonl")]
    assert cli.main(["convert", "folders", str(three_classes), *output, "--split", "1.5"]) == 2
    assert "--split 1.5: the share of the images for validation must be between 0 and 1" in capsys.readouterr().err
    assert cli.main(["convert", "folders", str(three_classes), *output, "--images", str(tmp_path)]) == 2
    assert "folders: the SOURCE folder holds the images" in capsys.readouterr().err
    assert cli.main(["convert", "csv", "labels.csv", *output]) == 2
    assert "csv: --images is needed" in capsys.readouterr().err
    assert cli.main(["convert", "coco", "x.json", "--images", str(tmp_path), *output, "--label-delimiter", ";"]) == 2
    assert "--label-delimiter is for csv only" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
