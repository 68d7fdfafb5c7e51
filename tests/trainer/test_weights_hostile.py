"""Hostile weight files: a pickle that would run code, planted wherever the trainer loads weights
(the weights cache, torch.hub's download cache, a checkpoint to resume from, an exported model.pt),
never runs, and the failure names the file; a file whose sha256 is not the one its torchvision name
publishes is refused (the weights cache: the user's file) or fetched again (torch.hub's cache).
Every weight file is loaded by trainer/weights.py: an AST check finds any other loader."""
from __future__ import annotations

import ast
import hashlib
import io
import logging
import urllib.error
from pathlib import Path

import pytest
import torch
from conftest import REPO
from PIL import Image
from trial_data import write_dataset, write_spec

from automl_images.core.hyperparameters import Task, resolve
from automl_images.core.layout import FILES
from automl_images.core.storage import Storage
from automl_images.core.trial_spec import SpecError
from automl_images.trainer import checkpoint, export, models, run, weights
from automl_images.trainer.tasks import get_adapter

RESNET18 = "resnet18-f37072fd.pth"   # torchvision's ImageNet resnet18: its sha256 begins f37072fd


class Planted:
    """Unpickled, it creates the file `marker`: what a hostile weight file would do with os.system."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def planted_bytes(marker: Path) -> bytes:
    """A torch file as torch.save writes one, whose state dict carries the planted object."""
    buffer = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(1), "payload": Planted(marker)}, buffer)
    return buffer.getvalue()


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "code-ran"
    # The plant is live: an unsafe load runs it. The tests below show that ours never does.
    torch.load(io.BytesIO(planted_bytes(path)), weights_only=False)
    assert path.exists()
    path.unlink()
    return path


@pytest.fixture
def no_download(monkeypatch) -> list[tuple]:
    """torch.hub's download, offline: records what was asked for and fails as a network would."""
    calls: list[tuple] = []

    def offline(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix))
        raise urllib.error.URLError("network unreachable (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return calls


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """torch.hub's cache in this test's folder; returns its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv(models.WEIGHTS_CACHE_ENV, raising=False)
    folder = tmp_path / "torch-home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def classifier(model_name: str):
    return get_adapter(Task.CLASSIFICATION, resolve(Task.CLASSIFICATION, {"model_name": model_name, "pretrained": 1}))


# -- every load goes through trainer/weights.py ---------------------------------------------------

# Calls that unpickle: torch's, torch.hub's and torchvision's loaders, and pickle's own.
ANY_OWNER = {"load_state_dict_from_url", "load_url", "get_state_dict"}
OWNED = {"load": {"torch", "jit", "hub", "pickle", "serialization"}, "loads": {"pickle"}}
LOADER_MODULES = set().union(*OWNED.values())


def unsafe_loads(source: str) -> list[str]:
    """`line: call` of each call in `source` that may unpickle a file outside trainer/weights.py."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[-1] in LOADER_MODULES:
            found += [f"{node.lineno}: from {node.module} import {alias.name}" for alias in node.names
                      if alias.name in ANY_OWNER | set(OWNED)]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute):
            owner = func.value.id if isinstance(func.value, ast.Name) else getattr(func.value, "attr", None)
            if func.attr in ANY_OWNER or owner in OWNED.get(func.attr, ()):
                found.append(f"{node.lineno}: {ast.unparse(func)}")
        # A torchvision builder given weights loads them through torch.hub, unchecked.
        for keyword in node.keywords:
            if keyword.arg in ("weights", "weights_backbone") and not (
                    isinstance(keyword.value, ast.Constant) and keyword.value.value is None):
                found.append(f"{node.lineno}: {ast.unparse(func)}({keyword.arg}=)")
    return sorted(found, key=lambda line: int(line.split(":")[0]))


def test_every_weight_file_is_loaded_through_the_weights_module():
    trainer = REPO / "trainer"
    files = sorted(set(trainer.rglob("*.py")) - {trainer / "weights.py"})
    assert len(files) > 10
    assert [f"{path.relative_to(REPO)}:{line}" for path in files for line in unsafe_loads(path.read_text())] == []


