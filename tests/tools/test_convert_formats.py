"""`automl-images convert` from a folder per class, a CSV, Label Studio's JSON export and CVAT's
"for images 1.1" XML (`trainer/convert/`): synthetic sets with every shape each format has, bad
input named by file, line and field, and the real fridge photos of ../shared/datasets laid out or
exported in each format (the same labels as the COCO file they come from)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import shared_dataset
from test_convert import make_image

from automl_images.core.hyperparameters import Task
from automl_images.core.labels import parser
from automl_images.trainer.convert import (
    ConversionError,
    from_coco,
    from_csv,
    from_cvat,
    from_folders,
    from_label_studio,
    split_records,
)


def parse_all(records, task):
    return [parser(task)(record["label"]) for record in records]


# -- a folder per class ----------------------------------------------------------------------------


@pytest.fixture
def class_folders(tmp_path):
    root = tmp_path / "photos"
    make_image(root / "can" / "a.png", 30, 20)
    make_image(root / "can" / "2019" / "b.jpg", 10, 10)
    make_image(root / "carton" / "c.png", 12, 8)
    (root / "carton" / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_text("hidden")
    (root / "empty").mkdir()
    return root


def test_folders_one_class_a_folder(class_folders, tmp_path):
    conversion = from_folders(str(class_folders), str(tmp_path / "train.jsonl"))
    assert [(r["image_url"], r["label"]) for r in conversion.records] == [
        ("photos/can/a.png", "can"), ("photos/can/2019/b.jpg", "can"), ("photos/carton/c.png", "carton")]
    assert conversion.records[2]["image_details"] == {"format": "png", "width": 12, "height": 8}
    assert parse_all(conversion.records, Task.CLASSIFICATION) == ["can", "can", "carton"]
    assert conversion.warnings == [f"{class_folders / 'carton' / 'notes.txt'}: not an image (.jpg, .jpeg, .png, "
                                   f".bmp, .gif, .tif, .tiff, .webp); left out",
                                   f"{class_folders / 'empty'}: no image in it; class 'empty' left out"]


def test_folders_problems(class_folders, tmp_path):
    make_image(class_folders / "stray.png", 5, 5)
    (class_folders / "can" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ConversionError) as caught:
        from_folders(str(class_folders), str(tmp_path / "train.jsonl"))
    lines = str(caught.value).splitlines()
    assert lines[0] == (f"{class_folders / 'stray.png'}: an image beside the class folders has no class: move it "
                        f"into its class's folder")
    assert lines[1].startswith(f"{class_folders / 'can' / 'broken.png'}: image {class_folders / 'can' / 'broken.png'} "
                               f"could not be read for its size (UnidentifiedImageError")
    with pytest.raises(ConversionError, match="no class folder in it"):
        from_folders(str(class_folders / "carton"), str(tmp_path / "train.jsonl"))
    with pytest.raises(ConversionError, match="converts to image-classification, not image-multi-labeling"):
        from_folders(str(class_folders), str(tmp_path / "train.jsonl"), Task.MULTI_LABEL)


def test_fridge_photos_in_a_folder_per_class(tmp_path):
    source = shared_dataset("fridge-multiclass") / "images"
    root = tmp_path / "classes"
    for photo in sorted(source.iterdir()):
        folder = root / photo.name.rsplit("_", 1)[0]          # can_1.jpg: class can
        folder.mkdir(parents=True, exist_ok=True)
        (folder / photo.name).symlink_to(photo)
    conversion = from_folders(str(root), str(tmp_path / "out" / "train.jsonl"))
    labels = parse_all(conversion.records, Task.CLASSIFICATION)
    assert {name: labels.count(name) for name in set(labels)} == {"can": 32, "carton": 32, "milk_bottle": 37,
                                                                 "water_bottle": 33}
    assert all(r["image_details"]["width"] == 113 for r in conversion.records) and conversion.warnings == []
    train, validation = split_records(conversion.records, Task.CLASSIFICATION, 0.25, 5, "train.jsonl")
    assert sorted(r["label"] for r in validation) == ["can"] * 8 + ["carton"] * 8 + ["milk_bottle"] * 9 + \
        ["water_bottle"] * 8                              # a quarter of each class, rounded
    assert len(train) == 134 - 33 and not {r["image_url"] for r in train} & {r["image_url"] for r in validation}


# -- CSV -------------------------------------------------------------------------------------------

@pytest.fixture
def csv_set(tmp_path):
    for name in ("1.jpg", "2.jpg", "3.png"):
        make_image(tmp_path / "images" / name, 8, 6)
    path = tmp_path / "labels.csv"
    path.write_text("filename,labels,notes\n1.jpg,can milk_bottle,x\n2.jpg,carton,\n3.png,,\n"
                    "1.jpg,  can   water_bottle ,\n")
    return path, tmp_path / "images"


def test_csv_multi_label(csv_set, tmp_path):
    path, images = csv_set
    conversion = from_csv(str(path), str(images), str(tmp_path / "train.jsonl"))
    assert [r["image_url"] for r in conversion.records] == ["images/1.jpg", "images/2.jpg", "images/3.png"]
    assert parse_all(conversion.records, Task.MULTI_LABEL) == [("can", "milk_bottle", "water_bottle"), ("carton",), ()]
    assert conversion.records[2]["image_details"] == {"format": "png", "width": 8, "height": 6}


def test_csv_delimiter_quotes_and_multi_class(csv_set, tmp_path):
    path, images = csv_set
    path.write_text('Image,Label\n"1.jpg","milk bottle"\n2.jpg,"carton"\r\n\n3.png,can\n')
    conversion = from_csv(str(path), str(images), str(tmp_path / "train.jsonl"), Task.CLASSIFICATION, ";")
    assert parse_all(conversion.records, Task.CLASSIFICATION) == ["milk bottle", "carton", "can"]
    path.write_text("image,labels\n1.jpg,can|carton\n2.jpg,\n3.png,can\n3.png,carton\n")
    with pytest.raises(ConversionError) as caught:
        from_csv(str(path), str(images), str(tmp_path / "train.jsonl"), Task.CLASSIFICATION, "|")
    assert str(caught.value).splitlines() == [
        f"{path}:2: image-classification needs one class for each image, got 2: can, carton",
        f"{path}:3: image-classification needs one class for each image, got 0: none",
        f"{path}:4: image-classification needs one class for each image, got 2: can, carton"]


def test_csv_problems(csv_set, tmp_path):
    path, images = csv_set
    path.write_text('image,labels\n1.jpg\n,can\ngone.jpg,can\n"2.jpg","multi\nline",x\n3.png,can\n')
    with pytest.raises(ConversionError) as caught:
        from_csv(str(path), str(images), str(tmp_path / "train.jsonl"))
    assert str(caught.value).splitlines() == [
        f"{path}:2: 1 field(s); the header has 2",
        f"{path}:3: field 'image': missing: the image's path below --images",
        f"{path}:4: image file not found: {images / 'gone.jpg'}"]
    path.write_text("path,classes\n1.jpg,can\n")
    with pytest.raises(ConversionError, match=r"labels.csv:1: the header names no `image` column \(nor `filename`\)"):
        from_csv(str(path), str(images), str(tmp_path / "train.jsonl"))
    with pytest.raises(ConversionError, match="--label-delimiter ',': must be one character other than a comma"):
        from_csv(str(path), str(images), str(tmp_path / "train.jsonl"), label_delimiter=",")


def test_fridge_multi_label_csv_gives_the_coco_file_s_classes(tmp_path):
    root = shared_dataset("fridge-detection")
    annotations = root / "annotations" / "odFridgeObjects_coco.json"
    coco = json.loads(annotations.read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    classes = {i["id"]: set() for i in coco["images"]}
    for a in coco["annotations"]:
        classes[a["image_id"]].add(names[a["category_id"]])
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("filename,labels\n" + "".join(f"{i['file_name']},{' '.join(sorted(classes[i['id']]))}\n"
                                                       for i in coco["images"]))
    from_labels = from_csv(str(csv_path), str(root / "images"), str(tmp_path / "a.jsonl")).records
    from_boxes = from_coco(str(annotations), str(root / "images"), str(tmp_path / "a.jsonl"), Task.MULTI_LABEL).records
    assert from_labels == from_boxes and len(from_labels) == 128


# -- Label Studio ----------------------------------------------------------------------------------

def rectangle(label, x, y, w, h, rotation=0, size=(200, 100)):
    return {"type": "rectanglelabels", "original_width": size[0], "original_height": size[1],
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation, "rectanglelabels": [label]}}


@pytest.fixture
def label_studio_set(tmp_path):
    make_image(tmp_path / "images" / "one.jpg", 200, 100)
    make_image(tmp_path / "images" / "photos" / "two.png", 50, 40)
    tasks = [
        {"id": 1, "data": {"image": "/data/upload/3/8f2c1e3a-one.jpg"}, "annotations": [{"id": 11, "result": [
            rectangle("can", 10, 20, 30, 40),
            rectangle("carton", 50, 0, 25, 50, rotation=90),
            {"type": "polygonlabels", "value": {"points": [[0, 0], [50, 0], [25, 100]], "polygonlabels": ["milk"]}},
            {"type": "choices", "value": {"choices": ["kitchen"]}},
            {"type": "keypointlabels", "value": {"x": 1, "y": 2, "keypointlabels": ["can"]}}]}]},
        {"id": 2, "data": {"img": "/data/local-files/?d=photos/two.png"}, "annotations": [
            {"id": 21, "was_cancelled": True, "result": []},
            {"id": 22, "result": [{"type": "choices", "value": {"choices": ["garage", "dark"]}}]}]},
        {"id": 3, "data": {"image": "s3://bucket/one.jpg"}, "annotations": []},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    return path, tmp_path / "images", tasks


def test_label_studio_regions_and_choices(label_studio_set, tmp_path):
    path, images, _ = label_studio_set
    conversion = from_label_studio(str(path), str(images), str(tmp_path / "train.jsonl"))
    assert [r["image_url"] for r in conversion.records] == ["images/one.jpg", "images/photos/two.png"]
    one, two = parse_all(conversion.records, Task.OBJECT_DETECTION)
    # Percent of the image; the 50 x 50 px rectangle turned 90 degrees clockwise about its top-left
    # corner (100, 0) lies left of it.
    assert [(o.label, o.box) for o in one.objects] == [("can", (0.1, 0.2, 0.4, 0.6)), ("carton", (0.25, 0.0, 0.5, 0.5)),
                                                       ("milk", (0.0, 0.0, 0.5, 1.0))]
    assert two.objects == ()
    assert conversion.warnings == [
        f"{path}: task 1: annotation 11: result 1: a rectangle rotated by 90 degrees; its axis-aligned bounds are "
        f"the box",
        f"{path}: task 3: not labelled (no annotation, or all cancelled); left out",
        f"{path}: 1 result(s) of type 'keypointlabels' left out (rectanglelabels, polygonlabels and choices are "
        f"converted)"]
    segmentation = from_label_studio(str(path), str(images), str(tmp_path / "s.jsonl"), Task.MULTI_LABEL).records
    assert parse_all(segmentation, Task.MULTI_LABEL) == [("can", "carton", "kitchen", "milk"), ("dark", "garage")]


def test_label_studio_polygons_for_segmentation(label_studio_set, tmp_path):
    path, images, tasks = label_studio_set
    tasks[0]["annotations"][0]["result"] = tasks[0]["annotations"][0]["result"][2:]
    path.write_text(json.dumps(tasks))
    records = from_label_studio(str(path), str(images), str(tmp_path / "train.jsonl"),
                                Task.INSTANCE_SEGMENTATION).records
    assert parse_all(records, Task.INSTANCE_SEGMENTATION)[0].objects[0].polygons == ((0.0, 0.0, 0.5, 0.0, 0.25, 1.0),)


def test_label_studio_problems(label_studio_set, tmp_path):
    path, images, tasks = label_studio_set
    result = tasks[0]["annotations"][0]["result"]
    result[0]["value"]["x"] = "left"
    result[1]["value"]["rectanglelabels"] = []
    result[2]["value"]["points"] = [[0, 0], [1, 1]]
    tasks[1]["data"] = {"image": "/data/upload/1/gone.jpg"}
    tasks.append({"id": 4, "data": {"image": "one.jpg"}, "predictions": []})
    path.write_text(json.dumps(tasks))
    with pytest.raises(ConversionError) as caught:
        from_label_studio(str(path), str(images), str(tmp_path / "train.jsonl"))
    where = f"{path}: task 1: annotation 11"
    assert str(caught.value).splitlines() == [
        f"{where}: result 0: field 'value': must be a number, got 'left'",
        f"{where}: result 1: field 'value.rectanglelabels': must be a non-empty list of class names, got []",
        f"{where}: result 2: field 'value.points': must be [[x, y], ...] of at least 3 points, got [[0, 0], [1, 1]]",
        f"{path}: task 2: annotation 22: field 'data.image': no file for '/data/upload/1/gone.jpg' below {images} "
        f"(looked for data/upload/1/gone.jpg, gone.jpg)",
        f"{path}: task 4: field 'annotations': must be a list (export as JSON, not JSON-MIN), got NoneType"]
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(ConversionError, match="must be Label Studio's JSON export, a list of tasks, got dict"):
        from_label_studio(str(path), str(images), str(tmp_path / "train.jsonl"))


# -- CVAT ------------------------------------------------------------------------------------------

CVAT = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><name>fridge</name></task></meta>
  <image id="0" name="task/one.jpg" width="200" height="100">
    <box label="can" occluded="0" source="manual" xtl="20.00" ytl="20.00" xbr="80.00" ybr="60.00" z_order="0">
      <attribute name="colour">red</attribute>
    </box>
    <box label="carton" source="manual" xtl="100" ytl="40" xbr="140" ybr="60" rotation="90.0"/>
    <polygon label="milk" source="manual" points="0.00,0.00;100.00,0.00;50.00,100.00" z_order="0"/>
    <tag label="kitchen" source="manual"/>
    <polyline label="edge" points="1,1;2,2"/>
  </image>
  <image id="1" name="photos/two.png" width="50" height="40">
  </image>
</annotations>
"""


