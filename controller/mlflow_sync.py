"""MLflow: the job as a run, each finished trial a run nested under it, the best model registered.

On when the job file names `mlflow_tracking_uri`, or the controller has MLFLOW_TRACKING_URI (needs
the mlflow extra: pip install 'automl-images[mlflow]'). The controller logs, at the job's publish
step (controller/job.py): it sees every trial's files in the bucket, while a trial may run on a
machine that cannot reach the tracking server.

- the job's run (experiment: the job's name, else its id): the task, the primary metric, the
  sampling and the limits as parameters, the best primary metric so far;
- a trial's run, nested under it once the trial has finished: every hyperparameter it ran with
  (its spec.json), every evaluation's metrics at its epoch (metrics/), its status and why it stopped;
- at the end: the report (report.html) and leaderboard.csv as the job run's artifacts, and the best
  model as an MLflow pyfunc model (trainer/mlflow_model.py) logged under "model" and registered
  under the experiment's name.

Logged once: the run ids go into jobs/<id>/mlflow.json as soon as each run exists, and a run is
also found by its tags (`automl_images.job_id`, `automl_images.trial_id`), so a controller that
died between creating a run and saving its id finds it instead of logging a second one. A trial's
run is created, filled and ended in one go; one found unended (its controller died midway) is
deleted and logged again whole. MLflow down is logged in one line and tried again at the next
publish: it never stops the job.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from typing import Any, Callable

from automl_images.core.hyperparameters import oriented
from automl_images.core.layout import FILES, Root
from automl_images.core.records import TrialStatus, TrialView
from automl_images.core.storage import InvalidJSON, join

from .leaderboard import stop_reason
from .spec import JobSpec

STATE = "mlflow.json"             # in the job's folder: the tracking URI, the run ids, the registered model
ENV = "MLFLOW_TRACKING_URI"
INSTALL = "pip install 'automl-images[mlflow]'"
TAG_JOB, TAG_TRIAL, TAG_KIND = "automl_images.job_id", "automl_images.trial_id", "automl_images.kind"
_PARENT = "mlflow.parentRunId"    # MLflow's own tag for a nested run
_RUN_STATUS = {TrialStatus.COMPLETED: "FINISHED", TrialStatus.FAILED: "FAILED", TrialStatus.STOPPED: "KILLED"}
_BATCH = 500                      # metrics per log_batch call (MLflow takes at most 1,000)
# MLflow's HTTP client retries a server that does not answer for minutes by default (7 retries, 120 s
# timeouts): that would hold the controller's pass, and the job's lease, as long. A few seconds here;
# the next publish tries again. The controller's environment may set others.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
_missing_told: set[str] = set()   # jobs whose missing mlflow was logged (once per job and process)


def tracking_uri(spec: JobSpec) -> str | None:
    """Where the job is logged: its job file's `mlflow_tracking_uri`, else $MLFLOW_TRACKING_URI; None: nowhere."""
    return spec.mlflow_tracking_uri or os.environ.get(ENV) or None


def sync(root: Root, job_id: str, spec: JobSpec, views: list[TrialView], final: bool,
         log: Callable[[str], None]) -> None:
    """Log what is not logged yet: the job's run, its finished trials and, when `final`, the report
    and the best model. Failures are logged, never raised."""
    uri = tracking_uri(spec)
    if uri is None:
        return
    if importlib.util.find_spec("mlflow") is None:  # the optional extra
        if job_id not in _missing_told:
            _missing_told.add(job_id)
            log(f"job {job_id}: MLflow tracking is asked for ({uri}) but mlflow is not installed: {INSTALL}")
        return
    try:
        _Sync(root, job_id, spec, uri).run(views, final)
    except Exception as exc:  # noqa: BLE001 - a view of the job: it goes on without it; the next publish retries
        log(f"job {job_id}: MLflow ({uri}): {type(exc).__name__}: {exc}; trying again at the next publish")


