"""``lastpool serve``: a real uvicorn server on a loopback port, talked to over HTTP with httpx.

Answers must equal ``Classifier.predict``/``predict_proba`` for the same texts, every bad request must
get its status and a JSON error body, concurrent requests must share model calls, and SIGTERM must let
the requests in flight finish before the process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from lastpool import Classifier
from lastpool.cli import main
from lastpool.errors import ConfigError
from lastpool.serving import MicroBatcher, create_app
from lastpool.serving.app import bind_socket, url_of
from lastpool.serving.batcher import BatcherClosedError, ModelCallError
from tests.conftest import TINY_KW, demo_sample

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BATCH = 8
MAX_BODY = 20_000
LONG_TEXT = " ".join(f"profit{i % 7} rose sharply in the quarter" for i in range(40))  # 240 words


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny from-scratch model (max_length 32) saved once for the module."""
    texts, labels = demo_sample()
    folder = tmp_path_factory.mktemp("serve") / "model"
    Classifier(**TINY_KW, seed=0).fit(texts, labels).save(folder)
    return folder


@pytest.fixture(scope="module")
def clf(model_dir: Path) -> Classifier:
    return Classifier.load(model_dir)


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn server in a background thread; yield its base URL."""
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()  # not the main thread, so uvicorn installs no signal handlers
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


@pytest.fixture(scope="module")
def served(clf: Classifier) -> Iterator[tuple[str, Any]]:
    """The app with an API key and small limits, running; (base URL, app)."""
    app = create_app(clf, max_batch=MAX_BATCH, max_body_bytes=MAX_BODY, api_key=KEY)
    with running(app) as url:
        yield url, app


@pytest.fixture
def client(served: tuple[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0], headers=AUTH, timeout=30) as c:
        yield c


def assert_error(response: httpx.Response, status: int, type_: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "type", "message"}
    assert error["code"] == status and error["message"]
    if type_ is not None:
        assert error["type"] == type_, error
    return error


# --- answers ----------------------------------------------------------------------------------------------


def test_answers_equal_predict(client: httpx.Client, clf: Classifier) -> None:
    texts = demo_sample(per_class=2, offset=30)[0] + [LONG_TEXT]  # 7 texts, within MAX_BATCH
    response = client.post("/v1/classify", json={"texts": texts, "top_k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    assert [r["label"] for r in results] == clf.predict(texts)
    expected = clf.predict_proba(texts)
    got = np.array([[r["probabilities"][name] for name in clf.labels] for r in results])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert all(list(r["probabilities"]) == clf.labels for r in results)
    for r in results:
        top = r["top_k"]
        assert len(top) == 2
        assert top[0]["label"] == r["label"]
        assert top[0]["probability"] >= top[1]["probability"]
        assert top[1]["probability"] == max(p for name, p in r["probabilities"].items() if name != r["label"])
    # the 240-word text is longer than max_length (32 tokens) and was cut; the demo sentences are not
    assert clf.encoder is not None
    lengths = clf.encoder.lengths(texts)
    assert [r["truncated"] for r in results] == [n > 32 for n in lengths]
    assert results[-1]["truncated"] is True
    assert body["truncated_count"] == sum(r["truncated"] for r in results) >= 1
    assert body["model"]["backbone"] == "scratch" and len(body["model"]["id"]) == 12


def test_top_k_absent_unless_asked_and_full_k(client: httpx.Client, clf: Classifier) -> None:
    plain = client.post("/v1/classify", json={"texts": ["Profit rose."]}).json()["results"][0]
    assert "top_k" not in plain
    full = client.post("/v1/classify", json={"texts": ["Profit rose."], "top_k": 3}).json()["results"][0]
    probabilities = [entry["probability"] for entry in full["top_k"]]
    assert probabilities == sorted(probabilities, reverse=True) and len(probabilities) == 3
    assert {entry["label"] for entry in full["top_k"]} == set(clf.labels)


def test_health_model_and_docs(served: tuple[str, Any], clf: Classifier) -> None:
    with httpx.Client(base_url=served[0], timeout=30) as anonymous:  # no API key
        assert anonymous.get("/health").json() == {"status": "ok"}
        assert anonymous.get("/docs").status_code == 200
        schema = anonymous.get("/openapi.json").json()
        assert "/v1/classify" in schema["paths"]
        assert_error(anonymous.get("/v1/model"), 401, "unauthorized")
        info = anonymous.get("/v1/model", headers=AUTH).json()
    assert info["labels"] == clf.labels
    assert info["backbone"]["type"] == "scratch"
    assert info["max_length"] == 32 and info["pooling"] == "last" and info["mode"] == "full"
    assert info["prompt"] == "{text}" and info["temperature"] > 0 and info["lastpool_version"]
    assert info["limits"]["max_batch"] == MAX_BATCH


# --- the engines' /classify (vLLM, SGLang) -------------------------------------------------------------


def test_engine_classify_answers_in_the_engines_shape(client: httpx.Client, clf: Classifier) -> None:
    texts = demo_sample(per_class=2, offset=30)[0]
    body = client.post("/classify", json={"model": "any-name", "input": texts, "user": "u1", "priority": 0}).json()
    assert set(body) == {"id", "object", "created", "model", "data", "usage"}
    assert body["object"] == "list" and body["id"].startswith("classify-") and isinstance(body["created"], int)
    expected = clf.predict_proba(texts)
    assert [row["index"] for row in body["data"]] == list(range(len(texts)))
    assert [row["label"] for row in body["data"]] == clf.predict(texts)
    np.testing.assert_allclose([row["probs"] for row in body["data"]], expected, atol=1e-6)
    assert {row["num_classes"] for row in body["data"]} == {len(clf.labels)}
    tokens = sum(min(len(ids), 32) for ids in clf.encoder.encode(texts))
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                             "prompt_tokens_details": None}
    one = client.post("/classify", json={"input": texts[0]}).json()  # one text, no model name
    assert len(one["data"]) == 1 and one["data"][0]["probs"] == body["data"][0]["probs"]
    native = client.post("/v1/classify", json={"texts": texts}).json()["results"]
    assert [r["label"] for r in native] == [r["label"] for r in body["data"]]


def test_engine_classify_errors_and_key(served: tuple[str, Any]) -> None:
    with httpx.Client(base_url=served[0], timeout=30) as anonymous:
        assert_error(anonymous.post("/classify", json={"input": "Profit rose."}), 401, "unauthorized")
    with httpx.Client(base_url=served[0], headers=AUTH, timeout=30) as client:
        for bad in ({}, {"input": []}, {"input": 3}, {"input": [1, 2]}, {"input": ["ok", "  "]}, {"input": " "}):
            assert_error(client.post("/classify", json=bad), 422, "validation_error")
        assert_error(client.post("/classify", json={"input": ["a b"] * (MAX_BATCH + 1)}), 422, "too_many_texts")


def test_the_schema_says_what_the_server_takes(served: tuple[str, Any], clf: Classifier) -> None:
    """Bounds a client can read: top_k within the labels, texts that are not blank, the batch limit."""
    schema = httpx.get(f"{served[0]}/openapi.json", timeout=30).json()
    assert {"/v1/classify", "/classify"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["ClassifyRequest"]["properties"]
    top_k = next(option for option in request["top_k"]["anyOf"] if option.get("type") == "integer")
    assert (top_k["minimum"], top_k["maximum"]) == (1, len(clf.labels))
    assert request["texts"]["maxItems"] == MAX_BATCH and request["texts"]["items"]["pattern"]
    assert "text_pairs" not in request  # a model of single texts
    with httpx.Client(base_url=served[0], headers=AUTH, timeout=30) as client:
        for text in ("\x1c", "\u3000", "\t \n"):  # blank to str.strip(): refused by the schema's pattern too
            assert_error(client.post("/v1/classify", json={"texts": [text]}), 422, "validation_error")
        assert_error(client.post("/v1/classify", json={"texts": ["a"], "top_k": 0}), 422, "validation_error")


# --- errors -----------------------------------------------------------------------------------------------


def test_malformed_json_and_wrong_types(client: httpx.Client) -> None:
    headers = {"content-type": "application/json"}
    assert_error(client.post("/v1/classify", content=b'{"texts": [', headers=headers), 422, "invalid_json")
    for body in ({"texts": "abc"}, {"texts": [1, 2]}, {"texts": ["a", None]}, {}, [], {"texts": ["a"], "x": 1},
                 {"texts": ["a"], "top_k": "2"}, {"texts": ["a"], "top_k": True}, {"texts": ["a"], "top_k": 1.5}):
        assert_error(client.post("/v1/classify", json=body), 422, "validation_error")
    assert_error(client.post("/v1/classify", json={"texts": []}), 422, "validation_error")
    assert_error(client.post("/v1/classify", json={"texts": ["ok", "   "]}), 422, "validation_error")
    error = assert_error(client.post("/v1/classify", content=b"texts=a",
                                     headers={"content-type": "application/x-www-form-urlencoded"}), 422)
    assert "JSON" in error["message"]
    # no Content-Type at all: taken as JSON
    assert client.post("/v1/classify", content=json.dumps({"texts": ["Profit rose."]}).encode()).status_code == 200


def test_top_k_out_of_range(client: httpx.Client) -> None:
    for k in (0, -1, 4, 100):
        error = assert_error(client.post("/v1/classify", json={"texts": ["Profit rose."], "top_k": k}), 422)
        assert "top_k" in error["message"]


def test_too_many_texts(client: httpx.Client) -> None:
    assert_error(client.post("/v1/classify", json={"texts": ["a b"] * (MAX_BATCH + 1)}), 422, "too_many_texts")
    assert client.post("/v1/classify", json={"texts": ["a b"] * MAX_BATCH}).status_code == 200


def test_oversized_body_with_and_without_content_length(client: httpx.Client) -> None:
    big = json.dumps({"texts": ["word " * (MAX_BODY // 5)]}).encode()
    assert len(big) > MAX_BODY
    assert_error(client.post("/v1/classify", json=json.loads(big)), 413, "payload_too_large")

    def chunks(data: bytes, size: int = 4096) -> Iterator[bytes]:
        yield from (data[i : i + size] for i in range(0, len(data), size))

    request = client.build_request("POST", "/v1/classify", content=chunks(big),
                                   headers={"content-type": "application/json"})
    assert "content-length" not in request.headers and request.headers["transfer-encoding"] == "chunked"
    assert_error(client.send(request), 413, "payload_too_large")
    # a chunked body within the limit is read whole and answered
    small = json.dumps({"texts": ["Operating profit rose to EUR 13.1 mn."] * 4}).encode()
    request = client.build_request("POST", "/v1/classify", content=chunks(small, 16),
                                   headers={"content-type": "application/json"})
    response = client.send(request)
    assert response.status_code == 200 and len(response.json()["results"]) == 4


def test_api_key(served: tuple[str, Any]) -> None:
    body = {"texts": ["Profit rose."]}
    with httpx.Client(base_url=served[0], timeout=30) as anonymous:
        response = anonymous.post("/v1/classify", json=body)
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
        for header in (f"Bearer {KEY}x", "Bearer", f"Basic {KEY}", KEY, f"Bearer {KEY[:-1]}"):
            assert_error(anonymous.post("/v1/classify", json=body, headers={"Authorization": header}), 401)
        assert anonymous.post("/v1/classify", json=body, headers={"Authorization": f"bearer {KEY}"}).status_code == 200
        # the key is checked before the body: an unauthenticated oversized body is a 401, not a 413
        assert_error(anonymous.post("/v1/classify", content=b"x" * (MAX_BODY + 1)), 401)
        assert_error(anonymous.get("/nowhere"), 404, "not_found")


# --- concurrency ------------------------------------------------------------------------------------------


def test_load_16_clients_1000_requests(served: tuple[str, Any], clf: Classifier) -> None:
    url, app = served
    pool = demo_sample(per_class=20)[0]
    expected_labels = dict(zip(pool, clf.predict(pool), strict=True))
    expected_probs = dict(zip(pool, clf.predict_proba(pool), strict=True))
    rng = random.Random(0)
    requests = [rng.sample(pool, rng.randint(1, 3)) for _ in range(1000)]
    stats = app.state.batcher.stats
    calls_before, requests_before = stats.model_calls, stats.requests
    failures: list[str] = []

    async def worker(queue: list[list[str]], http: httpx.AsyncClient) -> None:
        while queue:
            texts = queue.pop()
            response = await http.post("/v1/classify", json={"texts": texts})
            if response.status_code != 200:
                failures.append(f"{response.status_code}: {response.text}")
                continue
            results = response.json()["results"]
            if [r["label"] for r in results] != [expected_labels[t] for t in texts]:
                failures.append(f"labels differ for {texts}")
            got = np.array([[r["probabilities"][n] for n in clf.labels] for r in results])
            if not np.allclose(got, [expected_probs[t] for t in texts], atol=1e-5, rtol=0):
                failures.append(f"probabilities differ for {texts}")

    async def load() -> None:
        queue = list(requests)
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60, limits=limits) as http:
            await asyncio.gather(*(worker(queue, http) for _ in range(16)))

    asyncio.run(load())
    assert failures == []
    served_requests = stats.requests - requests_before
    model_calls = stats.model_calls - calls_before
    assert served_requests == 1000
    assert model_calls < served_requests, (model_calls, served_requests)  # requests shared model calls
    assert stats.largest_batch_requests > 1


def test_micro_batching_off_runs_each_request_alone(clf: Classifier) -> None:
    app = create_app(clf, micro_batching=False)
    texts = demo_sample(per_class=4)[0]
    with running(app) as url:

        async def load() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                return await asyncio.gather(*(http.post("/v1/classify", json={"texts": [t]}) for t in texts))

        responses = asyncio.run(load())
    assert [r.json()["results"][0]["label"] for r in responses] == clf.predict(texts)
    stats = app.state.batcher.stats
    assert stats.requests == stats.model_calls == len(texts)


def test_a_request_is_tokenized_once(model_dir: Path) -> None:
    """The ids the batcher counts on arrival are the ids the model runs on: one tokenizer pass per
    request (short texts), and the answer is predict's."""
    counted = Classifier.load(model_dir)
    assert counted.encoder is not None
    passes: list[int] = []
    tokenize = counted.encoder._ids

    def counting(texts: list[str], truncate: bool = False) -> list[list[int]]:
        passes.append(len(texts))
        return tokenize(texts, truncate)

    counted.encoder._ids = counting  # type: ignore[method-assign]
    app = create_app(counted, batch_wait_ms=0)
    texts = ["Profit rose.", "Sales fell sharply.", "The board met."]
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        response = http.post("/v1/classify", json={"texts": texts})
    assert response.status_code == 200 and passes == [3]
    assert [r["label"] for r in response.json()["results"]] == Classifier.load(model_dir).predict(texts)


