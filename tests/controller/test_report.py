"""The HTML report (controller/report.py) without a browser: what the controller writes as a
simulated sweep runs, the `report` command, and the figures' arithmetic (Pareto front, parameter
importance, precision-recall curves, each image's error). tests/e2e/test_report_browser.py renders
it in Chromium."""
from __future__ import annotations

import pytest
from simulated import FakeClock, SimLauncher, run_until_done, sim_job, submit

from automl_images.controller import cli, leaderboard, report
from automl_images.controller.loop import Controller
from automl_images.core import trials
from automl_images.core.layout import FILES, Root
from automl_images.core.records import JobView, TrialView

SPACE = "  - model_name: choice(resnet18, mobilenetv2)\n    learning_rate: loguniform(-7, -2)\n"
BUNDLE = "* plotly.js v"   # the first line of plotly's bundle
POLICY = "early_termination:\n  policy: bandit\n  slack_factor: 0.1\n  evaluation_interval: 1\n  delay_evaluation: 2\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Root:
    """A finished simulated sweep: stopped trials (bandit), a failed one, a lost and resumed one, a budget."""
    root = Root(str(tmp_path_factory.mktemp("report") / "bucket"))
    clock = FakeClock()
    launcher = SimLauncher(clock=clock, epoch_s=600, price_per_hour=2.0, lose={"t0001"},
                           fail={"t0002": "val.jsonl:3: field 'label': <b>not</b> a class"})
    controller = Controller(root, log=lambda line: None, clock=clock, launchers={"local": launcher})
    text = sim_job(max_trials=8, concurrent=2, epochs=5, space=SPACE, extra=POLICY)
    text = text.replace("  max_concurrent_trials: 2\n", "  max_concurrent_trials: 2\n  max_cost_usd: 100\n")
    submit(root, "sweep", text)
    run_until_done(controller, clock, step_s=300)
    return root


def test_the_controller_writes_a_self_contained_report(sweep):
    page = sweep.storage.read_text(sweep.report("sweep"))
    assert "<script src" not in page and "src=\"http" not in page   # nothing fetched: it opens offline
    assert page.count(BUNDLE) == 1 and len(page) < 10_000_000        # plotly's JavaScript, once
    board = sweep.storage.read_json(sweep.leaderboard("sweep"))
    for row in board["trials"]:
        assert f"<td class=\"\">{row['trial_id']}</td>" in page
    for title in ("Leaderboard", "Optimisation history", "Parallel coordinates", "Parameter importance",
                  "Each hyperparameter against accuracy", "Learning curves", "Timeline", "Cost"):
        assert f"<h2>{title}</h2>" in page
    # the failed trial's message, escaped; the bandit's stops; the lost trial's resumption; the budget
    assert "&lt;b&gt;not&lt;/b&gt; a class" in page and "<b>not</b>" not in page
    assert "early termination (bandit)" in page
    assert '"name":"resumed"' in page and '"name":"budget"' in page and '"name":"Pareto front"' in page


