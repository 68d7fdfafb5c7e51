"""The trainer's data module: JSONL parsing errors, the split, image fetching and skipping."""
from __future__ import annotations

import io
import json
import os

import fsspec
import pytest
from PIL import Image

from automl_images.trainer import data
from automl_images.trainer.tasks.classification import ClassificationAdapter

parse_label = ClassificationAdapter().parse_label


def write_jsonl(path, lines) -> str:
    with open(path, "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return str(path)


def save_png(path, color=(200, 10, 10), size=(8, 8), mode="RGB") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, color).save(path)


# -- annotation lines --------------------------------------------------------------------------

@pytest.mark.parametrize("line, field, problem", [
    ({"image_url": "a.png"}, "label", "missing"),
    ({"image_url": "a.png", "label": None}, "label", "missing"),
    ({"image_url": "a.png", "label": ["cat"]}, "label", "class name"),
    ({"image_url": "a.png", "label": ""}, "label", "non-empty"),
    ({"label": "cat"}, "image_url", "missing"),
    ({"image_url": 7, "label": "cat"}, "image_url", "non-empty string"),
    ({"image_url": "a.png", "label": "cat", "image_details": "big"}, "image_details", "object"),
])
def test_bad_line_names_file_line_and_field(tmp_path, line, field, problem):
    path = write_jsonl(tmp_path / "train.jsonl", [{"image_url": "ok.png", "label": "dog"}, "", line])
    with pytest.raises(data.DataError) as info:
        data.read_jsonl(path, parse_label)
    message = str(info.value)
    assert f"train.jsonl:3: field '{field}'" in message  # blank line 2 still counts
    assert problem in message


def test_invalid_json_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"image_url": "a.png", "label": "x"}, '{"image_url": '])
    with pytest.raises(data.DataError, match=r"train\.jsonl:2: invalid JSON"):
        data.read_jsonl(path, parse_label)


def test_every_bad_line_is_reported(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"image_url": "a.png"}] * 8)
    with pytest.raises(data.DataError) as info:
        data.read_jsonl(path, parse_label)
    assert "train.jsonl:1:" in str(info.value) and "and 3 more bad line(s)" in str(info.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(data.DataError, match="not found"):
        data.read_jsonl(str(tmp_path / "nope.jsonl"), parse_label)
    with pytest.raises(data.DataError, match="empty"):
        data.read_jsonl(write_jsonl(tmp_path / "empty.jsonl", ["", "  "]), parse_label)


def test_relative_path_may_not_leave_the_folder(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"image_url": "../secret.png", "label": "x"}])
    with pytest.raises(data.DataError, match=r"train\.jsonl:1: field 'image_url': .*leaves the folder"):
        data.read_jsonl(path, parse_label)


def test_urls_resolve_against_the_jsonl_folder(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"image_url": "images/a.png", "label": "x"},
        {"image_url": "/data/b.png", "label": 3},
        {"image_url": "s3://bucket/c.png", "label": "y"},
    ])
    records = data.read_jsonl(path, parse_label)
    assert [r.image_url for r in records] == [str(tmp_path / "images" / "a.png"), "/data/b.png", "s3://bucket/c.png"]
    assert [r.label for r in records] == ["x", "3", "y"]
    assert records[0].where == f"{path}:1"


# -- split and classes -------------------------------------------------------------------------

def make_records(counts: dict[str, int]) -> list[data.Record]:
    records, line = [], 0
    for label, n in counts.items():
        for _ in range(n):
            line += 1
            records.append(data.Record("train.jsonl", line, f"/img/{line}.png", label))
    return records


