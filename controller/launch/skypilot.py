"""The SkyPilot launcher: each trial a SkyPilot managed job named `<job>-<trial>`, on spot GPUs.

    compute:
      launcher: skypilot
      accelerators: [A10G:1, L4:1]
      clouds: [aws, gcp]
      image: ghcr.io/you/automl-images-trainer:0.1.0

The task is sky/trial.yaml with `resources` from the job's `compute:` (controller/launch/template.py).
SkyPilot's managed-jobs controller provisions the machine, relaunches the job after a preemption
(RECOVERING, which is not a failure: the trainer resumes from its checkpoint in the bucket) and
tears the machine down at the end. Needs `pip install 'automl-images[skypilot]'` and `sky check`.

Idempotence: a managed job's name is the trial's, so `launch` first asks the queue for a job of
that name that is still alive and adopts it. Two controllers racing could both launch; the next
`launch` of that trial keeps the oldest live job and cancels the others.

`SkyJobs` is the one class that calls SkyPilot's SDK (every call returns a request id that
`sky.get` waits on); `CatalogPricer` reads prices from SkyPilot's catalog. Everything else here is
plain logic, tested against a small fake of `SkyJobs`.
"""
from __future__ import annotations

import contextlib
import copy
import io
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

from . import template
from .base import Handle, LauncherError, LaunchRequest, RunState

# SkyPilot's ManagedJobStatus values, as our RunState.
STATES = {
    "PENDING": RunState.PENDING,             # waiting for a slot on SkyPilot's jobs controller
    "SUBMITTED": RunState.PENDING,           # (DEPRECATED_SUBMITTED: old databases only)
    "STARTING": RunState.PENDING,            # provisioning the machine
    "RUNNING": RunState.RUNNING,
    "WINDING_DOWN": RunState.RUNNING,
    "RECOVERING": RunState.RECOVERING,       # preempted, SkyPilot is relaunching it: not a failure
    "CANCELLING": RunState.RUNNING,          # still stopping: over only once CANCELLED
    "SUCCEEDED": RunState.SUCCEEDED,
    "CANCELLED": RunState.CANCELLED,
    "FAILED": RunState.FAILED,               # the trainer exited non-zero, after max_restarts_on_errors
    "FAILED_SETUP": RunState.FAILED,         # the image or its setup is broken: it would fail again
    "FAILED_PRECHECKS": RunState.FAILED,     # nothing in the allowed clouds fits the request, or credentials
    "FAILED_NO_RESOURCE": RunState.GONE,     # no capacity right now: worth another attempt, which resumes
    "FAILED_CONTROLLER": RunState.GONE,      # SkyPilot's own controller broke; the trial may be fine
}
TERMINAL = {"SUCCEEDED", "CANCELLED", "FAILED", "FAILED_SETUP", "FAILED_PRECHECKS", "FAILED_NO_RESOURCE",
            "FAILED_CONTROLLER"}
# Environment variables that look like credentials are refused as plain envs (SkyPilot shows envs
# in its dashboard and logs); `compute.secrets` hands them over as SkyPilot secrets instead.
CREDENTIAL_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|API_KEY", re.I)


@dataclass(frozen=True)
class Record:
    """One managed job as the queue shows it."""
    job_id: int
    name: str
    status: str                         # a ManagedJobStatus value, e.g. "RUNNING"
    instance_type: str | None = None    # what it runs (or last ran) on, when SkyPilot still knows
    use_spot: bool | None = None
    nodes: int = 1
    cloud: str | None = None
    region: str | None = None
    zone: str | None = None
    failure_reason: str | None = None


class Jobs(Protocol):
    """What the launcher needs from SkyPilot's managed jobs (SkyJobs, or a fake in tests)."""

    def launch(self, task: dict[str, Any], name: str) -> int: ...

    def queue(self, name: str | None = None, job_id: int | None = None) -> list[Record]: ...

    def cancel(self, job_id: int) -> None: ...

    def logs(self, job_id: int) -> bytes | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Price:
    hourly_usd: float
    cloud: str
    instance_type: str
    region: str | None
    use_spot: bool