def test_the_check_finds_each_loader_it_forbids():
    assert unsafe_loads("torch.load(f)\n"
                        "torch.hub.load_state_dict_from_url(u)\n"
                        "torchvision.models.ResNet18_Weights.DEFAULT.get_state_dict()\n"
                        "pickle.loads(b)\n"
                        "torchvision.models.resnet18(weights='DEFAULT')\n"
                        "torchvision.models.resnet18(weights=None)\n"
                        "json.load(f)\n"
                        "from torch import load, nn\n"
                        "from torch.hub import load_state_dict_from_url\n") == [
        "1: torch.load", "2: torch.hub.load_state_dict_from_url",
        "3: torchvision.models.ResNet18_Weights.DEFAULT.get_state_dict", "4: pickle.loads",
        "5: torchvision.models.resnet18(weights=)", "8: from torch import load",
        "9: from torch.hub import load_state_dict_from_url"]


# -- the module itself ----------------------------------------------------------------------------

def test_safe_load_refuses_planted_code_in_a_torch_file_and_in_a_bare_pickle(marker):
    import pickle

    for data in (planted_bytes(marker), pickle.dumps({"w": Planted(marker)}, protocol=2)):
        with pytest.raises(weights.WeightsError, match=r"^s3://b/w\.pth: not loadable as weights: it holds pickled "
                                                       r"objects that are not tensors"):
            weights.safe_load(data, "s3://b/w.pth")
    assert not marker.exists()


def test_published_hash_follows_torch_hub():
    assert weights.published_hash(RESNET18) == "f37072fd"
    assert weights.published_hash("https://download.pytorch.org/models/" + RESNET18) == "f37072fd"
    assert weights.published_hash("vit_s_16.pth") is None
    assert weights.published_hash("yolov5_s.pth") is None


# -- the weights cache: the user's files, refused when they fail ---------------------------------

def test_a_plant_in_the_weights_cache_fails_the_trial_as_a_user_error_naming_the_file(
        tmp_path, monkeypatch, marker, no_download, trial_process):
    cache = tmp_path / "weights-cache"
    cache.mkdir()
    (cache / "seresnext50_32x4d.pth").write_bytes(planted_bytes(marker))
    monkeypatch.setenv(models.WEIGHTS_CACHE_ENV, str(cache))
    root = Storage(str(tmp_path / "root"))
    spec_url = write_spec(root, "trial", *write_dataset(root, per_class=2, validation_per_class=1),
                          model_name="seresnext", pretrained=1, resize_size=224, crop_size=224)
    status = run.run_trial(spec_url)
    assert status["status"] == "failed" and status["error"]["kind"] == "user", status["error"]
    assert f"{cache}/seresnext50_32x4d.pth: not loadable as weights: it holds pickled objects" in \
        status["error"]["message"]
    assert "Traceback" not in status["error"]["message"]
    assert not marker.exists() and no_download == []


def test_a_weights_cache_file_without_its_published_hash_is_refused_not_unpickled(tmp_path, marker, no_download):
    (tmp_path / RESNET18).write_bytes(planted_bytes(marker))
    with pytest.raises(SpecError, match=rf"hyperparameters.pretrained: {tmp_path}/{RESNET18}: its sha256 begins "
                                        rf"[0-9a-f]{{8}}, not f37072fd as its name publishes"):
        classifier("resnet18").build_model(3, weights_cache=str(tmp_path))
    assert not marker.exists()
    assert no_download == []   # the user's file is wrong: said, not silently replaced by a download


# -- torch.hub's cache: torch's files, fetched again when they fail -------------------------------

def test_a_plant_in_torch_hubs_cache_is_never_unpickled_but_fetched_again(torch_home, marker, no_download, caplog):
    planted = torch_home / RESNET18
    planted.write_bytes(planted_bytes(marker))
    with caplog.at_level(logging.WARNING, logger="automl_images.trainer"):
        with pytest.raises(ConnectionError, match="pretrained weights for resnet18 are not in the weights cache .* "
                                                  "the download failed"):
            classifier("resnet18").build_model(3)
    assert not marker.exists()
    assert no_download == [(f"https://download.pytorch.org/models/{RESNET18}", str(planted), "f37072fd")]
    assert f"{planted}: its sha256 begins" in caplog.text and "downloading" in caplog.text


