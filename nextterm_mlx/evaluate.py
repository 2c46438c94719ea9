"""Next-term accuracy on a file of sequences, batched and resumable.

The default task is the published eval's: predict each sequence's last term
from all the others. Results stream to a JSONL file one line per sequence,
written after each batch, so a crash or Ctrl-C loses at most the batch in
flight and `resume` carries on from what is there. The summary is computed
from the result lines alone, so a resumed run ends with the same summary as
an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import mlx.core as mx
from tqdm import tqdm

from .decode import DecodeStats, StopReason
from .distributed import all_gather_bytes, world
from .errors import UserError
from .beam import Candidates
from .explain import hybrid_values
from .predictor import Predictor
from .sequence_files import Sequence
from .vocab import encode_prompt


@dataclass
class Task:
    """Which terms are given and which are to be predicted.

    given None: all but the last `predict_terms` terms are given (the
    published eval); given K: the first K terms, predicting the next ones.
    """

    given: Optional[int] = None
    predict_terms: int = 1

    def split(self, terms: list[int]) -> Optional[tuple[list[int], list[int]]]:
        """(given, expected), or None when the sequence is too short."""
        given = self.given if self.given is not None else len(terms) - self.predict_terms
        if given < 1 or len(terms) < given + self.predict_terms:
            return None
        return terms[:given], terms[given : given + self.predict_terms]


@dataclass
class Item:
    id: str
    given: list[int]
    expected: list[int]


@dataclass
class Plan:
    items: list[Item]
    skipped: dict[str, int] = field(default_factory=dict)


def plan_items(
    sequences: list[Sequence],
    task: Task,
    max_positions: int,
    limit: Optional[int] = None,
    shuffle: bool = False,
    seed: int = 0,
    known: Optional[Callable[[list[int]], bool]] = None,
) -> Plan:
    """The items to evaluate, in a reproducible order, and what was skipped;
    `known` tells the given terms to leave out (those the OEIS holds)."""
    sequences = list(sequences)
    if shuffle:
        random.Random(seed).shuffle(sequences)
    plan = Plan([], {"too_short": 0, "too_long": 0, **({"known_in_oeis": 0} if known else {})})
    for sequence in sequences:
        split = task.split(sequence.terms)
        if split is None:
            plan.skipped["too_short"] += 1
        elif len(encode_prompt(split[0])) > max_positions:
            plan.skipped["too_long"] += 1
        elif known is not None and known(split[0]):
            plan.skipped["known_in_oeis"] += 1
        else:
            plan.items.append(Item(sequence.id, *split))
        if limit is not None and len(plan.items) == limit:
            break
    return plan


def result_line(item: Item, predictions: list, other: Optional[list] = None) -> dict[str, Any]:
    """One line of the results file."""
    values = [p.value for p in predictions]
    single = len(item.expected) == 1
    line = {
        "id": item.id,
        "given": len(item.given),
        "expected": item.expected[0] if single else item.expected,
        "predicted": values[0] if single else values,
        "correct": values == item.expected,
        "stop": predictions[-1].stop,
        "tokens": sum(len(p.tokens) for p in predictions),
    }
    if other is not None:
        other_values = [p.value for p in other]
        line["other_predicted"] = other_values[0] if single else other_values
        line["other_correct"] = other_values == item.expected
    return line


def with_fit(line: dict[str, Any], item: Item, spare: int) -> dict[str, Any]:
    """A result line with the simplest verified fit's answer (None: no fit)
    and the hybrid's: the fit's where there is one, else the model's."""
    single = len(item.expected) == 1
    model_values = [line["predicted"]] if single else line["predicted"]
    hybrid, fitted = hybrid_values(item.given, model_values, spare)
    line["fit"] = None if fitted is None else fitted[0] if single else fitted
    line["fit_correct"] = fitted == item.expected
    line["hybrid_correct"] = hybrid == item.expected
    return line