def test_model_failure_is_a_500_for_that_batch_only(clf: Classifier, model_dir: Path) -> None:
    """A model call that raises answers its requests with a JSON 500; the server keeps serving."""

    def flaky(texts: list[str], token_ids: list[list[int]] | None = None,
              text_pairs: list[str] | None = None) -> np.ndarray:
        if any("boom" in t for t in texts):
            raise RuntimeError("boom")
        return clf.logits(texts, token_ids=token_ids)

    broken = Classifier.load(model_dir)
    broken.logits = flaky  # type: ignore[method-assign]
    app = create_app(broken, batch_wait_ms=0)
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        error = assert_error(http.post("/v1/classify", json={"texts": ["a boom"]}), 500, "model_error")
        assert "boom" in error["message"]
        assert http.post("/v1/classify", json={"texts": ["Profit rose."]}).status_code == 200
    assert app.state.batcher.stats.failed_calls == 1


# --- MicroBatcher on its own --------------------------------------------------------------------------------


def fake_model(calls: list[list[str]]) -> Any:
    def predict(texts: list[str], ids: list[list[int]]) -> np.ndarray:
        assert ids == words(texts)[0]  # the ids encoded on arrival reach the model with their texts
        calls.append(list(texts))
        if any("boom" in t for t in texts):
            raise ValueError("boom")
        return np.array([[float(len(t)), 0.0] for t in texts])

    return predict


