"""`check-data`, and the data check in `validate` (the files exist and parse), `submit` (all of it,
before the job is dropped) and the controller's acceptance (a job whose data would fail training is
rejected with the report, and no trial is launched); a job without validation data gets its split
written once, which its trials read."""
from __future__ import annotations

import json

import pytest
from simulated import SimLauncher, sim_job, write_sim_data

from automl_images.controller.cli import main
from automl_images.controller.loop import Controller
from automl_images.controller.spec import JobSpecError
from automl_images.controller.submit import submit
from automl_images.core.layout import FILES, Root
from automl_images.core.storage import Storage
from automl_images.core.trial_spec import TrialSpec


def write_data(storage: Storage, missing: int = 0, bad_line: bool = False) -> str:
    """write_sim_data's four images and lines, plus `missing` lines whose image is not there."""
    url = write_sim_data(Root(storage), folder="")
    lines = storage.read_text("train.jsonl").splitlines()
    lines += [json.dumps({"image_url": f"gone_{i}.png", "label": "a"}) for i in range(missing)]
    if bad_line:
        lines.append(json.dumps({"image_url": "a0.png", "label": {"not": "a name"}}))
    storage.write_text("train.jsonl", "\n".join(lines) + "\n")
    return url


def test_check_data_on_a_jsonl_file_prints_the_summary_and_writes_the_report(tmp_path, capsys):
    write_data(Storage(str(tmp_path)))
    report = tmp_path / "report.json"
    assert main(["check-data", str(tmp_path / "train.jsonl"), "--task", "image-classification",
                 "--report", str(report)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "4 images (3 training, 1 validation), 2 classes"
    assert out[1] == "sizes: width 1..1 (median 1), height 1..1 (median 1)"
    assert json.loads(report.read_text())["ok"] is True


def test_check_data_exits_1_naming_file_line_and_field_when_training_would_fail(root_url, tmp_path, capsys):
    storage = Storage(root_url)
    write_data(storage, missing=2, bad_line=True)
    storage.write_text("job.yaml", sim_job())
    report = tmp_path / "report.json"
    assert main(["check-data", "job.yaml", "--root", root_url, "--report", str(report)]) == 1
    out = capsys.readouterr().out
    train = storage.url("train.jsonl")
    assert f"error: {train}:7: field 'label': must be a class name (a string), got {{'not': 'a name'}}" in out
    assert f"error: {train}:5: field 'image_url': {storage.url('gone_0.png')} not found" in out
    saved = json.loads(report.read_text())
    assert not saved["ok"] and saved["counts"]["error:missing-image"] == 2


def test_check_data_refuses_a_jsonl_file_without_its_task(tmp_path, capsys):
    write_data(Storage(str(tmp_path)))
    assert main(["check-data", str(tmp_path / "train.jsonl")]) == 2
    assert "--task is required" in capsys.readouterr().err


def test_validate_reads_the_data_files_but_not_the_images(tmp_path, capsys):
    (tmp_path / "job.yaml").write_text(sim_job())
    assert main(["validate", str(tmp_path / "job.yaml")]) == 2
    assert capsys.readouterr().err == f"{tmp_path / 'train.jsonl'}: file not found\n"
    write_data(Storage(str(tmp_path)), missing=3)  # missing images are for check-data and submit to find
    assert main(["validate", str(tmp_path / "job.yaml")]) == 0
    write_data(Storage(str(tmp_path)), bad_line=True)
    assert main(["validate", str(tmp_path / "job.yaml")]) == 2
    assert capsys.readouterr().err.endswith(f"{tmp_path / 'train.jsonl'}:8: field 'label': must be a class name "
                                            "(a string), got {'not': 'a name'}\n")


def test_validate_refuses_the_training_file_as_validation_data(tmp_path, capsys):
    write_data(Storage(str(tmp_path)))
    (tmp_path / "same.jsonl").symlink_to(tmp_path / "train.jsonl")
    (tmp_path / "job.yaml").write_text(sim_job(extra="validation_data: same.jsonl\n"))
    assert main(["validate", str(tmp_path / "job.yaml")]) == 2
    assert capsys.readouterr().err.startswith(f"{tmp_path / 'job.yaml'}:14: field 'validation_data': is the "
                                              "training data")


def test_submit_runs_the_whole_check_and_drops_nothing_when_it_fails(root_url, tmp_path):
    write_data(Storage(str(tmp_path)), missing=1)
    (tmp_path / "job.yaml").write_text(sim_job())
    with pytest.raises(JobSpecError) as info:
        submit(str(tmp_path / "job.yaml"), root_url, job_id="broken", progress=lambda m: None)
    assert f"{tmp_path / 'train.jsonl'}:5: field 'image_url': {tmp_path / 'gone_0.png'} not found" in str(info.value)
    assert Root(root_url).inbox_files() == []


def test_the_controller_rejects_a_job_whose_data_would_fail_with_the_report(root_url):
    root = Root(root_url)
    data = Storage(root.storage.url("data"))
    write_data(data, missing=2)
    root.storage.write_text("inbox/broken.yaml", sim_job().replace("train.jsonl", data.url("train.jsonl")))
    launcher = SimLauncher()
    Controller(root, log=lambda m: None, launchers={"local": launcher}).reconcile_once()
    assert root.storage.read_json(root.job_state("broken"))["status"] == "rejected"
    error = root.storage.read_json(root.job_error("broken"))
    train = data.url("train.jsonl")
    assert error["problems"] == [
        {"file": train, "line": None, "path": "", "message": "2 of 6 images cannot be used (33.3%, more than "
                                                             "max_bad_image_ratio=0.05): the trainer would fail"},
        {"file": train, "line": 5, "path": "image_url", "message": f"{data.url('gone_0.png')} not found"},
        {"file": train, "line": 6, "path": "image_url", "message": f"{data.url('gone_1.png')} not found"}]
    assert root.storage.read_json(root.data_check("broken"))["counts"]["error:missing-image"] == 2
    assert root.trial_ids("broken") == [] and launcher.launches == {}


def test_a_job_without_validation_data_gets_one_split_that_every_trial_reads(root_url):
    root = Root(root_url)
    root.storage.write_text("inbox/split.yaml", sim_job(extra="seed: 5\n").replace(
        "train.jsonl", write_sim_data(root)))
    Controller(root, log=lambda m: None, launchers={"local": SimLauncher()}).reconcile_once()
    saved = root.storage.read_json(root.job_split("split"))
    assert saved["seed"] == 5 and saved["ratio"] == 0.2 and len(saved["validation_lines"]) == 1
    assert root.storage.read_json(root.data_check("split"))["ok"] is True
    specs = [TrialSpec.from_json(root.storage.read_bytes(root.trial_key("split", t, FILES.spec)))
             for t in root.trial_ids("split")]
    assert len(specs) == 2 and {s.split for s in specs} == {root.storage.url(root.job_split("split"))}
    assert len({s.seed for s in specs}) == 2  # trials differ in their seed, not in their validation data
