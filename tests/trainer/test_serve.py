"""`automl-images serve`: real HTTP requests to servers on 127.0.0.1 (uvicorn in a thread, and once
the CLI in a subprocess); Azure's request and scoring schemas; bad requests answered 4xx with a
clear message and the server still up; dynamic batching; the retrying client; sky/serve.yaml
checked by SkyPilot's own parsers."""
from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from test_predict import COLOURS, LABELS, exported_model, png

from automl_images.controller import cli
from automl_images.controller.launch.extras import skypilot_installed
from automl_images.controller.serve_client import ServeClient, ServeError
from automl_images.core.hyperparameters import Task
from automl_images.trainer import export
from automl_images.trainer.serve import ServeConfig, azure_record, build_app

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ThreadServer:
    """uvicorn serving `app` on a free port of 127.0.0.1, in a thread of this process."""

    def __init__(self, app):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", ws="none"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@functools.lru_cache(maxsize=None)
def _model(folder: str, task: Task):
    return export.load_model(exported_model(Path(folder), task))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    return lambda task=Task.CLASSIFICATION: _model(str(base / task.value), task)


@pytest.fixture(scope="module")
def url(models):
    with ThreadServer(build_app(models(), ServeConfig(max_body_bytes=200_000, max_pixels=300 * 300,
                                                      max_images_per_request=4))) as base:
        yield base


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def azure(*items) -> dict:
    return {"input_data": {"columns": ["image"], "data": list(items)}}


def test_health(url):
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["task"] == "image-classification" and health["labels"] == LABELS


