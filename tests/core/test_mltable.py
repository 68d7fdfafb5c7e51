"""MLTable folders (core/mltable.py): Azure's `type: mltable` data is read through its MLTable file the
same way by check-data, validate, acceptance and the trials (all through annotations.read_records),
on a folder and in a bucket; an MLTable that cannot be read is named by its file, line and field."""
from __future__ import annotations

import json

import pytest
from conftest import AZURE_MLTABLE, mltable_folder, upload_folder

from automl_images.controller.inbox import accept
from automl_images.controller.job_state import JobStates
from automl_images.controller.spec import JobSpecError
from automl_images.controller.submit import validate_file
from automl_images.core import mltable
from automl_images.core.annotations import DataError, read_jsonl
from automl_images.core.datacheck import DataFiles, check
from automl_images.core.hyperparameters import Task
from automl_images.core.layout import Root
from automl_images.core.storage import Storage


def test_an_azure_mltable_folder_is_read_through_its_jsonl_on_a_folder_and_in_a_bucket(tmp_path, root_url):
    storage = Storage(root_url)
    train = upload_folder(mltable_folder(tmp_path / "train-mltable"), storage, "train-mltable")
    val = upload_folder(mltable_folder(tmp_path / "val-mltable", "val.jsonl", seed=1), storage, "val-mltable")
    report = check(DataFiles(Task.CLASSIFICATION, train, val))
    assert report.ok, report.render()
    assert (report.summary["training"], report.summary["validation"]) == (9, 3)
    # Each record is its JSONL file's, its image resolved against that file's folder.
    first = report.training[0]
    assert (first.source, first.line) == (f"{train}/train.jsonl", 1)
    assert first.image_url == f"{train}/images/red_0.png"
    # The MLTable file itself names the same data; what a trial reads (read_jsonl) is the same records.
    assert read_jsonl(f"{train}/MLTable", str) == read_jsonl(train, str) == read_jsonl(f"{train}/train.jsonl", str)


def test_the_single_form_of_the_conversion_and_a_url_path_are_read(tmp_path):
    folder = mltable_folder(tmp_path / "m", text="type: mltable\npaths:\n  - file: {jsonl}\ntransformations:\n"
                                                 "  - read_json_lines: {{path: ./{jsonl}, encoding: utf8bom}}\n"
                                                 "  - convert_column_to_type: {{columns: [image_url], "
                                                 "column_type: stream_info}}\n")
    assert len(read_jsonl(str(folder), str)) == 9
    other = tmp_path / "other"
    other.mkdir()
    (other / "MLTable").write_text(f"paths:\n  - file: file://{folder}/train.jsonl\n"
                                   "transformations:\n  - read_json_lines:\n")
    assert len(read_jsonl(str(other), str)) == 9


