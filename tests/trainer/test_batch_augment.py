"""Batch augmentation on the training device (trainer/batch_augment.py), run here on the CPU (the same
code as on CUDA): reproducible batches, per-image parameters independent of the batch, outputs of the
right shape and range, close to today's per-image path, and a killed-and-resumed trial equal to an
uninterrupted one with the batch path on. Then the batched JPEG decoder of the prepared images
(trainer/prepared.py), also run on the CPU: its choice, its tolerance, and PIL as its fallback."""
from __future__ import annotations

import io
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from test_trainer_resume import kill_in_epoch_2, trial_env
from torchvision.transforms.v2 import functional as F
from trial_data import CLI, write_dataset, write_spec

from automl_images.core.annotations import Record
from automl_images.core.hyperparameters import Task
from automl_images.core.layout import FILES
from automl_images.core.storage import Storage
from automl_images.trainer import batch_augment, data, engine, prepared, presets, run
from automl_images.trainer.batch_augment import BatchAugment
from automl_images.trainer.tasks import get_adapter

CROP = 32


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def preprocessing(preset: str) -> presets.Preprocessing:
    return presets.Preprocessing(resize_size=40, crop_size=CROP, train_preset=preset)


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[data.Sample]:
    """Ten photos-like images of varied sizes and aspect ratios."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    out = []
    for i in range(10):
        height, width = 48 + 7 * i, 90 - 4 * i
        gradient = np.linspace(0, 255, width)[None, :, None] * np.array([1.0, 0.5, 0.2])
        pixels = np.clip(gradient + rng.normal(0, 30, (height, width, 3)), 0, 255).astype(np.uint8)
        path = str(folder / f"{i}.png")
        Image.fromarray(pixels).save(path)
        out.append(data.Sample(Record("train.jsonl", i + 1, path, "x"), path))
    return out


def dataset(samples, preset: str, seed: int = 5) -> data.ImageDataset:
    p = preprocessing(preset)
    return data.ImageDataset(samples, [0] * len(samples), batch_augment.sample_transform(p), seed=seed,
                             min_size=presets.decode_size(p, train=True))


def stacked(made: data.ImageDataset, epoch: int, indices) -> list[torch.Tensor]:
    """The training batch of `indices` (collated as the trainer does): [images, parameters]."""
    inputs, _ = batch_augment.collate([made[(epoch, i)] for i in indices])
    return inputs


def epoch_batches(made: data.ImageDataset, preset: str, epoch: int, batch_size: int = 4) -> list[torch.Tensor]:
    loader = engine.make_loader(made, batch_size, train=True, device=torch.device("cpu"), seed=5, workers=0,
                                collate_fn=batch_augment.collate)
    loader.batch_sampler.set_epoch(epoch)
    augment = BatchAugment(preprocessing(preset))
    return [augment(inputs) for inputs, _ in loader]


@pytest.mark.parametrize("preset", list(presets.TRAIN_PRESETS))
def test_same_seeds_give_the_same_batches(samples, preset):
    first = epoch_batches(dataset(samples, preset), preset, epoch=2)
    again = epoch_batches(dataset(samples, preset), preset, epoch=2)
    assert len(first) == 3 and all(torch.equal(a, b) for a, b in zip(first, again))
    other_epoch = epoch_batches(dataset(samples, preset), preset, epoch=3)
    assert not torch.equal(torch.cat(first).sum(0), torch.cat(other_epoch).sum(0))


@pytest.mark.parametrize("preset", list(presets.TRAIN_PRESETS))
def test_an_image_is_augmented_alike_in_any_batch(samples, preset):
    made = dataset(samples, preset)
    augment = BatchAugment(preprocessing(preset))

    # The batch of eight pads the images to a larger size than the batch of four.
    four, eight = augment(stacked(made, 1, [0, 1, 2, 3])), augment(stacked(made, 1, [7, 3, 5, 6, 0, 9, 2, 1]))
    for i, position in ((0, 4), (1, 7), (2, 6), (3, 1)):
        # Equal up to float rounding: at an image's last row or column, roi_align weighs the pixel
        # with itself (its copy in the padding) in a larger batch, and with nothing past the tensor's edge.
        assert torch.allclose(four[i], eight[position], rtol=0, atol=1e-5), i


@pytest.mark.parametrize("preset", list(presets.TRAIN_PRESETS))
def test_outputs_have_the_crop_size_and_range(samples, preset):
    made = dataset(samples, preset)
    (image, parameters), target = made[(1, 9)]
    assert image.shape == (3, 111, 54) and image.dtype == torch.uint8 and target == 0   # the image as decoded
    assert parameters.shape == (batch_augment.PARAMETERS,)
    images, parameters = stacked(made, 1, range(10))
    assert images.shape == (10, 3, 111, 90) and torch.equal(images[9, :, :, :54], image)
    augment = BatchAugment(preprocessing(preset))
    pixels = augment.augment(images, parameters)
    assert pixels.shape == (10, 3, CROP, CROP) and pixels.dtype == torch.float32
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0
    assert images.is_contiguous(memory_format=torch.channels_last)   # as PIL's pixels are
    out = augment([images.contiguous(), parameters])   # the same from either memory format
    assert out.shape == (10, 3, CROP, CROP) and torch.allclose(out, augment([images, parameters]), rtol=0, atol=1e-6)
    p = preprocessing(preset)
    assert torch.allclose(out, (pixels - torch.tensor(p.mean).view(1, 3, 1, 1)) / torch.tensor(p.std).view(1, 3, 1, 1),
                          atol=1e-5)
    # A validation batch is only normalised.
    validation = torch.randint(0, 256, (2, 3, CROP, CROP), dtype=torch.uint8)
    assert torch.equal(augment(validation), presets.BatchNormalize(p)(validation))


def test_translate_crops_of_images_at_the_resize_size_are_the_pixels():
    """An image whose short side is resize_size is not resized: its crops are its pixels."""
    transform = batch_augment.sample_transform(preprocessing("translate"))
    rng = np.random.default_rng(1)
    items = [transform(Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8))) for size in
             ((40, 57, 3), (63, 40, 3), (40, 40, 3))]
    images, parameters = batch_augment.collate([(item, 0) for item in items])[0]
    pixels = BatchAugment(preprocessing("translate")).augment(images, parameters)
    for (image, row), out in zip(items, pixels):
        top, left = int(row[batch_augment.TOP]), int(row[batch_augment.LEFT])
        assert row[batch_augment.HEIGHT] == row[batch_augment.WIDTH] == CROP
        assert torch.equal(out * 255, image[:, top:top + CROP, left:left + CROP].float())


@pytest.mark.parametrize("preset", list(presets.TRAIN_PRESETS))
def test_the_batch_path_is_close_to_todays_per_image_path(samples, preset):
    """The same seed gives the same crops, flips and jitter as the preset's per-image transform;
    the pixels differ by the resize (roi_align's box filter against Resize's antialiasing kernel)
    and the jitter's 8-bit rounding, most on these noisy images: within 0.02 on average and 0.15 at
    most on [0, 1] (measured: up to 0.0137 on average, 0.099 for a pixel)."""
    p = preprocessing(preset)
    per_image, batched = presets.train_transform(p, normalize=False), batch_augment.sample_transform(p)
    reference, items = [], []
    for i, sample in enumerate(samples):
        image = data.open_image(sample.path)
        torch.manual_seed(100 + i)
        reference.append(per_image(image).float() / 255)
        torch.manual_seed(100 + i)
        items.append((batched(image), 0))
    ours = BatchAugment(p).augment(*batch_augment.collate(items)[0])
    for expected, out in zip(reference, ours):
        difference = (out - expected).abs()
        assert difference.mean() < 0.02 and difference.max() < 0.15, (difference.mean(), difference.max())


def test_flip_and_jitter_are_torchvisions(samples):
    """Boxes of crop_size (no resize): the flip and jitter alone, as torchvision's functional ops
    compute them on float images."""
    images, parameters = stacked(dataset(samples, "resized_crop_flip"), 2, range(len(samples)))
    parameters[:, [batch_augment.TOP, batch_augment.LEFT]] = 3.0
    parameters[:, [batch_augment.HEIGHT, batch_augment.WIDTH]] = float(CROP)
    ours = BatchAugment(preprocessing("resized_crop_flip")).augment(images, parameters)
    adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
    assert parameters[:, batch_augment.FLIP].tolist().count(1.0) not in (0, len(samples))
    for image, row, out in zip(images, parameters, ours):
        x = image[:, 3:3 + CROP, 3:3 + CROP].float() / 255
        if row[batch_augment.FLIP]:
            x = F.horizontal_flip(x)
        for op in row[batch_augment.ORDER:].long().tolist():
            x = adjust[op](x, float(row[batch_augment.BRIGHTNESS + op]))
        assert torch.allclose(out, x, atol=1e-5)


def test_the_setting_and_the_adapter(samples, monkeypatch):
    monkeypatch.delenv(batch_augment.BATCH_AUGMENT_ENV, raising=False)
    assert batch_augment.enabled() == torch.cuda.is_available()
    adapter = get_adapter(Task.CLASSIFICATION, {"model_name": "resnet18", "resize_size": 40, "crop_size": CROP,
                                                "weighted_loss": 0})
    if not torch.cuda.is_available():   # today's per-image path on the CPU
        image, _ = adapter.dataset(samples, [0] * 10, train=True)[(1, 0)]
        assert isinstance(image, torch.Tensor) and image.shape == (3, CROP, CROP)
    monkeypatch.setenv(batch_augment.BATCH_AUGMENT_ENV, "1")
    (image, parameters), _ = adapter.dataset(samples, [0] * 10, train=True)[(1, 0)]
    assert image.dtype == torch.uint8 and parameters.shape == (batch_augment.PARAMETERS,)
    validation, _ = adapter.dataset(samples, [0] * 10, train=False)[0]
    assert validation.shape == (3, CROP, CROP)   # validation keeps its transform
    # Multi-label shares the datasets; its targets (one float per class) are stacked.
    multilabel = get_adapter(Task.MULTI_LABEL, {"model_name": "resnet18", "resize_size": 40, "crop_size": CROP,
                                                "weighted_loss": 0})
    targets = [multilabel.encode(("a",) if i % 2 else ("a", "b"), {"a": 0, "b": 1}) for i in range(10)]
    made = multilabel.dataset(samples, targets, train=True)
    (images, parameters), stacked_targets = multilabel.collate([made[(1, i)] for i in range(4)])
    assert images.shape[:2] == (4, 3) and torch.equal(stacked_targets, torch.stack(targets[:4]))
    out = multilabel.batch_transform(torch.device("cpu"))([images, parameters])
    assert out.shape == (4, 3, CROP, CROP)
    monkeypatch.setenv(batch_augment.BATCH_AUGMENT_ENV, "0")
    assert not batch_augment.enabled()
    monkeypatch.setenv(batch_augment.BATCH_AUGMENT_ENV, "maybe")
    with pytest.raises(ValueError, match="AUTOML_IMAGES_BATCH_AUGMENT must be 1 or 0"):
        batch_augment.enabled()


@pytest.mark.slow  # 14-22 s: two trainer processes and one run here
def test_sigkill_mid_epoch_then_rerun_equals_an_uninterrupted_run_with_batch_augmentation(tmp_path, monkeypatch):
    monkeypatch.setenv(batch_augment.BATCH_AUGMENT_ENV, "1")
    root = Storage(str(tmp_path / "root"))
    train, val = write_dataset(root, per_class=16, size=24)
    # resize 24, crop 16: translate's crops move (the preset trials use today).
    hp = {"model_name": "mobilenetv2", "learning_rate": 0.001, "number_of_epochs": 3, "resize_size": 24,
          "crop_size": 16}
    killed_url = write_spec(root, "killed", train, val, **hp)
    straight_url = write_spec(root, "straight", train, val, **hp)
    killed = Storage(root.url("killed"))
    with open(tmp_path / "trial.log", "wb") as log:
        kill_in_epoch_2(killed_url, killed, trial_env(tmp_path, "killed"), log)
        again = subprocess.run([CLI, "trial", "run", killed_url], env=trial_env(tmp_path, "killed"),
                               stdout=log, stderr=subprocess.STDOUT, timeout=300)
    assert again.returncode == 0, (tmp_path / "trial.log").read_text()[-3000:]
    monkeypatch.setenv("AUTOML_IMAGES_THREADS", "1")
    monkeypatch.setenv("AUTOML_IMAGES_IMAGE_CACHE", str(tmp_path / "cache-straight"))
    augmented = []   # the batches the uninterrupted run augmented: the batch path was taken
    original = BatchAugment.augment
    monkeypatch.setattr(BatchAugment, "augment", lambda self, *a: augmented.append(1) or original(self, *a))
    straight = run.run_trial(straight_url)
    assert len(augmented) == 3 * 12   # 48 training images in batches of 4, 3 epochs
    resumed = killed.read_json(FILES.status)
    assert straight["status"] == resumed["status"] == "completed" and resumed["attempt"] == 2
    assert "resumed from the checkpoint of epoch 1" in killed.read_text("logs/trainer.log")
    assert resumed["history"] == straight["history"]
    weights = [torch.load(io.BytesIO(Storage(root.url(name)).read_bytes(FILES.model_weights)), weights_only=True)
               for name in ("killed", "straight")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


# -- batched JPEG decoding for the prepared images (trainer/prepared.py) ------------------------------------

def jpeg(path, width: int, height: int, seed: int, orientation: int | None = None, mode: str = "RGB") -> str:
    """A smooth photo-like JPEG (a gradient and a blurred blob): what scaled decoding is meant for."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0.2, 0.8, 2)
    blob = np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) * 20)[..., None]
    pixels = 40 + 150 * x[..., None] * rng.uniform(0.3, 1.0, 3) + 60 * blob
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.fromarray(pixels.astype(np.uint8)).convert(mode).save(path, quality=90, exif=exif.tobytes())
    return str(path)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = [jpeg(folder / f"p{i}.jpg", 320 + 16 * i, 240, i, orientation=6 if i == 1 else None) for i in range(4)]
    paths.append(jpeg(folder / "grey.jpg", 300, 200, 4, mode="L"))
    paths.append(jpeg(folder / "cmyk.jpg", 300, 200, 5, mode="CMYK"))   # PIL's
    Image.new("RGB", (90, 70), (10, 200, 30)).save(folder / "q.png")       # PIL's
    return paths + [str(folder / "q.png")]


