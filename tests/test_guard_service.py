"""The guard's HTTP service: a real `lmsanitator serve` process on loopback, a real HTTP client."""

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tests.test_guard import tiny_guard_files  # noqa: F401  (the fixture)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_guard_files):  # noqa: F811
    d = tiny_guard_files
    port = _free_port()
    exe = Path(sys.executable).with_name("lmsanitator")
    proc = subprocess.Popen(
        [
            str(exe),
            "serve",
            "--adapter",
            str(d / "adapter"),
            "--pvs",
            str(d / "pvs-none.safetensors"),
            "--port",
            str(port),
            "--max-batch",
            "8",
            "--max-body-bytes",
            "4096",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read().decode(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        proc.kill()
        raise RuntimeError("server did not come up in 90 s")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_health_and_predict(server):
    h = httpx.get(f"{server}/health").json()
    assert h["status"] == "ok" and h["pvs"] == 1 and h["t_match"] == 0.8 and h["method"] == "p-tuning-v2"
    r = httpx.post(f"{server}/predict", json={"inputs": [{"text": "a good film"}, {"text": "word " * 300}]})
    assert r.status_code == 200
    res = r.json()["results"]
    assert len(res) == 2 and all(
        {"label", "probs", "flagged", "match_rate", "purged_text", "removed"} <= set(x) for x in res
    )
    assert not res[0]["truncated"] and res[1]["truncated"]


def test_concurrent_requests_get_their_own_answers(server):
    texts = [f"film number {i} was {'good' if i % 2 else 'bad'}" for i in range(24)]
    single = {
        t: httpx.post(f"{server}/predict", json={"inputs": [{"text": t}]}).json()["results"][0]["probs"]
        for t in texts[:6]
    }

    def ask(i):
        batch = [{"text": t} for t in texts[i : i + 3]]
        return i, httpx.post(f"{server}/predict", json={"inputs": batch}, timeout=60).json()["results"]

    with ThreadPoolExecutor(8) as ex:
        answers = list(ex.map(ask, range(0, 24, 3)))
    assert len(answers) == 8 and all(len(r) == 3 for _, r in answers)
    got = {texts[i + k]: rec["probs"] for i, recs in answers for k, rec in enumerate(recs)}
    for t, p in single.items():  # same answer alone or in a concurrent batch
        assert got[t] == pytest.approx(p, abs=1e-4)


@pytest.mark.parametrize(
    "body,status,msg",
    [
        (b'{"inputs": [{"text": "a"}', 400, "not valid JSON"),
        (b'{"inputs": [{"text": "caf\xe9"}]}', 400, "not UTF-8"),
        (json.dumps({"inputs": []}).encode(), 400, "at least one input"),
        (json.dumps({"texts": ["a"]}).encode(), 400, "inputs"),
        (json.dumps({"inputs": [{"text": ""}]}).encode(), 400, "empty"),
        (json.dumps({"inputs": [{"text": "a", "text_pair": "b"}]}).encode(), 400, "one text"),
        (json.dumps({"inputs": [{"text": "a"}] * 9}).encode(), 413, "batch limit"),
        (json.dumps({"inputs": [{"text": "a" * 5000}]}).encode(), 413, "exceeds"),
    ],
)
def test_bad_requests_get_json_errors_and_the_service_keeps_serving(server, body, status, msg):
    r = httpx.post(f"{server}/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and msg in r.json()["error"]
    assert httpx.post(f"{server}/predict", json={"inputs": [{"text": "still fine"}]}).status_code == 200
