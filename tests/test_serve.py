"""`nextterm-mlx serve`: the API answers what the command and the Python API
answer, batches concurrent requests without changing an answer, refuses bad
input in the command's words, and its page shows the answers in a browser.

Servers listen on 127.0.0.1, on a free port, in a thread of this process (a
subprocess for the command itself), and stop when their test ends. Expected
answers come from the Python API decoding one sequence at a time."""

from __future__ import annotations

import functools
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import uvicorn
from fastapi import Request

import nextterm_mlx
from nextterm_mlx.cli import format_plain, main
from nextterm_mlx.errors import UserError
from nextterm_mlx.guess import guess
from nextterm_mlx.loading import kernels_for_this_device
from nextterm_mlx.terms import check_terms
from nextterm_mlx.serve.api import TermsRequest
from nextterm_mlx.serve.app import create_app
from nextterm_mlx.serve.waiting import answered
from nextterm_mlx.serve.worker import ModelWorker

ARTIFACTS = Path(__file__).parent / "artifacts"
SEQUENCES = [[1, 2, 3], [2, 4, 8, 16], [1, 1, 2, 3, 5, 8], [3, 1, 4, 1, 5, 9], [10, 20, 30], [1, 4, 9, 16, 25],
             [-1, 2, -4, 8], [5, 5, 5, 5], [0, 1, 0, 1, 0], [7, 14, 21, 28], [1, 3, 6, 10, 15], [2, 3, 5, 7, 11]]


def fibonacci(count: int) -> list[int]:
    terms = [1, 1]
    while len(terms) < count:
        terms.append(terms[-1] + terms[-2])
    return terms


# The tiny model continues these past 2**53, where JavaScript's numbers stop being exact.
BIG = fibonacci(78)


def wait_for(condition: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.01)


@contextmanager
def running(app) -> Iterator[str]:
    """`app` served on a free port of 127.0.0.1 until the block ends; its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(20)
        listener.close()


@contextmanager
def held(worker: ModelWorker) -> Iterator[None]:
    """The worker kept busy until the block ends, so that the requests made
    meanwhile queue up and are decoded together after it."""
    gate, started = threading.Event(), threading.Event()
    worker.call(lambda predictor: (started.set(), gate.wait(30)))
    wait_for(started.is_set)
    try:
        yield
    finally:
        gate.set()


def tiny(cache: Path):
    return lambda: nextterm_mlx.load("tiny", cache_dir=cache)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The Python API, one sequence at a time: the answers to expect."""
    return tiny(tmp_path_factory.mktemp("reference-cache"))()


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    worker = ModelWorker(tiny(tmp_path_factory.mktemp("server-cache")))
    worker.start()
    yield worker
    worker.stop()


