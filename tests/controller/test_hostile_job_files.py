"""Hostile job files: every one is refused with file:line, field and the limit, in bounded time and
memory, the same in `validate`, `submit` and the controller; a refused inbox file moves to its job
folder byte for byte, and never delays the jobs beside it."""
from __future__ import annotations

import contextlib
import gc
import json
import subprocess
import sys
import time
import tracemalloc
from typing import Iterator

import pytest
from conftest import REPO
from simulated import SimLauncher, sim_job, submit

from automl_images.controller.cli import main
from automl_images.controller.loop import Controller
from automl_images.controller.spec import MAX_FILE_BYTES, JobSpecError, parse_job, parse_job_bytes
from automl_images.core.layout import Root

SOURCE = "job.yaml"
BASE = "task: image-classification\ntraining_data: train.jsonl\n"


@contextlib.contextmanager
def cpu_seconds() -> Iterator[list[float]]:
    """The CPU seconds of this thread in the block, in the list it yields (the machine's other work
    does not count), with Python's cyclic garbage collector paused: a full collection of the test
    session's heap, which may fall in the block, is not the parser's work (it took 1.1 s of a 1 s
    bound once in CI, where the parse alone takes 0.2 s)."""
    seconds: list[float] = []
    gc.collect()
    gc.disable()
    start = time.thread_time()
    try:
        yield seconds
    finally:
        seconds.append(time.thread_time() - start)
        gc.enable()