def words(texts: list[str], max_length: int = 5) -> tuple[list[list[int]], list[int]]:
    """An encoder of one token per word, cut at ``max_length``: (ids, lengths before the cut)."""
    counts = [len(t.split()) for t in texts]
    return [list(range(min(n, max_length))) for n in counts], counts


def test_batcher_budgets_and_failures() -> None:
    async def scenario() -> None:
        calls: list[list[str]] = []
        batcher = MicroBatcher(fake_model(calls), words, batch_wait_ms=300, max_batch_tokens=10,
                               max_batch_texts=100)
        await batcher.start()
        # 4 + 4 tokens fit the budget of 10; the third request starts a new batch
        first = await asyncio.gather(*(batcher.submit([t]) for t in ("a b c d", "e f g h", "i j k l")))
        assert calls == [["a b c d", "e f g h"], ["i j k l"]]
        assert [rows[0][0, 0] for rows in first] == [7.0, 7.0, 7.0]
        assert [rows[1] for rows in first] == [[4], [4], [4]]
        # a text over max_length counts max_length tokens; a request over budget is a batch of its own
        calls.clear()
        await asyncio.gather(batcher.submit(["w " * 50]), batcher.submit(["x"]))
        assert calls == [["w " * 50, "x"]]
        calls.clear()
        await batcher.submit(["one two"] * 12)
        assert calls == [["one two"] * 12]
        # a failing model call fails the requests of its batch only
        calls.clear()
        outcome = await asyncio.gather(batcher.submit(["fine"]), batcher.submit(["boom"]), return_exceptions=True)
        assert all(isinstance(o, ModelCallError) for o in outcome)
        assert (await batcher.submit(["fine again"]))[0].shape == (1, 2)
        assert batcher.stats.failed_calls == 1
        await batcher.stop()

    asyncio.run(scenario())


