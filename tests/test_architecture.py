"""The package boundaries: core imports neither side, the trainer never the controller, and the
controller runs without torch (the base install, infra/Dockerfile.controller)."""
from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from automl_images.controller.launch.extras import TRAINER_INSTALL, TRAINER_MODULES

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "controller", "trainer")
TORCH = {"torch", "torchvision"}

# The controller's only imports of the trainer, each inside the function that needs it: the CLI's
# trainer commands, the Python API's best model, and the MLflow model that the controller logs
# (trainer/mlflow_model.py, which imports torch only when the model is loaded).
CONTROLLER_USES_OF_TRAINER = {
    ("controller/cli.py", "automl_images.trainer.run"),
    ("controller/cli.py", "automl_images.trainer.evaluate"),
    ("controller/cli.py", "automl_images.trainer.convert"),
    ("controller/cli.py", "automl_images.trainer.predict"),
    ("controller/cli.py", "automl_images.trainer.serve"),
    ("controller/cli.py", "automl_images.trainer.onnx_export"),
    ("controller/submitted.py", "automl_images.trainer.export"),
    ("controller/mlflow_sync.py", "automl_images.trainer.mlflow_model"),
}
# Trainer modules of a command with an extra of its own in pyproject.toml (beyond the trainer's).
COMMAND_EXTRAS = {"trainer/serve.py": "serve", "trainer/mlflow_model.py": "mlflow",
                  "trainer/onnx_export.py": "export", "trainer/onnx_runtime.py": "export"}
# Imports inside `try: ... except ImportError` with a fallback: used when installed, never required.
OPTIONAL_IMPORTS = {("trainer/predict.py", "tqdm")}


@dataclass(frozen=True)
class Import:
    path: str          # the importing file, relative to the repository
    module: str        # absolute: automl_images.core.storage, torch.nn, ...
    top_level: bool    # at module level, so loaded with the importing module

    @property
    def package(self) -> str:
        """`core`, `controller` or `trainer` for ours; the top-level name of anything else."""
        parts = self.module.split(".")
        return parts[1] if parts[0] == "automl_images" else parts[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["automl_images", *parts])


