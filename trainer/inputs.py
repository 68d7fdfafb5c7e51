"""A trial's inputs: its labelled records read (and split, when the job has no validation file),
its images fetched and checked, and the loaders that the fit loop takes.

Under torchrun, rank 0 fetches and checks every image and tells the other ranks which it kept;
they fetch those (from the machine's cache when they share rank 0's) without decoding them again.
What was skipped or changed on the way is kept here as it is found, so that a trial that fails on
its data still reports which images it could not use.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import torch

from automl_images.core import split
from automl_images.core.annotations import same_file
from automl_images.core.labels import Spellings
from automl_images.core.storage import Storage
from automl_images.core.trial_spec import TrialSpec

from . import data, distributed, engine, prepared
from .fit import TrainingData
from .tasks import TaskAdapter

log = logging.getLogger(__package__)

MAX_LOGGED = 20   # skipped images and image warnings written to the log; status.json lists more


class TrialInputs:
    def __init__(self, spec: TrialSpec, ctx: distributed.Context = distributed.SINGLE):
        self.spec = spec
        self.hp = spec.hyperparameters
        self.ctx = ctx
        self.skipped: list[data.SkippedImage] = []
        self.image_warnings: list[dict[str, str]] = []
        self.stats: dict[str, Any] = {}     # rank 0: how long reading took, what was downloaded

    def load(self, adapter: TaskAdapter, on_error) -> tuple[list[str], list[data.Sample], list[data.Sample]]:
        """The classes and the training and validation samples. `on_error(exc)`: the message rank 0
        hands the other ranks when it cannot load the data."""
        ctx = self.ctx
        if ctx.is_main:
            try:
                labels, train_samples, val_samples = self._load_here(adapter)
            except BaseException as exc:
                distributed.broadcast(ctx, {"error": on_error(exc)})
                raise
            if ctx.enabled:
                distributed.broadcast(ctx, {"kept": [(s.record.source, s.record.line)
                                                     for s in train_samples + val_samples]})
            return labels, train_samples, val_samples
        outcome = distributed.broadcast(ctx, None)
        if "error" in outcome:
            raise data.DataError(f"rank 0 could not load the data: {outcome['error']}")
        labels, train_records, val_records = self._read_records(adapter)
        kept = set(map(tuple, outcome["kept"]))
        records = [r for r in train_records + val_records if (r.source, r.line) in kept]
        samples, skipped = data.fetch_images(records, check=False, allow_private=self.spec.allow_private_image_urls)
        if skipped:
            raise data.DataError(f"rank {ctx.rank} could not fetch images that rank 0 read: "
                                 + "; ".join(f"{s.where}: {s.reason}" for s in skipped[:5]))
        return (labels, *_split_samples(samples, train_records))

    def loaders(self, adapter: TaskAdapter, device: torch.device, labels: list[str],
                train_samples: list[data.Sample], val_samples: list[data.Sample]) -> TrainingData:
        """The loaders and class counts the fit loop takes."""
        spec, hp, ctx = self.spec, self.hp, self.ctx
        class_index = {name: i for i, name in enumerate(labels)}
        train_targets = [adapter.encode(s.record.label, class_index) for s in train_samples]
        val_targets = [adapter.encode(s.record.label, class_index) for s in val_samples]
        class_counts = [0] * len(labels)
        for sample in train_samples:
            for name in adapter.classes_of(sample.record.label):
                class_counts[class_index[name]] += 1
        loader_options = {"device": device, "seed": spec.seed, "rank": ctx.rank, "world_size": ctx.world_size,
                          "processes_per_node": ctx.local_world_size, "workers": hp.get("number_of_workers")}
        # Each image decoded once per job on this machine instead of once an epoch (prepared.py).
        images = None
        if spec.prepare_images and prepared.enabled():
            copy = Storage(spec.prepared_copy) if spec.prepared_copy else None
            images = prepared.JobImages(train_samples + val_samples, copy=copy)

        def dataset(samples: list[data.Sample], targets: list[Any], **options) -> data.ImageDataset:
            made = adapter.dataset(samples, targets, **options)
            if images is not None:
                images.attach(made)
            return made

        train_dataset = dataset(train_samples, train_targets, train=True, seed=spec.seed)
        train_loader = engine.make_loader(train_dataset, hp["training_batch_size"], train=True,
                                          collate_fn=adapter.collate, group_ids=train_dataset.group_ids,
                                          **loader_options)
        val_loader = engine.make_loader(dataset(val_samples, val_targets, train=False),
                                        hp["validation_batch_size"], train=False, collate_fn=adapter.collate,
                                        **loader_options)
        if len(train_loader) == 0:
            raise data.DataError(f"{spec.training_data}: no training batch: {len(train_samples)} "
                                 f"image(s) for training_batch_size {hp['training_batch_size']}"
                                 + (f" in each of {ctx.world_size} processes" if ctx.enabled else ""))
        train_eval_loader = None
        if hp.get("log_training_metrics") == "enable":  # .get: jobs accepted before it was a setting
            train_eval_loader = engine.make_loader(dataset(train_samples, train_targets, train=False),
                                                   hp["validation_batch_size"], train=False,
                                                   collate_fn=adapter.collate, **loader_options)
        return TrainingData(labels, train_loader, val_loader, class_counts, len(train_samples), train_eval_loader)

    def _read_records(self, adapter: TaskAdapter) -> tuple[list[str], list[data.Record], list[data.Record]]:
        spec = self.spec
        if spec.validation_data and same_file(spec.training_data, spec.validation_data):
            # `validate` refuses such a job; a spec written by hand gets the same reason.
            raise data.DataError(f"{spec.validation_data}: the validation data is the training data; leave "
                                 "validation_data out to split off split_ratio of it")
        seen = Spellings()  # a class written two ways across the two files is refused too
        train_records = data.read_jsonl(spec.training_data, adapter.parse_label, spec.datastores, seen)
        if spec.validation_data:
            val_records = data.read_jsonl(spec.validation_data, adapter.parse_label, spec.datastores, seen)
        elif spec.split:
            train_records, val_records = split.apply(train_records, self._saved_split(), spec.split)
        else:
            train_records, val_records = data.split(train_records, self.hp["split_ratio"], spec.seed,
                                                    key=lambda r: adapter.classes_of(r.label))
        labels = sorted({name for r in train_records for name in adapter.classes_of(r.label)})
        data.check_class_count(labels, spec.training_data)
        # A detector tells one class from the background; a classifier needs two to choose from.
        needed = 2 if spec.task.is_classification else 1
        if len(labels) < needed:
            raise data.DataError(f"{spec.training_data}: {len(labels)} class(es) ({', '.join(labels)}); "
                                 f"{spec.task.value} needs at least {needed}")
        data.check_known_classes(val_records, set(labels), adapter.classes_of)
        return labels, train_records, val_records

    def _saved_split(self) -> Any:
        folder, _, name = self.spec.split.rpartition("/")
        saved = Storage(folder).read_json(name)
        if saved is None:
            raise data.DataError(f"{self.spec.split}: the job's split file is missing")
        return saved

    def _load_here(self, adapter: TaskAdapter) -> tuple[list[str], list[data.Sample], list[data.Sample]]:
        started, cpu_started = time.perf_counter(), time.process_time()
        labels, train_records, val_records = self._read_records(adapter)
        records = train_records + val_records
        fetched_before = data.FETCH_STATS.snapshot()
        samples, self.skipped = data.fetch_images(records, allow_private=self.spec.allow_private_image_urls)
        fetched = {k: v - fetched_before[k] for k, v in data.FETCH_STATS.snapshot().items() if k != "max_in_flight"}
        data.check_bad_images(self.skipped, len(records), self.spec.max_bad_image_ratio)
        for s in self.skipped[:MAX_LOGGED]:
            log.warning("skipped image %s (%s): %s", s.where, s.image_url, s.reason)
        if len(self.skipped) > MAX_LOGGED:
            log.warning("and %d more skipped images (see status.json)", len(self.skipped) - MAX_LOGGED)
        # What a lenient parser changed in a label is listed like what an image's details got wrong.
        self.image_warnings = [{"where": r.where, "image_url": r.image_url, "warning": f"label: {change}"}
                               for r in records for change in adapter.label_changes(r.label)]
        self.image_warnings += [{"where": s.record.where, "image_url": s.record.image_url, "warning": s.warning}
                                for s in samples if s.warning]
        for w in self.image_warnings[:MAX_LOGGED]:
            log.warning("image %s (%s): %s", w["where"], w["image_url"], w["warning"])
        train_samples, val_samples = _split_samples(samples, train_records)
        if not train_samples or not val_samples:
            raise data.DataError(f"no readable {'training' if not train_samples else 'validation'} images "
                                 f"({len(self.skipped)} skipped)")
        seconds = time.perf_counter() - started
        self.stats = {"data_seconds": round(seconds, 3),
                      "data_cpu_seconds": round(time.process_time() - cpu_started, 3), "images_fetched": fetched}
        log.info("data: %d training and %d validation images, %d classes, %d skipped, %d downloaded, "
                 "%d from the cache (%.1fs)", len(train_samples), len(val_samples), len(labels),
                 len(self.skipped), fetched["downloaded"], fetched["cache_hits"], seconds)
        return labels, train_samples, val_samples


def _split_samples(samples: list[data.Sample], train_records: list[data.Record]
                   ) -> tuple[list[data.Sample], list[data.Sample]]:
    """Training and validation samples: a record's (file, line) identifies it; with a split,
    training and validation share a file."""
    train_keys = {(r.source, r.line) for r in train_records}
    return ([s for s in samples if (s.record.source, s.record.line) in train_keys],
            [s for s in samples if (s.record.source, s.record.line) not in train_keys])