def test_batcher_max_texts_and_stop_drains() -> None:
    async def scenario() -> None:
        calls: list[list[str]] = []
        batcher = MicroBatcher(fake_model(calls), words, batch_wait_ms=60_000, max_batch_tokens=10_000,
                               max_batch_texts=3)
        await batcher.start()
        # a full batch (3 texts) runs at once, without waiting out the 60 s window
        started = time.monotonic()
        await asyncio.gather(*(batcher.submit([t]) for t in ("a", "b", "c")))
        assert time.monotonic() - started < 10 and calls == [["a", "b", "c"]]
        # stop() answers what is queued at once, then refuses new requests
        pending = asyncio.ensure_future(batcher.submit(["queued"]))
        await asyncio.sleep(0.05)
        assert not pending.done()
        await batcher.stop()
        assert (await pending)[0].shape == (1, 2)
        with pytest.raises(BatcherClosedError):
            await batcher.submit(["late"])

    asyncio.run(scenario())


# --- the command ------------------------------------------------------------------------------------------


def run_cli_fail(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(list(args))
    captured = capsys.readouterr()
    assert code == 2, (code, captured.err)
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_cli_rejects_bad_values(capsys: pytest.CaptureFixture[str], model_dir: Path, tmp_path: Path) -> None:
    model = str(model_dir)
    assert "--port" in run_cli_fail(capsys, "serve", model, "--port", "70000")
    assert "--port" in run_cli_fail(capsys, "serve", model, "--port", "-1")
    assert "--max-batch" in run_cli_fail(capsys, "serve", model, "--max-batch", "0")
    assert "--max-body-bytes" in run_cli_fail(capsys, "serve", model, "--max-body-bytes", "-5")
    assert "--max-batch-tokens" in run_cli_fail(capsys, "serve", model, "--max-batch-tokens", "0")
    assert "--batch-wait-ms" in run_cli_fail(capsys, "serve", model, "--batch-wait-ms", "-1")
    assert "--log-level" in run_cli_fail(capsys, "serve", model, "--log-level", "loud")
    assert "empty" in run_cli_fail(capsys, "serve", model, "--api-key", " ")
    run_cli_fail(capsys, "serve", str(tmp_path / "missing"))
    busy = bind_socket("127.0.0.1", 0)
    try:
        port = str(busy.getsockname()[1])
        assert "cannot listen" in run_cli_fail(capsys, "serve", model, "--port", port)
    finally:
        busy.close()


def test_server_settings_have_one_home(clf: Classifier) -> None:
    """ServeConfig holds every server default and bound: create_app, serve and the flags all take them
    from there, and the flags' help shows them."""
    from lastpool.config import ServeConfig, serve_config

    defaults = ServeConfig()
    batcher = create_app(clf).state.batcher
    assert (batcher.max_batch_tokens, batcher.max_batch_texts) == (defaults.max_batch_tokens, defaults.max_batch_texts)
    assert create_app(clf, ServeConfig(max_batch_tokens=7), max_batch_texts=3).state.batcher.max_batch_tokens == 7
    with pytest.raises(ConfigError, match="max_batch_texts"):
        create_app(clf, max_batch_texts=0)
    with pytest.raises(ConfigError, match="--max-batch-texts"):
        serve_config({"max_batch_texts": 0}, flags=True)
    assert serve_config({"log_level": "DEBUG"}).log_level == "debug"
    from typer.testing import CliRunner

    from lastpool.cli import app

    shown = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "400"}).output
    assert f"[{defaults.max_batch_tokens}]" in shown and f"[{defaults.host}]" in shown


