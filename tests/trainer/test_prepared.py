"""The prepared images (trainer/prepared.py): the same tensors as decoding the originals, a kill
while preparing resumed, one preparation for two trials starting together, a new one when the
images or the decode size change."""
from __future__ import annotations

import multiprocessing
import os
import signal
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from automl_images.core import hyperparameters
from automl_images.core.annotations import Record
from automl_images.core.detection_labels import parser
from automl_images.core.hyperparameters import Task
from automl_images.core.storage import Storage
from automl_images.trainer import data, prepared, presets
from automl_images.trainer.inputs import TrialInputs
from automl_images.trainer.tasks import get_adapter

# Processes made by fork start in milliseconds (a fresh interpreter pays ~8 s to import torch); they
# use no torch, only PIL, numpy and files.
FORK = multiprocessing.get_context("fork")


def photo(path, width: int, height: int, seed: int, orientation: int | None = None) -> str:
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, width, dtype=np.float64)[None, :, None] * rng.uniform(0.3, 1.0, (1, 1, 3))
    pixels = np.clip(gradient + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if path.suffix == ".png":
        image = image.convert("RGBA") if seed % 2 else image.convert("L")
        image.save(path)
    else:
        exif = Image.Exif()
        if orientation:
            exif[0x0112] = orientation
        image.save(path, quality=90, exif=exif.tobytes())
    return str(path)


@pytest.fixture
def images(tmp_path):
    """Eight images: JPEGs large enough to be decoded at a reduced scale, one rotated by its EXIF
    orientation, and PNGs (greyscale, transparent) converted to RGB by the decoder."""
    folder = tmp_path / "images"
    folder.mkdir()
    paths = [photo(folder / f"p{i}.jpg", 320 + 16 * i, 240, i, orientation=6 if i == 1 else None) for i in range(6)]
    paths += [photo(folder / f"q{i}.png", 96, 80, i) for i in (6, 7)]
    return paths


def samples_of(paths, labels) -> list[data.Sample]:
    return [data.Sample(Record("train.jsonl", i + 1, path, label), path)
            for i, (path, label) in enumerate(zip(paths, labels))]


def items(dataset, epoch: int):
    return [dataset[(epoch, i)] for i in range(len(dataset))]


def prepared_copy(make, root):
    """A dataset made by `make()` and the same one reading prepared images."""
    direct, again = make(), make()
    prepared.JobImages(again.samples, root).attach(again)
    assert all(s.path.startswith(str(root)) for s in again.samples)
    return direct, again


@pytest.mark.parametrize("preset", ["translate", "resized_crop_flip"])
def test_classification_tensors_are_those_of_the_originals(images, tmp_path, preset):
    p = presets.Preprocessing(resize_size=64, crop_size=56, train_preset=preset)
    samples = samples_of(images, range(len(images)))
    for train in (True, False):
        transform = presets.train_transform(p, normalize=False) if train else presets.eval_transform(p, normalize=False)
        direct, again = prepared_copy(lambda: data.ImageDataset(samples, list(range(len(samples))), transform, seed=3,
                                                                min_size=presets.decode_size(p, train)), tmp_path / "prep")
        for epoch in (1, 2):
            for (a, ta), (b, tb) in zip(items(direct, epoch), items(again, epoch)):
                assert a.dtype == torch.uint8 and torch.equal(a, b) and ta == tb


def test_detection_images_and_boxes_are_those_of_the_originals(images, tmp_path):
    hp = hyperparameters.resolve(Task.OBJECT_DETECTION, {"model_name": "fasterrcnn_resnet50_fpn", "min_size": 100})
    adapter = get_adapter(Task.OBJECT_DETECTION, hp)
    label = parser(Task.OBJECT_DETECTION)([{"label": "can", "topX": 0.1, "topY": 0.2, "bottomX": 0.6, "bottomY": 0.9}])
    samples = samples_of(images, [label] * len(images))
    targets = [adapter.encode(s.record.label, {"can": 0}) for s in samples]
    direct, again = prepared_copy(lambda: adapter.dataset(samples, targets, train=True, seed=5), tmp_path / "prep")
    assert again.group_ids == direct.group_ids
    # The 320-px JPEGs are decoded at half scale for min_size 100: the prepared copies are that size.
    assert Image.open(again.samples[0].path).size == (160, 120)
    for (a, ta), (b, tb) in zip(items(direct, 1), items(again, 1)):
        assert torch.equal(a, b)
        assert torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["size"], tb["size"])


def slow_prepare(paths, root, delay: float, results=None, barrier=None) -> None:
    """In a forked process: prepare `paths` at 64 px, one at a time, each decode `delay` seconds slower."""
    decode = data.open_image

    def slow(path, min_size=None):
        time.sleep(delay)
        return decode(path, min_size)

    prepared.data.open_image = slow
    prepared._threads = lambda: 1   # the images appear one by one, whatever the machine's cores
    if barrier is not None:
        barrier.wait()
    outcome = prepared.prepare(paths, 64, str(root))
    if results is not None:
        results.put(outcome.decoded)


