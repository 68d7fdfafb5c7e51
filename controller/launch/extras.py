"""The optional installs (pyproject.toml's extras) that launchers and commands need, and whether
they are here. The base install is the controller alone, without torch; each check finds packages without
importing them, so that asking costs the controller's start-up nothing."""
from __future__ import annotations

import importlib.metadata
import importlib.util

TRAINER_INSTALL = "pip install 'automl-images[trainer]'"
SKYPILOT_INSTALL = "pip install 'automl-images[skypilot]'"

# What the trainer extra adds, by the names the trainer imports them as (tests/test_architecture.py
# checks that the trainer imports nothing else beyond the base install).
TRAINER_MODULES = ("torch", "torchvision", "timm", "faster_coco_eval")


class MissingInstall(RuntimeError):
    """An optional install that this machine lacks: a one-line message saying what to install,
    logged without a traceback (nothing in the code is wrong)."""


def trainer_installed() -> bool:
    """Whether trials can run here: the local launcher, `trial run`, `evaluate`, `convert` and the
    demo need the trainer extra."""
    return all(importlib.util.find_spec(name) is not None for name in TRAINER_MODULES)


def skypilot_installed() -> bool:
    """Whether SkyPilot is installed, asked of its distribution: in a checkout, `import sky` would
    find our sky/ folder of task templates."""
    try:
        importlib.metadata.version("skypilot")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