def test_sigterm_finishes_requests_in_flight(model_dir: Path, clf: Classifier) -> None:
    """`python -m lastpool serve` under SIGTERM: in-flight requests get their 200, then exit 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "LASTPOOL_API_KEY": KEY}
    # a 1.5 s batching window keeps the requests in flight when SIGTERM arrives
    proc = subprocess.Popen([sys.executable, "-m", "lastpool", "serve", str(model_dir), "--port", "0",
                             "--batch-wait-ms", "1500", "--log-level", "warning"],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("serving ") and "API key required" in line, line
        url = line.split(" at ", 1)[1].split()[0]
        log: list[str] = []
        drain = threading.Thread(target=lambda: log.extend(proc.stderr or []), daemon=True)
        drain.start()
        assert_error(httpx.post(f"{url}/v1/classify", json={"texts": ["x"]}, timeout=30), 401)  # key from env
        texts = demo_sample(per_class=2)[0]
        responses: dict[int, httpx.Response | Exception] = {}
        answered_at: list[float] = []

        def send(i: int) -> None:
            try:
                responses[i] = httpx.post(f"{url}/v1/classify", json={"texts": [texts[i]]}, headers=AUTH, timeout=30)
            except Exception as exc:  # noqa: BLE001 - recorded and asserted on below
                responses[i] = exc
            answered_at.append(time.monotonic())

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(texts))]
        for thread in threads:
            thread.start()
        time.sleep(0.6)  # connected and queued in the batcher
        sent_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.4)
        with pytest.raises(httpx.TransportError):  # no new connections once shutting down
            httpx.get(f"{url}/health", timeout=5)
        for thread in threads:
            thread.join(timeout=30)
        code = proc.wait(timeout=15)
        drain.join(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, "".join(log)
    assert min(answered_at) > sent_at  # the requests really were in flight when SIGTERM came
    assert time.monotonic() - sent_at < 10
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in responses.values()), responses
    assert len(responses) == len(texts)
    labels = [r.json()["results"][0]["label"] for _, r in sorted(responses.items()) if isinstance(r, httpx.Response)]
    assert labels == clf.predict(texts)