def beam_result_line(item: Item, found: Candidates, beams: int) -> dict[str, Any]:
    """One line of the results file when ranking candidates: top-1 and top-K."""
    values = [c.value for c in found.candidates]
    return {
        "id": item.id,
        "given": len(item.given),
        "expected": item.expected[0],
        "predicted": values[0] if values else None,
        "correct": bool(values) and values[0] == item.expected[0],
        "top_k_correct": item.expected[0] in values,
        "beams": beams,
        "candidates": values,
        "stop": found.stop,
        "tokens": len(found.candidates[0].tokens) if values else 0,
    }


def read_results(path: Path) -> list[dict[str, Any]]:
    """The complete result lines of a results file; a line cut short by a
    crash mid-write is dropped (that sequence is evaluated again)."""
    results = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "id" in record and line.endswith("\n"):
                results.append(record)
    return results


def write_results(path: Path, results: list[dict[str, Any]]) -> None:
    """Replace `path` with exactly these lines, atomically."""
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w") as f:
        for record in results:
            f.write(json.dumps(record) + "\n")
    os.replace(partial, path)


def run_eval(
    predictor: Predictor,
    items: list[Item],
    out: Optional[Path],
    *,
    batch_size: int = 16,
    resume: bool = False,
    other: Optional[Predictor] = None,
    progress: bool = True,
    beams: int = 1,
    hybrid_spare: Optional[int] = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Evaluate `items`, appending to `out` batch by batch; all results in
    the items' order (earlier ones included when resuming) and this run's
    work counters. Beam search runs `batch_size` sequences at a time too;
    speculative decoding runs one sequence at a time, so it needs a
    `batch_size` of 1, and it drafts for greedy decoding only. With
    `hybrid_spare`, each line also holds the exact guessers' answer (fits
    verified on that many spare terms) and the hybrid's."""
    check_speculation(predictor.speculate, beams, batch_size)
    done: list[dict[str, Any]] = []
    if out is not None and resume and out.exists():
        done = read_results(out)
        wanted = {item.id for item in items}
        foreign = [record["id"] for record in done if record["id"] not in wanted]
        if foreign:
            raise UserError(
                f"{out} holds results for sequences this run does not evaluate (first {foreign[0]!r}): it is "
                "another run's; give the same file, --limit and --shuffle/--seed, or a new --out"
            )
        write_results(out, done)  # drop a line cut short by a crash
    elif out is not None:
        write_results(out, [])
    finished = {record["id"] for record in done}
    todo = [item for item in items if item.id not in finished]
    # Sorted by length, a batch holds many prompts of each length, and those
    # prefill as one (see prefill_unevaluated).
    todo.sort(key=lambda item: len(encode_prompt(item.given)))

    stats, other_stats = DecodeStats(), DecodeStats()
    correct = sum(record["correct"] for record in done)
    started = time.perf_counter()
    bar = tqdm(total=len(items), initial=len(done), unit="seq", desc="eval", disable=not progress or None,
               dynamic_ncols=True)
    sink = open(out, "a") if out is not None else None
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            given = [item.given for item in batch]
            n_terms = len(batch[0].expected)
            if beams > 1:
                found = predictor.candidates_batch(given, beams, stats=stats)
                lines = [beam_result_line(item, f, beams) for item, f in zip(batch, found)]
            else:
                predictions = predictor.continue_batch(given, n_terms, stats)
                others = other.continue_batch(given, n_terms, other_stats) if other else [None] * len(batch)
                lines = [result_line(item, p, o) for item, p, o in zip(batch, predictions, others)]
            if hybrid_spare is not None:
                lines = [with_fit(line, item, hybrid_spare) for line, item in zip(lines, batch)]
            if sink is not None:
                sink.write("".join(json.dumps(line) + "\n" for line in lines))
                sink.flush()
            done += lines
            correct += sum(line["correct"] for line in lines)
            # The batch's KV caches are free again; MLX would keep their
            # buffers for reuse, which a laptop's memory feels over a long eval.
            mx.clear_cache()
            bar.update(len(batch))
            bar.set_postfix(accuracy=f"{correct / len(done):.1%}")
    finally:
        bar.close()
        if sink is not None:
            sink.close()
    order = {item.id: index for index, item in enumerate(items)}
    done.sort(key=lambda record: order.get(record["id"], len(order)))
    if out is not None:
        write_results(out, done)
    work = {
        "sequences": len(todo),
        "seconds": time.perf_counter() - started,
        "generated_tokens": stats.generated_tokens,
        "prefill_tokens": stats.prefill_tokens,
        "prefill_seconds": stats.prefill_seconds,
        "decode_seconds": stats.decode_seconds,
    }
    return done, work


