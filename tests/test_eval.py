"""`nextterm-mlx eval` against answers known from the transformers reference.

The sequence files are built from the reference cases: a sequence is the
case's prompt terms followed by the term transformers predicted (so the
model must get it right) or by a different number (so it must get it
wrong); the expected accuracy is known before the run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import reference
from nextterm_mlx.sequence_files import read_sequence_file

FIXTURE = "untied-v5"


def spelled(tokens):
    """The integer a reference term's tokens spell (separator dropped), or None."""
    text = "".join("-" if t == 10 else str(t) if t < 10 else "?" for t in tokens[:-1])
    try:
        return int(text) if tokens[-1] == 11 and text == str(int(text)) else None
    except ValueError:
        return None


def reference_sequences(limit=None):
    """(terms, reference next term or None, stop token) of the 192-token single-term cases."""
    cases = [c for c in reference(FIXTURE)["cases"] if c["max_new_tokens"] == 192 and c["continue"] == 1]
    return [(c["terms"], spelled(c["generated"][0]), c["generated"][0][-1]) for c in cases[:limit]]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def known_answer_file(tmp_path):
    """Every other answerable case right, the rest wrong; the count of right ones."""
    rows, right = [], 0
    for index, (terms, value, _) in enumerate(reference_sequences()):
        if value is not None and index % 2 == 0:
            rows.append({"id": f"s{index}", "seq": terms + [value]})
            right += 1
        else:
            rows.append({"id": f"s{index}", "seq": terms + [(value or 0) + 1]})
    return write_jsonl(tmp_path / "seqs.jsonl", rows), right, len(rows)