class SkyPilotLauncher:
    name = "skypilot"

    def __init__(self, jobs: Jobs | None = None, pricer: "CatalogPricer | None" = None,
                 clock: Callable[[], float] = time.time, refresh_s: float = 10.0):
        self.jobs = jobs if jobs is not None else SkyJobs()
        self.pricer = pricer if pricer is not None else CatalogPricer()
        self.clock = clock
        self.refresh_s = refresh_s   # the controller polls every few seconds; the queue is asked less often
        self._records: dict[int, tuple[float, Record | None]] = {}
        self._instances: dict[int, Record] = {}  # the last record that named its machine, for cost()

    def launch(self, request: LaunchRequest) -> Handle:
        compute = request.compute
        if compute is None or compute.launcher != "skypilot":
            raise ValueError("the skypilot launcher needs the job's compute section (launcher: skypilot)")
        leaked = sorted(k for k in request.env if CREDENTIAL_NAME.search(k))
        if leaked:
            raise ValueError(f"{', '.join(leaked)} look like credentials: name them in compute.secrets "
                             "rather than passing them as environment variables")
        task = template.trial_task(compute, request.name, request.spec_url,
                                   template.secrets_from_environment(compute))
        task["envs"].update(request.env)
        problems = template.check(task)
        if problems:
            raise ValueError("the trial's SkyPilot task is invalid: " + "; ".join(problems))
        plan = self.pricer.plan(task)
        handle: Handle = {"name": request.name, "attempt": request.attempt,
                          "hourly_price_usd": plan.hourly_usd if plan else None,
                          "planned": None if plan is None else {
                              "cloud": plan.cloud, "instance_type": plan.instance_type, "region": plan.region,
                              "use_spot": plan.use_spot}}
        live = sorted((r for r in self.jobs.queue(name=request.name)
                       if r.name == request.name and r.status not in TERMINAL), key=lambda r: r.job_id)
        if live:
            for duplicate in live[1:]:
                self.jobs.cancel(duplicate.job_id)
            return {**handle, "job_id": live[0].job_id, "adopted": True}
        return {**handle, "job_id": self.jobs.launch(task, request.name), "launched_at": self.clock()}

    def poll(self, handle: Handle) -> RunState:
        record = self._record(handle["job_id"])
        if record is None:
            return RunState.GONE  # the queue no longer knows it
        # A status this version does not know yet: not over, as far as we can tell.
        return STATES.get(record.status, RunState.PENDING)

    def cancel(self, handle: Handle) -> None:
        self.jobs.cancel(handle["job_id"])
        self._records.pop(handle["job_id"], None)

    def logs(self, handle: Handle) -> bytes | None:
        return self.jobs.logs(handle["job_id"])

    def close(self) -> None:
        self.jobs.close()

    def cost(self, handle: Handle, elapsed_s: float) -> float | None:
        """USD for `elapsed_s` seconds: the catalog price of the machine the job ran on, once the
        queue has named it, else the price of the machine the optimizer was expected to pick."""
        hourly = None
        seen = self._instances.get(handle.get("job_id"))
        if seen is not None:
            hourly = self.pricer.instance(seen)
        if hourly is None:
            hourly = handle.get("hourly_price_usd")
        return None if hourly is None else hourly * elapsed_s / 3600.0

    def _record(self, job_id: int) -> Record | None:
        now = self.clock()
        cached = self._records.get(job_id)
        if cached is not None and (now - cached[0] < self.refresh_s or
                                   (cached[1] is not None and cached[1].status in TERMINAL)):
            return cached[1]
        record = next((r for r in self.jobs.queue(job_id=job_id) if r.job_id == job_id), None)
        self._records[job_id] = (now, record)
        if record is not None and record.instance_type:
            self._instances[job_id] = record
        return record


# ------------------------------------------------------------------------------------------------
# SkyPilot itself: the only code below that imports `sky`.


