"""A job submitted from Python (controller/automl.py), or any job of a root: wait for it with a
progress bar, read its leaderboard, write and open its report, load its best model.

    run = SubmittedJob("fridge-20261206-101500", root="s3://bucket/automl")
    run.wait()                       # runs the job's controller here while it waits (see `wait`)
    run.leaderboard()                # a pandas DataFrame when pandas is installed, else a list of dicts
    run.open_report()
    model = run.load_best_model()    # needs the trainer: pip install 'automl-images[trainer]'
    model.predict(["photo.jpg"])

Everything is read from the bucket through the readers `automl-images status`, `leaderboard` and
`report` use; nothing here keeps state of its own, so a notebook restarted midway picks the job up
with `SubmittedJob(job_id, root)`.
"""
from __future__ import annotations

import os
import tempfile
import time
import webbrowser
from typing import Any, Callable

from automl_images.core import trials
from automl_images.core.layout import Root, job_id_from_name
from automl_images.core.records import JobStatus, JobView

from . import accepted, leaderboard, report
from .job_state import read_state
from .loop import Controller
from .progress import progress_line

ROOT_ENV = "AUTOML_IMAGES_ROOT"   # as the command line's --root
QUEUED = "queued"                 # in the inbox, not yet accepted by a controller


class SubmittedJob:
    def __init__(self, job_id: str, root: str | None = None):
        self.job_id = job_id
        self.root = Root(self.root_url(root))

    @staticmethod
    def root_url(root: str | None) -> str:
        """`root`, else $AUTOML_IMAGES_ROOT."""
        url = root or os.environ.get(ROOT_ENV)
        if not url:
            raise ValueError(f"no root: pass root= (a folder or a bucket URL) or set ${ROOT_ENV}")
        return os.fspath(url)

    def __repr__(self) -> str:
        return f"SubmittedJob({self.job_id!r}, root={self.root.url!r})"

    # -- where the job is ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The job's state.json (status, reason, cost, ...); {"status": "queued"} while it waits in the inbox."""
        state, _ = read_state(self.root, self.job_id, time.time())
        if state is not None:
            return state
        if self._inbox_file() is not None:
            return {"status": QUEUED}
        raise LookupError(f"no job {self.job_id!r} in {self.root.url}")

    @property
    def status(self) -> str:
        return self.state()["status"]

    def progress(self) -> tuple[dict[str, Any], int, int, str]:
        """(state, finished trials, max trials, the controller's progress line)."""
        state = self.state()
        if state["status"] == QUEUED:
            return state, 0, 0, "queued: waiting for a controller to accept it"
        try:
            spec = accepted.load(self.root, self.job_id)
        except FileNotFoundError:  # rejected, or not accepted yet: its state says which
            return state, 0, 0, f"{state['status']}: {state.get('reason', '')}".rstrip(": ")
        views = trials.read_all(self.root, self.job_id, time.time())
        job = JobView(self.job_id, state, views)
        return state, sum(v.is_terminal for v in views), spec.limits.max_trials, progress_line(spec, job)

    # -- waiting ------------------------------------------------------------------------------------
    def wait(self, controller: bool | Controller = True, interval_s: float = 2.0, timeout_s: float | None = None,
             show_progress: bool = True) -> str:
        """Until the job ends; returns its final status (completed, failed, cancelled, rejected).

        `controller=True` runs this job's controller in this process while it waits (as
        `automl-images controller` would: it accepts the job from the inbox and launches its trials),
        so a notebook needs nothing else running. Where another controller already runs the job, this
        one only watches: a job is acted on by the holder of its lease alone. `controller=False`
        only watches; a Controller passes one built by the caller (its launchers, its log). An
        error of a pass is raised: everything is in the bucket, so calling `wait` again goes on.

        The progress bar is tqdm's (tqdm.auto: a widget in Jupyter) when tqdm is installed, else a
        line printed whenever the job's progress changes."""
        runner = Controller(self.root) if controller is True else (controller or None)
        bar = _ProgressBar(self.job_id, show_progress)
        started = time.monotonic()
        try:
            while True:
                if runner is not None:
                    self._reconcile(runner)
                state, done, total, line = self.progress()
                bar.update(done, total, line)
                status = state["status"]
                if status != QUEUED and JobStatus(status).is_terminal():
                    bar.close(f"{self.job_id}: {status}" + (f": {state['reason']}" if state.get("reason") else ""))
                    return status
                if timeout_s is not None and time.monotonic() - started > timeout_s:
                    raise TimeoutError(f"job {self.job_id} is still {status} after {timeout_s:g}s")
                time.sleep(interval_s)
        finally:
            bar.close()
            if runner is not None:
                runner.leases.release_all()  # another controller takes over at once

    def _reconcile(self, runner: Controller) -> None:
        """One pass over this job alone (`Controller.reconcile_once` would drive every job of the root)."""
        name = self._inbox_file()
        if name is not None:
            runner.accept(name)
        runner.reconcile_job(self.job_id)

    def _inbox_file(self) -> str | None:
        return next((n for n in self.root.inbox_files() if job_id_from_name(n) == self.job_id), None)

    # -- results ------------------------------------------------------------------------------------
    def leaderboard(self, as_frame: bool | None = None) -> Any:
        """Every trial, best first, as `automl-images leaderboard` ranks them, one flat row each
        (rank, trial_id, status, the metrics, the shown parameters, epochs, duration, cost, skipped
        images, why it stopped). A pandas DataFrame when pandas is installed (`as_frame=None`) or
        asked for, else a list of dicts."""
        spec = accepted.load(self.root, self.job_id)
        board = leaderboard.build(spec.primary_metric, trials.read_all(self.root, self.job_id, time.time()),
                                  spec.search_space)
        rows = flat_rows(board)
        if as_frame is False:
            return rows
        try:
            import pandas
        except ImportError:
            if as_frame:
                raise
            return rows
        return pandas.DataFrame(rows, columns=list(rows[0]) if rows else None)

    def report(self, out: str | None = None) -> str:
        """Write the job's HTML report now (jobs/<id>/report.html, or `out`); returns where it went."""
        return report.write(self.root, self.job_id, out=out)

    def open_report(self, open_browser: Callable[[str], Any] = webbrowser.open) -> str:
        """Write the report to a local file (the root's own, for a local root; else a temporary file)
        and open it in the browser; returns the file's path."""
        local = None if self.root.storage.is_local else \
            os.path.join(tempfile.mkdtemp(prefix="automl-images-"), f"{self.job_id}-report.html")
        path = report.write(self.root, self.job_id, out=local)
        open_browser("file://" + os.path.abspath(path))
        return path

    def best_model_url(self) -> str:
        """The job's best model folder (jobs/<id>/best/), published when the job ends."""
        return self.root.storage.url(self.root.best(self.job_id))

    def load_best_model(self) -> Any:
        """The best trial's model, rebuilt on the CPU (trainer/export.py's LoadedModel: `.predict(images)`
        with paths, URLs, bytes or PIL images). Needs the trainer: pip install 'automl-images[trainer]'."""
        from automl_images.trainer.export import load_model  # torch: only when a model is loaded

        return load_model(self.best_model_url())


