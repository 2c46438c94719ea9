"""Make the tiny random checkpoints and transformers reference outputs the tests use.

Each checkpoint is in the published format: a Qwen3 causal LM with NextTerm's
16-token vocabulary, saved by transformers in bfloat16 as safetensors, with
config.json and oeis_checkpoint_meta.json. Random weights give near-uniform
logits, where argmax flips on rounding; scaling the output head by
HEAD_SCALE gives clear margins, and only cases whose every generated step
keeps a top-1/top-2 gap of at least MIN_MARGIN are kept.

    python scripts/make_fixtures.py [tests/fixtures]

Writes, for each fixture NAME: NAME/ (the checkpoint) and NAME.reference.json.
Needs torch and transformers (pip install -e '.[reference]').
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from convert.reference import reference_outputs  # noqa: E402

HEAD_SCALE = 60.0
MIN_MARGIN = 0.05
SHAPE = dict(
    vocab_size=16,
    hidden_size=64,
    intermediate_size=192,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=2048,
    bos_token_id=12,
    eos_token_id=13,
    pad_token_id=14,
)

FIXTURES = {
    # transformers 4.x wrote rope_theta at the top level and torch_dtype.
    "untied-v4": dict(seed=1, tied=False, style="v4", rope_theta=50000.0, rms_norm_eps=1e-5),
    "untied-v5": dict(seed=2, tied=False, style="v5", rope_theta=10000.0, rms_norm_eps=1e-6),
    "tied-v5": dict(seed=3, tied=True, style="v5", rope_theta=1000000.0, rms_norm_eps=1e-6),
}


def make_checkpoint(folder: Path, seed: int, tied: bool, style: str, rope_theta: float, rms_norm_eps: float) -> None:
    torch.manual_seed(seed)
    config = Qwen3Config(
        **SHAPE,
        tie_word_embeddings=tied,
        rms_norm_eps=rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
    )
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(HEAD_SCALE)
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    if style == "v4":
        rewrite_as_transformers_4(folder / "config.json")
    meta = {
        "tokens_trained": 0,
        "source_checkpoint": f"random fixture, seed {seed}",
        "conversion": "made by scripts/make_fixtures.py; not a trained model",
    }
    (folder / "oeis_checkpoint_meta.json").write_text(json.dumps(meta, indent=2))


def rewrite_as_transformers_4(config_path: Path) -> None:
    config = json.loads(config_path.read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope["rope_theta"]
    config["rope_scaling"] = None
    config["torch_dtype"] = config.pop("dtype")
    config["transformers_version"] = "4.51.3"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def candidate_cases(rng: random.Random) -> list[dict]:
    """Hand-made prompts for each required shape, then random ones."""
    cases = [
        {"terms": [1, 1, 2, 3, 5, 8]},
        {"terms": [7]},
        {"terms": [0]},
        {"terms": [-3, 0, 3, 0, -3]},
        {"terms": [-1, 2, -4, 8, -16]},
        {"terms": [int("9" * 25 + "1" * 25), 2, 0]},
        {"terms": [-int("31415926535897932384626433832795028841971693993751058209")]},
        {"terms": list(range(0, 300, 2)) + [-5, 0]},  # a prompt of 500+ tokens
        {"terms": [1, 2, 3], "continue": 4},
        {"terms": [5, 0, -5], "continue": 3},
        {"terms": [2, 4, 6, 8], "max_new_tokens": 3},
    ]
    for _ in range(120):
        length = rng.randint(1, 30)
        digits = rng.choice([1, 2, 3, 6, 20])
        terms = [rng.randint(-(10**digits), 10**digits) for _ in range(length)]
        cases.append({"terms": terms, "max_new_tokens": rng.choice([4, 8, 16, 192]), "continue": rng.choice([1, 1, 2])})
    return cases


def stop_kind(tokens: list[int]) -> str:
    return {11: "separator", 13: "eos", 14: "pad"}.get(tokens[-1], "max_tokens")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
    out.mkdir(parents=True, exist_ok=True)
    for name, spec in FIXTURES.items():
        folder = out / name
        make_checkpoint(folder, **spec)
        candidates = candidate_cases(random.Random(spec["seed"]))
        reference = reference_outputs(folder, candidates)
        kept = [case for case in reference["cases"] if case["min_margin"] >= MIN_MARGIN]
        reference["cases"] = kept
        reference["min_margin_kept"] = MIN_MARGIN
        (out / f"{name}.reference.json").write_text(json.dumps(reference, indent=1))
        stops = sorted({stop_kind(g) for case in kept for g in case["generated"]})
        longest = max(len(case["prompt"]) for case in kept)
        print(f"{name}: kept {len(kept)}/{len(candidates)} cases, stops {stops}, longest prompt {longest}")


if __name__ == "__main__":
    main()
