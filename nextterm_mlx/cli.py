"""The `nextterm-mlx` command: thin wrappers over the Python API."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import click

from . import __version__
from .vocab import MAX_NEW_TOKENS as DEFAULT_MAX_NEW_TOKENS
from .errors import UserError
from .guess import DEFAULT_BUDGET, DEFAULT_SPARE
from .hub import DEFAULT_REPO, PUBLISHED
from .dtypes import DTYPES
from .sequence_files import FORMATS
from .terms import NoTerms, parse_text


def keep_freed_memory() -> None:
    if sys.platform.startswith("linux"):
        from . import settings
        from .cpu import heap

        heap.keep_freed_memory(settings.from_environment())


def parse_terms(words: list[str]) -> list[int]:
    """Terms typed as `1 2 3`, `1,2,3` or `1, 2, 3`, negative ones bare
    (nextterm_mlx.terms has the rules)."""
    try:
        return parse_text(" ".join(words))
    except NoTerms:
        raise UserError("no terms given; give the sequence's terms, e.g. nextterm-mlx predict 1 1 2 3 5 8") from None
    except ValueError as e:
        raise UserError(f"{e}; give whole numbers such as 1 2 3 or -4") from None


def model_options(command):
    """The options that choose and load a model, shared by every command that
    loads one; their names are nextterm_mlx.load's keyword arguments."""
    options = [
        click.option("--model", metavar="NAME|PATH", default=None,
                     help="A published checkpoint's name, a NextTerm checkpoint folder (HF format, converted "
                     "once into the cache) or a folder made by `nextterm-mlx convert`. "
                     "Default: NextTerm-440M final_latest from the hub."),
        click.option("--checkpoint", metavar="NAME", default=None,
                     help="A published checkpoint: final_latest (default), best_val, or a token count "
                     "(see `nextterm-mlx checkpoints`)."),
        click.option("--repo", metavar="ORG/NAME", default=None, help=f"Hub repo (default {DEFAULT_REPO})."),
        click.option("--revision", metavar="REV", default=None, help="Hub branch, tag or commit (default main)."),
        click.option("--dtype", type=click.Choice(list(DTYPES)), default=None,
                     help="Compute dtype (default float32, the reference's: exact answers on every device; "
                     "bfloat16 or float16 trade that for speed on a GPU)."),
        click.option("--device", type=click.Choice(["cpu", "gpu"]), default=None,
                     help="Compute on the CPU or the GPU (default: $NEXTTERM_MLX_DEVICE, else MLX's default, "
                     "the GPU on a Mac)."),
        click.option("--cache-dir", metavar="DIR", default=None,
                     help="Converted-model cache (default ~/.cache/nextterm-mlx or $NEXTTERM_MLX_CACHE)."),
        *quantization_options(),
        click.option("--speculate", is_flag=True,
                     help="Speculative decoding with drafts from the sequence itself: same answers, "
                     "fewer forward passes."),
        click.option("--keep-quantized", is_flag=True,
                     help="On a CPU, run quantized weights as they are (by default they are dequantized "
                     "to the compute dtype: MLX's CPU quantized matmul is several times slower)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def quantization_options() -> list:
    return [
        click.option("--q-bits", type=click.Choice(["4", "8"]), default=None, callback=as_int,
                     help="Quantize the weights to 4 or 8 bits (embedding and head stay unquantized)."),
        click.option("--q-group-size", type=click.Choice(["32", "64", "128"]), default=None, callback=as_int,
                     help="Quantization group size (default 64; 32 for mxfp4/mxfp8, 16 for nvfp4)."),
        click.option("--q-mode", type=click.Choice(["affine", "mxfp4", "mxfp8", "nvfp4"]), default=None,
                     help="Quantization mode (default affine)."),
        click.option("--q-recipe", type=click.Choice(["mixed_4_8"]), default=None,
                     help="8 bits for v_proj and down_proj in the first, last and every third layer; 4 elsewhere."),
    ]


def as_int(ctx, param, value):
    return None if value is None else int(value)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nextterm-mlx")
def cli() -> None:
    """Predict the next terms of integer sequences with NextTerm-440M on MLX."""


def read_sequences(words: tuple[str, ...], command: str) -> list[list[int]]:
    """The sequence typed after the command, or with none typed, one per line of stdin."""
    options = [w for w in words if w.startswith("--")]
    if options:
        raise click.NoSuchOption(options[0])
    if words:
        return [parse_terms(list(words))]
    if not sys.stdin.isatty():
        sequences = [parse_terms([line]) for line in sys.stdin if line.strip()]
        if sequences:
            return sequences
        raise UserError("stdin held no terms; give one sequence per line, e.g. 1 1 2 3 5 8")
    raise UserError(f"no terms given; give the sequence's terms, e.g. nextterm-mlx {command} 1 1 2 3 5 8")


def spare_option(command):
    return click.option("--spare", type=click.IntRange(min=1), default=DEFAULT_SPARE, show_default=True,
                        help="How many terms beyond those it was fitted to a formula must reproduce.")(command)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("terms", nargs=-1, type=click.UNPROCESSED)
@model_options
@click.option("--terms", "n_terms", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many next terms to predict, each fed back for the next.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=DEFAULT_MAX_NEW_TOKENS,
              show_default=True, help="Token budget for one term.")
@click.option("--beams", type=click.IntRange(min=1), default=None,
              help="Rank candidate next terms by beam search with this many beams.")
@click.option("--top", type=click.IntRange(min=1), default=None,
              help="How many candidates to show with --beams (default: the number of beams).")
@click.option("--strict", is_flag=True,
              help="Only allow tokens that form a canonical integer (off by default: plain greedy is the "
              "reference's decoding).")
@click.option("--explain", is_flag=True,
              help="Show the exact formulas that fit the terms (as `guess` does), the model's probability "
              "for each one's next term, and whether they agree.")
@click.option("--score", "score_values", metavar="VALUES", default=None,
              help="The model's probability for each of these next terms, e.g. --score 13,21.")
@click.option("--hybrid", is_flag=True,
              help="Answer with the simplest verified formula's next terms, and the model's where none fits.")
@spare_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per sequence.")
def predict(terms, n_terms, max_new_tokens, beams, top, strict, explain, score_values, hybrid, spare, as_json,
            **model) -> None:
    """Predict the next term(s) of TERMS, e.g. `predict 1 1 2 3 5 8` prints 13.

    Terms may be separated by spaces or commas; negative terms are typed bare
    (`predict -1 2 -4 8`). With no TERMS, each line of stdin is a sequence.
    """
    sequences = read_sequences(terms, "predict")
    scored = parse_values(score_values) if score_values is not None else None
    from .evaluate import check_speculation
    from .predictor import load

    if top is not None and (beams is None or top > beams):
        raise UserError("--top needs --beams at least as large, e.g. --beams 8 --top 3")
    if beams is not None and n_terms > 1:
        raise UserError("--beams ranks candidates for the next term only; drop --terms or --beams")
    check_speculation(model["speculate"], beams or 1, batch_size=1)
    index = None
    if explain:  # a damaged index is said before the model loads
        from .oeis import open_index

        index = open_index(model["cache_dir"])
    predictor = load(**model, max_new_tokens=max_new_tokens)
    for sequence in sequences:
        predictions = predictor.continue_sequence(sequence, n_terms, strict=strict)
        record = {"model": predictor.name, "terms": sequence, "predictions": [p.to_dict() for p in predictions]}
        if beams is not None:
            record.update(predictor.candidates(sequence, beams, top, strict).to_dict())
        if scored is not None:
            record["scores"] = [score_summary(c) for c in predictor.score(sequence, scored, strict)]
        if explain or hybrid:
            from .explain import explained

            record.update(explained(predictor, sequence, predictions, spare, strict, explain, hybrid, index))
        click.echo(json.dumps(record) if as_json else format_plain(record))


def parse_values(text: str) -> list[int]:
    try:
        return parse_text(text)
    except NoTerms:
        raise UserError("--score got no values; give next terms to score, e.g. --score 13,21") from None
    except ValueError as e:
        raise UserError(f"--score: {e}; give whole numbers such as --score 13,21") from None


def score_summary(candidate) -> dict:
    return {"value": candidate.value, "logprob": candidate.logprob, "prob": candidate.prob}


def format_plain(record: dict) -> str:
    """The next terms on one line (the candidates' table replaces it, its
    first row being the answer), then the scores and the fits."""
    sections = [] if "candidates" in record and "hybrid" not in record else [answer_line(record)]
    if "candidates" in record:
        sections.append(probability_table("candidate", record["candidates"])
                        + f"\n{'no integer':>12}  {record['no_term_prob']:8.4f}")
    if "scores" in record:
        sections.append(probability_table("value", record["scores"]))
    if "explanations" in record:
        sections.append(explanation_lines(record))
    return "\n".join(sections)


def answer_line(record: dict) -> str:
    if "hybrid" in record:
        hybrid = record["hybrid"]
        values = " ".join(str(v) for v in hybrid["next"] if v is not None)
        return values if hybrid["source"] == "model" else f"{values}  (from {hybrid['formula']})"
    predictions = record["predictions"]
    words = [str(p["value"]) for p in predictions if p["value"] is not None]
    if predictions[-1]["value"] is None:
        words.append(f"(no term: {predictions[-1]['stop']})")
    return " ".join(words)


def probability_table(label: str, rows: list[dict]) -> str:
    lines = [f"{label:>12}  {'prob':>8}  logprob"]
    lines += [f"{row['value']:>12}  {row['prob']:8.4f}  {row['logprob']:.4f}" for row in rows]
    return "\n".join(lines)


def explanation_lines(record: dict) -> str:
    first = record["predictions"][0]
    model_answer = first["value"] if first["value"] is not None else f"no term ({first['stop']})"
    lines = [f"model    {model_answer}  (prob {math.exp(first['logprob']):.4f})"]
    for fit in record["explanations"]:
        verdict = "agrees" if fit["agrees"] else "disagrees"
        lines.append(f"formula  {fit_line(fit)}  (model prob {fit['model_prob']:.4f}, {verdict})")
    if not record["explanations"]:
        lines.append(NO_FIT if record["guess_complete"] else NO_FIT_IN_TIME)
    if "oeis" in record:
        for match in record["oeis"]["matches"]:
            lines.append(f"oeis     {format_match(match)}{'  (agrees)' if match['agrees'] else ''}")
        if not record["oeis"]["matches"]:
            lines.append("oeis     no match in the local OEIS")
        lines.append(f"         {record['oeis']['license']}")
    return "\n".join(lines)


def fit_line(fit: dict) -> str:
    next_terms = ", ".join(str(v) for v in fit["next"])
    return (f"{next_terms}  {fit['formula']}  [{fit['family']}; fitted to {fit['fitted']} terms, "
            f"checked on {fit['verified']}]")


NO_FIT = "formula  none verified (give more terms, or lower --spare)"
NO_FIT_IN_TIME = "formula  none verified within the time budget"


@cli.command("guess", context_settings={"ignore_unknown_options": True})
@click.argument("terms", nargs=-1, type=click.UNPROCESSED)
@click.option("--terms", "n_terms", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many next terms each formula gives.")
@spare_option
@click.option("--budget", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_BUDGET, show_default=True,
              help="Seconds to search one sequence; past it the search stops with what it found.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per sequence.")
def guess_command(terms, n_terms, spare, budget, as_json) -> None:
    """Exact formulas for TERMS and the next terms they give, with no model:
    polynomials, recurrences with constant coefficients and with polynomial
    coefficients, simplest first, each checked on terms it was not fitted to.
    a(0) is the first given term. With no TERMS, each line of stdin is a
    sequence."""
    from .guess import guess

    sequences = read_sequences(terms, "guess")
    for index, sequence in enumerate(sequences):
        guesses = guess(sequence, count=n_terms, spare=spare, budget=budget)
        if as_json:
            click.echo(json.dumps(guesses.to_dict()))
            continue
        if len(sequences) > 1:
            click.echo(("\n" if index else "") + " ".join(map(str, sequence)))
        for fit in guesses.fits:
            click.echo(fit_line(fit.to_dict()))
        if not guesses.fits:
            click.echo((NO_FIT if guesses.complete else NO_FIT_IN_TIME).removeprefix("formula  "))


def with_quantization_options(command):
    for option in reversed(quantization_options()):
        command = option(command)
    return command


@cli.command()
@click.argument("hf_path", type=click.Path(file_okay=False))
@click.argument("mlx_path", type=click.Path())
@click.option("--dtype", type=click.Choice(list(DTYPES)), default=None,
              help="Stored dtype (default: the checkpoint's own).")
@click.option("--force", is_flag=True, help="Replace MLX_PATH if it exists.")
@click.option("--allow-nonfinite", is_flag=True, help="Convert even if a weight is NaN or Inf.")
@with_quantization_options
def convert(hf_path, mlx_path, dtype, force, allow_nonfinite, q_bits, q_group_size, q_mode, q_recipe) -> None:
    """Convert the HF checkpoint folder HF_PATH into the MLX folder MLX_PATH."""
    from .convert.converter import convert_checkpoint
    from .convert.quantize import quantization_from_options

    quantization = quantization_from_options(q_bits, q_group_size, q_mode, q_recipe)
    target = convert_checkpoint(hf_path, mlx_path, dtype=dtype, force=force, allow_nonfinite=allow_nonfinite,
                                quantization=quantization)
    click.echo(f"wrote {target}", err=True)


@cli.command("eval")
@click.argument("sequence_file", metavar="FILE")
@model_options
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="jsonl ({\"seq\": [...], \"id\": ...}), oeis (A000045 ,0,1,1,2,) or plain; "
              "detected from the content by default.")
@click.option("--given", type=click.IntRange(min=1), default=None,
              help="Give the first K terms and predict the next (default: all but the last).")
@click.option("--predict-terms", type=click.IntRange(min=1), default=1, show_default=True,
              help="Predict this many next terms; a sequence counts as right when all are.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate at most N sequences.")
@click.option("--shuffle", is_flag=True, help="Shuffle the sequences (with --seed) before --limit.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=DEFAULT_MAX_NEW_TOKENS, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write one JSON line per sequence here, as it goes.")
@click.option("--resume", is_flag=True, help="Skip the sequences already in --out.")
@click.option("--force", is_flag=True, help="Overwrite --out.")
@click.option("--compare", "compare_model", metavar="NAME|PATH", default=None,
              help="Also run this model and report agreement with it.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Draw accuracy by bucket into this PNG (needs matplotlib).")
@click.option("--beams", type=click.IntRange(min=1), default=1, show_default=True,
              help="Rank candidates by beam search and report top-1 and top-K accuracy.")
@click.option("--hybrid", is_flag=True,
              help="Also score the exact guessers alone and the hybrid answer (the simplest verified formula's "
              "next terms, the model's where none fits), on the same sequences.")
@spare_option
@click.option("--exclude-known", is_flag=True,
              help="Drop the sequences whose given terms occur in the local OEIS (`nextterm-mlx oeis download`).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def eval_command(sequence_file, fmt, given, predict_terms, limit, shuffle, seed, batch_size, max_new_tokens, out,
                 resume, force, compare_model, plot, beams, hybrid, spare, exclude_known, as_json, **model) -> None:
    """Measure next-term accuracy on the sequences in FILE.

    Runs across machines too: `mlx.launch --hosts a,b -- nextterm-mlx eval ...`
    shards the sequences by rank, and rank 0 prints the summary.
    """
    from .evaluate import Task, check_results_file, check_speculation, evaluate, plan_items
    from .predictor import load
    from .sequence_files import read_sequence_file

    check_results_file(out, resume, force)
    check_speculation(model["speculate"], beams, batch_size)
    if beams > 1 and (predict_terms > 1 or compare_model or hybrid):
        raise UserError("--beams ranks candidates for one next term; drop --predict-terms/--compare/--hybrid "
                        "or --beams")
    if plot is not None:
        from .plot import check_can_plot

        check_can_plot(plot)
    known = None
    if exclude_known:
        from .oeis import require_index

        known = require_index(model["cache_dir"]).contains
    sequences = read_sequence_file(sequence_file, fmt)
    show_skipped_lines(sequence_file, sequences.problems)

    predictor = load(**model, max_new_tokens=max_new_tokens)
    other = None
    if compare_model is not None:
        other = load(compare_model, dtype=model["dtype"], max_new_tokens=max_new_tokens,
                     cache_dir=model["cache_dir"], keep_quantized=model["keep_quantized"])
    plan = plan_items(sequences.sequences, Task(given, predict_terms), predictor.max_positions, limit, shuffle, seed,
                      known)
    if not plan.items:
        raise UserError(f"no sequence in {sequence_file} is long enough for this task "
                        f"({plan.skipped['too_short']} too short); lower --given or --predict-terms")
    summary = evaluate(predictor, plan.items, out, batch_size=batch_size, resume=resume, other=other, beams=beams,
                       hybrid_spare=spare if hybrid else None)
    if summary is None:  # another rank reports
        return
    summary = {"model": predictor.name, "file": str(sequence_file), "format": sequences.format,
               "skipped": {**plan.skipped, "unreadable_lines": len(sequences.problems)}, **summary}
    if compare_model is not None:
        summary["compare"]["other_model"] = compare_model
    if "hybrid" in summary:
        summary["hybrid"]["spare"] = spare
    if plot is not None:
        from .plot import plot_accuracy

        plot_accuracy(summary, plot, predictor.name)
    click.echo(json.dumps(summary) if as_json else format_summary(summary))


def format_summary(summary: dict) -> str:
    low, high = summary["ci95"]
    speed = summary["throughput"]
    skipped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in summary["skipped"].items() if v) or "none"
    lines = [
        f"model     {summary['model']}",
        f"accuracy  {summary['accuracy']:.2%} ({summary['correct']}/{summary['sequences']}), "
        f"95% CI {low:.2%}-{high:.2%}",
        f"no answer {summary['unparseable']} unparseable, {summary['absent']} absent; skipped: {skipped}",
        f"speed     {speed['sequences_per_second']:.2f} seq/s, {speed['generated_tokens_per_second']:.1f} "
        f"generated tok/s (prefill {speed['prefill_tokens_per_second']:.0f} tok/s, "
        f"decode {speed['decode_tokens_per_second']:.1f} tok/s)",
    ]
    if "top_k_accuracy" in summary:
        lines.append(f"top-{summary['beams']}     {summary['top_k_accuracy']:.2%} (answer among the "
                     f"{summary['beams']} beam search candidates)")
    if "compare" in summary:
        compare = summary["compare"]
        lines.append(f"compare   {compare['other_model']}: accuracy {compare['other_accuracy']:.2%}, "
                     f"agreement {compare['agreement']:.2%}")
    if "hybrid" in summary:
        lines += hybrid_lines(summary["hybrid"])
    for key, label in (("by_answer_digits", "answer digits"), ("by_given_terms", "terms given")):
        lines.append(f"by {label}:")
        lines += [f"  {bucket:>8}  {b['accuracy']:7.2%}  n={b['n']}" for bucket, b in summary[key].items()]
    return "\n".join(lines)


def hybrid_lines(hybrid: dict) -> list[str]:
    def accuracy(part: dict) -> str:
        low, high = part["ci95"]
        return f"{part['accuracy']:.2%} ({part['correct']}), 95% CI {low:.2%}-{high:.2%}"

    guessers = hybrid["guessers"]
    return [
        f"formulas  accuracy {accuracy(guessers)}; answered {guessers['coverage']:.2%}, right when answering "
        f"{guessers['precision']:.2%} (verified on {hybrid['spare']} spare terms)",
        f"hybrid    accuracy {accuracy(hybrid['hybrid'])}; formula and model agree on "
        f"{hybrid['agreement']:.2%} of the answered",
    ]


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
def checkpoints(as_json) -> None:
    """List the published NextTerm-440M checkpoints."""
    rows = [{"name": c.name, "tokens_trained": c.tokens_trained, "eval_neo_accuracy": c.eval_neo_accuracy}
            for c in PUBLISHED]
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"{'checkpoint':<32} {'tokens trained':>16}  OEIS Eval Neo accuracy")
    for row in rows:
        accuracy = f"{row['eval_neo_accuracy']:.2%}" if row["eval_neo_accuracy"] else "not published"
        default = "  (default)" if row["name"] == "final_latest" else ""
        click.echo(f"{row['name']:<32} {row['tokens_trained']:>16,}  {accuracy}{default}")


