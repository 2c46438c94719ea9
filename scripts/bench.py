"""Speed, side by side in one run: nextterm-mlx, stock MLX, mlx-lm, transformers, llama.cpp.

    python scripts/bench.py [--quick] [--json PATH] [--work DIR] [--oeis PATH]

Needs the reference extra (torch, transformers). Each configuration runs in
its own process, so that none inherits another's memory or threads: this script is
both the orchestrator and the worker it starts
(`python scripts/bench.py --worker NAME ...`).
Every figure is the median of `repeats` runs. The 440M-shape checkpoint has
random weights: its answers mean nothing, so decoding figures are tokens/s
over whatever it generates, and transformers is forced to generate the same
number of tokens.

llama.cpp runs beside the weights-as-stored figures when llama-cpp-python and
gguf are installed: the same checkpoint as F32, BF16 and Q8_0 GGUF files
(scripts/gguf_export.py), set against nextterm-mlx in float32, bfloat16 as
stored and 8 bits. Neither is a dependency of the project or its tests;
`pip install llama-cpp-python gguf` builds llama.cpp from source (about 4
minutes on 2 cores; `CMAKE_ARGS="-DGGML_NATIVE=ON"` builds it for this CPU).
Without them the bench says so in one line and leaves those figures out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nextterm_mlx.memory import peak_memory_bytes  # noqa: E402
from nextterm_mlx.vocab import SEP, STOP_TOKENS, decode_term  # noqa: E402
from scripts.timing import median_time  # noqa: E402

# New tokens per sequence in the batched-eval figures, on both sides.
EVAL_NEW_TOKENS = 8
# Terms each batch-1 decode round asks for, from the prompt, on both sides.
TERMS_PER_ROUND = 10
# The GGUF types llama.cpp runs beside nextterm-mlx, and how the report names each pair.
LLAMA_CPP_KINDS = {"f32": "float32 / F32", "bf16": "bfloat16 / BF16", "q8_0": "8-bit / Q8_0"}
# Turns of nextterm-mlx's and llama.cpp's decode, alternated, for each weight type.
DECODE_TURNS = 6
# Drafted tokens per verifying forward pass whose cost is set against one decode step.
VERIFY_SIZES = (2, 4, 8)


# --- workers: each runs in a fresh process -------------------------------------------------

def worker_mlx_lm(model_path: str, prompts: dict, repeats: int, new_tokens: int) -> dict:
    """Stock MLX: mlx-lm's own Qwen3 and generate_step on the converted
    model, in float32, with the BLAS the MLX wheel brings."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.utils import load_model

    from nextterm_mlx.vocab import encode_prompt

    model, _ = load_model(Path(model_path))
    model.set_dtype(mx.float32)
    prompt = mx.array(encode_prompt(prompts["single"]))

    # With the bundled BLAS a prefill takes over half a minute, so nothing is
    # prefilled untimed: the first timed prefill also loads the weights (the
    # median leaves it out), and the decode repeats start from the last one's
    # cache, cut back to all of the prompt but its last token.
    cache = None

    def prefill():
        nonlocal cache
        cache = make_prompt_cache(model)
        mx.eval(model(prompt[None], cache=cache))

    prefill_seconds = median_time(prefill, repeats)
    for layer in cache:
        layer.trim(1)
    prompt_positions = cache[0].offset

    def decode_rate():
        started = None
        for count, _ in enumerate(generate_step(prompt[-1:], model, max_tokens=new_tokens + 1, prompt_cache=cache,
                                                sampler=lambda x: mx.argmax(x, axis=-1))):
            if count == 0:
                started = time.perf_counter()
        rate = new_tokens / (time.perf_counter() - started)
        for layer in cache:
            layer.trim(layer.offset - prompt_positions)
        return rate

    return {"blas": "MLX's bundled BLAS", "prompt_tokens": int(prompt.size), "prefill_seconds": prefill_seconds,
            "decode_tok_s": statistics.median(decode_rate() for _ in range(repeats))}


def batch1_decode_rate(predictor, terms: list[int], tokens: int) -> float:
    """Generated tokens/s of batch-1 decoding (prefill excluded), over at least `tokens`."""
    from nextterm_mlx.decode import DecodeStats

    stats = DecodeStats()
    while stats.generated_tokens < tokens:
        predictor.continue_batch([terms], TERMS_PER_ROUND, stats)
    return stats.generated_tokens / stats.decode_seconds


