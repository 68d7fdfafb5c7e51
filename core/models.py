"""The model registry: every model name of Azure AutoML for Images, what task it serves, which
builder makes it, and which of its layers `layers_to_freeze` counts. Torch-free: the controller
validates job files against it; `automl_images.trainer.models` builds the networks.

An explicit table, never `module.__dict__[name]`: an unknown name fails loudly, and a known model
that this trainer cannot build yet says so instead of falling back to another.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .hyperparameters import CLASSIFICATION_TASKS, Task


@dataclass(frozen=True)
class ModelInfo:
    name: str
    tasks: tuple[Task, ...]
    description: str
    torchvision_name: str | None = None       # builder in torchvision.models
    freezable_layers: tuple[str, ...] = ()    # module name prefixes, input side first
    fixed_input_size: int | None = None       # models that accept only one crop size
    aliases: tuple[str, ...] = field(default=())
    builder: str | None = None                # a builder of this module, for models torchvision lacks
    weights_file: str | None = None           # weights-cache file name of a model without a download


_RESNET_LAYERS = ("conv1", "layer1", "layer2", "layer3", "layer4")  # conv1 also covers bn1
_MOBILENET_LAYERS = tuple(f"features.{i}" for i in range(19))
_DETECTOR_LAYERS = tuple(f"backbone.body.{layer}" for layer in _RESNET_LAYERS)


def _vit_layers(depth: int) -> tuple[str, ...]:
    """The patch embedding (conv_proj, with the class token and position embedding), then each
    encoder block. The final LayerNorm and the head always train."""
    return ("conv_proj",) + tuple(f"encoder.layers.encoder_layer_{i}" for i in range(depth))


# Parameters that freeze with a freezable layer without being inside it: the stem's batch norm,
# and the tokens that a ViT adds next to its patch embedding.
FROZEN_WITH = {"conv1": ("bn1",), "backbone.body.conv1": ("backbone.body.bn1",),
                "conv_proj": ("class_token", "encoder.pos_embedding")}

_MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("resnet18", CLASSIFICATION_TASKS, "ResNet-18 (torchvision)", "resnet18", _RESNET_LAYERS),
    ModelInfo("resnet34", CLASSIFICATION_TASKS, "ResNet-34 (torchvision)", "resnet34", _RESNET_LAYERS),
    ModelInfo("resnet50", CLASSIFICATION_TASKS, "ResNet-50 (torchvision)", "resnet50", _RESNET_LAYERS),
    ModelInfo("resnet101", CLASSIFICATION_TASKS, "ResNet-101 (torchvision)", "resnet101", _RESNET_LAYERS),
    ModelInfo("resnet152", CLASSIFICATION_TASKS, "ResNet-152 (torchvision)", "resnet152", _RESNET_LAYERS),
    # ResNeSt (timm's resnest50d and resnest101e, the ones Azure names): timm's ResNet module names.
    # Their weights are on the Hugging Face hub, which timm downloads from; here the weights cache is
    # their only source, like seresnext's: no trial reaches another download service.
    ModelInfo("resnest50", CLASSIFICATION_TASKS, "ResNeSt-50 (timm resnest50d)", freezable_layers=_RESNET_LAYERS,
              builder="resnest50d", weights_file="resnest50d.pth"),
    ModelInfo("resnest101", CLASSIFICATION_TASKS, "ResNeSt-101 (timm resnest101e)", freezable_layers=_RESNET_LAYERS,
              builder="resnest101e", weights_file="resnest101e.pth"),
    ModelInfo("mobilenetv2", CLASSIFICATION_TASKS, "MobileNetV2 (torchvision)", "mobilenet_v2",
              _MOBILENET_LAYERS, aliases=("mobilenet_v2",)),
    # Azure documents seresnext as taking only 224 px; the network itself pools adaptively, but the
    # same job must behave the same here.
    ModelInfo("seresnext", CLASSIFICATION_TASKS, "SE-ResNeXt-50 32x4d (torchvision ResNet + SE blocks)",
              freezable_layers=_RESNET_LAYERS, fixed_input_size=224, builder="se_resnext50_32x4d",
              weights_file="seresnext50_32x4d.pth"),
    # ViTs: the position embedding has one entry per 16x16 patch of a 224 px image.
    ModelInfo("vits16r224", CLASSIFICATION_TASKS, "ViT-S/16 at 224 px (torchvision VisionTransformer)",
              freezable_layers=_vit_layers(12), fixed_input_size=224, builder="vit_s_16",
              weights_file="vit_s_16.pth"),
    ModelInfo("vitb16r224", CLASSIFICATION_TASKS, "ViT-B/16 at 224 px (torchvision)", "vit_b_16",
              _vit_layers(12), fixed_input_size=224),
    ModelInfo("vitl16r224", CLASSIFICATION_TASKS, "ViT-L/16 at 224 px (torchvision)", "vit_l_16",
              _vit_layers(24), fixed_input_size=224),
    # Detectors: the backbone's layers freeze (the FPN and the heads always train).
    ModelInfo("yolov5", (Task.OBJECT_DETECTION,), "YOLOv5 (this project's implementation, trainer/yolov5.py)"),
    ModelInfo("fasterrcnn_resnet50_fpn", (Task.OBJECT_DETECTION,), "Faster R-CNN ResNet-50 FPN (torchvision)",
              freezable_layers=_DETECTOR_LAYERS),
    ModelInfo("fasterrcnn_resnet34_fpn", (Task.OBJECT_DETECTION,), "Faster R-CNN ResNet-34 FPN (torchvision)",
              freezable_layers=_DETECTOR_LAYERS),
    ModelInfo("fasterrcnn_resnet18_fpn", (Task.OBJECT_DETECTION,), "Faster R-CNN ResNet-18 FPN (torchvision)",
              freezable_layers=_DETECTOR_LAYERS),
    ModelInfo("fasterrcnn_resnet101_fpn", (Task.OBJECT_DETECTION,), "Faster R-CNN ResNet-101 FPN (torchvision)",
              freezable_layers=_DETECTOR_LAYERS),
    ModelInfo("fasterrcnn_resnet152_fpn", (Task.OBJECT_DETECTION,), "Faster R-CNN ResNet-152 FPN (torchvision)",
              freezable_layers=_DETECTOR_LAYERS),
    ModelInfo("retinanet_resnet50_fpn", (Task.OBJECT_DETECTION,), "RetinaNet ResNet-50 FPN (torchvision)",
              freezable_layers=_DETECTOR_LAYERS),
    ModelInfo("maskrcnn_resnet50_fpn", (Task.INSTANCE_SEGMENTATION,), "Mask R-CNN ResNet-50 FPN (torchvision)",
              freezable_layers=_DETECTOR_LAYERS),
    *(ModelInfo(f"maskrcnn_resnet{depth}_fpn", (Task.INSTANCE_SEGMENTATION,),
                f"Mask R-CNN ResNet-{depth} FPN (torchvision)", freezable_layers=_DETECTOR_LAYERS)
      for depth in (18, 34, 101, 152)),
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


def check_input_size(name: str, crop_size: int) -> None:
    """ValueError when `name` takes only one input size and `crop_size` is another."""
    info = get(name)
    if info.fixed_input_size is not None and crop_size != info.fixed_input_size:
        raise ValueError(f"{info.name} takes only {info.fixed_input_size}x{info.fixed_input_size} inputs "
                         f"(crop_size {info.fixed_input_size}), got crop_size {crop_size}")
