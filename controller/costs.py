"""What trials cost, in USD: a running attempt as its launcher prices it, a finished trial once.

Each attempt's launch record (launch.json) carries what the earlier attempts cost (`spent_usd`)
and the hourly price known at launch; a finished trial's record gets its final `cost_usd` once,
and is never priced again. `core.records.recorded_cost` reads a record alone (for `status`); the
controller asks the launcher first, which knows a run's real price (spot prices change).
"""
from __future__ import annotations

from typing import Any, Callable

from automl_images.core.records import TrialView, recorded_cost

from .launch.base import Handle, Launcher


class Costs:
    def __init__(self, launcher: Callable[[str], Launcher], clock: Callable[[], float]):
        self.launcher = launcher
        self.clock = clock

    def until(self, launch: dict[str, Any] | None, at: float) -> float:
        """The trial's cost up to `at`: the earlier attempts', plus the current attempt's as its
        launcher prices it (its `cost`), or from the hourly price saved at launch."""
        launch = launch or {}
        if isinstance(launch.get("cost_usd"), (int, float)) or not launch.get("handle") \
                or not isinstance(launch.get("launched_at"), (int, float)):
            return recorded_cost(launch, at)
        price = getattr(self.launcher(launch["launcher"]), "cost", None)
        elapsed = max(0.0, at - launch["launched_at"])
        current = price(launch["handle"], elapsed) if price else None
        if current is None:
            return recorded_cost(launch, at)
        return float(launch.get("spent_usd") or 0.0) + float(current)

    def settle(self, view: TrialView) -> bool:
        """A finished trial's final cost, into `view.launch` (with when it ended: the trainer's last
        status update, else now). True when the record changed and is to be saved."""
        launch = view.launch
        if not launch or isinstance(launch.get("cost_usd"), (int, float)):
            view.cost_usd = recorded_cost(launch, self.clock())
            return False
        now = self.clock()
        ended = (view.status or {}).get("updated_at")
        started = launch.get("launched_at")
        if not (isinstance(ended, (int, float)) and isinstance(started, (int, float)) and started <= ended <= now):
            ended = now
        view.launch = {**launch, "ended_at": ended, "cost_usd": round(self.until(launch, ended), 6)}
        view.cost_usd = view.launch["cost_usd"]
        return True


def hourly_price(launcher: Launcher, handle: Handle) -> float | None:
    """USD per hour of the run: the handle's own price, else what the launcher says an hour costs."""
    if isinstance(handle, dict) and isinstance(handle.get("hourly_price_usd"), (int, float)):
        return float(handle["hourly_price_usd"])
    price = getattr(launcher, "cost", None)
    hourly = price(handle, 3600.0) if price else None
    return None if hourly is None else float(hourly)