def worker_decode(model_path: str, prompts: dict, repeats: int, new_tokens: int) -> dict:
    """Prefill and batch-1 decode alone, and the peak RSS they take: run with
    NEXTTERM_MLX_SKINNY=0 to show what the skinny-product kernel is worth, with
    NEXTTERM_MLX_STORED_WEIGHTS=0 for the weights widened to float32. The
    logits after the prompt and the tokens of one decode round are kept for
    llama.cpp's to be set against."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    import nextterm_mlx
    from nextterm_mlx.decode import prefill
    from nextterm_mlx.vocab import encode_prompt

    predictor = nextterm_mlx.load(model_path, dtype="float32", max_new_tokens=new_tokens)
    prompt = mx.array([encode_prompt(prompts["single"])])

    def prefill_once():
        mx.eval(prefill(predictor.model, prompt, make_prompt_cache(predictor.model)))

    prompt_logits = prefill(predictor.model, prompt, make_prompt_cache(predictor.model))[0].tolist()
    batch1_decode_rate(predictor, prompts["single"], new_tokens)
    greedy = predictor.continue_sequence(prompts["single"], TERMS_PER_ROUND)
    info = predictor.info()
    return {"blas": info["blas"], "weights": info["weights"], "prompt_tokens": int(prompt.size),
            "prefill_seconds": median_time(prefill_once, repeats),
            "decode_tok_s": statistics.median(
                batch1_decode_rate(predictor, prompts["single"], 4 * new_tokens) for _ in range(repeats)),
            "peak_rss_gb": peak_memory_bytes() / 2**30, "prompt_logits": prompt_logits,
            "greedy_tokens": [token for prediction in greedy for token in prediction.tokens]}


class RoundStop:
    """nextterm-mlx's stop rule for a decode round (nextterm_mlx.decode.Terms),
    restated for llama.cpp's worker: that module imports mlx-lm, which brings
    torch and its threads into the process. A term ends at a stop token or at
    the token budget; the round after TERMS_PER_ROUND terms, or at a term
    that is no integer."""

    def __init__(self, budget: int):
        self.budget, self.term, self.terms = budget, [], 0

    def add(self, token: int) -> bool:
        """Record a generated token; True when the round needs no more."""
        self.term.append(token)
        if token not in STOP_TOKENS and len(self.term) < self.budget:
            return False
        term, self.term, self.terms = self.term, [], self.terms + 1
        return token != SEP or decode_term(term[:-1]) is None or self.terms == TERMS_PER_ROUND


def decode_context(prompt_tokens: int, new_tokens: int) -> int:
    """The most positions a decode round can fill: the prompt and every
    term at its token budget. nextterm-mlx's cache grows to what a round
    fills; llama.cpp's is made this size, as a larger one costs it time."""
    return prompt_tokens + TERMS_PER_ROUND * new_tokens


class LlamaCppRounds:
    """llama.cpp (llama-cpp-python) on a GGUF file of the same checkpoint,
    driven as worker_decode drives nextterm-mlx: the same prompt ids, its
    prefill alone, then greedy rounds of TERMS_PER_ROUND terms from the
    prompt's cache that stop where nextterm-mlx's stop, on every core."""

    def __init__(self, gguf_path: str, prompts: dict, new_tokens: int):
        import llama_cpp

        from nextterm_mlx.vocab import encode_prompt

        self.prompt, self.new_tokens, self.threads = encode_prompt(prompts["single"]), new_tokens, usable_cores()
        self.llm = llama_cpp.Llama(gguf_path, n_ctx=decode_context(len(self.prompt), new_tokens),
                                   n_batch=len(self.prompt), n_threads=self.threads, n_threads_batch=self.threads,
                                   verbose=False)
        self.logits_ith = llama_cpp.llama_get_logits_ith
        self.prefill()  # warm-up: reads the mapped file in
        self.first = self.greedy()

    def last_logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(self.logits_ith(self.llm.ctx, -1), shape=(self.llm.n_vocab(),))

    def greedy(self) -> int:
        return int(np.argmax(self.last_logits()))

    def prefill(self):
        self.llm.reset()
        self.llm.eval(self.prompt)

    def decode_round(self) -> tuple[list[int], int, float]:
        """The round's tokens, the one-token passes it fed and their seconds.
        nextterm-mlx feeds as many tokens as it generates (its pipelined loop
        feeds one past the last; the first comes from the prefill), so its
        tokens/s is one pass's rate, as passes/s is here."""
        self.llm.n_tokens = len(self.prompt)  # the next eval drops the cache past the prompt
        stops, tokens, token = RoundStop(self.new_tokens), [], self.first
        started = time.perf_counter()
        while True:
            tokens.append(token)
            if stops.add(token):
                break
            self.llm.eval([token])
            token = self.greedy()
        return tokens, len(tokens) - 1, time.perf_counter() - started

    def decode_rate(self, tokens: int) -> float:
        passes, seconds = 0, 0.0
        while passes < tokens:
            _, round_passes, round_seconds = self.decode_round()
            if round_passes == 0:
                raise RuntimeError("the first token after the prompt ends every round: no decode step to time")
            passes, seconds = passes + round_passes, seconds + round_seconds
        return passes / seconds


def worker_llamacpp(gguf_path: str, prompts: dict, repeats: int, new_tokens: int,
                    reference: dict | None = None) -> dict:
    """llama.cpp's prefill and decode (LlamaCppRounds), measured as
    worker_decode measures nextterm-mlx.

    With `reference` (worker_decode's prompt_logits and greedy_tokens), how
    far the logits after the prompt are from nextterm-mlx's, and how many of
    the first tokens are the same. Random weights repeat one token for long,
    so the logits are the sharper check of the file's layout."""
    import llama_cpp

    rounds = LlamaCppRounds(gguf_path, prompts, new_tokens)
    prefill_seconds = median_time(rounds.prefill, repeats)
    prompt_logits = rounds.last_logits().copy()
    rounds.decode_rate(new_tokens)
    greedy_tokens = rounds.decode_round()[0]
    result = {"llama_cpp_python": llama_cpp.__version__, "n_ctx": rounds.llm.n_ctx(), "n_threads": rounds.threads,
              "prompt_tokens": len(rounds.prompt), "prefill_seconds": prefill_seconds,
              "decode_tok_s": statistics.median(rounds.decode_rate(4 * new_tokens) for _ in range(repeats)),
              "peak_rss_gb": peak_memory_bytes() / 2**30, "greedy_tokens": greedy_tokens}
    if reference is not None:
        reference_tokens, reference_logits = reference["greedy_tokens"], np.array(reference["prompt_logits"])
        compared = min(len(greedy_tokens), len(reference_tokens))
        same = next((i for i in range(compared) if greedy_tokens[i] != reference_tokens[i]), compared)
        result["agreement"] = {"leading_tokens_equal": same, "compared": compared,
                               "prompt_logits_max_abs_diff": float(np.abs(prompt_logits - reference_logits).max()),
                               "prompt_logits_max_abs": float(np.abs(reference_logits).max())}
    return result


