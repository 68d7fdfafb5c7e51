"""The model registry: every model name of Azure AutoML for Images, what task it serves, how to
build it, and which of its layers `layers_to_freeze` counts.

An explicit table, never `module.__dict__[name]`: an unknown name fails loudly, and a known model
that this trainer cannot build yet says so instead of falling back to another.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from .hyperparameters import CLASSIFICATION_TASKS, Task

# Environment variable naming a folder or bucket prefix that holds pretrained weight files, as
# torchvision names them (e.g. resnet18-f37072fd.pth). Checked before any download.
WEIGHTS_CACHE_ENV = "AUTOML_IMAGES_WEIGHTS_CACHE"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    tasks: tuple[Task, ...]
    description: str
    torchvision_name: str | None = None       # builder in torchvision.models
    freezable_layers: tuple[str, ...] = ()    # module name prefixes, input side first
    fixed_input_size: int | None = None       # models that accept only one crop size
    available: bool = True                    # False: known name, not yet built by this trainer
    aliases: tuple[str, ...] = field(default=())


_RESNET_LAYERS = ("conv1", "layer1", "layer2", "layer3", "layer4")  # conv1 also covers bn1
_MOBILENET_LAYERS = tuple(f"features.{i}" for i in range(19))

_MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("resnet18", CLASSIFICATION_TASKS, "ResNet-18 (torchvision)", "resnet18", _RESNET_LAYERS),
    ModelInfo("resnet34", CLASSIFICATION_TASKS, "ResNet-34 (torchvision)", "resnet34", _RESNET_LAYERS),
    ModelInfo("resnet50", CLASSIFICATION_TASKS, "ResNet-50 (torchvision)", "resnet50", _RESNET_LAYERS),
    ModelInfo("mobilenetv2", CLASSIFICATION_TASKS, "MobileNetV2 (torchvision)", "mobilenet_v2",
              _MOBILENET_LAYERS, aliases=("mobilenet_v2",)),
    ModelInfo("seresnext", CLASSIFICATION_TASKS, "SE-ResNeXt-50 32x4d", fixed_input_size=224,
              available=False),
    ModelInfo("vits16r224", CLASSIFICATION_TASKS, "ViT-S/16 at 224 px", fixed_input_size=224,
              available=False),
    ModelInfo("vitb16r224", CLASSIFICATION_TASKS, "ViT-B/16 at 224 px", fixed_input_size=224,
              available=False),
    ModelInfo("vitl16r224", CLASSIFICATION_TASKS, "ViT-L/16 at 224 px", fixed_input_size=224,
              available=False),
    ModelInfo("yolov5", (Task.OBJECT_DETECTION,), "YOLOv5", available=False),
    ModelInfo("fasterrcnn_resnet50_fpn", (Task.OBJECT_DETECTION,), "Faster R-CNN ResNet-50 FPN",
              available=False),
    ModelInfo("fasterrcnn_resnet34_fpn", (Task.OBJECT_DETECTION,), "Faster R-CNN ResNet-34 FPN",
              available=False),
    ModelInfo("fasterrcnn_resnet18_fpn", (Task.OBJECT_DETECTION,), "Faster R-CNN ResNet-18 FPN",
              available=False),
    ModelInfo("retinanet_resnet50_fpn", (Task.OBJECT_DETECTION,), "RetinaNet ResNet-50 FPN",
              available=False),
    ModelInfo("maskrcnn_resnet50_fpn", (Task.INSTANCE_SEGMENTATION,), "Mask R-CNN ResNet-50 FPN",
              available=False),
)

MODELS: dict[str, ModelInfo] = {m.name: m for m in _MODELS}
ALIASES: dict[str, str] = {alias: m.name for m in _MODELS for alias in m.aliases}


def canonical_name(name: str) -> str:
    """The registry name for `name` (`mobilenet_v2` → `mobilenetv2`); unknown names unchanged."""
    return ALIASES.get(name, name)


def get(name: str) -> ModelInfo:
    name = canonical_name(name)
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def models_for(task: Task) -> list[ModelInfo]:
    return [m for m in _MODELS if task in m.tasks]


def build_classifier(name: str, num_classes: int, pretrained: bool, weights_cache: str | None = None):
    """A torchvision classifier with its head replaced for `num_classes` outputs."""
    import torch
    import torchvision

    info = get(name)
    if not info.available or info.torchvision_name is None:
        raise ValueError(f"model {info.name!r} is not available in this trainer version")
    builder: Callable = getattr(torchvision.models, info.torchvision_name)
    model = builder(weights=None)
    if pretrained:
        model.load_state_dict(_pretrained_state_dict(info.torchvision_name, weights_cache))
    if info.torchvision_name.startswith("resnet"):
        model.fc = torch.nn.Linear(model.fc.in_features, num_classes)
    else:  # mobilenet_v2
        last = model.classifier[-1]
        model.classifier[-1] = torch.nn.Linear(last.in_features, num_classes)
    return model


def _pretrained_state_dict(torchvision_name: str, weights_cache: str | None):
    """ImageNet weights: from the weights cache (a folder or a bucket prefix) when the file is there,
    else torchvision's own download (which needs the network)."""
    import io

    import torch
    import torchvision

    weights_enum = torchvision.models.get_model_weights(torchvision_name).DEFAULT
    file_name = os.path.basename(weights_enum.url)
    cache = weights_cache or os.environ.get(WEIGHTS_CACHE_ENV)
    if cache:
        from .storage import Storage

        store = Storage(cache)
        if store.exists(file_name):
            return torch.load(io.BytesIO(store.read_bytes(file_name)), map_location="cpu", weights_only=True)
    return weights_enum.get_state_dict(progress=False)


def freeze_layers(model, name: str, count: int) -> list[str]:
    """Freeze the first `count` freezable layers of `model`; returns their names."""
    info = get(name)
    if count > len(info.freezable_layers):
        raise ValueError(f"layers_to_freeze={count} but {info.name} has {len(info.freezable_layers)} "
                         f"freezable layers: {', '.join(info.freezable_layers)}")
    frozen = info.freezable_layers[:count]
    prefixes = tuple(frozen) + (("bn1",) if "conv1" in frozen else ())
    for param_name, param in model.named_parameters():
        if param_name.startswith(tuple(p + "." for p in prefixes)):
            param.requires_grad_(False)
    return list(frozen)
