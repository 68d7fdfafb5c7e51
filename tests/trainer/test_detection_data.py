"""Detection and instance-segmentation labels: the reference's JSONL, its older forms, and every
refusal naming the file, line and field (`core/detection_labels.py`, read through `data.py`)."""
from __future__ import annotations

import json

import pytest

from automl_images.core.detection_labels import DetectionObject, parse_detection_label, parser
from automl_images.core.hyperparameters import Task
from automl_images.trainer import data

OD = parser(Task.OBJECT_DETECTION)
IS = parser(Task.INSTANCE_SEGMENTATION)


def write_jsonl(path, lines) -> str:
    with open(path, "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return str(path)


def box(label="can", x0=0.1, y0=0.2, x1=0.5, y1=0.9, **extra):
    return {"label": label, "topX": x0, "topY": y0, "bottomX": x1, "bottomY": y1, **extra}


def test_reference_form_with_strings_and_crowd(tmp_path):
    # As the reference's sample writes it: numbers and booleans as strings.
    line = {"image_url": "a.png", "image_details": {"format": "png", "width": "40px", "height": "20px"},
            "label": [box("can", "0.1", "0", "1", "0.5", isCrowd="true"),
                      box("milk", 0.2, 0.3, 0.4, 0.6, isCrowd="0"),
                      box("milk", 0, 0, 1, 1, isCrowd=False),
                      box("can", 0.5, 0.5, 0.6, 0.6)]}
    [record] = data.read_jsonl(write_jsonl(tmp_path / "t.jsonl", [line]), OD)
    label = record.label
    assert label.objects[0] == DetectionObject("can", (0.1, 0.0, 1.0, 0.5), True)
    assert [o.is_crowd for o in label.objects] == [True, False, False, False]
    assert [o.label for o in label.training_objects()] == ["milk", "milk", "can"]
    assert label.classes() == ("can", "milk")
    assert label.notes == ()


def test_older_single_object_form_and_empty_image():
    label = parse_detection_label(box("can", isCrowd=1))
    assert len(label.objects) == 1 and label.objects[0].is_crowd
    assert parse_detection_label([]).objects == ()


@pytest.mark.parametrize("label, problem", [
    ([box(x0=-0.1)], "object 0: field 'topX': -0.1 is outside [0, 1]"),
    ([box(), box(y1=1.2)], "object 1: field 'bottomY': 1.2 is outside [0, 1]"),
    ([box(x0=0.6, x1=0.5)], "object 0: inverted box (topX > bottomX)"),
    ([box(y0=0.9, y1=0.2)], "object 0: inverted box (topY > bottomY)"),
    ([box(x0=0.5, x1=0.5)], "object 0: empty box"),
    ([box(x0="left")], "object 0: field 'topX': must be a number"),
    ([box(x0=True)], "object 0: field 'topX': must be a number"),
    ([box(x0="nan")], "object 0: field 'topX': must be a finite number"),
    ([{"label": "can", "topX": 0.1, "topY": 0.1, "bottomX": 0.2}], "object 0: field 'bottomY': missing"),
    ([box(label="")], "object 0: field 'label': must be a non-empty class name"),
    ([box(isCrowd="maybe")], "object 0: field 'isCrowd': must be true or false"),
    (["can"], "object 0: must be an object"),
    ("can", "must be a list of objects"),
])
def test_bad_objects_name_file_line_and_field(tmp_path, label, problem):
    path = write_jsonl(tmp_path / "t.jsonl", [{"image_url": "a.png", "label": [box()]},
                                               {"image_url": "b.png", "label": label}])
    with pytest.raises(data.DataError) as info:
        data.read_jsonl(path, OD)
    assert f"t.jsonl:2: field 'label': {problem}" in str(info.value)


def test_lenient_clips_swaps_drops_and_reports():
    label = parse_detection_label([box(x0=-0.2, y1=1.5), box(x0=0.6, x1=0.4), box(x0=0.3, x1=0.3),
                                   box(x0=1.2, x1=1.5)], lenient=True)
    assert [o.box for o in label.objects] == [(0.0, 0.2, 0.5, 1.0), (0.4, 0.2, 0.6, 0.9)]
    notes = "\n".join(label.notes)
    assert "object 0: 'topX' -0.2 clipped to 0.0" in notes
    assert "object 0: 'bottomY' 1.5 clipped to 1.0" in notes
    assert "object 1: inverted corners swapped" in notes
    assert "object 2: dropped: empty box" in notes
    assert "object 3: dropped: empty box" in notes     # clipped to 1.0 .. 1.0
    # Malformed values are refused even when lenient.
    with pytest.raises(ValueError, match="must be a number"):
        parse_detection_label([box(x0="x")], lenient=True)


def test_lenient_parser_reads_through_data(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"image_url": "a.png", "label": [box(x1=1.01)]}])
    [record] = data.read_jsonl(path, parser(Task.OBJECT_DETECTION, lenient=True))
    assert record.label.objects[0].box[2] == 1.0 and record.label.notes


