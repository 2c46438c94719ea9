"""Load on `nextterm-mlx serve`: concurrent clients against one, and against
continue_batch in-process; latency; the server's memory over a long run.

    python scripts/serve_load.py OEIS_STRIPPED_FILE [--model tiny] [--clients 32] [--requests 50]
        [--total 10000] [--rss-every 500] [--no-check] [--no-in-process] [--max-new-tokens 192]
        [--json OUT.json]

Each request is one sequence of the file without its last term, as eval
gives it. In order:
1. the answers one at a time, by `nextterm-mlx predict --json` on stdin
   (skipped with --no-check, for a large model: one at a time takes long);
2. continue_batch in this process, in batches of --clients, on the same
   sequences, the server not yet started;
3. --clients clients sending --requests each at once, then one client
   sending the same requests one after another: throughput, p50/p99 latency,
   and every answer compared with step 1's (terms, stops, tokens and
   logprobs equal);
4. more requests from --clients clients until the server has answered
   --total, and its RSS then against its RSS after its first 100.
The server's RSS is also read every --rss-every requests it answers, through
all the steps, so that a level high-water mark shows apart from a leak; and
after each step, once the server has been idle long enough to give its freed
memory back: what it then holds is what it uses, and only a leak grows it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nextterm_mlx  # noqa: E402
from nextterm_mlx.cli import keep_freed_memory  # noqa: E402
from nextterm_mlx.decode import DEFAULT_MAX_NEW_TOKENS  # noqa: E402
from nextterm_mlx.sequence_files import read_sequence_file  # noqa: E402
from nextterm_mlx.serve.worker import IDLE_SECONDS  # noqa: E402

CONSOLE_SCRIPT = Path(sys.executable).with_name("nextterm-mlx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sequences", type=Path)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=50, help="per client")
    parser.add_argument("--total", type=int, default=10_000, help="requests before the last RSS reading")
    parser.add_argument("--rss-every", type=int, default=500, help="requests between RSS readings")
    parser.add_argument("--no-check", dest="check", action="store_false")
    parser.add_argument("--no-in-process", dest="in_process", action="store_false",
                        help="skip step 2 (long on the 440M shape, where only the clients' ratio is wanted)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help="a term's token budget, on every side (random weights decode to it)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    count = args.clients * args.requests
    sequences = [s.terms[:-1] for s in read_sequence_file(args.sequences, "oeis").sequences[:count]]
    budget = args.max_new_tokens
    expected = one_at_a_time(args.model, sequences, budget) if args.check else None
    in_process = in_process_rate(args.model, sequences, args.clients, budget) if args.in_process else None

    server, port = start_server(args.model, budget)
    rss = RssSeries(server.pid, args.rss_every)
    try:
        # The first 100 are the concurrent clients', as all but the one client's are.
        many = run_clients(port, split(sequences, args.clients), expected, rss)
        print(f"{args.clients} clients: {json.dumps(many)}", file=sys.stderr, flush=True)
        rss.read_idle()
        one = run_clients(port, [sequences], expected, rss)
        print(f"one client: {json.dumps(one)}", file=sys.stderr, flush=True)
        rss.read_idle()
        served = 2 * count
        rest = [sequences[i % count] for i in range(served, max(args.total, served))]
        if rest:
            run_clients(port, split(rest, args.clients), None, rss)
        rss.read()
        rss.read_idle()
    finally:
        server.terminate()
        server.wait(60)
    print("server RSS (MB) by requests answered: " + in_megabytes(rss.readings), file=sys.stderr)
    print("server RSS (MB) once idle after each step: " + in_megabytes(rss.idle), file=sys.stderr)
    rss_first, (served, rss_last) = rss.after(FIRST_READING), rss.readings[-1]

    report = {
        "model": args.model, "clients": args.clients, "requests": count, "max_new_tokens": budget,
        "checked": args.check, "wrong": one["wrong"] + many["wrong"], "errors": one["errors"] + many["errors"],
        "one_client_per_s": one["rate"], "many_clients_per_s": many["rate"], "in_process_batch_per_s": in_process,
        "many_vs_one": many["rate"] / one["rate"],
        "many_vs_in_process": many["rate"] / in_process if in_process else None,
        "latency_p50_s": many["p50"], "latency_p99_s": many["p99"],
        f"rss_after_{FIRST_READING}_bytes": rss_first, f"rss_after_{served}_bytes": rss_last,
        "rss_growth": rss_last / rss_first - 1 if rss_first else None,
        "rss_series": rss.readings,
        "rss_idle": rss.idle, "rss_idle_growth": rss.idle[-1][1] / rss.idle[0][1] - 1,
    }
    print(json.dumps(report, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


def one_at_a_time(model: str, sequences: list[list[int]], budget: int) -> dict[tuple[int, ...], list[dict]]:
    """The command's predictions for each sequence, by its terms."""
    lines = "".join(" ".join(map(str, s)) + "\n" for s in sequences)
    done = subprocess.run([str(CONSOLE_SCRIPT), "predict", "--model", model, "--json", "--max-new-tokens",
                           str(budget)], input=lines,
                          capture_output=True, text=True, check=True)
    records = map(json.loads, done.stdout.splitlines())
    return {tuple(record["terms"]): record["predictions"] for record in records}


