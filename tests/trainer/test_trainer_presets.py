"""Transform presets: picked by name, loud on unknown names, recorded for export."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from automl_images.trainer import presets


@pytest.mark.parametrize("name", sorted(presets.TRAIN_PRESETS))
def test_train_presets_give_normalized_crops(name):
    p = presets.Preprocessing(resize_size=36, crop_size=32, train_preset=name)
    image = Image.new("RGB", (8, 12), (255, 255, 255))
    out = presets.train_transform(p)(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert presets.eval_transform(p)(image).shape == (3, 32, 32)


def test_eval_transform_is_resize_then_centre_crop():
    p = presets.Preprocessing(resize_size=8, crop_size=4, train_preset=presets.DEFAULT_TRAIN_PRESET)
    image = Image.new("RGB", (8, 8), (0, 0, 0))
    image.paste((255, 255, 255), (2, 2, 6, 6))  # a white centre: the crop keeps only it
    out = presets.eval_transform(p)(image)
    white = (torch.tensor(1.0) - torch.tensor(presets.IMAGENET_MEAN)) / torch.tensor(presets.IMAGENET_STD)
    assert torch.allclose(out, white[:, None, None].expand(3, 4, 4), atol=1e-5)


def test_unknown_names_fail_loudly():
    with pytest.raises(ValueError, match="unknown train preset 'fancy'"):
        presets.train_transform(presets.Preprocessing(36, 32, "fancy"))
    with pytest.raises(ValueError, match="unknown interpolation"):
        presets.eval_transform(presets.Preprocessing(36, 32, "translate", interpolation="cubic-ish"))


def test_preprocessing_round_trips_through_json():
    p = presets.Preprocessing(256, 224, "translate")
    assert presets.Preprocessing.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("name", sorted(presets.TRAIN_PRESETS))
def test_batch_normalisation_equals_the_per_image_transform(name):
    """The trainer's split (8-bit per image, normalised per batch) gives the exported model's inputs."""
    import numpy as np

    p = presets.Preprocessing(resize_size=20, crop_size=16, train_preset=name)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (24, 30, 3), dtype=np.uint8))
              for i in range(3)]
    whole = torch.stack([presets.eval_transform(p)(image) for image in images])
    eight_bit = torch.stack([presets.eval_transform(p, normalize=False)(image) for image in images])
    assert eight_bit.dtype == torch.uint8
    assert torch.allclose(presets.BatchNormalize(p)(eight_bit), whole, atol=1e-6)
    channels_last = presets.BatchNormalize(p)(eight_bit.contiguous(memory_format=torch.channels_last))
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    torch.manual_seed(0)
    a = presets.train_transform(p)(images[0])
    torch.manual_seed(0)
    b = presets.BatchNormalize(p)(presets.train_transform(p, normalize=False)(images[0])[None])[0]
    assert torch.allclose(a, b, atol=1e-6)


def test_decode_size_keeps_what_each_transform_needs():
    p = presets.Preprocessing(resize_size=256, crop_size=224, train_preset="translate")
    assert presets.decode_size(p, train=True) == presets.decode_size(p, train=False) == 256
    flips = presets.Preprocessing(resize_size=256, crop_size=224, train_preset="resized_crop_flip")
    assert presets.decode_size(flips, train=True) == 448 and presets.decode_size(flips, train=False) == 256
