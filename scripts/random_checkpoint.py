"""Random checkpoints in NextTerm's published format, made with transformers.

A Qwen3 causal LM with NextTerm's 16-token vocabulary, saved by
transformers in bfloat16 as safetensors, with config.json and
oeis_checkpoint_meta.json. Random weights give near-uniform logits, where
argmax flips on rounding; the output head is scaled by `head_scale` so that
logits have clear margins.

    python scripts/random_checkpoint.py OUT [--shape 440m|tiny|proxy] [--seed N]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

TOKEN_IDS = dict(vocab_size=16, bos_token_id=12, eos_token_id=13, pad_token_id=14)

SHAPES = {
    # Deduced from the published parameter count, 440,500,224 (DESIGN.md).
    "440m": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, max_position_embeddings=4096),
    # Host overhead dominates here as it does for the 440M model on an Apple GPU.
    "proxy": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=28, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=2048),
}


def make_random_checkpoint(
    folder: Path,
    shape: str,
    seed: int,
    *,
    tied: bool = False,
    style: str = "v5",
    rope_theta: float = 10000.0,
    rms_norm_eps: float = 1e-6,
    head_scale: float = 60.0,
) -> Path:
    """Write a random checkpoint; style "v4" writes the config as transformers 4.x did."""
    torch.manual_seed(seed)
    config = Qwen3Config(
        **TOKEN_IDS,
        **SHAPES[shape],
        tie_word_embeddings=tied,
        rms_norm_eps=rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
    )
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(head_scale)
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    if style == "v4":
        rewrite_as_transformers_4(folder / "config.json")
    meta = {
        "tokens_trained": 0,
        "source_checkpoint": f"random {shape} checkpoint, seed {seed}",
        "conversion": "made by scripts/random_checkpoint.py; not a trained model",
    }
    (folder / "oeis_checkpoint_meta.json").write_text(json.dumps(meta, indent=2))
    return folder


def rewrite_as_transformers_4(config_path: Path) -> None:
    """transformers 4.x wrote rope_theta at the top level and torch_dtype."""
    config = json.loads(config_path.read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope["rope_theta"]
    config["rope_scaling"] = None
    config["torch_dtype"] = config.pop("dtype")
    config["transformers_version"] = "4.51.3"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--shape", choices=SHAPES, default="440m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head-scale", type=float, default=60.0)
    args = parser.parse_args()
    make_random_checkpoint(args.out, args.shape, args.seed, head_scale=args.head_scale)
    print(args.out)


if __name__ == "__main__":
    main()
