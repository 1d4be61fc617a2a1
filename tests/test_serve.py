"""`txkit serve` through real HTTP: the real server process (`python -m txkit serve MODEL --port 0`, a free local
port chosen by the kernel) on the suite's trained model, real clients, real signals, a real browser.

What is checked: translations equal `txkit translate`'s for the same lines and options (beam, greedy, n-best,
sampling with a seed), also when concurrent clients' sentences share batches; every limit and malformed input
answered with its status and a JSON error, the worker still serving afterwards; the API key; a client that
disconnects has its sentences dropped; SIGTERM with requests in flight answers them all and exits 0; the page
in headless Chromium.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import REPO, head, run_cli

LINES = 20  # test2016 sentences the equality checks use
STARTUP_S = 120


class Server:
    """A `txkit serve` process on a free port; `url` once it has printed where it listens."""

    def __init__(self, model: Path, *args: str, env: dict | None = None):
        environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "txkit", "serve", str(model), "--port", "0", *args],
                                     env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.stderr: list[str] = []
        line = self.proc.stderr.readline()
        self.stderr.append(line)
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        if not found:
            self.proc.kill()
            raise AssertionError("".join(self.stderr) + self.proc.stderr.read())
        self.url = found.group(1)
        self._reader = threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True)
        self._reader.start()
        self.health_seen: list[tuple[int, dict]] = []  # (status, body) of /health while waiting for the model
        self.translate_while_loading: httpx.Response | None = None

    def wait_ready(self, headers: dict | None = None) -> "Server":
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "".join(self.stderr)
            try:
                response = httpx.get(self.url + "/health", timeout=5)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            self.health_seen.append((response.status_code, response.json()))
            if response.status_code == 200:
                return self
            if self.translate_while_loading is None:
                self.translate_while_loading = httpx.post(self.url + "/v1/translate", json={"text": "A dog."},
                                                          headers=headers, timeout=30)  # fmt: skip
            time.sleep(0.05)
        raise AssertionError("the server did not become ready: " + "".join(self.stderr))

    def post(self, body, **kwargs) -> httpx.Response:
        kwargs.setdefault("timeout", 120)
        return httpx.post(self.url + "/v1/translate", json=body, **kwargs)

    def metric(self, name: str, headers: dict | None = None) -> float:
        """The value of one sample line of /metrics (0 when absent)."""
        text = httpx.get(self.url + "/metrics", headers=headers, timeout=30).text
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(found.group(1)) if found else 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def sources(shared_data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve-text")
    return head(shared_data / "multi30k" / "test2016.en", folder / "test.en", LINES)


@pytest.fixture(scope="module")
def server(trained_model):
    """The module's server: small limits, so that the limit checks stay small."""
    srv = Server(trained_model, "--max-texts", "32", "--max-chars", "400", "--max-body-bytes", "8000",
                 "--max-batch", "8")  # fmt: skip
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


_cli_cache: dict = {}


def cli_translate(model: Path, source: Path, tmp_path: Path, *options: str) -> list:
    """`txkit translate MODEL -i SOURCE -o OUT --engine txkit OPTIONS`: its lines (n-best: (line, text, score)
    triples). The server decodes with txkit's engine; `--engine auto` may pick CTranslate2, whose search stops by
    another rule (tests/test_engines.py)."""
    key = (str(model), str(source), options)
    if key not in _cli_cache:
        out = tmp_path / f"out-{len(_cli_cache)}.txt"
        code, _, err = run_cli(["translate", str(model), "-i", str(source), "-o", str(out), "--device", "cpu",
                                "--engine", "txkit", *options])  # fmt: skip
        assert code == 0, err
        lines = out.read_text(encoding="utf-8").split("\n")[:-1]
        if "--nbest" in options:
            lines = [tuple(part.strip() for part in line.split(" ||| ")) for line in lines]
        _cli_cache[key] = lines
    return _cli_cache[key]


# ----------------------------------------------------------------------------- health, translations


def test_health_says_loading_until_the_model_is_loaded(server):
    assert server.health_seen[0] == (503, {"status": "loading"})  # the port answers seconds before the model
    assert server.translate_while_loading.status_code == 503
    assert "still loading" in server.translate_while_loading.json()["error"]
    assert server.health_seen[-1][0] == 200 and server.health_seen[-1][1]["status"] == "ready"


