"""`check-data`: everything the trainer would refuse or warn about in a job's data, found on a CPU
before any GPU is paid for, and what a person would want to know besides (duplicates, leakage,
conflicting labels, imbalance).

    check(DataFiles(task, training_data, validation_data, ...)) -> Report

Two depths:
- `images=False` (what `validate` runs): the files exist and every line parses — schema and types,
  coordinates, empty or inverted boxes, polygons, class names and their spellings, the number of
  classes, classes only in validation, the split;
- `images=True` (what `check-data`, `submit` and the controller's acceptance run): besides, every
  image's header is read, in parallel, from wherever it is: a ranged read of its first HEAD_BYTES
  (the whole file when it is smaller) and, for a larger file, one of its last TAIL_BYTES (a bucket
  returns just those bytes), so a 5 MB photo costs two small requests. That finds missing,
  unreadable and oversized images (pixels counted from the header, as the trainer refuses them),
  truncated JPEG, PNG and GIF files (their end marker is missing, and then the file does not
  decode; other formats are only found truncated by the trainer's full decode), image_details
  that disagree, web URLs into private networks, and duplicates: two images are the same when
  their first HEAD_BYTES and last TAIL_BYTES are (a file under HEAD_BYTES is compared whole).

Errors are what makes training fail (the trainer refuses a bad line, a class it cannot learn, more
unreadable images than `max_bad_image_ratio`); the rest are warnings. The report is plain JSON and
bounded: the first MAX_REPORTED problems, and a count of every kind.
"""
from __future__ import annotations

import hashlib
import io
import re
import statistics
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from . import addresses, split
from .annotations import MAX_CLASSES, MAX_IMAGE_PIXELS, DataError, Record, details_problem, read_records
from .hyperparameters import Task
from .labels import Spellings, classes_of, parser
from .problems import Problem, Problems
from .storage import filesystem, is_transient, is_url, with_retries

# Every common format's header, EXIF included, fits, and so does a whole photo of up to 0.3
# megapixels or so: one request (a bucket's cost is per request far more than per byte).
HEAD_BYTES = 256 * 1024
TAIL_BYTES = 32          # holds the end marker of a JPEG (FF D9), a PNG (IEND chunk) or a GIF (3B)
THREADS = 64             # reading headers is waiting on storage: many requests in flight
MAX_REPORTED = 1000      # problems kept in the report; every kind is counted
MIN_CLASS_IMAGES = 5     # fewer training images of a class: a warning
IMBALANCE_RATIO = 20     # most common class / least common class above this: a warning

_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82", "GIF": b"\x3b"}


@dataclass(frozen=True)
class DataFiles:
    """A job's data, as the trainer will read it."""
    task: Task
    training_data: str
    validation_data: str | None = None
    datastores: Mapping[str, str] = field(default_factory=dict)
    lenient_labels: bool = False
    allow_private_image_urls: bool = False
    split_ratio: float = 0.2      # without validation data
    seed: int = 0                 # of the split
    max_bad_image_ratio: float = 0.05


@dataclass(frozen=True)
class Finding:
    severity: str             # "error" | "warning"
    kind: str                 # "line", "missing-image", "leakage", ...: counted in the report
    source: str               # the file
    field: str                # "" when it is the line or the file itself
    message: str
    line: int | None = None

    @classmethod
    def at(cls, severity: str, kind: str, record: Record, field: str, message: str) -> "Finding":
        return cls(severity, kind, record.source, field, message, record.line)

    @property
    def problem(self) -> Problem:
        return Problem(self.source, self.field, self.message, self.line)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line else self.source

    def __str__(self) -> str:
        return str(self.problem)

    def to_json(self) -> dict[str, Any]:
        return {"severity": self.severity, "kind": self.kind, "file": self.source, "line": self.line,
                "field": self.field, "message": self.message}


