"""`automl-images convert` (`trainer/convert/`): COCO JSON (polygons and run-length masks), Pascal VOC XML and
YOLO labels to our JSONL,
checked by reading the output back with our own parsers; bad input named by file, line or annotation,
and field; and the real sets of ../shared/datasets, where they are."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_dataset
from faster_coco_eval.core import mask as coco_mask
from PIL import Image

from automl_images.controller import cli
from automl_images.core import detection_labels
from automl_images.core.hyperparameters import Task
from automl_images.core.labels import class_list
from automl_images.trainer.convert import ConversionError
from automl_images.trainer.convert import coco as coco_module
from automl_images.trainer.convert import from_coco, from_voc, from_yolo, write_jsonl


def make_image(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 140, 200)).save(path)
    return path


def rectangle_mask(width, height, x0, y0, x1, y1):
    mask = np.zeros((height, width), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def rle(mask, compressed=True):
    """COCO's run-length encoding of a mask: compressed (a string, as COCO files hold it) or not."""
    if compressed:
        encoded = coco_mask.encode(np.asfortranarray(mask))
        return {"size": encoded["size"], "counts": encoded["counts"].decode()}
    flat = mask.flatten(order="F")                  # column by column, starting with a run of zeros
    changes = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + counts}


def parse_all(records, task):
    parse = class_list if task is Task.MULTI_LABEL else detection_labels.parser(task)
    return [parse(record["label"]) for record in records]


# -- COCO ------------------------------------------------------------------------------------------