OPTION_SETS = {
    "paper-beam": ({}, []),
    "greedy": ({"greedy": True}, ["--greedy"]),
    "hf-penalty-beam-2": ({"beam_size": 2, "lp_form": "hf", "length_penalty": 1.0},
                          ["--beam-size", "2", "--lp-form", "hf", "--length-penalty", "1.0"]),
    "short-outputs": ({"max_len_a": 0.5, "max_len_b": 3}, ["--max-len-a", "0.5", "--max-len-b", "3"]),
}  # fmt: skip


@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_translations_equal_txkit_translate(name, server, trained_model, sources, tmp_path):
    body, flags = OPTION_SETS[name]
    lines = sources.read_text(encoding="utf-8").splitlines()
    expected = cli_translate(trained_model, sources, tmp_path, *flags)
    response = server.post({"texts": lines, **body})
    assert response.status_code == 200, response.text
    assert response.json()["translations"] == expected
    assert len(set(expected)) > LINES // 2  # the model translates: outputs differ between sentences
    single = server.post({"text": lines[3], **body}).json()
    assert single["translation"] == expected[3]


@pytest.mark.parametrize("flags,body", [
    (["--nbest", "3"], {"nbest": 3}),
    (["--sample", "--seed", "7", "--nbest", "2", "--top-k", "20"], {"sampling": True, "seed": 7, "nbest": 2, "top_k": 20}),
], ids=["beam-nbest", "sampling-seed"])  # fmt: skip
def test_nbest_and_sampling_equal_txkit_translate(flags, body, server, trained_model, sources, tmp_path):
    lines = sources.read_text(encoding="utf-8").splitlines()
    expected = cli_translate(trained_model, sources, tmp_path, *flags)
    answer = server.post({"texts": lines, **body}).json()
    got = [(str(i), hyp["text"]) for i, hyps in enumerate(answer["nbest"]) for hyp in hyps]
    assert got == [(line, text) for line, text, _ in expected]
    scores = [hyp["score"] for hyps in answer["nbest"] for hyp in hyps]  # equal up to float rounding: the
    assert scores == pytest.approx([float(score) for _, _, score in expected], abs=1e-4)  # batches differ
    assert answer["translations"] == [hyps[0]["text"] for hyps in answer["nbest"]]


def test_empty_lines_and_order(server, trained_model, sources, tmp_path):
    lines = sources.read_text(encoding="utf-8").splitlines()[:4]
    expected = cli_translate(trained_model, sources, tmp_path)[:4]
    answer = server.post({"texts": ["", lines[2], "   ", lines[0], lines[2]]}).json()
    assert answer["translations"] == ["", expected[2], "", expected[0], expected[2]]
    assert answer["scores"][0] == 0.0 and answer["scores"][1] < 0


# ----------------------------------------------------------------------------- concurrent clients


