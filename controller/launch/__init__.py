"""Launchers by name. The local launcher is the embedded default."""
from __future__ import annotations

from .base import Launcher, LaunchRequest, RunState


def get_launcher(name: str) -> Launcher:
    if name == "local":
        from .local import LocalLauncher

        return LocalLauncher()
    if name == "skypilot":
        from .skypilot import SkyPilotLauncher

        return SkyPilotLauncher()
    raise ValueError(f"unknown launcher {name!r}; available: local, skypilot")


__all__ = ["Launcher", "LaunchRequest", "RunState", "get_launcher"]
