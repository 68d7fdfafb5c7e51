"""The trainer's data module: JSONL parsing errors, the split, image fetching and skipping."""
from __future__ import annotations

import io
import json
import os

import fsspec
import pytest
from PIL import Image

from automl_images.core.hyperparameters import Task, resolve
from automl_images.core.problems import MAX_LISTED
from automl_images.trainer import data
from automl_images.trainer.tasks import get_adapter

parse_label = get_adapter(Task.CLASSIFICATION, resolve(Task.CLASSIFICATION, {})).parse_label


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
    path = write_jsonl(tmp_path / "train.jsonl", [{"image_url": "a.png"}] * (MAX_LISTED + 3))
    with pytest.raises(data.DataError) as info:
        data.read_jsonl(path, parse_label)
    assert "train.jsonl:1:" in str(info.value) and f"train.jsonl:{MAX_LISTED}:" in str(info.value)
    assert str(info.value).endswith("and 3 more problem(s)")


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


# -- where images are ----------------------------------------------------------------------------

def test_azure_datastore_references_map_through_the_job_datastores(tmp_path):
    store = tmp_path / "store"
    save_png(str(store / "images" / "a.png"))
    save_png(str(store / "images" / "b.png"))
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"image_url": "AmlDatastore://workspaceblobstore/images/a.png", "label": "x"},
        {"image_url": "azureml://datastores/workspaceblobstore/paths/images/b.png", "label": "y"},
        {"image_url": "azureml://subscriptions/s/resourcegroups/g/workspaces/w/datastores/workspaceblobstore/"
                      "paths/images/a.png", "label": "x"},
    ])
    records = data.read_jsonl(path, parse_label, {"workspaceblobstore": str(store)})
    assert [r.image_url for r in records] == [str(store / "images" / n) for n in ("a.png", "b.png", "a.png")]
    samples, skipped = data.fetch_images(records, cache_dir=str(tmp_path / "cache"))
    assert len(samples) == 3 and not skipped


@pytest.mark.parametrize("reference, message", [
    ("AmlDatastore://elsewhere/images/a.png", "unknown datastore 'elsewhere' in"),
    ("azureml://datastores/elsewhere/paths/a.png", "unknown datastore 'elsewhere' in"),
    ("AmlDatastore://workspaceblobstore/../secret.png", "leaves the root of datastore 'workspaceblobstore'"),
])
def test_bad_datastore_references_name_file_line_and_field(tmp_path, reference, message):
    path = write_jsonl(tmp_path / "train.jsonl", [{"image_url": "ok.png", "label": "x"},
                                                   {"image_url": reference, "label": "x"}])
    with pytest.raises(data.DataError) as info:
        data.read_jsonl(path, parse_label, {"workspaceblobstore": "s3://bucket/store"})
    assert "train.jsonl:2: field 'image_url': " in str(info.value) and message in str(info.value)
    assert "known: workspaceblobstore" in str(info.value) or "leaves" in str(info.value)


def test_absolute_urls_file_memory_and_https(tmp_path):
    import http.server
    import threading
    from functools import partial

    save_png(str(tmp_path / "served" / "c.png"), color=(0, 0, 255))
    save_png(str(tmp_path / "d.png"), color=(0, 255, 0))
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(buffer, format="PNG")
    fsspec.filesystem("memory").pipe_file("/trainer-test-abs/e.png", buffer.getvalue())
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/c.png"
        path = write_jsonl(tmp_path / "train.jsonl", [
            {"image_url": url, "label": "blue"},
            {"image_url": f"file://{tmp_path / 'd.png'}", "label": "green"},
            {"image_url": "memory://trainer-test-abs/e.png", "label": "red"},
            {"image_url": f"http://127.0.0.1:{server.server_address[1]}/missing.png", "label": "red"},
        ])
        records = data.read_jsonl(path, parse_label)
        # The server is on 127.0.0.1, which only a job that allows private addresses may fetch from.
        samples, skipped = data.fetch_images(records, cache_dir=str(tmp_path / "cache"), allow_private=True)
    finally:
        server.shutdown()
    assert [data.open_image(s.path).getpixel((0, 0)) for s in samples] == [(0, 0, 255), (0, 255, 0), (255, 0, 0)]
    assert samples[0].path.startswith(str(tmp_path / "cache"))  # remote: cached
    assert samples[1].path == str(tmp_path / "d.png")            # local: read in place
    assert [(s.where, s.reason) for s in skipped] == [(f"{path}:4", "not found")]


# -- image_details -------------------------------------------------------------------------------

def test_image_details_forms_azure_writes(tmp_path):
    path_lines = [
        {"image_url": "a.png", "label": "x", "image_details": {"format": "PNG", "width": "499px", "height": "666 px"}},
        {"image_url": "a.png", "label": "x", "image_details": {"format": "jpg", "width": 499, "height": 666.0}},
        {"image_url": "a.png", "label": "x", "image_details": {}},
        {"image_url": "a.png", "label": "x"},
    ]
    records = data.read_jsonl(write_jsonl(tmp_path / "t.jsonl", path_lines), parse_label)
    assert [r.details for r in records] == [data.ImageDetails("png", 499, 666), data.ImageDetails("jpeg", 499, 666),
                                            data.ImageDetails(), None]