def in_process_rate(model: str, sequences: list[list[int]], batch: int, budget: int) -> float:
    keep_freed_memory()  # as the command does
    predictor = nextterm_mlx.load(model, max_new_tokens=budget)
    predictor.continue_batch(sequences[:batch], 1)  # warm-up
    start = time.perf_counter()
    for first in range(0, len(sequences), batch):
        predictor.continue_batch(sequences[first:first + batch], 1)
    return len(sequences) / (time.perf_counter() - start)


def start_server(model: str, budget: int) -> tuple[subprocess.Popen, int]:
    server = subprocess.Popen([str(CONSOLE_SCRIPT), "serve", "--model", model, "--port", "0",
                               "--max-new-tokens", str(budget)],
                              stderr=subprocess.PIPE, text=True)
    while "serving" not in (line := server.stderr.readline()):
        if not line:
            raise SystemExit("the server ended before serving")
    threading.Thread(target=server.stderr.read, daemon=True).start()  # so its pipe never fills
    return server, int(re.search(r"http://\S+:(\d+)/", line)[1])


def split(items: list, parts: int) -> list[list]:
    return [items[i::parts] for i in range(parts)]


def run_clients(port: int, workloads: list[list[list[int]]], expected, rss: RssSeries) -> dict:
    """Each workload sent by a client of its own, one request after another;
    `rss` counts the answers."""

    def client(workload: list[list[int]]) -> list[tuple[float, bool, bool]]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        outcomes = []
        for terms in workload:
            start = time.perf_counter()
            try:
                connection.request("POST", "/v1/predict", json.dumps({"terms": terms}),
                                   {"Content-Type": "application/json"})
                reply = connection.getresponse()
                body = json.loads(reply.read())
                failed = reply.status != 200
            except (OSError, http.client.HTTPException, ValueError):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
                failed, body = True, None
            latency = time.perf_counter() - start
            wrong = not failed and expected is not None and not same(body["predictions"], expected[tuple(terms)])
            outcomes.append((latency, failed, wrong))
            rss.answered()
        return outcomes

    start = time.perf_counter()
    with ThreadPoolExecutor(len(workloads)) as pool:
        outcomes = [o for outcome in pool.map(client, workloads) for o in outcome]
    seconds = time.perf_counter() - start
    latencies = sorted(latency for latency, _, _ in outcomes)
    return {"rate": len(outcomes) / seconds, "errors": sum(failed for _, failed, _ in outcomes),
            "wrong": sum(wrong for _, _, wrong in outcomes), "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def same(got: list[dict], expected: list[dict]) -> bool:
    """The predictions equal, logprobs to the last bit: on a Linux CPU a batch
    computes each sequence's very numbers (Kernels.alike_rows)."""
    fields = ("value", "stop", "tokens", "logprob")
    return len(got) == len(expected) and all(all(g[k] == e[k] for k in fields) for g, e in zip(got, expected))


# Issue #31 compares the RSS at the end with the RSS after this many requests.
FIRST_READING = 100


class RssSeries:
    """The server's RSS after its first FIRST_READING answers and after every
    `every`, counted over all the steps, and once idle after a step:
    (answers, bytes) pairs in order."""

    def __init__(self, pid: int, every: int):
        self.pid, self.every = pid, every
        self.count = 0
        self.readings: list[tuple[int, int]] = []
        self.idle: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def answered(self) -> None:
        with self.lock:
            self.count += 1
            if self.count == FIRST_READING or self.count % self.every == 0:
                self.read()

    def read(self) -> None:
        """A reading now, unless there is one at this count already."""
        if not self.readings or self.readings[-1][0] != self.count:
            self.readings.append((self.count, rss_bytes(self.pid)))

    def read_idle(self) -> None:
        """A reading once the server, given no request, has released its
        freed memory (ModelWorker.next_round)."""
        time.sleep(IDLE_SECONDS + 1)
        self.idle.append((self.count, rss_bytes(self.pid)))

    def after(self, count: int) -> int | None:
        return next((size for n, size in self.readings if n == count), None)


def in_megabytes(readings: list[tuple[int, int]]) -> str:
    return ", ".join(f"{n}: {size / 1e6:.0f}" for n, size in readings)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


if __name__ == "__main__":
    os.environ.setdefault("NEXTTERM_MLX_DEVICE", "cpu")
    main()