@pytest.fixture
def cvat_set(tmp_path):
    make_image(tmp_path / "images" / "one.jpg", 200, 100)
    make_image(tmp_path / "images" / "photos" / "two.png", 50, 40)
    path = tmp_path / "annotations.xml"
    path.write_text(CVAT)
    return path, tmp_path / "images"


def test_cvat_boxes_polygons_and_tags(cvat_set, tmp_path):
    path, images = cvat_set
    conversion = from_cvat(str(path), str(images), str(tmp_path / "train.jsonl"))
    one, two = parse_all(conversion.records, Task.OBJECT_DETECTION)
    # The rotated box turns about its centre (120, 50): 20 px wide and 40 px high.
    assert [(o.label, o.box) for o in one.objects] == [
        ("can", (0.1, 0.2, 0.4, 0.6)), ("carton", (0.55, 0.3, 0.65, 0.7)), ("milk", (0.0, 0.0, 0.5, 1.0))]
    assert two.objects == ()
    assert conversion.warnings == [
        f"{path}:9: a box rotated by 90 degrees; its axis-aligned bounds are the box",
        f"{path}: 1 <polyline> element(s) left out (box, polygon and tag are converted)"]
    segmentation = from_cvat(str(path), str(images), str(tmp_path / "s.jsonl"), Task.MULTI_LABEL).records
    assert parse_all(segmentation, Task.MULTI_LABEL) == [("can", "carton", "kitchen", "milk"), ()]
    with pytest.raises(ConversionError, match=rf"{path}:6: no polygon"):    # a box has none
        from_cvat(str(path), str(images), str(tmp_path / "s.jsonl"), Task.INSTANCE_SEGMENTATION)
    path.write_text("\n".join(line for line in CVAT.splitlines() if "<box" not in line and "</box" not in line
                              and "<attribute" not in line))
    records = from_cvat(str(path), str(images), str(tmp_path / "s.jsonl"), Task.INSTANCE_SEGMENTATION).records
    assert parse_all(records, Task.INSTANCE_SEGMENTATION)[0].objects[0].polygons == ((0.0, 0.0, 0.5, 0.0, 0.25, 1.0),)