def test_concurrent_clients_share_batches_and_get_their_own_translations(server, trained_model, sources, tmp_path):
    """24 clients at once, single sentences, three different option sets: each answer equals `txkit translate`
    of its sentence, and the decoder took sentences of several requests into one batch."""
    lines = sources.read_text(encoding="utf-8").splitlines()
    expected = {
        "beam": cli_translate(trained_model, sources, tmp_path),
        "greedy": cli_translate(trained_model, sources, tmp_path, "--greedy"),
    }
    bodies = {"beam": {}, "greedy": {"greedy": True}}
    before_count = server.metric("txkit_batch_sentences_count")
    before_single = server.metric('txkit_batch_sentences_bucket{le="1.0"}')
    jobs = [(kind, i) for i in range(12) for kind in ("beam", "greedy")]
    results: dict = {}
    barrier = threading.Barrier(len(jobs))

    def client(kind, i):
        with httpx.Client(timeout=120) as http:
            barrier.wait()
            response = http.post(server.url + "/v1/translate", json={"text": lines[i], **bodies[kind]})
            results[kind, i] = (response.status_code, response.json())

    threads = [threading.Thread(target=client, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (kind, i), (status, answer) in results.items():
        assert status == 200, answer
        assert answer["translation"] == expected[kind][i], (kind, i)
    batches = server.metric("txkit_batch_sentences_count") - before_count
    singles = server.metric('txkit_batch_sentences_bucket{le="1.0"}') - before_single
    assert 0 < batches < len(jobs)  # fewer batches than sentences: requests were searched together
    assert singles < batches


def test_no_batching_searches_one_sentence_at_a_time(trained_model, sources, tmp_path):
    """`--no-batching` (the benchmark's reference): concurrent requests are still answered correctly, but the
    search never holds more than one sentence."""
    lines = sources.read_text(encoding="utf-8").splitlines()
    expected = cli_translate(trained_model, sources, tmp_path, "--greedy")
    srv = Server(trained_model, "--no-batching").wait_ready()
    try:
        results: dict = {}
        threads = [threading.Thread(target=lambda i=i: results.update({i: srv.post({"text": lines[i], "greedy": True})}))
                   for i in range(8)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert {i: r.json()["translation"] for i, r in results.items()} == dict(enumerate(expected[:8]))
        assert srv.metric("txkit_batch_sentences_count") == 8
        assert srv.metric('txkit_batch_sentences_bucket{le="1.0"}') == 8
    finally:
        srv.stop()


def test_sampling_does_not_depend_on_the_batch(server):
    """The same sampled request alone and among other clients' sentences gives the same samples."""
    body = {"texts": ["A girl in a red coat is walking her dog.", "Two men are playing chess."],
            "sampling": True, "seed": 11, "nbest": 3, "temperature": 1.5}  # fmt: skip
    alone = server.post(body).json()
    crowd: list = []
    threads = [threading.Thread(target=lambda: crowd.append(server.post(body).json())) for _ in range(6)]
    threads += [threading.Thread(target=lambda: server.post({"texts": ["A dog runs.", "A cat sleeps."] * 4,
                                                             "sampling": True, "seed": 11, "nbest": 3,
                                                             "temperature": 1.5})) for _ in range(4)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(crowd) == 6
    for answer in crowd:  # the same samples; scores equal up to float rounding (other batch shapes)
        assert [[h["text"] for h in hyps] for hyps in answer["nbest"]] == [[h["text"] for h in hyps] for hyps in alone["nbest"]]
        assert [h["score"] for hyps in answer["nbest"] for h in hyps] == pytest.approx(
            [h["score"] for hyps in alone["nbest"] for h in hyps], abs=1e-4)  # fmt: skip
    assert len({hyp["text"] for hyps in alone["nbest"] for hyp in hyps}) > 2  # real samples, not one answer


# ----------------------------------------------------------------------------- limits and bad input


def _raw(server: Server, body: bytes, headers: dict | None = None) -> httpx.Response:
    return httpx.post(server.url + "/v1/translate", content=body,
                      headers={"content-type": "application/json", **(headers or {})}, timeout=60)  # fmt: skip


def _chunked(body: bytes):
    for i in range(0, len(body), 1000):
        yield body[i : i + 1000]


BAD = [
    # (id, how the body is sent, status, the error's words)
    ("body-over-limit", lambda s: _raw(s, json.dumps({"texts": ["a" * 300] * 30}).encode()), 413, r"request body of \d+ bytes is over this server's limit of 8000"),
    ("chunked-body-over-limit", lambda s: httpx.post(s.url + "/v1/translate", content=_chunked(b'{"texts": ["' + b"a" * 9000 + b'"]}'), timeout=60), 413, r"request body is over this server's limit of 8000 bytes"),
    ("too-many-texts", lambda s: s.post({"texts": ["A dog."] * 33}), 413, r"33 texts is over this server's limit of 32 per request"),
    ("text-too-long", lambda s: s.post({"texts": ["A dog.", "b" * 401]}), 413, r"texts\.1: 401 characters is over this server's limit of 400"),
    ("single-text-too-long", lambda s: s.post({"text": "b" * 401}), 413, r"text: 401 characters"),
    ("not-json", lambda s: _raw(s, b'{"text": "A dog.'), 400, r"not valid JSON \(Unterminated string"),
    ("not-utf8", lambda s: _raw(s, '{"text": "Caf\xe9"}'.encode("latin-1")), 400, r"not valid UTF-8 \(byte 0xe9 at offset 13\)"),
    ("empty-body", lambda s: _raw(s, b""), 400, r"not valid JSON"),
    ("json-array", lambda s: s.post(["A dog."]), 422, r"must be a JSON object, not list"),
    ("text-not-a-string", lambda s: s.post({"text": 3}), 422, r"^text: Input should be a valid string"),
    ("texts-not-a-list", lambda s: s.post({"texts": "A dog."}), 422, r"^texts: Input should be a valid list"),
    ("texts-item-not-a-string", lambda s: s.post({"texts": ["A dog.", None]}), 422, r"^texts\.1: Input should be a valid string"),
    ("beam-size-a-string", lambda s: s.post({"text": "A dog.", "beam_size": "4"}), 422, r"^beam_size: Input should be a valid integer"),
    ("beam-size-a-float", lambda s: s.post({"text": "A dog.", "beam_size": 2.5}), 422, r"^beam_size: Input should be a valid integer"),
    ("sampling-a-string", lambda s: s.post({"text": "A dog.", "sampling": "yes"}), 422, r"^sampling: Input should be a valid boolean"),
    ("unknown-field", lambda s: s.post({"text": "A dog.", "beam": 4}), 422, r"unknown field 'beam'"),
    ("text-and-texts", lambda s: s.post({"text": "A dog.", "texts": ["A cat."]}), 422, r"exactly one of 'text'"),
    ("neither", lambda s: s.post({"beam_size": 4}), 422, r"exactly one of 'text'"),
    # the options are checked by DecodeOptions.check, as `txkit translate` checks them
    ("beam-size-zero", lambda s: s.post({"text": "A dog.", "beam_size": 0}), 422, r"^beam size must be at least 1, not 0$"),
    ("nbest-over-beam", lambda s: s.post({"text": "A dog.", "nbest": 5}), 422, r"^nbest \(5\) cannot exceed the beam size \(4\)$"),
    ("unknown-lp-form", lambda s: s.post({"text": "A dog.", "lp_form": "x"}), 422, r"unknown length-penalty form 'x'"),
    ("temperature-zero", lambda s: s.post({"text": "A dog.", "sampling": True, "temperature": 0}), 422, r"sampling needs temperature > 0"),
    ("beam-over-server-limit", lambda s: s.post({"text": "A dog.", "beam_size": 17}), 422, r"at most 16 on this server"),
    ("wrong-method", lambda s: httpx.get(s.url + "/v1/translate", timeout=30), 405, r"Method Not Allowed"),
    ("no-such-endpoint", lambda s: httpx.get(s.url + "/v2/translate", timeout=30), 404, r"Not Found"),
]  # fmt: skip


@pytest.mark.parametrize("send,status,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_requests_get_a_json_error(send, status, message, server):
    response = send(server)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"error"}
    assert re.search(message, response.json()["error"]), response.json()
    assert "Traceback" not in response.text


def test_the_worker_survives_bad_requests(server):
    """After every bad request above (in any order), the server still translates and logged no traceback."""
    for _, send, _, _ in BAD:
        send(server)
    assert server.post({"text": "A dog runs."}).status_code == 200
    assert server.proc.poll() is None
    assert "Traceback" not in "".join(server.stderr)


# ----------------------------------------------------------------------------- client disconnect


def test_a_client_that_disconnects_is_dropped_from_the_batch(server, sources):
    """A 32-sentence request (the decoder takes 8 at a time) whose client hangs up after its first results:
    the rest is never translated, and the server goes on answering."""
    lines = (sources.read_text(encoding="utf-8").splitlines() * 2)[:32]
    body = json.dumps({"texts": lines, "beam_size": 8}).encode()
    translated = server.metric("txkit_sentences_total")
    cancelled = server.metric("txkit_sentences_cancelled_total")
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
        deadline = time.monotonic() + 60
        while server.metric("txkit_sentences_total") == translated:  # decoding has begun
            assert time.monotonic() < deadline
            time.sleep(0.02)
    deadline = time.monotonic() + 60
    while server.metric("txkit_sentences_cancelled_total") == cancelled:
        assert time.monotonic() < deadline, "the disconnect was not noticed"
        time.sleep(0.05)
    time.sleep(1.0)  # what was in the search when the client left finishes its step
    dropped = server.metric("txkit_sentences_cancelled_total") - cancelled
    done = server.metric("txkit_sentences_total") - translated
    assert dropped >= 32 - 2 * 8 and done + dropped <= 32 + 8  # at most the batch in the search was finished
    assert server.metric("txkit_requests_in_progress") == 0
    assert server.metric("txkit_queue_sentences") == 0
    assert server.post({"text": "A dog runs."}).status_code == 200


def test_metrics_in_prometheus_format(server):
    from prometheus_client.parser import text_string_to_metric_families

    server.post({"texts": ["A dog runs.", "A cat."]})
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(server.url + "/metrics").text)}
    for name in ("txkit_requests", "txkit_sentences", "txkit_source_tokens", "txkit_output_tokens",
                 "txkit_queue_sentences", "txkit_batch_sentences", "txkit_request_seconds"):  # fmt: skip
        assert name in families, name
    ok = [s for s in families["txkit_requests"].samples if s.labels == {"endpoint": "/v1/translate", "code": "200"}]
    assert ok and ok[0].value >= 2
    assert server.metric("txkit_output_tokens_total") > server.metric("txkit_sentences_total") > 0
    assert server.metric("txkit_request_seconds_count") >= ok[0].value


# ----------------------------------------------------------------------------- API key


@pytest.fixture(scope="module")
def keyed_server(trained_model):
    srv = Server(trained_model, env={"TXKIT_API_KEY": "s3cret-key"})
    try:
        yield srv.wait_ready(headers={"Authorization": "Bearer s3cret-key"})
    finally:
        srv.stop()


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer s3cret-ke"}, {"Authorization": "Bearer s3cret-key2"},
    {"Authorization": "s3cret-key"}, {"Authorization": "Basic " + __import__("base64").b64encode(b"u:nope").decode()},
    {"Authorization": "Basic !!!"},
], ids=["none", "wrong", "prefix", "longer", "no-scheme", "basic-wrong", "basic-garbage"])  # fmt: skip
def test_api_key_is_required_everywhere_but_health(headers, keyed_server):
    url = keyed_server.url
    for response in (httpx.post(url + "/v1/translate", json={"text": "A dog."}, headers=headers, timeout=60),
                     httpx.get(url + "/metrics", headers=headers), httpx.get(url + "/", headers=headers),
                     httpx.get(url + "/nope", headers=headers)):  # fmt: skip
        assert response.status_code == 401, response.text
        assert "API key" in response.json()["error"]
        assert response.headers["www-authenticate"].startswith("Basic")  # a browser asks its user for it
    assert httpx.get(url + "/health").status_code == 200