def _aliases(levels: int) -> str:
    """Each level a list of ten aliases of the level below: 10**levels values from ~60 bytes a level."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels + 1)]
    return BASE + "\n".join(lines) + "\n"


def _merges(levels: int) -> str:
    """Each level merges the level below twice: 2**levels keys."""
    lines = ["m0: &m0 {k0: 1}"]
    lines += [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: 1}}" for i in range(1, levels + 1)]
    return BASE + "\n".join(lines) + "\n"


ALIAS_BOMB = _aliases(8)
MERGE_BOMB = _merges(25)
DEEP = BASE + "x: " + "[" * 5000 + "]" * 5000 + "\n"

# name: (text, field, line, what the message says)
REFUSED = {
    "alias bomb": (ALIAS_BOMB, "a3", 6, "expands to more than 10000 values, each use of a YAML alias or merge "
                                       "counted (the limit)"),
    "merge bomb": (MERGE_BOMB, "m11", 14, "expands to more than 10000 values"),
    "alias cycle": (BASE + "a: &a [1, *a]\n", "a[1]", 3, "a YAML alias refers to a value that holds it"),
    "deep nesting": (DEEP, "x", 3, "nested more than 32 levels deep (the limit)"),
    "deep through aliases": (BASE + "".join(f"d{i}: &d{i} [*d{i - 1}]\n" if i else "d0: &d0 [1]\n"
                                            for i in range(40)), "d31", 34, "nested more than 32 levels deep"),
    "many values": (BASE + "".join(f"k{i}: {i}\n" for i in range(12000)), "k4997", 5000,
                    "holds more than 10000 values (the limit)"),
    "5,000-digit integer": (BASE + "limits:\n  max_trials: " + "9" * 5000 + "\n", "limits.max_trials", 4,
                            "a number of 5000 characters; numbers may be at most 1e+15 in size (the limit)"),
    "large number": (BASE + "seed: 1.0e+300\n", "seed", 3, "numbers may be at most 1e+15 in size (the limit), "
                                                          "got 1e+300"),
    "randint(1e300)": (BASE + "search_space:\n  - training_batch_size: randint(1e300)\n",
                       "search_space[0].training_batch_size", 4,
                       "randint(1e+300): numbers may be at most 1e+15 in size (the limit), got 1e+300"),
    "quniform(1, 1e999, 1)": (BASE + "search_space:\n  - learning_rate: quniform(1, 1e999, 1)\n",
                              "search_space[0].learning_rate", 4, "quniform(1, inf, 1): must be a finite number"),
    "loguniform(0, 1000)": (BASE + "search_space:\n  - learning_rate: loguniform(0, 1000)\n",
                            "search_space[0].learning_rate", 4,
                            "draws up to exp(1000), but numbers may be at most 1e+15 in size (the limit): keep the "
                            "log-scale bound below 34.5"),
    "learning_rate: .nan": (BASE + "search_space:\n  - learning_rate: .nan\n", "search_space[0].learning_rate", 4,
                            "must be a finite number, got nan"),
    "arguments .inf": (BASE + "arguments:\n  learning_rate: .inf\n", "arguments.learning_rate", 4,
                       "must be a finite number, got inf"),
    "'nan' as text": (BASE + "arguments:\n  learning_rate: 'nan'\n", "arguments.learning_rate", 4,
                      "must be a finite number, got nan"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_a_hostile_job_file_is_refused_quickly_naming_line_field_and_limit(name):
    text, field, line, message = REFUSED[name]
    with cpu_seconds() as seconds, pytest.raises(JobSpecError) as info:
        parse_job(text, SOURCE)
    assert seconds[0] < 1.0
    [problem] = info.value.problems
    assert (problem.field, problem.line) == (field, line), str(info.value)
    assert message in problem.message
    assert str(info.value).startswith(f"{SOURCE}:{line}: field '{field}': ")


def test_a_file_over_the_size_limit_is_refused_before_it_is_read_as_yaml():
    data = (BASE + "#" * MAX_FILE_BYTES).encode()
    with pytest.raises(JobSpecError) as info:
        parse_job_bytes(data, SOURCE)
    assert str(info.value) == (f"{SOURCE}: the job file has {len(data)} bytes; a job file may have at most "
                               f"{MAX_FILE_BYTES} (1 MiB, the limit)")
    with pytest.raises(JobSpecError):
        parse_job(data.decode(), SOURCE)


def test_validate_and_submit_refuse_a_huge_file_by_its_size(tmp_path, capsys):
    job = tmp_path / "huge.yaml"
    with open(job, "wb") as f:
        f.truncate(1 << 30)  # 1 GiB, sparse: reading it would take the memory
    expected = (f"{job}: the job file has {1 << 30} bytes; a job file may have at most {MAX_FILE_BYTES} "
                "(1 MiB, the limit)\n")
    assert main(["validate", str(job)]) == 2
    assert capsys.readouterr().err == expected
    assert main(["submit", str(job), "--root", str(tmp_path / "root")]) == 2
    assert capsys.readouterr().err == expected
    assert not (tmp_path / "root").exists()


def test_a_randint_of_millions_of_values_is_checked_by_its_ends_not_enumerated():
    tracemalloc.start()
    try:
        with pytest.raises(JobSpecError) as info:
            parse_job(BASE + "search_space:\n  - training_batch_size: randint(20000000)\n", SOURCE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6
    assert str(info.value) == (f"{SOURCE}:4: field 'search_space[0].training_batch_size': randint(20000000) can "
                               "produce 0, but training_batch_size must be in integer (0, ∞)")


def test_aliases_merges_and_large_ranges_inside_the_limits_are_valid():
    spec = parse_job(BASE + "search_space:\n"
                            "  - &small {learning_rate: 0.01, warmup_cosine_lr_warmup_epochs: randint(1000000)}\n"
                            "  - <<: *small\n"
                            "    momentum: uniform(0.5, 0.9)\n"
                            "    learning_rate: loguniform(-30, 0)\n", SOURCE)
    first, second = spec.search_space
    assert first["warmup_cosine_lr_warmup_epochs"].args == (1000000,) == second["warmup_cosine_lr_warmup_epochs"].args
    assert (first["learning_rate"], second["learning_rate"].args) == (0.01, (-30, 0))


def _peak(code: str) -> tuple[float, float, str]:
    """(CPU seconds from `start`, peak resident MB, output) of `code` run in a fresh interpreter. The
    peak is VmHWM: ru_maxrss would keep the high-water mark of the pytest process it was forked from.
    CPU seconds, not wall-clock ones: what the bomb costs, whatever else the machine is doing."""
    script = ("import re, time\n" + code + "\nseconds = time.process_time() - start\n"
              "kb = re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1)\n"
              "print(f'{seconds:.3f} {kb}')")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    *lines, last = out.stdout.strip().splitlines()
    seconds, kb = last.split()
    return float(seconds), int(kb) / 1024, "\n".join(lines)


def test_the_largest_bombs_take_under_a_second_and_little_memory(tmp_path):
    for name, text in (("alias", _aliases(9)), ("merge", _merges(30)), ("deep", DEEP)):
        (tmp_path / f"{name}.yaml").write_text(text)
    seconds, mb, output = _peak(
        "from automl_images.controller.cli import main\nstart = time.process_time()\n"
        f"codes = [main(['validate', '{tmp_path}/' + n + '.yaml']) for n in ('alias', 'merge', 'deep')]\n"
        "print(codes)")
    assert output == "[2, 2, 2]"
    assert seconds < 1.0 and mb < 300, (seconds, mb)


def test_validate_and_submit_refuse_a_bomb_with_exit_2_and_write_nothing(tmp_path, capsys):
    job = tmp_path / "bomb.yaml"
    job.write_text(ALIAS_BOMB)
    root = tmp_path / "root"
    expected = f"{job}:6: field 'a3': expands to more than 10000 values"
    assert main(["validate", str(job)]) == 2
    assert capsys.readouterr().err.startswith(expected)
    assert main(["submit", str(job), "--root", str(root)]) == 2
    assert capsys.readouterr().err.startswith(expected)
    assert not root.exists()


def _pass_with_a_bomb(tmp_path, bomb: bytes) -> tuple[Root, list[str], float, float]:
    root = Root(str(tmp_path / "root"))
    submit(root, "good", sim_job())
    root.storage.write_bytes("inbox/bomb.yaml", bomb)
    log: list[str] = []
    controller = Controller(root, log=log.append, launchers={"local": SimLauncher()})
    tracemalloc.start()
    try:
        with cpu_seconds() as seconds:
            controller.reconcile_once()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return root, log, seconds[0], peak


@pytest.mark.parametrize("bomb", [ALIAS_BOMB.encode(), MERGE_BOMB.encode(), DEEP.encode(),
                                  b"task: image-classification\nname: caf\xe9\n"],
                         ids=["alias", "merge", "deep", "not UTF-8"])
def test_a_bomb_in_the_inbox_is_refused_in_the_pass_that_accepts_the_job_beside_it(tmp_path, bomb):
    root, log, seconds, peak = _pass_with_a_bomb(tmp_path, bomb)
    assert root.storage.read_json(root.job_state("good"))["status"] == "running"
    assert root.storage.read_json(root.job_state("bomb"))["status"] == "rejected"
    assert root.storage.read_bytes(root.job_file("bomb")) == bomb  # moved byte for byte
    error = root.storage.read_json(root.job_error("bomb"))
    assert error["source"].endswith("inbox/bomb.yaml") and len(error["problems"]) == 1
    assert root.inbox_files() == []
    assert any(line.startswith("job bomb: rejected") for line in log)
    assert seconds < 1.0 and peak < 300e6, (seconds, peak)


def test_a_refusal_in_the_inbox_names_what_validate_names(tmp_path):
    root, _, _, _ = _pass_with_a_bomb(tmp_path, REFUSED["5,000-digit integer"][0].encode())
    error = root.storage.read_json(root.job_error("bomb"))
    [problem] = error["problems"]
    assert (problem["path"], problem["line"]) == ("limits.max_trials", 4)
    assert "numbers may be at most 1e+15 in size (the limit)" in problem["message"]
    assert json.dumps(error)  # plain JSON all through