@cli.group(invoke_without_command=True)
@click.option("--cache-dir", metavar="DIR", default=None, help="Converted-model cache.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
@click.pass_context
def models(ctx, cache_dir, as_json) -> None:
    """List the converted models in the cache (`models rm NAME` removes one)."""
    from .model_cache import cache_root, entries

    ctx.obj = cache_root(cache_dir)
    if ctx.invoked_subcommand is not None:
        return
    rows = []
    for entry in entries(ctx.obj):
        source = entry.source
        rows.append({
            "name": entry.key,
            "source": f"{source['repo']}/{source['subfolder']}" if "repo" in source else source.get("path"),
            "revision": (source.get("commit") or "")[:12] or None,
            "dtype": entry.meta.get("dtype"),
            "quantization": entry.meta.get("quantization"),
            "size_bytes": entry.size_bytes(),
        })
    if as_json:
        click.echo(json.dumps(rows))
    elif not rows:
        click.echo(f"no converted models in {ctx.obj}", err=True)
    else:
        from .convert.quantize import Quantization

        for row in rows:
            variant = Quantization(**row["quantization"]).tag if row["quantization"] else row["dtype"]
            click.echo(f"{row['name']}  {row['source']}  {row['revision'] or '-'}  {variant}  "
                       f"{row['size_bytes'] / 1e6:.1f} MB")


@models.command("rm")
@click.argument("name")
@click.pass_obj
def models_rm(root, name) -> None:
    """Remove the cached model NAME (as `models` lists it, or a checkpoint name)."""
    from .model_cache import remove_entry

    for key in remove_entry(root, name):
        click.echo(f"removed {key}", err=True)


@cli.command()
@model_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def info(as_json, **model) -> None:
    """Show a model's configuration, source, and how MLX runs it here."""
    from .predictor import load

    details = load(**model).info()
    if as_json:
        click.echo(json.dumps(details))
        return
    for key, value in details.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif key == "parameters":
            value = f"{value:,}"
        click.echo(f"{key:<14} {value}")


@cli.command()
@model_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on; any other than this machine's lets other machines in.")
@click.option("--port", type=click.IntRange(0, 65535), default=8700, show_default=True,
              help="The port to listen on (0: a free one, named when serving starts).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=DEFAULT_MAX_NEW_TOKENS,
              show_default=True, help="Token budget for one term.")
def serve(host, port, max_new_tokens, **model) -> None:
    """Serve the model over HTTP: a JSON API (its reference at /docs) and, at /,
    a page to explore sequences with. Needs the serve extra:
    pip install 'nextterm-mlx[serve]'."""
    from .serve import check_installed

    check_installed()
    from .serve.server import serve as run_server

    try:
        run_server(host, port, {**model, "max_new_tokens": max_new_tokens})
    except KeyboardInterrupt:
        click.echo("nextterm-mlx: interrupted", err=True)
        sys.stdout.flush()
        # The server has stopped and its model thread has ended; ending here
        # skips the interpreter's teardown, where the threads MLX and the
        # server started have been seen to abort the process.
        os._exit(130)


def oeis_cache_option(command):
    return click.option("--cache-dir", metavar="DIR", default=None,
                        help="The cache the index lives in (default ~/.cache/nextterm-mlx or "
                        "$NEXTTERM_MLX_CACHE).")(command)


@cli.group()
def oeis() -> None:
    """The OEIS, offline: a local index to find where a sequence is known."""


@oeis.command("download")
@click.option("--from", "folder", metavar="DIR", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Build from the stripped and names files in DIR (stripped.gz and names.gz, or uncompressed) "
              "instead of fetching them from oeis.org.")
@oeis_cache_option
def oeis_download(folder, cache_dir) -> None:
    """Fetch the OEIS's stripped and names files (or take them from DIR) and index them."""
    from . import oeis as local_oeis

    if folder is None:
        report = local_oeis.download(cache_dir, progress=sys.stderr.isatty())
    else:
        stripped, names = oeis_files(folder)
        report = local_oeis.build_index(stripped, names, local_oeis.index_path(cache_dir), str(folder.resolve()))
    for file, problems in report.problems.items():
        show_skipped_lines(file, problems)
    click.echo(f"nextterm-mlx: indexed {report.sequences:,} sequences. {local_oeis.ATTRIBUTION}", err=True)


def oeis_files(folder: Path) -> tuple[Path, Optional[Path]]:
    """The stripped file (required) and the names file (if any) in `folder`."""
    def first(name: str) -> Optional[Path]:
        return next((folder / n for n in (f"{name}.gz", name) if (folder / n).is_file()), None)

    stripped = first("stripped")
    if stripped is None:
        raise UserError(f"no stripped.gz or stripped file in {folder}; give the folder that holds the OEIS's "
                        "stripped file (and names file)")
    names = first("names")
    if names is None:
        logging.getLogger("nextterm_mlx").warning("no names.gz or names file in %s: matches will have no names",
                                                  folder)
    return stripped, names


def show_skipped_lines(file: str, problems: list[str], shown: int = 10) -> None:
    for problem in problems[:shown]:
        click.echo(f"{file}: {problem} (skipped)", err=True)
    if len(problems) > shown:
        click.echo(f"{file}: {len(problems) - shown} more lines skipped", err=True)


@oeis.command("search", context_settings={"ignore_unknown_options": True})
@click.argument("terms", nargs=-1, type=click.UNPROCESSED)
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True,
              help="Show at most N matches a query.")
