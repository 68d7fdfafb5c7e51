"""The HTML report in a real browser: a classification job and a detection job rendered by headless
Chromium (Debian's `chromium`, installed here when missing and we are root), with no JavaScript
error, every chart drawn with its data, and a screenshot kept in tests/artifacts/ (ignored by git).

The sweeps are simulated (tests/simulated.py); the classification job's best trial carries what a
real trial of our trainer wrote (its metrics file and best_predictions.json, from the coloured
squares), the detection job's what the trainer writes for detection, made here from the labels."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import tempfile
import time

import numpy as np
import pytest
from conftest import TESTS
from PIL import Image
from simulated import FakeClock, SimLauncher, run_until_done, sim_job, submit
from trial_data import write_dataset, write_detection_dataset, write_spec

from automl_images.controller import cli
from automl_images.controller.loop import Controller
from automl_images.core.layout import FILES, Root
from automl_images.core.storage import Storage

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = TESTS / "artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# What a chart draws its data with: scatter markers and bars (.point), lines (.js-line), heatmap
# images, parallel coordinates' axes (their lines are WebGL: counted from the screenshot below).
MARKS_JS = """() => Array.from(document.querySelectorAll('.plotly-graph-div')).map(gd => ({
    id: gd.id, traces: gd.data.length,
    points: gd.querySelectorAll('.point').length,
    lines: Array.from(gd.querySelectorAll('path.js-line')).filter(p => (p.getAttribute('d') || '').length > 2).length,
    heatmaps: gd.querySelectorAll('.hm image').length,
    axes: gd.querySelectorAll('.parcoords .y-axis').length,
    parcoords: gd.querySelectorAll('.parcoords').length}))"""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium: installed with apt-get where it is missing and we may (root)."""
    if not os.path.exists(CHROMIUM) and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "install", "-y", "chromium"], ["apt-get", "update"],
                        ["apt-get", "install", "-y", "chromium"]):
            if subprocess.run(command, env=env, capture_output=True, timeout=900).returncode == 0 and \
                    os.path.exists(CHROMIUM):
                break
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent and could not be installed (apt-get install chromium needs root "
                    "and a package source)")
    return CHROMIUM