def test_the_right_api_key_is_accepted(keyed_server):
    import base64

    url = keyed_server.url
    assert keyed_server.translate_while_loading.status_code == 503  # the key was right, the model not loaded
    bearer = {"Authorization": "Bearer s3cret-key"}
    basic = {"Authorization": "Basic " + base64.b64encode(b"anyone:s3cret-key").decode()}
    for headers in (bearer, basic):
        response = httpx.post(url + "/v1/translate", json={"text": "A dog."}, headers=headers, timeout=60)
        assert response.status_code == 200 and response.json()["translation"]
        assert httpx.get(url + "/", headers=headers).status_code == 200
    assert keyed_server.metric("txkit_sentences_total", bearer) >= 2


# ----------------------------------------------------------------------------- SIGTERM


def test_sigterm_answers_the_requests_in_flight_then_exits_0(trained_model, sources, tmp_path):
    lines = sources.read_text(encoding="utf-8").splitlines()
    expected = cli_translate(trained_model, sources, tmp_path)
    srv = Server(trained_model, "--max-batch", "4").wait_ready()
    answers: list = []

    def client():
        answers.append(srv.post({"texts": lines}, timeout=300))

    try:
        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while srv.metric("txkit_requests_in_progress") < 6:  # all six are being answered
            assert time.monotonic() < deadline
            time.sleep(0.02)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):  # no longer accepting
            httpx.get(srv.url + "/health", timeout=5)
        still_running = sum(t.is_alive() for t in threads)
        for t in threads:
            t.join()
        assert srv.proc.wait(timeout=60) == 0, "".join(srv.stderr)
    finally:
        srv.stop()
    assert still_running > 0  # the signal came while they were being answered
    assert len(answers) == 6
    for response in answers:  # none lost, none cut short
        assert response.status_code == 200
        assert response.json()["translations"] == expected
    assert "Traceback" not in "".join(srv.stderr)