def with_test_endpoints(app, worker):
    """An endpoint added as a maintainer adds one, that fails on the model's thread."""

    @app.post("/v1/explode")
    async def explode(body: TermsRequest, request: Request) -> dict[str, Any]:
        [result] = await answered(request, worker.call(lambda predictor: 1 // 0))
        return result

    return app


@pytest.fixture(scope="module")
def server(worker):
    with running(with_test_endpoints(create_app(worker), worker)) as url:
        yield url


def post(url: str, body: Any, path: str = "/v1/predict") -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=60)


def expected_record(reference, terms, n=1, beams=None, top=None, strict=False) -> dict[str, Any]:
    """What `predict --json` prints, by the Python API, as the command makes it."""
    record = {"model": reference.name, "terms": terms,
              "predictions": [p.to_dict() for p in reference.continue_sequence(terms, n, strict)]}
    if beams is not None:
        record.update(reference.candidates(terms, beams, top, strict).to_dict())
    return record


def without_strings(content: Any) -> Any:
    """The JSON without its "_str" keys, after checking that each spells its terms."""
    if isinstance(content, list):
        return [without_strings(item) for item in content]
    if not isinstance(content, dict):
        return content
    for key, spelled in content.items():
        if key.endswith("_str"):
            assert spelled == spelled_out(content[key.removesuffix("_str")]), key
    return {key: without_strings(value) for key, value in content.items() if not key.endswith("_str")}


def spelled_out(terms: Any) -> Any:
    if isinstance(terms, list):
        return [spelled_out(term) for term in terms]
    return None if terms is None else str(terms)


@functools.cache
def batches_alike() -> bool:
    """Whether a batch computes each sequence's very numbers here (Kernels.alike_rows)."""
    return kernels_for_this_device().alike_rows() is not None


def close(got: Any, expected: Any) -> bool:
    """Equal. Where batches are not computed alike, floats within 1e-4: a
    batch then sums in another order than one sequence alone (the tolerance
    tests/test_engine.py allows the logprobs)."""
    if isinstance(expected, float):
        return got == expected if batches_alike() else got == pytest.approx(expected, abs=1e-4)
    if isinstance(expected, dict):
        return got.keys() == expected.keys() and all(close(got[k], expected[k]) for k in expected)
    if isinstance(expected, list):
        return len(got) == len(expected) and all(map(close, got, expected))
    return got == expected


def test_health_names_the_model(server):
    assert httpx.get(server + "/health").json() == {"model": "tiny", "ready": True}


@pytest.mark.parametrize("args,body", [
    (["1", "1", "2", "3", "5", "8", "--terms", "3"], {"terms": [1, 1, 2, 3, 5, 8], "n": 3}),
    (["--beams", "8", "--top", "3", "1", "2", "4", "8"], {"terms": ["1", "2", "4", "8"], "beams": 8, "top": 3}),
    (["--strict", "-1", "2", "-4", "8"], {"terms": "-1, 2, -4, 8", "strict": True}),
])
def test_predict_answers_what_predict_json_prints(server, capsys, args, body):
    main(["predict", "--model", "tiny", "--json", *args])
    printed = json.loads(capsys.readouterr().out)
    response = post(server, body)
    assert response.status_code == 200, response.text
    assert without_strings(response.json()) == printed


@pytest.mark.parametrize("args,body", [
    (["1", "1", "2", "3", "5", "8", "13", "21"], {"terms": [1, 1, 2, 3, 5, 8, 13, 21]}),
    (["--terms", "3", "--spare", "2", "1", "2", "6", "24", "120"], {"terms": "1 2 6 24 120", "n": 3, "spare": 2}),
    (["2", "3", "5", "7", "11", "13", "17"], {"terms": ["2", "3", "5", "7", "11", "13", "17"]}),
])
def test_guess_answers_what_guess_json_prints(server, capsys, args, body):
    main(["guess", "--json", *args])
    printed = json.loads(capsys.readouterr().out)
    response = post(server, body, "/v1/guess")
    assert response.status_code == 200, response.text
    assert without_strings(response.json()) == printed


@pytest.mark.parametrize("args,body", [
    (["1", "2", "3", "4", "5", "6", "7", "8"], {"terms": [1, 2, 3, 4, 5, 6, 7, 8]}),
    (["--terms", "2", "1", "1", "2", "3", "5", "8", "13", "21"], {"terms": "1 1 2 3 5 8 13 21", "n": 2}),
    (["2", "3", "5", "7", "11", "13", "17"], {"terms": [2, 3, 5, 7, 11, 13, 17]}),
])
def test_explain_answers_what_predict_explain_prints(server, capsys, args, body):
    main(["predict", "--model", "tiny", "--json", "--explain", "--hybrid", *args])
    printed = json.loads(capsys.readouterr().out)
    response = post(server, body, "/v1/explain")
    assert response.status_code == 200, response.text
    assert close(without_strings(response.json()), printed)


@pytest.mark.parametrize("path,body", [("/v1/guess", {"terms": [1, 2], "spare": 0}),
                                       ("/v1/explain", {"terms": "1 two"}),
                                       ("/v1/explain", {"terms": [1, 2], "beams": 4})])
def test_guess_and_explain_refuse_bad_input(server, path, body):
    response = post(server, body, path)
    assert response.status_code == 422 and len(response.json()["error"].splitlines()) == 1


STRIPPED = """# hand-made, in the OEIS's stripped format
A000045 ,0,1,1,2,3,5,8,13,21,34,55,89,144,
A000027 ,1,2,3,4,5,6,7,8,9,10,11,12,
A000004 ,0,0,0,0,0,0,0,
"""
NAMES = "A000045 Fibonacci numbers.\nA000027 The positive integers.\nA000004 The zero sequence.\n"


@pytest.fixture(scope="module")
def oeis_cache(tmp_path_factory):
    """A cache holding a local OEIS index of STRIPPED and NAMES, built by the command."""
    files, cache = tmp_path_factory.mktemp("oeis-files"), tmp_path_factory.mktemp("oeis-cache")
    (files / "stripped").write_text(STRIPPED)
    (files / "names").write_text(NAMES)
    try:
        main(["oeis", "download", "--from", str(files), "--cache-dir", str(cache)])
    except SystemExit as e:
        assert e.code == 0
    return cache


@pytest.fixture(scope="module")
def oeis_server(worker, oeis_cache):
    with running(create_app(worker, oeis_cache)) as url:
        yield url


@pytest.mark.parametrize("args,body", [
    (["1", "2", "3", "5", "8"], {"terms": [1, 2, 3, 5, 8]}),
    (["--limit", "1", "0", "0"], {"terms": "0 0", "limit": 1}),
    (["--transforms", "2", "4", "6", "8"], {"terms": [2, 4, 6, 8], "transforms": True}),
    (["7", "7", "7", "7"], {"terms": [7, 7, 7, 7]}),
])
def test_oeis_search_answers_what_oeis_search_json_prints(oeis_server, oeis_cache, capsys, args, body):
    main(["oeis", "search", "--json", "--cache-dir", str(oeis_cache), *args])
    printed = json.loads(capsys.readouterr().out)
    response = post(oeis_server, body, "/v1/oeis/search")
    assert response.status_code == 200, response.text
    assert without_strings(response.json()) == printed


def test_oeis_search_without_an_index_is_503(server):
    response = post(server, {"terms": [1, 2, 3]}, "/v1/oeis/search")
    assert response.status_code == 503 and "oeis download" in response.json()["error"]


def test_explain_shows_the_oeis_matches_as_predict_explain_does(oeis_server, oeis_cache, capsys):
    main(["predict", "--model", "tiny", "--json", "--explain", "--hybrid", "--cache-dir", str(oeis_cache),
          "1", "2", "3", "4", "5", "6"])
    printed = json.loads(capsys.readouterr().out)
    answer = post(oeis_server, {"terms": [1, 2, 3, 4, 5, 6]}, "/v1/explain").json()
    assert [m["id"] for m in printed["oeis"]["matches"]] == ["A000027"]
    assert close(without_strings(answer), printed)


def test_big_terms_travel_exactly_as_numbers_and_as_strings(server, reference):
    answer = post(server, {"terms": [str(t) for t in BIG[:-1]] + [BIG[-1]], "n": 2}).json()
    assert answer["terms"] == BIG and answer["terms_str"] == [str(t) for t in BIG]
    expected = expected_record(reference, BIG, 2)
    assert without_strings(answer) == expected
    assert all(p["value"] > 2 ** 53 for p in expected["predictions"])


def cli_error(capsys, *words) -> str:
    with pytest.raises(SystemExit) as exited:
        main(["predict", "--model", "tiny", *words])
    assert exited.value.code == 2
    return capsys.readouterr().err.strip().removeprefix("nextterm-mlx: error: ")


def api_error(reference, terms) -> str:
    with pytest.raises(UserError) as raised:
        reference.prompt(terms)
    return str(raised.value)


def test_bad_terms_are_422_with_the_commands_message(server, reference, capsys):
    too_long = [1] * 2100  # 4,201 tokens, past the model's 4,096
    cases = [
        ({"terms": [1, "two", 3]}, cli_error(capsys, "1", "two", "3")),
        ({"terms": "1 two 3"}, cli_error(capsys, "1", "two", "3")),
        ({"terms": [1, 1.5]}, cli_error(capsys, "1", "1.5")),
        ({"terms": too_long}, api_error(reference, too_long)),
        ({"terms": []}, api_error(reference, [])),
        ({"terms": [True]}, api_error(reference, [True])),
    ]
    for body, message in cases:
        response = post(server, body)
        assert (response.status_code, response.json()) == (422, {"error": message}), body


@pytest.mark.parametrize("body,message", [
    ({"terms": [1, 2], "beam": 4}, "unknown field 'beam'; /docs lists each request's fields"),
    ({"n": 2}, "the field 'terms' is missing; send e.g. {\"terms\": [1, 2, 3]}"),
    ({"terms": [1, 2], "n": 0}, "n must be at least 1, not 0"),
    ({"terms": [1, 2], "n": "2"}, "n must be a whole number, not '2'"),
    ({"terms": [1, 2], "strict": "yes"}, "strict must be true or false, not 'yes'"),
    ({"terms": 12}, "terms must be a list of integers or a text such as '1, 2, 3', not 12"),
    ([1, 2, 3], "the request body must be a JSON object, e.g. {\"terms\": [1, 2, 3]}"),
    ({"terms": [1, 2], "top": 3}, "top needs beams at least as large, e.g. \"beams\": 8, \"top\": 3"),
    ({"terms": [1, 2], "beams": 2, "n": 2}, "beams ranks candidates for the next term only; drop n or beams"),
])
def test_bad_requests_are_422_with_one_line(server, body, message):
    response = post(server, body)
    assert (response.status_code, response.json()) == (422, {"error": message})


def test_a_failure_is_one_line_and_the_server_goes_on(server):
    broken = httpx.post(server + "/v1/predict", content=b'{"terms": [1, 2', headers={"content-type": "application/json"})
    assert broken.status_code == 422 and broken.json()["error"].startswith("the request body is not valid JSON")
    failed = post(server, {"terms": [1]}, "/v1/explode")
    assert (failed.status_code, failed.json()) == (500, {"error": "internal error (ZeroDivisionError: integer "
                                                                  "division or modulo by zero); the server goes on"})
    assert post(server, {"terms": [1]}, "/v1/nothing").status_code == 404
    assert httpx.get(server + "/health").status_code == 200


def record_batches(worker, monkeypatch) -> list[list[list[int]]]:
    """The sequences of each batch the worker's model decodes, greedy or by beams."""
    batches = []
    for method in ("continue_batch", "candidates_batch"):
        original = getattr(worker.predictor, method)

        def recording(sequences, *args, original=original, **kwargs):
            batches.append(list(sequences))
            return original(sequences, *args, **kwargs)

        monkeypatch.setattr(worker.predictor, method, recording)
    return batches


def test_concurrent_requests_are_decoded_together_with_one_at_a_times_answers(server, worker, reference,
                                                                               monkeypatch):
    requests = [{"terms": s, "n": 1 + i % 2} for i, s in enumerate(SEQUENCES)]
    requests += [{"terms": s, "beams": 4, "top": 2} for s in SEQUENCES[:6]]
    batches = record_batches(worker, monkeypatch)
    with ThreadPoolExecutor(len(requests)) as clients, held(worker):
        replies = [clients.submit(post, server, body) for body in requests]
        # A request with beams is two jobs: its greedy terms and its candidates.
        wait_for(lambda: worker.jobs.qsize() == len(requests) + 6)
    for body, reply in zip(requests, replies):
        answer = reply.result()
        assert answer.status_code == 200, answer.text
        expected = expected_record(reference, body["terms"], body.get("n", 1), body.get("beams"), body.get("top"))
        assert close(without_strings(answer.json()), expected), (body, answer.json(), expected)
    # One batch each: next terms (the beam requests' with the others'), two terms, candidates.
    assert sorted(map(len, batches)) == [6, 6, 12]


def test_a_client_that_leaves_is_dropped_and_stalls_no_one(server, worker, reference, monkeypatch):
    batches = record_batches(worker, monkeypatch)
    port = int(server.rpartition(":")[2])
    body = json.dumps({"terms": [9, 9, 9, 9]}).encode()
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with ThreadPoolExecutor(4) as clients, socket.create_connection(("127.0.0.1", port)) as stalled:
        with held(worker):
            stalled.sendall(head + body[:5])  # and never the rest
            with socket.create_connection(("127.0.0.1", port)) as leaving:
                leaving.sendall(head + body)
                wait_for(lambda: worker.jobs.qsize() == 1)
            wait_for(lambda: all(job.future.cancelled() for job in list(worker.jobs.queue)))
            replies = [clients.submit(post, server, {"terms": s}) for s in SEQUENCES[:4]]
            wait_for(lambda: worker.jobs.qsize() == 5)
        for terms, reply in zip(SEQUENCES, replies):
            assert close(without_strings(reply.result().json()), expected_record(reference, terms))
    assert len(batches) == 1 and sorted(batches[0]) == sorted(SEQUENCES[:4])  # the one who left is not decoded


def test_past_the_queue_bound_is_503_with_retry_after(worker, reference):
    small = ModelWorker(lambda: worker.predictor, max_queue=2)  # the same model, while the other idles
    small.start()
    try:
        with running(create_app(small)) as url, ThreadPoolExecutor(2) as clients:
            with held(small):
                queued = [clients.submit(post, url, {"terms": s}) for s in SEQUENCES[:2]]
                wait_for(lambda: small.jobs.qsize() == 2)
                refused = post(url, {"terms": SEQUENCES[2]})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json() == {"error": "the server is busy: its queue is full; retry in 1 s"}
            for terms, reply in zip(SEQUENCES, queued):
                assert close(without_strings(reply.result().json()), expected_record(reference, terms))
    finally:
        small.stop()


def test_a_batch_that_fails_is_answered_one_by_one_so_only_the_bad_one_fails():
    def halves(predictor, items):
        return [1 / item for item in items]

    worker = ModelWorker(lambda: None)
    worker.start()
    try:
        with held(worker):
            futures = [worker.submit("halves", halves, item) for item in (2, 0, 4)]
        assert futures[0].result(10) == 0.5 and futures[2].result(10) == 0.25
        assert isinstance(futures[1].exception(10), ZeroDivisionError)
    finally:
        worker.stop()


def test_an_idle_worker_releases_freed_memory_once_each_time_it_goes_idle(monkeypatch):
    releasing = []  # the threads that released: the module's other workers idle too
    monkeypatch.setattr("nextterm_mlx.serve.worker.IDLE_SECONDS", 0.1)
    monkeypatch.setattr("nextterm_mlx.cpu.heap.release_freed_memory",
                        lambda: releasing.append(threading.current_thread()))
    worker = ModelWorker(lambda: None)
    worker.start()

    def released() -> int:
        return releasing.count(worker.thread)

    try:
        wait_for(lambda: released() == 1)  # idle since it loaded
        time.sleep(1)
        assert released() == 1  # then it waits for a job, not for the next release
        worker.call(lambda predictor: None).result(10)
        wait_for(lambda: released() == 2)
    finally:
        worker.stop()


def serving(*args) -> tuple[subprocess.Popen, str]:
    """`nextterm-mlx serve` started with `args`, and the line it says once serving."""
    command = [str(Path(sys.executable).with_name("nextterm-mlx")), "serve", "--model", "tiny", "--port", "0", *args]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    said = []

    def read():  # past the notice of the model's first use
        while (line := process.stderr.readline()) and "serving" not in line:
            pass
        said.append(line.strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(120)
    return process, "".join(said)


def stop(process: subprocess.Popen) -> tuple[int, str]:
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, err


def test_the_command_serves_on_localhost_and_says_so_elsewhere():
    local, open_ = serving("--max-new-tokens", "2"), serving("--host", "0.0.0.0")
    try:
        assert local[1].startswith("nextterm-mlx: serving tiny at http://127.0.0.1:"), local[1]
        assert local[1].endswith("/ (Ctrl-C stops it)")
        assert open_[1].startswith("nextterm-mlx: warning: serving tiny at http://0.0.0.0:"), open_[1]
        assert open_[1].endswith(", open to other machines: the API has no authentication "
                                 "(--host 127.0.0.1 keeps it on this one)")
        for process, line in (local, open_):
            port = line.split("/")[2].rpartition(":")[2]
            assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).json() == {"model": "tiny", "ready": True}
        # 1024 takes five tokens and its separator: two are all the budget allows.
        port = local[1].split("/")[2].rpartition(":")[2]
        [cut] = post(f"http://127.0.0.1:{port}", {"terms": [2**k for k in range(10)]}).json()["predictions"]
        assert (cut["value"], cut["stop"], len(cut["tokens"])) == (None, "max_tokens", 2)
    finally:
        outcomes = [stop(process) for process, _ in (local, open_)]
    assert [(code, err.strip()) for code, err in outcomes] == [(130, "nextterm-mlx: interrupted")] * 2


def test_a_port_in_use_is_one_line(capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exited:
            main(["serve", "--model", "tiny", "--port", str(port)])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (f"nextterm-mlx: error: cannot listen on 127.0.0.1 port {port}: Address already "
                                       "in use; choose another --port (or --host)\n")


def test_without_the_extra_serve_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if not installed
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--model", "tiny"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == ("nextterm-mlx: error: serve needs fastapi, which is not installed: "
                                       "pip install 'nextterm-mlx[serve]'\n")


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="Debian's chromium and chromium-driver are not "
                    "installed (apt-get install chromium chromium-driver; .ci/run installs them)")
