"""docs/python-api.md runs as it stands: every Python block, in order, in one namespace, in a fresh
folder (a real two-trial sweep with the local launcher on a toy data set)."""
from __future__ import annotations

import re

import pytest
from conftest import REPO

DOC = REPO / "docs" / "python-api.md"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


@pytest.mark.slow
def test_every_python_block_of_the_doc_runs_in_order(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    blocks = BLOCK.findall(DOC.read_text())
    assert len(blocks) >= 9, "the doc's Python blocks were not found"
    namespace: dict = {"__name__": "python_api_doc"}
    for number, block in enumerate(blocks, start=1):
        code = compile(block, f"{DOC.name}, python block {number}", "exec")
        exec(code, namespace)  # noqa: S102 - our own documentation, run as a reader would
    assert namespace["status"] == "completed"