def serve_turns(decode_rate) -> None:
    """Answers each line on stdin with one decode measurement, tokens/s, for
    alternate_turns: the worker stays loaded, so no turn pays for a load."""
    print(json.dumps("ready"), flush=True)
    for _ in sys.stdin:
        print(json.dumps(decode_rate()), flush=True)


def worker_decode_turns(model_path: str, prompts: dict, repeats: int, new_tokens: int) -> None:
    """worker_decode's decode measurement, once a turn."""
    import nextterm_mlx

    predictor = nextterm_mlx.load(model_path, dtype="float32", max_new_tokens=new_tokens)
    batch1_decode_rate(predictor, prompts["single"], new_tokens)
    serve_turns(lambda: batch1_decode_rate(predictor, prompts["single"], 4 * new_tokens))


def worker_llamacpp_turns(gguf_path: str, prompts: dict, repeats: int, new_tokens: int) -> None:
    """worker_llamacpp's decode measurement, once a turn."""
    rounds = LlamaCppRounds(gguf_path, prompts, new_tokens)
    rounds.decode_rate(new_tokens)
    serve_turns(lambda: rounds.decode_rate(4 * new_tokens))


def worker_nextterm(model_path: str, prompts: dict, repeats: int, new_tokens: int) -> dict:
    """nextterm-mlx's own paths: prefill, decode, terms, verify cost, batched eval."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models.cache import make_prompt_cache

    import nextterm_mlx
    from nextterm_mlx.decode import DecodeStats, prefill
    from nextterm_mlx.vocab import encode_prompt

    predictor = nextterm_mlx.load(model_path, dtype="float32", max_new_tokens=new_tokens)
    model = predictor.model
    prompt = mx.array([encode_prompt(prompts["single"])])

    def prefill_once():
        mx.eval(prefill(model, prompt, make_prompt_cache(model)))

    prefill_once()
    info = predictor.info()
    result = {"blas": info["blas"], "primitives": info["primitives"], "prompt_tokens": int(prompt.size),
              "prefill_seconds": median_time(prefill_once, repeats)}

    # Batch-1 decode reads every weight once per token; the fraction sets
    # the bytes it reads per second against a plain read. Each repeat
    # measures the read (in its own process, so that its 1 GiB stays out of
    # this one's peak RSS) right before decoding, so that the fraction does
    # not move with whatever else the machine does between two measurements.
    weight_bytes = sum(w.nbytes for _, w in tree_flatten(model.parameters()))
    rates, reads = [], []
    for _ in range(repeats):
        reads.append(run_worker(["bandwidth", "5"]))
        rates.append(batch1_decode_rate(predictor, prompts["single"], 4 * new_tokens))
    read_gb_s = [read["read_gb_s"] for read in reads]
    result["decode_tok_s"] = statistics.median(rates)
    result["weight_bytes"] = weight_bytes
    result["memory_read_gb_s"] = statistics.median(read_gb_s)
    result["one_thread_read_gb_s"] = statistics.median(read["one_thread_read_gb_s"] for read in reads)
    result["bandwidth_fraction"] = statistics.median(
        rate * weight_bytes / 1e9 / read for rate, read in zip(rates, read_gb_s))
    result["first_term_seconds"] = median_time(lambda: predictor.predict(prompts["single"]), repeats)
    result["ten_terms_seconds"] = median_time(lambda: predictor.continue_sequence(prompts["single"], 10), repeats)

    cache = make_prompt_cache(model)
    mx.eval(prefill(model, prompt, cache))

    def forward(n):
        def run():
            mx.eval(model(mx.zeros((1, n), dtype=mx.int32), cache=cache))
            for layer in cache:
                layer.trim(n)
        return run

    forward(8)()
    # Taken in turn, so that the machine's drift between measurements moves
    # a step and the passes it is set against alike.
    passes = {n: forward(n) for n in (1, *VERIFY_SIZES)}
    times = {n: [] for n in passes}
    for _ in range(5 * repeats):
        for n, run in passes.items():
            started = time.perf_counter()
            run()
            times[n].append(time.perf_counter() - started)
    result["step_seconds"] = statistics.median(times[1])
    for drafted in VERIFY_SIZES:
        result[f"verify{drafted}_seconds"] = statistics.median(times[drafted])

    predictor.max_new_tokens = EVAL_NEW_TOKENS  # as transformers' batched generate below
    for batch in (1, 8, 32):
        stats = DecodeStats()
        started = time.perf_counter()
        for start in range(0, len(prompts["eval"]), batch):
            predictor.continue_batch(prompts["eval"][start : start + batch], 1, stats)
        seconds = time.perf_counter() - started
        result[f"eval_b{batch}"] = {
            "sequences_per_second": len(prompts["eval"]) / seconds,
            "prefill_tok_s": stats.prefill_tokens / stats.prefill_seconds,
            "decode_tok_s": stats.generated_tokens / stats.decode_seconds,
        }
    result["peak_rss_gb"] = peak_memory_bytes() / 2**30
    return result


def worker_proxy(model_path: str, prompts: dict, repeats: int, new_tokens: int) -> dict:
    """Host-overhead-bound decoding: nextterm-mlx vs mlx-lm generate_step."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    import nextterm_mlx
    from nextterm_mlx.decode import DecodeStats
    from nextterm_mlx.vocab import encode_prompt

    predictor = nextterm_mlx.load(model_path, dtype="float32", max_new_tokens=64)
    prompt = mx.array(encode_prompt(prompts["single"]))

    def mlx_lm_rate():
        started = None
        for count, _ in enumerate(generate_step(prompt, predictor.model, max_tokens=new_tokens + 1,
                                                sampler=lambda x: mx.argmax(x, axis=-1))):
            if count == 0:
                started = time.perf_counter()
        return new_tokens / (time.perf_counter() - started)

    def ours_rate():
        stats = DecodeStats()
        while stats.generated_tokens < new_tokens:
            predictor.continue_batch([prompts["single"]], 20, stats)
        return stats.generated_tokens / stats.decode_seconds

    mlx_lm_rate(), ours_rate()
    # Taken in turn: the machine's speed drifts from minute to minute, and
    # with all of one side's repeats before the other's, the drift would
    # decide the ratio.
    rates = [(mlx_lm_rate(), ours_rate()) for _ in range(repeats)]
    return {"mlx_lm_tok_s": statistics.median(theirs for theirs, _ in rates),
            "nextterm_tok_s": statistics.median(ours for _, ours in rates)}