def test_cvat_problems(cvat_set, tmp_path):
    path, images = cvat_set
    path.write_text(CVAT.replace('xbr="80.00"', 'xbr="8"').replace(";50.00,100.00", "").replace(
        'label="kitchen"', 'label=""').replace("photos/two.png", "gone.png"))
    with pytest.raises(ConversionError) as caught:
        from_cvat(str(path), str(images), str(tmp_path / "train.jsonl"))
    assert str(caught.value).splitlines() == [
        f"{path}:6: field 'xtl/ytl/xbr/ybr': inverted box: (20, 20) is not above and left of (8, 60)",
        f"{path}:10: field 'points': must be x,y pairs separated by ';', at least 3, got '0.00,0.00;100.00,0.00'",
        f"{path}:11: field 'label': must be a non-empty class name",
        f"{path}:14: field 'name': image file not found: {images / 'gone.png'}"]
    path.write_text("<annotations><image name='one.jpg'>\n<box></annotations>")
    with pytest.raises(ConversionError, match=rf"{path}:2: invalid XML: mismatched tag"):
        from_cvat(str(path), str(images), str(tmp_path / "train.jsonl"))
    path.write_text("<annotations><track id='0' label='can'/></annotations>")
    with pytest.raises(ConversionError, match="not \"CVAT for images 1.1\" XML.*<track> is CVAT for video"):
        from_cvat(str(path), str(images), str(tmp_path / "train.jsonl"))