def test_torch_hubs_cache_serves_a_file_with_its_published_hash_and_replaces_one_without(torch_home, monkeypatch):
    state = {"weight": torch.arange(6.0).reshape(2, 3)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    good = buffer.getvalue()
    name = f"tiny-{hashlib.sha256(good).hexdigest()[:8]}.pth"
    url = f"https://weights.invalid/models/{name}"
    downloads = []

    def download(url, dst, hash_prefix=None, progress=True):  # what torch.hub's does once the hash matched
        downloads.append(hash_prefix)
        Path(dst).write_bytes(good)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    (torch_home / name).write_bytes(good)
    assert torch.equal(weights.from_torch_hub(url)["weight"], state["weight"]) and downloads == []

    (torch_home / name).write_bytes(good[:-10])   # damaged in the cache
    assert torch.equal(weights.from_torch_hub(url)["weight"], state["weight"])
    assert downloads == [name[5:13]] and (torch_home / name).read_bytes() == good


def test_a_plant_that_a_download_delivers_is_never_unpickled(torch_home, monkeypatch, marker):
    # torch.hub's download checks the hash before it moves a file into place; a mirror or a proxy
    # that gets past it still meets ours.
    def hostile(url, dst, hash_prefix=None, progress=True):
        Path(dst).write_bytes(planted_bytes(marker))

    monkeypatch.setattr(torch.hub, "download_url_to_file", hostile)
    with pytest.raises(weights.WeightsError, match=rf"^{torch_home / RESNET18}: its sha256 begins [0-9a-f]{{8}}, "
                                                   r"not f37072fd"):
        weights.from_torch_hub(f"https://download.pytorch.org/models/{RESNET18}")
    assert not marker.exists()


# -- a trial's own files: last.pt and model.pt ----------------------------------------------------

def test_a_planted_last_pt_is_kept_aside_and_the_trial_starts_afresh(tmp_path, marker, caplog):
    trial = Storage(str(tmp_path / "trial"))
    planted = planted_bytes(marker)
    trial.write_bytes(FILES.checkpoint, planted)
    with caplog.at_level(logging.WARNING, logger="automl_images.trainer"):
        assert checkpoint.load(trial) is None
    assert not marker.exists()
    aside = f"{FILES.checkpoint}.corrupt-{hashlib.sha256(planted).hexdigest()[:12]}"
    assert trial.list("checkpoints") == [aside.rsplit("/", 1)[1]] and trial.read_bytes(aside) == planted
    assert f"{trial.url(FILES.checkpoint)}: not loadable as weights: it holds pickled objects" in caplog.text
    assert f"starting this trial afresh, the file kept as {trial.url(aside)}" in caplog.text


def exported_model(folder: Path) -> Storage:
    """A model folder as a finished trial leaves it (mobilenetv2, 3 classes)."""
    hp = resolve(Task.CLASSIFICATION, {"model_name": "mobilenetv2", "pretrained": 0, "resize_size": 16,
                                              "crop_size": 16})
    adapter = get_adapter(Task.CLASSIFICATION, hp)
    storage = Storage(str(folder))
    export.export_model(storage, adapter.build_model(3).state_dict(), {
        "task": Task.CLASSIFICATION.value, "model_name": "mobilenetv2", "labels": ["a", "b", "c"],
        "hyperparameters": hp, **adapter.model_info, "primary_metric": "accuracy", "best_metric": 0.5,
        "epoch": 1})
    return storage


def test_a_planted_model_pt_is_never_unpickled_by_load_model(tmp_path, marker):
    trial = exported_model(tmp_path / "trial")
    assert export.load_model(trial.root).labels == ["a", "b", "c"]   # the folder is whole but for the plant
    trial.write_bytes(FILES.model_weights, planted_bytes(marker))
    with pytest.raises(weights.WeightsError, match=rf"^{trial.url(FILES.model_weights)}: not loadable as weights: "
                                                   r"it holds pickled objects"):
        export.load_model(trial.root)
    assert not marker.exists()


def test_predict_says_in_one_line_that_a_planted_model_pt_is_not_weights(tmp_path, marker, capsys):
    from automl_images.trainer import predict

    trial = exported_model(tmp_path / "trial")
    trial.write_bytes(FILES.model_weights, planted_bytes(marker))
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    assert predict.run_cli(trial.root, [str(image)], None, None, str(tmp_path / "out.jsonl")) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"automl-images predict: {trial.url(FILES.model_weights)}: not loadable as weights")
    assert not marker.exists() and not (tmp_path / "out.jsonl").exists()