@dataclass
class Report:
    files: DataFiles
    findings: list[Finding] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    training: list[Record] = field(default_factory=list)     # as the trials will use them (split applied)
    validation: list[Record] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """Whether training can start on this data."""
        return not self.errors

    def split_json(self) -> dict[str, Any] | None:
        """The split file's content (core/split.py) when the job has no validation data."""
        if self.files.validation_data or not self.ok:
            return None
        return split.to_json(sorted(self.training + self.validation, key=lambda r: r.line), self.validation,
                             self.files.split_ratio, self.files.seed)

    def to_json(self) -> dict[str, Any]:
        ordered = self.errors + self.warnings
        return {"ok": self.ok, "task": self.files.task.value, "training_data": self.files.training_data,
                "validation_data": self.files.validation_data, "summary": self.summary,
                "errors": len(self.errors), "warnings": len(self.warnings),
                "counts": dict(sorted(Counter(f"{f.severity}:{f.kind}" for f in ordered).items())),
                "problems": [f.to_json() for f in ordered[:MAX_REPORTED]]}

    def render(self, listed: int = 20) -> str:
        """The summary and the first `listed` problems, errors first, for a terminal."""
        s = self.summary
        lines = [f"{s.get('images', 0)} images ({s.get('training', 0)} training, {s.get('validation', 0)} "
                 f"validation), {s.get('classes', 0)} classes" +
                 (f", {s['objects']} objects" if "objects" in s else "")]
        if s.get("width"):
            lines.append(f"sizes: width {s['width']['min']}..{s['width']['max']} (median {s['width']['median']}), "
                         f"height {s['height']['min']}..{s['height']['max']} (median {s['height']['median']})")
        lines.append(f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        ordered = self.errors + self.warnings
        lines += [f"{f.severity}: {f}" for f in ordered[:listed]]
        if len(ordered) > listed:
            lines.append(f"and {len(ordered) - listed} more (see the report)")
        return "\n".join(lines)

    def problems(self) -> list[Problem]:
        """The errors, as the problems of a refused job."""
        return [f.problem for f in self.errors]


def check(files: DataFiles, images: bool = True, threads: int = THREADS) -> Report:
    """Check `files`; `images=False` skips reading the images (see the module's docstring)."""
    started = time.perf_counter()
    report = Report(files)
    add = report.findings.append
    parse = parser(files.task, lenient=files.lenient_labels)
    seen = Spellings()
    training = _read(files.training_data, parse, files, seen, add)
    validation = _read(files.validation_data, parse, files, seen, add) if files.validation_data else []
    if files.validation_data is None and training:
        try:
            training, validation = split.split(training, files.split_ratio, files.seed,
                                               key=lambda r: classes_of(r.label))
        except DataError as exc:
            add(Finding("error", "split", files.training_data, "", str(exc).split(": ", 1)[-1]))
    report.training, report.validation = training, validation
    for record in training + validation:  # what lenient parsing changed: the trainer lists it too
        for note in getattr(record.label, "notes", ()):
            add(Finding.at("warning", "label-changed", record, "label", note))
    _check_classes(files, training, validation, add)
    facts: dict[str, _Image | Exception] = {}
    if images:
        facts = _read_images([r.image_url for r in training + validation], files.allow_private_image_urls, threads)
        _check_images(files, training, validation, facts, add)
    report.summary = _summary(files.task, training, validation, facts, time.perf_counter() - started)
    report.findings.sort(key=_position)  # file by file, line by line, whatever order they were found in
    return report


def _position(finding: Finding) -> tuple[str, int]:
    return finding.source, finding.line or 0


def _read(url: str, parse: Callable[[Any], Any], files: DataFiles, seen: Spellings,
          add: Callable[[Finding], None]) -> list[Record]:
    problems = Problems(DataError)
    try:
        records = read_records(url, parse, problems, files.datastores, seen)
    except DataError as exc:
        add(Finding("error", "file", url, "", str(exc).split(": ", 1)[-1]))
        return []
    for p in problems.items:
        add(Finding("error", "line" if p.line else "file", p.source, p.field, p.message, p.line))
    if not records and not problems.items:
        add(Finding("error", "file", url, "", "no records (the file is empty)"))
    return records


def _check_classes(files: DataFiles, training: list[Record], validation: list[Record],
                   add: Callable[[Finding], None]) -> None:
    images_per_class: Counter[str] = Counter()
    for record in training:
        images_per_class.update(classes_of(record.label))
    if not training:
        return
    where = files.training_data
    if len(images_per_class) > MAX_CLASSES:
        add(Finding("error", "classes", where, "",
                    f"{len(images_per_class)} classes, more than the {MAX_CLASSES} allowed"))
    needed = 2 if files.task.is_classification else 1
    if len(images_per_class) < needed:
        add(Finding("error", "classes", where, "", f"{len(images_per_class)} class(es); {files.task.value} needs at "
                                               f"least {needed}"))
    for record in validation:
        unknown = [name for name in classes_of(record.label) if name not in images_per_class]
        if unknown:
            add(Finding.at("error", "validation-only-class", record, "label",
                           f"class {unknown[0]!r} does not occur in the training data"))
    for name, count in sorted(images_per_class.items()):
        if count < MIN_CLASS_IMAGES:
            add(Finding("warning", "few-images", where, "", f"class {name!r} has {count} training image(s), "
                                                        f"fewer than {MIN_CLASS_IMAGES}"))
    if images_per_class:
        (most, high), (least, low) = images_per_class.most_common(1)[0], min(images_per_class.items(),
                                                                            key=lambda kv: (kv[1], kv[0]))
        if high > IMBALANCE_RATIO * low:
            add(Finding("warning", "imbalance", where, "", f"classes are imbalanced: {most!r} has {high} training "
                                                       f"images, {least!r} {low} (more than {IMBALANCE_RATIO}x)"))


class _TooLarge(ValueError):
    """An image whose header claims more pixels than PIL opens at all."""


@dataclass(frozen=True)
class _Image:
    """What an image's first and last bytes say."""
    width: int
    height: int
    format: str
    fingerprint: str
    truncated: bool
    bytes_read: int


def _read_images(urls: list[str], allow_private: bool, threads: int) -> dict[str, _Image | Exception]:
    """Each distinct URL's `_Image`, or the exception reading it raised."""
    filesystems: dict[str, Any] = {}
    lock = threading.Lock()

    def fs_of(url: str) -> tuple[Any, str]:
        protocol = url.split("://", 1)[0] if is_url(url) else "file"
        with lock:
            if protocol not in filesystems:
                filesystems[protocol] = filesystem(url)[0]
            fs = filesystems[protocol]
        return fs, fs._strip_protocol(url)

    def one(url: str) -> _Image | Exception:
        try:
            if addresses.is_web(url) and not allow_private:
                addresses.check_public(url)
            return _inspect(*fs_of(url), web=addresses.is_web(url))
        except Exception as exc:  # noqa: BLE001 - every unreadable image is a finding, never a crash
            return exc

    distinct = list(dict.fromkeys(urls))
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(distinct) or 1))) as pool:
        facts = dict(zip(distinct, pool.map(one, distinct)))
    # A bucket that stopped answering (after the retries) says nothing about the images: the
    # caller's outage, never a verdict on the data (the controller would reject a good job).
    down = next((f for f in facts.values() if isinstance(f, Exception) and is_transient(f)), None)
    if down is not None:
        raise down
    return facts


