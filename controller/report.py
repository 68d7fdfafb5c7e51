"""`automl-images report JOB`: the job's sweep at a glance, one self-contained HTML file
(jobs/<id>/report.html) that opens with no network.

    automl-images report JOB_ID --root ./bucket [--out report.html]

Charts are plotly's, its JavaScript embedded once in the page (4.8 MB; a 50-trial sweep's report is
about 5 MB): plotly ships its bundle in the Python package, so the file needs no CDN and no build
step, and its charts zoom, hover and filter (parallel coordinates), where Vega-Lite would need three
bundles (vega, vega-lite, vega-embed) that no Python package we use carries.

Everything is read through the readers the rest of the controller uses: the trials through
core/trials.py, the leaderboard built by leaderboard.py, the best trial's metrics file and its
best_predictions.json (written by the trainer, trainer/best_predictions.py: thumbnails with the
ground truth and predictions, drawn here as SVG over the embedded JPEG: the controller reads no
image). The page collects its own JavaScript errors into `<body data-js-errors>`, so a test (or a
person) can tell that it rendered cleanly.
"""
from __future__ import annotations

import functools
import html
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from automl_images.core import trials
from automl_images.core.hyperparameters import oriented
from automl_images.core.layout import FILES, Root
from automl_images.core.records import JobView, TrialView
from automl_images.core.storage import InvalidJSON, Storage

from . import accepted, leaderboard
from .spec import JobSpec, JobSpecError

IMAGES_SHOWN = 24          # the worst of the best trial's saved validation images
PR_POINTS = 101            # points of a precision-recall curve (recall 0, 0.01, ... 1)
IOU_THRESHOLD = 0.5        # a predicted box matches a true one of its class (as VOC)
SCORE_THRESHOLD = 0.3      # predictions drawn on the images, and counted in an image's error
DETECTION_TASKS = ("image-object-detection", "image-instance-segmentation")
# A render takes ~0.3 s (plus ~3 s of imports, once): a sweep whose trials finish every few seconds
# would spend its controller's time on a page nobody reads that often.
REFRESH_S = 60.0

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf")
STATUS_COLORS = {"completed": "#2ca02c", "stopped": "#ff7f0e", "failed": "#d62728", "running": "#1f77b4",
                 "pending": "#7f7f7f"}
_MARGIN = {"l": 60, "r": 20, "t": 40, "b": 50}   # a chart's margins, where it sets none


@dataclass
class JobData:
    """What the report shows, read once from the bucket."""
    job_id: str
    state: dict[str, Any]
    spec: JobSpec | None
    views: list[TrialView]
    board: dict[str, Any]
    best_metrics: dict[str, Any] = field(default_factory=dict)      # the best trial's best-epoch metrics file
    best_predictions: dict[str, Any] | None = None

    @property
    def metric(self) -> str:
        return self.board["primary_metric"]

    @property
    def best(self) -> dict[str, Any] | None:
        return leaderboard.best_trial(self.board)

    @functools.cached_property
    def start(self) -> float:
        """When the job began: its acceptance, else its first trial's start."""
        starts = [_start(v) for v in self.views if _start(v) is not None]
        return self.state.get("accepted_at") or min(starts, default=0.0)

    @functools.cached_property
    def unit(self) -> tuple[float, str]:
        """The time axes' unit: hours, or minutes for a job of under two hours."""
        last = max((_last(v, self.start) for v in self.views), default=self.start)
        return (60.0, "minutes since the job began") if last - self.start < 7200 else \
            (3600.0, "hours since the job began")

    def since_start(self, moment: float) -> float:
        return (moment - self.start) / self.unit[0]


def gather(root: Root, job_id: str, job: JobView | None = None, spec: JobSpec | None = None) -> JobData:
    """The job as the bucket holds it; its state, trials and spec from `job` and `spec` where the
    caller holds them (the controller, every pass), else read."""
    if job is None:
        job = JobView(job_id, root.storage.read_json(root.job_state(job_id)) or {},
                      trials.read_all(root, job_id, time.time()))
    if spec is None:
        try:
            spec = accepted.load(root, job_id)
        except (FileNotFoundError, JobSpecError):
            spec = None
    state, views = job.state, job.trials
    metric = spec.primary_metric if spec else (root.storage.read_json(root.leaderboard(job_id)) or {}).get(
        "primary_metric", "accuracy")
    board = leaderboard.build(metric, views, spec.search_space if spec else ())
    data = JobData(job_id, state, spec, views, board)
    best = data.best
    if best is not None:
        view = next(v for v in views if v.trial_id == best["trial_id"])
        epoch = ((view.status or {}).get("best") or {}).get("epoch") or (view.status or {}).get("best_epoch")
        # Torn or not ours: the report goes without the best trial's charts rather than fail.
        if epoch:
            data.best_metrics = _object(root, job_id, best["trial_id"], FILES.metrics(int(epoch))) or {}
        data.best_predictions = _object(root, job_id, best["trial_id"], FILES.best_predictions)
        if not isinstance((data.best_predictions or {}).get("images"), list):
            data.best_predictions = None
    return data