# -- the fridge photos exported from a labelling tool ----------------------------------------------

def fridge_coco():
    root = shared_dataset("fridge-detection")
    annotations = root / "annotations" / "odFridgeObjects_coco.json"
    return annotations, root / "images", json.loads(annotations.read_text())


def test_fridge_label_studio_and_cvat_exports_give_the_coco_boxes(tmp_path):
    annotations, images, coco = fridge_coco()
    names = {c["id"]: c["name"] for c in coco["categories"]}
    boxes = {i["id"]: [a for a in coco["annotations"] if a["image_id"] == i["id"]] for i in coco["images"]}
    tasks, xml = [], ["<annotations><version>1.1</version>"]
    for image in coco["images"]:
        w, h = image["width"], image["height"]
        tasks.append({"id": image["id"], "data": {"image": f"/data/upload/7/0a1b2c3d-{image['file_name']}"},
                      "annotations": [{"id": 1, "result": [rectangle(
                          names[a["category_id"]], a["bbox"][0] / w * 100, a["bbox"][1] / h * 100,
                          a["bbox"][2] / w * 100, a["bbox"][3] / h * 100, size=(w, h)) for a in boxes[image["id"]]]}]})
        xml.append(f'<image id="{image["id"]}" name="{image["file_name"]}" width="{w}" height="{h}">')
        xml += [f'<box label="{names[a["category_id"]]}" xtl="{x}" ytl="{y}" xbr="{x + bw}" ybr="{y + bh}"/>'
                for a in boxes[image["id"]] for x, y, bw, bh in [a["bbox"]]]
        xml.append("</image>")
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    (tmp_path / "annotations.xml").write_text("\n".join(xml + ["</annotations>"]))
    output = str(tmp_path / "train.jsonl")
    expected = parse_all(from_coco(str(annotations), str(images), output).records, Task.OBJECT_DETECTION)
    for converted in (from_label_studio(str(tmp_path / "export.json"), str(images), output),
                      from_cvat(str(tmp_path / "annotations.xml"), str(images), output)):
        labels = parse_all(converted.records, Task.OBJECT_DETECTION)
        assert len(labels) == 128 and converted.warnings == []
        for got, want in zip(labels, expected):
            assert [o.label for o in got.objects] == [o.label for o in want.objects]
            assert [o.box for o in got.objects] == [pytest.approx(o.box, abs=1e-6) for o in want.objects]
    assert os.path.basename(Path(output)) == "train.jsonl"