BROKEN = [
    ("paths: [{file: ./train.jsonl}]\n",
     ["MLTable:1: field 'transformations': is required: read_json_lines (image data is read as JSON lines)"]),
    ("transformations:\n  - read_json_lines: {}\n",
     ["MLTable:1: field 'paths': is required: the JSONL file of the labelled images (- file: ./train.jsonl)"]),
    ("paths:\n  - pattern: ./*.jsonl\ntransformations:\n  - read_json_lines:\n",
     ["MLTable:2: field 'paths[0].pattern': a pattern of files is not read here: list the JSONL file itself "
      "(- file: ./train.jsonl)"]),
    ("paths:\n  - file: a.jsonl\n  - file: b.jsonl\ntransformations:\n  - read_json_lines:\n",
     ["MLTable:2: field 'paths': lists 2 files; one JSONL file is read (a record is named by its file and line, "
      "and the validation split by its lines): merge them"]),
    ("paths:\n  - file: ../train.jsonl\ntransformations:\n  - read_json_lines: {path: ./other.jsonl}\n",
     ["MLTable:2: field 'paths[0].file': '../train.jsonl' leaves the MLTable folder (use an absolute path or URL "
      "instead)",
      "MLTable:4: field 'transformations[0].read_json_lines.path': './other.jsonl' is not the file that paths lists "
      "('../train.jsonl')"]),
    ("paths:\n  - file: azureml://datastores/d/paths/t.jsonl\ntransformations:\n  - read_json_lines:\n",
     ["MLTable:2: field 'paths[0].file': 'azureml://datastores/d/paths/t.jsonl': a datastore URI; give the path "
      "relative to the MLTable folder or a storage URL (az://, s3://, gs://, https://)"]),
    ("paths:\n  - file: t.jsonl\ntransformations:\n  - read_json_lines:\n      encoding: latin1\n"
     "      invalid_lines: drop\n  - take: 10\n  - read_delimited: {}\n",
     ["MLTable:5: field 'transformations[0].read_json_lines.encoding': 'latin1': the JSONL file is read as UTF-8 "
      "(utf8 or utf8bom)",
      "MLTable:6: field 'transformations[0].read_json_lines.invalid_lines': 'drop': an invalid line is an error "
      "here, named with its line, never dropped (invalid_lines: error)",
      "MLTable:7: field 'transformations[1].take': would change the rows or columns, which is not done here: "
      "apply it to the JSONL file instead",
      "MLTable:8: field 'transformations[2].read_delimited': image data is read as JSON lines (read_json_lines)"]),
    ("paths:\n  - file: t.jsonl\ntransformations:\n  - read_json_lines:\n  - convert_column_types:\n"
     "      - columns: label\n        column_type: int\n",
     ["MLTable:6: field 'transformations[1].convert_column_types[0]': converts ['label'] to int: only image_url "
      "to stream_info is read here (the other columns are read as the JSON holds them)"]),
    ("type: table\nsource: x\npaths:\n  - file: t.jsonl\ntransformations:\n  - read_json_lines:\n",
     ["MLTable:1: field 'type': must be mltable, got 'table'",
      "MLTable:2: field 'source': unknown field (known: paths, transformations, type, $schema, metadata, traits)"]),
    ("paths: [file: a.jsonl\n", ["MLTable:2: YAML: expected ',' or ']', but got '<stream end>'"]),
    ("a: &x [1]\nb: *x\n", ["MLTable:2: YAML: YAML aliases are not read in an MLTable file"]),
    ("paths: " + "[" * 40 + "]" * 40 + "\n", ["MLTable:1: YAML: nested more than 16 levels deep (the limit)"]),
    ("", ["MLTable: empty: it lists the JSONL file (paths: [- file: ./train.jsonl])"]),
    ("- just a list\n", ["MLTable:1: must be a mapping (paths, transformations), got a list"]),
]


@pytest.mark.parametrize("text, expected", BROKEN)
def test_an_mltable_that_cannot_be_read_names_its_file_line_and_field(tmp_path, text, expected):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "MLTable").write_text(text)
    with pytest.raises(DataError) as info:
        read_jsonl(str(folder), str)
    assert str(info.value).replace(f"{folder}/", "").splitlines() == expected


def test_a_folder_without_mltable_and_an_oversized_or_binary_mltable_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: a folder without an MLTable file: give a JSONL file, or an "):
        read_jsonl(str(tmp_path / "empty"), str)
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "MLTable").write_text("# " + "x" * mltable.MAX_BYTES)
    with pytest.raises(DataError, match=rf"big/MLTable: more than {mltable.MAX_BYTES} bytes"):
        read_jsonl(str(tmp_path / "big"), str)
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "MLTable").write_bytes(b"paths: \xff\n")
    with pytest.raises(DataError, match=r"binary/MLTable: not UTF-8 text \(byte 7\)"):
        read_jsonl(str(tmp_path / "binary"), str)


def test_validate_and_acceptance_read_an_mltable_folder_and_refuse_a_broken_one(tmp_path):
    train = mltable_folder(tmp_path / "train-mltable")
    job = tmp_path / "job.yaml"
    job.write_text("task: image-classification\ntraining_data: train-mltable\n")
    assert validate_file(str(job)).training_data == "train-mltable"

    (train / "MLTable").write_text(AZURE_MLTABLE.format(jsonl="missing.jsonl").replace("utf8", "utf16"))
    with pytest.raises(JobSpecError) as info:
        validate_file(str(job))
    assert [str(p) for p in info.value.problems] == [
        f"{train}/MLTable:5: field 'transformations[0].read_json_lines.encoding': 'utf16': the JSONL file is read "
        "as UTF-8 (utf8 or utf8bom)"]

    # A job dropped into the inbox by hand: rejected at acceptance with the same problem, in error.json.
    root = Root(str(tmp_path / "root"))
    root.storage.write_text(root.inbox_key("broken.yaml"), f"task: image-classification\ntraining_data: {train}\n")
    assert accept(root, "broken.yaml", JobStates(root, lambda: 0.0, print), lambda message: None, 0.0) == "broken"
    assert root.storage.read_json(root.job_state("broken"))["status"] == "rejected"
    error = json.dumps(root.storage.read_json(root.job_error("broken")))
    assert f"{train}/MLTable" in error and "transformations[0].read_json_lines.encoding" in error
