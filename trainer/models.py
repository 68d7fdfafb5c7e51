"""Building the networks of the model registry (`automl_images.core.models`): torchvision's
classifiers and detector backbones, the architectures torchvision lacks, pretrained weights from the
weights cache or torchvision's download, and `layers_to_freeze`.

Pretrained weights come from the weights cache first (a folder or bucket prefix: the job's
`weights_cache` or $AUTOML_IMAGES_WEIGHTS_CACHE), as files named as below; the torchvision models
then fall back to torchvision's download. `seresnext` and `vits16r224` have no torchvision weights,
so the cache is their only source: a state dict of the architecture built here (keys as
`build_classifier(name, 1000, pretrained=False).state_dict()` names them), in the file
`ModelInfo.weights_file` (`seresnext50_32x4d.pth`, `vit_s_16.pth`). timm's `seresnext50_32x4d`
has the same module names: its state dict, saved with torch.save, loads as it is (checked: strict
load, identical outputs). timm's ViT-S names its modules differently and needs converting.

Every weight file is loaded by `weights.py`: no pickled code runs, and the hash that torchvision's
file names publish is checked.
"""
from __future__ import annotations

import os
from typing import Callable

from automl_images.core.models import FROZEN_WITH, ModelInfo, get

# Environment variable naming a folder or bucket prefix that holds pretrained weight files, as
# torchvision names them (e.g. resnet18-f37072fd.pth). Checked before any download.
WEIGHTS_CACHE_ENV = "AUTOML_IMAGES_WEIGHTS_CACHE"

# -- architectures torchvision does not have ------------------------------------------------------

def se_resnext50_32x4d(num_classes: int = 1000):
    """SE-ResNeXt-50 32x4d (Hu et al., "Squeeze-and-Excitation Networks"): torchvision's ResNeXt-50
    32x4d with a squeeze-and-excitation block (reduction 16) on each bottleneck's residual branch,
    before the shortcut is added."""
    from torchvision.models.resnet import Bottleneck, ResNet
    from torchvision.ops import SqueezeExcitation

    class SEBottleneck(Bottleneck):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            channels = self.conv3.out_channels
            self.se = SqueezeExcitation(channels, channels // 16)

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.se(self.bn3(self.conv3(out)))
            return self.relu(out + identity)

    return ResNet(SEBottleneck, [3, 4, 6, 3], num_classes=num_classes, groups=32, width_per_group=4)


def vit_s_16(num_classes: int = 1000):
    """ViT-S/16 (DeiT-S / timm's vit_small_patch16_224 shape) as a torchvision VisionTransformer."""
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=224, patch_size=16, num_layers=12, num_heads=6, hidden_dim=384,
                             mlp_dim=1536, num_classes=num_classes)


def _timm(name: str) -> Callable:
    """timm's architecture `name`, untrained (its own pretrained weights would be a download)."""
    def build(num_classes: int = 1000):
        import timm

        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    return build


_BUILDERS: dict[str, Callable] = {"se_resnext50_32x4d": se_resnext50_32x4d, "vit_s_16": vit_s_16,
                                  "resnest50d": _timm("resnest50d"), "resnest101e": _timm("resnest101e")}


def build_classifier(name: str, num_classes: int, pretrained: bool, weights_cache: str | None = None):
    """A classifier with its head replaced for `num_classes` outputs. Raises ValueError for a model
    this trainer cannot build, or pretrained weights that have no source."""
    import torch
    import torchvision

    info = get(name)
    if info.torchvision_name is None and info.builder is None:
        raise ValueError(f"model {info.name!r} is not a classifier")
    if info.builder is not None:
        model = _BUILDERS[info.builder]()
    else:
        builder: Callable = getattr(torchvision.models, info.torchvision_name)
        model = builder(weights=None)
    if pretrained:
        model.load_state_dict(_pretrained_state_dict(info, weights_cache))
    if hasattr(model, "fc"):              # ResNets, SE-ResNeXt
        model.fc = torch.nn.Linear(model.fc.in_features, num_classes)
    elif hasattr(model, "heads"):         # VisionTransformer
        model.heads.head = torch.nn.Linear(model.heads.head.in_features, num_classes)
    else:                                 # mobilenet_v2
        last = model.classifier[-1]
        model.classifier[-1] = torch.nn.Linear(last.in_features, num_classes)
    return model


def _pretrained_state_dict(info: ModelInfo, weights_cache: str | None):
    """ImageNet weights of a classifier (see `load_weights`)."""
    import torchvision

    if info.weights_file is not None:
        return load_weights(info.weights_file, weights_cache, info.name)
    return load_weights(None, weights_cache, info.name,
                        torchvision.models.get_model_weights(info.torchvision_name).DEFAULT)


def load_weights(file_name: str | None, weights_cache: str | None, model_name: str, weights_enum=None):
    """A state dict from the weights cache (a folder or a bucket prefix) when the file is there,
    else from torchvision's download of `weights_enum` through torch.hub's cache (which needs the
    network the first time; its file name is the one looked up when `file_name` is None). Without
    `weights_enum` there is no download: ValueError when the file is not in the cache. Loaded by
    `weights` (no code runs, the name's published hash is checked): a weights-cache file that fails
    is a WeightsError (a ValueError naming it), never replaced by a download, as it is the user's."""
    from . import weights

    file_name = file_name or os.path.basename(weights_enum.url)
    cache = weights_cache or os.environ.get(WEIGHTS_CACHE_ENV)
    if cache:
        from automl_images.core.storage import Storage

        store = Storage(cache)
        if store.exists(file_name):
            return weights.load_published(store.read_bytes(file_name), file_name, store.url(file_name))
    if weights_enum is None:
        raise ValueError(f"pretrained weights for {model_name} have no download source: put {file_name} (a "
                         f"state dict of this architecture) in the weights cache "
                         f"({cache or f'not set: weights_cache or ${WEIGHTS_CACHE_ENV}'}), or set pretrained=0")
    return weights.from_torch_hub(weights_enum.url)


def weights_download_error(model_name: str, weights_cache: str | None, exc: OSError) -> ConnectionError:
    """What a failed download of pretrained weights says. It stays an OSError: retrying may help."""
    return ConnectionError(
        f"pretrained weights for {model_name} are not in the weights cache ({weights_cache or 'not set'}) "
        f"and the download failed: {exc}. Put the torchvision weight file in the weights cache, or set "
        f"pretrained=0")


def freeze_layers(model, name: str, count: int) -> list[str]:
    """Freeze the first `count` freezable layers of `model`; returns their names."""
    info = get(name)
    if count > len(info.freezable_layers):
        raise ValueError(f"layers_to_freeze={count} but {info.name} has {len(info.freezable_layers)} "
                         f"freezable layers: {', '.join(info.freezable_layers)}")
    frozen = info.freezable_layers[:count]
    prefixes = tuple(frozen) + tuple(extra for layer in frozen for extra in FROZEN_WITH.get(layer, ()))
    for param_name, param in model.named_parameters():
        if any(param_name == p or param_name.startswith(p + ".") for p in prefixes):
            param.requires_grad_(False)
    return list(frozen)