def _inspect(fs: Any, path: str, web: bool = False) -> _Image:
    """Two ranged reads: the head (the whole file when it is smaller) and the tail."""
    from PIL import Image  # PIL's plugins load on first use: a `validate` never pays for them

    options = {"allow_redirects": False} if web else {}  # the address checked is the address read
    head = with_retries(lambda: fs.cat_file(path, start=0, end=HEAD_BYTES, **options))
    whole = len(head) < HEAD_BYTES
    tail = head[-TAIL_BYTES:] if whole else with_retries(lambda: fs.cat_file(path, start=-TAIL_BYTES, **options))
    try:
        try:
            image = Image.open(io.BytesIO(head))
        except Image.DecompressionBombError:
            raise
        except Exception:  # noqa: BLE001 - a header longer than HEAD_BYTES (a large EXIF, ICC profile): read it all
            if whole:
                raise
            head = with_retries(lambda: fs.cat_file(path, **options))
            image = Image.open(io.BytesIO(head))
    except Image.DecompressionBombError as exc:  # PIL's own limit, above ours: still too large
        pixels = re.search(r"(\d+) pixels", str(exc))
        raise _TooLarge(f"{pixels.group(1) if pixels else 'too many'} pixels") from None
    with image:
        width, height, fmt = image.width, image.height, image.format or ""
    fingerprint = hashlib.sha256(head + b"|" + tail).hexdigest()
    bytes_read = len(head) + len(tail) * (not whole)
    marker = _END_MARKERS.get(fmt)
    truncated = marker is not None and marker not in tail
    if truncated and width * height <= MAX_IMAGE_PIXELS:
        # Some cameras write data after the end marker: the image is truncated only if it does
        # not decode, as the trainer decodes it (rare: worth reading it whole).
        data = head if whole else with_retries(lambda: fs.cat_file(path, **options))
        truncated, bytes_read = not _decodes(data), bytes_read + len(data) * (not whole)
    return _Image(width, height, fmt, fingerprint, truncated, bytes_read)


