"""The leaderboard: every trial, best first, rendered as JSON, CSV, a terminal table or Markdown."""
from __future__ import annotations

import csv
import io
import json

from simulated import sim_job

from automl_images.controller import leaderboard
from automl_images.controller.spec import parse_job
from automl_images.core.records import TrialView


def view(index: int, status: str, metrics: dict | None = None, *, lr: float = 0.01, model: str = "resnet18",
         error: str | None = None, best: bool = False, epochs: int = 3, duration: float | None = 12.5,
         cost: float = 0.0, **fields) -> TrialView:
    record: dict = {"status": status, "epochs": epochs, "duration_s": duration, **fields}
    if metrics is not None:
        if best:  # a running trial reports its best evaluation so far under "best"
            record["best"] = {"metrics": metrics}
        else:
            record["metrics"] = metrics
    if error:
        record["error"] = {"kind": "user", "message": error}
    return TrialView(f"t{index:04d}", {"subspace": 0, "params": {"learning_rate": lr, "model_name": model}},
                     status=record, cost_usd=cost)


TRIALS = [
    view(0, "completed", {"accuracy": 0.81, "loss": 0.52}, lr=0.01, cost=1.5),
    view(1, "failed", None, lr=0.5, error="out of memory"),
    view(2, "completed", {"accuracy": 0.93, "loss": 0.21}, lr=0.02, model="mobilenetv2", cost=0.25),
    view(3, "stopped", {"accuracy": 0.42, "loss": 1.3}, lr=0.001, reason="bandit: 0.42 < 0.7 at epoch 2",
         skipped_images_count=2),
    view(4, "running", {"accuracy": 0.88, "loss": 0.3}, lr=0.005, best=True),
    TrialView("t0005", {"subspace": 0, "params": {"learning_rate": 0.03, "model_name": "resnet18"}}),  # pending
]


def order(board) -> list[str]:
    return [row["trial_id"] for row in board["trials"]]


def test_maximize_best_first_and_trials_without_metrics_last():
    board = leaderboard.build("accuracy", TRIALS)
    assert order(board) == ["t0002", "t0004", "t0000", "t0003", "t0001", "t0005"]
    assert board["primary_metric"] == "accuracy" and board["direction"] == "maximize"
    assert board["cost_usd"] == 1.75  # the job's: every trial's cost


def test_minimize_best_first():
    board = leaderboard.build("loss", TRIALS)
    assert order(board) == ["t0002", "t0004", "t0000", "t0003", "t0001", "t0005"]
    assert board["direction"] == "minimize"  # the metric's own direction
    board = leaderboard.build("loss", [view(0, "completed", {"loss": 0.9}),
                                       view(1, "completed", {"loss": 0.1}),
                                       view(2, "completed", {"loss": 0.5})])
    assert order(board) == ["t0001", "t0002", "t0000"]


def test_ties_and_metricless_trials_are_ordered_by_trial_id():
    trials = [view(3, "completed", {"accuracy": 0.5}), view(1, "failed"), view(2, "completed", {"accuracy": 0.5}),
              view(0, "pending")]
    assert order(leaderboard.build("accuracy", trials)) == ["t0002", "t0003", "t0000", "t0001"]


def test_rows():
    board = leaderboard.build("accuracy", TRIALS)
    rows = {row["trial_id"]: row for row in board["trials"]}
    assert rows["t0002"] == {"trial_id": "t0002", "status": "completed",
                             "params": {"learning_rate": 0.02, "model_name": "mobilenetv2"},
                             "metrics": {"accuracy": 0.93, "loss": 0.21}, "epochs": 3, "duration_s": 12.5,
                             "cost_usd": 0.25, "error": None, "reason": "", "skipped_images": 0}
    assert rows["t0001"]["error"] == "out of memory" and rows["t0001"]["metrics"] == {}
    assert rows["t0001"]["reason"] == "out of memory"   # why it stopped: its error
    assert rows["t0003"]["reason"] == "bandit: 0.42 < 0.7 at epoch 2" and rows["t0003"]["skipped_images"] == 2
    assert rows["t0004"]["metrics"] == {"accuracy": 0.88, "loss": 0.3}  # from "best"
    assert rows["t0005"]["status"] == "pending" and rows["t0005"]["epochs"] == 0


def test_non_scalar_metrics_are_left_out():
    board = leaderboard.build("accuracy", [
        view(0, "completed", {"accuracy": 0.9, "per_class": {"a": 1.0}, "confusion": [[1, 0], [0, 1]],
                              "flag": True, "note": "ok"})])
    assert board["trials"][0]["metrics"] == {"accuracy": 0.9, "note": "ok"}


