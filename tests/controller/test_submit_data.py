"""`submit` to a bucket uploads the images a local JSONL file names: its lines are read once, and
every line it cannot upload from is named with its file, line and field before anything is sent."""
from __future__ import annotations

import json

import pytest
from conftest import make_bucket

from automl_images.controller.spec import JobSpecError
from automl_images.controller.submit import submit


def test_every_line_submit_cannot_upload_from_is_named(tmp_path, s3_endpoint):
    root = f"s3://{make_bucket(s3_endpoint)}/automl"
    (tmp_path / "train.jsonl").write_text("\n".join([
        json.dumps({"image_url": "a.png", "label": "x"}),
        "[1, 2]",
        json.dumps({"image_url": "/home/me/b.png", "label": "x"}),
        "",
        json.dumps({"label": "x"}),
        '{"image_url": ',
    ]) + "\n")
    (tmp_path / "job.yaml").write_text("task: image-classification\ntraining_data: train.jsonl\n")
    with pytest.raises(JobSpecError) as info:
        submit(str(tmp_path / "job.yaml"), root, job_id="bad-lines", progress=lambda message: None)
    jsonl = tmp_path / "train.jsonl"
    assert str(info.value).splitlines() == [  # lines that are no JSON object first, then the objects' fields
        f"{jsonl}:2: a line must be a JSON object, got list",
        f"{jsonl}:6: invalid JSON: Expecting value (column 15)",
        f"{jsonl}:3: field 'image_url': /home/me/b.png is an absolute local path, which a remote trial cannot "
        "read; make it relative to the JSONL file so that submit uploads it",
        f"{jsonl}:5: field 'image_url': each line must be a JSON object with image_url",
    ]


def test_a_jsonl_file_that_is_not_text_is_named_by_the_job_field(tmp_path, s3_endpoint):
    root = f"s3://{make_bucket(s3_endpoint)}/automl"
    (tmp_path / "train.jsonl").write_bytes(b"\xff\xfe\x00binary")
    (tmp_path / "job.yaml").write_text("task: image-classification\ntraining_data: train.jsonl\n")
    with pytest.raises(JobSpecError) as info:
        submit(str(tmp_path / "job.yaml"), root, job_id="binary", progress=lambda message: None)
    [problem] = info.value.problems
    assert problem.field == "training_data" and "not UTF-8 text" in problem.message