def open_report(chromium: str, path: str, name: str) -> tuple[list[str], list[dict], Image.Image]:
    """The page's JavaScript errors (console errors, uncaught exceptions and what the page itself
    collected), each chart's drawn marks, and a full-page screenshot (kept as tests/artifacts/NAME)."""
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = str(ARTIFACTS / name)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra) drives the browser")
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium, args=FLAGS, headless=True, viewport={"width": 1400, "height": 900})
        try:
            page = browser.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.goto(f"file://{path}")
            page.wait_for_load_state("load")
            page.wait_for_function("() => document.querySelectorAll('.plotly-graph-div .main-svg').length > 0")
            page.wait_for_timeout(500)   # the WebGL lines of the parallel coordinates
            errors += json.loads(page.get_attribute("body", "data-js-errors") or "[]")
            marks = page.evaluate(MARKS_JS)
            for chart in marks:
                box = page.locator(f"#{chart['id']}").bounding_box()
                chart["box"] = (box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"])
            page.screenshot(path=screenshot, full_page=True)
        finally:
            browser.close()
    return errors, marks, Image.open(screenshot).convert("RGB")


def coloured_pixels(image: Image.Image, box: tuple[float, ...]) -> int:
    """Saturated pixels in `box` (axes and text are grey: lines coloured by the metric are not)."""
    pixels = np.asarray(image.crop(tuple(int(v) for v in box))).astype(int)
    return int(((pixels.max(axis=2) - pixels.min(axis=2)) > 60).sum())


def check_charts(marks: list[dict], image: Image.Image, expected: int) -> None:
    assert len(marks) == expected, [m["id"] for m in marks]
    for chart in marks:
        drawn = chart["points"] + chart["lines"] + chart["heatmaps"]
        if chart["parcoords"]:
            assert chart["axes"] >= 3 and coloured_pixels(image, chart["box"]) > 2000, chart
        else:
            assert chart["traces"] and drawn >= chart["traces"], chart


def run_job(root: Root, name: str, text: str, **sim) -> None:
    clock = FakeClock()
    launcher = SimLauncher(clock=clock, epoch_s=600, price_per_hour=2.5, **sim)
    controller = Controller(root, log=lambda line: None, clock=clock, launchers={"local": launcher})
    submit(root, name, text)
    run_until_done(controller, clock, step_s=300)


def best_trial(root: Root, job: str) -> tuple[str, int]:
    row = root.storage.read_json(root.best_trial(job))
    status = root.read_trial(job, row["trial_id"], FILES.status)
    return row["trial_id"], status["best"]["epoch"]


def graft(root: Root, job: str, metrics: dict, predictions: dict) -> None:
    """The best trial's report inputs, as the trainer writes them."""
    trial, epoch = best_trial(root, job)
    root.storage.write_json(root.trial_key(job, trial, FILES.metrics(epoch)), {**metrics, "epoch": epoch})
    root.storage.write_json(root.trial_key(job, trial, FILES.best_predictions), predictions)


def make_report(root: Root, job: str, capsys) -> str:
    started = time.perf_counter()
    assert cli.main(["report", job, "--root", root.url]) == 0
    seconds = time.perf_counter() - started
    path = os.path.join(root.url, "jobs", job, "report.html")
    assert capsys.readouterr().out.startswith(path)
    print(f"\n{job}: report {os.path.getsize(path) / 1e6:.2f} MB in {seconds:.2f}s")
    return path


CLASSIFICATION_SPACE = ("  - model_name: choice(resnet18, mobilenetv2)\n    learning_rate: loguniform(-7, -2)\n"
                        "    momentum: uniform(0.5, 0.99)\n")
POLICY = "early_termination:\n  policy: bandit\n  slack_factor: 0.1\n  evaluation_interval: 1\n  delay_evaluation: 2\n"


def test_classification_report_in_chromium(chromium, tmp_path, capsys):
    from automl_images.trainer import run

    # A real trial of the trainer: what it saves for the best trial's charts and images.
    real = Storage(str(tmp_path / "real"))
    train, val = write_dataset(real, per_class=4)
    status = run.run_trial(write_spec(real, "trial", train, val, number_of_epochs=2))
    assert status["status"] == "completed", status.get("error")
    predictions = real.read_json(f"trial/{FILES.best_predictions}")
    assert predictions["epoch"] == status["best_epoch"] and len(predictions["images"]) == 18  # every val image
    first = predictions["images"][0]
    assert first["label"] in ("red", "green", "blue") and set(first["prediction"]) == {"label", "scores"}
    assert Image.open(io.BytesIO(base64.b64decode(first["thumbnail"]))).size == (16, 16)
    metrics = real.read_json(f"trial/{FILES.metrics(status['best_epoch'])}")

    root = Root(str(tmp_path / "bucket"))
    text = sim_job(max_trials=12, concurrent=3, epochs=6, space=CLASSIFICATION_SPACE, extra=POLICY)
    text = text.replace("  max_concurrent_trials: 3\n", "  max_concurrent_trials: 3\n  max_cost_usd: 40\n")
    run_job(root, "cls", text, lose={"t0001"}, fail={"t0002": "val.jsonl:3: field 'label': not a class name"})
    graft(root, "cls", metrics, predictions)
    path = make_report(root, "cls", capsys)

    errors, marks, image = open_report(chromium, path, "report-classification.png")
    assert errors == []
    # history, parallel coordinates, importance, slices, learning curves, timeline, cost, confusion matrix
    check_charts(marks, image, expected=8)
    assert marks[-1]["heatmaps"] == 1
    page = open(path).read()
    assert page.count("<tr>") == 12 + 1 and page.count('class="cell') == 18
    wrong = sum(image["prediction"]["label"] != image["label"] for image in predictions["images"])
    assert page.count('class="cell wrong"') == wrong   # framed in red
    assert "val.jsonl:3: field &#x27;label&#x27;: not a class name" in page


def detection_predictions(root: Storage) -> tuple[dict, dict]:
    """What the trainer writes for a detection trial, from the labels of data/val.jsonl: each object
    found, a little off, with a score; plus a false positive in every other image."""
    rng = np.random.default_rng(0)
    images = []
    for i, line in enumerate(root.read_text("data/val.jsonl").splitlines()):
        record = json.loads(line)
        with Image.open(os.path.join(root.root, "data", record["image_url"])) as picture:
            width, height = picture.size
            buffer = io.BytesIO()
            picture.convert("RGB").save(buffer, format="JPEG")
        predicted = [{"label": o["label"], "score": float(rng.uniform(0.4, 0.99)),
                      **{k: min(1.0, max(0.0, o[k] + float(rng.normal(0, 0.03)))) for k in
                         ("topX", "topY", "bottomX", "bottomY")}} for o in record["label"]]
        if i % 2:
            predicted.append({"label": "blue", "score": 0.8, "topX": 0.0, "topY": 0.0, "bottomX": 0.2, "bottomY": 0.2})
        images.append({"image_url": record["image_url"], "width": width, "height": height,
                       "thumbnail": base64.b64encode(buffer.getvalue()).decode(), "label": record["label"],
                       "prediction": {"label": predicted}})
    per_class = {name: {"average_precision": ap, "precision": 0.8, "recall": 0.9}
                 for name, ap in (("blue", 0.61), ("green", 0.83), ("red", 0.9))}
    return ({"mean_average_precision": 0.78, "voc_map": 0.78, "per_class": per_class},
            {"epoch": 0, "task": "image-object-detection", "labels": ["blue", "green", "red"], "images": images})


def test_detection_report_in_chromium(chromium, tmp_path, capsys):
    root = Root(str(tmp_path / "bucket"))
    space = ("  - model_name: choice(fasterrcnn_resnet50_fpn, retinanet_resnet50_fpn)\n"
             "    learning_rate: loguniform(-7, -2)\n")
    text = sim_job(max_trials=8, concurrent=2, epochs=5, space=space, metric="mean_average_precision")
    write_detection_dataset(root.storage, prefix="data", train=4, validation=8)  # what the controller checks
    run_job(root, "det", text.replace("task: image-classification", "task: image-object-detection"),
            metric="mean_average_precision")
    metrics, predictions = detection_predictions(root.storage)
    graft(root, "det", metrics, predictions)
    path = make_report(root, "det", capsys)

    errors, marks, image = open_report(chromium, path, "report-detection.png")
    assert errors == []
    # the seven sweep charts, AP per class, the PR curves (a line per class)
    check_charts(marks, image, expected=9)
    assert marks[-1]["traces"] == 3 and marks[-1]["lines"] >= 3   # a curve per class
    page = open(path).read()
    assert page.count('class="cell') == 8 and page.count("<rect ") >= 2 * 10