def test_image_bytes_and_azure_requests_get_azures_scoring_schema(url, models):
    red, blue = png(COLOURS["red"]), png(COLOURS["blue"], (40, 30))
    expected = [[record["scores"][name] for name in LABELS] for record in models().predict([red, blue])]

    answer = httpx.post(f"{url}/predict", content=red, headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    [item] = answer.json()
    assert item["labels"] == LABELS and item["probs"] == pytest.approx(expected[0], abs=1e-6)

    answer = httpx.post(f"{url}/predict", json=azure(b64(red), b64(blue), b64(red)))
    assert answer.status_code == 200, answer.text
    assert [item["probs"] for item in answer.json()] == [pytest.approx(p, abs=1e-6) for p in
                                                         (expected[0], expected[1], expected[0])]


@pytest.mark.parametrize("body, headers, status, message", [
    (b"not an image", {"Content-Type": "image/png"}, 400, "the body: not an image (UnidentifiedImageError"),
    (png(COLOURS["red"])[:60], {"Content-Type": "image/png"}, 400, "the body: not a readable image"),
    (b"hello", {"Content-Type": "text/plain"}, 415, "Content-Type 'text/plain' is not accepted"),
    (b"x" * 300_000, {"Content-Type": "image/png"}, 413, "the body is 300000 bytes, more than the 200000 allowed"),
    (png(COLOURS["red"], (400, 300)), {"Content-Type": "image/png"}, 413,
     "the body: 400x300 = 120000 pixels, more than the 90000 allowed"),
    (b"{nope", {"Content-Type": "application/json"}, 400, "the body is not valid JSON"),
    (json.dumps({"data": []}).encode(), {"Content-Type": "application/json"}, 400, "field 'input_data': missing"),
    (json.dumps({"input_data": {"columns": ["img"], "data": ["x"]}}).encode(), {"Content-Type": "application/json"},
     400, "field 'input_data.columns': must be [\"image\"]"),
    (json.dumps(azure()).encode(), {"Content-Type": "application/json"}, 400, "must be a non-empty list"),
    (json.dumps(azure(*["x"] * 5)).encode(), {"Content-Type": "application/json"}, 413,
     "5 images, more than the 4 allowed"),
    (json.dumps(azure(b64(png((1, 2, 3))), 7)).encode(), {"Content-Type": "application/json"}, 400,
     "field 'input_data.data[1]': must be a base64 image or an http(s) URL string, got int"),
    (json.dumps(azure("%%%")).encode(), {"Content-Type": "application/json"}, 400,
     "field 'input_data.data[0]': neither base64 nor an http(s) URL"),
    (json.dumps(azure(b64(b"plain text"))).encode(), {"Content-Type": "application/json"}, 400,
     "field 'input_data.data[0]': not an image"),
    (json.dumps(azure("file:///etc/passwd")).encode(), {"Content-Type": "application/json"}, 400,
     "file:// URLs are not fetched; only http and https"),
    (json.dumps(azure("s3://bucket/a.png")).encode(), {"Content-Type": "application/json"}, 400,
     "s3:// URLs are not fetched"),
    (json.dumps(azure("http://127.0.0.1:9/a.png")).encode(), {"Content-Type": "application/json"}, 400,
     "http://127.0.0.1:9/a.png is on a private, loopback or link-local address: refused"),
    (json.dumps(azure("http://169.254.169.254/latest/meta-data/")).encode(), {"Content-Type": "application/json"},
     400, "refused (the server fetches from such addresses only with --allow-private-urls)"),
    (json.dumps(azure("http://[::1]/a.png")).encode(), {"Content-Type": "application/json"}, 400, "refused"),
])
def test_bad_requests_get_a_4xx_that_says_why_and_the_server_stays_up(url, body, headers, status, message):
    answer = httpx.post(f"{url}/predict", content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["detail"]
    assert httpx.get(f"{url}/health").status_code == 200


def test_a_body_over_the_limit_without_a_length_is_refused_while_read(url):
    def chunks():
        for _ in range(30):
            yield b"x" * 10_000

    answer = httpx.post(f"{url}/predict", content=chunks(), headers={"Content-Type": "image/png"})
    assert answer.status_code == 413 and "more than the 200000 bytes allowed" in answer.json()["detail"]


@pytest.fixture
def image_site(tmp_path):
    """A web server on 127.0.0.1 serving tmp_path/site, and redirecting /moved to /red.png."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "red.png").write_bytes(png(COLOURS["red"]))

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(site), **kwargs)

        def do_GET(self):
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "/red.png")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=5)


def test_image_urls_are_fetched_where_allowed(models, image_site):
    with ThreadServer(build_app(models(), ServeConfig(allow_private_urls=True))) as base:
        answer = httpx.post(f"{base}/predict", json=azure(f"{image_site}/red.png", b64(png(COLOURS["red"]))))
        assert answer.status_code == 200, answer.text
        first, second = answer.json()
        assert first["probs"] == pytest.approx(second["probs"], abs=1e-6)
        for path, message in (("/missing.png", "answered HTTP 404"), ("/moved", "answered HTTP 302")):
            answer = httpx.post(f"{base}/predict", json=azure(image_site + path))
            assert answer.status_code == 400 and message in answer.json()["detail"]


def test_concurrent_requests_are_batched(models):
    config = ServeConfig(max_batch_size=8, max_wait_s=0.2)
    with ThreadServer(build_app(models(), config)) as base:
        images = [png((i * 15, 100, 200 - i * 10)) for i in range(16)]
        expected = models().predict(images)
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda image: httpx.post(f"{base}/predict", content=image,
                                                             headers={"Content-Type": "image/jpeg"}), images))
        assert [a.status_code for a in answers] == [200] * 16
        for answer, record in zip(answers, expected):  # each request got its own image's answer
            assert answer.json()[0]["probs"] == pytest.approx([record["scores"][n] for n in LABELS], abs=1e-6)
        health = httpx.get(f"{base}/health").json()
        assert health["images"] == 16 and health["batches"] <= 8   # 2 to 4 when all arrive within 0.2 s


def test_a_failing_model_answers_500_and_the_server_goes_on(models):
    class Flaky:
        info, labels = models().info, models().labels
        calls = 0

        def predict(self, images, batch_size):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("CUDA out of memory")
            return models().predict(images, batch_size)

    with ThreadServer(build_app(Flaky(), ServeConfig())) as base:
        answer = httpx.post(f"{base}/predict", content=png(COLOURS["red"]), headers={"Content-Type": "image/png"})
        assert answer.status_code == 500 and "the model failed: RuntimeError: CUDA out of memory" in answer.text
        answer = httpx.post(f"{base}/predict", content=png(COLOURS["red"]), headers={"Content-Type": "image/png"})
        assert answer.status_code == 200


def test_detection_answers_boxes_in_azures_schema(models):
    model = models(Task.OBJECT_DETECTION)
    image = png(COLOURS["red"])
    [record] = model.predict([image])
    with ThreadServer(build_app(model, ServeConfig())) as base:
        answer = httpx.post(f"{base}/predict", json=azure(b64(image)))
    assert answer.status_code == 200, answer.text
    [item] = answer.json()
    assert len(item["boxes"]) == len(record["label"]) > 0
    for box, obj in zip(item["boxes"], record["label"]):
        assert set(box) == {"box", "label", "score"}
        assert box["box"] == pytest.approx({k: obj[k] for k in ("topX", "topY", "bottomX", "bottomY")}, abs=1e-6)
        assert box["label"] == obj["label"] and box["score"] == pytest.approx(obj["score"], abs=1e-6)


def test_segmentation_boxes_add_their_polygons():
    record = {"label": [{"label": "red", "topX": 0.25, "topY": 0.25, "bottomX": 0.75, "bottomY": 0.75,
                         "score": 0.9, "polygon": [[0.25, 0.25, 0.75, 0.25, 0.75, 0.75]]}]}
    assert azure_record(record, Task.INSTANCE_SEGMENTATION, LABELS) == {"boxes": [{
        "box": {"topX": 0.25, "topY": 0.25, "bottomX": 0.75, "bottomY": 0.75}, "label": "red", "score": 0.9,
        "polygon": [[0.25, 0.25, 0.75, 0.25, 0.75, 0.75]]}]}


# -- the client ------------------------------------------------------------------------------------

def test_the_client_retries_until_a_replica_answers(models):
    """A replica not up yet (connection refused), then a load balancer's 503s: the client waits and
    sends again; a 4xx is the request's fault and is raised at once."""
    app = build_app(models(), ServeConfig())
    answers = iter([503, 503])

    async def unavailable_at_first(scope, receive, send):   # the load balancer in front of the server
        status = next(answers, None) if scope["type"] == "http" else None
        if status is None:
            return await app(scope, receive, send)
        await send({"type": "http.response.start", "status": status, "headers": [(b"retry-after", b"0.1")]})
        await send({"type": "http.response.body", "body": b"no ready replica"})

    waits = []
    with ThreadServer(unavailable_at_first) as base:
        client = ServeClient(base, sleep=lambda s: (waits.append(s), time.sleep(s)))
        [item] = client.predict([png(COLOURS["red"])])
        assert item["labels"] == LABELS and len(waits) == 2 and all(w < 0.2 for w in waits)  # Retry-After: 0.1
        waits.clear()
        with pytest.raises(ServeError) as refused:
            client.predict([b"not an image"])
        assert refused.value.status == 400 and "not an image" in str(refused.value) and waits == []

    # Nobody listens any more: every attempt fails, then the last error is raised.
    client = ServeClient(base, attempts=3, first_delay_s=0.01, sleep=waits.append)
    with pytest.raises(ServeError) as down:
        client.health()
    assert down.value.status == 0 and len(waits) == 2 and waits[1] > waits[0]


# -- sky/serve.yaml --------------------------------------------------------------------------------

PROBE = """
import json, sys, yaml
import sky
from sky.serve import serve_utils
config = yaml.safe_load(open(sys.argv[1]))
config["envs"]["MODEL_URL"] = "s3://my-bucket/automl/jobs/j/best"
spec = sky.serve.SkyServiceSpec.from_yaml_config(config["service"])
task = sky.Task.from_yaml_config(config)
serve_utils.validate_service_task(task, pool=False)
print(json.dumps({"readiness_path": spec.readiness_path, "min": spec.min_replicas, "max": spec.max_replicas,
                  "qps": spec.target_qps_per_replica, "base": spec.base_ondemand_fallback_replicas,
                  "dynamic": spec.dynamic_ondemand_fallback, "fallback": spec.use_ondemand_fallback,
                  "spot": [r.use_spot for r in task.resources], "ports": [r.ports for r in task.resources]}))
"""


@pytest.mark.slow   # importing SkyPilot takes about 10 s
def test_serve_yaml_is_a_valid_skyserve_service(tmp_path):
    if not skypilot_installed():  # not importorskip: importing SkyPilot here would set it up in this HOME
        pytest.skip("SkyPilot is not installed: pip install 'automl-images[skypilot]'")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "SKYPILOT_"))}
    env.update(HOME=str(tmp_path), SKYPILOT_DISABLE_USAGE_COLLECTION="1", SKYPILOT_DISABLE_LOCAL_API_SERVER="1")
    result = subprocess.run([sys.executable, "-c", PROBE, str(REPO / "sky" / "serve.yaml")], env=env,
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    spec = json.loads(result.stdout.strip().splitlines()[-1])
    assert spec["readiness_path"] == "/health" and spec["fallback"] and spec["dynamic"] is True
    assert spec["base"] == 1 and spec["qps"] > 0 and spec["max"] > spec["min"] >= 1
    assert set(spec["spot"]) == {True} and {tuple(p) for p in spec["ports"]} == {("8080",)}
    # The port served is the port opened.
    run = yaml.safe_load((REPO / "sky" / "serve.yaml").read_text())["run"]
    assert '--port 8080' in run and "--host 0.0.0.0" in run


# -- the command -----------------------------------------------------------------------------------

def test_the_serve_command_refuses_a_folder_without_a_model(tmp_path, capsys):
    """(The command serving for real is what bench/serve_throughput.py measures.)"""
    assert cli.main(["serve", str(tmp_path), "--port", "8080"]) == 2
    assert f"automl-images serve: no exported model at {tmp_path}" in capsys.readouterr().err