class SkyJobs:
    """SkyPilot's managed jobs through its SDK (0.14): each call sends a request to the API server
    (started locally when SKYPILOT_API_SERVER_ENDPOINT names none) and `sky.get` waits for it.

    Every failure comes out as a SkyPilotError that says it is SkyPilot's, with SkyPilot's own markup
    taken out. A local API server that this process started (SkyPilot starts one on the first call when
    none answers) is stopped by `close`: one the user started, or a remote one, is left alone."""

    FIELDS = ["job_id", "task_id", "job_name", "task_name", "status", "cluster_resources_full", "cloud",
              "region", "zone", "failure_reason", "submitted_at", "end_at"]

    def __init__(self) -> None:
        self.started_server: bool | None = None  # None until the first call asks

    def launch(self, task: dict[str, Any], name: str) -> int:
        import sky

        with self._calling(f"launching {name}"):
            # job_group=None: a trial stands on its own, even when the controller runs as a managed
            # job itself; cancelling the controller must not cancel the trials it adopts again later.
            # from_yaml_config consumes the mapping it is given: hand it a copy.
            request = sky.jobs.launch(sky.Task.from_yaml_config(copy.deepcopy(task)), name=name, job_group=None)
            job_ids, _ = sky.get(request)
        if not job_ids:
            raise SkyPilotError(f"SkyPilot launched no managed job for {name}")
        return int(job_ids[0])

    def queue(self, name: str | None = None, job_id: int | None = None) -> list[Record]:
        from sky import exceptions

        with self._calling("reading the managed jobs queue"):
            try:
                return self._queue(name, job_id, refresh=False)
            except exceptions.ClusterNotUpError as exc:
                # No jobs controller, or one stopped after idling: SkyPilot stops it only once no
                # managed job is alive, so none is alive to adopt. A particular job's outcome is on
                # the stopped controller: start it again to read it. Anything else (it is starting,
                # it is broken) is raised, and the next pass asks again.
                status = getattr(exc, "cluster_status", None)
                if getattr(status, "value", status) not in (None, "STOPPED"):
                    raise
                if job_id is None:
                    return []
                return self._queue(name, job_id, refresh=True)

    def _queue(self, name: str | None, job_id: int | None, refresh: bool) -> list[Record]:
        import sky

        request = sky.jobs.queue_v2(refresh=refresh, skip_finished=False,
                                    job_ids=None if job_id is None else [job_id], name_match=name, fields=self.FIELDS)
        records, *_ = sky.get(request)
        return [_record(r) for r in records]

    def cancel(self, job_id: int) -> None:
        import sky

        with self._calling(f"cancelling managed job {job_id}"):
            sky.get(sky.jobs.cancel(job_ids=[job_id]))

    def logs(self, job_id: int) -> bytes | None:
        import sky

        out = io.StringIO()
        try:
            with self._calling(f"reading the logs of managed job {job_id}"):
                sky.jobs.tail_logs(job_id=job_id, follow=False, output_stream=out)
        except SkyPilotError as exc:  # logs are a courtesy: a missing one is not an error
            out.write(f"\n[automl-images] {exc}\n")
        return without_markup(out.getvalue()).encode() or None

    def close(self) -> None:
        """Stop the local API server if this process started it."""
        if not self.started_server:
            return
        import sky

        with self._calling("stopping the local API server it started"):
            sky.api_stop()
        self.started_server = False

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        if self.started_server is None:
            self.started_server = _local_server_down()
        try:
            yield
        except SkyPilotError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever SkyPilot raises is SkyPilot's, said so once
            raise SkyPilotError(f"SkyPilot failed {what}: {type(exc).__name__}: {without_markup(str(exc))}",
                                transient=_unanswered(exc)) from exc


class SkyPilotError(LauncherError):
    """SkyPilot refused or failed a request (see LauncherError)."""


# SkyPilot wraps control-plane payloads in <sky-payload> tags and colours its messages.
_MARKUP = re.compile(r"<sky-payload[^>]*>.*?</sky-payload>\n?|\x1b\[[0-9;?]*[A-Za-z]", re.S)


def without_markup(text: str) -> str:
    return _MARKUP.sub("", text).strip()


def _local_server_down() -> bool:
    """Whether the first SDK call will start a local API server: the endpoint is SkyPilot's local
    default and nothing answers there."""
    from sky.server import common

    try:
        return bool(common.is_api_server_local()) and \
            common.get_api_server_status().status != common.ApiServerStatus.HEALTHY
    except Exception:  # noqa: BLE001 - unknown: then it is not ours to stop
        return False