def test_the_decoder_is_chosen_by_the_setting(monkeypatch):
    monkeypatch.delenv(prepared.DECODE_DEVICE_ENV, raising=False)
    assert prepared.decode_device() == (torch.device("cuda") if torch.cuda.is_available() else None)
    monkeypatch.setenv(prepared.DECODE_DEVICE_ENV, "pil")
    assert prepared.decode_device() is None
    monkeypatch.setenv(prepared.DECODE_DEVICE_ENV, "cpu")
    assert prepared.decode_device() == torch.device("cpu")
    monkeypatch.setenv(prepared.DECODE_DEVICE_ENV, "tpu-please")
    with pytest.raises(ValueError, match="AUTOML_IMAGES_DECODE_DEVICE must be 'pil' or a torch device"):
        prepared.decode_device()


def test_batched_jpeg_decoding_is_close_to_pil(photos):
    """On the CPU (the CUDA path's code): each JPEG at PIL's reduced-scale size, within a few levels
    of PIL's pixels; other images are left to PIL (None)."""
    decoded = prepared.decode_jpegs(photos, 64, "cpu")
    assert decoded[1] is None and decoded[-2] is None and decoded[-1] is None   # EXIF-rotated, CMYK, PNG
    for path, image in [(p, i) for p, i in zip(photos, decoded) if i is not None]:
        reference = data.open_image(path, 64)
        assert image.mode == "RGB" and image.size == reference.size == data.image_size(path, 64)
        difference = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(reference, dtype=np.int16))
        # Measured: 0.15-0.19 on average, 2 at most (smooth images; photos' edges differ more, see prepared.py).
        assert difference.mean() < 0.5 and difference.max() <= 4, (path, difference.mean(), difference.max())
    full = prepared.decode_jpegs(photos[:1], None, "cpu")[0]   # full scale: libjpeg-turbo's pixels, as PIL's
    assert np.array_equal(np.asarray(full), np.asarray(data.open_image(photos[0])))