def worker_speculation(model_path: str, prompts: dict, repeats: int, new_tokens: int) -> dict:
    """Speculative decoding on a trained model (acceptance means nothing on
    random weights): the same answers, its acceptance and speed-up."""
    import nextterm_mlx
    from nextterm_mlx.decode import DecodeStats
    from nextterm_mlx.speculative import SpeculationStats

    plain = nextterm_mlx.load(model_path, dtype="float32")
    drafted = nextterm_mlx.load(model_path, dtype="float32", speculate=True)

    def run(predictor):
        stats = DecodeStats()
        answers = [predictor.continue_batch([terms], 1, stats)[0][0].tokens for terms in prompts["eval"]]
        return answers, stats

    run(plain), run(drafted)  # warm-up: compilation, caches
    drafted.speculation = SpeculationStats()
    plain_seconds, drafted_seconds, generated, identical = [], [], 0, True
    for _ in range(repeats):
        reference, stats = run(plain)
        plain_seconds.append(stats.decode_seconds)
        answers, stats = run(drafted)
        drafted_seconds.append(stats.decode_seconds)
        generated += stats.generated_tokens
        identical &= answers == reference
    speculation = drafted.speculation
    # Each sequence's first token comes from its prefill pass.
    passes = speculation.forward_passes + repeats * len(prompts["eval"])
    return {
        "sequences": len(prompts["eval"]),
        "identical": identical,
        "plain_decode_seconds": statistics.median(plain_seconds),
        "speculative_decode_seconds": statistics.median(drafted_seconds),
        "acceptance": speculation.accepted / max(speculation.drafted, 1),
        "tokens_per_forward_pass": generated / passes,
    }


def worker_convert(hf_path: str, out: str, bits: str | None = None) -> dict:
    """`nextterm-mlx convert`, with `--q-bits` when `bits` is given (its
    default group and mode, 64 and affine)."""
    from nextterm_mlx.convert.converter import convert_checkpoint
    from nextterm_mlx.convert.quantize import quantization_from_options

    quantization = quantization_from_options(int(bits) if bits else None, None, None, None)
    started = time.perf_counter()
    convert_checkpoint(Path(hf_path), Path(out), force=True, quantization=quantization)
    return {"seconds": time.perf_counter() - started,
            "peak_rss_gb": peak_memory_bytes() / 2**30}


def worker_gguf(hf_path: str, out: str, kind: str) -> dict:
    from scripts.gguf_export import write_gguf

    started = time.perf_counter()
    write_gguf(Path(hf_path), Path(out), kind)
    return {"seconds": time.perf_counter() - started, "bytes": Path(out).stat().st_size}


def worker_bandwidth(repeats: int) -> dict:
    """Memory read bandwidth: numpy summing 1 GiB, split over every core, median
    of `repeats`. One thread alone reads slower than all cores together, and
    decode reads its weights with every core, so the machine's bandwidth is
    what all cores read together. One thread's is reported too."""
    from concurrent.futures import ThreadPoolExecutor

    data = np.ones(2**28, dtype=np.float32)
    cores = usable_cores()
    chunks = np.array_split(data, cores)
    with ThreadPoolExecutor(cores) as pool:  # numpy's sum releases the GIL
        all_cores = median_time(lambda: list(pool.map(np.sum, chunks)), repeats)
    one_thread = median_time(lambda: data.sum(), repeats)
    return {"read_gb_s": data.nbytes / all_cores / 1e9, "one_thread_read_gb_s": data.nbytes / one_thread / 1e9,
            "cores": cores}


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# The workers that run nextterm-mlx, tuned as the command line is; the proxy's
# mlx-lm baseline shares its process, on arrays too small for the tuning to touch.
OUR_WORKERS = {"nextterm", "decode", "decode_turns", "proxy", "speculation"}
WORKERS = {"mlx_lm": worker_mlx_lm, "nextterm": worker_nextterm, "decode": worker_decode, "proxy": worker_proxy,
           "speculation": worker_speculation, "llamacpp": worker_llamacpp, "decode_turns": worker_decode_turns,
           "llamacpp_turns": worker_llamacpp_turns}


