"""check-data over a large set from a bucket and from a local folder: images checked per second for
each, their ratio (goal: the bucket at least 0.5 times as fast as the folder, by reading the
images' first and last bytes in parallel) and each run's peak memory.

    .venv/bin/python bench/check_data.py                      # 10,000 photos of 640x480
    .venv/bin/python bench/check_data.py --images 2000 --repeats 3

The bucket is moto's S3 API server on this machine, over HTTP (bench/_moto.py): a Python server on
the same cores as the check, so slower per request than a real bucket, which is reached over a
network instead. Each check runs in a process of its own (`core/datacheck.py`, as `automl-images
check-data` runs it), whose peak resident memory is read when it ends; runs alternate folder,
bucket, folder, ... and the figures are medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _moto import moto_server  # noqa: E402

DISTINCT = 100   # photos drawn; the others are these with a comment of their own (unique bytes, cheap)


def write_set(folder: str, images: int, width: int, height: int) -> tuple[str, str]:
    """`images` unique JPEGs, 90% for training, and the two JSONL files; returns their paths."""
    from _data import CLASSES, photo  # it imports the trainer: never in the measured processes

    rng = np.random.default_rng(0)
    base = [photo(rng, width, height, tuple(int(v) for v in rng.integers(60, 255, 3))) for _ in range(DISTINCT)]
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    lines: dict[str, list[str]] = {"train": [], "val": []}
    for i in range(images):
        comment = f"bench image {i}".encode()
        data = base[i % DISTINCT]
        # A JPEG comment segment (FF FE, length) right after the start marker: a valid, distinct file.
        unique = data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:]
        name = f"images/{i:05d}.jpg"
        with open(os.path.join(folder, name), "wb") as f:
            f.write(unique)
        lines["train" if i % 10 else "val"].append(json.dumps({"image_url": name, "label": CLASSES[i % len(CLASSES)]}))
    for split, content in lines.items():
        with open(os.path.join(folder, f"{split}.jsonl"), "w") as f:
            f.write("\n".join(content) + "\n")
    return os.path.join(folder, "train.jsonl"), os.path.join(folder, "val.jsonl")


def child(train: str, val: str) -> None:
    """One check, in this process: prints its figures as JSON."""
    from automl_images.core.datacheck import DataFiles, check
    from automl_images.core.hyperparameters import Task

    started = time.perf_counter()
    report = check(DataFiles(Task.CLASSIFICATION, train, val))
    seconds = time.perf_counter() - started
    with open("/proc/self/status") as f:  # the high-water mark of this process's memory (kB)
        peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"seconds": seconds, "images": report.summary["images"], "ok": report.ok,
                      "errors": len(report.errors), "warnings": len(report.warnings),
                      "bytes_read": report.summary["bytes_read"], "peak_mb": peak_kb / 1024}))


def run_child(train: str, val: str) -> dict:
    """A check in a process of its own; its figures and its peak resident memory (MB)."""
    # VmHWM, not the rusage of the child: that counts the pages it shared with this process before exec.
    result = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", train, val],
                            stdout=subprocess.PIPE, text=True, check=True)
    figures = json.loads(result.stdout)
    if not figures["ok"] or figures["errors"] or figures["warnings"]:
        raise RuntimeError(f"the check found problems in clean data: {figures}")
    return figures


def plain_gets(fs, paths: list[str]) -> float:
    """Seconds to GET every object whole, THREADS at a time, doing nothing with the bytes: what the
    server can serve, the ceiling of any check that reads from it."""
    from concurrent.futures import ThreadPoolExecutor

    from automl_images.core.datacheck import THREADS

    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(fs.cat_file, paths))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    import s3fs

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        local_train, local_val = write_set(folder, args.images, args.width, args.height)
        size = sum(e.stat().st_size for e in os.scandir(os.path.join(folder, "images")))
        print(f"{args.images} JPEGs of {args.width}x{args.height}, {size / args.images / 1024:.0f} KB on average, "
              f"written in {time.perf_counter() - started:.0f}s")
        with moto_server() as endpoint:
            fs = s3fs.S3FileSystem(endpoint_url=endpoint)
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            fs.mkdir(bucket)
            started = time.perf_counter()
            fs.put(folder + "/", f"{bucket}/set/", recursive=True)
            print(f"uploaded to the S3 API server in {time.perf_counter() - started:.0f}s")
            runs: dict[str, list[dict]] = {"folder": [], "bucket": []}
            baseline = []
            for _ in range(args.repeats):
                runs["folder"].append(run_child(local_train, local_val))
                runs["bucket"].append(run_child(f"s3://{bucket}/set/train.jsonl", f"s3://{bucket}/set/val.jsonl"))
                baseline.append(plain_gets(fs, fs.find(f"{bucket}/set/images")))
    rates = {}
    for where, figures in runs.items():
        seconds = statistics.median(f["seconds"] for f in figures)
        rates[where] = args.images / seconds
        peak = statistics.median(f["peak_mb"] for f in figures)
        read = figures[0]["bytes_read"] / 1024 / 1024
        print(f"{where:>6}: {seconds:6.1f} s, {rates[where]:7.0f} images/s, peak memory {peak:.0f} MB, "
              f"{read:.0f} MB read of {size / 1024 / 1024:.0f} MB")
    ratio = rates["bucket"] / rates["folder"]
    served = args.images / statistics.median(baseline)
    print(f"bucket / folder: {ratio:.2f} (goal >= 0.5: {'met' if ratio >= 0.5 else 'NOT met'})")
    print(f"the server's ceiling: plain GETs of every image, {served:.0f} images/s; the bucket check reaches "
          f"{rates['bucket'] / served:.2f} of it")


if __name__ == "__main__":
    main()