def _decodes(data: bytes) -> bool:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG":
                image.draft(None, (1, 1))  # every byte is still decoded, at the smallest scale
            image.load()
        return True
    except Exception:  # noqa: BLE001 - any failure to decode is what is asked
        return False


def _check_images(files: DataFiles, training: list[Record], validation: list[Record],
                  facts: Mapping[str, _Image | Exception], add: Callable[[Finding], None]) -> None:
    records = training + validation
    bad: list[tuple[Record, str, str]] = []     # record, kind, message: skipped by the trainer
    for record in records:
        fact = facts[record.image_url]
        if isinstance(fact, addresses.PrivateAddressError):
            add(Finding.at("error", "private-url", record, "image_url", str(fact)))
        elif isinstance(fact, FileNotFoundError):
            bad.append((record, "missing-image", f"{record.image_url} not found"))
        elif isinstance(fact, Exception) and not isinstance(fact, _TooLarge):
            bad.append((record, "unreadable-image", f"{record.image_url} cannot be read: "
                                                    f"{type(fact).__name__}: {str(fact)[:200]}"))
        elif isinstance(fact, _TooLarge) or fact.width * fact.height > MAX_IMAGE_PIXELS:
            size = f"{fact.width}x{fact.height} pixels" if isinstance(fact, _Image) else str(fact)
            bad.append((record, "oversized-image", f"{size}, more than the {MAX_IMAGE_PIXELS} "
                                                   "pixels allowed"))
        elif fact.truncated:
            bad.append((record, "truncated-image", f"{record.image_url} is truncated: its {fact.format} end "
                                                   "marker is missing and it does not decode"))
        else:
            problem = details_problem(record.details, (fact.width, fact.height), fact.format)
            if problem:
                add(Finding.at("warning", "image-details", record, "image_details", problem))
    # The trainer skips unreadable images up to a share of them, and fails beyond.
    too_many = bool(records) and len(bad) / len(records) > files.max_bad_image_ratio
    for record, kind, message in bad:
        add(Finding.at("error" if too_many else "warning", kind, record, "image_url", message))
    if too_many:
        add(Finding("error", "bad-images", files.training_data, "",
                    f"{len(bad)} of {len(records)} images cannot be used ({len(bad) / len(records):.1%}, more than "
                    f"max_bad_image_ratio={files.max_bad_image_ratio:g}): the trainer would fail"))
    _check_duplicates(training, validation, facts, add)


def _check_duplicates(training: list[Record], validation: list[Record], facts: Mapping[str, _Image | Exception],
                      add: Callable[[Finding], None]) -> None:
    """The same image twice in a set, in both sets (leakage: validation scores would be inflated),
    or with different labels (a labelling mistake, which no model can fit)."""
    by_content: dict[str, list[tuple[str, Record]]] = defaultdict(list)
    for role, records in (("training", training), ("validation", validation)):
        for record in records:
            fact = facts[record.image_url]
            if isinstance(fact, _Image):
                by_content[fact.fingerprint].append((role, record))
    for group in by_content.values():
        if len(group) < 2:
            continue
        (first_role, first), others = group[0], group[1:]
        for role, record in others:
            same = f"the same image as {first.where} ({first.image_url})"
            if record.label != first.label:
                add(Finding.at("warning", "conflicting-labels", record, "label", f"{same}, labelled differently"))
            elif role != first_role:
                add(Finding.at("warning", "leakage", record, "image_url",
                               f"{same}, which is in the {first_role} data too"))
            else:
                add(Finding.at("warning", "duplicate-image", record, "image_url", same))


def _summary(task: Task, training: list[Record], validation: list[Record], facts: Mapping[str, _Image | Exception],
             seconds: float) -> dict[str, Any]:
    records = training + validation
    out: dict[str, Any] = {"images": len(records), "training": len(training), "validation": len(validation),
                           "classes": len({name for r in records for name in classes_of(r.label)})}
    if task not in (Task.CLASSIFICATION, Task.MULTI_LABEL):
        out["objects"] = sum(len(r.label.objects) for r in records)
    read = [f for f in facts.values() if isinstance(f, _Image)]
    if facts:
        out["distinct_images"] = len(facts)
        out["images_read"] = len(read)
        out["bytes_read"] = sum(f.bytes_read for f in read)
    for side in ("width", "height"):
        values = [getattr(f, side) for f in read]
        if values:
            out[side] = {"min": min(values), "median": int(statistics.median(values)), "max": max(values)}
    out["seconds"] = round(seconds, 3)
    return out
