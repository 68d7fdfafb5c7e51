"""The endpoint's overhead: `automl-images serve`'s images/s under 16 concurrent clients, each
request one JPEG, divided by the bare model's batched images/s on the same machine. Goal: at least
0.8. With the requests' latency, p50 and p99.

    .venv/bin/python bench/serve_throughput.py
    .venv/bin/python bench/serve_throughput.py --model resnet18 --requests 320 --clients 16 --rounds 3

The bare figure is `LoadedModel.predict` on the same encoded JPEGs (photo-like, 320x240) in batches
of the server's maximum batch (16), in this process: the same work per image as the server's
(decode, resize and crop to 224, forward, the prediction records) without HTTP, queueing or JSON.
The server runs as SkyServe runs it, `automl-images serve` in a process of its own with dynamic
batching; the clients are threads of this process, one keep-alive connection each, sending
`Content-Type: image/jpeg` bodies. Both sides get the same torch threads (--threads), and the
clients' own CPU is spent on the same machine, as a load test's is. One thread by default: on the
2-core machine this was written on, shared with other work, two threads' spin-waits for each other
cost the bare loop 2.8 times the CPU per image that one thread needs (9.4 against 26.8 images per
CPU second), which would make any ratio against it meaningless.

Rounds alternate bare, server, bare, server, ... and the figures are medians of the rounds. Two
ratios: in wall time, and in CPU time (images per CPU second of the server's process, clients left
out, against the bare loop's). Read the CPU one on a shared machine: there other programs' load
moves wall time by the minute, and a process with more runnable threads (the server's decoding
threads and 16 clients) gets a larger share of the cores than the bare loop's, which flatters the
server in wall time. The model is untrained (its weights do not change its speed).
"""
from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _data import CLASSES, photo  # noqa: E402

from automl_images.controller.serve_client import ServeClient  # noqa: E402
from automl_images.core.hyperparameters import Task, resolve  # noqa: E402
from automl_images.core.storage import Storage  # noqa: E402
from automl_images.trainer import export  # noqa: E402
from automl_images.trainer.tasks import get_adapter  # noqa: E402

MAX_BATCH = 16
CLI = os.path.join(os.path.dirname(sys.executable), "automl-images")


def exported(folder: str, model_name: str) -> str:
    hp = resolve(Task.CLASSIFICATION, {"model_name": model_name, "pretrained": 0, "resize_size": 256,
                                       "crop_size": 224})
    adapter = get_adapter(Task.CLASSIFICATION, hp)
    model = adapter.build_model(len(CLASSES))
    export.export_model(Storage(folder), model.state_dict(), {
        "task": Task.CLASSIFICATION.value, "model_name": model_name, "labels": list(CLASSES),
        "hyperparameters": hp, **adapter.model_info, "primary_metric": "accuracy", "best_metric": 0.0, "epoch": 1})
    return folder


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) of process `pid` so far, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_round(model: export.LoadedModel, images: list[bytes], n: int) -> tuple[float, float]:
    """(images per second, images per CPU second) of the model's own batched predict."""
    batch = [images[i % len(images)] for i in range(n)]
    started, cpu = time.perf_counter(), time.process_time()
    model.predict(batch, batch_size=MAX_BATCH)
    return n / (time.perf_counter() - started), n / (time.process_time() - cpu)


def server_round(port: int, images: list[bytes], n: int, clients: int) -> tuple[float, list[float]]:
    """(images/s, each request's seconds) of `clients` threads sending n one-image requests in all."""
    latencies: list[float] = []
    lock = threading.Lock()
    failures: list[str] = []

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine = []
        for k in range(index, n, clients):
            started = time.perf_counter()
            connection.request("POST", "/predict", body=images[k % len(images)],
                               headers={"Content-Type": "image/jpeg"})
            response = connection.getresponse()
            body = response.read()
            mine.append(time.perf_counter() - started)
            if response.status != 200:
                failures.append(f"HTTP {response.status}: {body[:200]!r}")
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, the first: {failures[0]}")
    return n / seconds, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--requests", type=int, default=320, help="one-image requests per server round")
    parser.add_argument("--bare-images", type=int, default=160, help="images per bare round")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, on both sides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = [photo(rng, 320, 240, tuple(int(v) for v in rng.integers(60, 255, 3))) for _ in range(64)]

    with tempfile.TemporaryDirectory() as folder:
        model_dir = exported(os.path.join(folder, "model"), args.model)
        model = export.load_model(model_dir)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([CLI, "serve", model_dir, "--port", str(port), "--max-batch-size", str(MAX_BATCH)],
                                  env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        try:
            ServeClient(f"http://127.0.0.1:{port}", attempts=20, max_delay_s=2).health()
            server_round(port, images, 2 * args.clients, args.clients)     # warm-up: first batches, connections
            bare_round(model, images, 2 * MAX_BATCH)
            bare, bare_cpu, served, served_cpu, latencies = [], [], [], [], []
            for r in range(args.rounds):
                rate, per_cpu = bare_round(model, images, args.bare_images)
                bare.append(rate)
                bare_cpu.append(per_cpu)
                cpu = cpu_seconds(server.pid)
                rate, seconds = server_round(port, images, args.requests, args.clients)
                served.append(rate)
                served_cpu.append(args.requests / (cpu_seconds(server.pid) - cpu))
                latencies += seconds
                print(f"round {r + 1}: bare {bare[-1]:.1f} img/s ({bare_cpu[-1]:.1f} per CPU s), server {rate:.1f} "
                      f"img/s ({served_cpu[-1]:.1f} per CPU s)", file=sys.stderr, flush=True)
            health = ServeClient(f"http://127.0.0.1:{port}").health()
        finally:
            server.terminate()
            server.wait(timeout=30)

    bare_rate, server_rate = statistics.median(bare), statistics.median(served)
    cpu_ratio = statistics.median(served_cpu) / statistics.median(bare_cpu)
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    mean_batch = health["images"] / max(1, health["batches"])
    print(f"[serve_throughput] {args.model} at 224 px, {args.threads} torch thread(s), {args.clients} clients: "
          f"server {server_rate:.1f} img/s (latency p50 {p50:.0f} ms, p99 {p99:.0f} ms, mean batch {mean_batch:.1f}) "
          f"/ bare batched {bare_rate:.1f} img/s = {server_rate / bare_rate:.2f} in wall time, {cpu_ratio:.2f} in "
          f"CPU time (goal >= 0.8); rounds: bare {', '.join(f'{v:.1f}' for v in bare)}, "
          f"server {', '.join(f'{v:.1f}' for v in served)} img/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