@click.option("--transforms", is_flag=True,
              help="Also search the terms divided by their gcd, shifted by a constant, their first differences "
              "and their partial sums.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query.")
@oeis_cache_option
def oeis_search(terms, limit, transforms, as_json, cache_dir) -> None:
    """Find the OEIS sequences in which TERMS occur, e.g. `oeis search 1 1 2 3 5 8`.

    Best first: the sequences that start with TERMS, then the others, each by
    A-number. With no TERMS, each line of stdin is a query.
    """
    from .oeis import ATTRIBUTION, require_index

    queries = read_sequences(terms, "oeis search")
    with require_index(cache_dir) as index:
        for query in queries:
            matches = [m.to_dict() for m in index.search(query, limit, transforms)]
            if as_json:
                click.echo(json.dumps({"terms": query, "matches": matches, "license": ATTRIBUTION}))
            else:
                if len(queries) > 1:
                    click.echo(f"query: {' '.join(map(str, query))}")
                click.echo("\n".join(map(format_match, matches)) or "no match in the local OEIS")
    if not as_json:
        click.echo(ATTRIBUTION, err=True)


def format_match(match: dict) -> str:
    """A000045  offset 3  next 13  Fibonacci numbers ... (the transform, if any, before the name)."""
    next = "(end)" if match["next"] is None else match["next"]
    words = [match["id"], f"offset {match['offset']}", f"next {next}"]
    if "transform" in match:
        words.append(f"[{match['transform']['description']}: yours next {match['transform']['query_next']}]")
    return "  ".join(map(str, words + [match["name"] or "(no name)"]))