def throughput(work: dict[str, float]) -> dict[str, float]:
    """Rates from work counters (summed over ranks, seconds the slowest's)."""

    def rate(amount: str, seconds: str) -> float:
        return work[amount] / work[seconds] if work[seconds] else 0.0

    return {
        "sequences_evaluated": work["sequences"],
        "seconds": work["seconds"],
        "sequences_per_second": rate("sequences", "seconds"),
        "generated_tokens_per_second": rate("generated_tokens", "seconds"),
        "prefill_tokens_per_second": rate("prefill_tokens", "prefill_seconds"),
        "decode_tokens_per_second": rate("generated_tokens", "decode_seconds"),
    }


def evaluate(predictor: Predictor, items: list[Item], out: Optional[Path], **options: Any) -> Optional[dict[str, Any]]:
    """Evaluate `items` on this process's share of the distributed group and
    return the summary of all ranks' results on rank 0 (None elsewhere).
    Each rank keeps its own part file beside `out` for --resume; rank 0
    writes the merged results to `out`. `options` are run_eval's."""
    group = world()
    rank, size = group.rank(), group.size()
    part = out if out is None or size == 1 else out.with_name(f"{out.name}.rank{rank}-of-{size}")
    options["progress"] = options.get("progress", True) and rank == 0
    results, work = run_eval(predictor, items[rank::size], part, **options)
    if size > 1:
        shares = [json.loads(b) for b in all_gather_bytes(group, json.dumps([results, work]).encode())]
        order = {item.id: index for index, item in enumerate(items)}
        results = sorted((r for share_results, _ in shares for r in share_results), key=lambda r: order[r["id"]])
        work = {key: sum(share_work[key] for _, share_work in shares) for key in work}
        work["seconds"] = max(share_work["seconds"] for _, share_work in shares)
        if rank != 0:
            return None
        if out is not None:
            write_results(out, results)
    summary = summarize(results)
    summary["throughput"] = throughput(work)
    summary["ranks"] = size
    return summary


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """95% confidence interval of a proportion (Wilson score)."""
    if total == 0:
        return (0.0, 0.0)
    p = correct / total
    denominator = 1 + z * z / total
    center = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, center - half), min(1.0, center + half))


GIVEN_BUCKETS = ((1, 4), (5, 9), (10, 19), (20, 39), (40, 79), (80, None))
DIGIT_BUCKETS = ((1, 1), (2, 2), (3, 3), (4, 5), (6, 9), (10, 19), (20, None))


def bucket(value: int, buckets) -> str:
    for low, high in buckets:
        if high is None or value <= high:
            return f"{low}+" if high is None else str(low) if low == high else f"{low}-{high}"
    raise AssertionError("the last bucket is open")


def answer_digits(expected: Any) -> int:
    first = expected[0] if isinstance(expected, list) else expected
    return len(str(abs(first)))


def accuracy_table(results: Iterable[dict[str, Any]], key, buckets) -> dict[str, dict[str, Any]]:
    """Accuracy per bucket of key(result), in the buckets' order."""
    groups: dict[str, list[bool]] = {bucket(low, buckets): [] for low, _ in buckets}
    for record in results:
        groups[bucket(key(record), buckets)].append(bool(record["correct"]))
    return {name: {"n": len(v), "accuracy": sum(v) / len(v)} for name, v in groups.items() if v}


