"""The `automl-images` command.

    automl-images validate JOB.yaml
    automl-images submit JOB.yaml --root URL
    automl-images controller --root URL [--once | --until-done]
    automl-images status [JOB] --root URL
    automl-images leaderboard JOB --root URL [--format table|csv|json|markdown]
    automl-images cancel JOB --root URL
    automl-images trial run SPEC_URL
    automl-images evaluate --task TASK --labels LABELS.jsonl --predictions PREDICTIONS.jsonl
    automl-images convert {coco,voc,yolo} SOURCE --images DIR --output OUT.jsonl [--task TASK] [--names FILE]
    automl-images demo [--root URL]

`--root` defaults to $AUTOML_IMAGES_ROOT. Exit codes: 0 ok; 1 failed (a trial, or with --until-done a job
the controller ran that failed or was rejected); 2 invalid input (a job file, an unknown job, a root that
does not exist). README.md's "Commands" lists them per command.
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

    p = commands.add_parser("cancel", help="stop every trial of a job and end it")
    p.add_argument("job")
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

    p = commands.add_parser("convert", help="write COCO JSON, Pascal VOC XML or YOLO labels as our JSONL")
    p.add_argument("format", choices=("coco", "voc", "yolo"))
    p.add_argument("source", help="coco: the JSON file; voc: the folder of .xml files; yolo: the folder of .txt files")
    p.add_argument("--images", required=True, help="the images' folder (COCO file names and VOC/YOLO "
                   "label paths are relative to it)")
    p.add_argument("--output", required=True, help="the JSONL file to write; image_url is relative to its folder")
    p.add_argument("--task", default="image-object-detection", choices=("image-object-detection",
                   "image-instance-segmentation", "image-multi-labeling"))
    p.add_argument("--names", help="yolo: class names, a YAML file with `names:` or a text file of one per line")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")

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
    from .spec import JobSpecError

    try:
        return _COMMANDS[args.command](args)
    except JobSpecError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except _UsageError as exc:
        print(f"automl-images {args.command}: {exc}", file=sys.stderr)
        return 2


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
    spaces = len(spec.search_space)
    _print(f"{args.job}: valid ({spec.task.value}, primary metric {spec.primary_metric}, {spec.sampling} "
           f"sampling, {spaces} subspace{'s' * (spaces != 1)}, {spec.limits.max_trials} trials)")
    return 0


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
    from .loop import Controller

    root = _need_root(args)
    controller = Controller(root, log=_timestamped)
    try:
        controller.run(once=args.once, interval_s=args.interval, until_done=args.until_done)
    except KeyboardInterrupt:
        _print("controller stopped; trials keep running, and a new controller adopts them")
        return 0
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


# The trainer's entry points are imported when their command runs, never with this module: the
# controller's commands must not load torch (tests/test_architecture.py checks it).
def _trial(args: argparse.Namespace) -> int:
    from automl_images.trainer.run import main as run_trial

    return run_trial([args.spec_url])


def _evaluate(args: argparse.Namespace) -> int:
    from automl_images.trainer.evaluate import run_cli

    return run_cli(args.task, args.labels, args.predictions, args.metric_type)


def _convert(args: argparse.Namespace) -> int:
    from automl_images.trainer.convert import run_cli

    return run_cli(args.format, args.source, args.images, args.output, args.task, args.names, args.overwrite)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.root or "demo-root", trials=args.trials, concurrent=args.concurrent)


_COMMANDS: dict[str, Any] = {"validate": _validate, "submit": _submit, "controller": _controller,
                             "status": _status, "leaderboard": _leaderboard, "cancel": _cancel,
                             "trial": _trial, "evaluate": _evaluate, "convert": _convert, "demo": _demo}
# The commands that run the trainer here (the demo through the local launcher).
_NEED_TRAINER = ("trial", "evaluate", "convert", "demo")


if __name__ == "__main__":
    sys.exit(main())
