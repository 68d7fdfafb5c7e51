"""Hostile and broken data (issue 11 item 6): what a shared annotation file cannot make a trial do
(read outside its folder through a link, fetch from the machine's private network or the cloud
metadata service), and the limits that keep a trial bounded (classes, class names, nesting, the
per-epoch metrics at 10,000 classes); labels written two ways, the training file given as
validation data, and the job's split read by every trial."""
from __future__ import annotations

import http.server
import json
import threading
import time
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest

from automl_images.core import addresses
from automl_images.core.annotations import MAX_CLASSES, Record
from automl_images.core.hyperparameters import Task
from automl_images.core.jsonl import MAX_DEPTH
from automl_images.core.labels import MAX_CLASS_NAME_CHARS, Spellings, class_name
from automl_images.core.split import to_json
from automl_images.core.storage import json_bytes
from automl_images.core.trial_spec import TrialSpec
from automl_images.trainer import data, metrics
from automl_images.trainer.inputs import TrialInputs


def write_jsonl(path, lines) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def test_a_symbolic_link_out_of_the_data_folder_is_refused(tmp_path):
    (tmp_path / "secret.png").write_bytes(b"private")
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.png").write_bytes(b"inside")
    (folder / "images" / "escape.png").symlink_to(tmp_path / "secret.png")
    (folder / "images" / "alias.png").symlink_to(folder / "images" / "a.png")  # a link inside is fine
    path = write_jsonl(folder / "train.jsonl", [{"image_url": "images/alias.png", "label": "x"},
                                                {"image_url": "images/escape.png", "label": "x"}])
    with pytest.raises(data.DataError) as info:
        data.read_jsonl(path, class_name)
    assert str(info.value) == (f"{path}:2: field 'image_url': 'images/escape.png' is a symbolic link to "
                               f"{tmp_path / 'secret.png'}, outside the folder of the JSONL file")


class _Recorder(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def local_server(tmp_path):
    (tmp_path / "served").mkdir()
    data.Image.new("RGB", (4, 4), (0, 0, 255)).save(tmp_path / "served" / "a.png")
    _Recorder.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Recorder, directory=str(tmp_path / "served")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_image_urls_into_private_networks_are_refused_before_any_request(tmp_path, local_server):
    urls = [f"http://127.0.0.1:{local_server}/a.png", f"http://localhost:{local_server}/a.png",
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/", "http://[::ffff:169.254.169.254]/",
            "http://10.0.0.7/a.png"]
    records = [Record("t.jsonl", i + 1, url, "x") for i, url in enumerate(urls)]
    samples, skipped = data.fetch_images(records, cache_dir=str(tmp_path / "cache"))
    assert samples == [] and _Recorder.requests == []
    reasons = [s.reason for s in skipped]
    assert reasons[0] == ("refused: 127.0.0.1 is a loopback address: refused (set allow_private_image_urls: true "
                          "in the job file to fetch images from such addresses)")
    assert reasons[1].startswith("refused: localhost resolves to ") and "loopback address" in reasons[1]
    assert [r.split(" is a ")[1].split(" address")[0] for r in reasons[2:]] == ["link-local", "link-local", "private"]


def test_a_job_that_allows_private_addresses_fetches_from_them(tmp_path, local_server):
    record = Record("t.jsonl", 1, f"http://127.0.0.1:{local_server}/a.png", "x")
    samples, skipped = data.fetch_images([record], cache_dir=str(tmp_path / "cache"), allow_private=True)
    assert skipped == [] and len(samples) == 1 and _Recorder.requests == ["/a.png"]


def test_public_addresses_pass_and_bucket_urls_are_not_concerned():
    addresses.check_public("https://8.8.8.8/a.png")
    addresses.check_public("s3://bucket/a.png")
    with pytest.raises(addresses.PrivateAddressError, match="0.0.0.0 is a private address: refused"):
        addresses.check_public("http://0.0.0.0/a.png")


def test_a_class_written_two_ways_is_refused_naming_both_lines(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"image_url": "a.png", "label": 5},
                                                   {"image_url": "b.png", "label": 6}])
    val = write_jsonl(tmp_path / "val.jsonl", [{"image_url": "c.png", "label": " 5 "}])
    seen = Spellings()
    data.read_jsonl(train, class_name, spellings_seen=seen)
    with pytest.raises(data.DataError) as info:
        data.read_jsonl(val, class_name, spellings_seen=seen)
    assert str(info.value) == (f"{val}:1: field 'label': class \" 5 \" is also written 5 ({train}:1): both would "
                               "be class '5'; write each class one way")
    one_way = write_jsonl(tmp_path / "ints.jsonl", [{"image_url": "a.png", "label": 5},
                                                    {"image_url": "b.png", "label": 5},
                                                    {"image_url": "c.png", "label": "6"}])
    assert [r.label for r in data.read_jsonl(one_way, class_name)] == ["5", "5", "6"]