@oeis.command("info")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@oeis_cache_option
def oeis_info(as_json, cache_dir) -> None:
    """Show the local OEIS index: where it is, when and from what it was built, its size."""
    from .oeis import require_index

    with require_index(cache_dir) as index:
        details = index.info()
    if as_json:
        click.echo(json.dumps(details))
        return
    rows = {**details, "sequences": f"{details['sequences']:,}", "size_bytes": f"{details['size_bytes'] / 1e6:.1f} MB"}
    for key, value in rows.items():
        if value is not None:
            click.echo(f"{key.removesuffix('_bytes'):<10} {value}")


class OneLine(logging.Formatter):
    """A log record as the command shows it: "nextterm-mlx: [warning: ]message"."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"nextterm-mlx: {level}{record.getMessage()}"


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"nextterm-mlx: warning: {message}", err=True)


@contextmanager
def messages_on_stderr():
    """The package's log records (INFO and up) and every warning, one line
    each on stderr; the library itself never writes to the terminal."""
    logger = logging.getLogger("nextterm_mlx")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine())
    saved = logger.level, logger.propagate, warnings.showwarning
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    warnings.showwarning = show_warning
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate, warnings.showwarning = saved[1:]


def main(argv: Optional[list[str]] = None) -> None:
    """Run the CLI; a user's mistake ends in one line on stderr and exit code 2."""
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)  # OEIS terms run to thousands of digits
    keep_freed_memory()
    try:
        with messages_on_stderr():
            cli.main(args=argv, prog_name="nextterm-mlx", standalone_mode=False)
    except UserError as e:
        click.echo(f"nextterm-mlx: error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.ctx.get_help())
    except click.ClickException as e:
        context = getattr(e, "ctx", None)
        command = context.command_path if context is not None else "nextterm-mlx"
        click.echo(f"nextterm-mlx: error: {e.format_message()} (see {command} --help)", err=True)
        sys.exit(e.exit_code)
    except OSError as e:  # a folder that can't be written, a full disk
        click.echo(f"nextterm-mlx: error: {e.strerror or e}: {e.filename or ''}; check the path and free space",
                   err=True)
        sys.exit(2)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("nextterm-mlx: interrupted", err=True)
        sys.exit(130)