# --- orchestrator --------------------------------------------------------------------------

def run_worker(args: list[str], env: dict | None = None) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker {args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def alternate_turns(ours: list[str], ours_env: dict, theirs: list[str], turns: int) -> dict:
    """Decode tokens/s of nextterm-mlx's worker `ours` and llama.cpp's
    `theirs`, turn by turn: both stay loaded and decode in alternation, and
    which goes first alternates too. The machine's speed drifts within
    seconds, and a turn's two figures are seconds apart, where the runs
    around llama.cpp's are a minute apart."""
    with tempfile.TemporaryFile("w+") as errors:
        workers = [subprocess.Popen([sys.executable, __file__, "--worker", *args], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=errors, text=True, env={**os.environ, **env})
                   for args, env in ((ours, ours_env), (theirs, {}))]

        def answer(worker: subprocess.Popen):
            line = worker.stdout.readline()
            if not line:
                errors.seek(0)
                raise RuntimeError(f"benchmark worker {worker.args[3]} stopped:\n{errors.read()[-3000:]}")
            return json.loads(line)

        try:
            for worker in workers:
                answer(worker)  # "ready"
            rates = [[], []]
            for turn in range(turns):
                for side in (0, 1) if turn % 2 == 0 else (1, 0):
                    workers[side].stdin.write("go\n")
                    workers[side].stdin.flush()
                    rates[side].append(answer(workers[side]))
        finally:
            for worker in workers:
                worker.stdin.close()
                worker.wait()
    return {"nextterm_decode_tok_s": rates[0], "llama_cpp_decode_tok_s": rates[1]}


def run_reference(checkpoint: Path, dtype: str, prompts_file: Path, repeats: int, new_tokens: int,
                  batched_eval: bool) -> dict:
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("bench_reference.py")), str(checkpoint), dtype,
                           str(prompts_file), "--repeats", str(repeats), "--new-tokens", str(new_tokens),
                           "--eval-new-tokens", str(EVAL_NEW_TOKENS), *([] if batched_eval else ["--no-eval"])],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"transformers benchmark failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_prompts(oeis: Path | None, count: int, terms: int) -> dict:
    """A single prompt of ~109 tokens and `count` eval prompts shaped like the
    OEIS sample (its sequences when the file is there, else synthesized to
    match its spread of lengths and magnitudes)."""
    rng = random.Random(0)
    if oeis is not None and oeis.exists():
        from nextterm_mlx.sequence_files import read_sequence_file

        sequences = [s.terms for s in read_sequence_file(oeis).sequences]
        rng.shuffle(sequences)
        source = f"{oeis.name}, first {terms} terms of {count} sequences"
    else:
        sequences = [[rng.randint(0, 10 ** rng.randint(1, 6)) * (k + 1) for k in range(40)] for _ in range(count)]
        source = "synthesized: 40 terms of up to 7 digits"
    single = [1, 2, 6, 24, 120, 720, 5040, 40320, 362880, 3628800, 39916800, 479001600, 6227020800,
              87178291200, 1307674368000]
    return {"single": single, "eval": [s[:terms] for s in sequences[:count]], "source": source}


def ensure_checkpoints(work: Path) -> dict[str, Path]:
    """The random 440M-shape and proxy checkpoints, made once and kept."""
    paths = {}
    for shape in ("440m", "proxy"):
        hf = work / f"hf-{shape}"
        if not (hf / "config.json").exists():
            subprocess.run([sys.executable, str(Path(__file__).with_name("random_checkpoint.py")), str(hf),
                            "--shape", shape], check=True, capture_output=True)
        paths[shape] = hf
    return paths


def llama_cpp_missing() -> str | None:
    """Why llama.cpp can't run side by side here, or None when it can."""
    from importlib.util import find_spec

    missing = [package for module, package in (("llama_cpp", "llama-cpp-python"), ("gguf", "gguf"))
               if find_spec(module) is None]
    if not missing:
        return None
    return (f"llama.cpp comparison skipped: {' and '.join(missing)} not installed "
            "(`pip install llama-cpp-python gguf`; the first builds llama.cpp from source, about 4 minutes)")