# -- instance segmentation -------------------------------------------------------------------------

TRIANGLE = [0.1, 0.1, 0.5, 0.1, 0.3, 0.6]


def test_polygons_and_box_from_polygons(tmp_path):
    lines = [{"image_url": "a.png", "label": [
        {"label": "can", "isCrowd": "false", "polygon": [TRIANGLE, [0.6, 0.6, 0.9, 0.6, "0.9", "0.95"]]},
        box("milk", 0.0, 0.0, 1.0, 1.0, polygon=[[0, 0, 1, 0, 1, 1, 0, 1]]),
        {"label": "can", "polygon": TRIANGLE}]}]        # one flat polygon, unwrapped
    [record] = data.read_jsonl(write_jsonl(tmp_path / "s.jsonl", lines), IS)
    first, second, third = record.label.objects
    assert first.box == (0.1, 0.1, 0.9, 0.95) and len(first.polygons) == 2
    assert second.box == (0.0, 0.0, 1.0, 1.0) and second.polygons == ((0, 0, 1, 0, 1, 1, 0, 1),)
    assert third.polygons == (tuple(TRIANGLE),)


@pytest.mark.parametrize("obj, problem", [
    ({"label": "can"}, "field 'polygon': missing"),
    ({"label": "can", "polygon": []}, "field 'polygon': must be a non-empty list"),
    ({"label": "can", "polygon": [[0.1, 0.1, 0.5, 0.1]]}, "field 'polygon[0]': has 2 point(s); a polygon needs at least 3"),
    ({"label": "can", "polygon": [[0.1, 0.1, 0.5]]}, "field 'polygon[0]': has an odd number"),
    ({"label": "can", "polygon": [TRIANGLE, [0.1, 0.1, 1.5, 0.1, 0.3, 0.6]]}, "field 'polygon[1][2]': 1.5 is outside [0, 1]"),
    ({"label": "can", "polygon": [[0.1, 0.1, "a", 0.1, 0.3, 0.6]]}, "field 'polygon[0][2]': must be a number"),
    ({"label": "can", "polygon": [[0.1, 0.1, 0.2, 0.1, 0.3, 0.1]]}, "the polygons enclose no area"),
])
def test_bad_polygons_name_file_line_and_field(tmp_path, obj, problem):
    path = write_jsonl(tmp_path / "s.jsonl", [{"image_url": "a.png", "label": [obj]}])
    with pytest.raises(data.DataError) as info:
        data.read_jsonl(path, IS)
    assert f"s.jsonl:1: field 'label': object 0: {problem}" in str(info.value)


def test_lenient_polygons():
    label = parse_detection_label([{"label": "a", "polygon": [TRIANGLE, [0.1, 0.1, 0.2, 0.2]]},
                                   {"label": "b", "polygon": [[0.1, 0.1, 0.2, 0.2]]},
                                   {"label": "c", "polygon": [[-0.5, 0.1, 0.5, 0.1, 0.3, 0.6]]}],
                                  segmentation=True, lenient=True)
    assert [o.label for o in label.objects] == ["a", "c"]
    assert label.objects[0].polygons == (tuple(TRIANGLE),)
    assert label.objects[1].polygons[0][0] == 0.0
    notes = "\n".join(label.notes)
    assert "object 0: 'polygon[1]' of 2 point(s) dropped" in notes
    assert "object 1: dropped: no polygon" in notes
    assert "object 2: 'polygon[0][0]' -0.5 clipped to 0.0" in notes


def test_scored_predictions_need_a_score():
    label = parse_detection_label([box(score="0.75")], scored=True)
    assert label.objects[0].score == 0.75
    with pytest.raises(ValueError, match="object 0: field 'score': missing"):
        parse_detection_label([box()], scored=True)
    with pytest.raises(ValueError, match="outside"):
        parse_detection_label([box(score=1.5)], scored=True)


def test_parser_refuses_classification_tasks():
    with pytest.raises(ValueError):
        parser(Task.CLASSIFICATION)