def imports_of(path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                # `from . import x` imports the submodule x
                modules = [f"{module}.{a.name}" for a in node.names] if not node.module else [module]
            else:
                modules = [node.module]
        else:
            continue
        relative = str(path.relative_to(REPO))
        found += [Import(relative, m, id(node) in top_level) for m in modules]
    return found


def all_imports() -> list[Import]:
    return [i for package in PACKAGES for path in sorted((REPO / package).rglob("*.py")) for i in imports_of(path)]


def graph(imports: list[Import]) -> str:
    """package -> the packages it imports (stdlib left out; `lazy`: only inside functions), for
    failure messages."""
    edges: dict[str, dict[str, bool]] = {}
    for i in imports:
        source = i.path.split("/")[0]
        if i.package != source and i.package not in sys.stdlib_module_names and i.package != "__future__":
            targets = edges.setdefault(source, {})
            targets[i.package] = targets.get(i.package, False) or i.top_level
    lines = [f"  {source} -> " + ", ".join(t + ("" if loaded else " (lazy)") for t, loaded in sorted(targets.items()))
             for source, targets in sorted(edges.items())]
    return "\n".join(lines)


def test_the_import_graph():
    imports = all_imports()
    shown = "import graph:\n" + graph(imports)
    core = [i for i in imports if i.path.startswith("core/")]
    assert not [i for i in core if i.package in {"controller", "trainer"} | TORCH], shown
    trainer = [i for i in imports if i.path.startswith("trainer/")]
    assert not [i for i in trainer if i.package == "controller"], shown
    controller = [i for i in imports if i.path.startswith("controller/")]
    uses = [i for i in controller if i.package == "trainer"]
    assert {(i.path, i.module) for i in uses} == CONTROLLER_USES_OF_TRAINER, shown
    assert not [i for i in uses if i.top_level], shown
    assert not [i for i in controller if i.package in TORCH], shown


def requirements(extra: str | None) -> set[str]:
    """The distributions the base install (extra None) or an extra of pyproject.toml requires."""
    names = set()
    for line in importlib.metadata.requires("automl-images") or []:
        requirement, _, marker = line.partition(";")
        if (extra is None) == (not marker.strip()) and (extra is None or f'extra == "{extra}"' in marker):
            names.add(normalise(re.match(r"[A-Za-z0-9._-]+", requirement).group()))
    return names


def normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def distributions(module: str) -> set[str]:
    return {normalise(d) for d in installed().get(module, [])}


@functools.cache
def installed() -> dict[str, list[str]]:
    """Top-level module -> the distributions that provide it."""
    return importlib.metadata.packages_distributions()


def test_each_install_has_what_its_side_imports():
    imports = all_imports()
    shown = "import graph:\n" + graph(imports)
    base, trainer = requirements(None), requirements("trainer")
    assert "torch" not in base and {"torch", "torchvision"} <= trainer
    # what loads with the controller and core comes with the base install
    for i in imports:
        if i.path.split("/")[0] in ("core", "controller") and i.top_level and i.package not in PACKAGES:
            if i.package not in sys.stdlib_module_names and i.package != "__future__":
                assert distributions(i.package) & base, f"{i.path}: {i.module} is not in the base install\n{shown}"
    # the trainer needs nothing beyond the base install and its extra (and a command's own extra)
    for i in imports:
        if i.path.startswith("trainer/") and i.package not in PACKAGES + ("__future__",):
            if i.package not in sys.stdlib_module_names and (i.path, i.package) not in OPTIONAL_IMPORTS:
                extra = requirements(COMMAND_EXTRAS[i.path]) if i.path in COMMAND_EXTRAS else set()
                assert distributions(i.package) & (base | trainer | extra), \
                    f"{i.path}: {i.module} is in no install\n{shown}"
    # and the check that the trainer is installed asks for exactly its extra
    assert set().union(*(distributions(m) for m in TRAINER_MODULES)) == trainer


def test_the_controller_and_its_commands_load_no_torch(tmp_path):
    modules = sorted(module_name(path) for package in ("core", "controller")
                     for path in (REPO / package).rglob("*.py"))
    script = f"""
import contextlib, importlib, io, json, sys
for name in {modules!r}:
    importlib.import_module(name)
from automl_images.controller.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        main(["controller", "--help"])
    except SystemExit:
        pass
assert "--until-done" in out.getvalue()
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "PIL"))))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [], "import graph:\n" + graph(all_imports())


def test_without_the_trainer_its_commands_say_how_to_install_it(tmp_path):
    # As if the trainer extra were not installed: a None in sys.modules makes an import fail.
    script = f"""
import contextlib, io, json, sys
for name in {list(TRAINER_MODULES)!r}:
    sys.modules[name] = None
from automl_images.controller.cli import main
from automl_images.controller.launch import get_launcher
said = {{}}
for argv in (["trial", "run", "s3://b/spec.json"], ["demo"], ["convert", "coco", "a.json", "--images", "i",
             "--output", "o.jsonl"], ["evaluate", "--task", "image-classification", "--labels", "l.jsonl",
             "--predictions", "p.jsonl"]):
    with contextlib.redirect_stderr(io.StringIO()) as err:
        said[argv[0]] = [main(argv), err.getvalue()]
try:
    get_launcher("local")
except RuntimeError as exc:
    said["local launcher"] = str(exc)
import pathlib, tempfile
from automl_images.controller.loop import Controller
with tempfile.TemporaryDirectory() as folder:
    data = pathlib.Path(folder, "train.jsonl")
    data.write_text('{{"image_url": "a.png", "label": "x"}}\\n')
    pathlib.Path(folder, "root", "inbox").mkdir(parents=True)
    pathlib.Path(folder, "root", "inbox", "job.yaml").write_text(
        f"task: image-classification\\ntraining_data: {{data}}\\n")
    log = []
    Controller(str(pathlib.Path(folder, "root")), log=log.append).reconcile_once()
    said["controller"] = log
print(json.dumps(said))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    said = json.loads(result.stdout)
    needs = f"needs the trainer, which is not installed: {TRAINER_INSTALL}\n"
    message = f"the local launcher runs trials on this machine, and they need the trainer, which is not installed: " \
              f"{TRAINER_INSTALL}"
    assert said.pop("local launcher") == message
    # a controller refuses a job for the local launcher when it accepts it, saying why in one line
    controller_log = said.pop("controller")
    assert any(line.startswith("job job: rejected") for line in controller_log)
    assert any(line.endswith(f"field 'compute.launcher': local runs the trials on this controller's machine, which "
                             f"has no trainer: {TRAINER_INSTALL} there, or use launcher: skypilot")
               for line in controller_log), controller_log
    assert not any("Traceback" in line for line in controller_log)
    assert said == {"trial": [2, "automl-images trial run " + needs], "demo": [2, "automl-images demo " + needs],
                    "convert": [2, "automl-images convert " + needs],
                    "evaluate": [2, "automl-images evaluate " + needs]}
    assert not list(tmp_path.iterdir())  # nothing started: no demo root, no output


def test_sky_is_data_not_a_package():
    # `import sky` in a checkout must find SkyPilot, not our task templates
    assert not (REPO / "sky" / "__init__.py").exists()