def flat_rows(board: dict[str, Any]) -> list[dict[str, Any]]:
    """The leaderboard's rows flattened: the columns of its CSV, with the values as numbers."""
    metrics, params = leaderboard.metric_names(board), leaderboard.param_names(board)
    return [{"rank": rank, "trial_id": row["trial_id"], "status": row["status"],
             **{name: row["metrics"].get(name) for name in metrics},
             **{name: row["params"].get(name) for name in params},
             **{key: row.get(key) for key in ("epochs", "duration_s", "cost_usd", "skipped_images", "reason")}}
            for rank, row in enumerate(board["trials"], start=1)]


class _ProgressBar:
    """tqdm.auto's bar (Jupyter's widget, or a terminal bar) when tqdm is installed; else a plain
    line each time the progress changes."""

    def __init__(self, job_id: str, enabled: bool):
        self.enabled = enabled
        self.last = ""
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=0, desc=job_id, unit="trial")

    def update(self, done: int, total: int, line: str) -> None:
        if not self.enabled or line == self.last:
            return
        self.last = line
        if self.bar is None:
            print(line, flush=True)
            return
        self.bar.total, self.bar.n = total, done
        self.bar.set_postfix_str(line.split(" | ", 1)[-1], refresh=False)  # the best so far and the cost
        self.bar.refresh()

    def close(self, message: str | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if message and self.enabled:
            print(message, flush=True)
