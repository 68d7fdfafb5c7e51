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