# ----------------------------------------------------------------------------- the page, in a real browser

BROWSER = os.environ.get("TXKIT_CHROMIUM", "/usr/bin/chromium")
DRIVER = os.environ.get("TXKIT_CHROMEDRIVER", "/usr/bin/chromedriver")
SKIP_BROWSER_ENV = "TXKIT_SKIP_BROWSER"  # =1: skip the browser test where Chromium cannot be installed


def _browser():
    """Headless Chromium driven by selenium, from the system's packages (`.ci/run` installs them). Missing,
    the test fails, as the other tests fail without their dependencies, unless TXKIT_SKIP_BROWSER=1."""
    missing = [path for path in (BROWSER, DRIVER) if not Path(path).is_file()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        message = f"the browser test needs {', '.join(missing)}: apt-get install chromium chromium-driver"
        if os.environ.get(SKIP_BROWSER_ENV) == "1":
            pytest.skip(message + f" ({SKIP_BROWSER_ENV}=1)")
        pytest.fail(message + f", or set {SKIP_BROWSER_ENV}=1 to skip it")
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,640", "--disable-extensions", "--no-first-run"):  # fmt: skip
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(DRIVER), options=options)  # explicit driver: nothing downloaded


def test_the_page_translates_in_a_real_browser(server, trained_model, sources, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    lines = sources.read_text(encoding="utf-8").splitlines()
    expected = cli_translate(trained_model, sources, tmp_path)
    browser = _browser()
    try:
        browser.get(server.url + "/")
        assert browser.title == "txkit translate"
        browser.find_element(By.ID, "source").send_keys(lines[5])
        browser.find_element(By.ID, "translate").click()
        WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "translation").text.strip())
        assert browser.find_element(By.ID, "translation").text == expected[5]
        assert re.fullmatch(r"1 line\(s\) in [\d.]+ s", browser.find_element(By.ID, "status").text)
        shot = Path(os.environ.get("TXKIT_SCREENSHOT", tmp_path / "page.png"))
        assert browser.save_screenshot(str(shot))
        urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(url.startswith(server.url) for url in urls), urls  # nothing fetched from elsewhere
    finally:
        browser.quit()
    image = Image.open(shot).convert("RGB")
    assert image.size[0] >= 1000
    colours = image.getcolors(maxcolors=1 << 24)
    background = max(colours)[0] / (image.size[0] * image.size[1])
    assert len(colours) > 50 and background < 0.97  # text, panels and the button drawn: not a blank page


def test_the_page_works_behind_the_api_key(keyed_server, trained_model, sources, tmp_path):
    """The browser holds the key as HTTP Basic credentials (here given in the URL, as a user types them in the
    browser's prompt); the page's own requests carry them."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    lines = sources.read_text(encoding="utf-8").splitlines()
    expected = cli_translate(trained_model, sources, tmp_path)
    browser = _browser()
    try:
        browser.get(keyed_server.url.replace("http://", "http://someone:s3cret-key@") + "/")
        browser.find_element(By.ID, "source").send_keys(lines[2])
        browser.find_element(By.ID, "translate").click()
        WebDriverWait(browser, 60).until(
            lambda b: b.find_element(By.ID, "status").text not in ("", "translating...")
        )
        assert browser.find_element(By.ID, "status").get_attribute("class") != "error", \
            browser.find_element(By.ID, "status").text  # fmt: skip
        assert browser.find_element(By.ID, "translation").text == expected[2]
    finally:
        browser.quit()