def nextterm(*args, check=True, **kwargs):
    done = subprocess.run(["nextterm-mlx", *map(str, args)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, **kwargs)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def without_timing(summary):
    return {k: v for k, v in summary.items() if k not in ("throughput", "ranks")}


def test_formats_are_detected_and_bad_lines_skipped(tmp_path):
    (tmp_path / "a.txt").write_text("A000045 ,0,1,1,2,3,5,\nA000001 ,1,x,2,\n\nA000002 ,1,2,\n")
    oeis = read_sequence_file(tmp_path / "a.txt")
    assert oeis.format == "oeis" and [s.id for s in oeis.sequences] == ["A000045", "A000002"]
    assert oeis.sequences[0].terms == [0, 1, 1, 2, 3, 5]
    assert oeis.problems == ["line 2: 'x' is not an integer"]

    (tmp_path / "b.txt").write_text("1, 2, 3\n4 5 -6\n7,,8\n1.5 2\n")
    plain = read_sequence_file(tmp_path / "b.txt")
    assert plain.format == "plain" and [s.terms for s in plain.sequences] == [[1, 2, 3], [4, 5, -6], [7, 8]]
    assert plain.problems == ["line 4: '1.5' is not an integer"]

    (tmp_path / "c.jsonl").write_text('{"seq": [1, 2], "id": "x"}\n{"seq": [3]}\nnot json\n{"seq": [1, 2.5]}\n'
                                      '{"seq": [4], "id": "x"}\n{"seq": ["123456789012345678901234567890"]}\n')
    jsonl = read_sequence_file(tmp_path / "c.jsonl")
    assert jsonl.format == "jsonl"
    assert [(s.id, s.terms) for s in jsonl.sequences] == [("x", [1, 2]), ("line2", [3]),
                                                          ("line6", [123456789012345678901234567890])]
    assert [p.split(":")[0] for p in jsonl.problems] == ["line 3", "line 4", "line 5"]


def test_accuracy_matches_the_known_answers(tmp_path, converted):
    path, right, total = known_answer_file(tmp_path)
    with path.open("a") as f:
        f.write('{"seq": [5]}\n{"broken\n')
    done = nextterm("eval", path, "--model", converted[FIXTURE], "--json", "--batch-size", 8)
    summary = json.loads(done.stdout)
    assert (summary["correct"], summary["sequences"]) == (right, total)
    assert summary["accuracy"] == pytest.approx(right / total)
    assert summary["ci95"][0] < right / total < summary["ci95"][1]
    assert summary["skipped"] == {"too_short": 1, "too_long": 0, "unreadable_lines": 1}
    assert "line " in done.stderr and "(skipped)" in done.stderr
    stops = [stop for _, _, stop in reference_sequences()]
    values = [value for _, value, _ in reference_sequences()]
    assert summary["absent"] == sum(stop != 11 for stop in stops)  # eos, pad, or out of tokens
    assert summary["unparseable"] == sum(stop == 11 and v is None for stop, v in zip(stops, values))
    assert sum(b["n"] for b in summary["by_answer_digits"].values()) == total


def test_batched_eval_equals_one_at_a_time_predict(tmp_path, converted):
    path, _, total = known_answer_file(tmp_path)
    out = tmp_path / "results.jsonl"
    nextterm("eval", path, "--model", converted[FIXTURE], "--batch-size", 13, "--out", out)
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == total
    import nextterm_mlx

    predictor = nextterm_mlx.load(converted[FIXTURE])
    for result, (terms, value, _) in zip(results, reference_sequences()):
        assert result["predicted"] == predictor.predict(terms).value == value


def test_given_and_predict_terms_use_the_reference_continuations(tmp_path, converted):
    cases = [c for c in reference(FIXTURE)["cases"] if c["continue"] > 1 and c["max_new_tokens"] == 192
             and len(c["generated"]) == c["continue"] and all(spelled(g) is not None for g in c["generated"])]
    assert cases
    rows = [{"seq": c["terms"] + [spelled(g) for g in c["generated"]] + [0, 0]} for c in cases]
    path = write_jsonl(tmp_path / "cont.jsonl", rows)
    for case, row in list(zip(cases, rows))[:3]:
        done = nextterm("eval", write_jsonl(tmp_path / "one.jsonl", [row]), "--model", converted[FIXTURE],
                        "--given", len(case["terms"]), "--predict-terms", case["continue"], "--json")
        assert json.loads(done.stdout)["correct"] == 1
    done = nextterm("eval", path, "--model", converted[FIXTURE], "--predict-terms", 2, "--json")
    assert json.loads(done.stdout)["correct"] == 0  # the last two terms are the appended zeros


def test_compare_reports_agreement(tmp_path, converted):
    path, right, total = known_answer_file(tmp_path)
    same = json.loads(nextterm("eval", path, "--model", converted[FIXTURE], "--compare", converted[FIXTURE],
                               "--json").stdout)
    assert same["compare"]["agreement"] == 1.0 and same["compare"]["other_correct"] == right

    outs = {}
    for name in (FIXTURE, "untied-v4"):
        outs[name] = tmp_path / f"{name}.jsonl"
        nextterm("eval", path, "--model", converted[name], "--out", outs[name])
    mine, theirs = ([json.loads(x)["predicted"] for x in outs[n].read_text().splitlines()] for n in outs)
    other = json.loads(nextterm("eval", path, "--model", converted[FIXTURE], "--compare", converted["untied-v4"],
                                "--json").stdout)
    assert other["compare"]["agreement"] == pytest.approx(sum(a == b for a, b in zip(mine, theirs)) / total)


def test_existing_results_need_resume_or_force(tmp_path, converted):
    path, _, _ = known_answer_file(tmp_path)
    out = tmp_path / "r.jsonl"
    out.write_text("")
    done = nextterm("eval", path, "--model", converted[FIXTURE], "--out", out, check=False)
    assert done.returncode == 2 and "--resume" in done.stderr and done.stderr.count("\n") == 1


def test_plot_is_drawn(tmp_path, converted):
    path, _, _ = known_answer_file(tmp_path)
    nextterm("eval", path, "--model", converted[FIXTURE], "--plot", tmp_path / "acc.png")
    assert (tmp_path / "acc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def slow_file(tmp_path, copies=12):
    """Many sequences whose reference answers run to the token budget: slow enough to kill mid-run."""
    rows = [{"id": f"c{copy}-{i}", "seq": terms + [value if value is not None else 1]}
            for copy in range(copies) for i, (terms, value, _) in enumerate(reference_sequences())]
    return write_jsonl(tmp_path / "slow.jsonl", rows), len(rows)


def test_a_killed_run_resumes_to_the_same_summary(tmp_path, converted):
    path, total = slow_file(tmp_path)
    model = converted[FIXTURE]
    full = json.loads(nextterm("eval", path, "--model", model, "--json", "--batch-size", 4).stdout)

    out = tmp_path / "r.jsonl"
    process = subprocess.Popen(["nextterm-mlx", "eval", str(path), "--model", str(model), "--out", str(out),
                                "--batch-size", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 40):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = out.read_text().count("\n")
    assert 40 <= written < total, written
    with out.open("a") as f:
        f.write('{"id": "c0-0", "given": 3, "exp')  # as if killed mid-line

    resumed = json.loads(nextterm("eval", path, "--model", model, "--json", "--batch-size", 4, "--out", out,
                                  "--resume").stdout)
    assert resumed["throughput"]["sequences_evaluated"] <= total - written + 4
    assert without_timing(resumed) == without_timing(full)
    assert len({json.loads(line)["id"] for line in out.read_text().splitlines()}) == total


def test_two_ranks_on_loopback_equal_one(tmp_path, converted):
    path, _ = slow_file(tmp_path, copies=1)
    model = converted[FIXTURE]
    single_out, merged_out = tmp_path / "single.jsonl", tmp_path / "merged.jsonl"
    single = json.loads(nextterm("eval", path, "--model", model, "--json", "--out", single_out).stdout)
    launcher = Path(sys.executable).with_name("mlx.launch")
    command = [str(launcher) if launcher.exists() else "mlx.launch", "-n", "2", "--backend", "ring", "--",
               "nextterm-mlx", "eval", str(path), "--model", str(model), "--json", "--out", str(merged_out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if line.startswith("{")]
    merged = json.loads(line)
    assert merged["ranks"] == 2
    assert without_timing(merged) == without_timing(single)
    assert merged_out.read_text() == single_out.read_text()
    assert sorted(p.name for p in tmp_path.glob("merged.jsonl.rank*")) == ["merged.jsonl.rank0-of-2",
                                                                          "merged.jsonl.rank1-of-2"]


def test_summary_counts_every_stop_reason():
    """Hand-made result lines: a beam search's no_candidate leaves no answer, as eos, pad and max_tokens do."""
    from nextterm_mlx.evaluate import summarize

    stops = ["separator", "separator", "malformed", "eos", "pad", "max_tokens", "no_candidate", "no_candidate"]
    results = [{"id": str(i), "given": 3, "expected": 5, "predicted": 5 if i == 0 else None, "correct": i == 0,
                "stop": stop} for i, stop in enumerate(stops)]
    summary = summarize(results)
    assert (summary["unparseable"], summary["absent"]) == (1, 5)
    assert summary["stops"] == {"eos": 1, "malformed": 1, "max_tokens": 1, "no_candidate": 2, "pad": 1,
                                "separator": 2}


def test_beam_eval_honours_the_batch_size_and_reports_its_speed(tmp_path, converted):
    path, _, total = known_answer_file(tmp_path)
    runs = {}
    for batch_size in (1, 5):
        out = tmp_path / f"beams-b{batch_size}.jsonl"
        summary = json.loads(nextterm("eval", path, "--model", converted[FIXTURE], "--beams", 3, "--batch-size",
                                      batch_size, "--json", "--out", out).stdout)
        assert summary["throughput"]["generated_tokens_per_second"] > 0
        assert summary["throughput"]["prefill_tokens_per_second"] > 0
        assert sum(summary["stops"].values()) == total
        runs[batch_size] = [{k: r[k] for k in ("id", "candidates", "stop")} for r in map(json.loads, out.open())]
    assert runs[5] == runs[1]
    # Each sequence's beam search on its own, through the API.
    import nextterm_mlx

    predictor = nextterm_mlx.load(converted[FIXTURE])
    for record, (terms, _, _) in zip(runs[1], reference_sequences()):
        assert record["candidates"] == [c.value for c in predictor.candidates(terms, beams=3).candidates]


def test_speculate_with_a_batch_or_beams_is_refused_in_one_line(tmp_path, converted):
    path, _, _ = known_answer_file(tmp_path)
    done = nextterm("eval", path, "--model", converted[FIXTURE], "--speculate", check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--batch-size 1" in done.stderr, done.stderr
    done = nextterm("eval", path, "--model", converted[FIXTURE], "--speculate", "--batch-size", 1, "--beams", 2,
                    check=False)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--beams" in done.stderr, done.stderr
    one = json.loads(nextterm("eval", path, "--model", converted[FIXTURE], "--speculate", "--batch-size", 1,
                              "--json").stdout)
    plain = json.loads(nextterm("eval", path, "--model", converted[FIXTURE], "--json").stdout)
    assert without_timing(one) == without_timing(plain)


def test_eval_hands_mlx_its_cached_buffers_back_after_each_batch(tmp_path, converted, monkeypatch):
    import mlx.core as mx

    import nextterm_mlx
    from nextterm_mlx import evaluate
    from nextterm_mlx.evaluate import Item, run_eval

    held_before_clearing = []
    clear_cache = mx.clear_cache

    def recording_clear_cache():
        held_before_clearing.append(mx.get_cache_memory())
        clear_cache()

    monkeypatch.setattr(evaluate.mx, "clear_cache", recording_clear_cache)
    items = [Item(f"s{i}", terms, [value]) for i, (terms, value, _) in enumerate(reference_sequences(6))]
    run_eval(nextterm_mlx.load(converted[FIXTURE]), items, None, batch_size=2, progress=False)
    assert len(held_before_clearing) == 3
    assert all(held > 0 for held in held_before_clearing)  # there was something to give back


@pytest.mark.parametrize("argv", [
    ["eval", "FILE", "--speculate"],
    ["eval", "FILE", "--speculate", "--batch-size", "1", "--beams", "3"],
    ["predict", "--speculate", "--beams", "3", "1", "2", "3"],
])
def test_speculation_it_cannot_do_is_refused_before_a_model_is_looked_for(tmp_path, argv):
    path, _, _ = known_answer_file(tmp_path)
    # A model that does not exist: the refusal must come first.
    argv = [str(path) if a == "FILE" else a for a in argv] + ["--model", str(tmp_path / "no-such-model")]
    done = nextterm(*argv, check=False)
    assert done.returncode == 2 and "--speculate" in done.stderr and "no-such-model" not in done.stderr
    assert done.stderr.count("\n") == 1