def test_best_trial_has_a_metric_and_a_model():
    board = leaderboard.build("accuracy", TRIALS)
    assert leaderboard.best_trial(board)["trial_id"] == "t0002"  # t0004 is better than others but running
    only_running = leaderboard.build("accuracy", [TRIALS[4], TRIALS[1]])
    assert leaderboard.best_trial(only_running) is None
    stopped = leaderboard.build("accuracy", [TRIALS[3], TRIALS[1]])
    assert leaderboard.best_trial(stopped)["trial_id"] == "t0003"
    assert leaderboard.best_trial(leaderboard.build("accuracy", [])) is None


def test_nan_metric_is_ranked_last():
    trials = [view(0, "completed", {"accuracy": 0.5}), view(1, "completed", {"accuracy": float("nan")}),
              view(2, "completed", {"accuracy": 0.9}), view(3, "completed", {"accuracy": 0.7})]
    board = leaderboard.build("accuracy", trials)
    assert order(board) == ["t0002", "t0003", "t0000", "t0001"]
    assert leaderboard.best_trial(board)["trial_id"] == "t0002"


def test_csv():
    board = leaderboard.build("accuracy", TRIALS)
    rows = list(csv.reader(io.StringIO(leaderboard.to_csv(board))))
    assert rows[0] == ["rank", "trial_id", "status", "accuracy", "loss", "model_name", "learning_rate", "epochs",
                       "duration_s", "cost_usd", "skipped_images", "reason"]
    assert rows[1] == ["1", "t0002", "completed", "0.93", "0.21", "mobilenetv2", "0.02", "3", "12.5", "0.25", "0", ""]
    assert rows[4] == ["4", "t0003", "stopped", "0.42", "1.3", "resnet18", "0.001", "3", "12.5", "0.0", "2",
                       "bandit: 0.42 < 0.7 at epoch 2"]
    assert rows[5] == ["5", "t0001", "failed", "", "", "resnet18", "0.5", "3", "12.5", "0.0", "0", "out of memory"]
    assert [r[1] for r in rows[1:]] == order(board)