class _Sync:
    def __init__(self, root: Root, job_id: str, spec: JobSpec, uri: str):
        from mlflow import MlflowClient

        for name, value in _HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        self.root, self.job_id, self.spec, self.uri = root, job_id, spec, uri
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.name = spec.name or job_id       # the experiment's and the registered model's
        self.key = root.job_key(job_id, STATE)
        try:
            saved = root.storage.read_json(self.key) or {}
        except InvalidJSON:  # torn: the tags find what it named
            saved = {}
        # A job logged to another tracking server before (the controller's environment changed): start afresh there.
        self.state: dict[str, Any] = saved if saved.get("tracking_uri") == uri else {"tracking_uri": uri}
        self.state.setdefault("trials", {})

    def run(self, views: list[TrialView], final: bool) -> None:
        if self.state.get("finished"):
            return
        experiment = self._experiment()
        job_run = self._job_run(experiment)
        for view in views:
            if view.is_terminal and view.trial_id not in self.state["trials"]:
                self.state["trials"][view.trial_id] = self._trial_run(experiment, job_run, view)
                self._save()
        best = self._best_value(views)
        if best is not None:  # the best so far, by the number of finished trials
            self.client.log_metric(job_run, f"best_{self.spec.primary_metric}", best,
                                   step=len(self.state["trials"]))
        if final:
            self._finish(job_run, best is not None)

    def _save(self) -> None:
        self.root.storage.write_json(self.key, self.state)

    def _experiment(self) -> str:
        if "experiment_id" not in self.state:
            found = self.client.get_experiment_by_name(self.name)
            self.state["experiment_id"] = found.experiment_id if found else self.client.create_experiment(self.name)
            self._save()
        return self.state["experiment_id"]

    def _find(self, experiment: str, tags: dict[str, str]) -> Any:
        query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
        runs = self.client.search_runs([experiment], filter_string=query, max_results=1)
        return runs[0] if runs else None

    def _job_run(self, experiment: str) -> str:
        if "run_id" not in self.state:
            tags = {TAG_JOB: self.job_id, TAG_KIND: "job"}
            found = self._find(experiment, tags)
            if found is None:
                found = self.client.create_run(experiment, tags=tags, run_name=self.job_id)
                spec, limits = self.spec, self.spec.limits
                params = {"task": spec.task.value, "primary_metric": spec.primary_metric, "sampling": spec.sampling,
                          "max_trials": limits.max_trials, "max_concurrent_trials": limits.max_concurrent_trials,
                          "early_termination": spec.early_termination.policy if spec.early_termination else "none",
                          **{f"search_space.{i}.{name}": value for i, space in enumerate(spec.search_space)
                             for name, value in space.items()}}
                self._log_batch(found.info.run_id, params=params)
            self.state["run_id"] = found.info.run_id
            self._save()
        return self.state["run_id"]

    def _trial_run(self, experiment: str, job_run: str, view: TrialView) -> str:
        """The trial's run, created, filled and ended at once."""
        tags = {TAG_JOB: self.job_id, TAG_TRIAL: view.trial_id, TAG_KIND: "trial", _PARENT: job_run}
        found = self._find(experiment, {TAG_JOB: self.job_id, TAG_TRIAL: view.trial_id})
        if found is not None and found.info.status != "RUNNING":
            return found.info.run_id
        if found is not None:  # created by a controller that died while filling it
            self.client.delete_run(found.info.run_id)
        status = view.status or {}
        run = self.client.create_run(experiment, tags=tags, run_name=view.trial_id,
                                     start_time=_ms(status.get("started_at")))
        spec = self.root.read_trial(self.job_id, view.trial_id, FILES.spec) or {}
        self._log_batch(run.info.run_id, params=spec.get("hyperparameters") or view.params,
                        metrics=self._evaluations(view.trial_id),
                        tags={"status": view.trial_status.value, "reason": _reason(status)})
        self.client.set_terminated(run.info.run_id, _RUN_STATUS[view.trial_status],
                                   end_time=_ms(status.get("updated_at")))
        return run.info.run_id

    def _evaluations(self, trial: str) -> list[tuple[str, float, int]]:
        """(name, value, epoch) of every number of every metrics file the trial wrote."""
        folder = self.root.trial_key(self.job_id, trial, FILES.metrics_dir)
        out = []
        for name in sorted(self.root.storage.list(folder)):
            try:
                values = self.root.storage.read_json(join(folder, name))
            except InvalidJSON:  # torn: its epoch goes unlogged rather than the trial
                continue
            if not isinstance(values, dict):
                continue
            epoch = values.get("epoch")
            step = int(epoch) if isinstance(epoch, (int, float)) else int(name.split(".")[0] or 0)
            out += [(key, float(value), step) for key, value in values.items()
                    if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)]
        return out

    def _log_batch(self, run_id: str, params: dict[str, Any] | None = None,
                   metrics: list[tuple[str, float, int]] = (), tags: dict[str, str] | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = _ms(time.time())
        entries = [Metric(key, value, now, step) for key, value, step in metrics]
        params_list = [Param(key, str(value)) for key, value in (params or {}).items()]
        for start in range(0, len(params_list), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=params_list[start:start + 100])
        for start in range(0, len(entries), _BATCH):
            self.client.log_batch(run_id, metrics=entries[start:start + _BATCH])
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def _best_value(self, views: list[TrialView]) -> float | None:
        metric = self.spec.primary_metric
        values = [v.primary(metric) for v in views if v.is_terminal and v.primary(metric) is not None]
        return max(values, key=lambda value: oriented(metric, value)) if values else None

    def _finish(self, job_run: str, has_result: bool) -> None:
        """The report and leaderboard as artifacts, the best model logged and registered, the run ended."""
        storage = self.root.storage
        with tempfile.TemporaryDirectory() as folder:
            for key in (self.root.report(self.job_id), self.root.leaderboard(self.job_id, "csv")):
                if storage.exists(key):
                    path = os.path.join(folder, key.rsplit("/", 1)[-1])
                    with open(path, "wb") as f:
                        f.write(storage.read_bytes(key))
                    self.client.log_artifact(job_run, path)
            model_info = self.root.best(self.job_id, FILES.model_info.split("/")[-1])  # best/model.json
            if "model" not in self.state and storage.exists(model_info):
                self.state["model"] = self._register(job_run, folder)
                self._save()
        self.client.set_terminated(job_run, "FINISHED" if has_result else "FAILED")
        self.state["finished"] = True
        self._save()

    def _register(self, job_run: str, folder: str) -> dict[str, Any]:
        """The best model as a pyfunc model under the job run's "model", registered once: a version
        of this run already in the registry is the one."""
        import mlflow.pyfunc

        from automl_images.trainer.mlflow_model import ARTIFACT, ImageModel  # imports no torch

        versions = self.client.search_model_versions(f"run_id = '{job_run}'")
        if not versions:
            best = os.path.join(folder, "best")
            for name in self.root.storage.walk(self.root.best(self.job_id)):
                path = os.path.join(best, *name.split("/"))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(self.root.storage.read_bytes(self.root.best(self.job_id, name)))
            saved = os.path.join(folder, "pyfunc")
            # The requirements are given: inferring them would load the model (torch) in the controller.
            mlflow.pyfunc.save_model(saved, python_model=ImageModel(), artifacts={ARTIFACT: best},
                                     pip_requirements=["automl-images[trainer]"])
            self.client.log_artifacts(job_run, saved, "model")
            if not self.client.search_registered_models(f"name = '{self.name}'"):
                self.client.create_registered_model(self.name)
            versions = [self.client.create_model_version(self.name, f"runs:/{job_run}/model", run_id=job_run)]
        version = versions[0]
        return {"name": version.name, "version": str(version.version),
                "uri": f"models:/{version.name}/{version.version}"}


def _reason(status: dict[str, Any]) -> str:
    return stop_reason(status)[:5000] or "-"


def _ms(seconds: Any) -> int | None:
    return int(seconds * 1000) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else None