def test_split_is_stratified_seeded_and_keeps_every_class_in_training():
    records = make_records({"a": 50, "b": 10, "c": 1})
    train, val = data.split(records, 0.2, seed=1, key=lambda r: r.label)
    assert len(train) + len(val) == len(records)
    assert sum(r.label == "a" for r in val) == 10 and sum(r.label == "b" for r in val) == 2
    assert {r.label for r in train} == {"a", "b", "c"}
    assert (train, val) == data.split(records, 0.2, seed=1, key=lambda r: r.label)
    assert val != data.split(records, 0.2, seed=2, key=lambda r: r.label)[1]


def test_split_of_tiny_data_still_validates_on_something():
    train, val = data.split(make_records({"a": 2, "b": 1}), 0.1, seed=0, key=lambda r: r.label)
    assert len(val) == 1 and {r.label for r in train} == {"a", "b"}


def test_validation_class_unseen_in_training(tmp_path):
    val = [data.Record("val.jsonl", 4, "/img/x.png", "zebra")]
    with pytest.raises(data.DataError, match=r"val\.jsonl:4: field 'label': class 'zebra' does not occur"):
        data.check_known_classes(val, {"cat", "dog"}, lambda label: (label,))


# -- images ------------------------------------------------------------------------------------

def test_missing_and_corrupt_images_are_skipped_and_listed(tmp_path):
    save_png(str(tmp_path / "good.png"))
    save_png(str(tmp_path / "grey.png"), color=128, mode="L")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = io.BytesIO()
    Image.new("RGB", (64, 64)).save(good, format="PNG")
    (tmp_path / "truncated.png").write_bytes(good.getvalue()[:60])
    path = write_jsonl(tmp_path / "train.jsonl", [{"image_url": name, "label": "x"} for name in
                                                  ("good.png", "missing.png", "corrupt.png", "grey.png", "truncated.png")])
    records = data.read_jsonl(path, parse_label)
    samples, skipped = data.fetch_images(records, cache_dir=str(tmp_path / "cache"))
    assert [s.record.line for s in samples] == [1, 4]
    assert [(s.where, s.reason.split(":")[0]) for s in skipped] == [
        (f"{path}:2", "not found"), (f"{path}:3", "cannot decode"), (f"{path}:5", "cannot decode")]
    with pytest.raises(data.DataError) as info:
        data.check_bad_images(skipped, len(records), max_ratio=0.5)
    assert "3 of 5 images could not be read" in str(info.value)
    assert f"{path}:2: " in str(info.value) and "missing.png" in str(info.value)
    data.check_bad_images(skipped, len(records), max_ratio=0.6)  # at most the share: no error


def test_images_are_rgb_with_exif_orientation_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.new("L", (20, 10), 50).save(tmp_path / "rotated.jpg", exif=exif)
    image = data.open_image(str(tmp_path / "rotated.jpg"))
    assert image.mode == "RGB" and image.size == (10, 20)


def test_decompression_bomb_is_skipped(tmp_path, monkeypatch):
    save_png(str(tmp_path / "big.png"), size=(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's own guard, made small
    record = data.Record("t.jsonl", 1, str(tmp_path / "big.png"), "x")
    samples, skipped = data.fetch_images([record], cache_dir=str(tmp_path / "cache"))
    assert not samples and "pixels" in skipped[0].reason


def test_remote_images_are_cached_on_local_disk(tmp_path):
    memory = fsspec.filesystem("memory")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 255, 0)).save(buffer, format="PNG")
    memory.pipe_file("/trainer-test/img/a.png", buffer.getvalue())
    record = data.Record("memory://trainer-test/train.jsonl", 1, "memory://trainer-test/img/a.png", "x")
    cache = str(tmp_path / "cache")
    (sample,), skipped = data.fetch_images([record], cache_dir=cache)
    assert not skipped and sample.path.startswith(cache) and sample.path.endswith(".png")
    memory.rm_file("/trainer-test/img/a.png")  # later reads come from the cache
    (again,), _ = data.fetch_images([record], cache_dir=cache)
    assert again.path == sample.path and data.open_image(again.path).getpixel((0, 0)) == (0, 255, 0)