def test_table():
    board = leaderboard.build("accuracy", TRIALS)
    lines = leaderboard.to_table(board).splitlines()
    assert lines[0].split() == ["rank", "trial_id", "status", "accuracy", "loss", "model_name", "learning_rate",
                                "epochs", "duration_s", "cost_usd", "skipped_images", "reason"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["1", "t0002", "completed", "0.93", "0.21", "mobilenetv2", "0.02", "3", "12.5", "0.25",
                                "0"]
    assert lines[5].split()[:2] == ["4", "t0003"] and lines[5].split()[-8:] == "2 bandit: 0.42 < 0.7 at epoch 2".split()
    assert [line.split()[1] for line in lines[2:-1]] == order(board)
    assert lines[-1] == "job cost: $1.75"
    # columns line up: every row starts its trial id where the header does
    column = lines[0].index("trial_id")
    assert all(line[column:column + 5].startswith("t0") for line in lines[2:-1])


def test_table_shows_a_long_reason_on_one_short_line():
    reason = "the job's timeout (12 h) was reached\nsecond line " + "x" * 80
    board = leaderboard.build("accuracy", [view(0, "failed", error=reason)])
    last = leaderboard.to_table(board).splitlines()[2]
    assert last.endswith("the job's timeout (12 h) was reached") and "second line" not in last
    board = leaderboard.build("accuracy", [view(0, "stopped", reason="y" * 80)])
    assert leaderboard.to_table(board).splitlines()[2].endswith("y" * 59 + "…")
    assert "y" * 80 in leaderboard.to_csv(board)   # the CSV has it whole


def test_early_stopping_is_a_reason():
    board = leaderboard.build("accuracy", [view(0, "completed", {"accuracy": 0.5}, early_stopped=True),
                                           view(1, "completed", {"accuracy": 0.4})])
    assert [row["reason"] for row in board["trials"]] == ["early stopping: the primary metric stopped improving", ""]


def test_table_shows_the_primary_metric_and_losses_only():
    board = leaderboard.build("accuracy", [view(0, "completed", {"accuracy": 0.123456, "loss": 2.0,
                                                                            "f1_score_weighted": 0.7})])
    header = leaderboard.to_table(board).splitlines()[0].split()
    assert "f1_score_weighted" not in header and header[3:5] == ["accuracy", "loss"]
    assert "0.1235" in leaderboard.to_table(board)  # 4 significant digits
    assert "f1_score_weighted" in leaderboard.to_csv(board)  # the CSV has every metric


def test_markdown():
    board = leaderboard.build("accuracy", TRIALS)
    lines = leaderboard.to_table(board, markdown=True).splitlines()
    assert lines[0] == ("| rank | trial_id | status | accuracy | loss | model_name | learning_rate | epochs "
                        "| duration_s | cost_usd | skipped_images | reason |")
    assert lines[1] == "|" + "|".join(["---"] * 12) + "|"
    assert lines[2] == "| 1 | t0002 | completed | 0.93 | 0.21 | mobilenetv2 | 0.02 | 3 | 12.5 | 0.25 | 0 |  |"
    assert lines[6] == "| 5 | t0001 | failed |  |  | resnet18 | 0.5 | 3 | 12.5 | 0 | 0 | out of memory |"
    assert len(lines) == 2 + len(TRIALS)


def test_json_round_trip():
    board = leaderboard.build("accuracy", TRIALS)
    assert json.loads(leaderboard.to_json(board)) == board


def test_empty_board_renders():
    board = leaderboard.build("accuracy", [])
    assert leaderboard.to_csv(board) == "rank,trial_id,status,epochs,duration_s,cost_usd,skipped_images,reason\n"
    assert leaderboard.to_table(board).splitlines()[0].split() == ["rank", "trial_id", "status", "epochs",
                                                                   "duration_s", "cost_usd", "skipped_images",
                                                                   "reason"]


# A model fixed in each subspace, a learning rate fixed in one and sampled in the other, a weight
# decay fixed the same in both (the same in every trial: left out).
SUBSPACES = ("  - model_name: resnet18\n    learning_rate: 0.01\n    momentum: uniform(0.5, 0.9)\n"
             "    weight_decay: 0.001\n"
             "  - model_name: mobilenetv2\n    learning_rate: loguniform(-7, -2)\n    weight_decay: 0.001\n")


def test_shown_params_are_the_model_and_what_tells_trials_apart():
    space = parse_job(sim_job(space=SUBSPACES)).search_space
    assert leaderboard.shown_params(space, {"subspace": 0, "params": {"momentum": 0.7}}) == \
        {"model_name": "resnet18", "learning_rate": 0.01, "momentum": 0.7}
    assert leaderboard.shown_params(space, {"subspace": 1, "params": {"learning_rate": 0.004}}) == \
        {"model_name": "mobilenetv2", "learning_rate": 0.004}
    # a sampled model stays where the sampler put it; the text is what the log and status print
    sampled = parse_job(sim_job(space="  - model_name: choice(resnet18, mobilenetv2)\n")).search_space
    shown = leaderboard.shown_params(sampled, {"subspace": 0, "params": {"model_name": "mobilenetv2"}})
    assert leaderboard.params_text(shown) == "model_name=mobilenetv2"
    assert leaderboard.params_text({"model_name": "resnet18", "learning_rate": 0.0123456}) == \
        "model_name=resnet18, learning_rate=0.01235"


def test_a_model_fixed_in_the_space_is_in_every_format():
    text = sim_job(space="  - model_name: fasterrcnn_resnet18_fpn\n    learning_rate: uniform(0.001, 0.01)\n",
                   metric="mean_average_precision").replace("image-classification", "image-object-detection")
    space = parse_job(text).search_space
    trial = TrialView("t0000", {"subspace": 0, "params": {"learning_rate": 0.005}},
                      status={"status": "completed", "metrics": {"mean_average_precision": 0.5}, "epochs": 2})
    board = leaderboard.build("mean_average_precision", [trial], space)
    assert board["trials"][0]["params"] == {"model_name": "fasterrcnn_resnet18_fpn", "learning_rate": 0.005}
    assert json.loads(leaderboard.to_json(board))["trials"][0]["params"]["model_name"] == "fasterrcnn_resnet18_fpn"
    rows = list(csv.reader(io.StringIO(leaderboard.to_csv(board))))
    assert rows[0][4:6] == ["model_name", "learning_rate"] and rows[1][4:6] == ["fasterrcnn_resnet18_fpn", "0.005"]
    assert leaderboard.to_table(board).splitlines()[2].split()[4:6] == ["fasterrcnn_resnet18_fpn", "0.005"]
    assert "| fasterrcnn_resnet18_fpn | 0.005 |" in leaderboard.to_table(board, markdown=True)
