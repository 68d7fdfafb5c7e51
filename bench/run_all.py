"""Every benchmark of this folder, one after the other, each in its own process (a benchmark's
threads, caches and global settings must not colour the next one's figures), with its default
arguments; their result lines are repeated at the end.

    .venv/bin/python bench/run_all.py                  # or: make bench
    .venv/bin/python bench/run_all.py trainer_throughput s3_vs_local

The trainer's four first (about 17 minutes on a 2-core CPU machine), then the others in name
order (detection and the controller's: about 15 minutes more). Not `gpu_check.py` and
`gpu_detection_check.py`, which need a GPU. Log lines go to stderr; the figures to stdout.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

FIRST = ("trainer_throughput.py", "s3_vs_local.py", "fridge_accuracy.py", "prepared_dataset.py")
NOT_HERE = ("run_all.py", "gpu_check.py", "gpu_detection_check.py")


def benchmarks(here: str) -> list[str]:
    others = sorted(name for name in os.listdir(here)
                    if name.endswith(".py") and not name.startswith("_") and name not in FIRST + NOT_HERE)
    return [name for name in FIRST if os.path.exists(os.path.join(here, name))] + others


def main(argv: list[str] | None = None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    chosen = [a if a.endswith(".py") else a + ".py" for a in (sys.argv[1:] if argv is None else argv)]
    lines, failed = [], []
    for name in chosen or benchmarks(here):
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        result = subprocess.run([sys.executable, os.path.join(here, name)], stdout=subprocess.PIPE, text=True)
        sys.stdout.write(result.stdout)
        lines += [line for line in result.stdout.splitlines() if line.startswith("[")]
        if result.returncode:
            failed.append(name)
        print(f"== {name}: exit {result.returncode} after {time.perf_counter() - started:.0f} s", flush=True)
    print("\n".join(["", "Results:"] + lines + ([f"FAILED: {', '.join(failed)}"] if failed else [])), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
