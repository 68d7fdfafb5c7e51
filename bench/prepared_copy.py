"""What the bucket's copy of prepared images (the job's `prepared_images: bucket`,
trainer/prepared.py) saves a trial on another machine: preparing a set by decoding its JPEGs,
against fetching the copy another machine uploaded, on the fridge photos of ../shared/datasets
(the 134 thumbnails 113×150, the 128 photos 499×666, at the classification presets' decode size
256) and on 24 synthetic 12-megapixel photos (4000×3000, a phone's, at detection's decode size
800), from a folder standing for a bucket and from moto's S3 server over HTTP.

    nice .venv/bin/python bench/prepared_copy.py [--repeats 3]

Each figure is images per second of wall time for `prepared.prepare` with every thread it uses
(as many as the machine's cores), from an empty local folder: "decode" with no copy, "decode and
upload" the first machine's run, "fetch" a second machine's run (the same images at other paths,
each fetched file checked against its sha256). Medians of `repeats`. The ratio fetch ÷ decode says
whether the copy pays on this machine and store; on a real bucket the fetch rate is the network's
and the store's, not moto's (~10 ms a request, one process).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _data import photo  # noqa: E402
from _moto import moto_server  # noqa: E402

from automl_images.core.storage import Storage  # noqa: E402
from automl_images.trainer import prepared  # noqa: E402

DATASETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "datasets")
# name: (folder below DATASETS, or None for synthetic photos; decode size)
SETS = {"thumbnails 113x150": ("fridge-multiclass/images", 256), "photos 499x666": ("fridge-detection/images", 256),
        "photos 4000x3000": (None, 800)}
LARGE_PHOTOS = 24


def rate(paths: list[str], size: int, work: str, copy: Storage | None, expect: tuple[int, int]) -> float:
    """Images per wall second of one `prepare` into the empty folder `work`."""
    shutil.rmtree(work, ignore_errors=True)
    started = time.perf_counter()
    got = prepared.prepare(paths, size, work, copy=copy)
    seconds = time.perf_counter() - started
    assert (got.decoded, got.fetched) == expect, (got.decoded, got.fetched, expect)
    return len(paths) / seconds


def measure(name: str, folder: str, size: int, bucket_url: str, repeats: int, scratch: str) -> dict[str, float]:
    paths = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.lower().endswith(".jpg"))
    elsewhere = os.path.join(scratch, "elsewhere")
    shutil.rmtree(elsewhere, ignore_errors=True)
    os.makedirs(elsewhere)
    for path in paths:   # the other machine's copies of the images
        shutil.copy(path, elsewhere)
    moved = sorted(os.path.join(elsewhere, os.path.basename(p)) for p in paths)
    n = len(paths)
    runs: dict[str, list[float]] = {"decode": [], "decode and upload": [], "fetch": []}
    for repeat in range(repeats):
        copy = Storage(f"{bucket_url}/{name.replace(' ', '-')}-{repeat}")
        runs["decode"].append(rate(paths, size, os.path.join(scratch, "a"), None, (n, 0)))
        runs["decode and upload"].append(rate(paths, size, os.path.join(scratch, "a"), copy, (n, 0)))
        runs["fetch"].append(rate(moved, size, os.path.join(scratch, "b"), copy, (0, n)))
    r = {k: statistics.median(v) for k, v in runs.items()}
    r["ratio"] = r["fetch"] / r["decode"]
    return r


def large_photos(folder: str) -> str:
    """LARGE_PHOTOS photo-like JPEGs of 4000×3000 in `folder` (bench/_data.photo)."""
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for i in range(LARGE_PHOTOS):
        with open(os.path.join(folder, f"large_{i:03d}.jpg"), "wb") as f:
            f.write(photo(rng, 4000, 3000, (180, 120, 90)))
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=DATASETS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    threads = prepared._threads()
    with tempfile.TemporaryDirectory(prefix="bench-copy-") as scratch, moto_server():
        s3 = Storage("s3://bench-prepared")
        s3.fs.mkdir("bench-prepared")
        for images_name, (sub, size) in SETS.items():
            folder = os.path.join(args.datasets, sub) if sub else large_photos(os.path.join(scratch, "large"))
            if not os.path.isdir(folder):
                print(f"[prepared_copy] skipped {images_name}: no {folder} (see ../shared/datasets/README.md)")
                continue
            for store, url in (("folder", os.path.join(scratch, "bucket")), ("moto S3", s3.url())):
                r = measure(images_name, folder, size, url, args.repeats, scratch)
                print(f"[prepared_copy] {images_name} at decode size {size}, {threads} threads, {store}: "
                      f"images/s decode {r['decode']:.0f}, decode and upload {r['decode and upload']:.0f}, "
                      f"fetch {r['fetch']:.0f}: fetch / decode {r['ratio']:.2f}", flush=True)


if __name__ == "__main__":
    main()
