"""check-data's core (core/datacheck.py): every problem the trainer would refuse or warn about,
found from the lines and the images' first and last bytes, on a folder and on the S3 API server alike."""
from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from automl_images.core import datacheck, split
from automl_images.core.datacheck import DataFiles, check
from automl_images.core.hyperparameters import Task
from automl_images.core.storage import Storage


def png(colour: tuple[int, int, int], size: tuple[int, int] = (8, 6), noise: bool = False) -> bytes:
    pixels = np.full((size[1], size[0], 3), colour, dtype=np.uint8)
    if noise:  # incompressible: a file larger than datacheck.HEAD_BYTES
        pixels = np.random.default_rng(sum(colour)).integers(0, 255, pixels.shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    iend = b"IEND"
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", 0) + iend + struct.pack(">I", zlib.crc32(iend)))


def write(storage: Storage, files: dict[str, bytes | list[dict]]) -> None:
    for name, content in files.items():
        if isinstance(content, list):
            content = "".join(json.dumps(line) + "\n" for line in content).encode()
        storage.write_bytes(name, content)


def clean_set(per_class: int = 6) -> dict[str, bytes | list[dict]]:
    files: dict[str, bytes | list[dict]] = {}
    train, val = [], []
    for c, (name, colour) in enumerate({"red": (200, 0, 0), "blue": (0, 0, 200)}.items()):
        for i in range(per_class + 2):
            image = f"images/{name}_{i}.png"
            files[image] = png((colour[0], i * 20 + c, colour[2]), size=(8 + i, 6))
            (train if i < per_class else val).append({"image_url": image, "label": name})
    files["train.jsonl"], files["val.jsonl"] = train, val
    return files


def by_kind(report: datacheck.Report) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for finding in report.findings:
        out.setdefault(f"{finding.severity}:{finding.kind}", []).append(finding.where.rsplit("/", 1)[-1])
    return out


def test_a_clean_set_passes_with_its_summary(root_url):
    storage = Storage(root_url)
    write(storage, clean_set())
    report = check(DataFiles(Task.CLASSIFICATION, storage.url("train.jsonl"), storage.url("val.jsonl")))
    assert report.ok and report.findings == []
    summary = report.summary
    assert (summary["images"], summary["training"], summary["validation"], summary["classes"]) == (16, 12, 4, 2)
    assert summary["width"] == {"min": 8, "median": 11, "max": 15} and summary["height"]["max"] == 6
    saved = report.to_json()
    assert saved["ok"] and saved["problems"] == [] and json.dumps(saved)


def test_every_kind_of_problem_is_found_with_its_line(root_url):
    storage = Storage(root_url)
    files = clean_set(per_class=6)
    truncated = png((1, 2, 3), size=(40, 40), noise=True)
    files.update({
        "images/truncated.png": truncated[:len(truncated) // 2],
        "images/garbage.png": b"not an image at all",
        "images/bomb.png": png_header_only(20_000, 20_000),
        "images/green.png": png((0, 200, 0)),
    })
    train = files["train.jsonl"]
    val = files["val.jsonl"]
    train += [
        {"image_url": "images/truncated.png", "label": "red"},                        # line 13
        {"image_url": "images/garbage.png", "label": "red"},                          # 14
        {"image_url": "images/bomb.png", "label": "red"},                             # 15
        {"image_url": "images/missing.png", "label": "red"},                          # 16
        {"image_url": "images/red_0.png", "label": "red"},                            # 17: the same line twice
        {"image_url": "images/red_1.png", "label": "blue"},                           # 18: conflicting labels
        {"image_url": "images/green.png", "label": "green",                           # 19: details disagree
         "image_details": {"width": 99, "height": 6, "format": "jpg"}},
        {"image_url": "images/red_2.png"},                                            # 20: no label
        {"image_url": "images/red_3.png", "label": ["x"]},                            # 21: a list for a class
    ]
    val += [{"image_url": "images/red_4.png", "label": "red"},                       # val 5: leakage
            {"image_url": "images/green.png", "label": "yellow"}]                    # val 6: class not trained
    write(storage, files)
    report = check(DataFiles(Task.CLASSIFICATION, storage.url("train.jsonl"), storage.url("val.jsonl")))
    assert not report.ok
    assert by_kind(report) == {
        "error:line": ["train.jsonl:20", "train.jsonl:21"],
        "error:validation-only-class": ["val.jsonl:6"],
        # 4 of 23 images cannot be used: more than the 5% the trainer skips, so each is an error
        "error:truncated-image": ["train.jsonl:13"],
        "error:unreadable-image": ["train.jsonl:14"],
        "error:oversized-image": ["train.jsonl:15"],
        "error:missing-image": ["train.jsonl:16"],
        "error:bad-images": ["train.jsonl"],
        "warning:few-images": ["train.jsonl"],
        "warning:image-details": ["train.jsonl:19"],
        "warning:duplicate-image": ["train.jsonl:17"],
        "warning:conflicting-labels": ["train.jsonl:18", "val.jsonl:6"],
        "warning:leakage": ["val.jsonl:5"],
    }
    messages = {f.where.rsplit("/", 1)[-1]: str(f).split(": ", 1)[1] for f in report.findings}
    assert messages["train.jsonl:20"] == "field 'label': missing"
    assert messages["train.jsonl:15"] == "field 'image_url': 400000000 pixels, more than the 64000000 pixels allowed"
    assert messages["train.jsonl:19"] == ("field 'image_details': image_details says 99x6, the image is 8x6; "
                                          "image_details says format 'jpeg', the image is 'png'")
    assert "the same image as" in messages["val.jsonl:5"] and "red_4.png" in messages["val.jsonl:5"]
    assert report.to_json()["counts"]["error:line"] == 2
    assert report.render().splitlines()[2] == f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)"


def test_a_few_unreadable_images_are_warnings_as_the_trainer_skips_them(tmp_path):
    storage = Storage(str(tmp_path))
    files = clean_set(per_class=30)
    files["train.jsonl"].append({"image_url": "images/missing.png", "label": "red"})
    write(storage, files)
    report = check(DataFiles(Task.CLASSIFICATION, storage.url("train.jsonl"), storage.url("val.jsonl")))
    assert report.ok and by_kind(report) == {"warning:missing-image": ["train.jsonl:61"]}


def test_large_images_are_read_by_two_small_ranged_reads(root_url):
    storage = Storage(root_url)
    files = clean_set()
    for line in files["train.jsonl"][:4]:
        files[line["image_url"]] = png((9, 9, 9 + len(line["image_url"])), size=(300, 300), noise=True)
    write(storage, files)
    report = check(DataFiles(Task.CLASSIFICATION, storage.url("train.jsonl"), storage.url("val.jsonl")))
    assert report.ok, report.render()
    big = sum(len(files[line["image_url"]]) for line in files["train.jsonl"][:4])
    small = sum(len(v) for k, v in files.items() if k.endswith(".png")) - big
    assert big > 4 * 200_000
    assert report.summary["bytes_read"] == small + 4 * (datacheck.HEAD_BYTES + datacheck.TAIL_BYTES)


def test_detection_boxes_and_polygons_are_checked_by_the_trainers_rules(tmp_path):
    storage = Storage(str(tmp_path))
    box = {"label": "can", "topX": 0.1, "topY": 0.1, "bottomX": 0.5, "bottomY": 0.5}
    lines = [{"image_url": f"images/{i}.png", "label": [box]} for i in range(4)]
    lines += [{"image_url": "images/4.png", "label": [{**box, "topX": 0.6}]},           # 5: inverted
              {"image_url": "images/5.png", "label": [{**box, "bottomY": 1.5}]},         # 6: outside [0, 1]
              {"image_url": "images/6.png", "label": [{**box, "bottomX": 0.1}]}]         # 7: empty
    files = {f"images/{i}.png": png((i * 30, 0, 0)) for i in range(7)}
    write(storage, {**files, "train.jsonl": lines})
    report = check(DataFiles(Task.OBJECT_DETECTION, storage.url("train.jsonl")))
    assert [str(f).rsplit("/", 1)[-1].split(": ", 1) for f in report.errors] == [
        ["train.jsonl:5", "field 'label': object 0: inverted box (topX > bottomX): (topX, topY) is the top-left "
                          "corner"],
        ["train.jsonl:6", "field 'label': object 0: field 'bottomY': 1.5 is outside [0, 1] (coordinates are fractions "
                          "of the image's width and height)"],
        ["train.jsonl:7", "field 'label': object 0: empty box (zero width or height)"],
    ]
    lenient = check(DataFiles(Task.OBJECT_DETECTION, storage.url("train.jsonl"), lenient_labels=True))
    assert lenient.ok and [(f.where.rsplit("/", 1)[-1], f.field, f.message) for f in lenient.warnings] == [
        ("train.jsonl:5", "label", "object 0: inverted corners swapped"),
        ("train.jsonl:6", "label", "object 0: 'bottomY' 1.5 clipped to 1.0"),
        ("train.jsonl:7", "label", "object 0: dropped: empty box (zero width or height)"),
    ]


def test_images_false_reads_no_image(tmp_path):
    storage = Storage(str(tmp_path))
    write(storage, {"train.jsonl": [{"image_url": f"gone_{i}.png", "label": "ab"[i % 2]} for i in range(6)]})
    report = check(DataFiles(Task.CLASSIFICATION, storage.url("train.jsonl")), images=False)
    assert report.ok and "images_read" not in report.summary


def test_the_split_is_seeded_stratified_and_the_same_every_time(tmp_path):
    storage = Storage(str(tmp_path))
    files = clean_set(per_class=10)
    files["train.jsonl"] += files.pop("val.jsonl")
    write(storage, files)
    files_of = DataFiles(Task.CLASSIFICATION, storage.url("train.jsonl"), split_ratio=0.25, seed=3)
    saved = check(files_of).split_json()
    assert saved == check(files_of).split_json()
    assert saved["ratio"] == 0.25 and saved["records"] == 24 and len(saved["validation_lines"]) == 6
    lines = files["train.jsonl"]
    assert sorted(lines[n - 1]["label"] for n in saved["validation_lines"]) == ["blue"] * 3 + ["red"] * 3
    other_seed = check(DataFiles(Task.CLASSIFICATION, storage.url("train.jsonl"), split_ratio=0.25, seed=4))
    assert other_seed.split_json()["validation_lines"] != saved["validation_lines"]
    assert check(DataFiles(Task.CLASSIFICATION, storage.url("train.jsonl"), storage.url("train.jsonl"))
                 ).split_json() is None


def test_a_saved_split_applies_to_the_file_it_was_made_from_only(tmp_path):
    storage = Storage(str(tmp_path))
    files = clean_set(per_class=4)
    write(storage, files)
    report = check(DataFiles(Task.CLASSIFICATION, storage.url("train.jsonl"), seed=1))
    saved = report.split_json()
    records = report.training + report.validation
    records.sort(key=lambda r: r.line)
    train, val = split.apply(records, saved, "split.json")
    assert [r.line for r in val] == saved["validation_lines"] and len(train) + len(val) == 8
    with pytest.raises(ValueError, match="split.json: split of .*train.jsonl \\(8 records\\), but the training "
                                         "data is .*train.jsonl \\(7 records\\): the file changed"):
        split.apply(records[:7], saved, "split.json")


def test_a_jpeg_with_data_after_its_end_marker_is_not_truncated_and_a_cut_one_is(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    jpeg = buffer.getvalue()
    storage = Storage(str(tmp_path))
    files = clean_set(per_class=40)
    files.update({"trailer.jpg": jpeg + b"camera maker's trailer" * 10, "cut.jpg": jpeg[:len(jpeg) // 2]})
    files["train.jsonl"] += [{"image_url": "trailer.jpg", "label": "red"}, {"image_url": "cut.jpg", "label": "red"}]
    write(storage, files)
    report = check(DataFiles(Task.CLASSIFICATION, storage.url("train.jsonl"), storage.url("val.jsonl")))
    assert by_kind(report) == {"warning:truncated-image": ["train.jsonl:82"]}