def _object(root: Root, job_id: str, trial: str, name: str) -> dict[str, Any] | None:
    """A trial's JSON object; None when it is absent, torn or not an object."""
    try:
        value = root.read_trial(job_id, trial, name)
    except InvalidJSON:
        return None
    return value if isinstance(value, dict) else None


def write(root: Root, job_id: str, out: str | None = None, data: JobData | None = None) -> str:
    """Render the job's report (`data`, else what `gather` reads) to `out` (a path or URL; default
    jobs/<id>/report.html in the root); returns where it went."""
    page = render(data or gather(root, job_id))
    if out is None:
        root.storage.write_text(root.report(job_id), page)
        return root.storage.url(root.report(job_id))
    folder, _, name = out.replace("\\", "/").rpartition("/")
    storage = Storage(folder or ".")
    storage.write_text(name, page)
    return storage.url(name)


class Refresher:
    """The controller's report of one job, rewritten when the set of finished trials changed, at
    most every REFRESH_S seconds, and always at the end (`final`), from what the controller holds.
    A report that cannot be made is logged, never a reason to stop reconciling the job."""

    def __init__(self, root: Root, job_id: str, log: Callable[[str], None]):
        self.root, self.job_id, self.log = root, job_id, log
        self._written_at = -math.inf   # time.monotonic(): the throttle is about this process's CPU

    def __call__(self, job: JobView, spec: JobSpec, final: bool = False) -> None:
        if not final and time.monotonic() - self._written_at < REFRESH_S:
            return
        self._written_at = time.monotonic()
        try:
            write(self.root, self.job_id, data=gather(self.root, self.job_id, job, spec))
        except Exception as exc:  # noqa: BLE001 - the report is a view: the job goes on without it
            self.log(f"job {self.job_id}: the report could not be written: {type(exc).__name__}: {exc}")


# -- the page ----------------------------------------------------------------------------------------

def render(data: JobData) -> str:
    import plotly.graph_objects as go  # here: a controller pass that writes no report does not load it
    sections: list[tuple[str, str]] = [("Leaderboard", _leaderboard_table(data))]
    charts = [
        ("Optimisation history", _history(go, data)),
        ("Parallel coordinates", _parallel(go, data)),
        ("Parameter importance", _importance(go, data)),
        ("Each hyperparameter against " + data.metric, _slices(go, data)),
        ("Learning curves", _curves(go, data)),
        ("Timeline", _timeline(go, data)),
        ("Cost", _cost(go, data)),
    ]
    charts += _best_trial_charts(go, data)
    for i, (title, figure) in enumerate(charts):
        if isinstance(figure, str):   # a note: what the chart needs and the job does not have yet
            sections.append((title, figure))
        else:
            figure.update_layout(margin={**_MARGIN, **figure.layout.margin.to_plotly_json()})
            sections.append((title, figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"chart-{i}",
                                                   config={"displaylogo": False, "responsive": True})))
    grid = _image_grid(data)
    if grid:
        sections.append(("Validation images of the best trial, worst errors first", grid))
    return _page(data, sections)


def _page(data: JobData, sections: list[tuple[str, str]]) -> str:
    from plotly.offline import get_plotlyjs
    best = data.best
    summary = (f"{data.state.get('status', 'unknown')} · {len(data.views)} trials · "
               f"{data.metric} ({data.board['direction']}) · cost ${data.board['cost_usd']:.2f}"
               + (f" · best {best['trial_id']}: {data.metric}={best['metrics'][data.metric]:.4g}" if best else ""))
    reason = f'<pre class="note">{html.escape(data.state["reason"])}</pre>' if data.state.get("reason") else ""
    body = "\n".join(f'<section><h2>{html.escape(title)}</h2>\n{content}\n</section>' for title, content in sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(data.job_id)}: automl-images report</title>