def image_files(root) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(".ppm"))


def test_a_kill_while_preparing_is_resumed(images, tmp_path):
    root = tmp_path / "prep"
    child = FORK.Process(target=slow_prepare, args=(images, root, 0.4))
    child.start()
    deadline = time.monotonic() + 30
    while len(image_files(root)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    before = image_files(root)
    assert 3 <= len(before) < len(images)
    folder = os.path.dirname(os.path.dirname(before[0]))
    assert not os.path.exists(os.path.join(folder, "index.json"))   # nothing says the set is whole
    # What a machine's crash could leave besides: a file cut short, and a temporary file.
    with open(before[-1], "r+b") as f:
        f.truncate(100)
    open(os.path.join(folder, "images", ".tmp-x"), "wb").close()
    inodes = {path: os.stat(path).st_ino for path in before[:-1]}

    resumed = prepared.prepare(images, 64, str(root))
    assert resumed.folder == folder
    assert resumed.decoded == len(images) - len(before) + 1          # the cut file is written again
    assert all(os.stat(path).st_ino == inode for path, inode in inodes.items())  # the whole ones kept
    assert resumed.verify() and not os.path.exists(os.path.join(folder, "images", ".tmp-x"))
    for source, copy in resumed.files.items():
        assert np.array_equal(np.asarray(data.open_image(source, 64)), np.asarray(data.open_image(copy, 64)))


def test_two_trials_starting_together_prepare_once(images, tmp_path):
    root = tmp_path / "prep"
    results, barrier = FORK.Queue(), FORK.Barrier(2)
    children = [FORK.Process(target=slow_prepare, args=(images, root, 0.1, results, barrier)) for _ in range(2)]
    for child in children:
        child.start()
    decoded = sorted(results.get(timeout=60) for _ in children)
    for child in children:
        child.join()
        assert child.exitcode == 0
    assert decoded == [0, len(images)]
    assert len(image_files(root)) == len(images)


def test_prepared_again_when_an_image_or_the_decode_size_changes(images, tmp_path):
    root = str(tmp_path / "prep")
    first = prepared.prepare(images, 64, root)
    assert first.decoded == len(images)
    assert prepared.prepare(images, 64, root) == prepared.PreparedImages(first.folder, first.files, 0)

    other_size = prepared.prepare(images, 128, root)
    assert other_size.folder != first.folder and other_size.decoded == len(images)

    photo(type(tmp_path)(images[2]), 352, 240, seed=99)   # the same file, other pixels
    changed = prepared.prepare(images, 64, root)
    assert changed.folder != first.folder and changed.decoded == len(images)
    assert np.array_equal(np.asarray(Image.open(changed.files[images[2]])), np.asarray(data.open_image(images[2], 64)))
    assert not np.array_equal(np.asarray(Image.open(changed.files[images[2]])),
                              np.asarray(Image.open(first.files[images[2]])))


def test_a_damaged_prepared_image_is_written_again(images, tmp_path):
    root = str(tmp_path / "prep")
    first = prepared.prepare(images, 64, root)
    damaged = first.files[images[4]]
    with open(damaged, "ab") as f:
        f.write(b"x")
    again = prepared.prepare(images, 64, root)
    assert again.folder == first.folder and again.decoded == 1 and again.verify()
    # Same size, other bytes: opening a set checks sizes only; verify() reads every byte.
    with open(damaged, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(b"\x00" if last != b"\x00" else b"\x01")
    assert not again.verify()


@pytest.mark.parametrize("setting", ["local", "bucket", "job off", "environment off"])
def test_a_trials_loaders_read_prepared_images_unless_turned_off(images, tmp_path, monkeypatch, setting):
    monkeypatch.setenv(data.IMAGE_CACHE_ENV, str(tmp_path / "cache"))
    if setting == "environment off":
        monkeypatch.setenv(prepared.PREPARED_ENV, "0")
    else:
        monkeypatch.delenv(prepared.PREPARED_ENV, raising=False)
    hp = hyperparameters.resolve(Task.CLASSIFICATION, {"resize_size": 64, "crop_size": 56, "training_batch_size": 2,
                                                       "validation_batch_size": 2, "log_training_metrics": "enable"})
    bucket = Storage(str(tmp_path / "bucket"))
    spec = SimpleNamespace(hyperparameters=hp, seed=0, training_data="train.jsonl", prepare_images=setting != "job off",
                           prepared_copy=bucket.url("jobs/j/prepared") if setting == "bucket" else None)
    adapter = get_adapter(Task.CLASSIFICATION, hp)
    samples = samples_of(images, ["a", "b"] * 4)
    loaders = TrialInputs(spec).loaders(adapter, torch.device("cpu"), ["a", "b"], samples[:6], samples[6:])
    datasets = [loaders.train_loader.dataset, loaders.val_loader.dataset, loaders.train_eval_loader.dataset]
    read = [s.path for d in datasets for s in d.samples]
    if setting in ("local", "bucket"):
        assert all(path.startswith(str(tmp_path / "cache-prepared")) for path in read)
    else:
        assert read == [s.path for s in samples[:6] + samples[6:] + samples[:6]]
    # One set per decode size the datasets ask for, copied to the bucket with its index.
    indexes = [key for key in bucket.walk("") if key.endswith("index.json")]
    assert len(indexes) == (len({d.min_size for d in datasets}) if setting == "bucket" else 0) and \
        (setting != "bucket" or indexes)


def test_not_prepared_when_the_disk_is_too_small_or_cannot_be_written(images, tmp_path, monkeypatch):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert prepared.prepare(images, 64, str(blocked / "prep")) is None   # the trial decodes the originals
    monkeypatch.setattr(prepared, "MAX_DISK_SHARE", 1e-12)
    assert prepared.prepare(images, 64, str(tmp_path / "prep")) is None
    assert image_files(tmp_path / "prep") == []


def moved(images, folder) -> list[str]:
    """The same files under another folder: the paths another machine fetches them to."""
    folder.mkdir()
    copies = []
    for path in images:
        target = folder / os.path.basename(path)
        target.write_bytes(open(path, "rb").read())
        copies.append(str(target))
    return copies


def test_a_copy_in_the_bucket_spares_other_machines_the_decoding(images, tmp_path, root_url):
    copy = Storage(root_url).url("jobs/j/prepared")
    first = prepared.prepare(images, 64, str(tmp_path / "machine-a"), copy=Storage(copy))
    assert (first.decoded, first.fetched) == (len(images), 0)
    key = os.path.basename(first.folder)
    bucket = Storage(copy)
    assert sorted(bucket.walk(key)) == sorted(["index.json"] + [f"images/{os.path.basename(f)}"
                                                              for f in first.files.values()])

    # Another machine, the same images at other paths: the same key, fetched, not decoded.
    elsewhere = moved(images, tmp_path / "fetched-there")
    second = prepared.prepare(elsewhere, 64, str(tmp_path / "machine-b"), copy=Storage(copy))
    assert (second.decoded, second.fetched) == (0, len(images)) and os.path.basename(second.folder) == key
    assert second.verify()
    for source, prepared_file in second.files.items():
        assert np.array_equal(np.asarray(data.open_image(source, 64)), np.asarray(data.open_image(prepared_file, 64)))

    # A fetch killed half-way (no local index, some files whole): the whole files are kept.
    os.unlink(os.path.join(second.folder, "index.json"))
    os.unlink(second.files[elsewhere[3]])
    resumed = prepared.prepare(elsewhere, 64, str(tmp_path / "machine-b"), copy=Storage(copy))
    assert (resumed.decoded, resumed.fetched) == (0, 1) and resumed.verify()

    # A file of the copy that does not match its index is decoded here, never used.
    damaged = f"{key}/images/{os.path.basename(first.files[images[2]])}"
    bucket.write_bytes(damaged, bucket.read_bytes(damaged)[:-1] + b"\x07")
    third = prepared.prepare(moved(images, tmp_path / "third"), 64, str(tmp_path / "machine-c"), copy=Storage(copy))
    assert (third.decoded, third.fetched) == (1, len(images) - 1) and third.verify()


def test_a_copy_without_its_index_is_not_used_and_is_completed(images, tmp_path):
    """An upload killed before its index: the next machine decodes, then uploads what is missing."""
    bucket = Storage(str(tmp_path / "bucket"))
    first = prepared.prepare(images, 64, str(tmp_path / "machine-a"), copy=bucket)
    key = os.path.basename(first.folder)
    bucket.delete(f"{key}/index.json")
    lost = f"{key}/images/{os.path.basename(first.files[images[5]])}"
    bucket.delete(lost)
    second = prepared.prepare(moved(images, tmp_path / "b"), 64, str(tmp_path / "machine-b"), copy=bucket)
    assert (second.decoded, second.fetched) == (len(images), 0)
    assert bucket.exists(f"{key}/index.json") and bucket.exists(lost)
    third = prepared.prepare(moved(images, tmp_path / "c"), 64, str(tmp_path / "machine-c"), copy=bucket)
    assert (third.decoded, third.fetched) == (0, len(images))


def test_a_bucket_that_fails_leaves_the_trial_its_own_set(images, tmp_path, caplog):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    got = prepared.prepare(images, 64, str(tmp_path / "machine"), copy=Storage(str(blocked / "prepared")))
    assert got is not None and (got.decoded, got.fetched) == (len(images), 0) and got.verify()
    assert "not copied to" in caplog.text