def _unanswered(exc: BaseException) -> bool:
    """A request that got no answer (worth asking again) rather than a refusal."""
    import requests

    from sky import exceptions

    return isinstance(exc, (exceptions.ApiServerConnectionError, requests.ConnectionError, requests.Timeout,
                            ConnectionError, TimeoutError))


def _record(r: Any) -> Record:
    """A queue entry (SkyPilot's ManagedJobRecord) as our Record."""
    status = getattr(r.status, "value", r.status)
    nodes, spot, instance_type = parse_resources(getattr(r, "cluster_resources_full", None) or "")
    cloud = r.cloud if r.cloud not in (None, "-") else None
    return Record(job_id=int(r.job_id), name=r.job_name or r.task_name or "", status=str(status),
                  instance_type=instance_type, use_spot=spot, nodes=nodes, cloud=cloud,
                  region=r.region if r.region not in (None, "-") else None,
                  zone=r.zone if r.zone not in (None, "-") else None, failure_reason=r.failure_reason)


_RESOURCES = re.compile(r"(\d+)x(\[spot\])?\((.*)\)\s*$", re.S)


def parse_resources(text: str) -> tuple[int, bool | None, str | None]:
    """(nodes, spot, instance type) from the queue's `cluster_resources_full`, which SkyPilot
    writes as `1x[spot](gpus=A10G:1, cpus=4, mem=16, g5.xlarge, image_id=..., disk=100)`; the
    instance type is the first item that is not `key=value`."""
    match = _RESOURCES.match(text.strip())
    if not match:
        return 1, None, None
    items = [item.strip() for item in match.group(3).split(",")]
    instance = next((item for item in items if item and "=" not in item and item != "..."), None)
    return int(match.group(1)), bool(match.group(2)), instance


class CatalogPricer:
    """$/hour from SkyPilot's catalog (the CSV files SkyPilot keeps under ~/.sky/catalogs), as
    SkyPilot's optimizer sees them. Prices are advisory: any failure gives None, never an error."""

    def plan(self, task: dict[str, Any]) -> Price | None:
        """The machine the optimizer picks for `task` and its price: with `ordered` resources the
        first that some allowed cloud offers, with `any_of` the cheapest; within one, the cheapest
        instance type and region (the optimizer's own rules, sky/optimizer.py)."""
        try:
            return self._plan(task)
        except Exception:  # noqa: BLE001 - a price is not worth a failed launch
            return None

    def _plan(self, task: dict[str, Any]) -> Price | None:
        from sky.utils import resources_utils

        import sky

        sky_task = sky.Task.from_yaml_config(copy.deepcopy(task))  # it consumes what it is given
        ordered = isinstance(sky_task.resources, list)
        best: tuple[float, Any] | None = None
        for requested in sky_task.resources:
            if requested.cloud is None:
                continue  # our tasks always name their cloud (compute.clouds is required)
            feasible = requested.cloud.get_feasible_launchable_resources(requested, sky_task.num_nodes)
            if not feasible.resources_list:
                continue
            options = [(r.get_cost(3600) * sky_task.num_nodes, r) for r in
                       resources_utils.make_launchables_for_valid_region_zones(feasible.resources_list[0])]
            cheapest = min(options, key=lambda option: option[0])
            if best is None or cheapest[0] < best[0]:
                best = cheapest
            if ordered:
                break
        if best is None:
            return None
        hourly, chosen = best
        return Price(hourly_usd=float(hourly), cloud=str(chosen.cloud).lower(), instance_type=chosen.instance_type,
                     region=chosen.region, use_spot=bool(chosen.use_spot))

    def instance(self, record: Record) -> float | None:
        """$/hour of the machine a job runs on, for all its nodes."""
        if not (record.cloud and record.instance_type):
            return None
        try:
            from sky import catalog

            hourly = catalog.get_hourly_cost(record.instance_type, bool(record.use_spot), record.region,
                                             record.zone, clouds=record.cloud.lower())
        except Exception:  # noqa: BLE001
            return None
        return float(hourly) * max(1, record.nodes)
