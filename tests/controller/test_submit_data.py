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


@pytest.mark.parametrize("remote", [False, True], ids=["local", "s3"])
def test_the_job_file_is_kept_byte_for_byte_and_its_data_found_where_submit_put_it(tmp_path, remote, request):
    """Comments, relative paths and all: the inbox file and the job's job.yaml are the user's bytes;
    where the data went is the submission record's, and the accepted spec.json holds it resolved."""
    from synthetic import write_squares

    from automl_images.controller.job_state import JobStates
    from automl_images.controller.inbox import accept
    from automl_images.core.layout import Root

    write_squares(tmp_path / "data", per_class=3, validation_per_class=1)
    text = (b"# my fridge sweep: resnets only\ntask: image-classification\n"
            b"training_data: data/train.jsonl   # relative to this file\nvalidation_data: ./data/val.jsonl\n")
    (tmp_path / "job.yaml").write_bytes(text)
    root_url = (f"s3://{make_bucket(request.getfixturevalue('s3_endpoint'))}/automl" if remote
                else str(tmp_path / "root"))
    root = Root(root_url)
    job_id = submit(str(tmp_path / "job.yaml"), root_url, job_id="kept", progress=lambda message: None)
    assert root.storage.read_bytes(root.inbox_key("kept.yaml")) == text
    record = root.storage.read_json(root.submission(job_id))
    expected = ({name: root.storage.url(f"uploads/kept/{name}/{file}") for name, file in
                 (("training_data", "train.jsonl"), ("validation_data", "val.jsonl"))} if remote else
                {"training_data": str(tmp_path / "data" / "train.jsonl"),
                 "validation_data": str(tmp_path / "data" / "val.jsonl")})
    assert record["data"] == expected and record["source"] == str(tmp_path / "job.yaml")

    assert accept(root, "kept.yaml", JobStates(root, lambda: 0.0, print), print, 0.0) == "kept"
    assert root.storage.read_bytes(root.job_file("kept")) == text
    saved = root.storage.read_json(root.job_spec("kept"))
    assert (saved["training_data"], saved["validation_data"]) == (expected["training_data"], expected["validation_data"])
    assert root.storage.read_json(root.job_state("kept"))["status"] == "running"