def test_report_command(sweep, tmp_path, capsys):
    out = tmp_path / "elsewhere" / "r.html"
    assert cli.main(["report", "sweep", "--root", sweep.url, "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith(str(out))
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert cli.main(["report", "nope", "--root", sweep.url]) == 2
    assert "no job 'nope'" in capsys.readouterr().err


def test_refresh_is_throttled_but_always_final(sweep, monkeypatch):
    log, reads = [], []
    refresh = report.Refresher(sweep, "sweep", log.append)
    job = report.gather(sweep, "sweep")
    job_view = JobView("sweep", job.state, job.views)
    read_all, write, written = trials.read_all, report.write, []
    monkeypatch.setattr(trials, "read_all", lambda *args: (reads.append(args), read_all(*args))[1])
    monkeypatch.setattr(report, "write", lambda *args, **kw: (written.append(args[1]), write(*args, **kw))[1])
    sweep.storage.delete(sweep.report("sweep"))
    for final in (False, False, True):
        refresh(job_view, job.spec, final=final)
    # the second refresh came too soon; the final one always runs; the trials came from the caller
    assert written == ["sweep", "sweep"] and reads == []
    assert sweep.storage.read_text(sweep.report("sweep")).startswith("<!DOCTYPE html>")

    def broken(root, job_id, out=None, data=None):
        raise OSError("disk full")
    monkeypatch.setattr(report, "write", broken)
    refresh(job_view, job.spec, final=True)
    assert log == ["job sweep: the report could not be written: OSError: disk full"]


def test_a_torn_best_predictions_file_leaves_the_images_out(sweep, tmp_path):
    best = sweep.storage.read_json(sweep.best_trial("sweep"))["trial_id"]
    sweep.storage.write_text(sweep.trial_key("sweep", best, FILES.best_predictions), '{"images": [')
    data = report.gather(sweep, "sweep")
    assert data.best_predictions is None and "Validation images" not in report.render(data)
    sweep.storage.delete(sweep.trial_key("sweep", best, FILES.best_predictions))


def test_pareto_front():
    # (cost, score: higher is better, trial)
    points = [(1.0, 0.5, "a"), (2.0, 0.4, "b"), (2.0, 0.7, "c"), (3.0, 0.7, "d"), (5.0, 0.9, "e"), (0.5, 0.1, "f")]
    assert [t for *_, t in report.pareto_front(points)] == ["f", "a", "c", "e"]


def view(index: int, lr: float, momentum: float, accuracy: float) -> TrialView:
    return TrialView(f"t{index:04d}", {"subspace": 0, "params": {"learning_rate": lr, "momentum": momentum}},
                     status={"status": "completed", "metrics": {"accuracy": accuracy}})


def test_importance_finds_the_parameter_that_matters():
    views = [view(i, lr=0.001 * (i + 1), momentum=0.5 + 0.04 * ((i * 7) % 10), accuracy=0.05 * i) for i in range(12)]
    data = report.JobData("job", {}, None, views, leaderboard.build("accuracy", views))
    shares = report.importances(data)
    assert set(shares) == {"learning_rate", "momentum"}
    assert shares["learning_rate"] > 0.8 and sum(shares.values()) == pytest.approx(1.0)
    two = report.JobData("job", {}, None, views[:2], leaderboard.build("accuracy", views[:2]))
    assert report.importances(two) == {}   # too few trials


def box(label: str, x0: float, y0: float, x1: float, y1: float, score: float | None = None) -> dict:
    out = {"label": label, "topX": x0, "topY": y0, "bottomX": x1, "bottomY": y1}
    return out if score is None else {**out, "score": score}


DETECTIONS = {"task": "image-object-detection", "labels": ["cat", "dog"], "images": [
    {"label": [box("cat", 0, 0, 0.5, 0.5), box("dog", 0.5, 0.5, 1, 1)],
     "prediction": {"label": [box("cat", 0, 0, 0.5, 0.45, 0.9), box("cat", 0.6, 0.6, 1, 1, 0.8),
                              box("dog", 0.5, 0.5, 1, 1, 0.2)]}},
    {"label": [box("cat", 0.2, 0.2, 0.4, 0.4)], "prediction": {"label": []}},
]}


def test_precision_recall_curves():
    curves = report.pr_curves(DETECTIONS)
    recall, precision = curves["cat"]
    # cat: 0.9 a hit (recall 1/2, precision 1), 0.8 a miss; the second image's cat is never found
    assert precision[0] == 1.0 and precision[50] == 1.0 and precision[51] == 0.0 and recall[-1] == 1.0
    assert curves["dog"][1][100] == 1.0   # one dog, found: precision 1 up to recall 1
    assert report.pr_curves({"task": "image-classification", "images": []}) == {}


def test_image_error():
    first, second = DETECTIONS["images"]
    # shown (score >= 0.3): two cats, one a hit; truth: a cat and a dog -> 2 of 4 unmatched
    assert report.image_error("image-object-detection", first) == pytest.approx(0.5)
    assert report.image_error("image-object-detection", second) == 1.0
    image = {"label": "cat", "prediction": {"label": "dog", "scores": {"cat": 0.25, "dog": 0.75}}}
    assert report.image_error("image-classification", image) == 0.75
    image = {"label": ["cat"], "prediction": {"label": ["cat", "dog"], "scores": {"cat": 0.9, "dog": 0.6}}}
    assert report.image_error("image-multi-labeling", image) == pytest.approx((0.1 + 0.6) / 2)


def test_report_size_for_fifty_trials(tmp_path):
    """A 50-trial sweep's report stays far below 10 MB (the bundle is most of it)."""
    views = [view(i, lr=0.0001 * (i + 1), momentum=0.5 + 0.01 * i, accuracy=0.01 * i) for i in range(50)]
    for v in views:
        v.status["history"] = [{"epoch": e, "accuracy": 0.01 * e} for e in range(1, 31)]
    data = report.JobData("job", {}, None, views, leaderboard.build("accuracy", views))
    page = report.render(data)
    assert len(page.encode()) < 6_000_000


def best_trial_page(task: str, metrics: dict, images: list[dict]) -> str:
    views = [view(0, lr=0.01, momentum=0.9, accuracy=0.8), view(1, lr=0.02, momentum=0.8, accuracy=0.6)]
    data = report.JobData("job", {}, None, views, leaderboard.build("accuracy", views), best_metrics=metrics,
                          best_predictions={"epoch": 2, "task": task, "labels": ["cat", "dog"], "images": images})
    return report.render(data)


def test_multi_label_best_trial():
    per_class = {"cat": {"precision": 0.9, "recall": 0.8, "f1": 0.85},
                 "dog": {"precision": 0.5, "recall": 0.4, "f1": 0.44}}
    image = {"image_url": "a/b.png", "width": 20, "height": 10, "thumbnail": "", "label": ["cat"],
             "prediction": {"label": ["dog"], "scores": {"cat": 0.2, "dog": 0.7}}}
    page = best_trial_page("image-multi-labeling", {"per_class": per_class}, [image])
    assert "precision, recall and F1 per label" in page and "precision-recall curves" not in page
    assert "true: cat · predicted: dog" in page and 'class="cell wrong"' in page
    assert '<svg class="thumb" width="160" height="80"' in page   # the image's aspect ratio


def test_segmentation_draws_polygons_beside_the_truth():
    polygon = [[0.1, 0.1, 0.5, 0.1, 0.5, 0.5]]
    image = {"image_url": "x.png", "width": 100, "height": 100, "thumbnail": "",
             "label": [{**box("cat", 0.1, 0.1, 0.5, 0.5), "polygon": polygon}],
             "prediction": {"label": [{**box("cat", 0.1, 0.1, 0.5, 0.5, 0.9), "polygon": polygon}]}}
    page = best_trial_page("image-instance-segmentation", {}, [image])
    assert page.count('<polygon points="16.0,16.0 80.0,16.0 80.0,80.0"') == 2   # predicted, and true
    assert ">cat 0.90</text>" in page and "precision-recall curves" in page


def test_a_rejected_job_has_a_report_that_says_why(tmp_path, capsys):
    root = Root(str(tmp_path))
    root.storage.write_text("inbox/bad.yaml", "task: nope\n")
    Controller(root, log=lambda line: None).reconcile_once()
    assert cli.main(["report", "bad", "--root", root.url]) == 0
    page = root.storage.read_text(root.report("bad"))
    assert "field &#x27;task&#x27;: unknown task &#x27;nope&#x27;" in page and "no trial has started yet" in page
