"""The models added to the registry: SE-ResNeXt-50 and the ViTs build from scratch, run at their
input size, freeze the right parameters, load weights from the weights cache only where no
download exists, and refuse other crop sizes (trainer and job file)."""
from __future__ import annotations

import json

import pytest
import torch

from automl_images.controller.spec import JobSpecError, parse_job
from automl_images.core import models as registry
from automl_images.core.hyperparameters import Task, resolve
from automl_images.core.trial_spec import SpecError
from automl_images.trainer import models, run
from automl_images.trainer.tasks import get_adapter

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def forward(model: torch.nn.Module, size: int = 224) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        return model(torch.randn(1, 3, size, size))


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, parameters", [
    # With a 3-class head: the ImageNet models have 2048 * 997 (SE-ResNeXt) or 384 * 997 (ViT-S)
    # head weights more. SE-ResNeXt-50 32x4d: 27.56M with 1000 classes; ViT-S/16: 22.05M.
    ("seresnext", 27_559_896 - 2048 * 997 - 997),
    ("vits16r224", 22_050_664 - 384 * 997 - 997),
    ("vitb16r224", None),
])
def test_builds_from_scratch_and_runs_at_224(name, parameters):
    model = models.build_classifier(name, 3, pretrained=False)
    assert forward(model).shape == (1, 3)
    if parameters is not None:
        assert count(model) == parameters


def test_vit_l_shape():
    # On the meta device: the structure without allocating or initialising 303M parameters.
    with torch.device("meta"):
        model = models.build_classifier("vitl16r224", 2, pretrained=False)
    assert model.hidden_dim == 1024 and len(model.encoder.layers) == 24
    assert model.encoder.layers[0].self_attention.num_heads == 16
    assert model.heads.head.out_features == 2
    assert count(model) == 304_326_632 - 1024 * 998 - 998  # ViT-L/16 with 1000 classes: 304.3M


@pytest.mark.slow  # 2 to 9 s on two busy CPU cores: building initialises 303M parameters
def test_vit_l_builds_and_runs_one_image():
    model = models.build_classifier("vitl16r224", 2, pretrained=False)
    assert forward(model).shape == (1, 2)


def test_seresnext_has_a_squeeze_excitation_block_in_every_bottleneck():
    model = models.build_classifier("seresnext", 5, pretrained=False)
    blocks = [m for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for m in layer]
    assert len(blocks) == 3 + 4 + 6 + 3
    for block in blocks:
        channels = block.conv3.out_channels
        assert block.se.fc1.out_channels == channels // 16 and block.se.fc2.out_channels == channels
        assert block.conv2.groups == 32  # ResNeXt's cardinality
    # The SE block acts on the residual branch: zeroing its gate leaves only the shortcut.
    block = model.layer1[0].eval()
    with torch.no_grad():
        block.se.fc2.weight.zero_()
        block.se.fc2.bias.fill_(-1e4)
        x = torch.randn(1, 64, 8, 8)
        assert torch.allclose(block(x), torch.relu(block.downsample(x)))


def test_vit_s_shape():
    model = models.build_classifier("vits16r224", 4, pretrained=False)
    assert model.hidden_dim == 384 and model.patch_size == 16 and model.image_size == 224
    assert len(model.encoder.layers) == 12
    assert model.encoder.layers[0].self_attention.num_heads == 6
    assert model.encoder.layers[0].mlp[0].out_features == 1536


def frozen_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def test_freeze_vit_layers():
    model = models.build_classifier("vits16r224", 3, pretrained=False)
    assert models.freeze_layers(model, "vits16r224", 3) == \
        ["conv_proj", "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    frozen = frozen_names(model)
    expected = {n for n, _ in model.named_parameters()
                if n in ("class_token", "encoder.pos_embedding") or n.startswith("conv_proj.")
                or n.startswith(("encoder.layers.encoder_layer_0.", "encoder.layers.encoder_layer_1."))}
    assert frozen == expected
    assert "encoder.layers.encoder_layer_2.ln_1.weight" not in frozen and "heads.head.weight" not in frozen
    # encoder_layer_1 must not catch encoder_layer_10 and _11.
    assert not any(n.startswith("encoder.layers.encoder_layer_1") and not n.startswith(
        "encoder.layers.encoder_layer_1.") for n in frozen)


def test_freeze_every_vit_block_leaves_the_final_norm_and_head():
    model = models.build_classifier("vits16r224", 3, pretrained=False)
    models.freeze_layers(model, "vits16r224", 13)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"encoder.ln.weight", "encoder.ln.bias", "heads.head.weight", "heads.head.bias"}
    with pytest.raises(ValueError, match="has 13 freezable layers"):
        models.freeze_layers(model, "vits16r224", 14)


def test_freeze_seresnext_stem_and_first_stage():
    model = models.build_classifier("seresnext", 3, pretrained=False)
    models.freeze_layers(model, "seresnext", 2)
    assert frozen_names(model) == {n for n, _ in model.named_parameters()
                                   if n.startswith(("conv1.", "bn1.", "layer1."))}
    assert "layer1.0.se.fc1.weight" in frozen_names(model)


def test_every_model_but_yolov5_lists_its_freezable_layers():
    for info in registry.MODELS.values():
        assert bool(info.freezable_layers) == (info.name != "yolov5"), info.name
    assert len(registry.get("vitl16r224").freezable_layers) == 25
    assert len(registry.get("vitb16r224").freezable_layers) == 13


