"""Image transforms for classification, picked by name (torchvision references' `presets.py`).

`Preprocessing` records everything the validation transform depends on; export saves it next to
the weights, so a served model sees images exactly as validation did.

The trainer builds the transforms with `normalize=False`: each image stops at an 8-bit tensor, and
`BatchNormalize` turns the whole batch into normalised floats where the model runs. Per image on
the CPU, the float conversion and normalisation cost more than decoding and resizing (torch spreads
each small op over its threads), and an 8-bit batch is a quarter of the bytes to copy to a GPU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torchvision.transforms import v2 as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# resized_crop_flip's random crops (fractions of the image's area) and colour jitter (brightness,
# contrast and saturation factors drawn from 1 ± this); batch_augment.py draws the same.
RESIZED_CROP_SCALE = (0.25, 1.0)
COLOR_JITTER = 0.3


@dataclass(frozen=True)
class Preprocessing:
    resize_size: int
    crop_size: int
    train_preset: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        return cls(resize_size=int(data["resize_size"]), crop_size=int(data["crop_size"]),
                   train_preset=data["train_preset"], mean=tuple(data["mean"]), std=tuple(data["std"]),
                   interpolation=data["interpolation"])


def _interpolation(name: str) -> T.InterpolationMode:
    try:
        return T.InterpolationMode(name)
    except ValueError:
        known = ", ".join(m.value for m in T.InterpolationMode)
        raise ValueError(f"unknown interpolation {name!r}; known: {known}") from None


def _to_normalized_tensor(p: Preprocessing, normalize: bool = True) -> list[Callable]:
    if not normalize:
        return [T.PILToTensor()]
    return [T.PILToTensor(), T.ToDtype(torch.float32, scale=True), T.Normalize(p.mean, p.std)]


class BatchNormalize:
    """8-bit image batches (N, C, H, W) to normalised float32, as ToDtype(scale=True) followed by
    Normalize do per image, on the batch's device; the memory format (channels-last) is kept."""

    def __init__(self, p: Preprocessing, device: torch.device | str = "cpu"):
        self.mean = torch.tensor(p.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(p.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)


def _translate(p: Preprocessing, normalize: bool = True) -> Callable:
    """Resize, then a random crop: small shifts only. The validation transform with the centre crop
    made random, so train and validation images have the same scale. Safe for any image: no flip
    (a mirrored digit or letter is another class), no scale change."""
    return T.Compose([T.Resize(p.resize_size, interpolation=_interpolation(p.interpolation), antialias=True),
                      T.RandomCrop(p.crop_size), *_to_normalized_tensor(p, normalize)])


def _resized_crop_flip(p: Preprocessing, normalize: bool = True) -> Callable:
    """Azure AutoML's classification augmentation: random scale and aspect crops, horizontal flips
    and colour jitter. Better for photos; wrong for data whose mirror image means something else."""
    return T.Compose([T.RandomResizedCrop(p.crop_size, scale=RESIZED_CROP_SCALE,
                                          interpolation=_interpolation(p.interpolation), antialias=True),
                      T.RandomHorizontalFlip(),
                      T.ColorJitter(brightness=COLOR_JITTER, contrast=COLOR_JITTER, saturation=COLOR_JITTER),
                      *_to_normalized_tensor(p, normalize)])


TRAIN_PRESETS: dict[str, Callable[..., Callable]] = {
    "translate": _translate,
    "resized_crop_flip": _resized_crop_flip,
}
# No hyperparameter picks the preset yet, and flips would hurt the demo's handwritten digits.
DEFAULT_TRAIN_PRESET = "translate"


def check_train_preset(name: str) -> None:
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown train preset {name!r}; known: {', '.join(TRAIN_PRESETS)}")


def train_transform(p: Preprocessing, normalize: bool = True) -> Callable:
    """PIL image → normalised float tensor; with `normalize=False`, → 8-bit tensor (see BatchNormalize)."""
    check_train_preset(p.train_preset)
    return TRAIN_PRESETS[p.train_preset](p, normalize)


def decode_size(p: Preprocessing, train: bool) -> int:
    """The shortest side the transform needs from the decoder: JPEGs are decoded at the smallest
    scale (1/2, 1/4, 1/8) that keeps both sides at least this (see data.open_image)."""
    if train and p.train_preset == "resized_crop_flip":
        return 2 * p.crop_size  # its smallest crop, a quarter of the area, is resized to crop_size
    return p.resize_size


def eval_transform(p: Preprocessing, normalize: bool = True) -> Callable:
    return T.Compose([T.Resize(p.resize_size, interpolation=_interpolation(p.interpolation), antialias=True),
                      T.CenterCrop(p.crop_size), *_to_normalized_tensor(p, normalize)])
