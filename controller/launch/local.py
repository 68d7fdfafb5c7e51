"""The local launcher: each trial is a subprocess on this machine running the `run` script of
sky/trial.yaml (the very command a cloud trial runs) with SPEC_URL set: `automl-images trial run`.

Idempotence without a daemon: before it starts a trial the launcher takes an exclusive `flock` on
a lock file named after the trial's spec URL, and hands that open file to the child, which keeps
it for its whole life. The lock is therefore held exactly while the trial runs, whoever started it:
a restarted controller asks the lock, not a process table, and a second `launch` of a running trial
adopts it instead of starting another. If the controller dies between taking the lock and starting
the child, the kernel drops the lock with the controller.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import time

from . import template
from .base import Handle, LaunchRequest, RunState

LOCAL_DIR_ENV = "AUTOML_IMAGES_LOCAL_DIR"


def _runtime_dir() -> str:
    path = os.environ.get(LOCAL_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "automl-images", "local")
    os.makedirs(path, exist_ok=True)
    return path


def trial_command(spec_url: str) -> tuple[list[str], dict[str, str]]:
    """The command a trial runs and the environment it adds: sky/trial.yaml's `run` script under
    bash, with SPEC_URL set and this installation's `automl-images` first on the PATH."""
    env = {template.SPEC_URL_ENV: spec_url, "PATH": f"{_cli_dir()}{os.pathsep}{os.environ.get('PATH', '')}"}
    return ["bash", "-c", template.run_script()], env


def _cli_dir() -> str:
    """A folder whose `automl-images` is this installation's: the console script next to this
    interpreter, or else a shim that runs the CLI module with it."""
    here = os.path.dirname(sys.executable)
    if os.path.exists(os.path.join(here, "automl-images")):
        return here
    shim_dir = os.path.join(_runtime_dir(), "bin")
    os.makedirs(shim_dir, exist_ok=True)
    shim = os.path.join(shim_dir, "automl-images")
    text = f'#!/bin/sh\nexec "{sys.executable}" -m automl_images.controller.cli "$@"\n'
    try:
        with open(shim) as f:
            current = f.read()
    except FileNotFoundError:
        current = None
    if current != text:
        with open(shim + ".tmp", "w") as f:
            f.write(text)
        os.chmod(shim + ".tmp", 0o755)
        os.replace(shim + ".tmp", shim)
    return shim_dir


class LocalLauncher:
    name = "local"

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen] = {}  # only to reap exit codes; state is in the locks

    def _paths(self, request: LaunchRequest) -> tuple[str, str]:
        key = hashlib.sha256(request.spec_url.encode()).hexdigest()[:24]
        base = os.path.join(_runtime_dir(), key)
        return base + ".lock", f"{base}.attempt-{request.attempt}.log"

    def launch(self, request: LaunchRequest) -> Handle:
        lock_path, log_path = self._paths(request)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # Already running (started by an earlier controller): adopt it.
                pid = _read_pid(lock_path)
                return {"pid": pid, "lock": lock_path, "log": log_path, "adopted": True}
            command, command_env = trial_command(request.spec_url)
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **request.env, **command_env}
            if request.threads:
                env.update(OMP_NUM_THREADS=str(request.threads), MKL_NUM_THREADS=str(request.threads),
                           AUTOML_IMAGES_THREADS=str(request.threads))
            with open(log_path, "ab") as log:
                # The script ends in `exec`, so the child's pid becomes the trainer's.
                child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, pass_fds=(fd,),
                                         start_new_session=True)  # a Ctrl-C to the controller spares trials
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(child.pid).encode(), 0)
            self._children[child.pid] = child
            return {"pid": child.pid, "lock": lock_path, "log": log_path, "started_at": time.time()}
        finally:
            os.close(fd)  # the child keeps its own copy, and with it the lock

    def poll(self, handle: Handle) -> RunState:
        child = self._children.get(handle.get("pid"))
        if child is not None and child.poll() is not None:
            self._children.pop(child.pid, None)
        return RunState.RUNNING if _locked(handle["lock"]) else RunState.GONE

    def cancel(self, handle: Handle) -> None:
        pid = handle.get("pid")
        if pid and _locked(handle["lock"]):
            try:
                os.killpg(pid, signal.SIGTERM)  # the trainer checkpoints and reports `stopped`
            except ProcessLookupError:
                pass

    def logs(self, handle: Handle) -> bytes | None:
        try:
            with open(handle["log"], "rb") as f:
                return f.read()
        except (OSError, KeyError):
            return None

    def cost(self, handle: Handle, elapsed_s: float) -> float | None:
        return 0.0  # this machine: nothing is billed per trial

    def close(self) -> None:
        """Nothing to stop: the trials' processes outlive the controller, and a restarted one adopts them."""


def _locked(lock_path: str) -> bool:
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _read_pid(lock_path: str) -> int | None:
    try:
        with open(lock_path) as f:
            text = f.read().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