def test_preparing_with_the_batched_decoder_falls_back_to_pil(photos, tmp_path, monkeypatch):
    monkeypatch.setenv(prepared.DECODE_DEVICE_ENV, "cpu")
    made = prepared.prepare(photos, 64, str(tmp_path / "batched"))
    assert made.decoded == len(photos) and made.verify()
    for path in photos:
        ours, pil = (np.asarray(image, dtype=np.int16) for image in (data.open_image(made.files[path]),
                                                                     data.open_image(path, 64)))
        assert ours.shape == pil.shape and np.abs(ours - pil).mean() < 0.5, path
        if path.endswith(("p1.jpg", "cmyk.jpg", ".png")):   # decoded by PIL
            assert np.array_equal(ours, pil)

    def refuses(*args, **kwargs):   # nvJPEG refusing a batch (an unsupported file, no memory)
        raise RuntimeError("nvjpeg: unsupported")

    monkeypatch.setattr(prepared, "decode_jpeg", refuses)
    fallback = prepared.prepare(photos, 64, str(tmp_path / "fallback"))
    assert fallback.decoded == len(photos)
    for path in photos:   # PIL's pixels, exactly
        assert np.array_equal(np.asarray(data.open_image(fallback.files[path])), np.asarray(data.open_image(path, 64)))
