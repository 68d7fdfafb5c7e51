"""Images in a bucket (the S3 API server): fetched in parallel, each once, into the local cache that
every epoch (and the next trial on the machine) reads; Azure datastore references mapped onto the
bucket; stated sizes that are wrong reported in the trial's status."""
from __future__ import annotations

import json
import os

import torch
from conftest import make_bucket
from trial_data import write_dataset, write_spec

from automl_images.core.storage import Storage
from automl_images.trainer import data, run


def test_bucket_images_are_fetched_once_in_parallel_and_cached(s3_endpoint, tmp_path, monkeypatch):
    bucket = Storage(f"s3://{make_bucket(s3_endpoint)}/automl")
    train, _ = write_dataset(bucket, prefix="data", per_class=8, validation_per_class=2)  # 30 images
    # Validation lines name their images the way Azure exports do, through a datastore; one of them
    # states a size the image does not have.
    val_lines = []
    for i, label in enumerate(("red", "green", "blue") * 2):
        line = {"image_url": f"AmlDatastore://workspaceblobstore/images/{label}_{8 + i // 3}.png", "label": label,
                "image_details": {"format": "png", "width": "16px", "height": "16px"}}
        if i == 0:
            line["image_details"]["width"] = "499px"
        val_lines.append(json.dumps(line))
    bucket.write_text("data/val-azure.jsonl", "\n".join(val_lines) + "\n")
    val = bucket.url("data/val-azure.jsonl")

    local = Storage(str(tmp_path / "trials"))
    monkeypatch.setenv("AUTOML_IMAGES_THREADS", "1")
    monkeypatch.setenv("AUTOML_IMAGES_IMAGE_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    data.FETCH_STATS.max_in_flight = 0
    before = data.FETCH_STATS.snapshot()
    try:
        write_spec(local, "first", train, val, number_of_epochs=2)
        spec = local.read_json("first/spec.json")
        spec["datastores"] = {"workspaceblobstore": bucket.url("data")}
        local.write_json("first/spec.json", spec)
        first = run.run_trial(str(tmp_path / "trials" / "first" / "spec.json"))
        after_first = data.FETCH_STATS.snapshot()
        local.write_json("second/spec.json", {**spec, "trial_id": "second", "output": local.url("second"),
                                              "hyperparameters": {**spec["hyperparameters"], "number_of_epochs": 1}})
        second = run.run_trial(str(tmp_path / "trials" / "second" / "spec.json"))
    finally:
        torch.set_num_threads(threads)

    assert first["status"] == "completed" and second["status"] == "completed", first.get("error")
    # 24 training and 6 validation images, each fetched once over two epochs: the epochs read the
    # cache, not the bucket.
    assert first["images_fetched"]["downloaded"] == after_first["downloaded"] - before["downloaded"] == 30
    assert first["images_fetched"]["cache_hits"] == 0
    assert after_first["max_in_flight"] > 1  # in parallel
    cached = [name for _, _, names in os.walk(tmp_path / "cache") for name in names]
    assert len(cached) == 30 and all(name.endswith(".png") for name in cached)
    # The next trial on this machine downloads nothing.
    assert second["images_fetched"] == {"downloaded": 0, "downloaded_bytes": 0, "cache_hits": 30}
    assert first["image_warnings_count"] == 1
    warning = first["image_warnings"][0]
    assert warning["where"].endswith("val-azure.jsonl:1") and "says 499x16, the image is 16x16" in warning["warning"]
    assert warning["image_url"] == bucket.url("data/images/red_8.png")