@pytest.fixture
def coco_set(tmp_path):
    """Three images (string and integer ids, one without annotations, one without a stated size): a
    plain box, a polygon, a crowd mask in RLE, a box 10 px outside the image and one 0.5 px outside."""
    make_image(tmp_path / "images" / "a.png", 100, 50)
    make_image(tmp_path / "images" / "sub" / "b.jpg", 40, 80)
    make_image(tmp_path / "images" / "empty.png", 20, 20)
    coco = {
        "images": [{"id": "a", "file_name": "a.png", "width": 100, "height": 50},
                   {"id": 7, "file_name": "sub/b.jpg"},
                   {"id": "e", "file_name": "empty.png", "width": 20, "height": 20}],
        "categories": [{"id": 1, "name": "can"}, {"id": 2, "name": "carton"}],
        "annotations": [
            {"id": 10, "image_id": "a", "category_id": 1, "bbox": [10, 5, 20, 10], "iscrowd": 0,
             "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]]},
            {"id": 11, "image_id": "a", "category_id": 2, "bbox": [50, 0, 50, 25], "iscrowd": 1,
             "segmentation": rle(rectangle_mask(100, 50, 50, 0, 100, 25))},
            {"id": 12, "image_id": 7, "category_id": 2, "bbox": [20, 40, 30, 50], "iscrowd": 0,
             "segmentation": [[20, 40, 50, 40, 35, 90]]},
            {"id": 13, "image_id": 7, "category_id": 1, "bbox": [-0.5, 0, 10, 10], "iscrowd": 0,
             "segmentation": [[0, 0, 9.5, 0, 9.5, 10]]},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    return path, tmp_path / "images", coco


def test_coco_detection_normalises_boxes_and_parses(coco_set, tmp_path):
    path, images, _ = coco_set
    conversion = from_coco(str(path), str(images), str(tmp_path / "train.jsonl"))
    records = conversion.records
    assert [r["image_url"] for r in records] == ["images/a.png", "images/sub/b.jpg", "images/empty.png"]
    assert [r["image_details"] for r in records] == [{"format": "png", "width": 100, "height": 50},
                                                     {"format": "jpg", "width": 40, "height": 80},
                                                     {"format": "png", "width": 20, "height": 20}]
    a, b, empty = parse_all(records, Task.OBJECT_DETECTION)
    assert [(o.label, o.box, o.is_crowd, o.polygons) for o in a.objects] == [
        ("can", (0.1, 0.1, 0.3, 0.3), False, ()), ("carton", (0.5, 0.0, 1.0, 0.5), True, ())]
    assert b.objects[0].box == (0.5, 0.5, 1.0, 1.0)           # 10 px below the image: clipped
    assert b.objects[1].box == (0.0, 0.0, 0.2375, 0.125)      # 0.5 px left of it: clipped silently
    assert empty.objects == ()
    assert len(conversion.warnings) == 1
    assert "annotation 12" in conversion.warnings[0] and "10.0 px" in conversion.warnings[0]
    assert conversion.count_objects() == 4


def test_coco_segmentation_polygons_and_crowd_rle(coco_set, tmp_path):
    path, images, _ = coco_set
    records = from_coco(str(path), str(images), str(tmp_path / "train.jsonl"), "image-instance-segmentation").records
    a, b, _ = parse_all(records, Task.INSTANCE_SEGMENTATION)
    assert a.objects[0].polygons == ((0.1, 0.1, 0.3, 0.1, 0.3, 0.3, 0.1, 0.3),)
    crowd = a.objects[1]       # its mask, traced, stays a crowd
    assert crowd.is_crowd and crowd.polygons == ((0.5, 0.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.5),)
    assert b.objects[0].polygons == ((0.5, 0.5, 1.0, 0.5, 0.875, 1.0),)


@pytest.mark.parametrize("compressed", [True, False], ids=["compressed", "uncompressed"])
def test_coco_masks_of_objects_are_traced_into_polygons(coco_set, tmp_path, compressed):
    """An L shape with a hole and a second region: one polygon a region along the pixel edges (the
    hole filled), which COCO's own rasteriser turns back into exactly the mask's pixels."""
    path, images, coco = coco_set
    mask = rectangle_mask(100, 50, 10, 5, 30, 20) | rectangle_mask(100, 50, 10, 20, 15, 35)
    mask |= rectangle_mask(100, 50, 40, 30, 55, 38)
    mask[8:12, 15:20] = 0
    coco["annotations"][1].update(iscrowd=0, segmentation=rle(mask, compressed))
    del coco["annotations"][1]["bbox"]              # the box is the mask's bounds
    path.write_text(json.dumps(coco))
    records = from_coco(str(path), str(images), str(tmp_path / "train.jsonl"), Task.INSTANCE_SEGMENTATION).records
    traced = parse_all(records, Task.INSTANCE_SEGMENTATION)[0].objects[1]
    assert not traced.is_crowd and traced.box == (0.1, 0.1, 0.55, 0.76)
    pixels = [[round(v * (100 if i % 2 == 0 else 50), 6) for i, v in enumerate(p)] for p in traced.polygons]
    assert pixels == [[10, 5, 30, 5, 30, 20, 15, 20, 15, 35, 10, 35], [40, 30, 55, 30, 55, 38, 40, 38]]
    mask[8:12, 15:20] = 1
    assert (coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(pixels, 50, 100))) == mask).all()
    detection = from_coco(str(path), str(images), str(tmp_path / "train.jsonl")).records
    assert parse_all(detection, Task.OBJECT_DETECTION)[0].objects[1].box == (0.1, 0.1, 0.55, 0.76)


def test_coco_mask_problems(coco_set, tmp_path):
    path, images, coco = coco_set
    coco["annotations"][1]["segmentation"] = {"size": [40, 100], "counts": "abc"}
    coco["annotations"][0]["segmentation"] = {"size": [50, 100], "counts": "abc"}
    coco["annotations"][2]["segmentation"] = {"size": [80, 40], "counts": [3, 4000]}
    coco["annotations"][3]["segmentation"] = {"size": [80, 40], "counts": 7}
    path.write_text(json.dumps(coco))
    with pytest.raises(ConversionError) as caught:
        from_coco(str(path), str(images), str(tmp_path / "train.jsonl"), Task.INSTANCE_SEGMENTATION)
    assert str(caught.value).splitlines() == [
        f"{path}: annotation 10: field 'segmentation.counts': not a run-length encoding of the mask: RLE string "
        f"is malformed: early end.",
        f"{path}: annotation 11: field 'segmentation.size': must be the image's [height, width], [50, 100], "
        f"got [40, 100]",
        f"{path}: annotation 12: field 'segmentation.counts': not a run-length encoding of the mask: RLE counts "
        f"exceed the mask dimensions.",
        f"{path}: annotation 13: field 'segmentation.counts': must be a string (compressed) or a list of "
        f"non-negative integers (uncompressed), got int",
    ]


def test_coco_speckled_masks_are_not_traced(coco_set, tmp_path, monkeypatch):
    path, images, coco = coco_set
    speckles = np.zeros((50, 100), np.uint8)
    speckles[::2, ::2] = 1                               # 1,250 pixels, each with 4 edges
    coco["annotations"][1]["segmentation"] = rle(speckles)
    path.write_text(json.dumps(coco))
    monkeypatch.setattr(coco_module, "MAX_TRACED_EDGES", 4999)
    with pytest.raises(ConversionError, match=r"annotation 11: field 'segmentation': a mask whose outlines have "
                                              r"5000 pixel edges, more than the 4999 traced"):
        from_coco(str(path), str(images), str(tmp_path / "train.jsonl"), Task.INSTANCE_SEGMENTATION)


def test_coco_multi_label_is_the_set_of_classes(coco_set, tmp_path):
    path, images, _ = coco_set
    conversion = from_coco(str(path), str(images), str(tmp_path / "train.jsonl"), Task.MULTI_LABEL)
    assert parse_all(conversion.records, Task.MULTI_LABEL) == [("can", "carton"), ("can", "carton"), ()]


def test_coco_without_polygons_does_not_convert_to_segmentation(coco_set, tmp_path):
    path, images, coco = coco_set
    coco["annotations"][0]["segmentation"] = []
    path.write_text(json.dumps(coco))
    with pytest.raises(ConversionError, match=r"annotation 10: no polygon.*--task image-object-detection"):
        from_coco(str(path), str(images), str(tmp_path / "train.jsonl"), Task.INSTANCE_SEGMENTATION)


def test_coco_box_from_the_polygons_when_bbox_is_missing(coco_set, tmp_path):
    path, images, coco = coco_set
    del coco["annotations"][0]["bbox"]
    path.write_text(json.dumps(coco))
    records = from_coco(str(path), str(images), str(tmp_path / "train.jsonl")).records
    assert parse_all(records, Task.OBJECT_DETECTION)[0].objects[0].box == (0.1, 0.1, 0.3, 0.3)


def test_coco_problems_are_listed_with_annotation_and_field(coco_set, tmp_path):
    path, images, coco = coco_set
    coco["images"] += [{"id": "gone", "file_name": "missing.png", "width": 10, "height": 10},
                       {"id": "odd", "file_name": "a.png", "width": 100, "height": "50.5"}]
    coco["annotations"] += [
        {"id": 20, "image_id": "a", "category_id": 9, "bbox": [0, 0, 1, 1]},
        {"id": 21, "image_id": "nope", "category_id": 1, "bbox": [0, 0, 1, 1]},
        {"id": 22, "image_id": "a", "category_id": 1, "bbox": [0, 0, 1]},
        {"id": 23, "image_id": "gone", "category_id": 1, "bbox": [0, 0, 1, 1]},
        {"id": 24, "image_id": "a", "category_id": 1, "bbox": [0, 0, 1, 1], "iscrowd": 2},
    ]
    path.write_text(json.dumps(coco))
    with pytest.raises(ConversionError) as caught:
        from_coco(str(path), str(images), str(tmp_path / "train.jsonl"))
    lines = str(caught.value).splitlines()
    assert lines == [
        f"{path}: image gone (missing.png): image file not found: {images / 'missing.png'}",
        f"{path}: image odd (a.png): field 'height': must be a positive number of pixels, got '50.5'",
        f"{path}: annotation 20: field 'category_id': unknown category 9 (categories: 1 can, 2 carton)",
        f"{path}: annotation 21: field 'image_id': no image has id 'nope'",
        f"{path}: annotation 22: field 'bbox': must be [x, y, width, height] in pixels, got [0, 0, 1]",
        f"{path}: annotation 24: field 'iscrowd': must be true or false (or 1 or 0), got 2",
    ]


def test_coco_file_problems(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(ConversionError, match=r"broken.json: invalid JSON"):
        from_coco(str(broken), str(tmp_path), str(tmp_path / "out.jsonl"))
    broken.write_text('{"images": []}')
    with pytest.raises(ConversionError, match=r"broken.json: field 'categories': must be a list of objects, missing"):
        from_coco(str(broken), str(tmp_path), str(tmp_path / "out.jsonl"))
    with pytest.raises(ConversionError, match=r"absent.json: file not found"):
        from_coco(str(tmp_path / "absent.json"), str(tmp_path), str(tmp_path / "out.jsonl"))


def test_image_url_is_absolute_outside_the_output_folder(coco_set, tmp_path):
    path, images, _ = coco_set
    records = from_coco(str(path), str(images), str(tmp_path / "labels" / "train.jsonl")).records
    assert records[0]["image_url"] == str(images / "a.png")


# -- Pascal VOC ------------------------------------------------------------------------------------

def voc_xml(filename: str, size: tuple[int, int] | None, objects: list[tuple]) -> str:
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    objects_xml = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>" for name, (x0, y0, x1, y1), difficult in objects)
    return f"<annotation><filename>{filename}</filename>{size_xml}{objects_xml}</annotation>"


@pytest.fixture
def voc_set(tmp_path):
    """One image described fully, one whose XML has a size of 0 and a stale filename."""
    make_image(tmp_path / "images" / "one.jpg", 200, 100)
    make_image(tmp_path / "images" / "two.png", 50, 40)
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    (annotations / "one.xml").write_text(voc_xml("one.jpg", (200, 100), [
        ("raccoon", (1, 1, 100, 50), 0), ("raccoon", (101, 51, 200, 100), 1)]))
    (annotations / "two.xml").write_text(voc_xml("two_old_name.jpg", (0, 0), [("dog", (11, 1, 50, 40), 0)]))
    return annotations, tmp_path / "images"


def test_voc_boxes_difficult_and_size_fallback(voc_set, tmp_path):
    annotations, images = voc_set
    records = from_voc(str(annotations), str(images), str(tmp_path / "train.jsonl")).records
    assert [r["image_url"] for r in records] == ["images/one.jpg", "images/two.png"]
    assert records[1]["image_details"] == {"format": "png", "width": 50, "height": 40}   # from the image
    one, two = parse_all(records, Task.OBJECT_DETECTION)
    # 1-based inclusive pixels: (1, 1)-(100, 50) is the top-left half of a 200 x 100 image.
    assert [(o.box, o.is_crowd) for o in one.objects] == [((0.0, 0.0, 0.5, 0.5), False),
                                                          ((0.5, 0.5, 1.0, 1.0), True)]
    assert two.objects[0].box == (0.2, 0.0, 1.0, 1.0)
    multi = from_voc(str(annotations), str(images), str(tmp_path / "m.jsonl"), "image-multi-labeling").records
    assert parse_all(multi, Task.MULTI_LABEL) == [("raccoon",), ("dog",)]


def test_voc_problems(voc_set, tmp_path):
    annotations, images = voc_set
    (annotations / "three.xml").write_text(voc_xml("three.jpg", (10, 10), []))
    (annotations / "four.xml").write_text(voc_xml("one.jpg", (200, 100), [("cat", (5, 5, "x", 9), 0),
                                                                           ("cat", (9, 5, 5, 9), 0)]))
    (annotations / "five.xml").write_text("<annotation><filename>")
    with pytest.raises(ConversionError) as caught:
        from_voc(str(annotations), str(images), str(tmp_path / "train.jsonl"))
    message = str(caught.value)
    assert f"{annotations / 'five.xml'}: invalid XML" in message
    assert f"{annotations / 'four.xml'}: object 0: field 'bndbox/xmax': must be a number, got 'x'" in message
    assert f"{annotations / 'four.xml'}: object 1: field 'bndbox': inverted box: xmin 9 > xmax 5" in message
    assert f"{annotations / 'three.xml'}: field 'filename': image file not found: {images / 'three.jpg'}" in message
    with pytest.raises(ConversionError, match="boxes, not polygons"):
        from_voc(str(annotations), str(images), str(tmp_path / "train.jsonl"), Task.INSTANCE_SEGMENTATION)


# -- YOLO ------------------------------------------------------------------------------------------

@pytest.fixture
def yolo_set(tmp_path):
    """Nested folders; a box, a polygon, a box 2 px past the right edge; names as a YAML mapping."""
    make_image(tmp_path / "images" / "train" / "x.jpg", 100, 200)
    make_image(tmp_path / "images" / "train" / "y.PNG", 10, 10)
    labels = tmp_path / "labels"
    (labels / "train").mkdir(parents=True)
    (labels / "train" / "x.txt").write_text("3 0.5 0.5 0.2 0.1\n\n5 0.1 0.1 0.3 0.1 0.2 0.4\n")
    (labels / "train" / "y.txt").write_text("3 1.0 0.5 0.4 0.2\n")
    names = tmp_path / "data.yaml"
    names.write_text("path: .\nnames:\n  3: can\n  5: milk bottle\n")
    return labels, tmp_path / "images", names


def test_yolo_detection_from_boxes_and_polygons(yolo_set, tmp_path):
    labels, images, names = yolo_set
    conversion = from_yolo(str(labels), str(images), str(tmp_path / "train.jsonl"), str(names))
    records = conversion.records
    assert [r["image_url"] for r in records] == ["images/train/x.jpg", "images/train/y.PNG"]
    assert records[0]["image_details"] == {"format": "jpg", "width": 100, "height": 200}   # from the header
    x, y = parse_all(records, Task.OBJECT_DETECTION)
    assert [(o.label, o.box) for o in x.objects] == [("can", (0.4, 0.45, 0.6, 0.55)),
                                                     ("milk bottle", (0.1, 0.1, 0.3, 0.4))]
    assert y.objects[0].box == (0.8, 0.4, 1.0, 0.6)
    assert conversion.warnings == [f"{labels / 'train' / 'y.txt'}:1: the box lies outside the 10x10 image "
                                   f"by 2.0 px; clipped to it"]


def test_yolo_segmentation_needs_polygons(yolo_set, tmp_path):
    labels, images, names = yolo_set
    (labels / "train" / "y.txt").write_text("5 0.1 0.1 0.9 0.1 0.5 0.9\n")
    with pytest.raises(ConversionError, match=r"x.txt:1: no polygon"):
        from_yolo(str(labels), str(images), str(tmp_path / "train.jsonl"), str(names), Task.INSTANCE_SEGMENTATION)
    (labels / "train" / "x.txt").write_text("5 0.1 0.1 0.3 0.1 0.2 0.4\n")
    records = from_yolo(str(labels), str(images), str(tmp_path / "train.jsonl"), str(names),
                        Task.INSTANCE_SEGMENTATION).records
    x, y = parse_all(records, Task.INSTANCE_SEGMENTATION)
    assert x.objects[0].polygons == ((0.1, 0.1, 0.3, 0.1, 0.2, 0.4),)
    assert (x.objects[0].box, y.objects[0].box) == ((0.1, 0.1, 0.3, 0.4), (0.1, 0.1, 0.9, 0.9))


@pytest.mark.parametrize("names_text, suffix", [("names: [dog, cat, can]\n", ".yaml"), ("dog\ncat\ncan\n\n", ".txt")],
                         ids=["yaml-list", "text"])
def test_yolo_names_as_a_list_or_a_text_file(yolo_set, tmp_path, names_text, suffix):
    labels, images, _ = yolo_set
    (labels / "train" / "x.txt").write_text("2 0.5 0.5 0.2 0.1\n")
    (labels / "train" / "y.txt").write_text("0 0.5 0.5 0.2 0.1\n")
    names = labels / f"classes{suffix}"          # a names file among the labels is not a label file
    names.write_text(names_text)
    records = from_yolo(str(labels), str(images), str(tmp_path / "train.jsonl"), str(names),
                        "image-multi-labeling").records
    assert parse_all(records, Task.MULTI_LABEL) == [("can",), ("dog",)]


def test_yolo_problems(yolo_set, tmp_path):
    labels, images, names = yolo_set
    (labels / "train" / "x.txt").write_text("3 0.5 0.5 0.2 0.1\n4 0.5 0.5 0.2 0.1\n3 0.5 0.5 0.2\n3 a 0.5 0.2 0.1\n")
    (labels / "train" / "z.txt").write_text("3 0.5 0.5 0.2 0.1\n")
    with pytest.raises(ConversionError) as caught:
        from_yolo(str(labels), str(images), str(tmp_path / "train.jsonl"), str(names))
    x = labels / "train" / "x.txt"
    assert str(caught.value).splitlines() == [
        f"{x}:2: field 'class': unknown class id '4' (the names file has 3..5)",
        f"{x}:3: field 'coordinates': must be `cx cy w h` (a box) or x, y pairs of at least 3 points "
        f"(a polygon), got 3 number(s)",
        f"{x}:4: field 'coordinates': must be a number, got 'a'",
        f"{labels / 'train' / 'z.txt'}: image file not found: {images / 'train' / 'z'}"
        "{.jpg,.jpeg,.png,.bmp,.gif,.tif,.tiff,.webp}",
    ]
    names.write_text("names: 3\n")
    with pytest.raises(ConversionError, match=r"data.yaml: field 'names': must be a list of class names"):
        from_yolo(str(labels), str(images), str(tmp_path / "train.jsonl"), str(names))


# -- writing and the command -----------------------------------------------------------------------

def test_write_jsonl_keeps_an_existing_file_unless_told(tmp_path):
    output = tmp_path / "out" / "train.jsonl"
    write_jsonl([{"image_url": "a.png", "label": []}], str(output))
    with pytest.raises(ConversionError, match="already exists .pass --overwrite"):
        write_jsonl([], str(output))
    assert output.read_text() == '{"image_url": "a.png", "label": []}\n'
    write_jsonl([{"image_url": "b.png", "label": []}], str(output), overwrite=True)
    assert output.read_text() == '{"image_url": "b.png", "label": []}\n'


def test_cli_converts_and_the_trainer_reads_the_file(coco_set, tmp_path, capsys):
    from automl_images.trainer.data import read_jsonl  # imports torch: only here

    path, images, _ = coco_set
    output = tmp_path / "train.jsonl"
    args = ["convert", "coco", str(path), "--images", str(images), "--output", str(output),
            "--task", "image-instance-segmentation"]
    assert cli.main(args) == 0
    out, err = capsys.readouterr()
    assert f"{output}: 3 images, 4 objects (image-instance-segmentation); 2 warning(s)" in out
    assert "annotation 12: polygon 0 lies outside the 40x80 image by 10.0 px" in err
    records = read_jsonl(str(output), detection_labels.parser(Task.INSTANCE_SEGMENTATION))
    assert [Path(r.image_url) for r in records] == [images / "a.png", images / "sub" / "b.jpg", images / "empty.png"]
    assert records[1].details.width == 40 and len(records[0].label.objects) == 2

    assert cli.main(args) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert cli.main(args + ["--overwrite"]) == 0


def test_cli_bad_input_exits_2(tmp_path, capsys):
    labels = tmp_path / "labels"
    labels.mkdir()
    output = ["--output", str(tmp_path / "o.jsonl")]
    assert cli.main(["convert", "yolo", str(labels), "--images", str(tmp_path), *output]) == 2
    assert "YOLO labels need --names" in capsys.readouterr().err
    assert cli.main(["convert", "voc", str(labels), "--images", str(tmp_path / "none"), *output]) == 2
    assert f"--images {tmp_path / 'none'}: not a folder" in capsys.readouterr().err
    assert cli.main(["convert", "voc", str(labels), "--images", str(tmp_path), *output]) == 2
    assert f"{labels}: no .xml file in it" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


# -- the real sets of ../shared/datasets -----------------------------------------------------------

def test_fridge_detection_coco(tmp_path):
    root = shared_dataset("fridge-detection")
    annotations, images = root / "annotations" / "odFridgeObjects_coco.json", root / "images"
    conversion = from_coco(str(annotations), str(images), str(tmp_path / "train.jsonl"))
    labels = parse_all(conversion.records, Task.OBJECT_DETECTION)
    assert (len(labels), sum(len(label.objects) for label in labels)) == (128, 336)
    assert conversion.warnings == []
    coco = json.loads(annotations.read_text())
    first = next(a for a in coco["annotations"] if a["image_id"] == "1")      # carton [100, 173, 133, 348]
    record = next(r for r in conversion.records if r["image_url"].endswith("/1.jpg"))
    x, y, w, h = first["bbox"]
    assert labels[conversion.records.index(record)].objects[0].box == pytest.approx(
        (x / 499, y / 666, (x + w) / 499, (y + h) / 666), abs=1e-6)
    multi = from_coco(str(annotations), str(images), str(tmp_path / "multi.jsonl"), Task.MULTI_LABEL)
    classes = parse_all(multi.records, Task.MULTI_LABEL)
    assert len(classes) == 128 and sum(map(len, classes)) == 336    # each object of an image has its own class


def test_raccoon_voc(tmp_path):
    root = shared_dataset("raccoon-voc")
    conversion = from_voc(str(root / "annotations"), str(root / "images"), str(tmp_path / "train.jsonl"))
    labels = parse_all(conversion.records, Task.OBJECT_DETECTION)
    assert (len(labels), sum(len(label.objects) for label in labels)) == (200, 217)
    assert {o.label for label in labels for o in label.objects} == {"raccoon"}


def test_coco128_yolo_segmentation(tmp_path):
    root = shared_dataset("coco128-segmentation")
    conversion = from_yolo(str(root / "instance_segmentation" / "labels"), str(root / "images"),
                           str(tmp_path / "train.jsonl"), str(root / "instance_segmentation" / "config.yaml"),
                           Task.INSTANCE_SEGMENTATION)
    labels = parse_all(conversion.records, Task.INSTANCE_SEGMENTATION)
    assert (len(labels), sum(len(label.objects) for label in labels)) == (200, 746 + 712)
    assert all(o.polygons for label in labels for o in label.objects)
    assert "person" in {o.label for label in labels for o in label.objects}
