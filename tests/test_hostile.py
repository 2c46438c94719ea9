"""Hostile input and faults: one clear line and exit 2, nothing lost, nothing half-written."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from conftest import FIXTURES, reference
from nextterm_mlx.convert.converter import convert_checkpoint
from nextterm_mlx.memory import peak_rss_bytes
from nextterm_mlx.cli import parse_terms
from nextterm_mlx.decode import make_prediction
from nextterm_mlx.errors import UserError
from nextterm_mlx.vocab import decode_term, encode_term

SOURCE = FIXTURES / "untied-v5"


def nextterm(*args, stdin=None, env=None):
    import os

    done = subprocess.run(["nextterm-mlx", *map(str, args)], capture_output=True, text=True,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})
    return done.returncode, done.stdout, done.stderr


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


# --- predict input -------------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["1", "1.5"], "'1.5'"), (["a"], "'a'"), (["1e3"], "'1e3'"), (["0x10"], "'0x10'"), (["1/2"], "'1/2'"),
    (["--terms", "0", "1"], "--terms"), (["--terms", "-2", "1"], "--terms"),
    (["--max-new-tokens", "0", "1"], "--max-new-tokens"),
])
def test_bad_predict_input(converted, args, needle):
    code, out, err = nextterm("predict", "--model", converted["untied-v5"], *args)
    assert_one_line_error(code, err, needle)


def test_no_terms_on_an_empty_stdin(converted):
    code, out, err = nextterm("predict", "--model", converted["untied-v5"], stdin="\n  \n")
    assert_one_line_error(code, err, "no terms")


def test_model_pointing_nowhere():
    code, out, err = nextterm("predict", "--model", "/no/such/folder", "1")
    assert_one_line_error(code, err, "/no/such/folder")


def test_typographic_minus_plus_and_mixed_separators_are_read(converted):
    case = next(c for c in reference("untied-v5")["cases"] if c["terms"] == [-1, 2, -4, 8, -16])
    code, out, err = nextterm("predict", "--json", "--model", converted["untied-v5"], "\u22121, +2;-4", "8,\u221216")
    assert code == 0, err
    record = json.loads(out)
    assert record["terms"] == case["terms"] and record["predictions"][0]["tokens"] == case["generated"][0]


def test_a_thousand_digit_term_is_accepted(converted):
    term = "9" * 1000
    code, out, err = nextterm("predict", "--json", "--max-new-tokens", "4", "--model", converted["untied-v5"], "1", term)
    assert code == 0, err
    assert json.loads(out)["terms"][1] == int(term)


def test_too_long_for_the_model_is_refused_naming_the_limit(converted):
    terms = " ".join(["123456789"] * 210)  # 2,101 tokens > 2,048 positions
    code, out, err = nextterm("predict", "--model", converted["untied-v5"], terms)
    assert_one_line_error(code, err, "2048", "max_position_embeddings")
    code, out, err = nextterm("predict", "--model", converted["untied-v5"], "7" * 5000)
    assert_one_line_error(code, err, "2048")


def test_longer_than_the_training_context_warns(tmp_path):
    source = Path(shutil.copytree(SOURCE, tmp_path / "long"))
    config = json.loads((source / "config.json").read_text())
    config["max_position_embeddings"] = 8192
    (source / "config.json").write_text(json.dumps(config))
    terms = " ".join(["123456789"] * 420)  # 4,201 tokens
    code, out, err = nextterm("predict", "--max-new-tokens", "3", "--model", source, terms,
                              env={"NEXTTERM_MLX_CACHE": str(tmp_path / "c")})
    assert code == 0, err
    assert "warning" in err and "4096" in err


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_the_term_parser_never_tracebacks(text):
    try:
        terms = parse_terms([text])
    except UserError as e:
        assert "\n" not in str(e)
        return
    assert all(isinstance(t, int) for t in terms)


# --- model output ----------------------------------------------------------------------

@settings(max_examples=500, deadline=None)
@given(st.lists(st.integers(0, 15), min_size=1, max_size=30))
def test_any_token_stream_decodes_to_a_stop_reason_never_a_wrong_integer(tokens):
    prediction = make_prediction(tokens, -1.0)
    assert prediction.stop in ("separator", "eos", "pad", "max_tokens", "malformed")
    if prediction.value is not None:
        assert prediction.stop == "separator"
        assert tokens == encode_term(prediction.value) + [11]


@settings(max_examples=300, deadline=None)
@given(st.integers(-(10**500) + 1, 10**500 - 1))
def test_round_trip_to_ten_to_the_500(n):
    assert decode_term(encode_term(n)) == n


# --- checkpoints -----------------------------------------------------------------------

def damaged_copy(tmp_path) -> Path:
    return Path(shutil.copytree(SOURCE, tmp_path / "src"))


def test_truncated_safetensors_is_refused(tmp_path):
    source = damaged_copy(tmp_path)
    weights = source / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    code, out, err = nextterm("convert", source, tmp_path / "out")
    assert_one_line_error(code, err, "model.safetensors", "truncated or damaged")
    assert not (tmp_path / "out").exists()


def test_corrupt_safetensors_header_is_refused(tmp_path):
    source = damaged_copy(tmp_path)
    weights = source / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:20] = b"not json at!"
    weights.write_bytes(bytes(data))
    code, out, err = nextterm("convert", source, tmp_path / "out")
    assert_one_line_error(code, err, "truncated or damaged")


def test_nan_weights_are_refused_unless_allowed(tmp_path):
    import mlx.core as mx

    source = damaged_copy(tmp_path)
    weights = dict(mx.load(str(source / "model.safetensors")))
    poisoned = np.array(weights["model.layers.1.mlp.up_proj.weight"].astype(mx.float32))
    poisoned[3, 5] = np.nan
    weights["model.layers.1.mlp.up_proj.weight"] = mx.array(poisoned).astype(mx.bfloat16)
    mx.save_safetensors(str(source / "model.safetensors"), weights)
    code, out, err = nextterm("convert", source, tmp_path / "out")
    assert_one_line_error(code, err, "model.layers.1.mlp.up_proj.weight", "NaN or Inf", "--allow-nonfinite")
    code, out, err = nextterm("convert", source, tmp_path / "out", "--allow-nonfinite")
    assert code == 0, err


def test_remote_code_is_never_run(tmp_path):
    source = damaged_copy(tmp_path)
    marker = tmp_path / "executed"
    (source / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((source / "config.json").read_text())
    config.update(model_file="evil.py", auto_map={"AutoModelForCausalLM": "evil.Model"})
    (source / "config.json").write_text(json.dumps(config))
    code, out, err = nextterm("predict", "--model", source, "1", "2",
                              env={"NEXTTERM_MLX_CACHE": str(tmp_path / "c")})
    assert code == 0, err
    assert not marker.exists()


# --- conversion faults -------------------------------------------------------------------

def medium_checkpoint(folder: Path) -> Path:
    """A 4-layer, hidden-512 random checkpoint (~30 MB): long enough to write that a kill lands mid-way."""
    folder.mkdir()
    config = json.loads((SOURCE / "config.json").read_text())
    config.update(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=64)
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    shapes = {"model.embed_tokens.weight": (16, 512), "lm_head.weight": (16, 512), "model.norm.weight": (512,)}
    for i in range(4):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (512, 512), p + "self_attn.k_proj.weight": (256, 512),
                       p + "self_attn.v_proj.weight": (256, 512), p + "self_attn.o_proj.weight": (512, 512),
                       p + "self_attn.q_norm.weight": (64,), p + "self_attn.k_norm.weight": (64,),
                       p + "mlp.gate_proj.weight": (1536, 512), p + "mlp.up_proj.weight": (1536, 512),
                       p + "mlp.down_proj.weight": (512, 1536), p + "input_layernorm.weight": (512,),
                       p + "post_attention_layernorm.weight": (512,)})
    save_file({k: (rng.standard_normal(v) * 0.02).astype(np.float32) for k, v in shapes.items()},
              str(folder / "model.safetensors"))
    return folder


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_sigkill_mid_conversion_leaves_the_target_absent_or_intact(tmp_path):
    source = medium_checkpoint(tmp_path / "medium")
    target = tmp_path / "target"
    outcomes, killed = set(), 0
    for delay in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0):
        process = subprocess.Popen(["nextterm-mlx", "convert", str(source), str(target), "--force",
                                    "--dtype", "float32"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        killed += process.wait() == -signal.SIGKILL
        if target.exists():  # never half-written: every file matches the checksums of its own conversion
            now = folder_digest(target)
            meta = json.loads((target / "nextterm_meta.json").read_text())
            assert {k: v for k, v in now.items() if k in meta["files"]} == meta["files"]
        outcomes.add("present" if target.exists() else "absent")
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".target")]
        assert len(leftovers) <= 1  # at most the killed run's own partial folder, never renamed into place
        for leftover in leftovers:
            shutil.rmtree(tmp_path / leftover)
    assert killed >= 3 and "absent" in outcomes, (killed, outcomes)  # kills landed mid-way


def test_target_exists_or_inside_source_is_refused(tmp_path):
    code, out, err = nextterm("convert", SOURCE, FIXTURES)
    assert_one_line_error(code, err, "--force")
    source = damaged_copy(tmp_path)
    code, out, err = nextterm("convert", source, source / "inner")
    assert_one_line_error(code, err, "inside the source")


# --- cache damage ------------------------------------------------------------------------

def corrupt(entry: Path, how: str) -> None:
    if how == "deleted weights":
        (entry / "model.safetensors").unlink()
    elif how == "edited config":
        config = json.loads((entry / "config.json").read_text())
        config["rms_norm_eps"] = 0.1
        (entry / "config.json").write_text(json.dumps(config))
    else:
        weights = entry / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-7] ^= 0x40
        weights.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["deleted weights", "edited config", "changed byte"])
def test_a_damaged_cache_entry_is_rebuilt(tmp_path, how):
    case = next(c for c in reference("untied-v5")["cases"] if c["max_new_tokens"] == 192)
    env = {"NEXTTERM_MLX_CACHE": str(tmp_path / "c")}
    args = ("predict", "--json", "--model", SOURCE, *case["terms"])
    assert nextterm(*args, env=env)[0] == 0
    [entry] = [p for p in (tmp_path / "c").iterdir() if not p.name.startswith(".")]
    corrupt(entry, how)
    code, out, err = nextterm(*args, env=env)
    assert code == 0, err
    assert "damaged" in err and "converting" in err
    assert json.loads(out)["predictions"][0]["tokens"] == case["generated"][0]


@pytest.mark.parametrize("how", ["deleted weights", "edited config", "changed byte"])
def test_a_damaged_converted_folder_is_reported(tmp_path, how):
    folder = convert_checkpoint(SOURCE, tmp_path / "mlx")
    assert nextterm("predict", "--model", folder, "1")[0] == 0
    corrupt(folder, how)
    code, out, err = nextterm("predict", "--model", folder, "1")
    assert_one_line_error(code, err, "damaged")


# --- soak ----------------------------------------------------------------------------------

def test_a_thousand_predictions_do_not_grow_memory():
    import nextterm_mlx

    predictor = nextterm_mlx.load(SOURCE)
    predictor.max_new_tokens = 8
    sequences = [[i % 7, i % 11, i % 13, i] for i in range(1000)]
    for terms in sequences[:100]:
        predictor.predict(terms)
    before = peak_rss_bytes()
    for terms in sequences:
        predictor.predict(terms)
    grown_mb = (peak_rss_bytes() - before) / 2**20
    assert grown_mb < 50, f"peak RSS grew by {grown_mb:.1f} MB over 1,000 predictions"
