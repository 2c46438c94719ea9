"""A converted folder used by mlx-lm alone: its tokenizer puts BOS in front,
so mlx-lm's generate and server answer text prompts as transformers does.

The shipped tiny model is converted to float32, so that mlx-lm computes in
the reference's dtype; transformers runs on the same checkpoint.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import reference
from nextterm_mlx.resolve import TINY_CHECKPOINT
from nextterm_mlx.vocab import BOS, SEP

CARD_PROMPT = "1,2,3,4,"  # the model card's prompt ids: [12, 1, 11, 2, 11, 3, 11, 4, 11]
CARD_IDS = [BOS, 1, SEP, 2, SEP, 3, SEP, 4, SEP]
# Reference cases whose answers keep a clear logit margin at every step.
MIN_MARGIN = 1.0
SERVER_START_SECONDS = 120


def spelled(tokens: list[int]) -> str:
    return "".join("-" if t == 10 else "," if t == SEP else str(t) for t in tokens)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from nextterm_mlx.convert.converter import convert_checkpoint

    return convert_checkpoint(TINY_CHECKPOINT, tmp_path_factory.mktemp("mlx-lm") / "tiny", dtype="float32")


@pytest.fixture(scope="module")
def cases():
    """(prompt text, transformers' answer text) for the card's prompt, run
    live, and for the tiny model's reference cases with clear margins."""
    from nextterm_mlx.convert.reference import load_reference_model, run_case

    card = run_case(load_reference_model(TINY_CHECKPOINT), {"terms": [1, 2, 3, 4]})
    assert card["prompt"] == CARD_IDS
    assert spelled(card["generated"][0]) == "5,"  # the model card's answer
    chosen = [c for c in reference("tiny")["cases"]
              if c["continue"] == 1 and c["min_margin"] >= MIN_MARGIN and c["generated"][0][-1] == SEP
              and len(c["prompt"]) < 64][:3]
    assert len(chosen) == 3
    return [(spelled(c["prompt"][1:]), spelled(c["generated"][0][:-1])) for c in [card, *chosen]]


def test_both_tokenizers_put_exactly_one_bos_in_front(folder):
    from mlx_lm import load
    from transformers import AutoTokenizer

    _, wrapper = load(str(folder))
    for tokenizer in (wrapper, AutoTokenizer.from_pretrained(folder)):
        assert tokenizer.encode(CARD_PROMPT) == CARD_IDS
        assert tokenizer.encode(CARD_PROMPT, add_special_tokens=False) == CARD_IDS[1:]
        assert tokenizer.decode(CARD_IDS, skip_special_tokens=True) == CARD_PROMPT


def test_mlx_lm_generate_in_python_answers_as_transformers(folder, cases, monkeypatch):
    """mlx-lm's generate adds BOS unless the text starts with "<bos>": one BOS either way."""
    import importlib

    from mlx_lm import generate, load

    generate_module = importlib.import_module("mlx_lm.generate")  # the package's `generate` is the function
    model, tokenizer = load(str(folder))
    prompts = []
    step = generate_module.generate_step
    monkeypatch.setattr(generate_module, "generate_step",
                        lambda prompt, *a, **k: (prompts.append(prompt.tolist()), step(prompt, *a, **k))[1])
    for text, answer in cases:
        assert generate(model, tokenizer, text, max_tokens=192) == answer, text
    assert generate(model, tokenizer, "<bos>" + CARD_PROMPT, max_tokens=192) == cases[0][1]
    assert prompts[0] == CARD_IDS and prompts[-1] == CARD_IDS


def test_mlx_lm_generate_command_answers_as_transformers(folder, cases):
    text, answer = cases[0]
    done = subprocess.run([sys.executable, "-m", "mlx_lm", "generate", "--model", str(folder), "--prompt", text,
                           "--max-tokens", "192", "--verbose", "False"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == answer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_mlx_lm_server_completions_answer_as_transformers(folder, cases, tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w+")
    server = subprocess.Popen([sys.executable, "-m", "mlx_lm", "server", "--model", str(folder),
                               "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mlx_lm server did not start"
                time.sleep(0.5)
        for text, answer in cases:
            reply = post(f"http://127.0.0.1:{port}/v1/completions",
                         {"prompt": text, "max_tokens": 192, "temperature": 0.0})
            assert reply["choices"][0]["text"] == answer, (text, reply)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
