"""Reading the images from a bucket instead of a local folder: a trial's first epoch (fetching and
checking every image, then training on them) with its images on an S3 API server (moto, on this
machine, over HTTP) against the same trial with its images in a local folder. Goal: the S3 run
at least 0.85 times as fast (local seconds ÷ S3 seconds).

    .venv/bin/python bench/s3_vs_local.py
    .venv/bin/python bench/s3_vs_local.py --images 128 --model resnet18 --repeats 3

Each S3 run starts with an empty image cache, so every image is downloaded (in parallel, then
read from the cache by the epoch). The trial folder is local in both runs: only where the images
live changes. Runs alternate local, S3, local, S3, ... and the figures are medians. On a shared
machine single runs move by 20% or more, far more than the fetch costs, so a second ratio is
printed: the training part of the epoch is the same work in both runs (the same losses to the last
digit), so it is taken as the median over all runs for both, and the ratio compares what differs,
(local fetch + training) / (S3 fetch + training). moto is a Python server on the same cores as the trainer:
about 50 GETs/s here, where a real bucket serves the 16 parallel GETs several times faster, but
over a network.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _data import timed_trial, write_photos, write_spec  # noqa: E402
from _moto import moto_server  # noqa: E402

from automl_images.core.storage import Storage  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--model", default="mobilenetv2")
    parser.add_argument("--size", type=int, default=224, help="crop size (resize: 8/7 of it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    os.environ["AUTOML_IMAGES_THREADS"] = str(args.threads)
    with moto_server() as endpoint:
        import boto3

        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        with tempfile.TemporaryDirectory(prefix="bench-s3-") as folder:
            local_data = Storage(os.path.join(folder, "local-data"))
            s3_data = Storage(f"s3://{bucket}/data")
            sources = {"local": write_photos(local_data, "", train=args.images, validation=8),
                       "s3": write_photos(s3_data, "", train=args.images, validation=8)}
            trials = Storage(os.path.join(folder, "trials"))
            hp = {"model_name": args.model, "number_of_epochs": 1, "training_batch_size": 16,
                  "validation_batch_size": 16, "resize_size": args.size * 8 // 7, "crop_size": args.size}
            seconds: dict[str, list[float]] = {"local": [], "s3": []}
            fetch: dict[str, list[float]] = {"local": [], "s3": []}
            training: list[float] = []
            losses: set[float] = set()
            for repeat in range(args.repeats):
                for where in ("local", "s3"):
                    name = f"{where}-{repeat}"
                    _, status, metrics = timed_trial(write_spec(trials, name, *sources[where], **hp),
                                                     os.path.join(folder, f"cache-{name}"))
                    if where == "s3":
                        assert status["images_fetched"]["downloaded"] == args.images + 8
                    fetch[where].append(status["data_seconds"])
                    seconds[where].append(status["data_seconds"] + metrics[0]["train_seconds"])
                    training.append(metrics[0]["train_seconds"])
                    losses.add(metrics[0]["train_loss"])

    mean = statistics.median
    ratio = mean(seconds["local"]) / mean(seconds["s3"])
    shared = mean(training)
    same_work = (mean(fetch["local"]) + shared) / (mean(fetch["s3"]) + shared)
    print(f"[s3_vs_local] {args.model} at {args.size} px, {args.images} training + 8 validation JPEGs, "
          f"{args.threads} thread(s): first epoch (fetch and check, then train) local {mean(seconds['local']):.2f} s "
          f"(fetch {mean(fetch['local']):.2f} s), S3 {mean(seconds['s3']):.2f} s (fetch {mean(fetch['s3']):.2f} s); "
          f"ratio local/S3 {ratio:.3f} (goal >= 0.85; medians of {args.repeats} runs each, local "
          f"{[round(x, 1) for x in seconds['local']]}, S3 {[round(x, 1) for x in seconds['s3']]}); with the "
          f"training both do alike ({'identical' if len(losses) == 1 else 'DIFFERENT'} losses, median "
          f"{shared:.2f} s): ratio {same_work:.3f}", flush=True)
    return {"local_s": mean(seconds["local"]), "s3_s": mean(seconds["s3"]), "ratio": ratio,
            "ratio_same_training": same_work}


if __name__ == "__main__":
    main()
