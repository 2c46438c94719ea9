"""The `nextterm-mlx` command: thin wrappers over the Python API."""

from __future__ import annotations

import json
import re
import sys
from typing import Optional

import click

from . import __version__
from .decode import DEFAULT_MAX_NEW_TOKENS, Prediction
from .errors import UserError
from .loading import DTYPES

TERM = re.compile(r"[+-]?[0-9]+")
# Users paste from papers and web pages: a typographic minus means minus.
MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\ufe63": "-", "\uff0d": "-"})


def parse_terms(words: list[str]) -> list[int]:
    """Terms typed as `1 2 3`, `1,2,3` or `1, 2, 3`, negative ones bare."""
    tokens = [t for t in re.split(r"[\s,;]+", " ".join(words).translate(MINUS_SIGNS)) if t]
    if not tokens:
        raise UserError("no terms given; give the sequence's terms, e.g. nextterm-mlx predict 1 1 2 3 5 8")
    for token in tokens:
        if not TERM.fullmatch(token):
            raise UserError(f"{token!r} is not an integer; give whole numbers such as 1 2 3 or -4")
    return [int(t) for t in tokens]


def model_options(command):
    """The options that choose and load a model, shared by every command that loads one."""
    command = click.option("--model", "model", metavar="PATH", required=True,
                           help="A NextTerm checkpoint folder (HF format, converted once into the cache) "
                           "or a folder made by `nextterm-mlx convert`.")(command)
    command = click.option("--dtype", type=click.Choice(list(DTYPES)), default=None,
                           help="Compute dtype (default: float32 on a CPU, the stored dtype on a GPU).")(command)
    command = click.option("--cache-dir", metavar="DIR", default=None,
                           help="Converted-model cache (default ~/.cache/nextterm-mlx or $NEXTTERM_MLX_CACHE).")(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nextterm-mlx")
def cli() -> None:
    """Predict the next terms of integer sequences with NextTerm-440M on MLX."""


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("terms", nargs=-1, type=click.UNPROCESSED)
@model_options
@click.option("--terms", "n_terms", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many next terms to predict, each fed back for the next.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=DEFAULT_MAX_NEW_TOKENS,
              show_default=True, help="Token budget for one term.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per sequence.")
def predict(terms, model, dtype, cache_dir, n_terms, max_new_tokens, as_json) -> None:
    """Predict the next term(s) of TERMS, e.g. `predict 1 1 2 3 5 8` prints 13.

    Terms may be separated by spaces or commas; negative terms are typed bare
    (`predict -1 2 -4 8`). With no TERMS, each line of stdin is a sequence.
    """
    options = [t for t in terms if t.startswith("--")]
    if options:
        raise click.NoSuchOption(options[0])
    if terms:
        sequences = [parse_terms(list(terms))]
    elif not sys.stdin.isatty():
        sequences = [parse_terms([line]) for line in sys.stdin if line.strip()]
        if not sequences:
            raise UserError("stdin held no terms; give one sequence per line, e.g. 1 1 2 3 5 8")
    else:
        raise UserError("no terms given; give the sequence's terms, e.g. nextterm-mlx predict 1 1 2 3 5 8")

    from .predictor import load

    predictor = load(model, dtype=dtype, max_new_tokens=max_new_tokens, cache_dir=cache_dir)
    for sequence in sequences:
        predictions = predictor.continue_sequence(sequence, n_terms)
        if as_json:
            record = {"model": predictor.name, "terms": sequence,
                      "predictions": [p.to_dict() for p in predictions]}
            click.echo(json.dumps(record))
        else:
            click.echo(format_plain(predictions))


def format_plain(predictions: list[Prediction]) -> str:
    words = [str(p.value) for p in predictions if p.value is not None]
    last = predictions[-1]
    if last.value is None:
        words.append(f"(no term: {last.stop})")
    return " ".join(words)


@cli.command()
@click.argument("hf_path", type=click.Path(file_okay=False))
@click.argument("mlx_path", type=click.Path())
@click.option("--dtype", type=click.Choice(list(DTYPES)), default=None,
              help="Stored dtype (default: the checkpoint's own).")
@click.option("--force", is_flag=True, help="Replace MLX_PATH if it exists.")
@click.option("--allow-nonfinite", is_flag=True, help="Convert even if a weight is NaN or Inf.")
def convert(hf_path, mlx_path, dtype, force, allow_nonfinite) -> None:
    """Convert the HF checkpoint folder HF_PATH into the MLX folder MLX_PATH."""
    from convert.converter import convert_checkpoint

    target = convert_checkpoint(hf_path, mlx_path, dtype=dtype, force=force, allow_nonfinite=allow_nonfinite)
    click.echo(f"wrote {target}", err=True)


def main(argv: Optional[list[str]] = None) -> None:
    """Run the CLI; a user's mistake ends in one line on stderr and exit code 2."""
    try:
        cli.main(args=argv, prog_name="nextterm-mlx", standalone_mode=False)
    except UserError as e:
        click.echo(f"nextterm-mlx: error: {e}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        hint = f" (see nextterm-mlx {e.ctx.info_name} --help)" if getattr(e, "ctx", None) else ""
        click.echo(f"nextterm-mlx: error: {e.format_message()}{hint}", err=True)
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("nextterm-mlx: interrupted", err=True)
        sys.exit(130)