def bench_llama_cpp(checkpoint: Path, work: Path, common: list[str], ours: dict[str, tuple[Path, dict]]) -> dict:
    """llama.cpp on a GGUF file of `checkpoint` of each type in `ours`, set
    against nextterm-mlx's decode worker on the same weights (its model
    folder and environment in `ours`), measured just before and just after
    llama.cpp: the machine's speed drifts over minutes, and a ratio of two
    figures taken minutes apart would carry that drift. The greedy tokens
    and logits are compared with the first of those runs. Then both decode
    in alternated turns (alternate_turns), for the decode ratios."""
    results = {}
    for kind, (model, env) in ours.items():
        gguf_file = work / f"440m-{kind}.gguf"
        print(f"writing the 440M-shape checkpoint as {kind.upper()} GGUF and measuring llama.cpp "
              "between two runs of nextterm-mlx", file=sys.stderr)
        export = run_worker(["gguf", str(checkpoint), str(gguf_file), kind])
        before = run_worker(["decode", str(model), *common], env)
        reference = {key: before[key] for key in ("prompt_logits", "greedy_tokens")}
        theirs = run_worker(["llamacpp", str(gguf_file), *common, json.dumps(reference)])
        after = run_worker(["decode", str(model), *common], env)
        around = {key: [run[key] for run in (before, after)] for key in ("decode_tok_s", "prefill_seconds")}
        turns = alternate_turns(["decode_turns", str(model), *common], env,
                                ["llamacpp_turns", str(gguf_file), *common], DECODE_TURNS)
        results[kind] = {**theirs, "gguf_bytes": export["bytes"], "nextterm_around": around, "turns": turns}
    return results


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def run_bench(quick: bool, json_path: Path | None, work: Path, oeis: Path | None) -> dict:
    import mlx.core as mx

    repeats = 3
    new_tokens = 16 if quick else 32
    prompts = bench_prompts(oeis, 64 if quick else 128, 12 if quick else 24)
    work.mkdir(parents=True, exist_ok=True)
    prompts_file = work / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))
    checkpoints = ensure_checkpoints(work)
    mlx_440m, mlx_440m_q8, mlx_proxy = work / "mlx-440m", work / "mlx-440m-q8", work / "mlx-proxy"
    without_llama_cpp = llama_cpp_missing()
    if without_llama_cpp:
        print(without_llama_cpp, file=sys.stderr)

    print("converting the 440M-shape checkpoint", file=sys.stderr)
    conversion = run_worker(["convert", str(checkpoints["440m"]), str(mlx_440m)])
    run_worker(["convert", str(checkpoints["440m"]), str(mlx_440m_q8), "8"])
    run_worker(["convert", str(checkpoints["proxy"]), str(mlx_proxy)])
    common = [json.dumps(prompts), str(repeats), str(new_tokens)]
    print("measuring transformers bf16 and fp32", file=sys.stderr)
    # Batched eval is set against bf16 only, as the model card loads it.
    torch_bf16 = run_reference(checkpoints["440m"], "bfloat16", prompts_file, repeats, new_tokens, batched_eval=True)
    torch_fp32 = run_reference(checkpoints["440m"], "float32", prompts_file, repeats, new_tokens, batched_eval=False)
    print("measuring stock MLX (bundled BLAS) with mlx-lm", file=sys.stderr)
    stock = run_worker(["mlx_lm", str(mlx_440m), *common])
    print("measuring nextterm-mlx", file=sys.stderr)
    ours = run_worker(["nextterm", str(mlx_440m), *common])
    print("measuring nextterm-mlx decode without the skinny-product kernel", file=sys.stderr)
    through_sgemm = run_worker(["decode", str(mlx_440m), *common], {"NEXTTERM_MLX_SKINNY": "0"})
    print("measuring nextterm-mlx with the bfloat16 weights as stored and widened to float32", file=sys.stderr)
    as_stored = run_worker(["decode", str(mlx_440m), *common])
    widened = run_worker(["decode", str(mlx_440m), *common], {"NEXTTERM_MLX_STORED_WEIGHTS": "0"})
    print("measuring nextterm-mlx with 8-bit weights", file=sys.stderr)
    eight_bit = run_worker(["decode", str(mlx_440m_q8), *common])
    llama_cpp = None if without_llama_cpp else bench_llama_cpp(
        checkpoints["440m"], work, common,
        {"f32": (mlx_440m, {"NEXTTERM_MLX_STORED_WEIGHTS": "0"}), "bf16": (mlx_440m, {}), "q8_0": (mlx_440m_q8, {})})
    print("measuring the overhead-bound proxy", file=sys.stderr)
    proxy = run_worker(["proxy", str(mlx_proxy), json.dumps(prompts), str(repeats), "200"])
    print("measuring speculative decoding on the tiny model", file=sys.stderr)
    speculation = run_worker(["speculation", "tiny", *common])

    report = {
        "date": date.today().isoformat(),
        "eval_sequences_per_second": {batch: ours[f"eval_b{batch}"]["sequences_per_second"] for batch in (1, 8, 32)},
        "quick": quick,
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
                    "device": str(mx.default_device())},
        "versions": versions(),
        "blas": ours["blas"],
        "primitives": ours["primitives"],
        "prompts": prompts["source"],
        "memory_read_gb_s": ours["memory_read_gb_s"],
        "conversion_440m": conversion,
        "transformers_bf16": torch_bf16,
        "transformers_fp32": torch_fp32,
        "stock_mlx": stock,
        "nextterm": ours,
        "nextterm_without_skinny_kernel": through_sgemm,
        "nextterm_weights_as_stored": as_stored,
        "nextterm_weights_widened": widened,
        "nextterm_weights_8bit": eight_bit,
        "llama_cpp": llama_cpp,
        "proxy": proxy,
        "speculation_tiny": speculation,
    }
    report["ratios"] = {
        "proxy_vs_mlx_lm": ratio(proxy["nextterm_tok_s"], proxy["mlx_lm_tok_s"]),
        "decode_vs_stock_mlx": ratio(ours["decode_tok_s"], stock["decode_tok_s"]),
        "prefill_vs_stock_mlx": ratio(stock["prefill_seconds"], ours["prefill_seconds"]),
        "decode_vs_transformers_fp32": ratio(ours["decode_tok_s"], torch_fp32["decode_tok_s"]),
        "decode_vs_transformers_bf16": ratio(ours["decode_tok_s"], torch_bf16["decode_tok_s"]),
        **{f"verify{k}_vs_step": ratio(ours[f"verify{k}_seconds"], ours["step_seconds"]) for k in VERIFY_SIZES},
        "decode_vs_without_skinny_kernel": ratio(ours["decode_tok_s"], through_sgemm["decode_tok_s"]),
        "decode_stored_vs_widened_weights": ratio(as_stored["decode_tok_s"], widened["decode_tok_s"]),
        "prefill_stored_vs_widened_weights": ratio(widened["prefill_seconds"], as_stored["prefill_seconds"]),
        # Of the default CPU path, prefill and decode alone.
        "peak_rss_gb": as_stored["peak_rss_gb"],
        "bandwidth_fraction": ours["bandwidth_fraction"],
        "eval_decode_b32_vs_b1": ratio(ours["eval_b32"]["decode_tok_s"], ours["eval_b1"]["decode_tok_s"]),
        # A larger batch must never be slower per sequence: both at least 1.
        "eval_sequences_b8_vs_b1": ratio(ours["eval_b8"]["sequences_per_second"],
                                         ours["eval_b1"]["sequences_per_second"]),
        "eval_sequences_b32_vs_b8": ratio(ours["eval_b32"]["sequences_per_second"],
                                          ours["eval_b8"]["sequences_per_second"]),
        "eval_vs_transformers_bf16": ratio(ours["eval_b32"]["sequences_per_second"],
                                           torch_bf16["eval_sequences_per_second"]),
        **llama_cpp_ratios(llama_cpp),
        "speculative_speedup_tiny": ratio(speculation["plain_decode_seconds"],
                                          speculation["speculative_decode_seconds"]),
        # A projection, not a measurement: tokens per verifying pass, each
        # costing what a forward over 8 tokens costs on the 440M shape.
        "speculative_projected_440m": ratio(speculation["tokens_per_forward_pass"],
                                            ratio(ours["verify8_seconds"], ours["step_seconds"])),
    }
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=1))
    return report


