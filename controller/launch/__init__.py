"""Launchers by name. The local launcher is the embedded default."""
from __future__ import annotations

from .base import Launcher, LaunchRequest, RunState
from .extras import TRAINER_INSTALL, MissingInstall, trainer_installed


def get_launcher(name: str) -> Launcher:
    if name == "local":
        # Its trials run the trainer on this machine: without it each would fail at its first line.
        if not trainer_installed():
            raise MissingInstall(f"the local launcher runs trials on this machine, and they need the trainer, "
                                 f"which is not installed: {TRAINER_INSTALL}")
        from .local import LocalLauncher

        return LocalLauncher()
    if name == "skypilot":
        from .skypilot import SkyPilotLauncher

        return SkyPilotLauncher()
    raise ValueError(f"unknown launcher {name!r}; available: local, skypilot")


__all__ = ["Launcher", "LaunchRequest", "RunState", "get_launcher"]