def test_the_page_shows_the_commands_answer_in_a_browser(server, reference):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1500"):
        options.add_argument(argument)
    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    browser.set_page_load_timeout(30)
    find = lambda selector: browser.find_element(By.CSS_SELECTOR, selector)  # noqa: E731
    try:
        browser.get(server + "/")
        terms = BIG[-12:]
        find("#terms").send_keys(", ".join(map(str, terms)) + Keys.ENTER)
        WebDriverWait(browser, 60).until(lambda b: find("body").get_attribute("data-state") == "done")

        greedy = {"predictions": [p.to_dict() for p in reference.continue_sequence(terms, 5)]}
        assert find("#next").text == format_plain(greedy)  # as `predict --terms 5` prints it
        assert len(browser.find_elements(By.CSS_SELECTOR, "#plot circle.given")) == len(terms)
        predicted = browser.find_elements(By.CSS_SELECTOR, "#plot circle.predicted")
        assert len(predicted) == sum(p["value"] is not None for p in greedy["predictions"])
        ranked = reference.candidates(terms, 8, 5)
        rows = browser.find_elements(By.CSS_SELECTOR, "#bars tr.candidate")
        assert [(r.find_element(By.CLASS_NAME, "value").text, r.find_element(By.CLASS_NAME, "prob").text)
                for r in rows] == [(str(c.value), f"{c.prob:.4f}") for c in ranked.candidates]
        assert find("#bars tr.no-term .prob").text == f"{ranked.no_term_prob:.4f}"
        [fit] = guess(terms, count=5).fits
        assert find("#fits").is_displayed() and find("#fits .formula").text == fit.formula
        assert find("#fits .terms").text == ", ".join(map(str, fit.next))
        assert not find("#oeis").is_displayed()  # its endpoint answers 503: no index
        assert find("#model").text == "tiny" and not find("#error").is_displayed()
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "serve-page.png"))

        find("#terms").clear()
        find("#terms").send_keys("1 two 3" + Keys.ENTER)
        WebDriverWait(browser, 60).until(lambda b: find("#error").is_displayed())
        with pytest.raises(UserError) as raised:
            check_terms("1 two 3")
        assert find("#error").text == str(raised.value)
        assert not find("#prediction").is_displayed() and not find("#candidates").is_displayed()
    finally:
        browser.quit()
