"""The `automl-images` command.

    automl-images validate JOB.yaml [--explain]
    automl-images check-data (JOB.yaml | FILE.jsonl --task TASK) [--root URL] [--report FILE]
    automl-images submit JOB.yaml --root URL
    automl-images controller --root URL [--once | --until-done]
    automl-images status [JOB] --root URL
    automl-images leaderboard JOB --root URL [--format table|csv|json|markdown]
    automl-images report JOB --root URL [--out FILE]
    automl-images cancel JOB --root URL
    automl-images gc JOB --root URL [--dry-run]
    automl-images trial run SPEC_URL
    automl-images evaluate --task TASK --labels LABELS.jsonl --predictions PREDICTIONS.jsonl
    automl-images predict MODEL (IMAGES... | --jsonl FILE | --prefix URL) --out OUT.jsonl [--runtime torch|onnx]
    automl-images serve MODEL --port N [--host 127.0.0.1]
    automl-images export MODEL --format onnx|torchscript|triton [--out URL]
    automl-images convert {coco,voc,yolo,folders,csv,labelstudio,cvat} SOURCE [--images DIR] --output OUT.jsonl
        [--task TASK] [--names FILE] [--label-delimiter C] [--split RATIO --seed N] [--overwrite]
    automl-images convert jsonl IN.jsonl --output OUT.json [--images DIR] [--task TASK]   (to COCO JSON)
    automl-images demo [--root URL]

`--root` defaults to $AUTOML_IMAGES_ROOT. Exit codes: 0 ok; 1 failed (a trial, or with --until-done a job
the controller ran that failed or was rejected); 2 invalid input (a job file, an unknown job, a root that
does not exist); 3 an outage (the bucket not answering or gone, a full or read-only disk, no permission:
one line says which; try again). docs/bucket-layout.md's "Exit codes" lists them per command.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from .launch.extras import TRAINER_INSTALL, trainer_installed

ROOT_ENV = "AUTOML_IMAGES_ROOT"


def _print(message: str) -> None:
    print(message, flush=True)


def _root_arg(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--root", default=os.environ.get(ROOT_ENV, default),
                        help=f"bucket root: a folder or an fsspec URL (s3://, gs://); default ${ROOT_ENV}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="automl-images", description="AutoML for images on any cloud.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("validate", help="check a job file without running it")
    p.add_argument("job")
    p.add_argument("--explain", action="store_true", help="also print the native job the file becomes (an Azure "
                   "ML job translated, AutoMode's search space filled in), as YAML")

    p = commands.add_parser("check-data", help="check a job's data on this machine: every line and every "
                            "image's header; exit 1 when training would fail")
    p.add_argument("file", help="a job file, or a JSONL file with --task")
    p.add_argument("--task", choices=("image-classification", "image-multi-labeling", "image-object-detection",
                                      "image-instance-segmentation"), help="the task of a JSONL file")
    p.add_argument("--root", help="a folder or bucket URL that a relative FILE is read from")
    p.add_argument("--report", default="check-data.json", help="the JSON report to write (default check-data.json)")

    p = commands.add_parser("submit", help="validate a job, upload its local data, drop it into the inbox")
    p.add_argument("job")
    p.add_argument("--job-id", help="job id (default: the file name and the time)")
    _root_arg(p)

    p = commands.add_parser("controller", help="run the controller over every job in the root")
    _root_arg(p)
    p.add_argument("--once", action="store_true", help="one reconcile pass, then exit (cron, functions)")
    p.add_argument("--until-done", action="store_true", help="exit once no job is running (batch use)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between passes")

    p = commands.add_parser("status", help="jobs and their trials")
    p.add_argument("job", nargs="?")
    _root_arg(p)

    p = commands.add_parser("leaderboard", help="a job's trials, best first")
    p.add_argument("job")
    p.add_argument("--format", choices=("table", "csv", "json", "markdown"), default="table")
    _root_arg(p)

    p = commands.add_parser("report", help="a job's HTML report (charts, the best trial's predictions); "
                                           "writes jobs/JOB/report.html")
    p.add_argument("job")
    p.add_argument("--out", help="write it here instead (a path or URL)")
    _root_arg(p)

    p = commands.add_parser("cancel", help="stop every trial of a job and end it")
    p.add_argument("job")
    _root_arg(p)

    p = commands.add_parser("gc", help="delete what an ended job no longer needs (its trials' resume checkpoints)")
    p.add_argument("job")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    _root_arg(p)

    p = commands.add_parser("trial", help="trainer commands")
    trial = p.add_subparsers(dest="trial_command", required=True)
    run = trial.add_parser("run", help="run one trial from its spec.json")
    run.add_argument("spec_url")

    p = commands.add_parser("evaluate", help="score saved predictions against labels; prints the metrics as JSON")
    p.add_argument("--task", required=True, help="image-classification, image-multi-labeling, "
                   "image-object-detection or image-instance-segmentation")
    p.add_argument("--labels", required=True, help="JSONL with the true labels (the training schema)")
    p.add_argument("--predictions", required=True, help="JSONL of the same schema plus scores: {class: probability} "
                   "(detection: a score per object)")
    p.add_argument("--metric-type", choices=("none", "coco", "voc", "coco_voc"),
                   help="object detection and instance segmentation: voc (default), coco or coco_voc")

    p = commands.add_parser("predict", help="a model's predictions for many images, as JSONL (the training schema "
                            "plus scores)")
    p.add_argument("model", help="a model folder, a trial folder, a job folder (its best model) or, with --root, "
                   "a job id")
    p.add_argument("images", nargs="*", help="image paths or URLs (or use --jsonl or --prefix)")
    p.add_argument("--jsonl", help="score the image_url of every line of this JSONL file")
    p.add_argument("--prefix", help="score every image file under this folder or bucket prefix")
    p.add_argument("--out", required=True, help="the JSONL file to write (a path or a bucket URL)")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    _root_arg(p)

    p = commands.add_parser("export", help="a model as ONNX (a batch of any size), TorchScript or a Triton model "
                            "repository, with a model.json of labels, preprocessing and outputs")
    p.add_argument("model", help="a model folder, a trial folder, a job folder (its best model) or, with --root, a job id")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript", "triton"))
    p.add_argument("--out", help="the folder to write (a path or a bucket URL; default: FORMAT/ in the model folder)")
    _root_arg(p)

    p = commands.add_parser("serve", help="an HTTP endpoint for a model: POST /predict, GET /health")
    p.add_argument("model", help="a model folder, a trial folder, a job folder (its best model) or, with --root, "
                   "a job id")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    p.add_argument("--runtime", choices=("torch", "onnx"), default="torch")
    p.add_argument("--max-batch-size", type=int, default=16, help="requests' images run together, up to this many")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more images")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="the largest request body accepted")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="the most pixels an image may have")
    p.add_argument("--allow-private-urls", action="store_true", help="let requests name image URLs on private, "
                   "loopback and link-local addresses (refused by default: the server would fetch them)")
    _root_arg(p)

    p = commands.add_parser("convert", help="write labels in the formats users bring as our JSONL, or our JSONL as "
                            "COCO JSON")
    p.add_argument("format", choices=("coco", "voc", "yolo", "folders", "csv", "labelstudio", "cvat", "jsonl"),
                   help="the source's format; jsonl: our JSONL, written out as COCO JSON")
    p.add_argument("source", help="coco, labelstudio: the JSON file; voc: the folder of .xml files; yolo: the folder "
                   "of .txt files; folders: the folder of one folder per class; csv: the CSV file (a header naming "
                   "`image` and `labels`); cvat: the XML file; jsonl: the JSONL file")
    p.add_argument("--images", help="the images' folder, which the labels' image paths are relative to (not for "
                   "folders; for jsonl, what COCO file names are relative to: the JSONL's folder by default)")
    p.add_argument("--output", required=True, help="the file to write (JSONL; COCO JSON for jsonl); image_url is "
                   "relative to its folder")
    p.add_argument("--task", choices=("image-classification", "image-multi-labeling", "image-object-detection",
                   "image-instance-segmentation"), help="default: image-classification for folders, "
                   "image-multi-labeling for csv, else image-object-detection")
    p.add_argument("--names", help="yolo: class names, a YAML file with `names:` or a text file of one per line")
    p.add_argument("--label-delimiter", default=" ", help="csv: what separates the class names of an image "
                   "(default a space)")
    p.add_argument("--split", type=float, metavar="RATIO", help="write RATIO of the images (stratified by class) "
                   "to a validation file and the rest to OUTPUT")
    p.add_argument("--seed", type=int, default=0, help="--split's seed (default 0)")
    p.add_argument("--validation-output", help="--split's validation file (default OUTPUT's name + _validation)")
    p.add_argument("--overwrite", action="store_true", help="replace the output files if they exist")

    p = commands.add_parser("demo", help="a real sweep on handwritten digits, on this machine")
    p.add_argument("--root", default=None, help="bucket root (default ./demo-root)")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--concurrent", type=int, default=2)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in _NEED_TRAINER and not trainer_installed():
        command = "trial run" if args.command == "trial" else args.command
        print(f"automl-images {command} needs the trainer, which is not installed: {TRAINER_INSTALL}",
              file=sys.stderr)
        return 2
    from automl_images.core.storage import InvalidJSON, describe, outage

    from .spec import JobSpecError

    try:
        return _COMMANDS[args.command](args)
    except JobSpecError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except _UsageError as exc:
        print(f"automl-images {args.command}: {exc}", file=sys.stderr)
        return 2
    except InvalidJSON as exc:  # a torn file that this command cannot do without (a leaderboard)
        print(f"automl-images {args.command}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`automl-images evaluate ... | head`): nothing more to say, to anyone.
        # stdout is pointed at /dev/null so that Python's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a process ended by SIGPIPE
    except Exception as exc:  # noqa: BLE001 - only outages (botocore's connection errors are no OSError)
        if outage(exc) is None:
            raise
        print(f"automl-images {args.command}: {describe(exc)}", file=sys.stderr)
        return 3


class _UsageError(Exception):
    pass


def _need_root(args: argparse.Namespace):
    from automl_images.core.layout import Root

    if not args.root:
        raise _UsageError(f"--root is required (or set ${ROOT_ENV})")
    return Root(args.root)


def _validate(args: argparse.Namespace) -> int:
    from .submit import validate_file

    if not os.path.exists(args.job):
        raise _UsageError(f"{args.job}: no such file")
    spec = validate_file(args.job)
    for notice in spec.notices:  # Azure fields with no meaning here: never ignored silently
        _print(notice)
    spaces = len(spec.search_space)
    automode = " (AutoMode's curated space)" if spec.automode else ""
    _print(f"{args.job}: valid ({spec.task.value}, primary metric {spec.primary_metric}, {spec.sampling} "
           f"sampling, {spaces} subspace{'s' * (spaces != 1)}{automode}, {spec.limits.max_trials} trials)")
    if args.explain:
        import yaml

        from .spec import native_job

        with open(args.job, "rb") as f:
            native = native_job(f.read().decode("utf-8"), args.job)
        _print(yaml.safe_dump(native, sort_keys=False, allow_unicode=True).rstrip())
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from automl_images.core import datacheck
    from automl_images.core.hyperparameters import Task
    from automl_images.core.storage import Storage, is_url, join, json_bytes

    from .spec import check_file_size, parse_job_bytes
    from .submit import data_files

    source = args.file
    if args.root and not is_url(source) and not os.path.isabs(source):
        source = join(args.root, source)
    source = source if is_url(source) else os.path.abspath(source)
    if not is_url(source) and not os.path.isfile(source):
        raise _UsageError(f"{args.file}: no such file")
    if source.lower().endswith((".yaml", ".yml")):
        if args.task:
            raise _UsageError("--task is for a JSONL file: a job file names its task")
        folder, _, name = source.rpartition("/")
        if not is_url(source):
            check_file_size(os.path.getsize(source), args.file)  # a huge file is never read
        files = data_files(parse_job_bytes(Storage(folder).read_bytes(name), args.file), source)
    elif not args.task:
        raise _UsageError("--task is required with a JSONL file (a job file names its task)")
    else:
        files = datacheck.DataFiles(Task(args.task), source)
    report = datacheck.check(files)
    _print(report.render())
    with open(args.report, "wb") as f:
        f.write(json_bytes(report.to_json()))
    _print(f"report: {args.report}")
    return 0 if report.ok else 1


def _submit(args: argparse.Namespace) -> int:
    from .submit import JobIdError, submit

    root = _need_root(args)
    if not os.path.exists(args.job):
        raise _UsageError(f"{args.job}: no such file")
    try:
        job_id = submit(args.job, root.url, job_id=args.job_id)
    except JobIdError as exc:
        raise _UsageError(str(exc)) from None
    _print(job_id)
    return 0


def _controller(args: argparse.Namespace) -> int:
    from .loop import Controller, Outage

    root = _need_root(args)
    controller = Controller(root, log=_timestamped)
    try:
        controller.run(once=args.once, interval_s=args.interval, until_done=args.until_done)
    except KeyboardInterrupt:
        _print("controller stopped; trials keep running, and a new controller adopts them")
        return 0
    except Outage as exc:
        _timestamped(f"controller: {exc}")
        return 3
    if args.once and controller.outage:
        return 3  # the pass met an outage (logged): a cron job's signal to look
    failed = controller.failed_jobs()
    if args.until_done and failed:
        # A batch script's only signal: a failed or rejected job must not look like a finished sweep.
        listed = ", ".join(f"{job_id} ({status.value})" for job_id, status in sorted(failed.items()))
        _timestamped(f"{len(failed)} of the {len(controller.ran)} jobs this controller ran did not complete: {listed}")
        return 1
    return 0


def _timestamped(message: str) -> None:
    _print(f"{time.strftime('%H:%M:%S')} {message}")


def _existing_root(args: argparse.Namespace):
    """The root, which must exist: a mistyped folder or bucket is not an empty root."""
    root = _need_root(args)
    if not root.storage.exists(""):
        raise _UsageError(f"{root.url} does not exist: no job was ever submitted there (check --root)")
    return root


def _status(args: argparse.Namespace) -> int:
    from .status import job_summaries, render_job, render_summaries

    root = _existing_root(args)
    if args.job:
        text = render_job(root, args.job)
        if text is None:
            raise _UsageError(f"no job {args.job!r} in {root.url}")
        _print(text)
    else:
        _print(render_summaries(job_summaries(root)))
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    from . import leaderboard

    root = _existing_root(args)
    board = root.storage.read_json(root.leaderboard(args.job))
    if board is None:
        if args.job not in root.job_ids():
            raise _UsageError(f"no job {args.job!r} in {root.url}")
        raise _UsageError(f"job {args.job!r} has no leaderboard yet (no trial has finished)")
    render = {"table": leaderboard.to_table, "csv": leaderboard.to_csv, "json": leaderboard.to_json,
              "markdown": lambda b: leaderboard.to_table(b, markdown=True)}[args.format]
    sys.stdout.write(render(board))
    return 0


def _report(args: argparse.Namespace) -> int:
    from . import report

    root = _existing_root(args)
    if args.job not in root.job_ids():
        raise _UsageError(f"no job {args.job!r} in {root.url}")
    started = time.perf_counter()
    where = report.write(root, args.job, out=args.out)
    _print(f"{where} ({time.perf_counter() - started:.1f}s)")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from . import inbox
    from .job_state import JobStates
    from .status import queued_jobs

    root = _existing_root(args)
    if args.job not in root.job_ids():
        name = queued_jobs(root).get(args.job)
        if name is None:
            raise _UsageError(f"no job {args.job!r} in {root.url}")
        try:
            cancelled = inbox.cancel(root, name, args.job, JobStates(root, time.time, _print))
        except FileExistsError as exc:
            raise _UsageError(str(exc)) from None
        if cancelled:
            _print(f"{args.job} cancelled before any controller accepted it; its job file is now "
                   f"{root.storage.url(root.job_file(args.job))}")
            return 0
    # Accepted (maybe while this command ran): its controller stops it.
    root.storage.write_json(root.cancel_request(args.job), {"requested_at": time.time()})
    _print(f"cancel requested for {args.job}: the controller stops its trials on its next pass")
    return 0


def _gc(args: argparse.Namespace) -> int:
    from .gc import JobNotEnded, collect

    root = _existing_root(args)
    try:
        collected = collect(root, args.job, dry_run=args.dry_run)
    except KeyError:
        raise _UsageError(f"no job {args.job!r} in {root.url}") from None
    except JobNotEnded as exc:
        raise _UsageError(str(exc)) from None
    for key in collected.keys:
        _print(root.storage.url(key))
    verb = "would free" if args.dry_run else "freed"
    prepared = f", {collected.prepared_files} prepared image file(s)" if collected.prepared_files else ""
    _print(f"{args.job}: {collected.checkpoints} checkpoint(s){prepared}, {verb} {collected.freed_bytes / 1e6:.1f} MB")
    return 0


# The trainer's entry points are imported when their command runs, never with this module: the
# controller's commands must not load torch (tests/test_architecture.py checks it).
def _trial(args: argparse.Namespace) -> int:
    from automl_images.trainer.run import main as run_trial

    return run_trial([args.spec_url])


def _evaluate(args: argparse.Namespace) -> int:
    from automl_images.trainer.evaluate import run_cli

    return run_cli(args.task, args.labels, args.predictions, args.metric_type)


def _predict(args: argparse.Namespace) -> int:
    from automl_images.trainer.predict import run_cli

    return run_cli(args.model, args.images, args.jsonl, args.prefix, args.out, args.runtime, args.batch_size,
                   args.root, args.overwrite)


def _export(args: argparse.Namespace) -> int:
    try:
        from automl_images.trainer.onnx_export import run_cli
    except ModuleNotFoundError as exc:
        raise _UsageError(f"needs the export extra ({exc}): pip install 'automl-images[export]'") from None

    return run_cli(args.model, args.format, args.out, args.root)


def _serve(args: argparse.Namespace) -> int:
    try:
        from automl_images.trainer.serve import ServeConfig, run_cli
    except ModuleNotFoundError as exc:
        raise _UsageError(f"needs the serve extra ({exc}): pip install 'automl-images[serve]'") from None

    return run_cli(args.model, ServeConfig(
        host=args.host, port=args.port, max_batch_size=args.max_batch_size, max_wait_s=args.max_wait_ms / 1000,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_pixels=args.max_pixels,
        allow_private_urls=args.allow_private_urls), args.runtime, args.root)


def _convert(args: argparse.Namespace) -> int:
    from automl_images.trainer.convert import Options, run_cli

    return run_cli(Options(args.format, args.source, args.output, args.images, args.task, args.names,
                           args.label_delimiter, args.split, args.seed, args.validation_output, args.overwrite))


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.root or "demo-root", trials=args.trials, concurrent=args.concurrent)


_COMMANDS: dict[str, Any] = {"validate": _validate, "submit": _submit, "controller": _controller,
                             "status": _status, "leaderboard": _leaderboard, "report": _report, "cancel": _cancel, "gc": _gc,
                             "trial": _trial, "evaluate": _evaluate, "predict": _predict, "serve": _serve,
                             "export": _export,
                             "convert": _convert, "demo": _demo, "check-data": _check_data}
# The commands that run the trainer here (the demo through the local launcher).
_NEED_TRAINER = ("trial", "evaluate", "predict", "serve", "export", "convert", "demo")


if __name__ == "__main__":
    sys.exit(main())