def test_weights_for_models_without_a_download_come_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv(models.WEIGHTS_CACHE_ENV, raising=False)
    with pytest.raises(ValueError, match="vit_s_16.pth.*no download source|no download source.*vit_s_16.pth"):
        models.build_classifier("vits16r224", 3, pretrained=True)
    with pytest.raises(ValueError, match="seresnext50_32x4d.pth"):
        models.build_classifier("seresnext", 3, pretrained=True, weights_cache=str(tmp_path))

    imagenet = models.vit_s_16(num_classes=1000)
    torch.save(imagenet.state_dict(), tmp_path / "vit_s_16.pth")
    model = models.build_classifier("vits16r224", 3, pretrained=True, weights_cache=str(tmp_path))
    assert torch.equal(model.conv_proj.weight, imagenet.conv_proj.weight)
    assert torch.equal(model.encoder.pos_embedding, imagenet.encoder.pos_embedding)
    assert model.heads.head.out_features == 3


def test_the_adapter_reports_missing_weights_as_a_user_error(tmp_path):
    adapter = get_adapter(Task.CLASSIFICATION, resolve(Task.CLASSIFICATION, {"model_name": "vits16r224",
                                                                             "pretrained": 1}))
    with pytest.raises(SpecError, match="hyperparameters.pretrained: .*vit_s_16.pth"):
        adapter.build_model(3, weights_cache=str(tmp_path))


HP = {"resize_size": 256, "weighted_loss": 0}


@pytest.mark.parametrize("name", ["seresnext", "vits16r224", "vitb16r224", "vitl16r224"])
def test_trainer_refuses_other_crop_sizes(name):
    with pytest.raises(SpecError, match=rf"hyperparameters.crop_size: {name} takes only 224x224 inputs.*got "
                                        r"crop_size 192"):
        get_adapter(Task.CLASSIFICATION, {**HP, "model_name": name, "crop_size": 192})
    assert get_adapter(Task.CLASSIFICATION, {**HP, "model_name": name, "crop_size": 224}).preprocessing.crop_size == 224
    assert get_adapter(Task.CLASSIFICATION,
                       {**HP, "model_name": "resnet18", "crop_size": 192}).preprocessing.crop_size == 192


def test_a_trial_with_a_wrong_crop_size_fails_before_building(tmp_path):
    # One record whose image does not exist: reading the data first would fail on it.
    (tmp_path / "train.jsonl").write_text(json.dumps({"image_url": "a.png", "label": ["x"]}) + "\n")
    spec = {"job_id": "j", "trial_id": "t", "task": "image-multi-labeling", "primary_metric": "iou",
            "training_data": str(tmp_path / "train.jsonl"), "validation_data": None, "output": str(tmp_path / "t"),
            "hyperparameters": resolve(Task.MULTI_LABEL, {"model_name": "vitb16r224", "pretrained": 0,
                                                          "crop_size": 32, "resize_size": 32})}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    status = run.run_trial(str(tmp_path / "spec.json"))
    assert status["status"] == "failed" and status["error"]["kind"] == "user"
    assert "hyperparameters.crop_size: vitb16r224 takes only 224x224 inputs" in status["error"]["message"]


JOB = "task: image-classification\ntraining_data: train.jsonl\n"


def problems(text: str) -> dict[str, str]:
    with pytest.raises(JobSpecError) as info:
        parse_job(text, "job.yaml")
    return {p.field: p.message for p in info.value.problems}


def test_job_file_refuses_other_crop_sizes_for_fixed_size_models():
    found = problems(JOB + "search_space:\n  - model_name: vitb16r224\n    crop_size: 192\n")
    assert found == {"search_space[0].crop_size": "vitb16r224 takes only 224x224 inputs: crop_size must be 224, "
                                                  "got 192"}
    found = problems(JOB + "search_space:\n  - model_name: choice(resnet18, seresnext)\n"
                           "    crop_size: choice(224, 160)\n")
    assert "seresnext takes only 224x224 inputs" in found["search_space[0].crop_size"]
    assert "got 160; give seresnext a subspace of its own" in found["search_space[0].crop_size"]
    found = problems(JOB + "search_space:\n  - model_name: vits16r224\n    crop_size: quniform(192, 256, 32)\n")
    assert "quniform(192, 256, 32) draws other sizes" in found["search_space[0].crop_size"]


def test_job_file_refuses_a_crop_size_argument_for_fixed_size_models():
    found = problems(JOB + "search_space:\n  - model_name: vitl16r224\n  - model_name: resnet18\n"
                           "arguments:\n  crop_size: 128\n")
    assert found == {"arguments.crop_size": "vitl16r224 takes only 224x224 inputs: crop_size must be 224, got 128; "
                                            "set crop_size in the subspaces of resnet18 instead of in arguments"}
    found = problems(JOB + "search_space:\n  - model_name: vitl16r224\narguments: [\"--crop_size\", 128]\n")
    assert list(found) == ["arguments[1]"]


def test_job_file_accepts_224_and_other_sizes_for_other_models():
    spec = parse_job(JOB + "search_space:\n  - model_name: choice(vits16r224, vitb16r224, seresnext)\n"
                           "    crop_size: 224\n  - model_name: resnet18\n    crop_size: choice(64, 128)\n"
                           "arguments:\n  layers_to_freeze: 2\n")
    assert spec.trial_hyperparameters(0, {"model_name": "vitb16r224"})["crop_size"] == 224
    multi_label = parse_job("task: image-multi-labeling\ntraining_data: t.jsonl\n"
                            "search_space:\n  - model_name: vitb16r224\n")
    assert multi_label.trial_hyperparameters(0, {})["crop_size"] == 224  # the default