def turns_ratio(turns: dict) -> float:
    """The median over alternated turns of nextterm-mlx's rate over llama.cpp's."""
    return statistics.median(map(ratio, turns["nextterm_decode_tok_s"], turns["llama_cpp_decode_tok_s"]))


def llama_cpp_ratios(llama_cpp: dict | None) -> dict:
    """nextterm-mlx over llama.cpp as speed, on the same weights; none
    without llama.cpp. Decode: the median over the alternated turns of a
    turn's two rates, and, as `_around`, the mean of nextterm-mlx's runs
    around llama.cpp's over llama.cpp's. Prefill: from the runs around."""
    if not llama_cpp:
        return {}

    def ours(kind: str, key: str) -> float:
        return statistics.mean(llama_cpp[kind]["nextterm_around"][key])

    def around(kind: str) -> float:
        return ratio(ours(kind, "decode_tok_s"), llama_cpp[kind]["decode_tok_s"])

    decode = {f"decode_{name}_vs_llamacpp_{name}": kind for kind, name in (("bf16", "bf16"), ("q8_0", "q8"),
                                                                            ("f32", "f32"))}
    return {
        **{key: turns_ratio(llama_cpp[kind]["turns"]) for key, kind in decode.items()},
        **{f"{key}_around": around(kind) for key, kind in decode.items()},
        "prefill_vs_llamacpp_bf16": ratio(llama_cpp["bf16"]["prefill_seconds"], ours("bf16", "prefill_seconds")),
    }


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("mlx", "mlx-lm", "torch", "transformers", "nextterm-mlx", "llama-cpp-python", "gguf"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def markdown(report: dict) -> str:
    ours, stock, t32, t16, proxy = (report[k] for k in ("nextterm", "stock_mlx", "transformers_fp32",
                                                       "transformers_bf16", "proxy"))
    lines = [
        f"Measured {report['date']} on {report['machine']['platform']}, {report['machine']['cpus']} CPUs, "
        f"{report['blas']}; {report['primitives']}; memory read {report['memory_read_gb_s']:.1f} GB/s with every core "
        f"({report['nextterm']['one_thread_read_gb_s']:.1f} GB/s on one thread). Random 440M-shape weights.",
        "",
        "| what | prefill (s) | decode tok/s |",
        "|---|---|---|",
        f"| transformers CPU bf16 | {t16['prefill_seconds']:.2f} | {t16['decode_tok_s']:.1f} |",
        f"| transformers CPU fp32 | {t32['prefill_seconds']:.2f} | {t32['decode_tok_s']:.1f} |",
        f"| stock MLX fp32 (bundled BLAS), mlx-lm generate_step | {stock['prefill_seconds']:.2f} | "
        f"{stock['decode_tok_s']:.1f} |",
        f"| nextterm-mlx fp32 | {ours['prefill_seconds']:.2f} | {ours['decode_tok_s']:.1f} |",
        f"| nextterm-mlx fp32, every product through OpenBLAS GEMM (NEXTTERM_MLX_SKINNY=0) | | "
        f"{report['nextterm_without_skinny_kernel']['decode_tok_s']:.1f} |",
        "",
        f"Prompt {ours['prompt_tokens']} tokens. nextterm-mlx: first term {ours['first_term_seconds']:.2f} s, "
        f"10-term continuation {ours['ten_terms_seconds']:.2f} s, peak RSS {ours['peak_rss_gb']:.2f} GB; "
        f"one forward over 2/4/8 tokens "
        f"{'/'.join(str(round(ours[f'verify{k}_seconds'] * 1e3)) for k in VERIFY_SIZES)} ms "
        f"vs one step {ours['step_seconds'] * 1e3:.0f} ms. "
        f"Conversion of the 440M checkpoint {report['conversion_440m']['seconds']:.1f} s, peak RSS "
        f"{report['conversion_440m']['peak_rss_gb']:.2f} GB.",
        "",
        "| eval batch | sequences/s | prefill tok/s | decode tok/s |",
        "|---|---|---|---|",
    ]
    for batch in (1, 8, 32):
        row = ours[f"eval_b{batch}"]
        lines.append(f"| {batch} | {row['sequences_per_second']:.2f} | {row['prefill_tok_s']:.0f} | "
                     f"{row['decode_tok_s']:.1f} |")
    lines += [
        f"| transformers bf16, batch 32 | {t16['eval_sequences_per_second']:.2f} | | |",
        "",
        f"Overhead-bound proxy (28 layers, hidden 64): nextterm-mlx {proxy['nextterm_tok_s']:.0f} tok/s, "
        f"mlx-lm generate_step {proxy['mlx_lm_tok_s']:.0f} tok/s.",
        "",
        f"Speculative decoding, tiny model, {report['speculation_tiny']['sequences']} prompts: acceptance "
        f"{report['speculation_tiny']['acceptance']:.0%}, {report['speculation_tiny']['tokens_per_forward_pass']:.2f} "
        f"tokens per forward pass, identical answers: {report['speculation_tiny']['identical']}.",
        "",
    ]
    if report["llama_cpp"]:
        lines += llama_cpp_table(report)
    lines += ["| ratio | value |", "|---|---|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in report["ratios"].items()]
    return "\n".join(lines)


def llama_cpp_table(report: dict) -> list[str]:
    theirs = report["llama_cpp"]
    lines = [
        f"Side by side with llama.cpp (llama-cpp-python {theirs['bf16']['llama_cpp_python']}, "
        f"{theirs['bf16']['n_threads']} threads, context {theirs['bf16']['n_ctx']}), the same "
        f"{theirs['bf16']['prompt_tokens']}-token prompt; nextterm-mlx 8-bit is affine, group 64. nextterm-mlx's "
        "figures are its runs just before and just after llama.cpp's, and their mean.",
        "",
        "| weights | nextterm-mlx prefill (s) | llama.cpp prefill (s) | nextterm-mlx decode tok/s | "
        "llama.cpp decode tok/s | first greedy tokens equal | logits after the prompt, largest difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, name in LLAMA_CPP_KINDS.items():
        agreement, ours = theirs[kind]["agreement"], theirs[kind]["nextterm_around"]
        prefill = " and ".join(f"{s:.2f}" for s in ours["prefill_seconds"])
        decode = " and ".join(f"{r:.1f}" for r in ours["decode_tok_s"])
        lines.append(f"| {name} | {prefill} ({statistics.mean(ours['prefill_seconds']):.2f}) | "
                     f"{theirs[kind]['prefill_seconds']:.2f} | {decode} ({statistics.mean(ours['decode_tok_s']):.1f}) | "
                     f"{theirs[kind]['decode_tok_s']:.1f} | {agreement['leading_tokens_equal']} of {agreement['compared']} | "
                     f"{agreement['prompt_logits_max_abs_diff']:.3f} of {agreement['prompt_logits_max_abs']:.1f} |")
    lines += ["", f"Decode in {len(theirs['bf16']['turns']['nextterm_decode_tok_s'])} alternated turns, both "
              "loaded, which goes first alternating: the medians, and the median of each turn's ratio.", "",
              "| weights | nextterm-mlx decode tok/s | llama.cpp decode tok/s | ratio |", "|---|---|---|---|"]
    for kind, name in LLAMA_CPP_KINDS.items():
        turns = theirs[kind]["turns"]
        lines.append(f"| {name} | {statistics.median(turns['nextterm_decode_tok_s']):.1f} | "
                     f"{statistics.median(turns['llama_cpp_decode_tok_s']):.1f} | "
                     f"{turns_ratio(turns):.2f} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="nextterm-mlx speed, side by side")
    parser.add_argument("--worker", nargs="+")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "nextterm-bench")
    parser.add_argument("--oeis", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
                        / "oeis_sample_10k.txt")
    args = parser.parse_args(argv)
    if args.worker:
        name, *rest = args.worker
        if name in OUR_WORKERS:
            from nextterm_mlx.cli import keep_freed_memory

            keep_freed_memory()  # as the command line does
        if name == "convert":
            result = worker_convert(*rest)
        elif name == "gguf":
            result = worker_gguf(*rest)
        elif name == "bandwidth":
            result = worker_bandwidth(int(rest[0]))
        else:
            result = WORKERS[name](rest[0], json.loads(rest[1]), int(rest[2]), int(rest[3]),
                                   *(json.loads(extra) for extra in rest[4:]))
        print(json.dumps(result))
        return
    report = run_bench(args.quick, args.json, args.work, args.oeis)
    print(markdown(report))


if __name__ == "__main__":
    main()
