"""`submit` of a job whose data is a local MLTable folder, to a bucket: the MLTable file goes up with
its JSONL file and images, the submission record names the uploaded folder, and the job is accepted."""
from __future__ import annotations

from conftest import make_bucket, mltable_folder

from automl_images.controller.inbox import accept
from automl_images.controller.job_state import JobStates
from automl_images.controller.submit import submit
from automl_images.core.layout import Root


def test_a_local_mltable_folder_is_uploaded_with_its_mltable_file(tmp_path, s3_endpoint):
    mltable_folder(tmp_path / "train-mltable")
    mltable_folder(tmp_path / "val-mltable", "val.jsonl", seed=1)
    (tmp_path / "job.yaml").write_text("task: image-classification\ntraining_data: train-mltable\n"
                                       "validation_data: val-mltable/MLTable\n")
    root_url = f"s3://{make_bucket(s3_endpoint)}/automl"
    root = Root(root_url)
    job_id = submit(str(tmp_path / "job.yaml"), root_url, job_id="m", progress=lambda m: None)
    record = root.storage.read_json(root.submission(job_id))
    assert record["data"] == {"training_data": root.storage.url("uploads/m/training_data"),
                              "validation_data": root.storage.url("uploads/m/validation_data")}
    assert root.storage.walk("uploads/m/training_data")[:2] == ["MLTable", "images/blue_0.png"]
    assert accept(root, "m.yaml", JobStates(root, lambda: 0.0, print), print, 0.0) == "m"
    assert root.storage.read_json(root.job_state("m"))["status"] == "running"
    assert root.storage.read_json(root.data_check("m"))["summary"]["images"] == 12
