"""The README's tutorial runs as written: every ```bash block, in order, with bash, in a fresh folder
that holds what the tutorial tells a reader to copy there (class folders of images, a COCO file), on
a local root and then on an S3 API server (moto's, from tests/conftest.py).

A block that cannot run here says so in the markdown with `<!-- tutorial-test: skip (why) -->` on the
line before it; the test checks that exactly those are skipped. The tutorial's job files are run with
the few substitutions of SUBSTITUTIONS, each of which must match: they shrink the sweeps to minutes of
CPU and keep the trials off the network, and change nothing a reader would see fail.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest
from conftest import REPO
from PIL import Image
from synthetic import COLOURS, square

TUTORIAL = REPO / "README.md"
BLOCK = re.compile(r"^```(\S*)\n(.*?)^```$", re.S | re.M)
SKIP = re.compile(r"<!-- tutorial-test: skip \((.+?)\) -->\n\Z")
IMAGE_SIZE = 64
TRAINING = (f"  pretrained: 0                 # trained from scratch: tests never download weights\n"
            f"  resize_size: {IMAGE_SIZE}\n  crop_size: {IMAGE_SIZE}\n  warmup_cosine_lr_warmup_epochs: 0\n")
# (what the tutorial says, what the test runs instead): each must occur in the tutorial.
SUBSTITUTIONS = [
    # classification: two 1-epoch trials of small untrained models at 64 px, rather than four of 10
    # epochs from ImageNet weights
    ("  max_trials: 4\n  max_concurrent_trials: 2\n", "  max_trials: 2\n  max_concurrent_trials: 2\n"),
    ("  number_of_epochs: 10\n", "  number_of_epochs: 1\n" + TRAINING),
    # detection: one 1-epoch trial of the smallest Faster R-CNN, untrained, at 64 px
    ("  max_trials: 4\n  max_concurrent_trials: 1\n", "  max_trials: 1\n  max_concurrent_trials: 1\n"),
    ("  - model_name: fasterrcnn_resnet50_fpn\n", "  - model_name: fasterrcnn_resnet18_fpn\n"),
    ("  number_of_epochs: 15\n", f"  number_of_epochs: 1\n  pretrained: 0\n  min_size: {IMAGE_SIZE}\n"
                                 f"  max_size: {IMAGE_SIZE}\n"),
]


def blocks(text: str) -> list[tuple[str, str, str | None]]:
    """Every fenced block: (language, code, why it is skipped or None)."""
    found = []
    for match in BLOCK.finditer(text):
        skip = SKIP.search(text[:match.start()])
        found.append((match.group(1), match.group(2), skip.group(1) if skip else None))
    return found


def write_photos(folder: Path, per_class: int = 10) -> None:
    """What the tutorial's reader copies into photos/: one folder of images per class."""
    rng = np.random.default_rng(0)
    for label, colour in COLOURS.items():
        (folder / label).mkdir(parents=True)
        for i in range(per_class):
            (folder / label / f"{i}.png").write_bytes(square(colour, IMAGE_SIZE, rng))


def write_coco(folder: Path, images: int = 12) -> None:
    """What the tutorial's reader copies into boxes/: images and a COCO file, a coloured box on each."""
    rng = np.random.default_rng(1)
    (folder / "images").mkdir(parents=True)
    names = list(COLOURS)
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
    for k in range(images):
        category = k % len(names)
        pixels = rng.integers(0, 40, size=(IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.uint8)
        x, y = (int(v) for v in rng.integers(2, IMAGE_SIZE // 2, 2))
        w = h = IMAGE_SIZE // 3
        pixels[y:y + h, x:x + w] = COLOURS[names[category]]
        Image.fromarray(pixels).save(folder / "images" / f"{k}.png")
        coco["images"].append({"id": k + 1, "file_name": f"{k}.png", "width": IMAGE_SIZE, "height": IMAGE_SIZE})
        coco["annotations"].append({"id": k + 1, "image_id": k + 1, "category_id": category + 1,
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    (folder / "instances.json").write_text(json.dumps(coco))


def test_the_blocks_are_found_and_only_the_marked_ones_skipped():
    found = blocks(TUTORIAL.read_text())
    # A command block in another language would escape the test: commands are ```bash.
    assert {language for language, _, _ in found} <= {"bash", "text"}, "tutorial blocks are ```bash or ```text"
    assert all(why is None for language, _, why in found if language == "text"), "a skip mark before a text block"
    run = [code for language, code, why in found if language == "bash" and why is None]
    skipped = [why for language, _, why in found if language == "bash" and why is not None]
    assert len(run) >= 10 and len(skipped) <= 4, (len(run), skipped)
    text = TUTORIAL.read_text()
    for tutorial, _ in SUBSTITUTIONS:
        assert tutorial in text, f"the tutorial no longer says {tutorial!r}: update SUBSTITUTIONS"


@pytest.mark.slow
def test_every_command_block_of_the_tutorial_runs_in_order(tmp_path, s3_endpoint):
    text = TUTORIAL.read_text()
    for tutorial, test in SUBSTITUTIONS:
        assert text.count(tutorial) == 1, f"the tutorial no longer says {tutorial!r} once: update SUBSTITUTIONS"
        text = text.replace(tutorial, test)
    bucket = f"tutorial-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    text = text.replace("s3://my-bucket/", f"s3://{bucket}/")

    folder = tmp_path / "tutorial"
    write_photos(folder / "photos")
    write_coco(folder / "boxes")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               AUTOML_IMAGES_THREADS="1", AUTOML_IMAGES_IMAGE_CACHE=str(tmp_path / "image-cache"),
               AWS_ENDPOINT_URL=s3_endpoint)
    for name in ("AUTOML_IMAGES_ROOT", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)

    ran = 0
    for number, (language, code, why) in enumerate(blocks(text), start=1):
        if language != "bash" or why is not None:
            continue
        started = time.monotonic()
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=folder, env=env,
                                capture_output=True, text=True, timeout=600)
        print(f"block {number}: {time.monotonic() - started:.1f}s, exit {result.returncode}")
        assert result.returncode == 0, (f"block {number} exited {result.returncode}:\n{code}\n"
                                        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}")
        ran += 1
    assert ran >= 10

    # what the tutorial says the reader gets
    assert (folder / "classify-report.html").stat().st_size > 0
    assert len((folder / "predictions.jsonl").read_text().splitlines()) == 6
    assert (folder / "boxes-predictions.jsonl").read_text()
    for job in ("classify", "detect"):
        assert json.loads((folder / "automl-root" / "jobs" / job / "state.json").read_text())["status"] == "completed"
