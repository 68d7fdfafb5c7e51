"""Classification's training augmentation for whole batches on the training device (a GPU, where the
per-image CPU transforms of presets.py starve it), the same code on the CPU.

Split in three:

- per image, in the dataset (`sample_transform`): the decoded image as it is (a prepared image,
  trainer/prepared.py, is already at the decode size: the CPU only copies its pixels) and the
  random parameters of its augmentation, drawn as the preset's per-image transform draws them
  (torchvision.transforms.v2's own `make_params`, in the same order): the same crop boxes, flips
  and jitter factors as the per-image path. ImageDataset draws them under a generator seeded by
  augmentation_seed(seed, epoch, index), so an image's parameters do not depend on the batch it is
  in, the loader workers or the device, and a resumed epoch draws what the first attempt drew;
- per batch, `collate`: the images padded to the batch's largest, and their parameters stacked;
- per batch, on the device (`BatchAugment`): every image's crop box resized to crop_size in one
  `torchvision.ops.roi_align` call (v2's resized_crop takes one box per call: a launch per image),
  flips and colour jitter as per-image blends, then BatchNormalize's normalisation.

Used by image classification and multi-label classification; detection keeps its per-image path
(its boxes and masks move with each crop). Selected by AUTOML_IMAGES_BATCH_AUGMENT ("1" on, "0" off);
by default on where the trainer trains on CUDA (distributed.device_for: whenever CUDA is available),
off on the CPU, whose results stay those of the per-image path.

The pixels differ slightly from the per-image path's: roi_align averages ceil(scale)² bilinear
samples per output pixel where Resize filters with an antialiasing kernel (translate's resize and
crop become one resize of the crop's box), and the jitter blends float pixels where ColorJitter
rounds to 8 bits after each step (tests/trainer/test_batch_augment.py states the tolerance). The
resize is bilinear whatever Preprocessing.interpolation says (no setting changes it today).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import default_collate
from torchvision.ops import roi_align
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

from . import presets
from .presets import Preprocessing

BATCH_AUGMENT_ENV = "AUTOML_IMAGES_BATCH_AUGMENT"

# The columns of one image's parameters (a float32 row): crop box (in the decoded image's pixels),
# flip (0 or 1), brightness, contrast and saturation factors, and the order the three are applied
# in (ColorJitter's: 0 brightness, 1 contrast, 2 saturation).
TOP, LEFT, HEIGHT, WIDTH, FLIP, BRIGHTNESS, CONTRAST, SATURATION, ORDER = range(9)
PARAMETERS = ORDER + 3


def enabled() -> bool:
    """AUTOML_IMAGES_BATCH_AUGMENT when set; else whether the trainer trains on CUDA (whenever it
    is available: distributed.device_for)."""
    value = os.environ.get(BATCH_AUGMENT_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    if value:
        raise ValueError(f"{BATCH_AUGMENT_ENV} must be 1 or 0, got {value!r}")
    return torch.cuda.is_available()


class _DrawParameters:
    """An 8-bit (3, H, W) image → (the image, its parameters), drawn as the preset's per-image
    transform draws them (the same torchvision `make_params`, in the same order, from torch's
    global RNG, which ImageDataset seeds per image and epoch): the same crops, flips and jitter."""

    def __init__(self, p: Preprocessing):
        presets.check_train_preset(p.train_preset)
        self.resized = p.train_preset == "resized_crop_flip"
        self.resize = p.resize_size
        self.crop_box = T.RandomResizedCrop(p.crop_size, scale=presets.RESIZED_CROP_SCALE)
        self.random_crop = T.RandomCrop(p.crop_size)
        self.jitter = T.ColorJitter(presets.COLOR_JITTER, presets.COLOR_JITTER, presets.COLOR_JITTER)

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        row = torch.zeros(PARAMETERS, dtype=torch.float32)
        row[BRIGHTNESS:SATURATION + 1] = 1.0
        row[ORDER:] = torch.arange(3)
        if self.resized:
            box = self.crop_box.make_params([image])
            row[[TOP, LEFT, HEIGHT, WIDTH]] = torch.tensor(
                [box["top"], box["left"], box["height"], box["width"]], dtype=torch.float32)
            row[FLIP] = float(torch.rand(1) < 0.5)   # RandomHorizontalFlip's draw
            jitter = self.jitter.make_params([image])
            row[BRIGHTNESS:SATURATION + 1] = torch.tensor(
                [jitter["brightness_factor"], jitter["contrast_factor"], jitter["saturation_factor"]])
            row[ORDER:] = jitter["fn_idx"][jitter["fn_idx"] < 3].float()   # hue (3) is not jittered
        else:   # translate: Resize (short side), then RandomCrop; the crop's box in this image's pixels
            height, width = image.shape[-2:]
            short, long = sorted((height, width))
            resized = (self.resize, int(self.resize * long / short))   # Resize's rounding
            resized_height, resized_width = resized if height <= width else resized[::-1]
            # A stand-in of the resized image's shape (no pixels) for RandomCrop's draw.
            box = self.random_crop.make_params([torch.zeros((), dtype=torch.uint8).expand(3, resized_height,
                                                                                          resized_width)])
            sy, sx = height / resized_height, width / resized_width
            row[[TOP, LEFT, HEIGHT, WIDTH]] = torch.tensor(
                [box["top"] * sy, box["left"] * sx, box["height"] * sy, box["width"] * sx], dtype=torch.float32)
        return image, row


def sample_transform(p: Preprocessing) -> Callable[[Any], tuple[torch.Tensor, torch.Tensor]]:
    """PIL image → (its 8-bit (3, H, W) tensor, its augmentation parameters): nothing resized here."""
    return T.Compose([T.PILToTensor(), _DrawParameters(p)])


def collate(batch: Sequence[tuple[Any, Any]]) -> Any:
    """Batches of `sample_transform`'s items: [images padded to the batch's largest (N, 3, H, W),
    parameters (N, PARAMETERS)], targets. Each image's last row and column are repeated once into
    the padding: roi_align's bilinear samples next to an image's edge read one pixel past it.
    The batch is channels-last in memory, as PIL's pixels are: copying rows of pixels rather than
    transposing each image to planes halves the collate's time (a 499×666 photo: 0.44 ms, padding
    included, against 0.93 ms).
    Other batches (validation's tensors) are stacked by torch's default_collate."""
    if not isinstance(batch[0][0], tuple):
        return default_collate(batch)
    images = [image.permute(1, 2, 0) for (image, _), _ in batch]   # (H, W, 3) views of PIL's layout
    height, width = max(i.shape[0] for i in images), max(i.shape[1] for i in images)
    out = torch.zeros((len(images), height, width, 3), dtype=torch.uint8)
    for slot, image in zip(out, images):
        h, w = image.shape[:2]
        slot[:h, :w] = image
        slot[:h, w:w + 1] = image[:, -1:]
        slot[h:h + 1, :w + 1] = slot[h - 1:h, :w + 1]
    parameters = torch.stack([row for (_, row), _ in batch])
    return [out.permute(0, 3, 1, 2), parameters], default_collate([target for _, target in batch])


class BatchAugment:
    """A training batch [8-bit images (N, 3, H, W), parameters (N, PARAMETERS)] on the device →
    augmented, normalised float32 (N, 3, crop, crop) (the training loop puts it in the model's
    memory format). A batch that is a tensor (validation's) is only normalised."""

    def __init__(self, p: Preprocessing, device: torch.device | str = "cpu"):
        self.crop = p.crop_size
        self.flip_and_jitter = p.train_preset == "resized_crop_flip"
        self.normalize = presets.BatchNormalize(p, device)

    def __call__(self, batch: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(batch, torch.Tensor):
            return self.normalize(batch)
        images, parameters = batch
        return self.augment(images, parameters).sub_(self.normalize.mean).div_(self.normalize.std)

    def augment(self, images: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
        """Float pixels in [0, 1], before normalisation."""
        parameters = parameters.to(torch.float32)
        x = images.to(torch.float32).div_(255.0)
        corner = parameters[:, [LEFT, TOP]]
        index = torch.arange(len(x), device=x.device, dtype=torch.float32).unsqueeze(1)
        boxes = torch.cat([index, corner, corner + parameters[:, [WIDTH, HEIGHT]]], dim=1)
        # aligned: box edges on pixel edges. sampling_ratio 0: ceil(box / crop) bilinear samples per
        # output pixel and side, averaged (a box filter when shrinking; the pixel itself for a crop
        # of crop_size at whole-pixel offsets).
        x = roi_align(x, boxes, output_size=self.crop, spatial_scale=1.0, sampling_ratio=0, aligned=True)
        if not self.flip_and_jitter:
            return x
        flip = parameters[:, FLIP].view(-1, 1, 1, 1) > 0.5
        x = torch.where(flip, F.horizontal_flip(x), x)
        for step in range(3):
            x = self._jitter_step(x, parameters, parameters[:, ORDER + step].long())
        return x

    @staticmethod
    def _jitter_step(x: torch.Tensor, parameters: torch.Tensor, op: torch.Tensor) -> torch.Tensor:
        """Each image's `op`: ColorJitter's blends (torchvision's adjust_brightness, adjust_contrast,
        adjust_saturation on float images) with a factor per image: image·f + other·(1 − f),
        clamped, where other is black, the mean grey level, or the grey image."""
        factor = parameters[:, BRIGHTNESS:SATURATION + 1].gather(1, op.unsqueeze(1)).view(-1, 1, 1, 1)
        grey = F.rgb_to_grayscale(x)
        op = op.view(-1, 1, 1, 1)
        other = torch.where(op == 2, grey, grey.mean(dim=(-3, -2, -1), keepdim=True) * (op == 1))
        return x.mul(factor).add_(other * (1.0 - factor)).clamp_(0.0, 1.0)
