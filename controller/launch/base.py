"""The launcher interface: launch, poll, cancel. One trial, one run; where it runs is the
launcher's business, what it does is `automl-images trial run SPEC_URL`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from automl_images.core.records import RunState


@dataclass(frozen=True)
class LaunchRequest:
    job_id: str
    trial_id: str
    spec_url: str
    attempt: int
    threads: int | None = None          # CPU threads the trial may use (local runs share cores)
    env: dict[str, str] = field(default_factory=dict)
    compute: Any = None                 # the job's spec.Compute: where and on what the trial runs

    @property
    def name(self) -> str:
        return f"{self.job_id}-{self.trial_id}"


Handle = dict[str, Any]  # JSON-serialisable, saved in launch.json


class LauncherError(RuntimeError):
    """What runs the trials refused or failed a request. Its message says what, in one line (the
    controller logs it without a traceback: nothing in our code is wrong). `transient`: the launcher
    did not answer (an API server down, a network error) and the next pass asks again; otherwise it
    answered with a refusal, which counts towards failing the job."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class Launcher(Protocol):
    name: str

    def launch(self, request: LaunchRequest) -> Handle:
        """Start the trial, or adopt it when it already runs: calling twice never runs it twice."""

    def poll(self, handle: Handle) -> RunState: ...

    def cancel(self, handle: Handle) -> None: ...

    def logs(self, handle: Handle) -> bytes | None:
        """What the run printed, if the launcher keeps it."""

    def cost(self, handle: Handle, elapsed_s: float) -> float | None:
        """What `elapsed_s` seconds of this run cost in USD; None when the launcher cannot price it.
        Handles that a priced launcher returns also carry `hourly_price_usd` (None when unknown)."""

    def close(self) -> None:
        """Stop what the launcher started for itself (SkyPilot's local API server); the trials it
        launched go on. Called when the controller exits."""
