"""One contract, every backend: the storage operations behave the same on a folder and on S3."""
from __future__ import annotations

import threading

from automl_images.core.storage import Storage, resolve


def test_read_write_list_delete(root_url):
    storage = Storage(root_url)
    assert storage.read_json("a/state.json") is None
    storage.write_json("a/state.json", {"x": 1})
    storage.write_bytes("a/b/c.bin", b"\x00\x01")
    assert storage.read_json("a/state.json") == {"x": 1}
    assert storage.read_bytes("a/b/c.bin") == b"\x00\x01"
    assert storage.list("a") == ["b", "state.json"]
    assert storage.list("missing") == []
    assert storage.walk("a") == ["b/c.bin", "state.json"]
    storage.delete("a/state.json")
    storage.delete("a/state.json")  # deleting twice is fine
    assert not storage.exists("a/state.json")


def test_create_exclusive_has_one_winner(root_url):
    storage = Storage(root_url)
    winners = []

    def attempt(i: int) -> None:
        if storage.create_exclusive("lease.json", f"{i}".encode()):
            winners.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert storage.read_bytes("lease.json") == str(winners[0]).encode()


def test_copy_tree(root_url):
    storage = Storage(root_url)
    storage.write_bytes("src/model/model.pt", b"weights")
    storage.write_json("src/model/model.json", {"labels": ["a"]})
    assert storage.copy_tree("src/model", "best") == ["model.json", "model.pt"]
    assert storage.read_bytes("best/model.pt") == b"weights"


def test_resolve_relative_references():
    assert resolve("data/train.jsonl", "s3://b/inbox/job.yaml") == "s3://b/inbox/data/train.jsonl"
    assert resolve("../x.jsonl", "s3://b/inbox/job.yaml") == "s3://b/x.jsonl"
    assert resolve("gs://other/x.jsonl", "/tmp/job.yaml") == "gs://other/x.jsonl"
    assert resolve("x.jsonl", "/tmp/jobs/job.yaml") == "/tmp/jobs/x.jsonl"
