"""The hardened guard service, as a real uvicorn process on loopback: schemathesis against its
OpenAPI document, hostile bodies, slow clients, a busy model, deadlines, logs and SIGTERM."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from tests.test_guard import tiny_guard_files  # noqa: F401  (the fixture)

# a real server whose guard sleeps first on inputs "__sleep__ SECONDS ..." (a slow batch on demand)
SERVER = """
import sys, time
from lmsanitator.guard import Guard
from lmsanitator.guard.service import serve

adapter, pvs, port = sys.argv[1:4]
guard = Guard(adapter, pvs)
plain = guard.predict

def predict(texts, pairs=None, **kw):
    for t in texts:
        if isinstance(t, str) and t.startswith("__sleep__ "):
            time.sleep(float(t.split()[1]))
    return plain(texts, pairs, **kw)

guard.predict = predict
serve(guard, "127.0.0.1", int(port), max_batch=8, max_body_bytes=4096, read_timeout=1.0,
      queue_wait=0.5, max_waiting=2, deadline=1.5, shutdown_timeout=1.0)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(adapter, pvs, log_path):
    port = _free_port()
    log = open(log_path, "wb")  # noqa: SIM115  closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(adapter), str(pvs), str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {Path(log_path).read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not come up in 120 s")


@pytest.fixture(scope="module")
def service(tiny_guard_files, tmp_path_factory):  # noqa: F811
    log = tmp_path_factory.mktemp("service") / "server.log"
    proc, url = start_server(tiny_guard_files / "adapter", tiny_guard_files / "pvs-none.safetensors", log)
    yield proc, url, log
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=20)


def post(url, body: bytes, ctype="application/json", timeout=30):
    return httpx.post(f"{url}/predict", content=body, headers={"content-type": ctype}, timeout=timeout)


def test_schemathesis_finds_nothing(service, tmp_path):
    """Every phase (examples, coverage, fuzzing; valid and invalid data), every check, ~1 minute.
    413 is a rejection of invalid data (a batch over the schema's maxItems) and the one answer a
    schema-valid body may get (over max_body_bytes: a byte limit JSON Schema cannot state)."""
    _, url, _ = service
    cfg = tmp_path / "schemathesis.toml"
    cfg.write_text(
        '[checks.negative_data_rejection]\nexpected-statuses = ["400", "405", "406", "413", "415", "422"]\n'
        '[checks.positive_data_acceptance]\nexpected-statuses = ["2xx", "413"]\n'
    )
    st = Path(sys.executable).with_name("st")
    cmd = [str(st), "--config-file", str(cfg), "run", f"{url}/openapi.json", "--max-examples", "20"]
    cmd += ["--max-time", "50", "--seed", "1", "--request-timeout", "20", "--workers", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)  # its cache there
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def test_openapi_documents_the_request_and_every_answer(service):
    _, url, _ = service
    doc = httpx.get(f"{url}/openapi.json").json()
    op = doc["paths"]["/predict"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictRequest")
    assert {"200", "400", "408", "413", "415", "503", "504"} <= set(op["responses"])
    req = doc["components"]["schemas"]["PredictRequest"]
    assert req["properties"]["inputs"]["maxItems"] == 8 and "InputRecord" in doc["components"]["schemas"]


@pytest.mark.parametrize(
    "body,status,msg",
    [
        (b'{"inputs": [{"text": "\\ud800"}]}', 400, "surrogate"),  # before: 500
        (b"[" * 2000 + b"]" * 2000, 400, "nesting deeper"),  # before: RecursionError, 500 (at 100k)
        (b'{"inputs": [{"text": "a", "n": ' + b"9" * 3000 + b"}]}", 400, "number longer"),  # before: 500
        (b'{"inputs": [{"text": "a\xe2\x80\xa8b"}]}', 200, None),  # a raw U+2028 is valid JSON
    ],
)
def test_hostile_bodies_get_one_line_errors(service, body, status, msg):
    _, url, _ = service
    r = post(url, body)
    assert r.status_code == status, r.text
    if msg:
        assert msg in r.json()["error"] and "\n" not in r.json()["error"]
    assert post(url, b'{"inputs": [{"text": "still fine"}]}').status_code == 200


def test_content_type_must_be_json(service):
    _, url, _ = service
    r = post(url, b'{"inputs": [{"text": "a"}]}', ctype="text/plain")
    assert r.status_code == 415 and "Content-Type" in r.json()["error"]
    assert (
        post(url, b'{"inputs": [{"text": "a"}]}', ctype="application/json; charset=utf-8").status_code == 200
    )


def test_a_slow_client_is_cut_off(service):
    _, url, _ = service
    host, port = url.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        t0 = time.time()
        answer = s.recv(4096).decode()
        assert time.time() - t0 < 5 and " 408 " in answer.splitlines()[0]
    assert post(url, b'{"inputs": [{"text": "next"}]}').status_code == 200


def test_a_busy_model_answers_503_and_health_says_so(service):
    _, url, _ = service
    slow = {}

    def run():
        slow["r"] = post(url, json.dumps({"inputs": [{"text": "__sleep__ 1.2 x"}]}).encode())

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.4)
    h = httpx.get(f"{url}/health").json()
    busy = post(url, b'{"inputs": [{"text": "waits"}]}')
    t.join()
    assert h["busy"] and h["status"] == "busy" and h["busy_for_s"] > 0
    assert busy.status_code == 503 and "busy" in busy.json()["error"] and busy.headers["retry-after"] == "1"
    assert slow["r"].status_code == 200
    assert httpx.get(f"{url}/health").json()["busy"] is False


def test_a_batch_past_its_deadline_answers_504(service):
    _, url, _ = service
    r = post(url, b'{"inputs": [{"text": "__sleep__ 1.8 x"}]}')
    assert r.status_code == 504 and "deadline" in r.json()["error"]
    t0 = time.time()
    assert post(url, b'{"inputs": [{"text": "then fast"}]}').status_code == 200 and time.time() - t0 < 2


def test_sigterm_stops_the_server_within_seconds_even_mid_batch(service):
    proc, url, log = service
    threading.Thread(
        target=lambda: _swallow(lambda: post(url, b'{"inputs": [{"text": "__sleep__ 20 x"}]}')), daemon=True
    ).start()
    time.sleep(0.5)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=15)
    assert time.time() - t0 < 5
    text = log.read_text(errors="replace")
    # one line per rejected request, and never a traceback
    assert "Traceback" not in text
    for status in ("400", "408", "415", "503", "504"):
        assert f"-> {status}: " in text, status


def _swallow(fn):
    try:
        fn()
    except httpx.HTTPError:
        pass