def test_long_names_deep_nesting_and_long_lines_are_refused_by_line(tmp_path):
    deep = '{"image_url": "a.png", "label": ' + "[" * 50 + "]" * 50 + "}"
    very_deep = '{"image_url": "a.png", "label": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = write_jsonl(tmp_path / "t.jsonl", [{"image_url": "a.png", "label": "n" * (MAX_CLASS_NAME_CHARS + 1)},
                                              deep, very_deep, {"image_url": "b.png", "label": "ok"}])
    with pytest.raises(data.DataError) as info:
        data.read_jsonl(path, class_name)
    assert str(info.value).splitlines() == [
        f"{path}:2: JSON nested more than {MAX_DEPTH} levels deep",
        f"{path}:3: JSON nested more than {MAX_DEPTH} levels deep",
        f"{path}:1: field 'label': a class name of {MAX_CLASS_NAME_CHARS + 1} characters is longer than the "
        f"{MAX_CLASS_NAME_CHARS} allowed: '{'n' * 40}'...",
    ]


def spec_for(tmp_path, train: str, validation: str | None = None, split: str | None = None) -> TrialSpec:
    return TrialSpec(job_id="j", trial_id="t0001", task=Task.CLASSIFICATION, primary_metric="accuracy",
                     training_data=train, validation_data=validation, hyperparameters={"split_ratio": 0.5},
                     output=str(tmp_path / "out"), seed=11, split=split)


CLASSIFIER = SimpleNamespace(parse_label=class_name, classes_of=lambda label: (label,))


def test_more_classes_than_the_limit_fail_the_trial_before_any_image_is_read(tmp_path):
    lines = [{"image_url": f"{i}.png", "label": f"c{i}"} for i in range(MAX_CLASSES + 1)]
    train = write_jsonl(tmp_path / "train.jsonl", lines)
    val = write_jsonl(tmp_path / "val.jsonl", lines[:1])
    with pytest.raises(data.DataError, match=rf"train\.jsonl: {MAX_CLASSES + 1} classes, more than the "
                                             rf"{MAX_CLASSES} allowed"):
        TrialInputs(spec_for(tmp_path, train, val))._read_records(CLASSIFIER)


def test_the_training_file_as_validation_data_is_refused_with_its_reason(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"image_url": "a.png", "label": "a"}])
    with pytest.raises(data.DataError, match="the validation data is the training data; leave validation_data out"):
        TrialInputs(spec_for(tmp_path, train, train))._read_records(CLASSIFIER)


def test_every_trial_reads_the_jobs_split_and_none_splits_again(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"image_url": f"{i}.png", "label": "ab"[i % 2]} for i in range(8)])
    records = data.read_jsonl(train, class_name)
    (tmp_path / "split.json").write_bytes(json_bytes(to_json(records, [records[0], records[3]], 0.25, 1)))
    spec = spec_for(tmp_path, train, split=str(tmp_path / "split.json"))
    _, training, validation = TrialInputs(spec)._read_records(CLASSIFIER)
    assert [r.line for r in validation] == [1, 4] and len(training) == 6  # not the trial's seed, nor its ratio
    write_jsonl(tmp_path / "train.jsonl", [{"image_url": f"{i}.png", "label": "ab"[i % 2]} for i in range(9)])
    with pytest.raises(data.DataError, match="the file changed after the job was accepted"):
        TrialInputs(spec)._read_records(CLASSIFIER)


def test_metrics_at_10000_classes_stay_small():
    k, n = 10_000, 100
    rng = np.random.default_rng(0)
    targets = rng.integers(0, k, n)
    probabilities = rng.random((n, k))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    labels = [f"class_{i}" for i in range(k)]
    started = time.perf_counter()
    out = metrics.multiclass(targets, probabilities, labels)
    seconds = time.perf_counter() - started
    assert "confusion_matrix" not in out and out["per_class_omitted"] == k - metrics.MAX_PER_CLASS
    assert len(out["per_class"]) == metrics.MAX_PER_CLASS
    assert len(json_bytes(out)) < 100_000 and seconds < 10, (len(json_bytes(out)), seconds)
    multi = metrics.multilabel(rng.random((n, k)) > 0.9999, rng.random((n, k)), labels)
    assert len(multi["per_class"]) == metrics.MAX_PER_CLASS and len(json_bytes(multi)) < 100_000
    few = metrics.multiclass([0, 1, 2], np.eye(3), ["a", "b", "c"])
    assert list(few["per_class"]) == ["a", "b", "c"] and "per_class_omitted" not in few
    assert few["confusion_matrix"]["matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