@pytest.mark.parametrize("details, field", [
    ({"width": "wide"}, "width"), ({"height": -3}, "height"), ({"width": True}, "width"),
    ({"width": 1.5}, "width"), ({"format": 5}, "format"), ({"format": ""}, "format"),
])
def test_bad_image_details_name_the_field(tmp_path, details, field):
    path = write_jsonl(tmp_path / "train.jsonl", [{"image_url": "a.png", "label": "x", "image_details": details}])
    with pytest.raises(data.DataError, match=rf"train\.jsonl:1: field 'image_details\.{field}': "):
        data.read_jsonl(path, parse_label)


def test_stated_size_or_format_that_differs_is_a_warning(tmp_path):
    save_png(str(tmp_path / "a.png"), size=(20, 10))
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"image_url": "a.png", "label": "x", "image_details": {"format": "png", "width": "20px", "height": "10px"}},
        {"image_url": "a.png", "label": "x", "image_details": {"format": "png", "width": 10, "height": 20}},  # rotated
        {"image_url": "a.png", "label": "x", "image_details": {"format": "jpeg", "width": 640, "height": 480}},
    ])
    samples, skipped = data.fetch_images(data.read_jsonl(path, parse_label), cache_dir=str(tmp_path / "cache"))
    assert not skipped and [s.warning for s in samples[:2]] == [None, None]
    assert samples[2].warning == ("image_details says 640x480, the image is 20x10; "
                                  "image_details says format 'jpeg', the image is 'png'")


# -- decoding ------------------------------------------------------------------------------------

def _png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def test_every_mode_becomes_8_bit_rgb(tmp_path):
    import numpy as np

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    transparent_palette = palette.copy()
    transparent_palette.info["transparency"] = 1
    rgba = Image.new("RGBA", (4, 4), (200, 0, 0, 0))       # fully transparent red
    rgba.putpixel((0, 0), (200, 0, 0, 255))
    sixteen = Image.fromarray(np.array([[0, 32896, 65535, 65535]] * 4, dtype=np.uint16))
    assert sixteen.mode == "I;16"
    cases = {
        "grey.png": (Image.new("L", (4, 4), 77), (1, 1), (77, 77, 77)),
        "palette.png": (palette, (1, 1), (10, 200, 30)),
        "palette-transparent.png": (transparent_palette, (1, 1), (255, 255, 255)),
        "rgba.png": (rgba, (1, 1), (255, 255, 255)),        # composited over white
        "rgba-opaque.png": (rgba, (0, 0), (200, 0, 0)),
        "grey-alpha.png": (Image.new("LA", (4, 4), (90, 255)), (1, 1), (90, 90, 90)),
        "sixteen-bit.png": (sixteen, (1, 0), (128, 128, 128)),  # PIL's convert would give 255
        "sixteen-bit-max.png": (sixteen, (2, 0), (255, 255, 255)),
        "binary.png": (Image.new("1", (4, 4), 1), (1, 1), (255, 255, 255)),
    }
    for name, (image, xy, expected) in cases.items():
        (tmp_path / name).write_bytes(_png_bytes(image))
        decoded = data.open_image(str(tmp_path / name))
        assert decoded.mode == "RGB" and decoded.getpixel(xy) == expected, name
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # red in CMYK
    red = data.open_image(str(tmp_path / "cmyk.jpg")).getpixel((4, 4))
    assert red[0] > 240 and red[1] < 15 and red[2] < 15


def test_jpeg_is_decoded_at_the_smallest_scale_the_resize_needs(tmp_path):
    Image.new("RGB", (800, 600), (10, 120, 200)).save(tmp_path / "big.jpg", quality=95)
    assert data.open_image(str(tmp_path / "big.jpg")).size == (800, 600)
    assert data.open_image(str(tmp_path / "big.jpg"), min_size=140).size == (200, 150)  # 1/4: both ≥ 140
    assert data.open_image(str(tmp_path / "big.jpg"), min_size=600).size == (800, 600)


def _png_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few bytes whose header claims width × height pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x00"))
            + chunk(b"IEND", b""))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns; we refuse
def test_decompression_bombs_are_refused_from_the_header(tmp_path):
    # 9000 × 9000 = 81 M pixels: over our limit, under the 2× at which PIL itself refuses.
    (tmp_path / "bomb.png").write_bytes(_png_claiming(9000, 9000))
    (tmp_path / "huge.png").write_bytes(_png_claiming(100_000, 100_000))
    save_png(str(tmp_path / "ok.png"))
    records = [data.Record("t.jsonl", i + 1, str(tmp_path / n), "x") for i, n in enumerate(("bomb.png", "huge.png", "ok.png"))]
    samples, skipped = data.fetch_images(records, cache_dir=str(tmp_path / "cache"))
    assert [s.record.line for s in samples] == [3]
    assert [s.reason.split(":")[0] for s in skipped] == ["too large", "too large"]
    assert "9000x9000 = 81000000 pixels, more than the 64000000 allowed" in skipped[0].reason
