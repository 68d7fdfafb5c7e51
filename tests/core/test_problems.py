"""One way to report what is wrong with a user's file — a job file, a data file, a file to convert:
`file[:line]: field 'name': message`, every problem at once, the first MAX_LISTED listed — and the
JSONL reader that every such file goes through."""
from __future__ import annotations

import json

import pytest

from automl_images.core import jsonl
from automl_images.core.problems import MAX_LISTED, Problem, Problems


def test_a_problem_names_file_line_and_field():
    assert str(Problem("job.yaml", "limits.max_trials", "must be between 1 and 1000", 4)) == \
        "job.yaml:4: field 'limits.max_trials': must be between 1 and 1000"
    assert str(Problem("train.jsonl:3", "", "invalid JSON")) == "train.jsonl:3: invalid JSON"


def test_every_problem_is_raised_at_once_and_long_lists_are_counted():
    problems = Problems(KeyError)
    problems.raise_if_any()  # none: nothing raised
    for line in range(1, MAX_LISTED + 4):
        problems.add("f.jsonl", "label", "missing", line)
    with pytest.raises(KeyError) as info:
        problems.raise_if_any()
    lines = info.value.args[0].splitlines()
    assert lines[0] == "f.jsonl:1: field 'label': missing" and len(lines) == MAX_LISTED + 1
    assert lines[-1] == "and 3 more problem(s)"


def test_jsonl_lines_are_objects_with_where_they_came_from(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(("\ufeff" + "\n".join([json.dumps({"a": 1}), "", "[]", "{", json.dumps({"b": 2})])).encode())
    problems = Problems(ValueError)
    lines = jsonl.read_objects(str(path), problems)
    assert [(line.number, line.value) for line in lines] == [(1, {"a": 1}), (5, {"b": 2})]
    assert lines[1].where == f"{path}:5"
    assert [str(p) for p in problems.items] == [
        f"{path}:3: a line must be a JSON object, got list",
        f"{path}:4: invalid JSON: Expecting property name enclosed in double quotes (column 2)"]


def test_a_file_that_cannot_be_read_raises_the_callers_error(tmp_path):
    with pytest.raises(LookupError, match="file not found"):
        jsonl.read_objects(str(tmp_path / "missing.jsonl"), Problems(LookupError))
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(LookupError, match="not UTF-8 text"):
        jsonl.read_objects(str(tmp_path / "binary.jsonl"), Problems(LookupError))