<script>
// Every JavaScript error of the page, kept where a reader of the DOM finds it.
window.__reportErrors = [];
window.addEventListener("error", function (e) {{
  window.__reportErrors.push(String(e.message));
  document.body && document.body.setAttribute("data-js-errors", JSON.stringify(window.__reportErrors));
}});
</script>
<script>{get_plotlyjs()}</script>
<style>{_CSS}</style></head>
<body data-js-errors="[]">
<h1>{html.escape(data.job_id)}</h1><p class="summary">{html.escape(summary)}</p>{reason}
{body}
</body></html>
"""


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.summary { color: #555; }
table.board { border-collapse: collapse; font-size: 13px; }
table.board th, table.board td { border-bottom: 1px solid #eee; padding: 3px 8px; text-align: left; }
table.board td.num { text-align: right; font-variant-numeric: tabular-nums; }
.status-completed { color: #2ca02c; } .status-stopped { color: #ff7f0e; } .status-failed { color: #d62728; }
.note { color: #666; font-size: 13px; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.cell { border: 1px solid #ddd; padding: 6px; font-size: 12px; } .cell.wrong { border-color: #d62728; }
.cell svg { margin-right: 4px; background: #f4f4f4; }
.pair { display: flex; } .caption { max-width: 340px; overflow-wrap: anywhere; }
"""


# -- the leaderboard ---------------------------------------------------------------------------------