# The stops that leave no answer at all (a malformed one is "unparseable").
ABSENT = (StopReason.EOS, StopReason.PAD, StopReason.MAX_TOKENS, StopReason.NO_CANDIDATE)


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy and its breakdown, from the result lines alone."""
    total = len(results)
    correct = sum(bool(r["correct"]) for r in results)
    wrong = [r for r in results if not r["correct"]]
    summary = {
        "sequences": total,
        "correct": correct,
        "accuracy": correct / total if total else 0.0,
        "ci95": list(wilson_interval(correct, total)),
        "unparseable": sum(r["stop"] == StopReason.MALFORMED for r in wrong),
        "absent": sum(r["stop"] in ABSENT for r in wrong),
        "stops": dict(sorted(Counter(str(r["stop"]) for r in results).items())),
        "by_answer_digits": accuracy_table(results, lambda r: answer_digits(r["expected"]), DIGIT_BUCKETS),
        "by_given_terms": accuracy_table(results, lambda r: r["given"], GIVEN_BUCKETS),
    }
    if results and "top_k_correct" in results[0]:
        summary["beams"] = results[0]["beams"]
        summary["top_k_accuracy"] = sum(bool(r["top_k_correct"]) for r in results) / total
    if results and "other_predicted" in results[0]:
        other_correct = sum(bool(r["other_correct"]) for r in results)
        summary["compare"] = {
            "other_correct": other_correct,
            "other_accuracy": other_correct / total if total else 0.0,
            "agreement": sum(r["predicted"] == r["other_predicted"] for r in results) / total if total else 0.0,
        }
    if results and all("fit" in r for r in results):  # a resumed run without --hybrid has none
        summary["hybrid"] = hybrid_summary(results)
    return summary


def hybrid_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The model alone, the guessers alone and the hybrid, on the same sequences."""
    total = len(results)
    answered = [r for r in results if r["fit"] is not None]
    fit_correct = sum(bool(r["fit_correct"]) for r in results)
    hybrid_correct = sum(bool(r["hybrid_correct"]) for r in results)
    model_correct = sum(bool(r["correct"]) for r in results)
    return {
        "model": {"correct": model_correct, "accuracy": model_correct / total,
                  "ci95": list(wilson_interval(model_correct, total))},
        "guessers": {
            "answered": len(answered),
            "correct": fit_correct,
            "coverage": len(answered) / total,
            "precision": fit_correct / len(answered) if answered else 0.0,
            "precision_ci95": list(wilson_interval(fit_correct, len(answered))),
            "accuracy": fit_correct / total,
            "ci95": list(wilson_interval(fit_correct, total)),
        },
        "hybrid": {"correct": hybrid_correct, "accuracy": hybrid_correct / total,
                   "ci95": list(wilson_interval(hybrid_correct, total))},
        "agreement": sum(r["fit"] == r["predicted"] for r in answered) / len(answered) if answered else 0.0,
    }


def check_speculation(speculate: bool, beams: int, batch_size: int) -> None:
    """Refuse what speculative decoding cannot do, before a model is loaded."""
    if speculate and beams > 1:
        raise UserError("--speculate drafts for greedy decoding, and beam search does not use it; "
                        "drop --speculate or --beams")
    if speculate and batch_size > 1:
        raise UserError(f"--speculate decodes one sequence at a time, so it cannot run batches of {batch_size}; "
                        "pass --batch-size 1, or drop --speculate")


def check_results_file(out: Optional[Path], resume: bool, force: bool) -> None:
    if out is None:
        return
    if not out.parent.is_dir():
        raise UserError(f"the folder of --out {out} does not exist; create it or choose another path")
    if out.exists() and not (resume or force):
        raise UserError(f"{out} already exists; pass --resume to continue that run or --force to start over")