def _leaderboard_table(data: JobData) -> str:
    board = data.board
    metrics = leaderboard.metric_names(board)[:4]
    params = leaderboard.param_names(board)
    header = (["rank", "trial", "status", "why it stopped"] + metrics + params
              + ["epochs", "duration", "cost", "skipped images"])
    rows = []
    for rank, row in enumerate(board["trials"], start=1):
        cells = [(str(rank), "num"), (row["trial_id"], ""),
                 (f'<span class="status-{row["status"]}">{row["status"]}</span>', "raw"),
                 (row.get("reason") or "", "")]
        cells += [(_fmt(row["metrics"].get(m)), "num") for m in metrics]
        cells += [(_fmt(row["params"].get(p)), "") for p in params]
        cells += [(str(row["epochs"]), "num"), (_duration(row["duration_s"]), "num"),
                  (f"${row['cost_usd']:.2f}", "num"), (str(row.get("skipped_images") or 0), "num")]
        rows.append("<tr>" + "".join(
            f"<td>{text}</td>" if kind == "raw" else f'<td class="{kind}">{html.escape(text)}</td>'
            for text, kind in cells) + "</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f'<table class="board"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


# -- the sweep ---------------------------------------------------------------------------------------

def _scored(data: JobData) -> list[tuple[TrialView, float]]:
    """Trials with a usable primary metric, in trial order."""
    out = []
    for view in data.views:
        value = view.primary(data.metric)
        if value is not None and math.isfinite(value):
            out.append((view, value))
    return out


def _best_so_far(metric: str, values: list[float]) -> list[float]:
    best: list[float] = []
    for value in values:
        best.append(value if not best or oriented(metric, value) > oriented(metric, best[-1]) else best[-1])
    return best


def _history(go, data: JobData):
    from plotly.subplots import make_subplots
    scored = _scored(data)
    if not scored:
        return _empty(f"no trial has reported {data.metric} yet")
    metric = data.metric
    figure = make_subplots(rows=1, cols=2, subplot_titles=("by trial", f"by time ({data.unit[1]})"))
    names = [v.trial_id for v, _ in scored]
    values = [value for _, value in scored]
    figure.add_trace(go.Scatter(x=names, y=values, mode="markers", name=metric,
                                marker={"color": [STATUS_COLORS.get(v.trial_status.value) for v, _ in scored]}),
                     row=1, col=1)
    figure.add_trace(go.Scatter(x=names, y=_best_so_far(metric, values), mode="lines", name="best so far",
                                line={"shape": "hv", "color": "#333"}), row=1, col=1)
    by_time = sorted(((_last(v, data.start), v.trial_id, value) for v, value in scored))
    times = [data.since_start(t) for t, _, _ in by_time]
    figure.add_trace(go.Scatter(x=times, y=[value for *_, value in by_time], mode="markers", showlegend=False,
                                text=[t for _, t, _ in by_time], marker={"color": "#1f77b4"}), row=1, col=2)
    figure.add_trace(go.Scatter(x=times, y=_best_so_far(metric, [value for *_, value in by_time]), mode="lines",
                                showlegend=False, line={"shape": "hv", "color": "#333"}), row=1, col=2)
    figure.update_yaxes(title_text=metric)
    figure.update_layout(height=380)
    return figure


def _param_columns(data: JobData, rows: list[dict[str, Any]]) -> dict[str, tuple[list[float], list[str] | None]]:
    """Each shown parameter as numbers: numeric values as they are, other values as category codes
    (with the categories); a trial without the parameter (another subspace) is NaN."""
    columns = {}
    for name in leaderboard.param_names(data.board):
        values = [row["params"].get(name) for row in rows]
        present = [v for v in values if v is not None]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            columns[name] = ([float(v) if v is not None else math.nan for v in values], None)
        else:
            categories = sorted({str(v) for v in present})
            columns[name] = ([float(categories.index(str(v))) if v is not None else math.nan for v in values],
                             categories)
    return columns


def _metric_rows(data: JobData) -> list[dict[str, Any]]:
    return [row for row in data.board["trials"] if leaderboard.is_number(row["metrics"].get(data.metric))]


def _parallel(go, data: JobData):
    rows = _metric_rows(data)
    if len(rows) < 2:
        return _empty("parallel coordinates need two trials with a metric")
    dimensions = []
    for name, (values, categories) in _param_columns(data, rows).items():
        present = [v for v in values if not math.isnan(v)]
        if categories is None and _spans_decades(present):   # a log-uniform learning rate, say
            # the powers of ten within the values (two at least, as they span two decades)
            exponents = range(math.ceil(math.log10(min(present))), math.floor(math.log10(max(present))) + 1)
            values = [math.log10(v) if not math.isnan(v) else math.nan for v in values]
            dimension = {"label": name, "tickvals": list(exponents), "ticktext": [f"1e{e}" for e in exponents]}
        else:
            dimension = {"label": name}
            if categories is not None:
                dimension.update(tickvals=list(range(len(categories))), ticktext=categories)
        # A trial whose subspace lacks the parameter sits below the axis's values.
        low = min((v for v in values if not math.isnan(v)), default=0.0) - 1
        dimension["values"] = [v if not math.isnan(v) else low for v in values]
        dimensions.append(dimension)
    metric_values = [row["metrics"][data.metric] for row in rows]
    dimensions.append({"label": data.metric, "values": metric_values})
    reverse = data.board["direction"] == "minimize"
    figure = go.Figure(go.Parcoords(dimensions=dimensions, line={
        "color": metric_values, "colorscale": "Viridis", "reversescale": reverse, "showscale": True}))
    figure.update_layout(height=420, margin={"l": 150, "r": 60, "t": 60, "b": 40})  # room for category names
    return figure


def importances(data: JobData) -> dict[str, float]:
    """Each varying parameter's share of a random forest's impurity-based importances (scikit-
    learn's `feature_importances_`, mean decrease in impurity) for predicting the primary metric
    from the parameters; empty below 3 trials with a metric or when nothing varies."""
    rows = _metric_rows(data)
    columns = {name: values for name, (values, _) in _param_columns(data, rows).items()
               if len({v for v in values if not math.isnan(v)}) > 1}
    if len(rows) < 3 or not columns:
        return {}
    from sklearn.ensemble import RandomForestRegressor

    # A parameter absent from a trial's subspace gets a value below every real one.
    x = np.array([[v if not math.isnan(v) else -1e12 for v in values] for values in columns.values()]).T
    y = np.array([oriented(data.metric, row["metrics"][data.metric]) for row in rows])
    forest = RandomForestRegressor(n_estimators=100, random_state=0).fit(x, y)
    return dict(sorted(zip(columns, forest.feature_importances_.tolist()), key=lambda item: item[1]))


def _importance(go, data: JobData):
    shares = importances(data)
    if not shares:
        return _empty("parameter importance needs three trials with a metric and a parameter that varies")
    figure = go.Figure(go.Bar(x=list(shares.values()), y=list(shares), orientation="h", marker={"color": "#1f77b4"}))
    figure.update_layout(height=120 + 30 * len(shares), xaxis_title="importance (random forest, mean decrease "
                                                                     "in impurity)")
    return figure


def _slices(go, data: JobData):
    from plotly.subplots import make_subplots
    rows = _metric_rows(data)
    names = leaderboard.param_names(data.board)
    if not rows or not names:
        return _empty("no trial with a metric and a parameter yet")
    columns = 3
    figure = make_subplots(rows=math.ceil(len(names) / columns), cols=columns, subplot_titles=names,
                           vertical_spacing=0.12)
    for i, name in enumerate(names):
        pairs = [(row["params"][name], row["metrics"][data.metric], row["trial_id"])
                 for row in rows if row["params"].get(name) is not None]
        numeric = all(isinstance(p, (int, float)) and not isinstance(p, bool) for p, _, _ in pairs)
        x = [p if numeric else str(p) for p, _, _ in pairs]
        figure.add_trace(go.Scatter(x=x, y=[m for _, m, _ in pairs], text=[t for *_, t in pairs], mode="markers",
                                    showlegend=False, marker={"color": "#1f77b4"}),
                         row=i // columns + 1, col=i % columns + 1)
        if numeric and _spans_decades(x):
            figure.update_xaxes(type="log", row=i // columns + 1, col=i % columns + 1)
    figure.update_yaxes(title_text=data.metric, col=1)
    figure.update_layout(height=300 * math.ceil(len(names) / columns))
    return figure


def _spans_decades(values: list[float]) -> bool:
    """Positive values over two decades or more: shown on a log scale."""
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 100


def _curves(go, data: JobData):
    figure = go.Figure()
    for i, view in enumerate(data.views):
        points = view.history(data.metric, by="epoch")
        if not points:
            continue
        status = view.trial_status.value
        color = COLORS[i % len(COLORS)]
        figure.add_trace(go.Scatter(x=[e for e, _ in points], y=[v for _, v in points], mode="lines+markers",
                                    name=view.trial_id, line={"color": color}, marker={"size": 4}))
        if status in ("stopped", "failed"):
            reason = leaderboard.stop_reason(view.status or {}) or status
            figure.add_trace(go.Scatter(x=[points[-1][0]], y=[points[-1][1]], mode="markers", showlegend=False,
                                        marker={"symbol": "x", "size": 12, "color": STATUS_COLORS[status]},
                                        hovertext=[f"{view.trial_id} {status}: {reason}"], hoverinfo="text"))
    if not figure.data:
        return _empty("no evaluation yet")
    figure.update_layout(height=420, xaxis_title="epoch", yaxis_title=data.metric,
                         annotations=[{"text": "× stopped (early termination, cancel) or failed", "showarrow": False,
                                       "xref": "paper", "yref": "paper", "x": 0, "y": 1.08}])
    return figure


def _start(view: TrialView) -> float | None:
    """When the trial's first attempt began (its trainer's first status, else its launch)."""
    status, launch = view.status or {}, view.launch or {}
    return status.get("started_at") or launch.get("launched_at") or launch.get("requested_at")


def _last(view: TrialView, default: float) -> float:
    """When the trial was last heard of: its end, once finished (else `default`)."""
    return (view.status or {}).get("updated_at") or _start(view) or default


def _timeline(go, data: JobData):
    """A bar per trial from its first start to its end (or last news), with its resumptions (a new
    attempt after a lost machine) and the controller's stop request marked."""
    bars, marks = [], {"resumed": [], "stop requested": []}
    for view in data.views:
        start = _start(view)
        if start is None:
            continue
        end = _last(view, start)
        bars.append((view, data.since_start(start), max(end - start, 0.0) / data.unit[0]))
        launch = view.launch or {}
        if view.attempt > 1 and launch.get("launched_at"):
            marks["resumed"].append((view.trial_id, data.since_start(launch["launched_at"]),
                                     f"attempt {view.attempt}"))
        if view.stop and isinstance(view.stop.get("requested_at"), (int, float)):
            marks["stop requested"].append((view.trial_id, data.since_start(view.stop["requested_at"]),
                                            str(view.stop.get("reason", ""))))
    if not bars:
        return _empty("no trial has started yet")
    figure = go.Figure(go.Bar(
        y=[v.trial_id for v, _, _ in bars], base=[s for _, s, _ in bars], x=[d for *_, d in bars], orientation="h",
        marker={"color": [STATUS_COLORS.get(v.trial_status.value, "#7f7f7f") for v, _, _ in bars]},
        hovertext=[f"{v.trial_id} {v.trial_status.value} ${v.cost_usd:.2f}" for v, _, _ in bars], name="trial"))
    for (name, items), symbol in zip(marks.items(), ("triangle-right", "x")):
        if items:
            figure.add_trace(go.Scatter(y=[t for t, _, _ in items], x=[h for _, h, _ in items], mode="markers",
                                        name=name, hovertext=[n for *_, n in items],
                                        marker={"symbol": symbol, "size": 11, "color": "#000"}))
    figure.update_layout(height=140 + 22 * len(bars), xaxis_title=data.unit[1],
                         yaxis={"autorange": "reversed", "type": "category"}, barmode="overlay")
    return figure


def pareto_front(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The (cost, oriented score, trial) points that no other point beats on both: cheaper or as
    cheap, and better or as good. Sorted by cost."""
    front: list[tuple[float, float, str]] = []
    for cost, score, trial in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or score > front[-1][1]:
            front.append((cost, score, trial))
    return front


def _cost(go, data: JobData):
    from plotly.subplots import make_subplots
    views = [v for v in data.views if v.launch]
    if not views:
        return _empty("no trial has been launched yet")
    if not any(v.cost_usd for v in views):
        return _empty("no trial cost anything: the launcher gave no price (the local launcher's runs are free)")
    figure = make_subplots(rows=1, cols=3, subplot_titles=(
        "cost per trial (USD)", "cumulative cost (USD)", f"{data.metric} against cost: the Pareto front"))
    figure.add_trace(go.Bar(x=[v.trial_id for v in views], y=[v.cost_usd for v in views], showlegend=False,
                            marker={"color": [STATUS_COLORS.get(v.trial_status.value) for v in views]}), row=1, col=1)
    ordered = sorted(views, key=lambda v: _last(v, data.start))
    times = [data.since_start(_last(v, data.start)) for v in ordered]
    figure.add_trace(go.Scatter(x=times, y=np.cumsum([v.cost_usd for v in ordered]).tolist(), mode="lines+markers",
                                name="spent", line={"shape": "hv"}), row=1, col=2)
    budget = data.spec.limits.max_cost_usd if data.spec else None
    if budget is not None:
        figure.add_trace(go.Scatter(x=[0, max(times + [0.0])], y=[budget, budget], mode="lines", name="budget",
                                    line={"dash": "dash", "color": "#d62728"}), row=1, col=2)
    scored = [(v.cost_usd, value, v.trial_id) for v, value in _scored(data) if v.launch]
    if scored:
        figure.add_trace(go.Scatter(x=[c for c, _, _ in scored], y=[m for _, m, _ in scored], mode="markers",
                                    text=[t for *_, t in scored], name="trials"), row=1, col=3)
        sign = oriented(data.metric, 1.0)
        front = pareto_front([(c, sign * m, t) for c, m, t in scored])
        figure.add_trace(go.Scatter(x=[c for c, _, _ in front], y=[sign * s for _, s, _ in front], mode="lines+markers",
                                    text=[t for *_, t in front], name="Pareto front",
                                    line={"shape": "hv", "color": "#d62728"}), row=1, col=3)
    figure.update_xaxes(title_text=data.unit[1], row=1, col=2)
    figure.update_xaxes(title_text="cost (USD)", row=1, col=3)
    figure.update_layout(height=380)
    return figure


def _empty(message: str) -> str:
    return f'<p class="note">{html.escape(message)}</p>'


# -- the best trial ----------------------------------------------------------------------------------

def _best_trial_charts(go, data: JobData) -> list[tuple[str, Any]]:
    best, metrics = data.best, data.best_metrics
    if best is None:
        return []
    title = f"Best trial {best['trial_id']}"
    out: list[tuple[str, Any]] = []
    matrix = metrics.get("confusion_matrix")
    if isinstance(matrix, dict) and matrix.get("matrix"):
        labels = matrix["labels"]
        figure = go.Figure(go.Heatmap(z=matrix["matrix"], x=labels, y=labels, colorscale="Blues",
                                      texttemplate="%{z}", hovertemplate="true %{y}, predicted %{x}: %{z}"))
        side = 200 + 40 * len(labels)
        figure.update_layout(height=side, width=side + 160, xaxis_title="predicted", yaxis_title="true",
                             yaxis={"autorange": "reversed"})
        out.append((f"{title}: confusion matrix", figure))
    per_class = metrics.get("per_class") if isinstance(metrics.get("per_class"), dict) else {}
    task = data.spec.task.value if data.spec else (data.best_predictions or {}).get("task", "")
    if per_class and task == "image-multi-labeling":
        figure = go.Figure([go.Bar(x=list(per_class), y=[c.get(name) for c in per_class.values()], name=name)
                            for name in ("precision", "recall", "f1")])
        figure.update_layout(height=380, barmode="group", yaxis_title="at the threshold")
        out.append((f"{title}: precision, recall and F1 per label", figure))
    if per_class and any("average_precision" in c for c in per_class.values()) and task != "image-multi-labeling":
        figure = go.Figure(go.Bar(x=list(per_class), y=[c.get("average_precision") for c in per_class.values()]))
        figure.update_layout(height=340, yaxis_title="average precision (IoU 0.5)")
        out.append((f"{title}: average precision per class (every validation image)", figure))
    curves = pr_curves(data.best_predictions) if data.best_predictions else {}
    if curves:
        figure = go.Figure([go.Scatter(x=recall, y=precision, mode="lines", name=name, line={"shape": "hv"})
                            for name, (recall, precision) in curves.items()])
        figure.update_layout(height=380, xaxis_title="recall", yaxis_title="precision",
                             xaxis={"range": [0, 1]}, yaxis={"range": [0, 1.05]})
        shown = len(data.best_predictions["images"])
        out.append((f"{title}: precision-recall curves (IoU {IOU_THRESHOLD}, the {shown} validation images "
                    f"saved with the best epoch)", figure))
    return out


def _boxes(objects: Any) -> list[dict[str, Any]]:
    """A detection label or prediction's objects (JSONL schema), crowd objects left out."""
    if not isinstance(objects, list):
        return []
    return [o for o in objects if isinstance(o, dict) and not o.get("isCrowd")]


def _iou(a: dict[str, Any], b: dict[str, Any]) -> float:
    w = min(a["bottomX"], b["bottomX"]) - max(a["topX"], b["topX"])
    h = min(a["bottomY"], b["bottomY"]) - max(a["topY"], b["topY"])
    inter = max(w, 0.0) * max(h, 0.0)
    area = ((a["bottomX"] - a["topX"]) * (a["bottomY"] - a["topY"])
            + (b["bottomX"] - b["topX"]) * (b["bottomY"] - b["topY"]) - inter)
    return inter / area if area > 0 else 0.0


def _matches(truth: list[dict[str, Any]], predicted: list[dict[str, Any]]) -> list[bool]:
    """Whether each prediction (in descending score) takes the best free true box of its class with
    IoU >= IOU_THRESHOLD: VOC's greedy rule, on one image's boxes. (The trainer's metrics do the same
    over every validation image, vectorised; the controller cannot import the trainer.)"""
    taken = [False] * len(truth)
    hits = []
    for p in predicted:
        ious = [(_iou(p, t), k) for k, t in enumerate(truth) if not taken[k] and t["label"] == p["label"]]
        best = max(ious, default=(0.0, -1))
        hit = best[0] >= IOU_THRESHOLD
        if hit:
            taken[best[1]] = True
        hits.append(hit)
    return hits


def _ranked(prediction: Any) -> list[dict[str, Any]]:
    objects = _boxes((prediction or {}).get("label"))
    return sorted(objects, key=lambda o: -float(o.get("score", 0.0)))


def pr_curves(saved: dict[str, Any]) -> dict[str, tuple[list[float], list[float]]]:
    """Per class, the precision envelope at recall 0, 0.01, ..., 1 over the saved images (detection
    and segmentation; by boxes)."""
    if saved.get("task") not in DETECTION_TASKS:
        return {}
    scored: dict[str, list[tuple[float, bool]]] = {}
    objects: dict[str, int] = {}
    for image in saved.get("images", []):
        truth = _boxes(image.get("label"))
        predicted = _ranked(image.get("prediction"))
        for t in truth:
            objects[t["label"]] = objects.get(t["label"], 0) + 1
        for p, hit in zip(predicted, _matches(truth, predicted)):
            scored.setdefault(p["label"], []).append((float(p.get("score", 0.0)), hit))
    curves = {}
    grid = np.linspace(0, 1, PR_POINTS)
    for label in sorted(objects):
        ranked = sorted(scored.get(label, []), key=lambda item: -item[0])
        hits = np.array([hit for _, hit in ranked], dtype=float)
        tp = np.cumsum(hits)
        recall = tp / objects[label] if len(hits) else np.zeros(0)
        precision = tp / np.arange(1, len(hits) + 1) if len(hits) else np.zeros(0)
        # The envelope: at each recall, the best precision at that recall or beyond.
        envelope = [float(precision[recall >= r].max()) if (recall >= r).any() else 0.0 for r in grid]
        curves[label] = (grid.tolist(), envelope)
    return curves


def image_error(task: str, image: dict[str, Any]) -> float:
    """How wrong the prediction of one image is, in [0, 1]: 1 - the true class's score
    (classification); the mean absolute gap between the truth and the scores (multi-label); the
    share of true and predicted boxes (score >= SCORE_THRESHOLD) left unmatched (detection)."""
    truth, prediction = image.get("label"), image.get("prediction") or {}
    scores = prediction.get("scores") or {}
    if task == "image-classification":
        return 1.0 - float(scores.get(truth, 1.0 if prediction.get("label") == truth else 0.0))
    if task == "image-multi-labeling":
        truth = set(truth or [])
        return float(np.mean([abs((name in truth) - float(s)) for name, s in scores.items()])) if scores else 0.0
    true_boxes = _boxes(truth)
    shown = [p for p in _ranked(prediction) if float(p.get("score", 0.0)) >= SCORE_THRESHOLD]
    total = len(true_boxes) + len(shown)
    return (total - 2 * sum(_matches(true_boxes, shown))) / total if total else 0.0


def _image_grid(data: JobData) -> str:
    saved = data.best_predictions
    if not saved or not saved.get("images"):
        return ""
    task = saved.get("task", "")
    colors = {label: COLORS[i % len(COLORS)] for i, label in enumerate(saved.get("labels") or [])}
    errors = [(image_error(task, image), image) for image in saved["images"]]
    worst = sorted(errors, key=lambda item: -item[0])[:IMAGES_SHOWN]
    cells = []
    for error, image in worst:
        prediction = image.get("prediction") or {}
        name = str(image.get("image_url", "")).rsplit("/", 1)[-1]
        lines = [f"{name} · error {error:.2f}"]
        if task in DETECTION_TASKS:
            shown = [p for p in _ranked(prediction) if float(p.get("score", 0.0)) >= SCORE_THRESHOLD]
            truth = _boxes(image.get("label"))
            pictures = _svg(image, shown, colors, "predicted") + _svg(image, truth, colors, "truth")
            lines.append(f"{len(shown)} predicted, {len(truth)} true")
        else:
            pictures = _svg(image, [], colors, "")
            truth, predicted = _label_text(image.get("label")), _label_text(prediction.get("label"))
            lines.append(f"true: {truth} · predicted: {predicted}")
            top = sorted((prediction.get("scores") or {}).items(), key=lambda item: -item[1])[:3]
            lines.append(", ".join(f"{k} {v:.2f}" for k, v in top))
        wrong = " wrong" if _is_wrong(task, image, error) else ""
        caption = "<br>".join(html.escape(line) for line in lines)
        cells.append(f'<div class="cell{wrong}" data-error="{error:.4f}"><div class="pair">{pictures}</div>'
                     f'<div class="caption">{caption}</div></div>')
    sides = (f"; left: the predictions (score ≥ {SCORE_THRESHOLD}), right: the ground truth"
             if task in DETECTION_TASKS else "")
    note = (f'<p class="note">The {len(worst)} worst of the first {len(saved["images"])} validation images, '
            f'predicted by the model of epoch {saved.get("epoch")}{html.escape(sides)}.</p>')
    return note + '<div class="grid">' + "".join(cells) + "</div>"


def _is_wrong(task: str, image: dict[str, Any], error: float) -> bool:
    """The predicted label is not the true one (classification, multi-label: the same set), or a
    box is missed or extra (detection)."""
    truth, predicted = image.get("label"), (image.get("prediction") or {}).get("label")
    if task == "image-classification":
        return predicted != truth
    if task == "image-multi-labeling":
        return set(predicted or []) != set(truth or [])
    return error > 0


def _label_text(label: Any) -> str:
    return ", ".join(map(str, label)) if isinstance(label, list) else str(label)


def _svg(image: dict[str, Any], objects: list[dict[str, Any]], colors: dict[str, str], title: str) -> str:
    """The thumbnail with `objects` drawn over it: boxes, polygons (segmentation), labels and scores."""
    width, height = int(image.get("width") or 1), int(image.get("height") or 1)
    scale = 160 / max(width, height)
    w, h = round(width * scale), round(height * scale)
    parts = [f'<svg class="thumb" width="{w}" height="{h}" viewBox="0 0 {w} {h}"><title>{html.escape(title)}</title>',
             f'<image href="data:image/jpeg;base64,{image.get("thumbnail", "")}" width="{w}" height="{h}"/>']
    for o in objects:
        color = colors.get(o.get("label"), "#ff00ff")
        x0, y0, x1, y1 = (float(o.get(k, 0.0)) for k in ("topX", "topY", "bottomX", "bottomY"))
        for polygon in o.get("polygon") or []:
            points = " ".join(f"{x * w:.1f},{y * h:.1f}" for x, y in zip(polygon[0::2], polygon[1::2]))
            parts.append(f'<polygon points="{points}" fill="{color}" fill-opacity="0.35" stroke="none"/>')
        parts.append(f'<rect x="{x0 * w:.1f}" y="{y0 * h:.1f}" width="{(x1 - x0) * w:.1f}" '
                     f'height="{(y1 - y0) * h:.1f}" '
                     f'fill="none" stroke="{color}" stroke-width="2"/>')
        text = str(o.get("label", "")) + (f" {float(o['score']):.2f}" if "score" in o else "")
        parts.append(f'<text x="{x0 * w + 2:.1f}" y="{max(y0 * h - 2, 9):.1f}" font-size="9" fill="{color}" '
                     f'stroke="#fff" stroke-width="0.4">{html.escape(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)

